"""Results as tables: reads a run folder only, never imports a framework."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import FwbenchError
from .runner import RESULTS, RUN_JSON, read_records

CELL_COLUMNS = ["task", "backend", "seed", "profile", "status", "error", "test_accuracy",
                "train_time_s", "step_p50_ms", "step_p90_ms", "throughput_samples_s",
                "peak_rss_mib", "first_step_s", "import_s", "time_to_target_s",
                "cpu_wall_ratio", "param_count", "framework_version", "threads"]


def load_results(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, epochs): one row per cell, and one row per (cell, epoch)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).is_file():
        raise FwbenchError(f"{run_dir} has no {RESULTS}: not an fwbench run folder")
    records = read_records(run_dir / RESULTS)
    rows, epoch_rows = [], []
    for r in records:
        step = r.get("step_time_ms") or {}
        row = {k: r.get(k) for k in CELL_COLUMNS}
        row["step_p50_ms"] = step.get("p50")
        row["step_p90_ms"] = step.get("p90")
        rows.append(row)
        for e in r.get("epochs") or []:
            epoch_rows.append({"task": r["task"], "backend": r["backend"], "seed": r["seed"], **e})
    return (pd.DataFrame(rows, columns=CELL_COLUMNS),
            pd.DataFrame(epoch_rows, columns=["task", "backend", "seed", "epoch", "train_loss",
                                              "test_loss", "test_accuracy", "wall_s"]))


def run_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return format(value, spec)


def summary_rows(cells: pd.DataFrame) -> list[dict[str, str]]:
    """One row per task x backend: medians over seeds (ok cells), failures counted."""
    out = []
    for (task, backend), g in cells.groupby(["task", "backend"], sort=False):
        ok = g[g["status"] == "ok"]
        failed = g[g["status"] != "ok"]
        med = ok.median(numeric_only=True) if len(ok) else pd.Series(dtype=float)
        out.append({
            "task": task,
            "backend": backend,
            "seeds": f"{len(ok)}/{len(g)}",
            "test acc": _fmt(med.get("test_accuracy"), ".4f"),
            "train s": _fmt(med.get("train_time_s"), ".1f"),
            "step p50 ms": _fmt(med.get("step_p50_ms"), ".2f"),
            "samples/s": _fmt(med.get("throughput_samples_s"), ",.0f"),
            "peak MiB": _fmt(med.get("peak_rss_mib"), ",.0f"),
            "status": "ok" if not len(failed) else ", ".join(sorted(set(failed["status"]))),
        })
    return out


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no records_\n"
    cols = list(rows[0])
    numeric = {c for c in cols if c not in ("task", "backend", "status")}
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_report(run_dir: str | Path) -> str:
    cells, _ = load_results(run_dir)
    meta = run_meta(run_dir)
    env = meta.get("environment", {})
    cfg = meta.get("config", {})
    parts = [f"# fwbench results: {Path(run_dir).name}", ""]
    if meta:
        parts += [
            f"- profile `{cfg.get('profile')}`, seeds {cfg.get('seeds')}, "
            f"threads {cfg.get('threads')}",
            f"- {env.get('cpu_model')}, {env.get('logical_cores')} logical cores "
            f"(affinity {env.get('affinity')}), {env.get('memory_gib')} GiB, Python {env.get('python')}",
            "- " + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v),
            "",
        ]
    parts += ["Medians over the seeds that finished. Step time: steady-state steps (the first "
              "step, which includes tracing or compilation, is excluded).", "",
              markdown_table(summary_rows(cells))]
    failed = cells[cells["status"] != "ok"]
    if len(failed):
        parts += ["## Cells that did not finish", ""]
        parts += [f"- {r.task} / {r.backend} / seed {r.seed}: **{r.status}**: {r.error}"
                  for r in failed.itertuples()]
        parts.append("")
    return "\n".join(parts)
