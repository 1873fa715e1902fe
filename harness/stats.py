"""Statistics over records: medians, bootstrap confidence intervals, significance.

Step times are compared on the pooled steady-state step samples of every seed and repeat of
a cell (each record keeps up to 256 evenly spaced ones); accuracy is compared over seeds.
"A is faster than B" is said only where a two-sided Mann-Whitney U test gives p < ALPHA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.01


def bootstrap_ci(values, stat=np.median, n: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap CI of ``stat``; None with fewer than 2 values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) < 2:
        return None
    rng = np.random.default_rng(seed)
    stats = stat(v[rng.integers(0, len(v), (n, len(v)))], axis=1)
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


@dataclass
class Summary:
    task: str
    backend: str
    cells: int
    ok: int
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None
    step_ms: float | None
    step_ci: tuple[float, float] | None
    throughput: float | None  # samples/s at the median step time
    throughput_ci: tuple[float, float] | None
    samples: np.ndarray  # pooled steady-state step times (ms)


def summarize(records: list[dict], batch_sizes: dict[str, int]) -> list[Summary]:
    out = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["backend"]), []).append(r)
    for (task, backend), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        acc = [r["test_accuracy"] for r in ok if r.get("repeat", 0) == 0 and r.get("test_accuracy") is not None]
        samples = np.array([x for r in ok for x in (r.get("step_samples_ms") or [])], dtype=float)
        batch = batch_sizes.get(task, 1)
        step = float(np.median(samples)) if len(samples) else None
        step_ci = bootstrap_ci(samples) if len(samples) else None
        out.append(Summary(
            task, backend, len(rs), len(ok),
            float(np.median(acc)) if acc else None, bootstrap_ci(acc),
            step, step_ci,
            batch / step * 1e3 if step else None,
            (batch / step_ci[1] * 1e3, batch / step_ci[0] * 1e3) if step_ci else None,
            samples,
        ))
    return out


@dataclass
class Comparison:
    task: str
    faster: str
    slower: str
    ratio: float  # slower median / faster median
    p_value: float
    significant: bool

    def sentence(self) -> str:
        if self.significant:
            return (f"{self.faster} is faster than {self.slower} ({self.ratio:.2f}x, "
                    f"Mann-Whitney p = {self.p_value:.1e})")
        return (f"{self.faster} vs {self.slower}: no significant difference "
                f"({self.ratio:.2f}x, p = {self.p_value:.2f})")


def pairwise(summaries: list[Summary]) -> list[Comparison]:
    """Every pair of backends of a task, by step time."""
    from scipy.stats import mannwhitneyu

    out = []
    by_task: dict[str, list[Summary]] = {}
    for s in summaries:
        if len(s.samples) >= 2:
            by_task.setdefault(s.task, []).append(s)
    for task, group in by_task.items():
        group = sorted(group, key=lambda s: s.step_ms)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                p = float(mannwhitneyu(a.samples, b.samples, alternative="two-sided").pvalue)
                out.append(Comparison(task, a.backend, b.backend, b.step_ms / a.step_ms, p, p < ALPHA))
    return out

