"""``fwbench compare RUN_A RUN_B``: what changed per (task, backend), and is it real?

Both runs are read through ``records.load_run``; each common (task, backend) is compared over
its processes (``analysis.run_changes``): the ratio of medians B/A with a bootstrap interval
at a Bonferroni level, the exact test with Holm over the common cells, and the machine's own
speed change between the runs from the drift probes of both (``run.json``). A cell is a
regression only when its slowdown, corrected for that drift, is significantly larger than
the threshold; one the drift could explain is inconclusive. Task facts (batch size) come
from each run's own snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fwbench.harness.report import analysis
from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from fwbench.harness.records import Run


@dataclass
class Change:
    task: str
    backend: str
    step_a: float | None  # median over processes of each process's median step, ms
    step_b: float | None
    step_pct: float | None  # + = B slower
    ratio: float | None  # step_b / step_a
    ratio_ci: tuple[float, float] | None  # at the compare's Bonferroni level
    p_value: float | None  # Holm-adjusted over the common cells; None: too few processes
    n_a: int  # processes
    n_b: int
    verdict: str  # analysis.REGRESSION, IMPROVEMENT, NO_CHANGE, INCONCLUSIVE or TOO_FEW
    detail: str  # the full verdict ("inconclusive: this machine's speed moved by ...")
    throughput_pct: float | None  # analysis.throughput, each run with its own batch size
    memory_a: float | None  # median peak RSS, MiB
    memory_b: float | None
    memory_pct: float | None
    accuracy_a: float | None  # median over seeds, fraction
    accuracy_b: float | None
    accuracy_delta: float | None  # B - A, fraction

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value <= analysis.ALPHA

    @property
    def regression(self) -> bool:
        return self.verdict == analysis.REGRESSION


@dataclass
class HardwareMismatch:
    """A common (task, backend) whose processes ran on different hardware in A and B (or on
    more than one fingerprint within a run): not compared, unless --mixed-hardware."""

    task: str
    backend: str
    a: list[str]  # fingerprint ids of A's processes
    b: list[str]

    def text(self) -> str:
        ids = lambda v: ", ".join(f"hw {x[:8]}" for x in v)  # noqa: E731
        return f"{self.task}/{self.backend} (A on {ids(self.a)}, B on {ids(self.b)})"


@dataclass
class Comparison:
    """Every common (task, backend), and the machine's drift between the runs."""

    changes: list[Change]
    stats: analysis.Changes  # the drift, the threshold and the intervals' levels
    hardware: list[HardwareMismatch] = field(default_factory=list)  # measured on different hardware
    mixed_hardware: bool = False  # those were compared anyway (then they are in ``changes``)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    @property
    def inconclusive(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == analysis.INCONCLUSIVE]


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
    diffs = [f"{k}: {getattr(ea, k)} vs {getattr(eb, k)}"
             for k in ("cpu_model", "logical_cores", "python", "os") if getattr(ea, k) != getattr(eb, k)]
    pa, pb = ea.packages, eb.packages
    diffs += [f"{k}: {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    ta, tb = ma.config.threads, mb.config.threads
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


def drift_probes(run: Run) -> list[float]:
    """The run's drift probes (one process each, its median ms; run.json)."""
    return [p.median_ms for p in run.meta.drift_probes if p.median_ms is not None]


def compare(a: str | Path | Run, b: str | Path | Run, threshold_pct: float = 0.0,
            mixed_hardware: bool = False) -> Comparison:
    """Run B against run A; a cell is a regression when its drift-corrected slowdown is
    significantly beyond ``threshold_pct`` (``fwbench compare --fail-on-regression``). A cell
    measured on different hardware fingerprints is not compared unless ``mixed_hardware``."""
    ra, rb = _run(a), _run(b)
    sa, sb = analysis.summaries(ra), analysis.summaries(rb)
    matched = {k: (sa[k], sb[k]) for k in sa if k in sb}
    if not matched:
        raise FwbenchError(f"{ra.path} and {rb.path} have no (task, backend) in common")
    ha, hb = analysis.hardware_ids(ra), analysis.hardware_ids(rb)
    mismatched = [HardwareMismatch(t, be, ha.get((t, be), []), hb.get((t, be), []))
                  for t, be in matched if analysis.different_hardware(ha.get((t, be)), hb.get((t, be)))]
    if not mixed_hardware:
        for m in mismatched:
            del matched[(m.task, m.backend)]
        if not matched:
            raise FwbenchError(f"{ra.path} and {rb.path} have no (task, backend) measured on the "
                               f"same hardware: {'; '.join(m.text() for m in mismatched)} "
                               "(--mixed-hardware compares them anyway, labelled)")
    found = analysis.run_changes(matched, drift_probes(ra), drift_probes(rb), threshold_pct)
    out = []
    for key, (x, y) in matched.items():
        c = found.cells[key]
        ok = lambda run: [r for r in run.records if r.ok and (r.task, r.backend) == key]  # noqa: E731
        mem_a = _median(r.peak_rss_mib for r in ok(ra))
        mem_b = _median(r.peak_rss_mib for r in ok(rb))
        out.append(Change(
            key[0], key[1], x.step_ms, y.step_ms, _pct(x.step_ms, y.step_ms), c.ratio,
            (c.ci.lo, c.ci.hi) if c.ci else None, c.p_value, c.n_a, c.n_b, c.verdict, c.detail,
            _pct(analysis.throughput(_batch(ra, key[0]), x.step_ms),
                 analysis.throughput(_batch(rb, key[0]), y.step_ms)),
            mem_a, mem_b, _pct(mem_a, mem_b), x.accuracy, y.accuracy,
            y.accuracy - x.accuracy if x.accuracy is not None and y.accuracy is not None else None,
        ))
    return Comparison(out, found, mismatched, mixed_hardware)
