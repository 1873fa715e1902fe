"""Telling a cell's processes apart in tests: the worker, and its watchdog (whose command line
ends with the worker's command)."""

WORKER = "fwbench.harness.run.worker"


def is_worker(cmdline: list[str] | None) -> bool:
    """The worker process itself (``python -m fwbench.harness.run.worker REQUEST``)."""
    cmd = cmdline or []
    return len(cmd) >= 3 and cmd[1:3] == ["-m", WORKER]


def is_watchdog(cmdline: list[str] | None) -> bool:
    return any(part.endswith("watchdog.py") for part in (cmdline or [])[:5])


TOKEN = "FWBENCH_TEST_TOKEN"  # a test's mark in the environment of every process it starts


def tagged(token: str) -> list:
    """The live processes whose environment carries ``token`` (zombies are dead)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TOKEN) == token and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def kill_tagged(token: str) -> None:
    import psutil

    for p in tagged(token):
        try:
            p.kill()
        except psutil.Error:
            pass


def wait_for(predicate, timeout: float = 60.0, what: str = "the condition"):
    """``predicate()``'s first true value, polled every 0.05 s for at most ``timeout`` s (a
    condition that is checked, not a sleep that hopes)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def leaked_cgroups() -> set[str]:
    """The cells' cgroup folders (``watchdog.cell_cgroup``) whose watchdog is gone: nothing
    should leave one behind."""
    import glob
    import os

    from fwbench.harness.run import watchdog

    mine = watchdog.cell_cgroup(os.getpid())
    if mine is None:
        return set()
    found = set()
    for folder in glob.glob(os.path.join(os.path.dirname(mine), "fwbench-cell-*")):
        pid = int(folder.rsplit("-", 1)[1])
        if not os.path.exists(f"/proc/{pid}"):
            found.add(folder)
    return found
