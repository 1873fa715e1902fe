"""What a run's records say, as numbers: computed once, shared by every renderer.

``analyze(run)`` reads a run folder through ``records.load_run`` and returns an ``Analysis``:
per task a ranked list of ``BackendResult`` (medians, intervals, time to target, memory,
start, the per-process points and curves the plots draw), the step-time ``Pair`` of every
two backends, the "which framework for what" ``Pick``s, the cells that did not finish and
the adapters' sizes. No words here (``verdict`` phrases them), no drawing (``markdown`` and
``html`` render them), no framework import.

Every task fact (description, target accuracy, batch size) comes from the run's own
snapshot (``run.meta.tasks``, see ``task_facts``), never from today's ``spec.TASKS``: an old
run folder is reported with the definitions it ran with.

Throughput has one definition, ``throughput()``: batch size / median steady-state step
time. A backend's figure uses the median over its finished processes of each process's own
median step (``stats.process_figure``); a process's (the scatter's small dots) that
process's median step, which is also how the worker defines a record's
``throughput_samples_s``.

The unit of replication is one worker process. All statistics go through the section "the
statistics seam" below, the only code that calls ``harness.stats``: the pairwise tests of a
report form ONE Holm family over every task, accuracies are compared by TOST over seeds
against each task's most accurate backend, and ``run_changes`` is what ``fwbench compare``
gates on.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from fwbench.harness.measure import environment
from fwbench.harness import records, stats
from fwbench.harness.records import CellRecord, Run, RunMeta

# ------------------------------------------------------------------ the statistics seam
# The one place that calls ``harness.stats`` and turns its objects into this module's own.
# The unit of replication is one worker process: every figure below is computed over the
# per-process medians (``stats.process_figure``), never over pooled steps.

ALPHA = stats.ALPHA
MIN_PROCESSES = stats.MIN_PROCESSES
CV_FLAG = stats.CV_FLAG
EQUIVALENCE_MARGIN = stats.EQUIVALENCE_MARGIN
PAIR_TEST = ("an exact two-sided Mann-Whitney test over the per-process median step times, "
             "with Holm's correction over every pair of every task of the report "
             f"({ALPHA:g} family-wise)")

FASTER, NO_DIFFERENCE, TOO_FEW = stats.VERDICT_FASTER, stats.VERDICT_NONE, stats.VERDICT_FEW
EQUIVALENT, NOT_SHOWN, FEW_SEEDS = "equivalent", "not shown", "too few seeds"
REGRESSION, IMPROVEMENT, NO_CHANGE = stats.REGRESSION, stats.IMPROVEMENT, stats.NO_CHANGE
INCONCLUSIVE = "inconclusive"  # stats says "inconclusive: this machine's speed moved by ..."


@dataclass
class StepSummary:
    """What the statistics say of one (task, backend) of a run, over its processes."""

    task: str
    backend: str
    accuracy: float | None  # median over seeds
    accuracy_ci: tuple[float, float] | None  # exact order-statistic CI, coverage below
    accuracy_ci_level: float | None
    accuracies: list[float]  # one per seed
    step_ms: float | None  # median of the per-process figures
    step_ci: tuple[float, float] | None  # None below MIN_PROCESSES
    step_ci_level: float | None  # its real coverage (order statistics move in steps)
    figures: list[float]  # one per process: the median of its steady-state steps
    cv: float | None  # process-to-process coefficient of variation
    cv_flagged: bool  # cv > CV_FLAG
    spread: tuple[float, float] | None  # within-process p10, p90 (ms)
    raw: Any = field(default=None, repr=False)  # the stats object, for pairwise tests

    @property
    def processes(self) -> int:
        return len(self.figures)


@dataclass
class Pair:
    """Step time of two backends of one task, over processes, tested in the report's family."""

    task: str
    faster: str  # the lower median (listed first also when not significant)
    slower: str
    ratio: float | None  # slower median / faster median
    ratio_ci: tuple[float, float] | None
    p_value: float | None  # Holm-adjusted; None: no verdict possible (too few processes)
    n_a: int  # processes of `faster`
    n_b: int
    verdict: str  # FASTER, NO_DIFFERENCE or TOO_FEW
    family: int  # comparisons in the Holm family
    sentence: str  # the statistics' own wording of the result

    @property
    def significant(self) -> bool:
        return self.verdict == FASTER

    @property
    def tested(self) -> bool:
        return self.verdict != TOO_FEW


@dataclass
class Equivalence:
    """Accuracy of a backend against a reference backend over seeds (TOST, +-margin)."""

    verdict: str  # EQUIVALENT, NOT_SHOWN or FEW_SEEDS
    diff: float | None  # mean difference, this backend - the reference (fraction)
    ci: tuple[float, float] | None  # (1 - 2 alpha) CI of the difference
    p_value: float | None
    n: int  # seeds of this backend
    n_ref: int
    margin: float
    ci_level: float  # of ``ci``: 1 - 2 alpha


def summaries(run: Run) -> dict[tuple[str, str], StepSummary]:
    """(task, backend) -> its ``StepSummary``, over every record of the run."""
    batch = {name: b for name in run.meta.tasks if (b := task_facts(run, name).batch)}
    out = {}
    for s in stats.summarize(run.records, batch):
        out[(s.task, s.backend)] = StepSummary(
            s.task, s.backend, s.accuracy, _pair_of(s.accuracy_ci), s.accuracy_ci_level,
            list(s.accuracies), s.step_ms, _pair_of(s.step_ci), s.step_ci_level,
            list(s.figures), s.cv, stats.cv_flagged(s.figures),
            (s.spread.p10, s.spread.p90) if s.spread else None, s)
    return out


def _pair_of(ci: Any) -> tuple[float, float] | None:
    return (float(ci[0]), float(ci[1])) if ci else None


def pairs(found: Iterable[StepSummary]) -> list[Pair]:
    """Every pair of backends of every task passed in, by per-process step times, with Holm
    over ALL of them (one family for the whole report)."""
    return [Pair(c.task, c.faster, c.slower, c.ratio, _pair_of(c.ratio_ci), c.p_adjusted,
                 c.n_a, c.n_b, c.verdict, c.family, c.sentence())
            for c in stats.pairwise([s.raw for s in found])]


def equivalence(reference: list[float], other: list[float]) -> Equivalence:
    """TOST over seeds of ``other``'s accuracies against ``reference``'s (+-EQUIVALENCE_MARGIN)."""
    e = stats.tost_equivalence(reference, other)
    return Equivalence(e.verdict, e.diff, _pair_of(e.ci), e.p_value, e.n_b, e.n_a, e.margin,
                       1 - 2 * e.alpha)


# A ratio B / A with its bootstrap interval over processes (or drift probes): stats' own type.
Interval = stats.RatioCI


@dataclass
class CellChange:
    """One (task, backend) of run A against itself in run B."""

    ratio: float | None  # median B / median A (> 1: B slower); None: a side has no figure
    ci: Interval | None  # at the Bonferroni level of the compare; None: too few processes
    p_value: float | None  # exact Mann-Whitney over processes, Holm over the common cells
    n_a: int
    n_b: int
    verdict: str  # REGRESSION, IMPROVEMENT, NO_CHANGE, INCONCLUSIVE or TOO_FEW
    detail: str  # stats' own wording of the verdict ("inconclusive: this machine's ...")


@dataclass
class Changes:
    """Every common (task, backend) of two runs, and the machine's drift between them."""

    cells: dict[tuple[str, str], CellChange]
    drift: Interval | None  # the drift probes' B / A; None: too few probes in a run
    probes: tuple[int, int]  # drift probes with a figure in A and in B
    threshold_pct: float
    cell_level: float  # of each cell's interval
    drift_level: float


def run_changes(matched: dict[tuple[str, str], tuple[StepSummary, StepSummary]],
                probes_a: list[float], probes_b: list[float], threshold_pct: float) -> Changes:
    """Run B against run A per common (task, backend), as ``fwbench compare`` gates on it.

    The gate's false-alarm rate is kept <= ALPHA over the whole compare by Bonferroni: the
    drift interval at 1 - ALPHA/2 and each of the m cells' change intervals at
    1 - ALPHA/(2m) (1 - ALPHA/m without drift probes), so every verdict holds jointly with
    the drift correction (``stats.regression_verdict``). The p-values are the exact test
    over processes with Holm over the m cells (not corrected for drift)."""
    d = stats.machine_drift(probes_a, probes_b, level=1 - ALPHA / 2)
    m = max(len(matched), 1)
    level = 1 - ALPHA / (2 * m) if d is not None else 1 - ALPHA / m
    tests = {k: stats.test_difference(sa.figures, sb.figures) for k, (sa, sb) in matched.items()}
    adjusted = dict(zip(tests, stats.holm(tests.values())))
    cells = {}
    for key, (sa, sb) in matched.items():
        change = stats.ratio_ci(sa.figures, sb.figures, level=level)
        ratio = sb.step_ms / sa.step_ms if sa.step_ms and sb.step_ms is not None else None
        if change is None:
            verdict = detail = TOO_FEW
        else:
            detail = stats.regression_verdict(change, d, threshold_pct)
            verdict = INCONCLUSIVE if detail.startswith(INCONCLUSIVE) else detail
        cells[key] = CellChange(ratio, change, adjusted[key], sa.processes,
                                sb.processes, verdict, detail)
    return Changes(cells, d, (len(_finite(probes_a)), len(_finite(probes_b))),
                   threshold_pct, level, 1 - ALPHA / 2)


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if not missing(v)]


# ------------------------------------------------------------------ the run's own tasks


TaskFacts = records.TaskFacts


def task_facts(run: Run, name: str) -> TaskFacts:
    """What the reports say of a task, from the run's own snapshot (``RunMeta.task_facts``)."""
    return run.meta.task_facts(name)


# ------------------------------------------------------------------ one definition


def throughput(batch: int | None, step_ms: float | None) -> float | None:
    """Samples per second: the batch over a median steady-state step time (ms)."""
    if not batch or step_ms is None or not step_ms > 0:
        return None
    return batch / step_ms * 1e3


def throughput_ci(batch: int | None, step_ci: tuple[float, float] | None) -> tuple[float, float] | None:
    """The step-time interval as throughputs (a slower step is a lower throughput)."""
    if not step_ci:
        return None
    lo, hi = throughput(batch, step_ci[1]), throughput(batch, step_ci[0])
    return (lo, hi) if lo is not None and hi is not None else None


# ------------------------------------------------------------------ results


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _median(values: Iterable[Any]) -> float | None:
    v = [x for x in values if not missing(x)]
    return float(np.median(v)) if v else None


@dataclass
class Point:
    """One finished training process (repeat 0): its own throughput and final accuracy."""

    seed: int
    throughput: float | None
    accuracy: float | None


@dataclass
class BackendResult:
    """One backend on one task: medians over the processes that finished."""

    task: str
    backend: str
    cells: int
    ok: int
    processes: int  # finished processes that measured step times (seeds and repeats)
    statuses: list[str]  # statuses of the cells that did not finish
    accuracy: float | None = None  # median over seeds
    accuracy_ci: tuple[float, float] | None = None
    accuracy_ci_level: float | None = None  # the interval's real coverage
    accuracies: list[float] = field(default_factory=list)  # one per seed
    equivalence: Equivalence | None = None  # against the task's most accurate backend
    seeds: int = 0  # finished repeat-0 cells with an accuracy
    reached: int = 0  # of those, how many reached the target
    to_target_s: float | None = None  # median over seeds (never = infinite): None unless most reached
    train_s: float | None = None
    throughput: float | None = None  # throughput(batch, step_p50)
    throughput_ci: tuple[float, float] | None = None
    step_p50: float | None = None  # median of the per-process medians
    step_ci: tuple[float, float] | None = None  # None below MIN_PROCESSES
    step_ci_level: float | None = None  # its real coverage
    spread: tuple[float, float] | None = None  # within-process p10, p90 (ms)
    cv: float | None = None  # process-to-process coefficient of variation
    cv_flagged: bool = False  # cv > CV_FLAG
    busy: int = 0  # finished processes that ran while other processes used their cores
    stopping: records.Stopping | None = None  # run.json: how many processes and why no more
    first_step_s: float | None = None
    start_s: float | None = None  # import + setup + first step
    peak_mib: float | None = None
    energy_per_sample: float | None = None  # J per training sample, idle subtracted (median)
    gpu_mib: float | None = None  # GPU cells: the framework allocator's peak (median)
    gpu_util: float | None = None  # GPU cells: mean GPU utilisation during training, % (median)
    gflops: float | None = None
    pct_peak: float | None = None  # of the calibrated GEMM peak
    cpu_wall: float | None = None
    threads_exceeded: bool = False
    position: int | None = None  # place in the task's ranking (finished backends only)
    rank_target: int | None = None
    rank_throughput: int | None = None
    points: list[Point] = field(default_factory=list)  # per process, for the scatter
    curves: dict[int, list[tuple[float, float | None]]] = field(default_factory=dict)
    # epoch -> [(test accuracy, cumulative training s)], one per seed
    memory_seed: int | None = None  # the process whose timeline is shown
    memory_timeline: list[list[float]] = field(default_factory=list)  # [s, MiB]

    @property
    def finished(self) -> bool:
        return self.ok > 0

    @property
    def flagged(self) -> bool:
        return self.cv_flagged or self.busy > 0


@dataclass
class TaskResult:
    task: str
    description: str
    target: float | None
    batch: int | None
    rows: list[BackendResult]  # ranked: time to target, then throughput; unfinished last
    pairs: list[Pair]  # step times of every two backends
    reference: str | None = None  # the most accurate backend, the others' TOST reference

    @property
    def finished(self) -> list[BackendResult]:
        return [r for r in self.rows if r.finished]

    def pair(self, a: str, b: str) -> Pair | None:
        return next((p for p in self.pairs if {p.faster, p.slower} == {a, b}), None)

    def by_throughput(self) -> list[BackendResult]:
        return sorted((r for r in self.finished if r.throughput is not None),
                      key=lambda r: (-r.throughput, r.backend))


@dataclass
class FailedCell:
    task: str
    backend: str
    seed: int
    repeat: int
    status: str
    error: str  # one line ("" when the record has none)


@dataclass
class AdapterSize:
    module: str | None
    path: str | None
    loc: int | None
    changed: bool | None = None  # the file differs from the one the run used (None: unknown)


@dataclass
class Entry:
    """The leader of one criterion on one task."""

    backend: str
    value: float
    state: str = "decided"  # "decided"; throughput also "tied" (not significant) or "few"
    runner_up: str | None = None  # the second, where the lead is not decided

    @property
    def decided(self) -> bool:
        return self.state == "decided"


@dataclass
class Pick:
    """One line of "which framework for what"."""

    criterion: str  # one of CRITERIA, or "smallest adapter"
    per_task: dict[str, Entry | None]
    winners: list[str]  # the backend(s) winning on most tasks
    wins: int = 0  # tasks each winner won (smallest adapter: its lines of code)
    decided: int = 0  # tasks with a decided winner
    undecided: int = 0  # tasks whose leader is tied or has too few runs


@dataclass
class Analysis:
    name: str
    run: Run
    tasks: list[TaskResult]
    failed: list[FailedCell]
    adapters: dict[str, AdapterSize]
    picks: list[Pick]
    backends: list[str]  # in a stable order (the run's config first), for colours
    versions: dict[str, str]  # backend -> framework version(s) the records report
    family: int = 0  # pairs in the report's one Holm family (those that can reach a verdict)
    drift_ms: list[float] = field(default_factory=list)  # the run's drift probes, one per round
    hardware: Hardware | None = None  # which hardware the cells ran on, and how it is reported
    # one per (task, backend) whose adapter cannot run a layer of the task: not in ``failed``
    unsupported: list[FailedCell] = field(default_factory=list)

    @property
    def meta(self) -> RunMeta:
        return self.run.meta

    @property
    def records(self) -> list[CellRecord]:
        return self.run.records

    @property
    def drift_range(self) -> tuple[float, float] | None:
        """Fastest and slowest drift probe of the run (ms)."""
        return (min(self.drift_ms), max(self.drift_ms)) if self.drift_ms else None

    @property
    def seeds(self) -> int:
        return len(self.meta.config.seeds) or len({r.seed for r in self.records})

    @property
    def repeats(self) -> int:
        """Timing-only processes per (task, backend) after the seeds' training runs."""
        return self.meta.config.repeats


def backend_result(task: str, backend: str, rs: list[CellRecord], summary: StepSummary | None,
                   target: float | None, batch: int | None,
                   stopping: records.Stopping | None = None) -> BackendResult:
    ok = [r for r in rs if r.ok]
    main = [r for r in ok if r.repeat == 0]
    b = BackendResult(task, backend, len(rs), len(ok), summary.processes if summary else 0,
                      sorted({r.status for r in rs if not r.ok}), stopping=stopping)
    with_acc = [r for r in main if r.test_accuracy is not None]
    b.seeds = len(with_acc)
    if target is not None:
        times = [r.time_to_target_s for r in with_acc]
        b.reached = sum(t is not None for t in times)
        if times:  # a seed that never got there counts as infinite: no median of a minority
            med = float(np.median([math.inf if t is None else t for t in times]))
            b.to_target_s = med if math.isfinite(med) else None
    b.train_s = _median(r.train_time_s for r in main)
    if summary is not None:
        b.accuracy, b.accuracy_ci = summary.accuracy, summary.accuracy_ci
        b.accuracy_ci_level, b.accuracies = summary.accuracy_ci_level, summary.accuracies
        b.step_p50, b.step_ci, b.step_ci_level = summary.step_ms, summary.step_ci, summary.step_ci_level
        b.spread, b.cv, b.cv_flagged = summary.spread, summary.cv, summary.cv_flagged
    if b.step_p50 is None:
        b.step_p50 = _median(r.step_time_ms.p50 for r in ok)
    b.throughput = throughput(batch, b.step_p50)
    b.throughput_ci = throughput_ci(batch, b.step_ci)
    b.busy = sum(r.busy for r in ok)
    b.first_step_s = _median(r.first_step_s for r in ok)
    b.start_s = _median(r.import_s + r.setup_s + r.first_step_s for r in ok
                        if not any(missing(v) for v in (r.import_s, r.setup_s, r.first_step_s)))
    b.peak_mib = _median(r.peak_rss_mib for r in (main or ok))
    b.energy_per_sample = _median(r.energy_j_per_sample for r in ok)
    b.gpu_mib = _median(r.allocator_memory.peak_mib for r in (main or ok) if r.allocator_memory)
    b.gpu_util = _median(r.gpu_utilization.gpu_pct_mean for r in ok if r.gpu_utilization)
    b.gflops = _median(r.achieved_gflops for r in ok)
    b.pct_peak = _median(r.pct_of_gemm_peak for r in ok)
    b.cpu_wall = _median(r.cpu_wall_ratio for r in ok)
    b.threads_exceeded = any(r.threads_exceeded for r in ok)
    b.points = [Point(r.seed, throughput(batch, r.step_time_ms.p50), r.test_accuracy)
                for r in sorted(with_acc, key=lambda r: r.seed)]
    for r in sorted(main, key=lambda r: r.seed):
        for e in r.epochs:
            if e.test_accuracy is not None:
                b.curves.setdefault(e.epoch, []).append((e.test_accuracy, e.wall_s))
    shown = sorted((r for r in rs if r.repeat == 0 and len(r.memory_timeline)),
                   key=lambda r: (not r.ok, r.seed))
    if shown:
        b.memory_seed, b.memory_timeline = shown[0].seed, shown[0].memory_timeline
    return b


def accuracy_reference(rows: list[BackendResult]) -> str | None:
    """The most accurate backend (highest median over seeds); every other backend's accuracy
    is tested for equivalence against it (``equivalence``), so each row holds its own."""
    accs = [r for r in rows if r.finished and r.accuracy is not None]
    if len(accs) < 2:
        return None
    best = max(accs, key=lambda r: (r.accuracy, -rows.index(r)))
    for r in accs:
        if r is not best:
            r.equivalence = equivalence(best.accuracies, r.accuracies)
    return best.backend


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


def one_line(error: Any, width: int = 200) -> str:
    """The line of an error worth showing: the last of a traceback, else the first."""
    lines = [x.strip() for x in str(error or "").strip().splitlines() if x.strip()]
    text = lines[-1] if lines and lines[-1] != lines[0] and ":" in lines[-1] else (lines[0] if lines else "")
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------ adapters


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


def adapter_sizes(backends: list[str], meta: RunMeta) -> dict[str, AdapterSize]:
    """backend -> the adapter module the run used (``run.json``), its source file as found
    here and its lines of code; located, never imported. ``changed`` tells whether that file
    is still the one the run hashed."""
    out = {}
    for name in backends:
        info = meta.backends.get(name)
        module = info.adapter.partition(":")[0] if info and info.adapter else None
        path = None
        if module:
            try:
                found = importlib.util.find_spec(module)
                path = found.origin if found and found.origin and found.origin.endswith(".py") else None
            except (ImportError, ValueError):
                path = None
        loc = changed = None
        if path:
            try:
                loc = count_loc(path)
                if info.adapter_sha256:
                    changed = hashlib.sha256(Path(path).read_bytes()).hexdigest() != info.adapter_sha256
            except OSError:
                path = None
        out[name] = AdapterSize(module, path, loc, changed)
    return out


# ------------------------------------------------------------------ picks

# criterion -> (key, lower is better)
CRITERIA: dict[str, tuple[Callable[[BackendResult], float | None], bool]] = {
    "fastest to target": (lambda r: r.to_target_s, True),
    "highest throughput": (lambda r: r.throughput, False),
    "lowest peak memory": (lambda r: r.peak_mib, True),
    "fastest start": (lambda r: r.start_s, True),
}


def _winner(rows: list[BackendResult], key, better_low: bool) -> BackendResult | None:
    rows = [r for r in rows if r.finished and key(r) is not None]
    if not rows:
        return None
    return (min if better_low else max)(rows, key=key)


def throughput_lead(t: TaskResult) -> Entry | None:
    """The task's highest throughput, decided only where the step-time difference between the
    top two is significant in the report's family: else "tied" (tested, not significant) or
    "few" (too few processes for a verdict)."""
    tp = t.by_throughput()
    if not tp:
        return None
    entry = Entry(tp[0].backend, tp[0].throughput)
    c = t.pair(tp[0].backend, tp[1].backend) if len(tp) > 1 else None
    if c is not None and not c.significant:
        entry.state, entry.runner_up = ("tied" if c.tested else "few"), tp[1].backend
    return entry


def picks(tasks: list[TaskResult], adapters: dict[str, AdapterSize]) -> list[Pick]:
    """"Which framework for what": the leader of each criterion per task, and overall (the
    backend(s) with the most decided wins; an undecided lead wins nothing)."""
    out = []
    for label, (key, low) in CRITERIA.items():
        per_task: dict[str, Entry | None] = {}
        wins: dict[str, int] = {}
        for t in tasks:
            if label == "highest throughput":
                entry = throughput_lead(t)
            else:
                w = _winner(t.rows, key, low)
                entry = Entry(w.backend, key(w)) if w is not None else None
            per_task[t.task] = entry
            if entry is not None and entry.decided:
                wins[entry.backend] = wins.get(entry.backend, 0) + 1
        best = max(wins.values(), default=0)
        names = sorted(b for b, k in wins.items() if k == best) if wins else []
        entries = [e for e in per_task.values() if e is not None]
        out.append(Pick(label, per_task, names, best, sum(e.decided for e in entries),
                        sum(not e.decided for e in entries)))
    sized = {b: a.loc for b, a in adapters.items() if a.loc}
    if sized:
        small = min(sized.values())
        out.append(Pick("smallest adapter", {}, sorted(b for b, v in sized.items() if v == small),
                        small, len(sized)))
    return out


# ------------------------------------------------------------------ matched hardware
# Every record carries the hardware fingerprint of the node it ran on (``records.Hardware``).
# Cells measured on different fingerprints are never ranked together: a task whose cells ran
# on more than one is reported once per fingerprint, as ``mlp [hw 1a2b3c4d]``, unless
# ``mixed_hardware`` asks to rank them together (then every such cell is labelled). Records
# without a fingerprint (an older fwbench) form one group of their own, "unknown".


@dataclass
class Hardware:
    """The fingerprints a run's cells were measured on, and what the report does with them."""

    fingerprints: dict[str, records.Hardware]  # id -> fingerprint, every known one
    nodes: list[str]  # the nodes the cells ran on ("local", Ray node ids)
    unknown: int  # records without a fingerprint
    split: list[str]  # tasks reported once per fingerprint
    mixed: dict[tuple[str, str], dict[str, int]]  # --mixed-hardware: (task, backend) ->
    # processes per fingerprint id, where a task's cells ran on more than one

    @property
    def groups(self) -> int:
        return len(self.fingerprints) + (1 if self.unknown else 0)


def hardware_id(r: CellRecord) -> str | None:
    return r.hardware.id if r.hardware is not None else None


def hardware_label(task: str, hw: str | None) -> str:
    """The name of a task's cells on one fingerprint: 'mlp [hw 1a2b3c4d]'."""
    return f"{task} [hw {hw[:8] if hw else 'unknown'}]"


def hardware_ids(run: Run) -> dict[tuple[str, str], list[str]]:
    """(task, backend) -> the known fingerprint ids of its records, sorted."""
    out: dict[tuple[str, str], set[str]] = {}
    for r in run.records:
        if r.hardware is not None:
            out.setdefault((r.task, r.backend), set()).add(r.hardware.id)
    return {k: sorted(v) for k, v in out.items()}


def different_hardware(a: list[str] | None, b: list[str] | None) -> bool:
    """Whether two sets of processes ran on different hardware: both sides known and not
    one and the same fingerprint (an unknown side, an older run, is taken on trust)."""
    return bool(a) and bool(b) and (set(a) != set(b) or len(set(a)) > 1)


def by_hardware(run: Run, mixed: bool = False) -> tuple[Run, Hardware]:
    """The run as the report ranks it: a task whose cells ran on more than one fingerprint
    becomes one task per fingerprint (its snapshot shared), unless ``mixed``."""
    prints = {r.hardware.id: r.hardware for r in run.records if r.hardware is not None}
    nodes = sorted({r.node for r in run.records if r.node})
    unknown = sum(r.hardware is None for r in run.records)
    per_task: dict[str, list[str | None]] = {}
    for r in run.records:
        ids = per_task.setdefault(r.task, [])
        if hardware_id(r) not in ids:
            ids.append(hardware_id(r))
    several = [t for t, ids in per_task.items() if len(ids) > 1]
    if mixed or not several:
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for r in run.records:
            if r.task in several and r.ok:
                c = counts.setdefault((r.task, r.backend), {})
                c[hardware_id(r) or "unknown"] = c.get(hardware_id(r) or "unknown", 0) + 1
        return run, Hardware(prints, nodes, unknown, [], counts)
    recs = [dataclasses.replace(r, task=hardware_label(r.task, hardware_id(r)))
            if r.task in several else r for r in run.records]
    tasks = dict(run.meta.tasks)
    order: list[str] = []
    for t in dict.fromkeys([*run.meta.config.tasks, *per_task]):
        if t in several:
            for hw in per_task[t]:
                label = hardware_label(t, hw)
                if t in run.meta.tasks:
                    tasks[label] = run.meta.tasks[t]
                order.append(label)
        else:
            order.append(t)
    meta = dataclasses.replace(run.meta, tasks=tasks,
                               config=dataclasses.replace(run.meta.config, tasks=tuple(order)))
    return Run(run.path, meta, recs), Hardware(prints, nodes, unknown, several, {})


# ------------------------------------------------------------------ the whole run


def backend_order(meta: RunMeta, recs: list[CellRecord]) -> list[str]:
    order = list(meta.config.backends)
    for r in recs:
        if r.backend not in order:
            order.append(r.backend)
    return order


def framework_versions(run: Run, order: list[str]) -> dict[str, str]:
    """backend -> the packages its workers imported (its records' ``packages``: the frameworks,
    NumPy, its own distributions; not fwbench), else its framework version(s), else its
    packages in run.json. With ``--envs isolated`` they differ per backend."""
    out = {}
    for b in order:
        mine = [r for r in run.records if r.backend == b]
        packages = next((r.packages for r in mine if r.packages), {})
        found = sorted({r.framework_version for r in mine if r.framework_version})
        info = run.meta.backends.get(b)
        out[b] = (", ".join(f"{k} {v}" for k, v in packages.items() if v and k not in environment.RUNNER_ONLY)
                  or ", ".join(found)
                  or (", ".join(f"{k} {v}" for k, v in info.requires.items()) if info else ""))
    return out


def analyze(source: str | Path | Run, mixed_hardware: bool = False) -> Analysis:
    """Everything the reports show, computed once from the run folder (or a loaded ``Run``);
    cells of different hardware are ranked apart unless ``mixed_hardware`` (``by_hardware``)."""
    run = source if isinstance(source, Run) else records.load_run(source)
    run, hardware = by_hardware(run, mixed_hardware)
    found = summaries(run)
    all_pairs = pairs(found.values())  # one Holm family: every pair of every task
    task_order = list(run.meta.config.tasks)
    for r in run.records:
        if r.task not in task_order:
            task_order.append(r.task)
    order = backend_order(run.meta, run.records)
    groups: dict[tuple[str, str], list[CellRecord]] = {}
    for r in run.records:
        groups.setdefault((r.task, r.backend), []).append(r)
    tasks = []
    for name in task_order:
        facts = task_facts(run, name)
        rows = [backend_result(name, b, groups[(name, b)], found.get((name, b)), facts.target,
                               facts.batch, run.meta.stopping.get(f"{name}/{b}"))
                for b in order if (name, b) in groups]
        if rows:
            reference = accuracy_reference(rows)
            tasks.append(TaskResult(name, facts.description, facts.target, facts.batch,
                                    _rank(rows), [p for p in all_pairs if p.task == name],
                                    reference))
    failed = [FailedCell(r.task, r.backend, r.seed, r.repeat, r.status, one_line(r.error))
              for r in run.records if not r.ok and r.status != "unsupported"]
    unsupported = list({(r.task, r.backend): FailedCell(r.task, r.backend, r.seed, r.repeat, r.status,
                                                        one_line(r.error))
                        for r in reversed(run.records) if r.status == "unsupported"}.values())[::-1]
    adapters = adapter_sizes(order, run.meta)
    family = max((p.family for p in all_pairs if p.tested), default=0)
    return Analysis(run.path.resolve().name, run, tasks, failed, adapters, picks(tasks, adapters),
                    order, framework_versions(run, order), family,
                    _finite(p.median_ms for p in run.meta.drift_probes), hardware,
                    unsupported=unsupported)


def as_analysis(source: str | Path | Run | Analysis) -> Analysis:
    """Renderers take an ``Analysis`` (computed once by the caller) or a run folder."""
    return source if isinstance(source, Analysis) else analyze(source)
