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


def _cell_cgroups() -> dict[int, str]:
    """The cells' cgroup folders (``watchdog.cell_cgroup``) by their watchdog's pid."""
    import glob
    import os

    from fwbench.harness.run import watchdog

    mine = watchdog.cell_cgroup(os.getpid())
    if mine is None:
        return {}
    return {int(folder.rsplit("-", 1)[1]): folder
            for folder in glob.glob(os.path.join(os.path.dirname(mine), "fwbench-cell-*"))}


def cgroups_of(pids) -> set[str]:
    """The cell cgroup folders still there of the watchdogs ``pids`` (a test's own: with
    several xdist workers, a test cannot judge the folders of another worker's cells)."""
    folders = _cell_cgroups()
    return {folders[pid] for pid in pids if pid in folders}


class OwnCgroups:
    """Notes, while it runs, the watchdogs of the cell cgroup folders that appear whose
    environment carries ``token`` (polled every 0.02 s; a watchdog lives as long as its cell,
    and it is this test's when the token is in its environment)."""

    def __init__(self, token: str):
        import threading

        self.token, self.pids, self._stop = token, set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        import psutil

        seen: set[int] = set()
        while not self._stop.wait(0.02):
            for pid in _cell_cgroups().keys() - seen:
                seen.add(pid)
                try:
                    if psutil.Process(pid).environ().get(TOKEN) == self.token:
                        self.pids.add(pid)
                except psutil.Error:
                    pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def leaked_cgroups() -> set[str]:
    """The cells' cgroup folders (``watchdog.cell_cgroup``) whose watchdog is gone: nothing
    should leave one behind."""
    import os

    return {folder for pid, folder in _cell_cgroups().items() if not os.path.exists(f"/proc/{pid}")}
