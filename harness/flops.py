"""Distance from the limit: analytic FLOPs per training step and this machine's GEMM peak."""

from __future__ import annotations

import time

import numpy as np

from . import spec


def _dense(layer: spec.Dense, shape: spec.Shape, out: spec.Shape) -> int:
    return 2 * shape[0] * layer.units + layer.units


def _conv(layer: spec.Conv2D, shape: spec.Shape, out: spec.Shape) -> int:
    c_out, h, w = out
    return (2 * shape[0] * layer.kernel ** 2 + 1) * c_out * h * w


def _lstm(layer: spec.LSTM, shape: spec.Shape, out: spec.Shape) -> int:
    steps, n_in = shape
    hidden = layer.units
    return steps * (2 * 4 * hidden * (n_in + hidden) + 4 * hidden + 10 * hidden)


def _free(layer: spec.Layer, shape: spec.Shape, out: spec.Shape) -> int:
    """Counted as 0: reshapes, comparisons and lookups, no multiply-adds."""
    return 0


_FLOPS = spec.LayerRules("flops.forward_flops", {
    spec.Flatten: _free, spec.Dense: _dense, spec.Conv2D: _conv, spec.MaxPool2D: _free,
    spec.ReLU: _free, spec.Dropout: _free, spec.Embedding: _free, spec.LSTM: _lstm,
})


def forward_flops(task: spec.Task) -> int:
    """FLOPs of one example's forward pass (a multiply-add counts 2).

    Dense and conv count their multiply-adds and bias adds; the LSTM counts its four gate
    matmuls per time step plus the gate nonlinearities and state updates (about 10H per step
    counting a sigmoid or tanh as one); ReLU, pooling, dropout and the embedding lookup count 0.
    """
    return sum(_FLOPS(layer, shape, spec.output_shape(layer, shape))
               for _, layer, shape in spec.layer_inputs(task))


def train_step_flops(task: spec.Task) -> int:
    """One training step: forward + backward ~ 3x the forward pass, times the batch size."""
    return 3 * forward_flops(task) * task.batch_size


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate of NumPy's BLAS on the cores this process may use."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
