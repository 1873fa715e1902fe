"""``fwbench check`` never passes without its ground truth (issue 23): where the gradients
cannot be compared with torch in float64, each row says so and fails, and the command exits
non-zero, unless the user accepts a forward-only check (``--forward-only``)."""

import os
import sys
from pathlib import Path

import pytest

from fwbench.harness.check import parity

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS / "plugin"))


@pytest.fixture
def toy(monkeypatch):
    """The numpy-toy plugin backend (mlp only), importable by its probe worker."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS / "plugin"), os.environ.get("PYTHONPATH", "")]))
    from fwbench_numpy_toy import BACKEND

    return {BACKEND.name: BACKEND}  # no torch among the known backends: no ground truth


def test_without_the_ground_truth_a_row_fails_and_says_why(toy):
    (row,) = parity.check(toy, list(toy), ["mlp"])
    assert row.error is None and row.grad_rel is None and not row.ok
    assert row.forward_only and "torch" in row.forward_only and "not installed" in row.forward_only
    assert row.breaches == [parity.NOT_CHECKED]
    assert row.logits_abs is not None and row.logits_abs <= 1e-4  # the forward part was compared


def test_forward_only_is_accepted_when_asked_and_still_labelled(toy):
    (row,) = parity.check(toy, list(toy), ["mlp"], forward_only_ok=True)
    assert row.ok and row.forward_only and row.grad_rel is None and row.breaches == []


@pytest.mark.slow
def test_the_command_exits_non_zero_without_the_ground_truth():
    """As a user runs it where the only backend is the toy plugin (torch unknown)."""
    import subprocess

    env = {**os.environ, "COLUMNS": "100",
           "PYTHONPATH": os.pathsep.join([str(TESTS / "plugin"), str(TESTS)])}
    code = ("import sys, fwbench.harness.catalog.backends as b, fwbench_numpy_toy as t\n"
            "b.discover = lambda warn=None: {t.BACKEND.name: t.BACKEND}  # torch unknown here\n"
            "from fwbench.harness.cli import main\n"
            "main(sys.argv[1:])\n")
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code, "check", "--tasks", "mlp", *extra], env=env,
        capture_output=True, text=True, timeout=600)
    failed = run()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL" in failed.stdout and "gradients not checked: the ground truth" in failed.stdout
    accepted = run("--forward-only")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    (line,) = [x for x in accepted.stdout.splitlines() if "numpy-toy" in x and "mlp" in x]
    assert line.split()[-2:] == ["fwd", "only"], line


def test_a_plugin_declares_its_own_tolerances_with_their_reasons(toy):
    """``Backend.loosened`` is in force for that backend (here set below the measured figure,
    so the row must fail on it) and is refused without a known metric and a reason."""
    import dataclasses

    (name, backend), = toy.items()
    strict = {name: dataclasses.replace(backend, loosened=(("mlp", "logits_abs", 1e-30, "test"),))}
    (row,) = parity.check(strict, [name], ["mlp"], forward_only_ok=True)
    assert not row.ok and row.breaches == [f"logits_abs {row.logits_abs:.2e} > 1e-30"]
    assert parity.loosened(strict, [name])[("mlp", name, "logits_abs")] == (1e-30, "test")
    for bad in (("mlp", "speed", 1.0, "why"), ("mlp", "grad_rel", 1e-3, " ")):
        with pytest.raises(Exception, match="needs one of"):
            parity.loosened({name: dataclasses.replace(backend, loosened=(bad,))}, [name])


def test_an_a_a_copy_has_its_backend_s_loosened_tolerances():
    """``torch#2`` runs torch's kernels: cnn's measured gradient tolerance is torch's."""
    from fwbench.harness import spec

    cnn = spec.TASKS["cnn"]
    for name in ("torch", "torch#2", "tensorflow#3"):
        assert parity.tolerance(cnn, name, "grad_rel") == 3e-3, name
    assert parity.tolerance(cnn, "jax#2", "grad_rel") == parity.TOLERANCES["grad_rel"]
    assert parity.tolerance(spec.TASKS["mlp"], "torch#2", "grad_rel") == parity.TOLERANCES["grad_rel"]
