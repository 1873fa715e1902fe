"""The words of the reports: numbers as text, verdict sentences, the shared table cells and
the method note. Shared by the Markdown report, the HTML report, the terminal and
``fwbench compare``; nothing here computes a statistic (``analysis`` does, once)."""

from __future__ import annotations

import math
from typing import Any

from fwbench.harness.report.analysis import (ALPHA, CV_FLAG, EQUIVALENCE_MARGIN, EQUIVALENT, FEW_SEEDS, IMPROVEMENT,
                       INCONCLUSIVE, MIN_PROCESSES, NO_CHANGE, PAIR_TEST, REGRESSION, TOO_FEW,
                       Analysis, BackendResult, Changes, Equivalence, Pick, TaskResult,
                       hardware_label, missing)
from fwbench.harness import records
from fwbench.harness.records import RunMeta

THROUGHPUT = ("throughput = batch size / median steady-state step time (samples/s); a "
              "backend's median step is the median over its finished processes (seeds and "
              "timing-only repeats) of each process's own median step")

MARGIN = f"±{EQUIVALENCE_MARGIN * 100:.1f} points"

METHOD = (
    "The unit of replication is one worker process (a seed's training run or a timing-only "
    "repeat): each process is reduced to one figure, the median of its steady-state steps "
    "(the first step, with its tracing or compilation, is `first step s`; `start s` = import "
    "+ setup + first step), and a backend's step time is the median of those figures over "
    f"its `n` processes, with an exact order-statistic interval; its real coverage is shown "
    f"in parentheses where it is not 95%, and there is no interval below {MIN_PROCESSES} "
    "processes. The within-process spread (p10-p90 of the steps inside a process, median "
    "over processes) is step-to-step jitter only and says nothing about reproducibility; "
    "`CV` is the process-to-process coefficient of variation, flagged above "
    f"{CV_FLAG:.0%}. One definition of speed: {THROUGHPUT}. \"A is faster than B\" only where "
    f"{PAIR_TEST} gives an adjusted p <= {ALPHA:g}; otherwise \"no significant difference\", "
    "or \"too few for a verdict\" where the process counts cannot reach significance in that "
    "family. Ratios are of medians, with a 95% bootstrap interval that resamples processes. "
    "Accuracy: each backend against the task's most accurate one by two one-sided Welch "
    f"t-tests over seeds (TOST), \"equivalent\" within {MARGIN} or \"not shown\"; fewer than "
    f"{MIN_PROCESSES} seeds a side are too few. Time to target: median over seeds of the "
    "training time until the test accuracy first reached the task's target (the target this "
    "run defined), always with how many seeds reached it; a seed that never reached it "
    "counts as never, so where most seeds did not there is no median.")


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


def coverage(level: float | None) -> str:
    """' (97%)': an interval's real coverage, where it does not round to 95%."""
    if level is None or round(level * 100) == 95:
        return ""
    return f" ({level * 100:.0f}%)"


def ci_text(ci: tuple[float, float] | None, fmt=num, level: float | None = None) -> str:
    """'[lo, hi]' with its coverage where it is not 95%, or '' where there is no interval."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]{coverage(level)}" if ci else ""


def with_ci(value: str, ci: tuple[float, float] | None, fmt=num, level: float | None = None) -> str:
    return value + (" " + ci_text(ci, fmt, level) if ci else "")


def and_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def p_text(p: float) -> str:
    return f"{p:.1e}" if p < 0.01 else f"{p:.2f}"


def points(diff: float) -> str:
    """An accuracy difference in points: -0.0012 -> '-0.12'."""
    return f"{diff * 100:+.2f}"


# ------------------------------------------------------------------ per backend


def seeds_reached(r: BackendResult) -> str:
    return f"{r.reached}/{r.seeds} seeds"


def target_text(t: TaskResult, r: BackendResult) -> str:
    """Time to target with how many seeds reached it; never a median of a minority."""
    if not r.finished or t.target is None or not r.seeds:
        return "–"
    if r.to_target_s is not None:
        return f"{num(r.to_target_s)} ({seeds_reached(r)})"
    if r.reached:
        return f"not reached by most seeds ({r.reached}/{r.seeds})"
    return f"not reached ({seeds_reached(r)})"


def spread_text(r: BackendResult) -> str:
    return f"{num(r.spread[0])}-{num(r.spread[1])}" if r.spread else "–"


def cv_text(r: BackendResult) -> str:
    return "–" if r.cv is None else f"{r.cv * 100:.1f}%"


def flags_text(r: BackendResult) -> str:
    """'⚠ CV 14.2%; ⚠ busy 2/7', '' where nothing is flagged (see ``flag_lines``)."""
    out = []
    if r.cv_flagged:
        out.append(f"⚠ CV {cv_text(r)}")
    if r.busy:
        out.append(f"⚠ busy {r.busy}/{r.ok}")
    return "; ".join(out)


def status_text(r: BackendResult) -> str:
    text = f"{r.ok}/{r.cells} ok" + ("; " + ", ".join(r.statuses) if r.statuses else "")
    return text + ("; " + flags_text(r) if r.flagged else "")


def equivalence_text(e: Equivalence) -> str:
    """'equivalent within ±0.5 points (TOST, ...)', '... not shown (...)', '2 seeds: too few'."""
    if e.verdict == FEW_SEEDS:
        n = (f"{e.n} seed{'s' if e.n != 1 else ''}" if e.n == e.n_ref
             else f"{e.n} vs {e.n_ref} seeds")
        return f"{n}: too few to show equivalence (TOST needs {MIN_PROCESSES} a side)"
    p = f"p = {p_text(e.p_value)}" if e.p_value else "no variation over seeds"
    detail = (f"TOST, difference {points(e.diff)} points, {e.ci_level:.0%} CI "
              f"[{points(e.ci[0])}, {points(e.ci[1])}], {p}, {e.n} vs {e.n_ref} seeds")
    if e.verdict == EQUIVALENT:
        return f"equivalent within {MARGIN} ({detail})"
    return f"equivalence within {MARGIN} not shown ({detail})"


# ------------------------------------------------------------------ verdicts


def _target_line(t: TaskResult, done: list[BackendResult]) -> str | None:
    if t.target is None:
        return None
    tgt = pct_target(t.target)
    reached = [r for r in done if r.to_target_s is not None]  # by most of their seeds
    if reached:
        first = reached[0]
        rest = [f"{r.backend} {num(r.to_target_s)} s ({seeds_reached(r)})" if r.to_target_s is not None
                else f"{r.backend} {target_text(t, r)}" for r in done if r is not first]
        return (f"Fastest to the {tgt} target: {first.backend} in {num(first.to_target_s)} s "
                f"({seeds_reached(first)})" + ("; " + ", ".join(rest) if rest else "") + ".")
    some = [r for r in done if r.reached]
    if some:
        return (f"No backend reached the {tgt} target with most of its seeds ("
                + ", ".join(f"{r.backend} {r.reached}/{r.seeds}" for r in some) + ").")
    accs = [r for r in done if r.accuracy is not None]
    best = max((r.accuracy for r in accs), default=None)
    who = [r.backend for r in accs if pct(r.accuracy) == pct(best)]
    by = "" if len(who) == len(accs) and len(accs) > 1 else ", " + and_list(who)
    return (f"No backend reached the {tgt} target"
            + (f" (best accuracy {pct(best)}{by})." if best is not None else "."))


def _throughput_line(t: TaskResult) -> str | None:
    tp = t.by_throughput()
    if not tp:
        return None
    top = tp[0]
    head = "Highest steady-state throughput"
    if len(tp) == 1:
        return f"{head}: {top.backend}, {num(top.throughput)} samples/s."
    second = tp[1]
    both = (f"{top.backend} ({num(top.throughput)} samples/s) and {second.backend} "
            f"({num(second.throughput)})")
    c = t.pair(top.backend, second.backend)
    if c is None:
        return f"{head}: {top.backend}, {num(top.throughput)} samples/s."
    if c.significant:
        return f"{head}: {top.backend}, {num(top.throughput)} samples/s; {c.sentence}."
    if c.tested:
        return f"{head}: tied, no significant difference between {both}; {c.sentence}."
    return f"{head}: too few runs to tell {both} apart; {c.sentence}."


def _accuracy_line(t: TaskResult, done: list[BackendResult]) -> str | None:
    ref = next((r for r in done if r.backend == t.reference), None)
    others = [r for r in done if r.equivalence is not None]
    if ref is None or not others:
        return None
    return (f"Accuracy, each backend against the most accurate ({ref.backend}, "
            f"{pct(ref.accuracy)} median over {ref.seeds} seed{'s' if ref.seeds != 1 else ''}): "
            + "; ".join(f"{r.backend} {pct(r.accuracy)}, {equivalence_text(r.equivalence)}"
                        for r in others) + ".")


def flag_sentences(r: BackendResult) -> list[str]:
    """What each flag of ``flags_text`` means, for this backend."""
    out = []
    if r.cv_flagged:
        out.append(f"⚠ CV: {r.backend}'s processes differ by {cv_text(r)} (coefficient of "
                   f"variation of their median steps), above {CV_FLAG:.0%}: something outside the "
                   "model (other load, frequency or thermal changes, swapping) moved its timing; "
                   "its interval and comparisons rest on noisy figures.")
    if r.busy:
        out.append(f"⚠ busy: {r.busy} of {r.ok} processes of {r.backend} ran while other "
                   "processes used their cores (the records' noise.busy): their step times "
                   "include that load.")
    return out


def verdict(t: TaskResult) -> list[str]:
    """Plain sentences: who wins on what, and whether the differences are real."""
    done = t.finished
    if not done:
        return [f"No backend finished {t.task}: " + ", ".join(
            f"{r.backend} {'/'.join(r.statuses) or 'no cells'}" for r in t.rows) + "."]
    out = [line for line in (_target_line(t, done), _throughput_line(t), _accuracy_line(t, done))
           if line]
    mem = sorted((r for r in done if r.peak_mib is not None), key=lambda r: r.peak_mib)
    if len(mem) > 1:
        out.append(f"Lowest peak memory: {mem[0].backend}, {num(mem[0].peak_mib)} MiB "
                   f"(highest: {mem[-1].backend}, {num(mem[-1].peak_mib)} MiB).")
    start = sorted((r for r in done if r.start_s is not None), key=lambda r: r.start_s)
    if len(start) > 1:
        out.append(f"Fastest start (import + setup + first step): {start[0].backend}, "
                   f"{num(start[0].start_s)} s (slowest: {start[-1].backend}, {num(start[-1].start_s)} s).")
    for r in done:
        out += flag_sentences(r)
    bad = [r for r in t.rows if set(r.statuses) - {"unsupported"}]
    if bad:
        out.append("Did not finish: " + ", ".join(
            f"{r.backend} ({', '.join(s for s in r.statuses if s != 'unsupported')}, "
            f"{r.cells - r.ok} of {r.cells} cells)" for r in bad) + ".")
    cannot = [r.backend for r in t.rows if "unsupported" in r.statuses]
    if cannot:
        out.append("Cannot run this task (a layer is unsupported by the adapter): "
                   + ", ".join(cannot) + ".")
    over = [r.backend for r in done if r.threads_exceeded]
    if over:
        out.append("Used more threads than allowed: " + ", ".join(over) + ".")
    return out


def processes_line(t: TaskResult) -> str:
    """'Processes per backend: a 7 and b 7 (the planned processes (seeds + --repeats)).'"""
    by_reason: dict[str, list[str]] = {}
    for r in t.rows:
        s = r.stopping
        reason = s.reason if s else "run.json does not say why"
        by_reason.setdefault(reason, []).append(f"{r.backend} {s.processes if s else r.cells}")
    return "Processes per backend: " + "; ".join(
        f"{and_list(names)}: {reason}" for reason, names in by_reason.items()) + "."


def task_facts(t: TaskResult) -> str:
    """'target accuracy 98%, batch 128' (the run's own definitions)."""
    facts = []
    if t.target is not None:
        facts.append(f"target accuracy {pct_target(t.target)}")
    if t.batch:
        facts.append(f"batch {t.batch}")
    return ", ".join(facts)


def pairs_head(a: Analysis) -> str:
    """The line above every task's list of pairs: how they were tested, in which family."""
    total = sum(len(t.pairs) for t in a.tasks)
    if a.family == 0:
        fam = f"none of the report's {total} pairs has enough processes for a verdict"
    elif a.family == total:
        fam = f"the Holm family is all {total} pair{'s' if total != 1 else ''} of the report"
    else:
        fam = (f"the Holm family is the {a.family} of the report's {total} pairs that have "
               "enough processes for a verdict")
    return f"Step time, every pair: {PAIR_TEST}; {fam}."


# ------------------------------------------------------------------ picks

UNITS = {"fastest to target": "s", "highest throughput": "samples/s", "lowest peak memory": "MiB",
         "fastest start": "s"}


def pick_cell(p: Pick, task: str) -> str:
    """'backend (value unit)' of one task, 'tied: a / b (...)', 'too few runs ...', or '–'."""
    e = p.per_task.get(task)
    if e is None:
        return "–"
    if e.state == "tied":
        return f"tied: {e.backend} / {e.runner_up} (no significant difference)"
    if e.state == "few":
        return f"too few runs to tell {e.backend} from {e.runner_up}"
    return f"{e.backend} ({num(e.value)} {UNITS.get(p.criterion, '')})"


def pick_note(p: Pick) -> str:
    """'2 of 3 tasks', '130 lines', or why there is no winner."""
    if p.criterion == "smallest adapter":
        return f"{p.wins} lines"
    open_ = f" ({p.undecided} tied or too few runs)" if p.undecided else ""
    if p.winners:
        total = p.decided + p.undecided
        return f"{p.wins} of {total} task{'s' if total != 1 else ''}{open_}"
    if p.undecided:
        return "undecided on every task (tied or too few runs)"
    return "no backend reached a target" if p.criterion == "fastest to target" else "no data"


def pick_overall(p: Pick) -> str:
    return " / ".join(p.winners) + f" ({pick_note(p)})" if p.winners else pick_note(p)


# ------------------------------------------------------------------ shared table text


def device_columns(rows) -> tuple[bool, bool]:
    """(energy, gpu): whether a table gets the J/sample column and the GPU columns (only
    where some row has them, so CPU reports look as they did)."""
    return (any(r.energy_per_sample is not None for r in rows),
            any(r.gpu_mib is not None or r.gpu_util is not None for r in rows))


def task_rows(t: TaskResult) -> list[dict[str, str]]:
    """The ranked table of a task, as text cells (the Markdown table; the HTML shows the
    same cells). Energy (J/sample) stands next to the step time, GPU memory next to RSS."""
    energy, gpu = device_columns(t.rows)
    out = []
    for r in t.rows:
        row = {
            "#": str(r.position or "–"),
            "backend": r.backend,
            "n": str(r.processes),
            "to target s": target_text(t, r),
            "samples/s": with_ci(num(r.throughput), r.throughput_ci, level=r.step_ci_level),
            "test acc": with_ci(pct(r.accuracy), r.accuracy_ci, pct, r.accuracy_ci_level),
            "step ms": with_ci(num(r.step_p50), r.step_ci, level=r.step_ci_level),
        }
        if energy:
            row["J/sample"] = num(r.energy_per_sample)
        row.update({
            "within-process spread p10-p90 ms": spread_text(r),
            "CV": cv_text(r),
            "first step s": num(r.first_step_s),
            "peak MiB": num(r.peak_mib),
        })
        if gpu:
            row["GPU MiB"] = num(r.gpu_mib)
            row["GPU util %"] = num(r.gpu_util)
        row.update({"start s": num(r.start_s), "status": status_text(r)})
        out.append(row)
    return out


def summary_rows(a: Analysis) -> list[dict[str, str]]:
    """One row per task x backend (every number of the analysis), ranked within a task."""
    out = []
    energy, gpu = device_columns([r for t in a.tasks for r in t.rows])
    for t in a.tasks:
        for r in sorted(t.rows, key=lambda r: r.position or 10**6):
            out.append({
                "task": t.task,
                "backend": r.backend,
                "ok": f"{r.ok}/{r.cells}",
                "n": str(r.processes),
                "test acc": with_ci(fmt(r.accuracy, ".4f"), r.accuracy_ci, lambda v: f"{v:.4f}",
                                    r.accuracy_ci_level),
                "train s": num(r.train_s),
                **({"J/sample": num(r.energy_per_sample)} if energy else {}),
                "to target s": target_text(t, r),
                "first step s": num(r.first_step_s),
                "step ms": with_ci(num(r.step_p50), r.step_ci, level=r.step_ci_level),
                "within-process p10-p90 ms": spread_text(r),
                "CV": cv_text(r),
                "samples/s": with_ci(num(r.throughput), r.throughput_ci, level=r.step_ci_level),
                "GFLOP/s": num(r.gflops),
                "% GEMM peak": num(r.pct_peak, 2),
                "peak MiB": num(r.peak_mib),
                **({"GPU MiB": num(r.gpu_mib), "GPU util %": num(r.gpu_util)} if gpu else {}),
                "start s": num(r.start_s),
                "CPU/wall": fmt(r.cpu_wall, ".2f"),
                "status": ", ".join(r.statuses + ([flags_text(r)] if r.flagged else [])) or "ok",
            })
    return out


def significance_lines(a: Analysis) -> list[str]:
    """'task: <the statistics' sentence>' for every pair of every task."""
    return [f"{t.task}: {p.sentence}" for t in a.tasks for p in t.pairs]


def flag_lines(a: Analysis) -> list[str]:
    """'task: <what a flag means>' for every flagged backend of every task."""
    return [f"{t.task}: {s}" for t in a.tasks for r in t.finished for s in flag_sentences(r)]


def unsupported_text(f) -> str:
    return f"{f.task} / {f.backend}: {f.error or 'no layer named'}"


def failed_text(f) -> str:
    return (f"{f.task} / {f.backend} / seed {f.seed}" + (f" / repeat {f.repeat}" if f.repeat else "")
            + f": **{f.status}**: {f.error or 'no error message'}")


def adapter_text(a: Analysis) -> str:
    """'torch 130, tensorflow 120 (changed since the run)', '' when no size is known."""
    return ", ".join(f"{b} {x.loc}" + (" (changed since the run)" if x.changed else "")
                     for b, x in a.adapters.items() if x.loc)


# ------------------------------------------------------------------ the run


def noise_text(noise: records.NoiseAtStart) -> str:
    """The busy check before the run's first cell, as the report says it."""
    text = noise.text or "measured"
    if noise.looks == 2 and not noise.busy:
        text += " (a second look: the first second was busy)"
    if noise.busy:
        text = "BUSY: " + text + ("; the run went on with --allow-busy" if noise.allowed
                                  else "; the run went on (a smoke run only warns)")
    return text


def meta_lines(meta: RunMeta, drift: tuple[float, float] | None = None,
               probes: int = 0) -> list[tuple[str, str]]:
    """(label, value) pairs describing the run: machine, load, software, configuration;
    ``drift``: the fastest and slowest of its ``probes`` drift probes (ms)."""
    env, cfg, cal = meta.environment, meta.config, meta.calibration
    seeds = ", ".join(map(str, cfg.seeds)) or "?"
    value = (f"profile {cfg.profile}, seeds {seeds}, {cfg.repeats} "
             f"timing-only repeats per cell, threads {cfg.threads}, "
             f"timeout {num(cfg.timeout_s)} s")
    if cfg.until_ci_pct is not None:
        value += f", --until-ci ±{cfg.until_ci_pct:g}% (cap {cfg.max_processes} processes)"
    value += f", denormals {cfg.denormals}"
    out = [("configuration", value)]
    affinity = ", ".join(map(str, env.affinity)) or "?"
    out.append(("machine", f"{env.cpu_model}, {env.logical_cores} logical / "
                           f"{env.physical_cores} physical cores (affinity {affinity}), "
                           f"{env.memory_gib} GiB"))
    if meta.noise_at_start is not None:
        out.append(("load at start", noise_text(meta.noise_at_start)))
    if drift:
        out.append(("drift probes", f"{probes} (a fixed NumPy workload before each round of cells),"
                                    f" {num(drift[0])}-{num(drift[1])} ms"))
    out.append(("system", f"{env.os}, Python {env.python}"))
    out.append(("packages", ", ".join(f"{k} {v}" for k, v in env.packages.items() if v)))
    blas = (cal.blas if cal else None) or env.blas
    if blas:
        out.append(("BLAS", ", ".join(records.blas_text(b) for b in blas)))
    if cal and cal.gemm_peak_gflops:
        out.append(("GEMM peak", f"{num(cal.gemm_peak_gflops)} GFLOP/s (float32, {cal.threads} threads)"))
    out.append(("fwbench", meta.fwbench_version))
    out.append(("created", meta.created))
    for r in meta.resumed:
        value = r.at + (" (environment differed, accepted: " + "; ".join(r.differences) + ")"
                        if r.differences else "")
        out.append(("resumed", value))
    return out


def report_title(a: Analysis) -> str:
    """What was run, where: "mlp, lenet on torch, jax (quick; AMD EPYC, 2 cores)" (the run
    folder's name says nothing when it is "runs/2026-..." or "reports")."""
    cfg, env = a.meta.config, a.meta.environment
    device = "" if cfg.device == "cpu" else f", {cfg.device}"
    return (f"{', '.join(t.task for t in a.tasks) or 'no tasks'} on "
            f"{', '.join(a.backends) or 'no backends'} ({cfg.profile}; {env.cpu_model}, "
            f"{env.logical_cores} cores{device})")


def run_lines(a: Analysis) -> list[tuple[str, str]]:
    out = meta_lines(a.meta, a.drift_range, len(a.drift_ms))
    if any(info.env is not None for info in a.meta.backends.values()):  # --envs isolated
        out = [("runner packages" if k == "packages" else k, v) for k, v in out]
    versions = "; ".join(f"{b}: {v}" for b, v in a.versions.items() if v)
    if versions:
        out.insert(next((i + 1 for i, (k, _) in enumerate(out) if k.endswith("packages")), len(out)),
                   ("backend packages", versions))
    if a.hardware is not None:
        out.insert(next((i + 1 for i, (k, _) in enumerate(out) if k == "machine"), len(out)),
                   ("hardware", hardware_text(a)))
    text = denormal_text(a)
    if text:
        out.insert(next((i + 1 for i, (k, _) in enumerate(out) if k == "configuration"), 0),
                   ("denormals", text))
    out += device_lines(a)
    return out


def denormal_text(a: Analysis) -> str:
    """The run's denormal policy and, per backend, whether its training step flushed (probed
    in each process after training); '' for runs without the probe."""
    seen: dict[str, set] = {}
    for r in a.records:
        if r.denormals:
            seen.setdefault(r.backend, set()).add(r.flushed)
    if not seen:
        return ""
    words = {True: "flushed", False: "NOT flushed", None: "not probed"}
    parts = [f"{b} " + "/".join(words[f] for f in sorted(fs, key=str)) for b, fs in sorted(seen.items())]
    policy = a.meta.config.denormals
    return f"policy {policy}; in the training step, probed: " + ", ".join(parts)


def device_lines(a: Analysis) -> list[tuple[str, str]]:
    """The run's device and how its energy was measured (nothing for an older run)."""
    out = []
    device = a.meta.config.device
    cal = a.meta.calibration
    found_gpus = [r.gpu for r in a.records if r.gpu is not None and r.gpu.name] or (
        [cal.gpu] if cal is not None and cal.gpu is not None and cal.gpu.name else [])
    gpus = sorted({f"{g.name} (driver {g.driver}, CUDA {g.cuda or '?'}, cuDNN {g.cudnn or '?'}, "
                   f"power limit {num(g.power_limit_w)} W, MIG {g.mig_mode})" for g in found_gpus})
    if device != "cpu":
        out.append(("device", f"{device}, one GPU per cell: float32 with TF32 off, no "
                              "preallocation" + (f"; {'; '.join(gpus)}" if gpus else "")))
    found = [r.energy for r in a.records if r.energy is not None]
    if not found:
        return out
    measured = next((e for e in found if e.train_j is not None), None)
    if measured is not None and cal is not None and cal.idle_w is not None:
        out.append(("energy", f"{measured.source}: counts {measured.counts}; the training phases "
                              f"minus the idle baseline ({num(cal.idle_w)} W, measured at the "
                              "start of the run) over the same time, per training sample"))
    else:
        why = (cal.idle_reason if measured is not None and cal is not None and cal.idle_reason
               else next((e.reason for e in found if e.reason), None) or "no counter")
        out.append(("energy", f"not measured: {why}"))
    return out


def hardware_text(a: Analysis) -> str:
    """Which hardware fingerprints the cells ran on, and how the report treats them."""
    h = a.hardware
    if h is None:
        return "not recorded"
    nodes = f"{len(h.nodes)} node(s)" + (f" ({', '.join(n[:12] for n in h.nodes)})" if h.nodes else "")
    prints = "; ".join(f"hw {k[:8]}: {v.text()}" for k, v in h.fingerprints.items())
    if h.unknown:
        prints += ("; " if prints else "") + (f"{h.unknown} record(s) without a fingerprint (an "
                                              "older fwbench)")
    if h.groups <= 1:
        return f"{prints}; {nodes}" if h.fingerprints else prints
    if h.split:
        return (f"{h.groups} hardware fingerprints ({prints}; {nodes}): cells measured on "
                f"different hardware are not ranked together: {and_list(h.split)} "
                f"{'is' if len(h.split) == 1 else 'are'} reported once per fingerprint "
                f"(`{hardware_label(h.split[0], next(iter(h.fingerprints), None))}`); "
                "--mixed-hardware ranks them "
                "together, labelled")
    cells = "; ".join(f"{t}/{b} " + ", ".join(f"hw {k[:8]} x{n}" for k, n in c.items())
                      for (t, b), c in h.mixed.items())
    return (f"MIXED HARDWARE, ranked together as asked (--mixed-hardware): {h.groups} "
            f"fingerprints ({prints}; {nodes}); processes per fingerprint: {cells or 'none'}: "
            "these rankings measure the machines as much as the frameworks")


def hardware_warnings(a: Analysis) -> list[str]:
    """One line for the terminal when the cells ran on more than one fingerprint."""
    if a.hardware is None or a.hardware.groups <= 1:
        return []
    return [f"hardware: {hardware_text(a)}"]


# ------------------------------------------------------------------ compare

CHANGE_WORDS = {REGRESSION: "regression", IMPROVEMENT: "improvement", NO_CHANGE: "no change",
                INCONCLUSIVE: "inconclusive", TOO_FEW: "too few runs"}


def ratio_text(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}x"


def drift_line(c: Changes) -> str:
    """What the drift probes say of the machine between the two runs."""
    if c.drift is None:
        return (f"machine drift: not corrected, too few drift probes ({c.probes[0]} in A, "
                f"{c.probes[1]} in B; needs {MIN_PROCESSES} each)")
    d = c.drift
    return (f"machine drift (drift probes, B/A): {d.ratio:.3f}x [{d.lo:.3f}, {d.hi:.3f}] "
            f"({d.level:.1%} CI, {d.n_a} vs {d.n_b} probes)")


def compare_note(c: Changes) -> str:
    cells = len(c.cells)
    return (f"B/A: ratio of median step times over processes (> 1: B slower), "
            f"{c.cell_level:.2%} bootstrap interval (Bonferroni over the {cells} cells and the "
            f"drift); p: exact Mann-Whitney over processes, Holm over the {cells} cells, not "
            "corrected for the drift (one run's processes share its machine: a raw p says the "
            "figures differ, not why); "
            f"verdict: the change corrected for the machine's drift, against a "
            f"{c.threshold_pct:g}% threshold (regression: significantly slower than "
            f"+{c.threshold_pct:g}%; inconclusive: the drift could explain it; too few runs: "
            f"under {MIN_PROCESSES} processes a side)")


def change_line(c: Any, threshold_pct: float) -> str:
    """One line for a cell whose verdict is a regression, an improvement or inconclusive
    (``compare.Change``)."""
    where = f"{c.task}/{c.backend}"
    ci = f" [{c.ratio_ci[0]:.2f}, {c.ratio_ci[1]:.2f}]" if c.ratio_ci else ""
    what = (f"step time {c.step_pct:+.1f}% (B/A {ratio_text(c.ratio)}{ci}, {c.n_a} vs {c.n_b} "
            "processes)")
    if c.verdict == REGRESSION:
        return f"regression: {where} {what}: slower beyond {threshold_pct:g}% after the machine's drift"
    if c.verdict == IMPROVEMENT:
        return f"improvement: {where} {what}: faster beyond {threshold_pct:g}% after the machine's drift"
    return f"{c.detail}: {where} {what}"


def compare_summary(result: Any) -> str:
    """'verdicts over 4 cells, after the machine's drift (threshold 5%): 1 regression, 3 no
    significant change; raw process test: ...' (``compare.Comparison``). Only the drift-aware
    verdicts may say that two runs differ: the processes of one run share that run's machine
    state, so the raw test across runs is pseudo-replicated and is named as what it is."""
    counts: dict[str, int] = {}
    for c in result.changes:
        word = NO_CHANGE if c.verdict == NO_CHANGE else CHANGE_WORDS[c.verdict]
        counts[word] = counts.get(word, 0) + 1
    m = len(result.changes)
    raw = sum(c.significant for c in result.changes)
    tested = sum(c.tested for c in result.changes)
    drift = ("after the machine's drift" if result.stats.drift is not None
             else "machine drift not corrected")
    test = (f"the raw process test (Holm, not corrected for drift) separates {raw or 'none'} of "
            f"the {tested} tested cells" + (": the two runs' figures differ there, which the "
                                            "machine's own drift between the runs may explain; "
                                            "only the verdicts correct for it" if raw else ""))
    return (f"verdicts over {m} cells, {drift} (threshold {result.stats.threshold_pct:g}%): "
            + ", ".join(f"{k} {w}" for w, k in counts.items()) + f"; {test}")
