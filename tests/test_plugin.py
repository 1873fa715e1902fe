"""A toy plugin backend (tests/plugin, plain NumPy), pip-installed into a throw-away target
folder (never into the environment the tests run in, so an interrupted test leaves nothing
registered): it must be listed, pass ``fwbench check`` and the conformance suite, and run,
like any built-in."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes or frameworks in every test (the quick subset skips them)

PLUGIN = Path(__file__).parent / "plugin"


TARGET: dict[str, str] = {}


def sh(*args, env=None):
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if TARGET:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [TARGET["path"], env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugin-env")
    build = tmp_path_factory.mktemp("plugin-src")
    import shutil

    shutil.copytree(PLUGIN, build / "plugin")  # the build writes egg-info next to the sources
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(build / "plugin")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    TARGET["path"] = str(target)
    yield
    TARGET.clear()


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
