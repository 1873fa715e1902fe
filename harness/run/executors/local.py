"""The default executor: one job after another on this machine, exactly as fwbench always
ran them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fwbench.harness.measure import noise
from fwbench.harness.run.executors.base import LOCAL, Done, Job, NodeInfo, execute, node_info, probe_noise


class LocalExecutor:
    """One job after another on this machine, in a fresh worker process each (the default)."""

    name = "local"

    def __init__(self) -> None:
        self._node = node_info()

    def nodes(self) -> list[NodeInfo]:
        return [self._node]

    def start(self, run_dir: Path, prepared: dict[str, Path]) -> None:
        """Nothing to ship: the jobs read the prepared files where the runner made them."""

    def noise(self, threads: int, seconds: float) -> dict[str, noise.Busy]:
        return {LOCAL: probe_noise(threads, seconds)}

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, str], None] = lambda j, n: None,
            on_progress: Callable[[Job, dict[str, Any]], None] = lambda j, e: None,
            on_status: Callable[[str], None] = lambda s: None) -> Iterator[Done]:
        for job in jobs:
            on_start(job, LOCAL)
            yield execute(job, LOCAL, self._node.hardware,
                          on_event=lambda e, job=job: on_progress(job, e))

    def close(self) -> None:
        pass
