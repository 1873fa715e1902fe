"""Results as tables: reads a run folder only, never imports a framework.

The computations behind both reports live here as plain functions (``analyze`` and what it
calls); ``markdown_report`` renders them as Markdown, ``html_report.html_report`` as HTML.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


# ------------------------------------------------------------------ number formatting


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _fmt(value: Any, spec: str) -> str:
    return "–" if missing(value) else format(value, spec)


def _ci(ci: tuple[float, float] | None, spec: str) -> str:
    return f" [{format(ci[0], spec)}, {format(ci[1], spec)}]" if ci else ""


def num(value: Any, sig: int = 3) -> str:
    """A number rounded for reading: 3 significant digits, whole numbers above 100."""
    if missing(value):
        return "–"
    a = abs(value)
    if a >= 10 ** (sig - 1) or a == 0:
        return f"{value:,.0f}"
    return f"{value:,.{sig - 1 - math.floor(math.log10(a))}f}"


def pct(value: Any) -> str:
    """An accuracy as a percentage with two decimals (0.9875 -> 98.75%)."""
    return "–" if missing(value) else f"{value * 100:.2f}%"


def pct_target(value: float) -> str:
    """A target accuracy, as short as exact: 0.98 -> 98%, 0.988 -> 98.8%."""
    return f"{value * 100:.4g}%"


def ci_text(ci: tuple[float, float] | None, fmt=num) -> str:
    """'[lo, hi]', or '' where there is no interval (a single run)."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


# ------------------------------------------------------------------ the computations


@dataclass
class BackendResult:
    """One backend on one task: medians over the cells that finished."""

    task: str
    backend: str
    cells: int
    ok: int
    runs: int  # finished cells that measured step times (seeds x repeats)
    statuses: list[str]  # statuses of the cells that did not finish
    accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    seeds: int = 0  # finished repeat-0 cells with an accuracy
    reached: int = 0  # of those, how many reached the target
    to_target_s: float | None = None  # median over seeds, a seed that never got there counts as infinite
    train_s: float | None = None
    throughput: float | None = None
    throughput_ci: tuple[float, float] | None = None
    step_p50: float | None = None
    step_ci: tuple[float, float] | None = None
    step_p90: float | None = None
    first_step_s: float | None = None
    start_s: float | None = None  # import + setup + first step
    peak_mib: float | None = None
    gflops: float | None = None
    pct_peak: float | None = None  # of the calibrated GEMM peak
    cpu_wall: float | None = None
    threads_exceeded: bool = False
    position: int | None = None  # place in the task's ranking (finished backends only)
    rank_target: int | None = None
    rank_throughput: int | None = None

    @property
    def finished(self) -> bool:
        return self.ok > 0


@dataclass
class TaskResult:
    task: str
    description: str
    target: float | None
    batch: int | None
    rows: list[BackendResult]  # ranked: time to target, then throughput; unfinished last
    comparisons: list[Any]  # stats.Comparison, step times of every pair of backends
    verdict: list[str] = field(default_factory=list)

    @property
    def finished(self) -> list[BackendResult]:
        return [r for r in self.rows if r.finished]


@dataclass
class Pick:
    """One line of "which framework for what"."""

    criterion: str
    per_task: dict[str, str]  # task -> "backend (value)"
    winners: list[str]  # the backend(s) winning on most tasks
    note: str  # "2 of 3 tasks", "130 lines", or why there is no winner

    @property
    def overall(self) -> str:
        return " / ".join(self.winners) + f" ({self.note})" if self.winners else self.note


@dataclass
class Analysis:
    name: str
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    tasks: list[TaskResult]
    failed: list[dict[str, Any]]  # task, backend, seed, repeat, status, error (one line)
    adapters: dict[str, dict[str, Any]]  # backend -> {"module", "path", "loc"}
    picks: list[Pick]
    backends: list[str]  # in a stable order (the run's config first), for colours


def _median(values) -> float | None:
    v = [x for x in values if not missing(x)]
    return float(np.median(v)) if v else None


def one_line(error: Any, width: int = 200) -> str:
    lines = [x.strip() for x in str(error or "").strip().splitlines() if x.strip()]
    text = lines[-1] if lines and lines[-1] != lines[0] and ":" in lines[-1] else (lines[0] if lines else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def and_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def backend_result(task: str, backend: str, rs: list[dict], summary: Any,
                   target: float | None) -> BackendResult:
    ok = [r for r in rs if r.get("status") == "ok"]
    main = [r for r in ok if r.get("repeat", 0) == 0]
    timed = [r for r in ok if r.get("step_samples_ms")]
    several = len(timed) >= 2  # a CI over one process's steps would hide run-to-run variation
    b = BackendResult(task, backend, len(rs), len(ok), len(timed),
                      sorted({r.get("status", "?") for r in rs if r.get("status") != "ok"}))
    with_acc = [r for r in main if r.get("test_accuracy") is not None]
    b.seeds = len(with_acc)
    if target is not None:
        times = [r.get("time_to_target_s") for r in with_acc]
        b.reached = sum(t is not None for t in times)
        if times:
            med = float(np.median([math.inf if t is None else t for t in times]))
            b.to_target_s = med if math.isfinite(med) else None
    b.train_s = _median(r.get("train_time_s") for r in main)
    if summary is not None:
        b.accuracy, b.accuracy_ci = summary.accuracy, summary.accuracy_ci
        b.step_p50, b.throughput = summary.step_ms, summary.throughput
        if several:
            b.step_ci, b.throughput_ci = summary.step_ci, summary.throughput_ci
        if len(summary.samples):
            b.step_p90 = float(np.percentile(summary.samples, 90))
    if b.step_p90 is None:
        b.step_p90 = _median((r.get("step_time_ms") or {}).get("p90") for r in ok)
    if b.step_p50 is None:
        b.step_p50 = _median((r.get("step_time_ms") or {}).get("p50") for r in ok)
    b.first_step_s = _median(r.get("first_step_s") for r in ok)
    starts = [r["import_s"] + r["setup_s"] + r["first_step_s"] for r in ok
              if not any(missing(r.get(k)) for k in ("import_s", "setup_s", "first_step_s"))]
    b.start_s = _median(starts)
    b.peak_mib = _median(r.get("peak_rss_mib") for r in (main or ok))
    b.gflops = _median(r.get("achieved_gflops") for r in ok)
    b.pct_peak = _median(r.get("pct_of_gemm_peak") for r in ok)
    b.cpu_wall = _median(r.get("cpu_wall_ratio") for r in ok)
    b.threads_exceeded = any(r.get("threads_exceeded") for r in ok)
    return b


def _rank(rows: list[BackendResult]) -> list[BackendResult]:
    by_target = sorted((r for r in rows if r.to_target_s is not None), key=lambda r: r.to_target_s)
    for i, r in enumerate(by_target, 1):
        r.rank_target = i
    by_tp = sorted((r for r in rows if r.throughput is not None), key=lambda r: -r.throughput)
    for i, r in enumerate(by_tp, 1):
        r.rank_throughput = i
    rows = sorted(rows, key=lambda r: (not r.finished,
                                       r.rank_target is None, r.rank_target or 0,
                                       r.rank_throughput is None, r.rank_throughput or 0,
                                       r.backend))
    for i, r in enumerate((r for r in rows if r.finished), 1):
        r.position = i
    return rows


def _comparison(comparisons: list[Any], a: str, b: str) -> Any:
    for c in comparisons:
        if {c.faster, c.slower} == {a, b}:
            return c
    return None


def verdict(t: TaskResult) -> list[str]:
    """Plain sentences: who wins on what, and whether the step-time difference is real."""
    done = t.finished
    out = []
    if not done:
        out.append(f"No backend finished {t.task}: " + ", ".join(
            f"{r.backend} {'/'.join(r.statuses) or 'no cells'}" for r in t.rows) + ".")
        return out
    tgt = pct_target(t.target) if t.target is not None else None
    reached = [r for r in done if r.to_target_s is not None]
    if tgt and reached:
        first, rest = reached[0], [r for r in done if r is not reached[0]]
        others = ", ".join(f"{r.backend} {num(r.to_target_s)} s" if r.to_target_s is not None
                           else f"{r.backend} not reached" for r in rest)
        out.append(f"Fastest to the {tgt} target: {first.backend} in {num(first.to_target_s)} s"
                   + (f" ({others})." if others else "."))
    elif tgt:
        accs = [r for r in done if r.accuracy is not None]
        best = max((r.accuracy for r in accs), default=None)
        who = [r.backend for r in accs if pct(r.accuracy) == pct(best)]
        by = "" if len(who) == len(accs) and len(accs) > 1 else ", " + and_list(who)
        out.append(f"No backend reached the {tgt} target"
                   + (f" (best accuracy {pct(best)}{by})." if best is not None else "."))
    tp = sorted((r for r in done if r.throughput is not None), key=lambda r: -r.throughput)
    if tp:
        top = tp[0]
        line = f"Highest steady-state throughput: {top.backend}, {num(top.throughput)} samples/s"
        if len(tp) > 1:
            second = tp[1]
            line += f", {top.throughput / second.throughput:.2f}x {second.backend}"
            c = _comparison(t.comparisons, top.backend, second.backend)
            if c is not None and c.significant:
                line += f"; the step-time difference is significant (Mann-Whitney p = {c.p_value:.1e})"
            elif c is not None:
                line += f"; the step-time difference is not significant (p = {c.p_value:.2f})"
            if c is not None and min(top.runs, second.runs) < 2:
                line += ", from one run each: within-run variation only"
        out.append(line + ".")
    accs = [r for r in done if r.accuracy is not None]
    if len(accs) > 1:
        hi = max(accs, key=lambda r: r.accuracy)
        lo = min(accs, key=lambda r: r.accuracy)
        if hi.accuracy - lo.accuracy < 0.001:
            out.append(f"Accuracy agrees across backends ({pct(lo.accuracy)}"
                       + (f" to {pct(hi.accuracy)}" if pct(hi.accuracy) != pct(lo.accuracy) else "")
                       + "): same initial weights, same batches.")
        else:
            overlap = (hi.accuracy_ci and lo.accuracy_ci and hi.accuracy_ci[0] <= lo.accuracy_ci[1])
            out.append(f"Most accurate: {hi.backend}, {pct(hi.accuracy)} "
                       f"(lowest: {lo.backend}, {pct(lo.accuracy)}"
                       + ("; their intervals overlap)." if overlap else ")."))
    mem = sorted((r for r in done if r.peak_mib is not None), key=lambda r: r.peak_mib)
    if len(mem) > 1:
        out.append(f"Lowest peak memory: {mem[0].backend}, {num(mem[0].peak_mib)} MiB "
                   f"(highest: {mem[-1].backend}, {num(mem[-1].peak_mib)} MiB).")
    start = sorted((r for r in done if r.start_s is not None), key=lambda r: r.start_s)
    if len(start) > 1:
        out.append(f"Fastest start (import + setup + first step): {start[0].backend}, "
                   f"{num(start[0].start_s)} s (slowest: {start[-1].backend}, {num(start[-1].start_s)} s).")
    bad = [r for r in t.rows if r.statuses]
    if bad:
        out.append("Did not finish: " + ", ".join(
            f"{r.backend} ({', '.join(r.statuses)}, {r.cells - r.ok} of {r.cells} cells)" for r in bad) + ".")
    over = [r.backend for r in done if r.threads_exceeded]
    if over:
        out.append("Used more threads than allowed: " + ", ".join(over) + ".")
    return out


def count_loc(path: str | Path) -> int:
    """Lines of code: not blank, not a comment, not part of a docstring."""
    text = Path(path).read_text(encoding="utf-8")
    skip: set[int] = set()
    try:
        for node in ast.walk(ast.parse(text)):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                    and body and isinstance(body[0], ast.Expr)
                    and isinstance(getattr(body[0], "value", None), ast.Constant)
                    and isinstance(body[0].value.value, str)):
                skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    except SyntaxError:
        pass
    return sum(1 for i, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in skip)


def _installed_backends() -> dict[str, Any]:
    try:
        from .adapter import discover

        return discover()
    except Exception:  # noqa: BLE001 -- a broken plugin must not break the report
        return {}


def adapter_sizes(backends: list[str], meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """backend -> adapter module, its source file and lines of code. The module is named by
    run.json or else by the installed backend; it is located, never imported."""
    import importlib.util

    installed = None
    out = {}
    for name in backends:
        info = (meta.get("backends") or {}).get(name) or {}
        target = info.get("adapter") or info.get("module")
        if not target:
            installed = _installed_backends() if installed is None else installed
            target = getattr(installed.get(name), "adapter", None)
        module = target.partition(":")[0] if target else None
        path = loc = None
        if module:
            try:
                found = importlib.util.find_spec(module)
                path = found.origin if found and found.origin and found.origin.endswith(".py") else None
            except (ImportError, ValueError):
                path = None
        if path:
            try:
                loc = count_loc(path)
            except OSError:
                path = None
        out[name] = {"module": module, "path": path, "loc": loc}
    return out


def _winner(rows: list[BackendResult], key, better_low: bool) -> BackendResult | None:
    rows = [r for r in rows if r.finished and key(r) is not None]
    if not rows:
        return None
    return (min if better_low else max)(rows, key=key)


def picks(tasks: list[TaskResult], adapters: dict[str, dict[str, Any]]) -> list[Pick]:
    """"Which framework for what": the winner of each criterion per task, and overall."""
    criteria = [
        ("fastest to target", lambda r: r.to_target_s, True, lambda v: f"{num(v)} s"),
        ("highest throughput", lambda r: r.throughput, False, lambda v: f"{num(v)} samples/s"),
        ("lowest peak memory", lambda r: r.peak_mib, True, lambda v: f"{num(v)} MiB"),
        ("fastest start", lambda r: r.start_s, True, lambda v: f"{num(v)} s"),
    ]
    out = []
    for label, key, low, fmt in criteria:
        per_task, wins = {}, {}
        for t in tasks:
            w = _winner(t.rows, key, low)
            if w is None:
                per_task[t.task] = "–"
                continue
            text = f"{w.backend} ({fmt(key(w))})"
            if label == "highest throughput":
                tp = sorted((r for r in t.finished if r.throughput is not None), key=lambda r: -r.throughput)
                c = _comparison(t.comparisons, tp[0].backend, tp[1].backend) if len(tp) > 1 else None
                if c is not None and not c.significant:
                    text += f", tied with {tp[1].backend}"
            per_task[t.task] = text
            wins[w.backend] = wins.get(w.backend, 0) + 1
        n = sum(1 for v in per_task.values() if v != "–")
        if wins:
            best = max(wins.values())
            names = sorted(b for b, k in wins.items() if k == best)
            out.append(Pick(label, per_task, names, f"{best} of {n} task{'s' if n != 1 else ''}"))
        else:
            out.append(Pick(label, per_task, [], "no backend reached a target"
                            if label == "fastest to target" else "no data"))
    sized = {b: a["loc"] for b, a in adapters.items() if a.get("loc")}
    if sized:
        small = min(sized.values())
        names = sorted(b for b, v in sized.items() if v == small)
        out.append(Pick("smallest adapter", {t.task: "" for t in tasks}, names, f"{small} lines"))
    return out


def backend_order(meta: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    order = list((meta.get("config") or {}).get("backends") or [])
    for r in records:
        if r["backend"] not in order:
            order.append(r["backend"])
    return order


def analyze(run_dir: str | Path) -> Analysis:
    """Everything both reports show, computed once from the run folder."""
    from . import spec, stats

    run_dir = Path(run_dir)
    load_results(run_dir)  # the same "not a run folder" error as everywhere else
    records = read_records(run_dir / RESULTS)
    meta = run_meta(run_dir)
    tasks_known = spec.TASKS
    summaries = {(s.task, s.backend): s for s in stats.summarize(
        records, {t: tasks_known[t].batch_size for t in tasks_known})}
    comparisons = stats.pairwise(list(summaries.values()))
    task_order = list((meta.get("config") or {}).get("tasks") or [])
    for r in records:
        if r["task"] not in task_order:
            task_order.append(r["task"])
    order = backend_order(meta, records)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["backend"]), []).append(r)
    tasks = []
    for task in task_order:
        known = tasks_known.get(task)
        target = known.target_accuracy if known else None
        rows = [backend_result(task, b, groups[(task, b)], summaries.get((task, b)), target)
                for b in order if (task, b) in groups]
        if not rows:
            continue
        t = TaskResult(task, known.description if known else task, target,
                       known.batch_size if known else None, _rank(rows),
                       [c for c in comparisons if c.task == task])
        t.verdict = verdict(t)
        tasks.append(t)
    failed = [{"task": r["task"], "backend": r["backend"], "seed": r["seed"],
               "repeat": r.get("repeat", 0), "status": r["status"], "error": one_line(r.get("error"))}
              for r in records if r["status"] != "ok"]
    adapters = adapter_sizes(order, meta)
    return Analysis(run_dir.name, meta, records, tasks, failed, adapters, picks(tasks, adapters), order)


def meta_lines(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing the run: machine, software, configuration."""
    env = meta.get("environment") or {}
    cfg = meta.get("config") or {}
    cal = meta.get("calibration") or {}
    out = []
    if cfg:
        seeds = ", ".join(map(str, cfg.get("seeds") or [])) or "?"
        value = (f"profile {cfg.get('profile')}, seeds {seeds}, repeats {cfg.get('repeats', 1)}, "
                 f"threads {cfg.get('threads')}, timeout {num(cfg.get('timeout_s'))} s")
        out.append(("configuration", value))
    if env:
        affinity = ", ".join(map(str, env.get("affinity") or [])) or "?"
        value = (f"{env.get('cpu_model')}, {env.get('logical_cores')} logical / "
                 f"{env.get('physical_cores')} physical cores (affinity {affinity}), "
                 f"{env.get('memory_gib')} GiB")
        out.append(("machine", value))
        out.append(("system", f"{env.get('os')}, Python {env.get('python')}"))
        pk = env.get("packages") or {}
        out.append(("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v)))
        blas = env.get("blas") or []
        if blas:
            out.append(("BLAS", ", ".join(f"{b.get('internal_api')} {b.get('version')} "
                                          f"({b.get('num_threads')} threads, {b.get('architecture')})"
                                          for b in blas)))
    if cal.get("gemm_peak_gflops"):
        value = f"{num(cal['gemm_peak_gflops'])} GFLOP/s (float32, {cal.get('threads')} threads)"
        out.append(("GEMM peak", value))
    if meta.get("created"):
        out.append(("created", str(meta["created"])))
    return out


# ------------------------------------------------------------------ Markdown


def summary_rows(run_dir: str | Path) -> list[dict[str, str]]:
    """One row per task x backend: medians over the cells that finished, with bootstrap 95%
    CIs where several runs finished (a single run gets no interval)."""
    out = []
    for t in analyze(run_dir).tasks:
        for r in sorted(t.rows, key=lambda r: r.position or 10**6):
            out.append({
                "task": t.task,
                "backend": r.backend,
                "ok": f"{r.ok}/{r.cells}",
                "test acc": _with_ci(_fmt(r.accuracy, ".4f"), r.accuracy_ci, lambda v: f"{v:.4f}"),
                "train s": num(r.train_s),
                "to target s": num(r.to_target_s),
                "first step s": num(r.first_step_s),
                "step p50 ms": _with_ci(num(r.step_p50), r.step_ci),
                "step p90 ms": num(r.step_p90),
                "samples/s": _with_ci(num(r.throughput), r.throughput_ci),
                "GFLOP/s": num(r.gflops),
                "% GEMM peak": num(r.pct_peak, 2),
                "peak MiB": num(r.peak_mib),
                "start s": num(r.start_s),
                "CPU/wall": _fmt(r.cpu_wall, ".2f"),
                "status": ", ".join(r.statuses) or "ok",
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
    numeric = {c for c in cols if c not in ("task", "backend", "status", "criterion")}
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _with_ci(value: str, ci: tuple[float, float] | None, fmt=num) -> str:
    return value + (" " + ci_text(ci, fmt) if ci else "")


def task_rows(t: TaskResult) -> list[dict[str, str]]:
    """The ranked table of a task, as text cells (shared by Markdown and HTML)."""
    out = []
    for r in t.rows:
        if not r.finished:
            target = "–"
        elif r.to_target_s is not None:
            target = num(r.to_target_s) + (f" ({r.reached}/{r.seeds})" if r.reached < r.seeds else "")
        else:
            target = ("not reached" + (f" ({r.reached}/{r.seeds})" if r.reached else "")
                      if t.target is not None else "–")
        out.append({
            "#": str(r.position or "–"),
            "backend": r.backend,
            "to target s": target,
            "samples/s": _with_ci(num(r.throughput), r.throughput_ci),
            "test acc": _with_ci(pct(r.accuracy), r.accuracy_ci, pct),
            "first step s": num(r.first_step_s),
            "step p50 ms": _with_ci(num(r.step_p50), r.step_ci),
            "step p90 ms": num(r.step_p90),
            "peak MiB": num(r.peak_mib),
            "start s": num(r.start_s),
            "status": f"{r.ok}/{r.cells} ok" if not r.statuses else
                      f"{r.ok}/{r.cells} ok; " + ", ".join(r.statuses),
        })
    return out


def markdown_report(run_dir: str | Path) -> str:
    from . import stats

    a = analyze(run_dir)
    parts = [f"# fwbench results: {a.name}", ""]
    parts += [f"- {label}: {value}" for label, value in meta_lines(a.meta)]
    parts += ["", ("Medians over the seeds that finished, with bootstrap 95% CIs in brackets where "
                   "several runs finished. Step time and throughput: steady-state steps pooled over "
                   "seeds and repeats (the first step, with its tracing or compilation, is "
                   "`first step s`; `start s` = import + setup + first step). Time to target: median "
                   "over seeds of the training time until the test accuracy first reached the "
                   "task's target; a seed that never reached it counts as never."), ""]
    if a.picks and a.tasks:
        parts += ["## Which framework for what", ""]
        rows = []
        for p in a.picks:
            row = {"criterion": p.criterion}
            row.update({t.task: p.per_task.get(t.task, "") for t in a.tasks})
            row["overall"] = p.overall
            rows.append(row)
        parts += [markdown_table(rows).replace("---:", "---")]
        if any(x["loc"] for x in a.adapters.values()):
            parts += ["Adapter size (lines of code, without blank lines, comments and docstrings): "
                      + ", ".join(f"{b} {x['loc']}" for b, x in a.adapters.items() if x["loc"])
                      + ".", ""]
    for t in a.tasks:
        head = f"## {t.task}: {t.description}"
        parts += [head, ""]
        facts = []
        if t.target is not None:
            facts.append(f"target accuracy {pct_target(t.target)}")
        if t.batch:
            facts.append(f"batch {t.batch}")
        if facts:
            parts += ["_" + ", ".join(facts) + "; ranked by time to target, then throughput._", ""]
        parts += [markdown_table(task_rows(t))]
        parts += [f"- {v}" for v in t.verdict] + [""]
        if t.comparisons:
            parts += [("Step time, every pair (two-sided Mann-Whitney U on the pooled steps, "
                       f"significant at p < {stats.ALPHA}):"), ""]
            parts += [f"- {c.sentence()}" for c in t.comparisons] + [""]
    if a.failed:
        parts += ["## Cells that did not finish", ""]
        parts += [f"- {f['task']} / {f['backend']} / seed {f['seed']}"
                  + (f" / repeat {f['repeat']}" if f["repeat"] else "")
                  + f": **{f['status']}**: {f['error'] or 'no error message'}" for f in a.failed]
        parts.append("")
    parts += ["## All numbers", "", markdown_table(summary_rows(run_dir))]
    return "\n".join(parts)
