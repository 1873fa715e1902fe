"""Process supervision: one worker process per job, in a process group that dies with the
runner (a ``watchdog`` leads it), with a timeout and a memory limit on its whole process tree,
and an ``Outcome`` whatever happens to it. The runner, the executors and the checks all start
their workers here.
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
from fwbench.harness.errors import FwbenchError


@dataclass
class Outcome:
    """How a worker process ended: its status, one-line error and measurements."""

    status: str
    error: str | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    pids: list[int] = dataclasses.field(default_factory=list)  # the cell's processes seen


def _tree(proc) -> list:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _tree_rss(procs: list) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


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


def _start_watchdog() -> subprocess.Popen:
    """A watchdog leading a new process group (in the runner's session: a process may only
    join a group of its own session); the worker joins that group (see ``watchdog``)."""
    dog = subprocess.Popen([sys.executable, "-m", "fwbench.harness.run.watchdog", str(os.getpid())],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                           **_in_group(0))
    assert dog.stdout is not None
    if dog.stdout.readline().strip() != "ready":
        dog.kill()
        raise FwbenchError("the worker watchdog did not start")
    return dog


def _kill_group(group: int, known: list) -> None:
    """SIGKILL the cell's process group and every descendant seen during the cell (a
    process that left the group with setsid is still among them if it was ever seen)."""
    import psutil

    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in known:
        try:
            p.kill()
        except psutil.Error:
            pass


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
        json.dump({**request.to_json(), "runner_pid": os.getpid()}, f)
        return f.name


class _Watch:
    """What the runner sees of one running worker: its output lines (read on a thread), its
    process tree (sampled every 0.1 s) and the record it sent."""

    def __init__(self, proc: subprocess.Popen, seen: list, group: int) -> None:
        import psutil

        self.proc, self.seen, self.group = proc, seen, group
        self.watched = psutil.Process(proc.pid)
        self.events: queue.Queue[str | None] = queue.Queue()
        self.result: dict[str, Any] | None = None
        self.last_rss = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(line)
        self.events.put(None)

    def handle(self, line: str, on_event: Callable[[dict[str, Any]], None]) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        if event.get("event") == "record":
            self.result = event["record"]
        else:
            on_event(event)

    def sample(self) -> int:
        """The tree's resident memory now (the last figure if it cannot be read)."""
        tree = _tree(self.watched)
        self.seen.extend(p for p in tree if p not in self.seen)
        self.last_rss = _tree_rss(tree) or self.last_rss
        return self.last_rss

    def follow(self, timeout_s: float, limit: float | None, limit_gib: float | None,
               on_event: Callable[[dict[str, Any]], None]) -> Outcome | None:
        """Until the worker's output ends (None), or the timeout or the memory limit kills
        its group (that outcome)."""
        deadline = time.monotonic() + timeout_s
        next_sample = 0.0
        while True:
            try:
                line = self.events.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                line = ""
            if line is None:
                return None
            if line:
                self.handle(line, on_event)
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + 0.1
                rss = self.sample()
                if limit is not None and rss > limit:
                    _kill_group(self.group, self.seen)
                    return Outcome("oom", f"resident memory {rss / 2**30:.1f} GiB "
                                          f"exceeded the limit of {limit_gib:g} GiB; killed")
            if time.monotonic() >= deadline:
                _kill_group(self.group, self.seen)
                return Outcome("timeout", f"no result after {timeout_s:g} s; killed")


def run_worker(request: records.Request, log_path: Path, timeout_s: float,
               on_event: Callable[[dict[str, Any]], None],
               memory_limit_gib: float | None = None, python: str | None = None) -> Outcome:
    """Run one worker process for ``request``; its outcome, whatever happens to it.

    ``python``: the interpreter of the worker (a backend's env, ``--envs isolated``; it gets
    no PYTHONPATH, and its env's bin first on PATH); default: the runner's own.

    The worker runs in the process group of a watchdog that SIGKILLs the group when the
    runner dies (even by kill -9); the runner kills the group when the worker ends, times
    out, exceeds the memory limit or on Ctrl-C, so no process of the cell outlives it. The
    memory limit is enforced on the resident memory of the worker's process tree, sampled
    every 0.1 s (an address-space rlimit would break JAX and TensorFlow, which reserve far
    more virtual memory than they use).
    """
    import psutil

    cfg_path = _write_request(request)
    env = _worker_env(python)
    limit = memory_limit_gib * 2**30 if memory_limit_gib else None
    outcome: Outcome | None = None
    oom_before = oom_kills()
    seen: list = []
    watch: _Watch | None = None
    dog = _start_watchdog()
    group = dog.pid
    seen.append(psutil.Process(dog.pid))
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [python or sys.executable, "-m", "fwbench.harness.run.worker", cfg_path],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                # Frameworks drop files into the working directory (MindSpore's rank_0/ graph
                # dumps): the worker runs in the folder of its log, not the user's.
                cwd=log_path.resolve().parent,
                env=env, **_in_group(group),
            )
            watch = _Watch(proc, seen, group)
            outcome = watch.follow(timeout_s, limit, memory_limit_gib, on_event)
            proc.wait()
    finally:
        _kill_group(group, seen)  # the watchdog, and whatever the worker left behind
        dog.wait()
        os.unlink(cfg_path)
    if outcome is None and watch.result is not None:
        result = watch.result
        outcome = Outcome(result.pop("status", "crashed"), result.pop("error", None), result)
    if outcome is None:
        outcome = _classify_exit(proc.returncode, log_path, oom_before, watch.last_rss, limit)
    outcome.pids = [p.pid for p in seen]
    return outcome


def _classify_exit(code: int, log_path: Path, oom_before: int | None, last_rss: int,
                   limit: float | None) -> Outcome:
    """A worker that ended without a record: ``oom`` only with evidence, else by signal."""
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
