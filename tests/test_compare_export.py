"""compare's verdicts and exit codes, export's files, on the fixture runs (real runs written
by ``scripts/make_fixtures.py``): in run-b the slow toy backend sleeps 9 ms per lenet step
instead of run-a's 3 ms, a real regression of about +190%, with 7 processes per cell in both;
the other three cells are made the same way in both runs."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fwbench.harness.report import analysis, compare, tables, verdict
from fwbench.harness import records, stats

from run_copies import derived_run

FIX = Path(__file__).parent / "fixtures"
SINGLE, RUN_A, RUN_B = FIX / "run-single", FIX / "run-a", FIX / "run-b"
FAST, SLOW = "numpy-learner", "numpy-learner-slow"
CELLS = {(t, b) for t in ("mlp", "lenet") for b in (FAST, SLOW)}


def fwbench(*args, columns=200):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": str(columns)})


def row(stdout: str, task: str, backend: str) -> str:
    """The compare table's line of a cell (the first table: step times)."""
    return next(x for x in stdout.splitlines() if re.match(rf"\s*{task}\s+{re.escape(backend)}\s", x))


def verdict_of(stdout: str, task: str, backend: str) -> str:
    return re.search(r"(regression|improvement|no change|inconclusive|too few runs)\s*$",
                     row(stdout, task, backend)).group(1)


def slowed_machine(tmp_path: Path, src: Path, factor: float, probes: bool = True) -> Path:
    """``src`` as if the whole machine had been ``factor`` slower: every step and every drift
    probe scaled (``probes=False``: the probes dropped, so no drift can be estimated)."""
    def edit(r):
        r.step_samples_ms = [x * factor for x in r.step_samples_ms]
        r.step_time_ms = dataclasses.replace(
            r.step_time_ms, **{k: v * factor for k, v in dataclasses.asdict(r.step_time_ms).items()
                               if v is not None})

    def meta(m):
        m.drift_probes = [dataclasses.replace(p, median_ms=p.median_ms * factor)
                          for p in m.drift_probes] if probes else []
    return derived_run(tmp_path, src, f"slowed-{factor}-{probes}", edit, meta)


def test_compare_finds_the_real_regression():
    result = compare.compare(RUN_A, RUN_B, 5)
    changes = {(c.task, c.backend): c for c in result.changes}
    assert set(changes) == CELLS
    slow = changes[("lenet", SLOW)]
    assert (slow.n_a, slow.n_b) == (7, 7)
    assert slow.verdict == analysis.REGRESSION and slow.regression and 150 < slow.step_pct < 250
    assert slow.ratio_ci[0] > 1.05 * result.stats.drift.hi  # beyond 5% even after the drift
    assert result.regressions == [slow]
    # the three cells made the same way in both runs: never a regression
    assert all(c.verdict != analysis.REGRESSION for c in result.changes if c is not slow)
    # one definition of throughput: same batch in both runs, so it moves with the step time
    assert slow.throughput_pct == pytest.approx(100 * (1 / (1 + slow.step_pct / 100) - 1))
    assert abs(changes[("lenet", FAST)].step_pct) < 20  # nothing changed there


def test_compare_statistics_are_over_processes_with_holm_and_bonferroni():
    result = compare.compare(RUN_A, RUN_B, 5)
    ra, rb = records.load_run(RUN_A), records.load_run(RUN_B)

    def figures(run, key):
        return [stats.process_figure(r.step_samples_ms) for r in run.records
                if (r.task, r.backend) == key]

    raw = [stats.test_difference(figures(ra, (c.task, c.backend)), figures(rb, (c.task, c.backend)))
           for c in result.changes]
    assert [c.p_value for c in result.changes] == pytest.approx(stats.holm(raw))
    # one family of 4 cells + the drift: each interval at 1 - 0.05 / 8, the drift's at 97.5%
    assert result.stats.cell_level == pytest.approx(1 - 0.05 / 8)
    assert result.stats.drift_level == pytest.approx(0.975) == result.stats.drift.level
    for c in result.changes:
        ci = stats.ratio_ci(figures(ra, (c.task, c.backend)), figures(rb, (c.task, c.backend)),
                            level=1 - 0.05 / 8)
        assert c.ratio_ci == pytest.approx((ci.lo, ci.hi))
    probes = [[p.median_ms for p in r.meta.drift_probes] for r in (ra, rb)]
    assert len(probes[0]) == len(probes[1]) == 5  # one per round
    d = stats.machine_drift(*probes, level=0.975)
    assert (result.stats.drift.ratio, result.stats.drift.lo) == pytest.approx((d.ratio, d.lo))


@pytest.mark.slow
def test_compare_exit_codes():
    plain = fwbench("compare", RUN_A, RUN_B)
    assert plain.returncode == 0, plain.stderr  # no gate: verdicts only
    assert verdict_of(plain.stdout, "lenet", SLOW) == "regression"
    strict = fwbench("compare", RUN_A, RUN_B, "--fail-on-regression", "5")
    assert strict.returncode == 1 and f"regression: lenet/{SLOW} step time +" in strict.stderr
    assert verdict_of(strict.stdout, "lenet", SLOW) == "regression"
    assert all(verdict_of(strict.stdout, *k) != "regression" for k in CELLS - {("lenet", SLOW)})
    lenient = fwbench("compare", RUN_A, RUN_B, "--fail-on-regression", "500")
    assert lenient.returncode == 0, lenient.stderr
    assert verdict_of(lenient.stdout, "lenet", SLOW) == "no change"
    missing = fwbench("compare", RUN_A, FIX / "nope")
    assert missing.returncode == 2 and "has no results.jsonl" in missing.stderr


@pytest.mark.slow
def test_a_a_compare_passes_the_gate():
    """A run against itself: no significant difference anywhere, exit 0 at 5%."""
    same = fwbench("compare", RUN_A, RUN_A, "--fail-on-regression", "5")
    assert same.returncode == 0, same.stderr
    for key in CELLS:
        line = row(same.stdout, *key)
        assert verdict_of(same.stdout, *key) == "no change" and re.search(r"\s1\.00x \[", line), line
        assert re.search(r"\s1\.00\s+no change\s*$", line), line  # Holm-adjusted p = 1
    assert ("verdicts over 4 cells, after the machine's drift (threshold 5%): 4 no significant "
            "change; the raw process test (Holm, not corrected for drift) separates none of the 4 "
            "tested cells") in " ".join(same.stdout.split())
    assert "regression" not in same.stderr and "inconclusive" not in same.stderr
    result = compare.compare(RUN_A, RUN_A, 5)
    assert all(c.verdict == analysis.NO_CHANGE and not c.significant for c in result.changes)
    assert result.stats.drift.lo < 1 < result.stats.drift.hi


@pytest.mark.slow
def test_a_slower_machine_is_inconclusive_not_a_regression(tmp_path):
    """Every step and every drift probe of B 1.3x slower: the drift explains the change, and
    nothing says the runs differ but the raw test, named as such (issue 23)."""
    slowed = slowed_machine(tmp_path, RUN_A, 1.3)
    result = compare.compare(RUN_A, slowed, 5)
    summary = verdict.compare_summary(result)
    assert "differ significantly" not in summary and "may explain" in summary, summary
    assert result.regressions == [] and result.stats.drift.ratio == pytest.approx(1.3)
    lenet = [c for c in result.changes if c.task == "lenet"]  # quiet cells: tight intervals
    assert all(c.verdict == analysis.INCONCLUSIVE and c.ratio_ci[0] > 1.05 for c in lenet)
    assert all(c.detail == "inconclusive: this machine's speed moved by +30.0% between the runs"
               for c in lenet)
    r = fwbench("compare", RUN_A, slowed, "--fail-on-regression", "5")
    assert r.returncode == 0, r.stderr
    assert verdict_of(r.stdout, "lenet", SLOW) == "inconclusive"
    assert (f"inconclusive: this machine's speed moved by +30.0% between the runs: lenet/{SLOW} "
            "step time +30.0%") in r.stderr
    assert "machine drift (drift probes, B/A): 1.300x [" in r.stdout
    # the same slowdown without drift probes: nothing to blame but the code
    bare = slowed_machine(tmp_path, RUN_A, 1.3, probes=False)
    no_probes = derived_run(tmp_path, RUN_A, "no-probes", edit_meta=lambda m: setattr(m, "drift_probes", []))
    r = fwbench("compare", no_probes, bare, "--fail-on-regression", "5")
    assert r.returncode == 1 and f"regression: lenet/{SLOW}" in r.stderr
    assert "machine drift: not corrected, too few drift probes (0 in A, 0 in B; needs 3 each)" in r.stdout


def test_too_few_processes_never_fail(tmp_path):
    two = lambda r: False if r.repeat or r.seed > 1 else None  # noqa: E731 - 2 seeds, no repeats
    a, b = derived_run(tmp_path, RUN_A, "a2", two), derived_run(tmp_path, RUN_B, "b2", two)
    result = compare.compare(a, b, 5)
    assert all(c.verdict == analysis.TOO_FEW and c.p_value is None and c.ratio_ci is None
               for c in result.changes)
    r = fwbench("compare", a, b, "--fail-on-regression", "5")
    assert r.returncode == 0, r.stderr
    assert verdict_of(r.stdout, "lenet", SLOW) == "too few runs" and "regression" not in r.stderr


@pytest.mark.slow
def test_compare_warns_when_environments_or_definitions_differ(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    run = records.load_run(RUN_A)
    run.meta.environment.cpu_model = "Some Other CPU"
    records.write_meta(other, run.meta)
    for r in run.records:
        records.append_record(other / records.RESULTS, r)
    r = fwbench("compare", RUN_A, other)
    assert r.returncode == 0 and "environments differ: cpu_model" in r.stderr
    assert "definitions differ" not in r.stderr
    # run-single defined mlp with batch 100 and target 85%: its step times are not comparable
    r = fwbench("compare", SINGLE, RUN_A)
    assert r.returncode == 0, r.stderr
    assert "definitions differ: task mlp batch_size: 100 vs 128" in r.stderr
    assert "definitions differ: task mlp target_accuracy: 0.85 vs 0.98" in r.stderr


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_tables(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="parquet export needs pyarrow (fwbench[export])")
    r = fwbench("export", SINGLE, "--format", fmt, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    read = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt]
    cells = read(tmp_path / f"cells.{fmt}")
    epochs = read(tmp_path / f"epochs.{fmt}")
    recs = records.load_run(SINGLE).records
    assert len(cells) == len(recs) and set(cells["status"]) == {"ok", "failed", "timeout"}
    assert list(cells.columns) == tables.CELL_COLUMNS
    assert len(epochs) == sum(len(x.epochs) for x in recs) == 4
    assert set(epochs.columns) >= {"task", "backend", "seed", "epoch", "test_accuracy"}
    ok = cells[cells["status"] == "ok"]
    by_key = {(x.task, x.backend): x for x in recs}
    for c in ok.itertuples():
        x = by_key[(c.task, c.backend)]
        assert (c.step_p50_ms, c.throughput_samples_s) == pytest.approx(
            (x.step_time_ms.p50, x.throughput_samples_s))


@pytest.mark.slow
def test_export_bad_format_and_tensorboard(tmp_path):
    bad = fwbench("export", RUN_A, "--format", "xlsx")
    assert bad.returncode == 2 and "unknown format 'xlsx'" in bad.stderr
    pytest.importorskip("tensorboardX", reason="--tensorboard needs tensorboardX (fwbench[export])")
    r = fwbench("export", RUN_A, "--out", tmp_path / "x", "--tensorboard", tmp_path / "tb")
    assert r.returncode == 0, r.stderr
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 12  # 2 tasks x 2 backends x 3 seeds (repeats have no epochs)
    assert "wrote 48 scalars" in r.stdout  # 12 epochs x 4 curves
