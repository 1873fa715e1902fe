"""Runs' records as pandas tables (``fwbench export``): one row per cell, one per epoch.

Every row stands alone: it carries the keys that tell runs, machines and software apart
(``KEY_COLUMNS``), so the tables of several runs concatenate safely. Reads run folders through
``records.load_run`` only; never imports a framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from fwbench.harness.records import CellRecord, Run

if TYPE_CHECKING:
    import pandas as pd

# which run, which machine, which software, when: on every row of both tables
KEY_COLUMNS = ["run_id", "run_folder", "fwbench_version", "hardware_id", "node", "device",
               "task", "backend", "seed", "repeat", "framework", "framework_version", "env",
               "env_key", "python", "started"]
CELL_COLUMNS = KEY_COLUMNS + [
    "ended", "profile", "status", "error", "test_accuracy", "train_time_s", "step_p50_ms",
    "step_p90_ms", "throughput_samples_s", "peak_rss_mib", "baseline_rss_mib",
    "train_peak_delta_mib", "eval_peak_rss_mib", "first_step_s", "import_s", "data_s", "setup_s",
    "eval_s", "time_to_target_s", "achieved_gflops", "pct_of_gemm_peak", "cpu_wall_ratio",
    "threads_exceeded", "param_count", "threads", "wall_s", "energy_j", "energy_j_per_sample"]
EPOCH_COLUMNS = KEY_COLUMNS + ["epoch", "train_loss", "test_loss", "test_accuracy", "wall_s"]
_FROM_RECORD = [c for c in CELL_COLUMNS if c not in KEY_COLUMNS and not c.startswith("step_p")]


def keys(run: Run, r: CellRecord) -> dict[str, Any]:
    """The columns that identify a cell's row among the rows of any number of runs. The
    framework is the backend's first distribution (torch, tensorflow, jax, flax, ...); the env
    is the backend's own (its folder name and requirement key) or "current" (the runner's)."""
    info = run.meta.backends.get(r.backend)
    env = info.env if info is not None else None
    framework = next(iter(info.requires), None) if info is not None else None
    return {"run_id": run.meta.run_id_or_derived(), "run_folder": str(run.path),
            "fwbench_version": run.meta.fwbench_version,
            "hardware_id": r.hardware.id if r.hardware else None, "node": r.node,
            "device": r.device, "task": r.task, "backend": r.backend, "seed": r.seed,
            "repeat": r.repeat, "framework": framework, "framework_version": r.framework_version,
            "env": env.name if env is not None else "current",
            "env_key": env.key if env is not None else None, "python": r.python,
            "started": r.started}


def cell_row(run: Run, r: CellRecord) -> dict[str, Any]:
    """One cell's row of ``cells``: its keys and its figures (``CELL_COLUMNS``)."""
    return {**keys(run, r), **{k: getattr(r, k) for k in _FROM_RECORD},
            "step_p50_ms": r.step_time_ms.p50, "step_p90_ms": r.step_time_ms.p90}


def load_results(*sources: str | Path | Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, epochs) of one run or several, concatenated: one row per cell, and one row per
    (cell, epoch). The same run twice is refused (its rows would count double)."""
    import pandas as pd  # by the commands that need it, not at the CLI's start

    rows, epoch_rows, seen = [], [], {}
    for source in sources:
        run = source if isinstance(source, Run) else records.load_run(source)
        run_id = run.meta.run_id_or_derived()
        if run_id in seen:
            raise FwbenchError(f"{run.path} is the same run as {seen[run_id]} (run id {run_id}); "
                               "export each run once")
        seen[run_id] = run.path
        for r in run.records:
            row = cell_row(run, r)
            rows.append(row)
            key = {k: row[k] for k in KEY_COLUMNS}
            epoch_rows += [{**key, "epoch": e.epoch, "train_loss": e.train_loss,
                            "test_loss": e.test_loss, "test_accuracy": e.test_accuracy,
                            "wall_s": e.wall_s} for e in r.epochs]
    return pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(epoch_rows, columns=EPOCH_COLUMNS)
