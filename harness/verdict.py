"""The words of the reports: numbers as text, verdict sentences, the shared table cells and
the method note. Shared by the Markdown report, the HTML report and the terminal; nothing
here computes a statistic (``analysis`` does, once)."""

from __future__ import annotations

import math
from typing import Any

from .analysis import ALPHA, PAIR_TEST, Analysis, BackendResult, Pick, TaskResult, missing
from .records import RunMeta

THROUGHPUT = ("throughput = batch size / median steady-state step time (samples/s); a "
              "backend's median step is taken over all its finished processes (seeds and "
              "timing-only repeats), a single process's over its own steps")

METHOD = ("Medians over the seeds that finished, with 95% intervals where several runs "
          "finished (a single run gets none). Step times are steady-state steps: the first "
          "step, with its tracing or compilation, is `first step s`; `start s` = import + setup "
          f"+ first step. One definition of speed: {THROUGHPUT}. \"A is faster than B\" only "
          f"where a {PAIR_TEST} gives p < {ALPHA}. Time to target: median over seeds of the "
          "training time until the test accuracy first reached the task's target (the target "
          "this run defined); a seed that never reached it counts as never.")


# ------------------------------------------------------------------ numbers as text


def fmt(value: Any, spec: str) -> str:
    return "–" if missing(value) else format(value, spec)


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


def with_ci(value: str, ci: tuple[float, float] | None, fmt=num) -> str:
    return value + (" " + ci_text(ci, fmt) if ci else "")


def and_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def p_text(p: float) -> str:
    return f"{p:.1e}" if p < 0.01 else f"{p:.2f}"


# ------------------------------------------------------------------ verdicts


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
            c = t.pair(top.backend, second.backend)
            if c is not None and c.significant:
                line += f"; the step-time difference is significant (p = {p_text(c.p_value)})"
            elif c is not None and c.tested:
                line += f"; the step-time difference is not significant (p = {p_text(c.p_value)})"
            elif c is not None:
                line += "; too few runs to test the step-time difference"
            if c is not None and c.tested and min(top.runs, second.runs) < 2:
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


def task_facts(t: TaskResult) -> str:
    """'target accuracy 98%, batch 128' (the run's own definitions)."""
    facts = []
    if t.target is not None:
        facts.append(f"target accuracy {pct_target(t.target)}")
    if t.batch:
        facts.append(f"batch {t.batch}")
    return ", ".join(facts)


# ------------------------------------------------------------------ picks

UNITS = {"fastest to target": "s", "highest throughput": "samples/s", "lowest peak memory": "MiB",
         "fastest start": "s"}


def pick_cell(p: Pick, task: str) -> str:
    """'backend (value unit)' of one task, or '–'."""
    e = p.per_task.get(task)
    if e is None:
        return "–"
    text = f"{e.backend} ({num(e.value)} {UNITS.get(p.criterion, '')})"
    return text + (f", tied with {e.tied_with}" if e.tied_with else "")


def pick_note(p: Pick) -> str:
    """'2 of 3 tasks', '130 lines', or why there is no winner."""
    if p.criterion == "smallest adapter":
        return f"{p.wins} lines"
    if p.winners:
        return f"{p.wins} of {p.decided} task{'s' if p.decided != 1 else ''}"
    return "no backend reached a target" if p.criterion == "fastest to target" else "no data"


def pick_overall(p: Pick) -> str:
    return " / ".join(p.winners) + f" ({pick_note(p)})" if p.winners else pick_note(p)


# ------------------------------------------------------------------ shared table text


def target_text(t: TaskResult, r: BackendResult) -> str:
    if not r.finished:
        return "–"
    if r.to_target_s is not None:
        return num(r.to_target_s) + (f" ({r.reached}/{r.seeds})" if r.reached < r.seeds else "")
    if t.target is None:
        return "–"
    return "not reached" + (f" ({r.reached}/{r.seeds})" if r.reached else "")


def status_text(r: BackendResult) -> str:
    return f"{r.ok}/{r.cells} ok" + ("; " + ", ".join(r.statuses) if r.statuses else "")


def task_rows(t: TaskResult) -> list[dict[str, str]]:
    """The ranked table of a task, as text cells (the Markdown table; the HTML shows the
    same cells)."""
    return [{
        "#": str(r.position or "–"),
        "backend": r.backend,
        "to target s": target_text(t, r),
        "samples/s": with_ci(num(r.throughput), r.throughput_ci),
        "test acc": with_ci(pct(r.accuracy), r.accuracy_ci, pct),
        "first step s": num(r.first_step_s),
        "step p50 ms": with_ci(num(r.step_p50), r.step_ci),
        "step p90 ms": num(r.step_p90),
        "peak MiB": num(r.peak_mib),
        "start s": num(r.start_s),
        "status": status_text(r),
    } for r in t.rows]


def summary_rows(a: Analysis) -> list[dict[str, str]]:
    """One row per task x backend (every number of the analysis), ranked within a task."""
    out = []
    for t in a.tasks:
        for r in sorted(t.rows, key=lambda r: r.position or 10**6):
            out.append({
                "task": t.task,
                "backend": r.backend,
                "ok": f"{r.ok}/{r.cells}",
                "test acc": with_ci(fmt(r.accuracy, ".4f"), r.accuracy_ci, lambda v: f"{v:.4f}"),
                "train s": num(r.train_s),
                "to target s": num(r.to_target_s),
                "first step s": num(r.first_step_s),
                "step p50 ms": with_ci(num(r.step_p50), r.step_ci),
                "step p90 ms": num(r.step_p90),
                "samples/s": with_ci(num(r.throughput), r.throughput_ci),
                "GFLOP/s": num(r.gflops),
                "% GEMM peak": num(r.pct_peak, 2),
                "peak MiB": num(r.peak_mib),
                "start s": num(r.start_s),
                "CPU/wall": fmt(r.cpu_wall, ".2f"),
                "status": ", ".join(r.statuses) or "ok",
            })
    return out


def significance_lines(a: Analysis) -> list[str]:
    """'task: <the statistics' sentence>' for every pair of every task."""
    return [f"{t.task}: {p.sentence}" for t in a.tasks for p in t.pairs]


def failed_text(f) -> str:
    return (f"{f.task} / {f.backend} / seed {f.seed}" + (f" / repeat {f.repeat}" if f.repeat else "")
            + f": **{f.status}**: {f.error or 'no error message'}")


def adapter_text(a: Analysis) -> str:
    """'torch 130, tensorflow 120 (changed since the run)', '' when no size is known."""
    return ", ".join(f"{b} {x.loc}" + (" (changed since the run)" if x.changed else "")
                     for b, x in a.adapters.items() if x.loc)


# ------------------------------------------------------------------ the run


def meta_lines(meta: RunMeta) -> list[tuple[str, str]]:
    """(label, value) pairs describing the run: machine, software, configuration."""
    env = meta.environment or {}
    cfg = meta.config or {}
    cal = meta.calibration
    out = []
    if cfg:
        seeds = ", ".join(map(str, cfg.get("seeds") or [])) or "?"
        value = (f"profile {cfg.get('profile')}, seeds {seeds}, repeats {cfg.get('repeats', 1)}, "
                 f"threads {cfg.get('threads')}, timeout {num(cfg.get('timeout_s'))} s")
        out.append(("configuration", value))
    if env:
        affinity = ", ".join(map(str, env.get("affinity") or [])) or "?"
        out.append(("machine", f"{env.get('cpu_model')}, {env.get('logical_cores')} logical / "
                               f"{env.get('physical_cores')} physical cores (affinity {affinity}), "
                               f"{env.get('memory_gib')} GiB"))
        out.append(("system", f"{env.get('os')}, Python {env.get('python')}"))
        pk = env.get("packages") or {}
        out.append(("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v)))
    blas = (cal.blas if cal else None) or env.get("blas") or []
    if blas:
        out.append(("BLAS", ", ".join(f"{b.get('internal_api')} {b.get('version')} "
                                      f"({b.get('num_threads')} threads, {b.get('architecture')})"
                                      for b in blas)))
    if cal and cal.gemm_peak_gflops:
        out.append(("GEMM peak", f"{num(cal.gemm_peak_gflops)} GFLOP/s (float32, {cal.threads} threads)"))
    out.append(("fwbench", meta.fwbench_version))
    out.append(("created", meta.created))
    for r in meta.resumed:
        value = r.at + (" (environment differed, accepted: " + "; ".join(r.differences) + ")"
                        if r.differences else "")
        out.append(("resumed", value))
    return out
