"""``fwbench check`` always has its ground truth (issue 23): the gradients are compared with
the NumPy reference's own float64 gradients (``reference.gradients``), which need no compared
framework. They are tested here against central differences on small models with every layer
of the IR (no framework), and against PyTorch in float64 on every built-in task's probe batch;
a wrong gradient fails the check where no other framework is installed."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fwbench.harness import reference, spec
from fwbench.harness.check import parity

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS / "plugin"))


def _task(layers, input_shape, input_dtype="float32"):
    return spec.Task(name="t", description="", dataset="mnist", preprocessing="mnist_scaled",
                     input_shape=input_shape, input_dtype=input_dtype, layers=tuple(layers),
                     optimizer=spec.Adam(1e-3, 0.9, 0.999, 1e-7), batch_size=3, epochs_full=1,
                     target_accuracy=0.0, num_classes=4)


SMALL = {  # every layer type of the IR, both paddings, sequences in and out
    "conv": (_task([spec.Conv2D(3, 3, "same"), spec.ReLU(), spec.MaxPool2D(2), spec.Conv2D(2, 2),
                    spec.Flatten(), spec.Dense(5), spec.Dropout(0.5), spec.ReLU(), spec.Dense(4)],
                   (2, 6, 7)), lambda rng: rng.standard_normal((3, 2, 6, 7))),
    "lstm": (_task([spec.Embedding(11, 3), spec.LSTM(4), spec.Dense(4)], (5,), "int32"),
             lambda rng: rng.integers(0, 11, (3, 5))),
    "conv1d_gru": (_task([spec.Conv1D(3, 4, "same"), spec.ReLU(), spec.MaxPool1D(2),
                          spec.GRU(4, return_sequences=True), spec.Conv1D(2, 2), spec.GRU(3),
                          spec.Dense(4)], (7, 2)), lambda rng: rng.standard_normal((3, 7, 2))),
    "bigru": (_task([spec.Bidirectional((spec.GRU(3, return_sequences=True), spec.GRU(4))),
                     spec.Dense(4)], (5, 2)), lambda rng: rng.standard_normal((3, 5, 2))),
}


def test_every_layer_of_the_ir_is_in_the_small_models():
    used = {type(x) for task, _ in SMALL.values() for layer in task.layers
            for x in (layer, *spec.sublayers(layer))}
    assert used == set(spec.LAYER_TYPES)


@pytest.mark.parametrize("name", list(SMALL))
def test_numpy_gradients_match_central_differences(name):
    task, inputs = SMALL[name]
    rng = np.random.default_rng(7)
    params = {k: v.astype(np.float64) + rng.standard_normal(v.shape) * 0.3  # biases non-zero
              for k, v in spec.init_params(task, 0).items()}
    x, y = inputs(rng), rng.integers(0, 4, 3)
    loss, grads = reference.gradients(task, params, x, y)
    assert set(grads) == set(params)
    assert np.isclose(loss, reference.softmax_cross_entropy(reference.forward(task, params, x), y))
    h = 1e-6
    for key, value in params.items():
        for flat in rng.choice(value.size, min(value.size, 6), replace=False):
            if key.endswith(".table") and flat // value.shape[1] not in x:
                assert grads[key].flat[flat] == 0.0  # rows the batch does not touch
                continue
            up, down = dict(params), dict(params)
            up[key], down[key] = value.copy(), value.copy()
            up[key].flat[flat] += h
            down[key].flat[flat] -= h
            numeric = (reference.softmax_cross_entropy(reference.forward(task, up, x), y)
                       - reference.softmax_cross_entropy(reference.forward(task, down, x), y)) / (2 * h)
            assert abs(grads[key].flat[flat] - numeric) <= 1e-7 + 1e-5 * abs(numeric), (key, flat)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="the cross-check needs PyTorch (pip install -e '.[torch]')")
def test_numpy_gradients_match_torch_float64_on_every_task():
    """The ground truth agrees with an independent one: PyTorch's autograd in float64, on
    each built-in task's probe batch (its exports are float32: ~6e-8 relative)."""
    from fwbench.backends.torch_backend import TorchAdapter

    for name, task in spec.TASKS.items():
        batches = parity.probe_batches(task, 0)
        params = spec.init_params(task, 0)
        _, numpy_grads = reference.gradients(task, params, batches["x0"], batches["y0"])
        adapter = TorchAdapter(task, 1, {"float64": True})
        adapter.build(params)
        _, torch_grads = adapter.gradients(batches["x0"], batches["y0"])
        for key in params:
            diff = np.abs(numpy_grads[key] - torch_grads[key]).max() / np.abs(numpy_grads[key]).max()
            assert diff <= 2e-7, (name, key, diff)


@pytest.mark.slow
def test_the_command_fails_a_wrong_gradient_where_no_other_framework_is_known(tmp_path):
    """As a user runs it where the only backend is the toy plugin (torch unknown): its correct
    gradients pass, compared; with 0.1% added in its worker process the check exits 1."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "sitecustomize.py").write_text(
        "import fwbench_numpy_toy as m\n"
        "orig = m.NumpyAdapter._loss_and_grads\n"
        "def wrong(self, x, y):\n"
        "    loss, g = orig(self, x, y)\n"
        "    return loss, {k: v * 1.001 for k, v in g.items()}\n"
        "m.NumpyAdapter._loss_and_grads = wrong\n")
    code = ("import sys, fwbench.harness.catalog.backends as b, fwbench_numpy_toy as t\n"
            "b.discover = lambda warn=None: {t.BACKEND.name: t.BACKEND}  # torch unknown here\n"
            "from fwbench.harness.cli import main\n"
            "main(sys.argv[1:])\n")

    def run(*path):
        env = {**os.environ, "COLUMNS": "100",
               "PYTHONPATH": os.pathsep.join([*map(str, path), str(TESTS / "plugin"), str(TESTS)])}
        return subprocess.run([sys.executable, "-c", code, "check", "--tasks", "mlp"], env=env,
                              capture_output=True, text=True, timeout=600)

    good = run()
    assert good.returncode == 0, good.stdout + good.stderr
    (line,) = [x for x in good.stdout.splitlines() if "numpy-toy" in x and "mlp" in x]
    assert line.split()[-1] == "pass" and line.split()[-3] != "-", line  # grad compared
    assert "against NumPy float64" in " ".join(good.stdout.split())
    bad = run(tmp_path / "broken")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "mlp/numpy-toy: grad_rel" in bad.stdout


def test_a_plugin_declares_its_own_tolerances_with_their_reasons(monkeypatch):
    """``Backend.loosened`` is in force for that backend (here set below the measured figure,
    so the row must fail on it) and is refused without a known metric and a reason."""
    import dataclasses

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS / "plugin"),
                                                      os.environ.get("PYTHONPATH", "")]))
    from fwbench_numpy_toy import BACKEND as backend

    name = backend.name
    strict = {name: dataclasses.replace(backend, loosened=(("mlp", "logits_abs", 1e-30, "test"),))}
    (row,) = parity.check(strict, [name], ["mlp"])
    assert row.grad_rel is not None and row.grad_rel <= 1e-4  # compared, without torch
    assert not row.ok and row.breaches == [f"logits_abs {row.logits_abs:.2e} > 1e-30"]
    assert parity.loosened(strict, [name])[("mlp", name, "logits_abs")] == (1e-30, "test")
    for bad in (("mlp", "speed", 1.0, "why"), ("mlp", "grad_rel", 1e-3, " ")):
        with pytest.raises(Exception, match="needs one of"):
            parity.loosened({name: dataclasses.replace(backend, loosened=(bad,))}, [name])


def test_an_a_a_copy_has_its_backend_s_loosened_tolerances():
    """``torch#2`` runs torch's kernels: cnn's measured gradient tolerance is torch's."""
    cnn = spec.TASKS["cnn"]
    for name in ("torch", "torch#2", "tensorflow#3"):
        assert parity.tolerance(cnn, name, "grad_rel") == 3e-3, name
    assert parity.tolerance(cnn, "jax#2", "grad_rel") == parity.TOLERANCES["grad_rel"]
    assert parity.tolerance(spec.TASKS["mlp"], "torch#2", "grad_rel") == parity.TOLERANCES["grad_rel"]
