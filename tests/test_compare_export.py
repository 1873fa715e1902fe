"""compare's verdicts and exit codes, export's files, on the fixture runs (real runs written
by ``scripts/make_fixtures.py``): in run-b the slow toy backend sleeps 9 ms per lenet step
instead of run-a's 3 ms, a real regression of about +190%."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fwbench.harness import compare, records, tables

FIX = Path(__file__).parent / "fixtures"
SINGLE, RUN_A, RUN_B = FIX / "run-single", FIX / "run-a", FIX / "run-b"
FAST, SLOW = "numpy-learner", "numpy-learner-slow"


def fwbench(*args, columns=200):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": str(columns)})


def row(stdout: str, task: str, backend: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if re.match(rf"\s*{task}\s+{re.escape(backend)}\s", x))
    return line.split()


def test_compare_finds_the_real_regression():
    changes = {(c.task, c.backend): c for c in compare.compare(RUN_A, RUN_B)}
    assert set(changes) == {(t, b) for t in ("mlp", "lenet") for b in (FAST, SLOW)}
    slow = changes[("lenet", SLOW)]
    assert slow.significant and 150 < slow.step_pct < 250 and slow.regression_pct == slow.step_pct
    # one definition of throughput: same batch in both runs, so it moves with the step time
    assert slow.throughput_pct == pytest.approx(100 * (1 / (1 + slow.step_pct / 100) - 1))
    assert abs(changes[("lenet", FAST)].step_pct) < 20  # nothing changed there


def test_compare_exit_codes():
    plain = fwbench("compare", RUN_A, RUN_B)
    assert plain.returncode == 0, plain.stderr
    assert row(plain.stdout, "lenet", SLOW)[5] == "yes" and "significant" in plain.stdout
    strict = fwbench("compare", RUN_A, RUN_B, "--fail-on-regression", "5")
    assert strict.returncode == 1 and f"regression: lenet/{SLOW} step time +" in strict.stderr
    lenient = fwbench("compare", RUN_A, RUN_B, "--fail-on-regression", "500")
    assert lenient.returncode == 0, lenient.stderr
    same = fwbench("compare", RUN_A, RUN_A, "--fail-on-regression", "0")
    assert same.returncode == 0 and row(same.stdout, "lenet", SLOW)[4:6] == ["+0.0%", "n.s."]
    missing = fwbench("compare", RUN_A, FIX / "nope")
    assert missing.returncode == 2 and "has no results.jsonl" in missing.stderr


def test_compare_warns_when_environments_or_definitions_differ(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    run = records.load_run(RUN_A)
    run.meta.environment["cpu_model"] = "Some Other CPU"
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


def test_export_bad_format_and_tensorboard(tmp_path):
    bad = fwbench("export", RUN_A, "--format", "xlsx")
    assert bad.returncode == 2 and "unknown format 'xlsx'" in bad.stderr
    pytest.importorskip("tensorboardX", reason="--tensorboard needs tensorboardX (fwbench[export])")
    r = fwbench("export", RUN_A, "--out", tmp_path / "x", "--tensorboard", tmp_path / "tb")
    assert r.returncode == 0, r.stderr
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 8  # 2 tasks x 2 backends x 2 seeds (repeats have no epochs)
    assert "wrote 32 scalars" in r.stdout  # 8 epochs x 4 curves
