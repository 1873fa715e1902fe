"""A run's records as pandas tables (``fwbench export``): one row per cell, one per epoch.

Reads the run folder through ``records.load_run`` only; never imports a framework.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fwbench.harness import records
from fwbench.harness.records import Run

CELL_COLUMNS = ["task", "backend", "seed", "repeat", "profile", "status", "error",
                "test_accuracy", "train_time_s", "step_p50_ms", "step_p90_ms",
                "throughput_samples_s", "peak_rss_mib", "baseline_rss_mib",
                "train_peak_delta_mib", "eval_peak_rss_mib", "first_step_s", "import_s",
                "data_s", "setup_s", "eval_s", "time_to_target_s", "achieved_gflops",
                "pct_of_gemm_peak", "cpu_wall_ratio", "threads_exceeded", "param_count",
                "framework_version", "threads", "wall_s"]
EPOCH_COLUMNS = ["task", "backend", "seed", "epoch", "train_loss", "test_loss", "test_accuracy",
                 "wall_s"]


def load_results(source: str | Path | Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, epochs): one row per cell, and one row per (cell, epoch)."""
    run = source if isinstance(source, Run) else records.load_run(source)
    rows, epoch_rows = [], []
    for r in run.records:
        row = {k: getattr(r, k) for k in CELL_COLUMNS if k not in ("step_p50_ms", "step_p90_ms")}
        row["step_p50_ms"], row["step_p90_ms"] = r.step_time_ms.p50, r.step_time_ms.p90
        rows.append(row)
        epoch_rows += [{"task": r.task, "backend": r.backend, "seed": r.seed, "epoch": e.epoch,
                        "train_loss": e.train_loss, "test_loss": e.test_loss,
                        "test_accuracy": e.test_accuracy, "wall_s": e.wall_s} for e in r.epochs]
    return pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(epoch_rows, columns=EPOCH_COLUMNS)
