"""``fwbench compare RUN_A RUN_B``: what changed per (task, backend), and is it real?

Both runs are read through ``records.load_run``; their step times are tested against each
other by the same statistics as the reports (``analysis.run_pairs``, every common
(task, backend) in one family). A change is a regression when B is significantly slower
than A. Task facts (batch size) come from each run's own snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import analysis, records
from .errors import FwbenchError
from .records import Run


@dataclass
class Change:
    task: str
    backend: str
    step_a: float | None  # median steady-state step, ms
    step_b: float | None
    step_pct: float | None  # + = B slower
    p_value: float | None  # None: too few runs to test
    significant: bool
    throughput_pct: float | None  # analysis.throughput, each run with its own batch size
    memory_pct: float | None
    accuracy_delta: float | None  # B - A, fraction

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def regression_pct(self) -> float:
        return self.step_pct if self.significant and self.step_pct and self.step_pct > 0 else 0.0


def _run(source: str | Path | Run) -> Run:
    return source if isinstance(source, Run) else records.load_run(source)


def _median(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.median(v)) if v else None


def _pct(a: float | None, b: float | None) -> float | None:
    return 100 * (b - a) / a if a and b is not None else None


def _batch(run: Run, task: str) -> int | None:
    return analysis.task_facts(run, task).batch


def environment_differences(a: str | Path | Run, b: str | Path | Run) -> list[str]:
    """What differs between the machines and software of two runs (timings may not compare)."""
    ma, mb = _run(a).meta, _run(b).meta
    ea, eb = ma.environment, mb.environment
    diffs = [f"{k}: {ea.get(k)} vs {eb.get(k)}" for k in ("cpu_model", "logical_cores", "python", "os")
             if ea.get(k) != eb.get(k)]
    pa, pb = ea.get("packages") or {}, eb.get("packages") or {}
    diffs += [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    ta, tb = ma.config.get("threads"), mb.config.get("threads")
    if ta != tb:
        diffs.append(f"threads: {ta} vs {tb}")
    return diffs


def definition_differences(a: str | Path | Run, b: str | Path | Run) -> list[str]:
    """Tasks and backends both runs have but defined differently (their own snapshots)."""
    ma, mb = _run(a).meta, _run(b).meta
    out = []
    for name in sorted(set(ma.tasks) & set(mb.tasks)):
        ta, tb = ma.tasks[name], mb.tasks[name]
        out += [f"task {name} {k}: {ta.get(k)!r} vs {tb.get(k)!r}" for k in sorted(set(ta) | set(tb))
                if k != "description" and ta.get(k) != tb.get(k)]
    for name in sorted(set(ma.backends) & set(mb.backends)):
        ba, bb = ma.backends[name], mb.backends[name]
        if ba.options != bb.options:
            out.append(f"backend {name} options: {ba.options} vs {bb.options}")
        if (ba.adapter, ba.adapter_sha256) != (bb.adapter, bb.adapter_sha256):
            out.append(f"backend {name} adapter code differs ({ba.adapter} vs {bb.adapter})")
    return out


def compare(a: str | Path | Run, b: str | Path | Run) -> list[Change]:
    ra, rb = _run(a), _run(b)
    sa, sb = analysis.summaries(ra), analysis.summaries(rb)
    matched = {k: (sa[k], sb[k]) for k in sa if k in sb}
    if not matched:
        raise FwbenchError(f"{ra.path} and {rb.path} have no (task, backend) in common")
    tested = analysis.run_pairs(matched)
    out = []
    for key, (x, y) in matched.items():
        pair = tested.get(key)
        ok = lambda run: [r for r in run.records if r.ok and (r.task, r.backend) == key]  # noqa: E731
        mem_a = _median(r.peak_rss_mib for r in ok(ra))
        mem_b = _median(r.peak_rss_mib for r in ok(rb))
        significant = bool(pair and pair.significant)
        out.append(Change(
            key[0], key[1], x.step_ms, y.step_ms, _pct(x.step_ms, y.step_ms),
            pair.p_value if pair else None, significant,
            _pct(analysis.throughput(_batch(ra, key[0]), x.step_ms),
                 analysis.throughput(_batch(rb, key[0]), y.step_ms)),
            _pct(mem_a, mem_b),
            y.accuracy - x.accuracy if x.accuracy is not None and y.accuracy is not None else None,
        ))
    return out
