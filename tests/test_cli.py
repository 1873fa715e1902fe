"""The command line as a user runs it: a real subprocess, real exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fwbench.harness import spec

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


def fwbench(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "COLUMNS": "160", **(env or {})},
                          timeout=900)  # a hung run is killed (its watchdogs take its cells)


@pytest.mark.parametrize("args,message", [
    (["run", "--tasks", "resnet"], "unknown task 'resnet'"),
    (["run", "--backends", "caffe"], "unknown backend 'caffe'"),
    (["run", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "--seeds", "0"], "--seeds must be at least 1"),
    (["run", "--threads", "999"], "--threads must be between 1 and"),
    (["run", "--frobnicate"], "No such option"),
    (["run", "--seeds", "many"], "Invalid value for '--seeds'"),
    (["report", "/nonexistent/run"], "has no results.jsonl"),
    (["run", "--resume", "/nonexistent/run"], "nothing to resume"),
    (["run", "--data-dir", "/nonexistent/data", "--tasks", "mlp", "--backends", "torch"],
     "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    r = fwbench(*args, cwd=tmp_path)
    if "torch" in args and "not installed" in r.stderr:
        pytest.skip("torch not installed")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_unwritable_out_folder(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "run"
    else:
        target = locked / "run"
    r = fwbench("run", "--profile", "smoke", "--backends", "torch", "--out", str(target))
    if "not installed" in r.stderr:
        pytest.skip("torch not installed")
    assert r.returncode == 2 and "cannot write to" in r.stderr and len(r.stderr.splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    r = fwbench("--debug", "report", str(tmp_path))
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_list_shows_tasks_profiles_backends():
    r = fwbench("list")
    assert r.returncode == 0
    for word in ("mlp", "lenet", "lstm", "407,050", "smoke", "quick", "full", "torch"):
        assert word in r.stdout


def test_env():
    r = fwbench("env", "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["logical_cores"] >= 1 and "numpy" in info["packages"]


@pytest.mark.slow
def test_smoke_run_end_to_end_with_torch(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    out = tmp_path / "run"
    r = fwbench("run", "--profile", "smoke", "--backends", "torch", "--threads", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    # the default task set is every registered task, in the spec's order
    assert [(x["task"], x["backend"], x["seed"]) for x in records] == [
        (t, "torch", 0) for t in spec.TASKS]
    for rec in records:
        task = spec.TASKS[rec["task"]]
        assert rec["status"] == "ok" and rec["profile"] == "smoke" and rec["threads"] == 1
        assert rec["param_count"] == spec.param_count(task)
        assert rec["framework_version"].startswith("2.13")
        assert rec["thread_settings"]["intra_op"] == 1
        assert len(rec["epochs"]) == 1 and rec["epochs"][0]["epoch"] == 1
        assert set(rec["epochs"][0]) == {"epoch", "train_loss", "test_loss", "test_accuracy", "wall_s"}
        n_train = 1500 if task.dataset == "imdb" else 3000
        assert rec["steps"] == n_train // task.batch_size
        assert rec["step_time_ms"]["p50"] > 0 and rec["step_time_ms"]["p90"] >= rec["step_time_ms"]["p50"]
        assert rec["throughput_samples_s"] > 0 and rec["peak_rss_mib"] > 50
        assert rec["test_accuracy"] == rec["epochs"][0]["test_accuracy"]
    acc = {x["task"]: x["test_accuracy"] for x in records}
    # 1 epoch on the 3,000-image sample: far above chance (0.1) for both MNIST models; the
    # LSTM (23 steps on 1,500 reviews) must beat always answering the sample's majority class
    from fwbench.harness import data

    y = data.load_prepared(data.prepare(data.DATASETS["imdb"], "smoke"))["y_test"]
    majority = max(y.mean(), 1 - y.mean())
    assert acc["mlp"] > 0.8 and acc["lenet"] > 0.5 and acc["lstm"] > majority + 0.02
    assert json.loads((out / "run.json").read_text())["config"]["profile"] == "smoke"

    rep = fwbench("report", str(out))
    assert rep.returncode == 0 and (out / "report.md").is_file()
    assert "| mlp | torch | 1/1 |" in (out / "report.md").read_text()

    again = fwbench("run", "--profile", "smoke", "--backends", "torch", "--out", str(out))
    assert again.returncode == 2 and "already holds results" in again.stderr
    resumed = fwbench("run", "--resume", str(out))
    assert resumed.returncode == 0 and len((out / "results.jsonl").read_text().splitlines()) == len(spec.TASKS)
    differ = fwbench("run", "--resume", str(out), "--seeds", "2")
    assert differ.returncode == 2 and "seeds (saved (0,), given (0, 1))" in differ.stderr


@pytest.mark.slow
def test_deterministic_runs_repeat_their_losses(tmp_path):
    """--deterministic: two runs give identical losses, per installed backend."""
    from fwbench.harness.catalog.backends import discover

    names = [n for n, b in discover().items() if b.installed and not b.options]
    if not names:
        pytest.skip("no backend installed")
    losses = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = fwbench("run", "--profile", "smoke", "--backends", ",".join(names), "--tasks", "mlp",
                    "--deterministic", "--out", str(out))
        assert r.returncode == 0, r.stderr
        records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert all(rec["status"] == "ok" and rec["determinism"] for rec in records)
        losses.append({rec["backend"]: (rec["epochs"][0]["train_loss"], rec["epochs"][0]["test_loss"])
                       for rec in records})
    assert losses[0] == losses[1] and len(losses[0]) == len(names)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["config"]["deterministic"] is True


def test_a_results_file_that_is_not_fwbench_s(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"name": "something else"}\n')
    r = fwbench("report", str(tmp_path))
    assert r.returncode == 2 and "not an fwbench record" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path):
    from filelock import FileLock

    with FileLock(str(tmp_path / ".fwbench.lock")):
        r = fwbench("run", "--profile", "smoke", "--backends", "torch", "--out", str(tmp_path))
    if "not installed" in r.stderr:
        pytest.skip("torch not installed")
    assert r.returncode == 2 and "another fwbench run is writing to" in r.stderr


@pytest.fixture
def toys(tmp_path):
    """The toy adapters (tests/toy_backend.py) registered as a plugin for CLI subprocesses."""
    from toy_plugin import make_toy_plugin

    folder = make_toy_plugin(tmp_path / "toy-plugin")
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(TESTS)])}


@pytest.mark.slow
def test_resume_refuses_every_changed_option(tmp_path, toys):
    out = tmp_path / "run"
    env = {**toys}
    r = fwbench("run", "--profile", "smoke", "--tasks", "mlp", "--backends", "constant",
                "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    for args, name in ((["--timeout", "5"], "timeout_s"), (["--memory-limit", "1"], "memory_limit_gib"),
                       (["--data-dir", str(tmp_path)], "data_dir"), (["--seeds", "2"], "seeds"),
                       (["--backends", "slow"], "backends"), (["--repeats", "3"], "repeats")):
        r = fwbench("run", "--resume", str(out), *args, env=env)
        assert r.returncode == 2 and name in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    same = fwbench("run", "--resume", str(out), "--timeout", "3600", env=env)
    assert same.returncode == 0, same.stderr
    # a changed environment (here: the recorded task definition) is refused unless forced
    meta_path = out / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["tasks"]["mlp"]["target_accuracy"] = 0.5
    meta["config"]["seeds"] = [0, 1]  # so that the forced resume has a cell to run
    meta_path.write_text(json.dumps(meta))
    r = fwbench("run", "--resume", str(out), env=env)
    assert r.returncode == 2 and "task mlp definition changed (target_accuracy)" in r.stderr
    assert "--force-resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    forced = fwbench("run", "--resume", str(out), "--force-resume", env=env)
    assert forced.returncode == 0, forced.stderr
    resumed = json.loads(meta_path.read_text())["resumed"]
    assert resumed[-1]["forced"] and any("mlp" in d for d in resumed[-1]["differences"])
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert fwbench("run", "--force-resume", env=env).returncode == 2


@pytest.mark.slow
def test_a_broken_or_clashing_plugin_is_a_warning_not_a_failure(tmp_path, toys):
    from toy_plugin import make_dist

    folder = tmp_path / "bad-plugins"
    make_dist(folder, "fwbench-broken", {"broken": "fwbench_broken_mod:BACKEND"},
              module="raise ImportError('this plugin needs a library that is missing')\n")
    make_dist(folder, "fwbench-impostor", {"torch": "fwbench_impostor_mod:BACKEND"},
              module="from fwbench.harness.adapter import Backend\n"
                     "BACKEND = Backend('torch', 'nowhere:Nothing', ())\n")
    env = {"PYTHONPATH": os.pathsep.join([str(folder), toys["PYTHONPATH"]])}
    r = fwbench("list", env=env)
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2, r.stderr
    assert any("fwbench-broken" in w and "ImportError" in w and "skipped" in w for w in warnings)
    assert any("fwbench-impostor" in w and "'torch'" in w and "ignored" in w for w in warnings)
    torch_row = next(x for x in r.stdout.splitlines() if x.strip("│ ").startswith("torch "))
    assert "built-in" in torch_row
    ok = fwbench("run", "--profile", "smoke", "--tasks", "mlp", "--backends", "constant",
                 "--out", str(tmp_path / "run"), env=env)
    assert ok.returncode == 0, ok.stderr


def test_corrupted_data_file_is_one_line(tmp_path, real_data_dir):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(real_data_dir / "mnist", data_dir / "mnist")
    target = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[200] ^= 0x01
    target.write_bytes(bytes(raw))
    r = fwbench("run", "--tasks", "mlp", "--backends", "torch", "--data-dir", str(data_dir),
                "--out", str(tmp_path / "run"))
    if "not installed" in r.stderr:
        pytest.skip("torch not installed")
    assert r.returncode == 2 and "t10k-labels-idx1-ubyte.gz: checksum mismatch" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
