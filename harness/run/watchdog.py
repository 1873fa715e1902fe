"""The watchdog of one cell: it starts the worker, owns everything the worker starts, and
takes all of it down when the runner says so or dies.

    python -I -S watchdog.py RUNNER_PID [FILE...] -- WORKER_COMMAND...

(FILEs: removed when the cell is killed, e.g. the worker's request, even if the runner died.)

Standard library only, run as a file (no fwbench import, no site: it starts in ~20 ms in
any environment). The runner starts it as the leader of a new process group, with the stop
signals blocked; it then

- unblocks them and ignores SIGINT, SIGHUP and SIGQUIT (a Ctrl-C meant for the runner, or
  a hangup, must not kill it and leave its group alive); SIGTERM is the order to kill;
- asks Linux to send it SIGTERM when the runner dies, even by ``kill -9``
  (``PR_SET_PDEATHSIG``), and also polls its parent every 0.5 s (the death signal follows
  the *thread* that started it, and is not available everywhere);
- becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): a descendant of the worker whose
  parent exits, even one that left the group with ``setsid``, becomes its child, so it can
  still find and kill it;
- moves itself into a cgroup of its own when cgroup v2 lets it create one (then the whole
  cell dies at once by ``cgroup.kill``); it says which containment it got in its first line;
- starts the worker (stop signals at their defaults, nothing blocked), reaps every child,
  and writes ``{"event": "exit", "code": N}`` on the worker's stdout pipe when the worker
  exits: the cell ends on the worker's exit, not on the pipe's end of file, and every line
  the worker wrote precedes that one.

Its stdout is the worker's event pipe; it writes only whole JSON lines there (atomic).
"""

from __future__ import annotations

import json
import os
import signal
import sys

POLL_S = 0.5
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PARENT_ENV = "FWBENCH_PARENT_PID"  # the worker checks it still has this parent
CELL_PREFIX = "fwbench-cell-"  # a cell's cgroup folder: CELL_PREFIX + its watchdog's pid

_cgroup: str | None = None
_files: list[str] = []  # removed by kill_all


def _emit(**event: object) -> None:
    os.write(1, (json.dumps(event) + "\n").encode())


def _prctl(option: int, arg: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _v2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified`` on a
    hybrid system)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def cell_cgroup(watchdog_pid: int) -> str | None:
    """The folder of the cgroup the watchdog ``watchdog_pid`` makes for its cell, below the
    cgroup v2 of the calling process (the runner's, which the watchdog started in); None
    without cgroup v2."""
    mount = _v2_mount()
    if mount is None:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            mine = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    return os.path.join(mount + mine, f"{CELL_PREFIX}{watchdog_pid}")


def _own_cgroup() -> tuple[str | None, str]:
    """A new cgroup v2 below this process's own, with this process moved into it:
    (its folder, "cgroup"), or (None, the fallback and why)."""
    fallback = "process group + subreaper"
    folder = cell_cgroup(os.getpid())
    if folder is None:
        return None, f"{fallback} (no cgroup v2)"
    sweep(folder)
    try:
        os.mkdir(folder)
    except OSError as exc:
        return None, f"{fallback} (no cgroup v2 delegated here: {type(exc).__name__})"
    try:
        with open(os.path.join(folder, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as exc:
        os.rmdir(folder)
        return None, f"{fallback} (cannot move into a cgroup: {exc.strerror})"
    if not os.path.exists(os.path.join(folder, "cgroup.kill")):  # Linux < 5.14
        return folder, "cgroup (without cgroup.kill) + subreaper"
    return folder, "cgroup"


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): the process group is all there is to kill
        return kids
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (read from /proc)."""
    kids, out, todo = _children_map(), [], [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _reap() -> list[tuple[int, int]]:
    """Every child that has ended: (pid, wait status)."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def remove_cgroup(folder: str, wait_s: float = 2.0) -> None:
    """Remove a cell's cgroup once its last process has gone (a moment after the kill)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def sweep(folder: str | None) -> None:
    """Remove the cells' cgroups beside ``folder`` (a cell's cgroup) whose watchdog is gone,
    killing what is still in one (nothing supervises it any more). A watchdog killed from
    outside (SIGKILL: a Ray worker that ends kills its children) cannot remove its own; the
    next cell on the machine does. A zombie watchdog's folder is its runner's to remove."""
    if folder is None:
        return
    parent = os.path.dirname(folder)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(CELL_PREFIX):] if name.startswith(CELL_PREFIX) else ""
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        kill_cgroup(os.path.join(parent, name), 1.0)


def kill_cgroup(folder: str, wait_s: float) -> None:
    """``cgroup.kill`` whatever is in a cell's cgroup, then remove it."""
    try:
        with open(os.path.join(folder, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        pass
    remove_cgroup(folder, wait_s)


def kill_all(*_: object) -> None:
    """SIGKILL the cell: the cgroup, then (until none is left) every descendant and the group,
    this process last."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    for path in _files:
        try:
            os.unlink(path)
        except OSError:
            pass
    if _cgroup is not None:
        try:  # step out into the parent cgroup, then kill everything left in the cell's
            with open(os.path.join(os.path.dirname(_cgroup), "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            with open(os.path.join(_cgroup, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            pass
    for _ in range(50):  # a process that forks while we kill is caught by the next pass
        found = descendants(os.getpid())
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap()
    if _cgroup is not None:
        remove_cgroup(_cgroup)
    try:  # the runner starts it as the leader of the cell's group; never someone else's group
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(137)


def main(argv: list[str]) -> None:
    global _cgroup
    split = argv.index("--")
    runner_pid, _files[:], command = int(argv[0]), argv[1:split], argv[split + 1:]
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, kill_all)
    signal.pthread_sigmask(signal.SIG_SETMASK, [signal.SIGCHLD])  # only sigtimedwait takes it
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    reaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != runner_pid:  # the runner died before the death signal was set
        kill_all()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # kill_all must know the folder
    _cgroup, containment = _own_cgroup()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    if not reaper and _cgroup is None:
        containment = "process group only (no subreaper, no cgroup)"
    _emit(event="watchdog", containment=containment, cgroup=_cgroup)
    try:
        worker = os.posix_spawn(command[0], command, {**os.environ, PARENT_ENV: str(os.getpid())},
                                setsigmask=(), setsigdef=(signal.SIGINT, signal.SIGHUP,
                                                          signal.SIGQUIT, signal.SIGTERM))
    except OSError as exc:
        _emit(event="exit", code=127, error=f"cannot start {command[0]}: {exc.strerror}")
        kill_all()
    while True:
        signal.sigtimedwait([signal.SIGCHLD], POLL_S)
        for pid, status in _reap():
            if pid == worker:
                _emit(event="exit", code=os.waitstatus_to_exitcode(status))
        if os.getppid() != runner_pid:
            kill_all()


if __name__ == "__main__":
    main(sys.argv[1:])
