"""Distance from the limit: analytic FLOPs per training step and this machine's GEMM peak."""

from __future__ import annotations

import time

import numpy as np

from . import spec


def forward_flops(task: spec.Task) -> int:
    """FLOPs of one example's forward pass (a multiply-add counts 2).

    Dense and conv count their multiply-adds and bias adds; the LSTM counts its four gate
    matmuls per time step plus the gate nonlinearities and state updates (about 10H per step
    counting a sigmoid or tanh as one); ReLU, pooling and the embedding lookup count 0.
    """
    total = 0
    shape = task.input_shape
    for layer in task.layers:
        out = spec.output_shape(layer, shape)
        if isinstance(layer, spec.Dense):
            total += 2 * shape[0] * layer.units + layer.units
        elif isinstance(layer, spec.Conv2D):
            c_out, h, w = out
            total += (2 * shape[0] * layer.kernel ** 2 + 1) * c_out * h * w
        elif isinstance(layer, spec.LSTM):
            steps, n_in = shape
            hidden = layer.units
            total += steps * (2 * 4 * hidden * (n_in + hidden) + 4 * hidden + 10 * hidden)
        shape = out
    return total


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
