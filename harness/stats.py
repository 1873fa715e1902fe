"""Statistics over records, with ONE WORKER PROCESS as the unit of replication.

Why processes, not steps: the steps of one process are autocorrelated and share that
process's luck (memory placement, allocator state, a slow phase of a shared host), so a
cell's effective sample size is its number of processes (seeds and timing-only repeats), not
its thousands of steps. Mann-Whitney on pooled steps called an A/A test (two identical runs)
"significant" at p = 1e-41..1e-107 (issue 11). Here every process is reduced to one figure
(`process_figure`, the median of its steady-state steps) and every test, interval and
variation statistic is computed over those figures:

- `median_ci`: exact distribution-free (binomial order-statistic) CI of a cell's median.
- `ratio_ci`: ratio of medians b/a with a bootstrap CI that resamples processes.
- `test_difference`: exact two-sided Mann-Whitney (rank-sum permutation) test over processes.
- `holm`: Holm-Bonferroni step-down over every comparison a report or a compare makes;
  `pairwise` applies it, and `ALPHA` is family-wise.
- `cv` / `CV_FLAG`: process-to-process variation; `within_process_spread`: the steps' spread
  inside a process, labelled as such (it says nothing about run-to-run reproducibility).
- `tost_equivalence`: accuracy equivalence over seeds (two one-sided Welch t-tests).
- `machine_drift` / `regression_verdict`: compare two runs without blaming the code for the
  machine's own speed change.
- `ci_width_ok`: adaptive stopping for the runner (add interleaved repeats until it holds).

Everything is a pure function of NumPy arrays (SciPy for distributions); no file I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:
    from fwbench.harness.records import CellRecord

ALPHA = 0.05
"""Family-wise error rate after Holm over all the comparisons of one report (or compare).
0.05 and not 0.01: Holm is already strict over a family (30 pairs for 5 backends x 3 tasks
put the first threshold at 0.0017), and an exact rank test over few processes is discrete;
at 0.01 a 30-pair family would need 8 processes per cell before any verdict is possible."""

MIN_PROCESSES = 3
"""Below this many processes per side: no test, no interval, verdict "too few runs". A pair
with more is still "too few runs" when the exact test cannot reach significance at its sizes
within its family (3 vs 3: the smallest two-sided p is 0.1; see `pairwise`)."""

CV_FLAG = 0.10
"""Flag a cell whose process-to-process coefficient of variation exceeds 10%. The published
2-core reference run (3 seeds per cell) has CVs of 0.3-6%; above 10% something outside the
model (a noisy neighbour, thermal or frequency changes, swapping) dominates the timing."""

EQUIVALENCE_MARGIN = 0.005
"""Accuracies within +-0.5 accuracy points (0.005 as a fraction) count as the same. In the
reference run the backends' median accuracies agree within 0.1 (mlp), 0.2 (lenet) and
0.25 (lstm) points; half a point is wider than that and narrower than any gap that would
change which framework to pick."""

DEFAULT_PROCESSES = {"smoke": 1, "quick": 7, "full": 10}
"""Processes (seeds + timing-only repeats) per cell of each profile (``spec.PROFILE_INFO``
gives them; a test keeps the two equal), from the simulations of tests/test_stats.py (one
true 10% slowdown among the pairs, Holm, ALPHA; "noise" = sd of the process-level log
offset; the reference run's CVs are 0.3-6%):

- smoke, 1: checks that everything runs; every pair is "too few runs".
- quick, 7: the fewest with which a verdict is possible at all after Holm over the 30 pairs
  of 5 backends x 3 tasks (`processes_needed(30)`; 5 vs 5 cannot: smallest p 0.0079 >
  0.05 / 7). A 20% difference is found reliably; a 10% one ~75% of the time at 3% noise
  with 5 a side, more with 7.
- full, 10: a 10% difference ~82% at 5% noise in a 3-pair family, ~65% among 12 pairs
  and ~51% among 30 (15 a side: ~88% among 30); >= 94% at 3% noise in any of them."""

VERDICT_FASTER = "faster"
VERDICT_NONE = "no significant difference"
VERDICT_FEW = "too few runs"


def _clean(values: Iterable[float | None] | None) -> np.ndarray:
    """Finite floats of ``values`` (None and NaN dropped)."""
    if values is None:
        return np.zeros(0)
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return v[np.isfinite(v)]


def _num(x: float) -> str:
    return f"{x:.2f}"


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


# ------------------------------------------------------------------ one process, one figure


def process_figure(step_samples_ms: Iterable[float] | None) -> float | None:
    """One robust figure per process: the median of its steady-state step times (ms).

    Records already leave out the first step (tracing/compilation); the median shrugs off the
    rare spikes (GC, page faults) that would move a mean. None for a process without steps."""
    v = _clean(step_samples_ms)
    return float(np.median(v)) if len(v) else None


@dataclass(frozen=True)
class Spread:
    """Within-process spread of the steps: per-process percentiles relative to that process's
    median, then the median over processes, times the cell's median figure (ms). Describes
    step-to-step jitter inside a process; NOT run-to-run variation (see `cv`)."""

    p10: float
    p25: float
    p75: float
    p90: float
    processes: int
    label: str = "within-process spread"

    def text(self) -> str:
        return f"{self.label} p10-p90 {self.p10:.3g}-{self.p90:.3g} ms"


def within_process_spread(processes: Iterable[Iterable[float] | None]) -> Spread | None:
    """`Spread` of a cell from the step samples of each of its processes."""
    rel, meds = [], []
    for steps in processes:
        v = _clean(steps)
        if len(v) == 0:
            continue
        med = float(np.median(v))
        meds.append(med)
        rel.append(np.percentile(v, [10, 25, 75, 90]) / med)
    if not rel:
        return None
    q = np.median(np.asarray(rel), axis=0) * float(np.median(meds))
    return Spread(float(q[0]), float(q[1]), float(q[2]), float(q[3]), len(rel))


def cv(figures: Iterable[float | None]) -> float | None:
    """Coefficient of variation across processes (sample sd / mean); None below 2 figures.
    Compare with `CV_FLAG`."""
    v = _clean(figures)
    if len(v) < 2 or v.mean() == 0:
        return None
    return float(v.std(ddof=1) / v.mean())


def cv_flagged(figures: Iterable[float | None]) -> bool:
    """True where the process-to-process CV exceeds `CV_FLAG`."""
    c = cv(figures)
    return c is not None and c > CV_FLAG


# ------------------------------------------------------------------ intervals


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a median. ``level`` is the coverage the method guarantees,
    which can differ from the one asked for (order statistics move in steps)."""

    estimate: float
    lo: float
    hi: float
    level: float
    n: int
    method: str

    def as_tuple(self) -> tuple[float, float]:
        return self.lo, self.hi


@lru_cache(maxsize=256)
def _order_stat_rank(n: int, level: float) -> tuple[int, float]:
    """Largest r (1-based) such that [x_(r), x_(n+1-r)] covers the median with probability
    >= level, and that probability; (1, max attainable) when even [min, max] falls short."""
    from scipy.stats import binom

    best = (1, 1 - 2 * 0.5 ** n)
    for r in range(1, n // 2 + 1):
        coverage = 1 - 2 * float(binom.cdf(r - 1, n, 0.5))
        if coverage + 1e-12 < level:
            break
        best = (r, coverage)
    return best


def median_ci(figures: Iterable[float | None], level: float = 0.95) -> Interval | None:
    """CI of the median of per-process figures; None below `MIN_PROCESSES`.

    Exact and distribution-free: for sorted figures x_(1..n), [x_(r), x_(n+1-r)] covers the
    population median with probability 1 - 2 P(B <= r-1), B ~ Binomial(n, 1/2), whatever
    the distribution (continuous) and whatever n; r is the largest that keeps that >= level.
    No bootstrap: at small n the percentile bootstrap of a median collapses onto the order
    statistics (at n = 5 its 2.5/97.5 percentiles ARE the min and max) while claiming a
    coverage it does not have; and at large n the exact interval exists anyway. Where n is
    too small for the level (95% needs n >= 6), the result is [min, max] with its true,
    lower coverage in ``level`` (n = 5: 93.75%, n = 4: 87.5%, n = 3: 75%)."""
    v = np.sort(_clean(figures))
    n = len(v)
    if n < MIN_PROCESSES:
        return None
    r, coverage = _order_stat_rank(n, float(level))
    exact = coverage + 1e-12 >= level
    method = "order statistics (exact)" if exact else "min-max (exact, below the level asked)"
    return Interval(float(np.median(v)), float(v[r - 1]), float(v[n - r]), coverage, n, method)


@dataclass(frozen=True)
class RatioCI:
    """Ratio of medians b / a (> 1: b is slower) with a bootstrap CI over processes."""

    ratio: float
    lo: float
    hi: float
    level: float
    n_a: int
    n_b: int

    def excludes_one(self) -> bool:
        return self.lo > 1 or self.hi < 1

    def text(self) -> str:
        return f"{self.ratio:.2f}x [{self.lo:.2f}, {self.hi:.2f}]"


def ratio_ci(a_figures: Iterable[float | None], b_figures: Iterable[float | None],
             level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> RatioCI | None:
    """Ratio of medians b/a with a percentile bootstrap CI; None below `MIN_PROCESSES` a side.

    Each bootstrap replicate resamples each side's PROCESSES with replacement (never steps),
    independently, with a fixed seed, so the same figures always give the same interval.
    Measured coverage (log-normal process noise, tests/test_stats.py): ~97% at 5 vs 5, ~96%
    at 10 vs 10 (conservative: the bootstrap median of few values jumps between order
    statistics); 3 vs 3 undercovers (~90%)."""
    a, b = _clean(a_figures), _clean(b_figures)
    if len(a) < MIN_PROCESSES or len(b) < MIN_PROCESSES or np.any(a <= 0) or np.any(b <= 0):
        return None
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    lo, hi = np.percentile(mb / ma, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return RatioCI(float(np.median(b) / np.median(a)), float(lo), float(hi), level, len(a), len(b))


def ci_width_ok(figures: Iterable[float | None], rel_width: float = 0.05,
                level: float = 0.95) -> bool:
    """Adaptive stopping: does the exact CI of the median reach ``level`` and lie within
    +-rel_width of the median? False while n is too small for the level (95%: n < 6), so a
    runner adding interleaved repeats until every cell passes (or a cap) needs >= 6."""
    ci = median_ci(figures, level)
    if ci is None or ci.level + 1e-12 < level or ci.estimate <= 0:
        return False
    return ci.lo >= ci.estimate * (1 - rel_width) and ci.hi <= ci.estimate * (1 + rel_width)


# ------------------------------------------------------------------ tests


EXACT_LIMIT = 200_000  # with ties: enumerate every split up to this many (20 processes)
MONTE_CARLO = 20_000


@lru_cache(maxsize=64)
def _splits(n: int, k: int) -> np.ndarray:
    """Every k-subset of range(n) as rows of indices, (C(n, k), k)."""
    return np.fromiter((i for c in combinations(range(n), k) for i in c), dtype=np.int16,
                       count=math.comb(n, k) * k).reshape(-1, k)


@lru_cache(maxsize=256)
def _rank_sum_counts(n: int, k: int) -> np.ndarray:
    """How many k-subsets of the ranks 1..n have each sum 0..n(n+1)/2 (no ties): the exact
    null distribution of the rank sum, by dynamic programming (0/1 knapsack over ranks)."""
    top = n * (n + 1) // 2
    f = np.zeros((k + 1, top + 1))
    f[0, 0] = 1.0
    for v in range(1, n + 1):
        f[1:, v:] = f[1:, v:] + f[:-1, :top + 1 - v]
    return f[k]


def min_attainable_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p `test_difference` can give at these sizes: 2 / C(n_a+n_b, n_a)
    (3 vs 3: 0.1, 4 vs 4: 0.029, 5 vs 5: 0.0079, 6 vs 6: 0.0022, 7 vs 7: 5.8e-4)."""
    if n_a < 1 or n_b < 1:
        return 1.0
    return min(1.0, 2 / math.comb(n_a + n_b, n_a))


def processes_needed(comparisons: int, alpha: float = ALPHA) -> int:
    """Fewest processes per cell (equal sides) that let the first Holm step of a family of
    ``comparisons`` be reached at all: 2 / C(2n, n) <= alpha / comparisons. (1 pair: 4,
    3 pairs: 5, 10-30 pairs: 6-7.) A floor for any verdict, not a power target."""
    n = MIN_PROCESSES
    while min_attainable_p(n, n) > alpha / max(comparisons, 1):
        n += 1
    return n


def test_difference(a_figures: Iterable[float | None], b_figures: Iterable[float | None],
                    seed: int = 0) -> float | None:
    """Two-sided exact Mann-Whitney (Wilcoxon rank-sum) test on per-process figures: the
    p-value, or None below `MIN_PROCESSES` a side.

    Why this test: with 3-10 processes a side, only a permutation test is exact whatever the
    distribution; on ranks it also shrugs off one process that hit a slow phase of the host
    (a permutation test on the log ratio of medians or means would be pulled by it) and is
    about as powerful as the t-test on log-normal-ish figures (efficiency 0.95). The null
    distribution is that of the rank sum over every split of the pooled processes: counted
    exactly by dynamic programming without ties (any n); with ties (quantised timings), by
    enumerating the splits of the mid-ranks up to `EXACT_LIMIT` splits (20 processes in
    all), else a seeded Monte-Carlo of `MONTE_CARLO` permutations with p = (hits + 1) /
    (draws + 1), which keeps it valid. Exact at any sizes (refused below `MIN_PROCESSES`),
    but discrete: see `min_attainable_p` (3 vs 3 can never give p < 0.1)."""
    from scipy.stats import rankdata

    a, b = _clean(a_figures), _clean(b_figures)
    if len(a) < MIN_PROCESSES or len(b) < MIN_PROCESSES:
        return None
    n_a, n = len(a), len(a) + len(b)
    ranks = rankdata(np.concatenate([a, b]))
    expected = n_a * (n + 1) / 2
    observed = abs(ranks[:n_a].sum() - expected)
    tol = 1e-9 * n * n
    if len(np.unique(ranks)) == n:  # no ties: exact distribution of the rank sum
        counts = _rank_sum_counts(n, n_a)
        sums = np.arange(len(counts))
        return float(counts[np.abs(sums - expected) >= observed - tol].sum() / counts.sum())
    if math.comb(n, n_a) <= EXACT_LIMIT:  # ties: enumerate the splits of the mid-ranks
        sums = ranks[_splits(n, n_a)].sum(axis=1)
        return float(np.mean(np.abs(sums - expected) >= observed - tol))
    rng = np.random.default_rng(seed)
    perm = rng.permuted(np.tile(ranks, (MONTE_CARLO, 1)), axis=1)
    hits = int(np.sum(np.abs(perm[:, :n_a].sum(axis=1) - expected) >= observed - tol))
    return (hits + 1) / (MONTE_CARLO + 1)


def holm(p_values: Iterable[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order (None stays None and
    is not counted): sort ascending, p_(i) * (m - i + 1), running maximum, capped at 1.
    Reject where adjusted <= alpha: family-wise error <= alpha under any dependence."""
    p = list(p_values)
    idx = [i for i, x in enumerate(p) if x is not None]
    out: list[float | None] = [None] * len(p)
    if not idx:
        return out
    vals = np.asarray([p[i] for i in idx], dtype=float)
    m = len(vals)
    order = np.argsort(vals, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * vals[order]))
    for j, k in enumerate(order):
        out[idx[k]] = float(adj[j])
    return out


# ------------------------------------------------------------------ comparisons in one run


@dataclass
class Comparison:
    """Step time of two backends on one task, over processes."""

    task: str
    faster: str  # the lower median figure (listed first also when not significant)
    slower: str
    ratio: float | None  # slower median / faster median (>= 1)
    ratio_ci: tuple[float, float] | None
    p_value: float | None  # exact Mann-Whitney over processes; None: not tested
    p_adjusted: float | None  # Holm over every comparison passed to `pairwise`
    n_a: int  # processes of `faster`
    n_b: int  # processes of `slower`
    verdict: str  # VERDICT_FASTER, VERDICT_NONE or VERDICT_FEW
    family: int = 1  # comparisons in the Holm family
    needed: int | None = None  # processes per side a verdict would need ("too few runs")

    @property
    def significant(self) -> bool:
        return self.verdict == VERDICT_FASTER

    def sentence(self) -> str:
        n = f"{self.n_a} vs {self.n_b} processes"
        ci = f" [{_num(self.ratio_ci[0])}, {_num(self.ratio_ci[1])}]" if self.ratio_ci else ""
        if self.verdict == VERDICT_FASTER:
            return (f"{self.faster} is {_num(self.ratio)}x faster than {self.slower}{ci} "
                    f"(p = {_p_text(self.p_adjusted)}, Holm-adjusted, {n})")
        if self.verdict == VERDICT_NONE:
            return (f"{self.faster} vs {self.slower}: no significant difference "
                    f"({_num(self.ratio)}x{ci}, p = {_p_text(self.p_adjusted)}, Holm-adjusted, {n})")
        head = f"{self.faster} vs {self.slower}: "
        if self.p_value is None or self.ratio_ci is None:
            return head + f"{n}: too few for a verdict"
        among = f" among {self.family} comparisons" if self.family > 1 else ""
        return (head + f"{_num(self.ratio)}x{ci}, {n}: too few for a verdict{among} "
                f"(needs {self.needed} per side)")


def pairwise(groups: Mapping[tuple[str, str], Iterable[float | None]] | Iterable,
             alpha: float = ALPHA) -> list[Comparison]:
    """Every pair of backends of each task, by per-process step-time figures, with Holm over
    ALL the pairs of ALL the tasks passed in (pass one task to make it its own family).

    ``groups``: {(task, backend): figures}, or `Summary` objects (their ``figures``).
    Pairs with fewer than `MIN_PROCESSES` a side are not tested and not counted in the
    family. A tested pair is also "too few runs" when it could not be significant even with
    every p of the family at its smallest attainable value (exact tests are discrete: 5 vs 5
    among 30 pairs can never pass Holm's first step 0.05 / 30); whether a pair is decidable
    depends only on the numbers of processes, not on the data, so this keeps Holm valid."""
    if not isinstance(groups, Mapping):
        groups = {(s.task, s.backend): s.figures for s in groups}
    by_task: dict[str, dict[str, np.ndarray]] = {}
    for (task, backend), figs in groups.items():
        v = _clean(figs)
        if len(v):
            by_task.setdefault(task, {})[backend] = v
    out: list[Comparison] = []
    for task, cells in by_task.items():
        names = sorted(cells, key=lambda b: (float(np.median(cells[b])), b))
        for i, fast in enumerate(names):
            for slow in names[i + 1:]:
                a, b = cells[fast], cells[slow]
                ci = ratio_ci(a, b)
                out.append(Comparison(
                    task, fast, slow, float(np.median(b) / np.median(a)),
                    ci and (ci.lo, ci.hi), test_difference(a, b), None, len(a), len(b), VERDICT_FEW))
    tested = [c for c in out if c.p_value is not None]
    best_case = holm([min_attainable_p(c.n_a, c.n_b) for c in tested])
    family = [c for c, q in zip(tested, best_case) if q is not None and q <= alpha]
    for c in tested:
        c.family = len(tested)
        c.needed = processes_needed(len(tested), alpha)
    for c, q in zip(family, holm([c.p_value for c in family])):
        c.family, c.p_adjusted = len(family), q
        c.verdict = VERDICT_FASTER if q is not None and q <= alpha else VERDICT_NONE
    return out


# ------------------------------------------------------------------ accuracy


@dataclass(frozen=True)
class Equivalence:
    """TOST of accuracies b - a over seeds, margin +-``margin`` (fractions: 0.005 = 0.5
    points). ``ci`` is the (1 - 2 alpha) Welch interval of the difference of means."""

    verdict: str  # "equivalent", "not shown", "too few seeds"
    diff: float | None
    ci: tuple[float, float] | None
    p_value: float | None  # max of the two one-sided p-values
    n_a: int
    n_b: int
    margin: float
    alpha: float = 0.05

    def sentence(self) -> str:
        m = f"+-{self.margin * 100:.1f} points"
        n = f"{self.n_a} vs {self.n_b} seeds"
        if self.verdict == "too few seeds":
            return f"too few seeds to show equivalence ({n}, needs {MIN_PROCESSES} a side)"
        detail = (f"difference {self.diff * 100:+.2f} points, "
                  f"{100 * (1 - 2 * self.alpha):.0f}% CI [{self.ci[0] * 100:+.2f}, {self.ci[1] * 100:+.2f}], "
                  f"TOST p = {_p_text(self.p_value)}, {n}")
        if self.verdict == "equivalent":
            return f"equivalent within {m} ({detail})"
        return f"equivalence within {m} not shown ({detail})"


def tost_equivalence(acc_a: Iterable[float | None], acc_b: Iterable[float | None],
                     margin: float = EQUIVALENCE_MARGIN, alpha: float = 0.05) -> Equivalence:
    """Are two backends' accuracies the same within +-margin? Two one-sided Welch t-tests over
    seeds (H0: b - a <= -margin, H0: b - a >= +margin); "equivalent" when both reject at
    ``alpha``, i.e. the (1 - 2 alpha) CI of the difference lies inside +-margin. Fewer than
    `MIN_PROCESSES` seeds a side: "too few seeds". A failed TOST is "not shown", never
    "different". Zero variance on both sides (deterministic backends): decided by the
    difference alone."""
    from scipy.stats import t as student

    a, b = _clean(acc_a), _clean(acc_b)
    if len(a) < MIN_PROCESSES or len(b) < MIN_PROCESSES:
        return Equivalence("too few seeds", None, None, None, len(a), len(b), margin, alpha)
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        p = 0.0 if abs(diff) < margin else 1.0
        ci = (diff, diff)
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        p_low = float(student.sf((diff + margin) / se, df))
        p_high = float(student.cdf((diff - margin) / se, df))
        p = max(p_low, p_high)
        h = float(student.ppf(1 - alpha, df)) * se
        ci = (diff - h, diff + h)
    verdict = "equivalent" if p < alpha else "not shown"
    return Equivalence(verdict, diff, ci, p, len(a), len(b), margin, alpha)


# ------------------------------------------------------------------ two runs


def machine_drift(ref_a: Iterable[float | None], ref_b: Iterable[float | None],
                  level: float = 0.95) -> RatioCI | None:
    """The machine's own speed change between run A and run B: the ratio of medians (B / A,
    > 1 = slower) of a reference workload's per-process figures (the same fixed workload,
    e.g. a NumPy GEMM or one (task, backend), interleaved through both runs), with the
    bootstrap CI of `ratio_ci`."""
    return ratio_ci(ref_a, ref_b, level=level)


REGRESSION = "regression"
IMPROVEMENT = "improvement"
NO_CHANGE = "no significant change"


def regression_verdict(change: RatioCI | None, drift: RatioCI | None,
                       threshold_pct: float) -> str:
    """Is B slower than A beyond ``threshold_pct``, and not because the machine changed?

    ``change``: `ratio_ci` of a cell's figures, B / A. ``drift``: `machine_drift`, or None
    where no reference workload ran. The change is divided by the drift with interval
    arithmetic, [c.lo / d.hi, c.hi / d.lo]: that interval covers the drift-corrected change
    whenever both intervals cover theirs (assuming the machine slows every workload by the
    same factor; use 97.5% intervals for a joint 95%). Then:

    - "regression": the corrected lower bound exceeds 1 + threshold;
    - "improvement": the corrected upper bound is below 1 / (1 + threshold);
    - "inconclusive: this machine's speed moved by X% between the runs": the change alone
      passes one of those bounds but the corrected one does not (the drift could explain it);
    - "no significant change" otherwise (including changes smaller than the threshold).

    Across many cells, build the intervals at a Bonferroni level (1 - alpha / cells) so the
    gate's family-wise false-alarm rate stays <= alpha."""
    if change is None:
        return NO_CHANGE
    up, down = 1 + threshold_pct / 100, 1 / (1 + threshold_pct / 100)
    lo, hi = change.lo, change.hi
    if drift is not None:
        lo, hi = change.lo / drift.hi, change.hi / drift.lo
    if lo > up:
        return REGRESSION
    if hi < down:
        return IMPROVEMENT
    if drift is not None and (change.lo > up or change.hi < down):
        moved = 100 * (drift.ratio - 1)
        return f"inconclusive: this machine's speed moved by {moved:+.1f}% between the runs"
    return NO_CHANGE


# ------------------------------------------------------------------ records -> cells


@dataclass
class Summary:
    """One (task, backend) cell of a run: medians over its processes."""

    task: str
    backend: str
    cells: int
    ok: int
    accuracy: float | None  # median over seeds (repeat 0)
    accuracy_ci: tuple[float, float] | None  # exact order-statistic CI (see median_ci)
    step_ms: float | None  # median of the per-process figures
    step_ci: tuple[float, float] | None  # exact CI of that median, coverage step_ci_level
    throughput: float | None  # samples/s at the median step time
    throughput_ci: tuple[float, float] | None
    samples: np.ndarray  # pooled steps: for display (p90, plots) only, never for tests
    figures: list[float] = field(default_factory=list)  # one per process
    step_ci_level: float | None = None
    accuracies: list[float] = field(default_factory=list)  # one per seed
    accuracy_ci_level: float | None = None
    cv: float | None = None  # process-to-process; flagged above CV_FLAG
    spread: Spread | None = None  # within-process

    @property
    def processes(self) -> int:
        return len(self.figures)


def summarize(records: list[CellRecord], batch_sizes: dict[str, int]) -> list[Summary]:
    """Cells of ``records``: every ok record is one process (a seed or a timing-only repeat);
    accuracy counts seeds only (repeat 0)."""
    out = []
    groups: dict[tuple[str, str], list[CellRecord]] = {}
    for r in records:
        groups.setdefault((r.task, r.backend), []).append(r)
    for (task, backend), rs in groups.items():
        ok = [r for r in rs if r.ok]
        acc = [float(r.test_accuracy) for r in ok if r.repeat == 0 and r.test_accuracy is not None]
        steps = [r.step_samples_ms or [] for r in ok]
        figures = [f for f in map(process_figure, steps) if f is not None]
        batch = batch_sizes.get(task, 1)
        step_ci = median_ci(figures)
        acc_ci = median_ci(acc)
        step = float(np.median(figures)) if figures else None
        out.append(Summary(
            task, backend, len(rs), len(ok),
            float(np.median(acc)) if acc else None, acc_ci and acc_ci.as_tuple(),
            step, step_ci and step_ci.as_tuple(),
            batch / step * 1e3 if step else None,
            (batch / step_ci.hi * 1e3, batch / step_ci.lo * 1e3) if step_ci else None,
            _clean(x for s in steps for x in s),
            figures, step_ci and step_ci.level, acc, acc_ci and acc_ci.level, cv(figures),
            within_process_spread(steps),
        ))
    return out
