"""A toy plugin backend (tests/plugin, plain NumPy) installed into this environment: it must
be listed, pass ``fwbench check`` and the conformance suite, and run, like any built-in."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin"


def sh(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def plugin_installed():
    r = sh("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(PLUGIN))
    assert r.returncode == 0, r.stderr[-2000:]
    yield
    sh("-m", "pip", "uninstall", "-y", "fwbench-numpy-toy")


def test_plugin_is_listed_checked_conformant_and_runs(plugin_installed, tmp_path):
    listed = sh("-m", "fwbench.harness.cli", "list")
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if "numpy-toy" in x)
    assert "plugin fwbench-numpy-toy 0.1.0" in line

    check = sh("-m", "fwbench.harness.cli", "check", "--backends", "numpy-toy", "--tasks", "mlp")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "pass" in check.stdout

    conf = sh("-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "fwbench.harness.conformance",
              env={"FWBENCH_BACKEND": "numpy-toy", "FWBENCH_TASKS": "mlp"})
    assert conf.returncode == 0 and "4 passed" in conf.stdout, conf.stdout[-3000:]

    out = tmp_path / "run"
    run = sh("-m", "fwbench.harness.cli", "run", "--profile", "smoke", "--backends", "numpy-toy",
             "--tasks", "mlp", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    (record,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["test_accuracy"] > 0.8


def test_conformance_fails_a_wrong_adapter(plugin_installed, tmp_path):
    """The suite is not vacuous: the toy adapter with a broken gradient fails it."""
    broken = tmp_path / "sitecustomize.py"
    broken.write_text(
        "import fwbench_numpy_toy as m\n"
        "orig = m.NumpyAdapter._loss_and_grads\n"
        "def wrong(self, x, y):\n"
        "    loss, g = orig(self, x, y)\n"
        "    return loss, {k: v * 1.01 for k, v in g.items()}\n"
        "m.NumpyAdapter._loss_and_grads = wrong\n")
    conf = sh("-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "fwbench.harness.conformance",
              env={"FWBENCH_BACKEND": "numpy-toy", "FWBENCH_TASKS": "mlp",
                   "PYTHONPATH": str(tmp_path)})
    assert conf.returncode == 1 and "test_round_trip_and_parity" in conf.stdout, conf.stdout[-3000:]
