"""Distance from the limit: analytic FLOPs per training step and this machine's GEMM peak."""

from __future__ import annotations

import time

import numpy as np

from fwbench.harness import spec


def _dense(layer: spec.Dense, shape: spec.Shape, out: spec.Shape) -> int:
    return 2 * shape[0] * layer.units + layer.units


def _conv(layer: spec.Conv2D, shape: spec.Shape, out: spec.Shape) -> int:
    c_out, h, w = out
    return (2 * shape[0] * layer.kernel ** 2 + 1) * c_out * h * w


def _lstm(layer: spec.LSTM, shape: spec.Shape, out: spec.Shape) -> int:
    steps, n_in = shape
    hidden = layer.units
    return steps * (2 * 4 * hidden * (n_in + hidden) + 4 * hidden + 10 * hidden)


def _conv1d(layer: spec.Conv1D, shape: spec.Shape, out: spec.Shape) -> int:
    t_out, c_out = out
    return (2 * shape[-1] * layer.kernel + 1) * c_out * t_out


def _gru(layer: spec.GRU, shape: spec.Shape, out: spec.Shape) -> int:
    steps, n_in = shape
    hidden = layer.units
    # per step: the 3 gate blocks of x W_ih' and h W_hh', both biases (6H), and 11H for the
    # rest: r, z pre-activation sums (2H), r * (h W_hn' + b_hn) and its sum (2H), two
    # sigmoids and a tanh (3H, one each), h' = (1 - z) n + z h (4H)
    return steps * (2 * 3 * hidden * (n_in + hidden) + 6 * hidden + 11 * hidden)


def _bidirectional(layer: spec.Bidirectional, shape: spec.Shape, out: spec.Shape) -> int:
    one = 0
    for inner in layer.layers:
        inner_out = spec.output_shape(inner, shape)
        one += _FLOPS(inner, shape, inner_out)
        shape = inner_out
    return 2 * one + int(np.prod(out))  # both stacks, then the "sum" merge


def _free(layer: spec.Layer, shape: spec.Shape, out: spec.Shape) -> int:
    """Counted as 0: reshapes, comparisons and lookups, no multiply-adds."""
    return 0


_FLOPS = spec.LayerRules("flops.forward_flops", {
    spec.Flatten: _free, spec.Dense: _dense, spec.Conv2D: _conv, spec.MaxPool2D: _free,
    spec.ReLU: _free, spec.Dropout: _free, spec.Embedding: _free, spec.LSTM: _lstm,
    spec.Conv1D: _conv1d, spec.MaxPool1D: _free, spec.GRU: _gru, spec.Bidirectional: _bidirectional,
})


def forward_flops(task: spec.Task) -> int:
    """FLOPs of one example's forward pass (a multiply-add counts 2).

    Dense and conv (2-D and 1-D; "same" counts the padded zeros, as frameworks compute them)
    count their multiply-adds and bias adds; the LSTM counts its four gate matmuls per time
    step plus the gate nonlinearities and state updates (about 10H per step counting a sigmoid
    or tanh as one); the GRU its three gate blocks of both matmuls, both biases and ~11H of
    gate arithmetic per step; a Bidirectional both stacks plus the merge; ReLU, pooling,
    dropout and the embedding lookup count 0.
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
