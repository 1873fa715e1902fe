"""A backend that lacks a layer says so before training: ``unsupported`` with the layer, never
a mid-run ``failed``; the run, the report and ``fwbench check`` show it as such. Uses the toy
plugin (tests/plugin: Flatten/Dense/ReLU only), pip-installed into a throw-away folder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fwbench.harness.report import analysis, markdown as report
from fwbench.harness import spec

pytestmark = pytest.mark.slow  # processes or frameworks in every test (the quick subset skips them)

PLUGIN = Path(__file__).parent / "plugin"


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("plugin-env")
    build = tmp_path_factory.mktemp("plugin-src")
    shutil.copytree(PLUGIN, build / "plugin")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(build / "plugin")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return {**os.environ, "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def fwbench(env, *args):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *args], capture_output=True,
                          text=True, env=env, timeout=900)


def test_the_toy_adapter_declares_its_layers(toy_env):
    sys.path.insert(0, toy_env["PYTHONPATH"].split(os.pathsep)[0])
    try:
        import fwbench_numpy_toy as toy
    finally:
        sys.path.pop(0)
    assert toy.NumpyAdapter.unsupported(spec.TASKS["mlp"]) == []
    gru = toy.NumpyAdapter.unsupported(spec.TASKS["gru"])
    assert gru == [spec.GRU(128, return_sequences=True), spec.GRU(256)]
    assert toy.NumpyAdapter.unsupported(spec.TASKS["cnn"])[0] == spec.Conv2D(32, 5, "same")


def test_run_records_unsupported_before_training_and_reports_it(toy_env, tmp_path):
    out = tmp_path / "run"
    run = fwbench(toy_env, "run", "--profile", "smoke", "--backends", "numpy-toy",
                  "--tasks", "mlp,gru", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr  # unsupported is not a failure
    recs = {r["task"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert recs["mlp"]["status"] == "ok"
    gru = recs["gru"]
    assert gru["status"] == "unsupported"
    assert gru["error"].startswith("numpy-toy adapter: unsupported layer GRU(units=128")
    assert gru["steps"] is None and gru["setup_s"] is None  # nothing was built or trained
    assert "gru/numpy-toy: unsupported" in " ".join(run.stderr.split())

    a = analysis.analyze(out)
    assert a.failed == [] and [(f.task, f.backend) for f in a.unsupported] == [("gru", "numpy-toy")]
    md = report.markdown_report(a)
    assert "## Unsupported" in md and "GRU(units=128" in md
    assert "Cells that did not finish" not in md and "Did not finish" not in md
    assert "No backend finished gru: numpy-toy unsupported." in md  # the task's verdict
    assert "| gru | numpy-toy | 0/1 | 0 |" in md and md.count("unsupported |") >= 1


def test_check_shows_unsupported_and_passes(toy_env):
    check = fwbench(toy_env, "check", "--backends", "numpy-toy", "--tasks", "mlp,bigru")
    text = " ".join(check.stdout.split())
    assert check.returncode == 0, check.stdout + check.stderr
    assert "pass" in text and "unsupported" in text
    assert "bigru/numpy-toy: numpy-toy adapter: unsupported layer Bidirectional(" in text


def test_check_with_nothing_to_compare_fails_in_one_line(toy_env):
    check = fwbench(toy_env, "check", "--backends", "numpy-toy", "--tasks", "bigru")
    assert check.returncode == 2, check.stdout + check.stderr
    assert check.stderr.strip().splitlines()[-1] == (
        "fwbench: error: nothing was compared: every backend declared every task unsupported")


def test_verdict_separates_unsupported_from_failures():
    from fwbench.harness.report import verdict
    from fwbench.harness.report.analysis import BackendResult, TaskResult

    ok = BackendResult("gru", "torch", 1, 1, 1, [])
    ok.seeds = 1
    rows = [ok, BackendResult("gru", "toy", 1, 0, 0, ["unsupported"]),
            BackendResult("gru", "bad", 2, 0, 0, ["failed"])]
    t = TaskResult("gru", "", None, 512, rows, [], None)
    text = " ".join(verdict.verdict(t))
    assert "Did not finish: bad (failed, 2 of 2 cells)." in text
    assert "Cannot run this task (a layer is unsupported by the adapter): toy." in text
