"""``fwbench compare RUN_A RUN_B``: what changed per (task, backend), and is it real?

Step times are compared on the pooled step samples (two-sided Mann-Whitney U, p < 0.01);
a change is a regression when B is significantly slower than A. Reads results only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import spec, stats
from .report import run_meta
from .runner import RESULTS, read_records
from .errors import FwbenchError


@dataclass
class Change:
    task: str
    backend: str
    step_a: float | None
    step_b: float | None
    step_pct: float | None  # + = B slower
    p_value: float | None
    significant: bool
    throughput_pct: float | None
    memory_pct: float | None
    accuracy_delta: float | None

    @property
    def regression_pct(self) -> float:
        return self.step_pct if self.significant and self.step_pct and self.step_pct > 0 else 0.0


def _records(run_dir: Path) -> list[dict]:
    if not (run_dir / RESULTS).is_file():
        raise FwbenchError(f"{run_dir} has no {RESULTS}: not an fwbench run folder")
    return read_records(run_dir / RESULTS)


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _pct(a: float | None, b: float | None) -> float | None:
    return 100 * (b - a) / a if a and b is not None else None


def environment_differences(a: Path, b: Path) -> list[str]:
    ea, eb = run_meta(a).get("environment", {}), run_meta(b).get("environment", {})
    diffs = [f"{k}: {ea.get(k)} vs {eb.get(k)}" for k in ("cpu_model", "logical_cores", "python", "os")
             if ea.get(k) != eb.get(k)]
    pa, pb = ea.get("packages", {}), eb.get("packages", {})
    diffs += [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    ta = run_meta(a).get("config", {}).get("threads")
    tb = run_meta(b).get("config", {}).get("threads")
    if ta != tb:
        diffs.append(f"threads: {ta} vs {tb}")
    return diffs


def compare(a: Path, b: Path) -> list[Change]:
    from scipy.stats import mannwhitneyu

    batch = {t: spec.TASKS[t].batch_size for t in spec.TASKS}
    ra, rb = _records(a), _records(b)
    sa = {(s.task, s.backend): s for s in stats.summarize(ra, batch)}
    sb = {(s.task, s.backend): s for s in stats.summarize(rb, batch)}
    out = []
    for key in [k for k in sa if k in sb]:
        x, y = sa[key], sb[key]
        p = None
        if len(x.samples) >= 2 and len(y.samples) >= 2:
            p = float(mannwhitneyu(x.samples, y.samples, alternative="two-sided").pvalue)
        ok = lambda rs: [r for r in rs if r["status"] == "ok" and (r["task"], r["backend"]) == key]  # noqa: E731
        mem_a = _median(r.get("peak_rss_mib") for r in ok(ra))
        mem_b = _median(r.get("peak_rss_mib") for r in ok(rb))
        out.append(Change(
            key[0], key[1], x.step_ms, y.step_ms, _pct(x.step_ms, y.step_ms), p,
            p is not None and p < stats.ALPHA, _pct(x.throughput, y.throughput), _pct(mem_a, mem_b),
            y.accuracy - x.accuracy if x.accuracy is not None and y.accuracy is not None else None,
        ))
    if not out:
        raise FwbenchError(f"{a} and {b} have no (task, backend) in common")
    return out
