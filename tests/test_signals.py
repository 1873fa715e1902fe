"""Stop signals and deaths as users hit them (background jobs, schedulers, hangups, kill -9),
each injected at a known moment; afterwards nothing the test started is alive.

Every test tags the processes it starts with a token in their environment (inherited by the
runner, its watchdogs, workers and their children) and counts only those; each kills what
is left of its own in a ``finally``.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from fwbench.harness.run import runner
from procs import TOKEN, OwnCgroups, cgroups_of, is_watchdog, is_worker, kill_tagged, tagged
from procs import wait_for as _wait

pytestmark = pytest.mark.slow  # processes or frameworks in every test (the quick subset skips them)

TESTS = Path(__file__).parent


@pytest.fixture
def ours(tmp_path):
    """A token for this test's processes, the environment carrying it (the toy backends as
    a plugin too), and the kill of whatever of them is left at the end."""
    from toy_plugin import make_toy_plugin

    token = uuid.uuid4().hex
    env = {**os.environ, TOKEN: token, "COLUMNS": "160",
           "PYTHONPATH": os.pathsep.join([str(make_toy_plugin(tmp_path / "toys")), str(TESTS)])}
    with OwnCgroups(token) as own:
        yield token, env
        kill_tagged(token)
    _wait(lambda: not cgroups_of(own.pids), 10, "this test's cells' cgroup folders to go")


def _run(run_dir: Path, backends: str, env: dict, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fwbench.harness.cli", "run", "--profile", "smoke",
                             "--tasks", "mlp", "--backends", backends, "--timeout", "120",
                             "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=preexec_fn)


def _cell_running(proc: subprocess.Popen, backend: str):
    """The worker of ``backend``'s cell, once it runs (its request names the backend)."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return None
    for p in tree:
        try:
            cmd = p.cmdline()
            if is_worker(cmd) and json.loads(Path(cmd[-1]).read_text())["backend"]["name"] == backend:
                return p
        except (psutil.Error, OSError, ValueError, KeyError):
            pass
    return None


def _backends(run_dir: Path) -> list[str]:
    path = run_dir / runner.RESULTS
    return [json.loads(x)["backend"] for x in path.read_text().splitlines()] if path.exists() else []


def _defaults():  # whatever pytest itself inherited (nohup, a background job)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _ignore_and_block_sigint():  # what a background job of a non-interactive shell inherits
    _defaults()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])


def _nohup():
    _defaults()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


SCENARIOS = {  # name: (signal sent, expected exit code, preexec_fn)
    "SIGINT": (signal.SIGINT, 130, _defaults),
    "SIGINT inherited ignored and blocked": (signal.SIGINT, 130, _ignore_and_block_sigint),
    "SIGTERM": (signal.SIGTERM, 143, _defaults),
    "SIGHUP": (signal.SIGHUP, 129, _defaults),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_stop_signal_mid_cell_keeps_records_prints_the_hint_and_leaves_nothing(
        scenario, tmp_path, ours):
    token, env = ours
    signum, code, preexec = SCENARIOS[scenario]
    run_dir = tmp_path / "run"
    proc = _run(run_dir, "constant,hang", env, preexec)
    try:
        _wait(lambda: _cell_running(proc, "hang"), 120, "the hanging cell to start")
        assert _backends(run_dir) == ["constant"]
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    _wait(lambda: not tagged(token), 5, "every process to end")
    print(f"SCENARIO {scenario}: exit {proc.returncode} after {took:.2f} s; alive after: "
          f"{tagged(token)}")
    assert proc.returncode == code, err[-2000:]
    assert f"Resume with: fwbench run --resume {run_dir}" in err
    assert ("SIGINT was ignored" in err) == (preexec is _ignore_and_block_sigint), err[-2000:]
    assert _backends(run_dir) == ["constant"]  # the finished cell kept, the killed one not


def test_a_hangup_under_nohup_is_ignored_and_sigterm_still_stops(tmp_path, ours):
    token, env = ours
    run_dir = tmp_path / "run"
    proc = _run(run_dir, "constant,hang", env, _nohup)
    try:
        worker = _wait(lambda: _cell_running(proc, "hang"), 120, "the hanging cell to start")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _no_signal_pending(proc.pid), 5, "the runner to take the hangup")
        assert proc.poll() is None and worker.is_running()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    _wait(lambda: not tagged(token), 5, "every process to end")


FAULTS = {  # FWBENCH_FAULT: expected exit code (the first signal's)
    "spawn": 130,  # inside the section that starts the watchdog and the worker
    "spawn:SIGTERM": 143,
    "started": 130,  # right after it
    "loop": 130,  # while the runner follows the worker
    "cleanup": 130,  # while the runner kills a finished cell's processes
    "loop,cleanup:SIGTERM": 130,  # a second signal during the cleanup changes nothing
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_signal_at_each_named_point_of_the_runner_leaves_nothing_alive(fault, tmp_path, ours):
    token, env = ours
    run_dir = tmp_path / "run"
    proc = _run(run_dir, "constant", {**env, "FWBENCH_FAULT": fault}, _defaults)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    print(f"FAULT {fault}: exit {proc.returncode}")
    assert proc.returncode == FAULTS[fault], err[-2000:]
    assert f"Resume with: fwbench run --resume {run_dir}" in err
    _wait(lambda: not tagged(token), 5, "every process to end")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _no_signal_pending(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["ShdPnd"], 16) == 0 and int(fields["SigPnd"], 16) == 0


@pytest.mark.parametrize("setsid", [False, True], ids=["in-group", "setsid"])
def test_the_watchdog_ignores_interrupts_and_kills_the_tree_when_the_runner_is_killed(
        setsid, tmp_path, ours):
    """SIGINT, SIGHUP and SIGQUIT to the watchdog leave it running; then kill -9 of the runner
    takes the worker and the child it started (even one that left the group) within 5 s."""
    token, env = ours
    spawned = tmp_path / "spawned.txt"
    spawned.write_text("")
    env = {**env, "FWBENCH_TEST_SPAWN": str(spawned), **({"FWBENCH_TEST_SETSID": "1"} if setsid else {})}
    proc = _run(tmp_path / "run", "spawner", env, _defaults)
    try:
        worker = _wait(lambda: _cell_running(proc, "spawner"), 120, "the spawner cell")
        request = Path(worker.cmdline()[-1])
        child = psutil.Process(int(_wait(lambda: spawned.read_text().split(), 60,
                                         "the worker's child")[0]))
        (dog,) = [p for p in psutil.Process(proc.pid).children() if is_watchdog(p.cmdline())]
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            dog.send_signal(signum)
        _wait(lambda: _no_signal_pending(dog.pid), 5, "the watchdog to take the signals")
        assert dog.status() != psutil.STATUS_ZOMBIE and worker.is_running()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        _, alive = psutil.wait_procs([dog, worker, child], timeout=5)
        assert not alive, alive
        assert not request.exists(), "the watchdog removes the cell's request file"
    finally:
        proc.kill()
    _wait(lambda: not tagged(token), 5, "every process to end")


def test_a_worker_whose_forked_child_holds_the_pipe_ends_ok_at_its_exit(tmp_path, ours,
                                                                        monkeypatch):
    """The cell ends when the worker exits, not when its pipe closes: a forked sleeper that
    keeps the pipe open neither delays the record nor outlives the cell."""
    from test_runner import TOYS, config

    token, env = ours
    spawned = tmp_path / "spawned.txt"
    spawned.write_text("")
    for name in (TOKEN, "PYTHONPATH"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("FWBENCH_TEST_SPAWN", str(spawned))
    (record,) = runner.run(config(["forker"], timeout=60), tmp_path / "run", TOYS)
    assert record.status == "ok", record.error
    assert record.wall_s < 3, record.wall_s
    sleeper = int(spawned.read_text().split()[0])
    _wait(lambda: _gone(sleeper), 5, "the sleeper to die")
    assert record.containment and record.noise.runner_cores is not None
    _wait(lambda: not tagged(token), 5, "every process to end")


def test_a_dead_watchdog_fails_its_cell_and_the_run_goes_on(tmp_path, ours, monkeypatch):
    import threading

    from test_runner import TOYS, config

    token, env = ours
    mark = tmp_path / "in-step.txt"
    for name in (TOKEN, "PYTHONPATH"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("FWBENCH_TEST_MARK", str(mark))
    box = {}
    thread = threading.Thread(target=lambda: box.update(
        out=runner.run(config(["hang", "constant"], timeout=120), tmp_path / "run", TOYS)))
    thread.start()
    try:
        worker = psutil.Process(int(_wait(lambda: mark.exists() and mark.read_text().split(), 120,
                                          "the hanging step")[0]))
        dog = worker.parent()
        assert is_watchdog(dog.cmdline())
        dog.kill()
        thread.join(60)
        psutil.wait_procs([worker], timeout=5)
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    finally:
        kill_tagged(token)
        thread.join(60)
    hang, constant = box["out"]
    assert hang.status == "crashed" and "watchdog died" in hang.error, hang.error
    assert constant.status == "ok"


def test_a_watchdog_that_does_not_lead_its_group_never_kills_the_group(ours):
    """Run by hand (or by anything but the runner) the watchdog is not its group's leader: its
    kill order kills its own tree, not the caller's group. Contained: the caller is a helper
    with a session of its own, which prints its watchdog's exit code and then that it lives."""
    from fwbench.harness.run import supervise

    token, env = ours
    helper = ("import subprocess, sys\n"
              f"dog = subprocess.Popen([sys.executable, '-I', '-S', {supervise.WATCHDOG!r}, '1', "
              "'--', '/bin/sleep', '60'])\n"  # runner pid 1 is not its parent: it kills at once
              "print(dog.wait(timeout=30), 'alive', flush=True)\n")
    out = subprocess.run([sys.executable, "-c", helper], env=env, start_new_session=True,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.split()) == (0, ["137", "alive"]), (out.returncode, out.stderr)


def test_a_cell_folder_left_by_a_watchdog_killed_from_outside_goes_with_the_next_cell(
        tmp_path, ours, monkeypatch):
    """A watchdog SIGKILLed from outside (a Ray worker that ends kills its children) cannot
    remove its cgroup: the next cell on the machine removes it, killing what is still in it."""
    from fwbench.harness.run import watchdog
    from test_runner import TOYS, config

    token, env = ours
    gone = subprocess.Popen(["true"])
    gone.wait()  # a watchdog pid that is no longer alive
    folder = watchdog.cell_cgroup(gone.pid)
    try:
        os.mkdir(folder or "")
    except OSError as exc:
        pytest.skip(f"no cgroup v2 to create a cell's folder in here ({exc.strerror})")
    sleeper = subprocess.Popen(["sleep", "60"], env=env)
    try:
        with open(os.path.join(folder, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        for name in (TOKEN, "PYTHONPATH"):
            monkeypatch.setenv(name, env[name])
        (record,) = runner.run(config(["constant"], timeout=60), tmp_path / "run", TOYS)
        assert record.status == "ok", record.error
        assert not os.path.exists(folder)
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        sleeper.kill()
        if os.path.isdir(folder):
            watchdog.remove_cgroup(folder)
