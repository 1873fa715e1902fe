"""``fwbench overhead``: the harness's own cost. Per (task, backend), one worker process runs
alternating blocks of the harness's training loop and of a bare loop over the same batches
(``worker.overhead``); the ratio of their wall times is the harness's overhead (target
<= 1.02). ``idiomatic`` compares adapters with hand-written loops instead."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fwbench.harness import records
from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import tasks as task_registry
from fwbench.harness.run import runner
from fwbench.harness.run.supervise import run_worker

TARGET = 1.02
TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Cell:
    """One (task, backend): its status, and the ratios where it ran ok."""

    task: str
    backend: str
    status: str
    error: str | None = None
    ratio: float | None = None  # harness loop / bare loop gathering each batch the same way
    ratio_pregathered: float | None = None  # / a bare loop over batches gathered beforehand


def measure(tasks: list[str], backends: list[str], known: dict[str, Backend], *, threads: int,
            cpus: list[int], steps: int, blocks: int, device: str,
            on_status: Callable[[str], None] = lambda s: None) -> list[Cell]:
    """Every (task, backend) in order, one worker process each."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in tasks:
            task = task_registry.get(task_name)
            path = task_registry.prepare(task, "smoke")
            for name in backends:
                on_status(f"{task_name} / {name}")
                request = records.OverheadRequest(
                    threads, cpus[:threads], runner.backend_spec(known[name]),
                    task=records.task_to_json(task), data_path=str(path),
                    steps=steps, blocks=blocks, device=device)
                r = run_worker(request, Path(tmp) / "log", TIMEOUT_S, lambda e: None)
                ok = r.status == "ok"
                out.append(Cell(task_name, name, r.status, r.error,
                                r.result.get("ratio") if ok else None,
                                r.result.get("ratio_pregathered") if ok else None))
    return out
