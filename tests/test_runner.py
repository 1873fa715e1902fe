"""The runner with toy adapters in real worker processes: statuses, records, resume."""

import json
from pathlib import Path

import pytest

from fwbench.harness import runner
from fwbench.harness.adapter import Backend
from fwbench.harness.errors import FwbenchError

TESTS = Path(__file__).parent


def toy(name, cls):
    return Backend(name=name, adapter=f"toy_backend:{cls}", requires=(), source="test")


@pytest.fixture
def toy_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    return {b.name: b for b in (toy("constant", "Constant"), toy("crash", "Crash"),
                                toy("hang", "Hang"), toy("nan", "NaN"), toy("fail", "Fail"),
                                toy("hog", "Hog"), toy("slow", "Slow"))}


def config(backends, timeout=60.0, tasks=("mlp",), seeds=(0,), memory=None):
    return runner.RunConfig(tuple(tasks), tuple(backends), "smoke", tuple(seeds), 1, timeout,
                            memory_limit_gib=memory)


def test_every_cell_ends_with_a_status_and_the_run_goes_on(tmp_path, toy_env):
    records = runner.run(config(["crash", "fail", "nan", "constant", "hang"], timeout=20),
                         tmp_path, toy_env)
    status = {r["backend"]: r for r in records}
    assert status["crash"]["status"] == "crashed" and "SIGABRT" in status["crash"]["error"]
    assert status["fail"]["status"] == "failed"
    assert status["fail"]["error"] == "ValueError: this adapter cannot build anything"  # one line
    assert status["nan"]["status"] == "diverged" and "step 1" in status["nan"]["error"]
    assert status["hang"]["status"] == "timeout"
    ok = status["constant"]
    assert ok["status"] == "ok" and ok["test_accuracy"] == pytest.approx(0.1, abs=0.05)
    assert ok["steps"] == 3000 // 128 and len(ok["epochs"]) == 1
    for key in ("train_time_s", "step_time_ms", "throughput_samples_s", "peak_rss_mib",
                "param_count", "framework_version", "threads", "import_s", "log"):
        assert ok[key] is not None, key
    assert (tmp_path / ok["log"]).is_file()
    lines = (tmp_path / runner.RESULTS).read_text().splitlines()
    assert [json.loads(x)["backend"] for x in lines] == ["crash", "fail", "nan", "constant", "hang"]
    assert json.loads((tmp_path / runner.RUN_JSON).read_text())["config"]["backends"][0] == "crash"


def test_plan_interleaves_backends():
    cells = runner.plan(config(["a", "b"], tasks=("mlp", "lenet"), seeds=(0, 1)))
    assert [(c.task, c.backend, c.seed) for c in cells[:4]] == [
        ("mlp", "a", 0), ("mlp", "b", 0), ("lenet", "a", 0), ("lenet", "b", 0)]


def test_resume_skips_finished_cells(tmp_path, toy_env):
    first = runner.run(config(["constant"], seeds=(0,)), tmp_path, toy_env)
    assert len(first) == 1
    second = runner.run(config(["constant"], seeds=(0, 1)), tmp_path, toy_env)
    assert [r["seed"] for r in second] == [1]
    assert len(runner.read_records(tmp_path / runner.RESULTS)) == 2


def test_partial_last_line_is_ignored_and_garbage_refused(tmp_path):
    good = json.dumps({"task": "mlp", "backend": "x", "seed": 0, "status": "ok"})
    path = tmp_path / runner.RESULTS
    path.write_text(good + "\n" + good[:20])
    assert len(runner.read_records(path)) == 1
    path.write_text("not json\n" + good + "\n")
    with pytest.raises(FwbenchError, match="line 1 is not JSON"):
        runner.read_records(path)
    path.write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(FwbenchError, match="not an fwbench record"):
        runner.read_records(path)


def test_memory_limit_kills_the_cell_as_oom(tmp_path, toy_env):
    records = runner.run(config(["hog", "constant"], memory=1.0), tmp_path, toy_env)
    assert records[0]["status"] == "oom" and "exceeded the limit of 1 GiB" in records[0]["error"]
    assert records[1]["status"] == "ok"


RUNNER_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_runner import config, toy
from fwbench.harness import runner
backends = {{"slow": toy("slow", "Slow")}}
runner.run(config(["slow"], seeds=(0, 1, 2, 3)), Path({run_dir!r}), backends)
"""


def test_kill_9_of_the_runner_then_resume(tmp_path, toy_env):
    """No record lost, none duplicated, and no worker outlives the runner."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = RUNNER_SCRIPT.format(tests=str(TESTS), run_dir=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script])
    results = tmp_path / runner.RESULTS
    deadline = time.time() + 120
    while time.time() < deadline and len(runner.read_records(results)) < 1:
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "a worker should be running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "workers outlived the killed runner"
    done = runner.read_records(results)
    assert 1 <= len(done) < 4
    resumed = runner.run(config(["slow"], seeds=(0, 1, 2, 3)), tmp_path, {"slow": toy("slow", "Slow")})
    final = runner.read_records(results)
    assert len(resumed) == 4 - len(done)
    assert sorted(r["seed"] for r in final) == [0, 1, 2, 3]
