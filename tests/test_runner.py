"""The runner with toy adapters in real worker processes: statuses, records, resume, kills."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from fwbench.harness import records
from fwbench.harness.run import runner, supervise
from fwbench.harness.adapter import Backend
from fwbench.harness.errors import FwbenchError
from procs import cgroups_of, is_worker, wait_for as _wait

TESTS = Path(__file__).parent


def toy(name, cls):
    return Backend(name=name, adapter=f"toy_backend:{cls}", requires=(), source="test")


TOYS = {n: toy(n, c) for n, c in (("constant", "Constant"), ("crash", "Crash"), ("hang", "Hang"),
                                  ("nan", "NaN"), ("fail", "Fail"), ("hog", "Hog"),
                                  ("slow", "Slow"), ("scalars", "NumpyScalars"),
                                  ("spawner", "Spawner"), ("forker", "Forker"))}


@pytest.fixture
def toy_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    return TOYS


def config(backends, timeout=60.0, tasks=("mlp",), seeds=(0,), memory=None):
    return runner.RunConfig(tuple(tasks), tuple(backends), "smoke", tuple(seeds), 1, timeout,
                            memory_limit_gib=memory)


def read(run_dir):
    return records.read_records(Path(run_dir) / runner.RESULTS)


@pytest.mark.slow
def test_every_cell_ends_with_a_status_and_the_run_goes_on(tmp_path, toy_env):
    out = runner.run(config(["crash", "fail", "nan", "constant", "hang"], timeout=10),
                     tmp_path, toy_env)
    status = {r.backend: r for r in out}
    assert status["crash"].status == "crashed" and "SIGABRT" in status["crash"].error
    assert status["fail"].status == "failed"
    assert status["fail"].error == "ValueError: this adapter cannot build anything"  # one line
    assert status["nan"].status == "diverged" and "step 1" in status["nan"].error
    assert status["hang"].status == "timeout" and "10 s" in status["hang"].error
    assert 10 <= status["hang"].wall_s < 30  # the timeout record's own wall time is real
    ok = status["constant"]
    assert ok.status == "ok" and ok.test_accuracy == pytest.approx(0.107, abs=0.01)
    assert ok.steps == 3000 // 128 and len(ok.epochs) == 1
    assert ok.epochs[0].test_accuracy == ok.test_accuracy
    # one definition of throughput: the batch over the median steady-state step time
    assert ok.throughput_samples_s == pytest.approx(128 / (ok.step_time_ms.p50 / 1e3))
    for key in ("train_time_s", "peak_rss_mib", "param_count", "framework_version", "threads",
                "import_s", "log", "started", "ended"):
        assert getattr(ok, key) is not None, key
    assert (tmp_path / ok.log).is_file()
    lines = [json.loads(x) for x in (tmp_path / runner.RESULTS).read_text().splitlines()]
    assert [x["backend"] for x in lines] == ["crash", "fail", "nan", "constant", "hang"]
    assert all(x["schema"] == records.SCHEMA for x in lines)
    meta = records.load_meta(tmp_path)
    assert meta.config.backends[0] == "crash"
    assert meta.tasks["mlp"]["layers"][1] == {"type": "Dense", "units": 512}
    assert meta.backends["constant"].adapter == "toy_backend:Constant"
    assert meta.backends["constant"].adapter_sha256  # the toy module's source, hashed


@pytest.mark.slow
def test_numpy_scalars_in_thread_settings_keep_the_cell_ok(tmp_path, toy_env):
    (r,) = runner.run(config(["scalars"]), tmp_path, toy_env)
    assert r.status == "ok", r.error
    assert r.thread_settings == {"intra_op": 1, "ratio": 0.5, "flag": True}
    assert r.determinism["seed"] == 0 and r.determinism["object"].startswith("<object")


def test_plan_interleaves_backends_in_rounds():
    cfg = runner.RunConfig(("mlp", "lenet"), ("a", "b"), "smoke", (0, 1), 1, 60.0, repeats=2)
    rounds = runner.plan(cfg)
    assert [(c.task, c.backend, c.seed) for c in rounds[0][:4]] == [
        ("mlp", "a", 0), ("mlp", "b", 0), ("lenet", "a", 0), ("lenet", "b", 0)]
    assert len(rounds[0]) == 8 and len(rounds) == 3
    assert [c.ident for c in rounds[2]] == [("mlp", "a", 0, 2), ("mlp", "b", 0, 2),
                                            ("lenet", "a", 0, 2), ("lenet", "b", 0, 2)]


@pytest.mark.slow
def test_repeats_are_timing_only_with_a_drift_probe_per_round_and_noise_per_cell(tmp_path, toy_env):
    cfg = runner.RunConfig(("mlp",), ("constant", "slow"), "smoke", (0,), 1, 60.0, repeats=1,
                           timing_steps=5)
    out = runner.run(cfg, tmp_path, toy_env)
    assert [(r.backend, r.repeat) for r in out] == [("constant", 0), ("slow", 0), ("constant", 1), ("slow", 1)]
    timing = [r for r in out if r.repeat]
    assert all(r.test_accuracy is None and r.epochs == [] and r.steps == 5 for r in timing)
    assert all(r.status == "ok" and r.noise is not None and r.noise.busy is not None
               for r in out)
    meta = records.load_meta(tmp_path)
    assert [p.round for p in meta.drift_probes] == [0, 1]
    assert all(p.median_ms and p.median_ms > 0 for p in meta.drift_probes)
    assert meta.stopping["mlp/slow"].processes == 2 and "planned" in meta.stopping["mlp/slow"].reason
    assert meta.noise_at_start is not None and meta.noise_at_start.busy is not None


@pytest.mark.slow
def test_adaptive_repeats_stop_at_the_ci_or_the_cap(tmp_path, toy_env):
    """--until-ci: the toy 'slow' cell (0.1 s sleeps: very stable) stops once its CI is
    narrow, which the exact order-statistic CI allows from 6 processes; a 0.001% target
    is never met, so the cap stops it. The target is 25% and each process's figure the median
    of 7 steady steps: on a loaded machine (load 6.7 on 2 cores) a 5% target over 3 steps was
    missed once, the wake-ups of a sleep delayed by more than 5 ms."""
    cfg = runner.RunConfig(("mlp",), ("slow",), "smoke", (0,), 1, 60.0, timing_steps=8,
                           until_ci_pct=25.0, max_processes=8)
    runner.run(cfg, tmp_path / "a", toy_env)
    meta = records.load_meta(tmp_path / "a")
    assert meta.stopping["mlp/slow"].processes == 6
    assert "within +-25%" in meta.stopping["mlp/slow"].reason
    cfg = dataclasses.replace(cfg, until_ci_pct=0.00001, max_processes=7)
    runner.run(cfg, tmp_path / "b", toy_env)
    meta = records.load_meta(tmp_path / "b")
    assert meta.stopping["mlp/slow"].processes == 7 and "cap of 7" in meta.stopping["mlp/slow"].reason
    assert len(read(tmp_path / "b")) == 7


@pytest.mark.slow
def test_resume_skips_finished_cells(tmp_path, toy_env):
    first = runner.run(config(["constant"], seeds=(0,)), tmp_path, toy_env)
    assert len(first) == 1
    second = runner.run(config(["constant"], seeds=(0, 1)), tmp_path, toy_env)
    assert [r.seed for r in second] == [1]
    assert len(read(tmp_path)) == 2
    assert len(records.load_meta(tmp_path).resumed) == 1


def test_partial_last_line_is_ignored_and_garbage_refused(tmp_path):
    good = json.dumps({"schema": records.SCHEMA, "task": "mlp", "backend": "x", "seed": 0, "status": "ok"})
    path = tmp_path / runner.RESULTS
    path.write_text(good + "\n" + good[:20])
    assert len(records.read_records(path)) == 1
    path.write_text("not json\n" + good + "\n")
    with pytest.raises(FwbenchError, match="line 1 is not JSON"):
        records.read_records(path)
    path.write_text(json.dumps({"hello": 1}) + "\n")
    with pytest.raises(FwbenchError, match="not an fwbench record"):
        records.read_records(path)


def test_a_record_of_another_schema_is_refused_in_one_line(tmp_path):
    path = tmp_path / runner.RESULTS
    old = {"task": "mlp", "backend": "x", "seed": 0, "status": "ok"}
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(FwbenchError, match="older fwbench") as e:
        records.read_records(path)
    assert "\n" not in str(e.value)
    path.write_text(json.dumps({**old, "schema": 99}) + "\n")
    with pytest.raises(FwbenchError, match="schema 99"):
        records.read_records(path)
    path.write_text(json.dumps({**old, "schema": records.SCHEMA, "surprise": 1}) + "\n")
    with pytest.raises(FwbenchError, match="unknown field.*surprise"):
        records.read_records(path)


@pytest.mark.slow
def test_resume_after_a_torn_line_cuts_it_and_the_file_stays_readable(tmp_path, toy_env):
    """A kill during the write leaves half a line; resume must not append onto it."""
    runner.run(config(["constant"], seeds=(0, 1)), tmp_path, toy_env)
    path = tmp_path / runner.RESULTS
    lines = path.read_text().splitlines(keepends=True)
    torn = lines[1][: len(lines[1]) // 2]
    path.write_text(lines[0] + torn)  # as a kill in the middle of the second write leaves it
    resumed = runner.run(config(["constant"], seeds=(0, 1)), tmp_path, toy_env)
    assert [r.seed for r in resumed] == [1]
    final = read(tmp_path)
    assert sorted(r.seed for r in final) == [0, 1]
    assert (tmp_path / "results.torn-1.txt").read_text() == torn
    assert records.load_meta(tmp_path).resumed[-1].torn_line == "results.torn-1.txt"
    assert path.read_text().endswith("\n")


@pytest.mark.slow
def test_memory_limit_kills_the_cell_as_oom(tmp_path, toy_env):
    out = runner.run(config(["hog", "constant"], memory=1.0), tmp_path, toy_env)
    assert out[0].status == "oom" and "exceeded the limit of 1 GiB" in out[0].error
    assert out[1].status == "ok"


@pytest.mark.slow
def test_a_sigkill_from_outside_is_killed_not_oom(tmp_path, toy_env, monkeypatch):
    mark = tmp_path / "in-step.txt"
    monkeypatch.setenv("FWBENCH_TEST_MARK", str(mark))
    box = {}
    thread = threading.Thread(target=lambda: box.update(
        out=runner.run(config(["hang"], timeout=120), tmp_path, toy_env)))
    thread.start()
    try:
        pid = int(_wait(lambda: mark.exists() and mark.read_text().split())[0])
        os.kill(pid, signal.SIGKILL)  # the worker, inside the adapter's hanging step
        thread.join(60)
    finally:
        if thread.is_alive() and mark.exists():
            for p in psutil.Process(int(mark.read_text().split()[0])).parents()[:1]:
                p.kill()  # the watchdog: the cell ends, the run with it
    (r,) = box["out"]
    assert r.status == "killed" and "SIGKILL from outside fwbench" in r.error


def test_oom_classification_needs_evidence(tmp_path, monkeypatch):
    monkeypatch.setattr(supervise, "oom_kills", lambda: 6)  # the counter rose during the cell
    o = supervise._classify_exit(-signal.SIGKILL, tmp_path / "log", 5, 0, None)
    assert o.status == "oom" and "OOM killer" in o.error
    o = supervise._classify_exit(-signal.SIGKILL, tmp_path / "log", None, 95 * 2**20, 100 * 2**20)
    assert o.status == "oom" and "near the limit" in o.error
    monkeypatch.setattr(supervise, "oom_kills", lambda: 5)
    o = supervise._classify_exit(-signal.SIGKILL, tmp_path / "log", 5, 10 * 2**20, 100 * 2**20)
    assert o.status == "killed"
    assert supervise._classify_exit(-signal.SIGSEGV, tmp_path / "log", 5, 0, None).status == "crashed"
    monkeypatch.undo()
    assert supervise.oom_kills() is None or supervise.oom_kills() >= 0  # the real counter reads


RUNNER_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_runner import TOYS, config
from fwbench.harness.run import runner
runner.run(config([{backend!r}], seeds=(0, 1, 2, 3)), Path({run_dir!r}), TOYS)
"""


def _start_runner(run_dir, backend, env=None):
    script = RUNNER_SCRIPT.format(tests=str(TESTS), run_dir=str(run_dir), backend=backend)
    return subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **(env or {})})


def _alive(pids):
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("moment", ["between cells", "mid-cell"])
@pytest.mark.slow
def test_kill_9_of_the_runner_then_resume(tmp_path, toy_env, moment, monkeypatch):
    """No record lost, none duplicated, no process of a cell outlives the runner -- not even
    the worker's own children (the toy spawns one, as torch.compile does)."""
    spawned = tmp_path / "spawned.txt"
    spawned.write_text("")
    env = {"FWBENCH_TEST_SPAWN": str(spawned)}
    run_dir = tmp_path / "run"
    proc = _start_runner(run_dir, "spawner", env)
    results = run_dir / runner.RESULTS
    try:
        _wait(lambda: len(read(run_dir)) >= 1, 120)
        if moment == "mid-cell":
            _wait(lambda: len(spawned.read_text().split()) >= 2, 60)  # the second cell trains
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert family or moment == "between cells", "a cell should be running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    children = [int(x) for x in spawned.read_text().split()]
    _wait(lambda: not _alive(family + children), 15)
    done = read(run_dir)
    assert 1 <= len(done) < 4
    monkeypatch.setenv("FWBENCH_TEST_SPAWN", str(spawned))
    resumed = runner.run(config(["spawner"], seeds=(0, 1, 2, 3)), run_dir, TOYS)
    final = read(run_dir)
    assert len(resumed) == 4 - len(done)
    assert sorted(r.seed for r in final) == [0, 1, 2, 3]
    assert results.read_text().endswith("\n")
    # every cell's child was killed when its cell ended, and no cell left its cgroup folder
    _wait(lambda: not _alive([int(x) for x in spawned.read_text().split()]), 15)
    _wait(lambda: not cgroups_of(family), 10, "the killed cell's cgroup folder to go")


@pytest.mark.slow
def test_torch_compile_workers_die_with_the_runner(tmp_path):
    """torch.compile's compile workers are real children of the worker process; none survives
    a kill -9 of the runner. (torch's compile workers also watch their parent themselves:
    the Spawner toy in test_kill_9_of_the_runner_then_resume[mid-cell] is the case that
    fails without fwbench's watchdog -- checked by disabling it.)"""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    from fwbench.harness.catalog.backends import discover

    script = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(TESTS)!r})\n"
              "from fwbench.harness.run import runner\nfrom fwbench.harness.catalog.backends import discover\n"
              "b = discover()\n"
              f"runner.run(runner.RunConfig(('mlp',), ('torch-compile',), 'smoke', (0,), 2, 600.0),"
              f" Path({str(tmp_path)!r}), b)\n")
    assert "torch-compile" in discover()
    proc = subprocess.Popen([sys.executable, "-c", script])

    def compiling():
        kids = psutil.Process(proc.pid).children(recursive=True)
        workers, deeper = [], []
        for k in kids:  # a watchdog of an earlier probe may be a zombie a moment
            try:
                if is_worker(k.cmdline()):
                    workers.append(k)
                    deeper += k.children(recursive=True)
            except psutil.Error:
                pass
        return (kids, deeper) if deeper else None

    try:
        try:
            kids, deeper = _wait(compiling, 300)
        except AssertionError:
            pytest.skip("torch.compile started no child process on this machine")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait(lambda: not _alive([k.pid for k in kids + deeper]), 20)
    finally:
        proc.kill()


class _Looks:
    """An executor whose noise probe reports the given loads (cores of other processes), one per
    look, and records each look's seconds."""

    def __init__(self, *others_cores):
        self.left, self.seconds = list(others_cores), []

    def noise(self, threads, seconds):
        from fwbench.harness.measure import noise

        self.seconds.append(seconds)
        o = self.left.pop(0)
        return {"local": noise.Busy(seconds, (0,), o + 0.1, 0.1, o, o, 0.0, 0.0, 1.0, ())}


@pytest.mark.parametrize("loads, refused, looks", [
    ((0.0,), False, [1.0]),  # quiet: one look
    ((0.5, 0.0), False, [1.0, 2.0]),  # a blip: let through on the second look
    ((0.5, 0.5), True, [1.0, 2.0]),  # a load that lasts: refused
])
def test_noise_guard_looks_twice_before_refusing(loads, refused, looks):
    meta = type("Meta", (), {"noise_at_start": None})()
    executor = _Looks(*loads)
    cfg = dataclasses.replace(config(["constant"]), profile="quick")
    if refused:
        with pytest.raises(FwbenchError, match=r"busy \(and again over the next 2 s\): cores 0 over 2.00 s: other processes used 0.50"):
            runner._noise_guard(cfg, executor, meta, lambda s: None)
    else:
        runner._noise_guard(cfg, executor, meta, lambda s: None)
    assert executor.seconds == looks and meta.noise_at_start.looks == len(looks)
    assert meta.noise_at_start.busy is refused


def test_noise_guard_smoke_and_allow_busy_warn_after_one_look():
    for cfg in (config(["constant"]), dataclasses.replace(config(["constant"]), profile="quick", allow_busy=True)):
        meta, said = type("Meta", (), {"noise_at_start": None})(), []
        executor = _Looks(0.5)
        runner._noise_guard(cfg, executor, meta, said.append)
        assert executor.seconds == [1.0] and meta.noise_at_start.busy is True
        assert said and said[0].startswith("warning: the machine is busy: cores 0 over 1.00 s: other processes used 0.50")
