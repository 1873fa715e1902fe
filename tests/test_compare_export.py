"""compare's exit codes and export's files, on the checked-in fixture runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FIX = Path(__file__).parent / "fixtures"
SINGLE, SEEDS = FIX / "run-single", FIX / "run-seeds"


def fwbench(*args):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def test_compare_exit_codes():
    plain = fwbench("compare", SINGLE, SEEDS)
    assert plain.returncode == 0, plain.stderr
    assert "lenet" in plain.stdout and "significant" in plain.stdout
    # lenet/torch is ~12x slower in the second fixture: a significant regression
    strict = fwbench("compare", SINGLE, SEEDS, "--fail-on-regression", "5")
    assert strict.returncode == 1 and "regression: lenet/torch" in strict.stderr
    lenient = fwbench("compare", SINGLE, SEEDS, "--fail-on-regression", "100000")
    assert lenient.returncode == 0
    same = fwbench("compare", SEEDS, SEEDS, "--fail-on-regression", "0")
    assert same.returncode == 0 and "n.s." in same.stdout
    assert fwbench("compare", SINGLE, FIX / "nope").returncode == 2


def test_compare_warns_when_environments_differ(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(SINGLE, other)
    meta = json.loads((other / "run.json").read_text())
    meta["environment"]["cpu_model"] = "Some Other CPU"
    (other / "run.json").write_text(json.dumps(meta))
    r = fwbench("compare", SINGLE, other)
    assert r.returncode == 0 and "environments differ: cpu_model" in r.stderr


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_tables(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="parquet export needs pyarrow (fwbench[export])")
    r = fwbench("export", SEEDS, "--format", fmt, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    read = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt]
    cells = read(tmp_path / f"cells.{fmt}")
    epochs = read(tmp_path / f"epochs.{fmt}")
    lines = (SEEDS / "results.jsonl").read_text().splitlines()
    assert len(cells) == len(lines) and set(cells["status"]) == {"ok", "failed", "timeout"}
    assert len(epochs) == 8 and set(epochs.columns) >= {"task", "backend", "seed", "epoch", "test_accuracy"}


def test_export_bad_format_and_tensorboard(tmp_path):
    bad = fwbench("export", SEEDS, "--format", "xlsx")
    assert bad.returncode == 2 and "unknown format 'xlsx'" in bad.stderr
    pytest.importorskip("tensorboardX", reason="--tensorboard needs tensorboardX (fwbench[export])")
    r = fwbench("export", SEEDS, "--out", tmp_path / "x", "--tensorboard", tmp_path / "tb")
    assert r.returncode == 0, r.stderr
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 8  # 2 tasks x 2 backends x 2 seeds
