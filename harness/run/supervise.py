"""Process supervision: one worker process per job, started by a ``watchdog`` that leads
the cell's process group and owns its whole process tree, with a timeout and a memory limit
on that tree, and an ``Outcome`` whatever happens to it. The cell ends when the worker exits
(the watchdog says so on the pipe); a stop signal (``signals``) ends it at once; either way
nothing of the cell survives ``run_worker``. The runner, the executors and the checks all
start their workers here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fwbench.harness import records
from fwbench.harness.run import signals, watchdog


@dataclass
class Outcome:
    """How a worker process ended: its status, one-line error and measurements."""

    status: str
    error: str | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    pids: list[int] = dataclasses.field(default_factory=list)  # the cell's processes seen
    containment: str | None = None  # how the watchdog held the cell's processes


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int) -> int:
    """Resident memory of one process in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return 0


def oom_kills() -> int | None:
    """The kernel's OOM-kill counter: the cgroup's (v2 ``memory.events``) if this process
    sits in one, else the machine's (``/proc/vmstat`` ``oom_kill``); None if neither exists."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if path is not None:
            with open(f"/sys/fs/cgroup{path}/memory.events") as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


WATCHDOG = str(Path(__file__).with_name("watchdog.py"))
SAMPLE_S = 0.5  # how often the runner reads the cell's process tree (memory, pids)
POLL_S = 0.5  # how long the runner waits for a line before it checks the rest (signals, time)
DRAIN_S = 2.0  # how long the runner reads a dead watchdog's pipe for the last lines
KILL_WAIT_S = 5.0  # how long the watchdog may take to kill the cell before the runner does


def _kill_cell(dog: subprocess.Popen, cgroup: str | None, known: list) -> None:
    """Kill everything of the cell: the watchdog kills its cgroup or its whole tree (it is
    the subreaper of the worker's descendants) and its group; then the runner SIGKILLs the
    group and every process it saw during the cell (in case the watchdog was dead already),
    and removes the cell's cgroup."""
    import psutil

    try:
        dog.send_signal(signal.SIGTERM)
        dog.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(dog.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in known:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        dog.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot stop
        pass
    # The watchdog removes its cgroup itself; not if it died first, or was killed before the
    # runner read its first line (then the folder is where it would have made it).
    folder = cgroup or watchdog.cell_cgroup(dog.pid)
    if folder is not None and os.path.isdir(folder):  # with what the watchdog left in it
        watchdog.kill_cgroup(folder, KILL_WAIT_S)
    watchdog.sweep(folder)  # and any a watchdog killed from outside left


def _in_group(group: int) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        return {"process_group": group}
    return {"preexec_fn": lambda: os.setpgid(0, group)}  # pragma: no cover - Python 3.10


def _worker_env(python: str | None) -> dict[str, str]:
    """The worker's environment: unbuffered output; an env's interpreter sees its env only
    (no PYTHONPATH, its env's bin first on PATH)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if python is not None:
        for var in ("PYTHONPATH", "PYTHONHOME"):
            env.pop(var, None)
        prefix = str(Path(python).parent.parent)
        env.update(VIRTUAL_ENV=prefix, PATH=os.pathsep.join([str(Path(python).parent),
                                                             env.get("PATH", "")]))
    return env


def _write_request(request: records.Request) -> str:
    """The request as a temporary JSON file (the worker's one argument)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(request.to_json(), f)
        return f.name


class _Watch:
    """What the runner sees of one running cell: the lines of its pipe (the worker's events
    and the watchdog's, read on a thread), its process tree (sampled every SAMPLE_S) and the
    record it sent."""

    def __init__(self, dog: subprocess.Popen, seen: list) -> None:
        import psutil

        self.dog, self.seen = dog, seen
        self.watched = psutil.Process(dog.pid)
        seen.append(self.watched)
        self.known = {dog.pid}
        self.events: queue.Queue[str | None] = queue.Queue()
        self.result: dict[str, Any] | None = None
        self.exit: dict[str, Any] | None = None  # the watchdog's word on the worker's exit
        self.containment: str | None = None
        self.cgroup: str | None = None
        self.last_rss = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.dog.stdout is not None
        for line in self.dog.stdout:
            self.events.put(line)
        self.events.put(None)

    def handle(self, line: str, on_event: Callable[[dict[str, Any]], None]) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        kind = event.get("event")
        if kind == "record":
            self.result = event["record"]
        elif kind == "exit":
            self.exit = event
        elif kind == "watchdog":
            self.containment, self.cgroup = event.get("containment"), event.get("cgroup")
        else:
            on_event(event)

    def _pids(self) -> list[int]:
        """The cell's processes below the watchdog: its cgroup's list where it has one (one
        small read), else a walk of the process table (a read of every process's stat)."""
        import psutil

        if self.cgroup is not None:
            try:
                with open(os.path.join(self.cgroup, "cgroup.procs")) as f:
                    return [pid for pid in map(int, f.read().split()) if pid != self.dog.pid]
            except OSError:
                pass
        try:
            return [p.pid for p in self.watched.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> int:
        """The worker tree's resident memory now (the last figure if it cannot be read); every
        process seen is remembered (``seen``: psutil handles, safe against pid reuse)."""
        import psutil

        pids = self._pids()
        for pid in pids:
            if pid not in self.known:
                try:
                    self.seen.append(psutil.Process(pid))
                except psutil.Error:
                    continue
                self.known.add(pid)
        self.last_rss = sum(_rss(pid) for pid in pids) or self.last_rss
        return self.last_rss

    def _drain(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        """The watchdog is gone: the lines still in its pipe, for at most DRAIN_S (a
        descendant of the worker may hold the pipe open)."""
        deadline = time.monotonic() + DRAIN_S
        while self.exit is None and (left := deadline - time.monotonic()) > 0:
            try:
                line = self.events.get(timeout=left)
            except queue.Empty:
                return
            if line is None:
                return
            self.handle(line, on_event)

    def follow(self, timeout_s: float, limit: float | None,
               on_event: Callable[[dict[str, Any]], None],
               stop: threading.Event | None = None) -> Outcome | None:
        """Until the worker exits (None: its exit code is ``self.exit``), its watchdog dies,
        or the timeout or the memory limit ends the cell (that outcome). A signal for the
        run raises ``Interrupted`` here (``signals.check``)."""
        deadline = time.monotonic() + timeout_s
        next_sample = 0.0
        while self.exit is None:
            signals.check()
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt("stopped by the caller")
            try:
                line = self.events.get(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                line = ""
            if line:
                self.handle(line, on_event)
                signals.fault("loop")
            elif line is None or self.dog.poll() is not None:
                if line is not None:  # no end of file yet: lines may still be on their way
                    self._drain(on_event)
                if self.exit is None:
                    return Outcome("crashed", f"the cell's watchdog died (exit code "
                                              f"{self.dog.wait()}) before the worker ended")
                break
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + SAMPLE_S
                rss = self.sample()
                if limit is not None and rss > limit:
                    return Outcome("oom", f"resident memory {rss / 2**30:.2f} GiB "
                                          f"exceeded the limit of {limit / 2**30:g} GiB; killed")
            if time.monotonic() >= deadline:
                return Outcome("timeout", f"no result after {timeout_s:g} s; killed")
        return None


def run_worker(request: records.Request, log_path: Path, timeout_s: float,
               on_event: Callable[[dict[str, Any]], None],
               memory_limit_gib: float | None = None, python: str | None = None,
               stop: threading.Event | None = None) -> Outcome:
    """Run one worker process for ``request``; its outcome, whatever happens to it.

    ``python``: the interpreter of the worker (a backend's env, ``--envs isolated``; it gets
    no PYTHONPATH, and its env's bin first on PATH); default: the runner's own. ``stop``:
    set by a caller that runs several at once from threads when it is interrupted (a signal
    raises in the main thread only); the cell then ends as on a signal.

    A watchdog (``watchdog``) leads the cell's process group, starts the worker and kills
    everything of the cell when the runner dies (even by kill -9) or asks it to; the runner
    asks when the worker has exited, timed out, exceeded the memory limit, or on a signal
    (``signals``), so no process of the cell outlives it. The processes start inside a
    ``signals.blocked`` section: no signal lands between their start and the ``try`` that
    cleans them up. The memory limit is enforced on the resident memory of the worker's
    process tree, sampled every SAMPLE_S (an address-space rlimit would break JAX and
    TensorFlow, which reserve far more virtual memory than they use).
    """
    limit = memory_limit_gib * 2**30 if memory_limit_gib else None
    oom_before = oom_kills()
    seen: list = []
    dog: subprocess.Popen | None = None
    watch: _Watch | None = None
    cfg_path: str | None = None
    try:
        with signals.blocked():
            cfg_path = _write_request(request)
            worker = [python or sys.executable, "-m", "fwbench.harness.run.worker", cfg_path]
            with open(log_path, "w") as log:
                dog = subprocess.Popen(
                    [sys.executable, "-I", "-S", WATCHDOG, str(os.getpid()), cfg_path, "--", *worker],
                    stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                    # Frameworks drop files into the working directory (MindSpore's rank_0/
                    # graph dumps): the worker runs in the folder of its log, not the user's.
                    cwd=log_path.resolve().parent, env=_worker_env(python), **_in_group(0))
            signals.fault("spawn")
            watch = _Watch(dog, seen)
        signals.fault("started")
        outcome = watch.follow(timeout_s, limit, on_event, stop)
    finally:
        with signals.deferred():
            signals.fault("cleanup")
            if dog is not None:
                _kill_cell(dog, watch.cgroup if watch else None, seen)
            if cfg_path is not None:
                try:
                    os.unlink(cfg_path)
                except FileNotFoundError:  # the watchdog removed it when it killed the cell
                    pass
    if outcome is None and watch.result is not None:
        result = watch.result
        outcome = Outcome(result.pop("status", "crashed"), result.pop("error", None), result)
    if outcome is None:
        assert watch.exit is not None
        outcome = _classify_exit(watch.exit["code"], log_path, oom_before, watch.last_rss, limit,
                                 watch.exit.get("error"))
    outcome.pids = [p.pid for p in seen]
    outcome.containment = watch.containment
    return outcome


def _classify_exit(code: int, log_path: Path, oom_before: int | None, last_rss: int,
                   limit: float | None, error: str | None = None) -> Outcome:
    """A worker that ended without a record: ``oom`` only with evidence, else by signal."""
    if error is not None:  # the watchdog could not start it
        return Outcome("crashed", f"{error}; see {log_path}")
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            after = oom_kills()
            if oom_before is not None and after is not None and after > oom_before:
                return Outcome("oom", f"killed by the kernel's OOM killer (its oom_kill counter "
                                      f"rose from {oom_before} to {after} during the cell); see {log_path}")
            if limit is not None and last_rss > 0.9 * limit:
                return Outcome("oom", f"worker killed by SIGKILL with resident memory at "
                                      f"{last_rss / 2**30:.1f} GiB, near the limit; see {log_path}")
            return Outcome("killed", f"worker killed by SIGKILL from outside fwbench (no sign of "
                                     f"memory exhaustion); see {log_path}")
        return Outcome("crashed", f"worker killed by {name}; see {log_path}")
    return Outcome("crashed", f"worker exited with code {code} without a record; see {log_path}")
