"""Small models with the layers of issue 14 and the checks every adapter's layer tests share
(tests/test_layers_<framework>.py): an exact canonical round trip with random weights (non-zero
biases, so swapped gate blocks or biases show), logits against the NumPy reference, gradients
against central differences of the reference, and dropout only in training."""

from __future__ import annotations

import numpy as np

from fwbench.harness import reference, spec

ADAM = spec.Adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-7)


def _task(name: str, input_shape: tuple[int, ...], layers: tuple, optimizer=ADAM) -> spec.Task:
    return spec.Task(name=name, description="layer test", dataset="mnist", preprocessing="mnist_rows",
                     input_shape=input_shape, input_dtype="float32", layers=layers, optimizer=optimizer,
                     batch_size=8, epochs_full=1, target_accuracy=0.0, num_classes=3)


# Even kernels: "same" puts (k-1)//2 zeros before and k//2 after, which only an even kernel tells apart.
CASES = {
    "conv_same": _task("conv_same", (2, 9, 9), (
        spec.Conv2D(4, 4, "same"), spec.ReLU(), spec.MaxPool2D(2), spec.Conv2D(3, 3, "same"),
        spec.Flatten(), spec.Dense(8), spec.ReLU(), spec.Dropout(0.4), spec.Dense(3))),
    "conv1d_gru": _task("conv1d_gru", (11, 6), (
        spec.Conv1D(5, 4, "same"), spec.ReLU(), spec.MaxPool1D(2), spec.Conv1D(4, 2),
        spec.GRU(7, return_sequences=True), spec.GRU(9), spec.Dense(3))),
    "bigru": _task("bigru", (10, 6), (
        spec.Bidirectional((spec.GRU(5, return_sequences=True), spec.GRU(8))), spec.Dense(3))),
    "bigru_single": _task("bigru_single", (7, 4), (spec.Bidirectional((spec.GRU(6),)), spec.Dense(3))),
}
NEW_TASKS = ("cnn", "gru", "bigru", "cnn_gru")


def random_params(task: spec.Task, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {p.name: (0.4 * rng.standard_normal(p.shape)).astype(np.float32) for p in spec.param_specs(task)}


def batch(task: spec.Task, n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *task.input_shape)).astype(np.float32),
            rng.integers(0, task.num_classes, n).astype(np.int32))


def check_round_trip(adapter_cls, task: spec.Task) -> None:
    params = random_params(task)
    a = adapter_cls(task, 1)
    a.build(params)
    out = a.export_params()
    assert set(out) == set(params)
    for k, v in params.items():
        assert out[k].shape == v.shape and out[k].dtype == np.float32, k
        np.testing.assert_array_equal(out[k], v, err_msg=k)


def check_forward_and_gradients(adapter_cls, task: spec.Task) -> None:
    params = random_params(task, 1)
    x, y = batch(task)
    a = adapter_cls(task, 1)
    a.build(params)
    ref = reference.forward(task, params, x)
    np.testing.assert_allclose(a.logits(x), ref, atol=2e-5, rtol=1e-5)
    loss, grads = a.gradients(x, y)
    assert loss == _approx(reference.softmax_cross_entropy(ref, y))
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    rng = np.random.default_rng(2)
    eps = 1e-4
    for name, g in grads.items():
        assert g.shape == params[name].shape, name
        for idx in (np.unravel_index(int(rng.integers(g.size)), g.shape) for _ in range(4)):
            up, down = dict(p64), dict(p64)
            up[name], down[name] = p64[name].copy(), p64[name].copy()
            up[name][idx] += eps
            down[name][idx] -= eps
            numeric = (reference.softmax_cross_entropy(reference.forward(task, up, x), y)
                       - reference.softmax_cross_entropy(reference.forward(task, down, x), y)) / (2 * eps)
            assert abs(g[idx] - numeric) <= 1e-4 + 1e-3 * abs(numeric), (name, idx, g[idx], numeric)


def check_dropout_only_in_training(adapter_cls, options: dict | None = None) -> list[float]:
    """lr 0: the weights never move, so the train losses on one batch differ only by the
    dropout masks. Returns them (for a seeded-reproducibility check)."""
    task = spec.Task(**{**CASES["conv_same"].__dict__, "optimizer": spec.SGDMomentum(lr=0.0, momentum=0.0)})
    params = random_params(task, 3)
    x, y = batch(task, 32)
    a = adapter_cls(task, 1, options)
    a.build(params)
    eval_loss = reference.softmax_cross_entropy(reference.forward(task, params, x), y)
    assert a.gradients(x, y)[0] == _approx(eval_loss)  # evaluation mode: no dropout
    losses = [a.train_step(x, y) for _ in range(3)]
    assert all(abs(v - eval_loss) > 1e-6 for v in losses), (losses, eval_loss)
    assert len({round(v, 7) for v in losses}) == 3, losses  # a new mask every step
    np.testing.assert_allclose(a.logits(x), reference.forward(task, params, x), atol=2e-5, rtol=1e-5)
    return losses


def _approx(value: float):
    import pytest

    return pytest.approx(value, rel=1e-5)
