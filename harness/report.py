"""Results as tables: reads a run folder only, never imports a framework."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import FwbenchError
from .runner import RESULTS, RUN_JSON, read_records

CELL_COLUMNS = ["task", "backend", "seed", "repeat", "profile", "status", "error",
                "test_accuracy", "train_time_s", "step_p50_ms", "step_p90_ms",
                "throughput_samples_s", "peak_rss_mib", "baseline_rss_mib",
                "train_peak_delta_mib", "eval_peak_rss_mib", "first_step_s", "import_s",
                "data_s", "setup_s", "eval_s", "time_to_target_s", "achieved_gflops",
                "pct_of_gemm_peak", "cpu_wall_ratio", "threads_exceeded", "param_count",
                "framework_version", "threads", "wall_s"]


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
        row["repeat"] = r.get("repeat", 0)
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


def _ci(ci: tuple[float, float] | None, spec: str) -> str:
    return f" [{format(ci[0], spec)}, {format(ci[1], spec)}]" if ci else ""


def summary_rows(run_dir: str | Path) -> list[dict[str, str]]:
    """One row per task x backend: medians over seeds (ok cells) with bootstrap 95% CIs."""
    from . import spec, stats

    cells, _ = load_results(run_dir)
    records = read_records(Path(run_dir) / RESULTS)
    summaries = {(s.task, s.backend): s for s in stats.summarize(
        records, {t: spec.TASKS[t].batch_size for t in spec.TASKS})}
    out = []
    for (task, backend), g in cells.groupby(["task", "backend"], sort=False):
        s = summaries[(task, backend)]
        main = g[(g["status"] == "ok") & (g["repeat"] == 0)]
        failed = g[g["status"] != "ok"]
        med = main.median(numeric_only=True) if len(main) else pd.Series(dtype=float)
        out.append({
            "task": task,
            "backend": backend,
            "ok": f"{s.ok}/{s.cells}",
            "test acc": _fmt(s.accuracy, ".4f") + _ci(s.accuracy_ci, ".4f"),
            "train s": _fmt(med.get("train_time_s"), ".1f"),
            "to target s": _fmt(med.get("time_to_target_s"), ".1f"),
            "first step s": _fmt(med.get("first_step_s"), ".2f"),
            "step p50 ms": _fmt(s.step_ms, ".2f") + _ci(s.step_ci, ".2f"),
            "step p90 ms": _fmt(med.get("step_p90_ms"), ".2f"),
            "samples/s": _fmt(s.throughput, ",.0f"),
            "GFLOP/s": _fmt(med.get("achieved_gflops"), ".1f"),
            "% GEMM peak": _fmt(med.get("pct_of_gemm_peak"), ".0f"),
            "peak MiB": _fmt(med.get("peak_rss_mib"), ",.0f"),
            "CPU/wall": _fmt(med.get("cpu_wall_ratio"), ".2f"),
            "status": "ok" if not len(failed) else ", ".join(sorted(set(failed["status"]))),
        })
    return out


def significance_lines(run_dir: str | Path) -> list[str]:
    from . import spec, stats

    records = read_records(Path(run_dir) / RESULTS)
    summaries = stats.summarize(records, {t: spec.TASKS[t].batch_size for t in spec.TASKS})
    return [f"- {c.task}: {c.sentence()}" for c in stats.pairwise(summaries)]


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
    parts += ["Medians over the seeds that finished, with bootstrap 95% CIs in brackets where "
              "there are several samples. Step time: steady-state steps pooled over seeds and "
              "repeats (the first step, which includes tracing or compilation, is `first step s`).",
              "", markdown_table(summary_rows(run_dir))]
    sig = significance_lines(run_dir)
    if sig:
        parts += ["## Step time: which differences are real", "",
                  "Two-sided Mann-Whitney U on the pooled step times, significant at p < 0.01.", ""]
        parts += sig + [""]
    failed = cells[cells["status"] != "ok"]
    if len(failed):
        parts += ["## Cells that did not finish", ""]
        parts += [f"- {r.task} / {r.backend} / seed {r.seed}: **{r.status}**: {r.error}"
                  for r in failed.itertuples()]
        parts.append("")
    return "\n".join(parts)
