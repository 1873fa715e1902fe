"""Telling a cell's processes apart in tests: the worker, and its watchdog (whose command line
ends with the worker's command)."""

WORKER = "fwbench.harness.run.worker"


def is_worker(cmdline: list[str] | None) -> bool:
    """The worker process itself (``python -m fwbench.harness.run.worker REQUEST``)."""
    cmd = cmdline or []
    return len(cmd) >= 3 and cmd[1:3] == ["-m", WORKER]


def is_watchdog(cmdline: list[str] | None) -> bool:
    return any(part.endswith("watchdog.py") for part in (cmdline or [])[:5])
