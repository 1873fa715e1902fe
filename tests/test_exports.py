"""Exports that stand alone (issue 24): every row keyed by run, machine and software; several
runs in one table; TensorBoard per step; MLflow read back with its own client; the records'
JSON Schemas equal to what records.py defines and valid for the reference run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fwbench.harness import record_schema, records
from fwbench.harness.adapter import Backend
from fwbench.harness.run import runner

TESTS = Path(__file__).parent
REFERENCE = TESTS.parent / "reports"
RUN_A, SINGLE = TESTS / "fixtures" / "run-a", TESTS / "fixtures" / "run-single"
COUNTING = Backend(name="counting", adapter="toy_backend:Counting", requires=(), source="test")


def fwbench(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "COLUMNS": "160"})


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """A run of this version (run id, per-step traces): a toy whose loss is 1/step, 2 seeds."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    out = tmp_path_factory.mktemp("fresh") / "run"
    config = runner.RunConfig(("mlp",), ("counting",), "smoke", (0, 1), 1, 120.0)
    done = runner.run(config, out, {"counting": COUNTING})
    assert [r.status for r in done] == ["ok", "ok"], [r.error for r in done]
    return out


@pytest.mark.slow
def test_a_record_traces_its_training_steps(fresh_run):
    run = records.load_run(fresh_run)
    assert run.meta.run_id and run.meta.run_id == run.meta.run_id_or_derived()
    for r in run.records:
        steps = [s for s, _, _ in r.step_trace]
        assert steps == list(range(1, r.steps + 1)) and r.steps == 3000 // 128  # every step: 23
        assert [loss for _, loss, _ in r.step_trace] == pytest.approx([1 / s for s in steps])
        assert all(ms > 0 for _, _, ms in r.step_trace)


def test_old_runs_get_a_derived_id_that_is_stable_and_distinct():
    a, b = records.load_meta(RUN_A), records.load_meta(SINGLE)
    assert a.run_id is None and a.run_id_or_derived() == records.load_meta(RUN_A).run_id_or_derived()
    assert a.run_id_or_derived() != b.run_id_or_derived()
    assert a.run_id_or_derived().startswith(a.created[:4])


@pytest.mark.slow
def test_two_runs_concatenate_into_one_table_with_their_keys(fresh_run, tmp_path):
    import pandas as pd

    from fwbench.harness.report import tables

    r = fwbench("export", REFERENCE, fresh_run, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    cells, epochs = pd.read_csv(tmp_path / "cells.csv"), pd.read_csv(tmp_path / "epochs.csv")
    ids = [records.load_meta(REFERENCE).run_id_or_derived(), records.load_meta(fresh_run).run_id]
    assert cells.groupby("run_id").size().to_dict() == {ids[0]: 105, ids[1]: 2}
    assert set(epochs["run_id"]) == set(ids) and list(cells.columns) == tables.CELL_COLUMNS
    ok = cells[(cells["status"] == "ok") & (cells["run_id"] == ids[0])]
    for key in ("hardware_id", "node", "device", "framework", "framework_version", "env", "started"):
        assert ok[key].notna().all(), key
    fresh = cells[cells["run_id"] == ids[1]]
    assert set(fresh["env"]) == {"current"} and set(fresh["framework_version"]) == {"0-toy"}
    assert fresh["framework"].isna().all()  # a toy backend requires no distribution
    # the same run twice would count double; several runs need one place to go
    twice = fwbench("export", REFERENCE, REFERENCE, "--out", tmp_path / "x")
    assert twice.returncode == 2 and "is the same run as" in twice.stderr
    nowhere = fwbench("export", REFERENCE, fresh_run)
    assert nowhere.returncode == 2 and "--out" in nowhere.stderr


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] read back from the event files in ``folder`` (TFRecord framing:
    length, its CRC, the Event protobuf, its CRC), with tensorboardX's own Event message."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.slow
def test_tensorboard_has_every_step_and_every_epoch(fresh_run, tmp_path):
    pytest.importorskip("tensorboardX", reason="--tensorboard needs tensorboardX (fwbench[export])")
    r = fwbench("export", fresh_run, "--out", tmp_path / "t", "--tensorboard", tmp_path / "tb")
    assert r.returncode == 0, r.stderr
    run = records.load_run(fresh_run)
    assert "per training step for 2 of 2 cells" in r.stdout
    for rec in run.records:
        found = scalars(tmp_path / "tb" / run.meta.run_id / "mlp" / "counting" / f"seed{rec.seed}")
        loss = found["mlp/step_loss"]
        assert [s for s, _ in loss] == list(range(1, 24))
        assert [v for _, v in loss] == pytest.approx([1 / s for s in range(1, 24)], rel=1e-6)
        assert len(found["mlp/step_ms"]) == 23
        assert found["mlp/test_accuracy"] == [(1, pytest.approx(rec.test_accuracy))]


@pytest.mark.slow
def test_mlflow_gets_a_parent_per_run_and_a_nested_run_per_cell(fresh_run, tmp_path):
    pytest.importorskip("mlflow", reason="--mlflow needs MLflow: pip install -e '.[mlflow]'")
    pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy (fwbench[mlflow])")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    fresh = records.load_run(fresh_run)
    # an export of the fresh run that was interrupted: its parent (no completion mark), one cell
    exp_id = client.create_experiment("fwbench", artifact_location=str(tmp_path / "mlruns"))
    cut = client.create_run(exp_id, tags={"fwbench.run_id": fresh.meta.run_id, "fwbench.kind": "run"})
    client.create_run(exp_id, tags={"fwbench.run_id": fresh.meta.run_id,
                                    "mlflow.parentRunId": cut.info.run_id})
    r = fwbench("export", RUN_A, fresh_run, "--out", tmp_path / "t", "--mlflow", "--mlflow-uri", uri,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "INFO" not in r.stderr, r.stderr  # MLflow's own chatter stays out
    (exp,) = [e for e in client.search_experiments() if e.name == "fwbench"]
    every = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {x.data.tags["fwbench.run_id"]: x for x in every if x.data.tags.get("fwbench.kind") == "run"}
    assert cut.info.run_id not in {x.info.run_id for x in every}  # the part was replaced
    assert all(p.data.tags.get("fwbench.complete") == "true" for p in parents.values())
    a = records.load_run(RUN_A)
    assert set(parents) == {fresh.meta.run_id, a.meta.run_id_or_derived()}
    for run in (a, fresh):
        parent = parents[run.meta.run_id_or_derived()]
        children = [x for x in every if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == len(run.records)
        assert parent.data.params["profile"] == run.meta.config.profile
        names = {f.path for f in client.list_artifacts(parent.info.run_id)}
        assert {"results.jsonl", "run.json", "report.html"} <= names
        by_cell = {(c.data.params["task"], c.data.params["backend"], int(c.data.params["seed"]),
                    int(c.data.params["repeat"])): c for c in children}
        for rec in run.records:
            c = by_cell[(rec.task, rec.backend, rec.seed, rec.repeat)]
            assert c.data.params["status"] == rec.status
            assert c.info.status == ("FINISHED" if rec.status == "ok" else c.info.status)
            assert c.data.tags.get("hardware_id") == (rec.hardware.id if rec.hardware else None)
            if rec.status == "ok":
                assert c.data.metrics["step_p50_ms"] == pytest.approx(rec.step_time_ms.p50)
                history = client.get_metric_history(c.info.run_id, "epoch_test_accuracy")
                assert [m.step for m in history] == [e.epoch for e in rec.epochs]
    counting = [x for x in every if x.data.params.get("backend") == "counting"]
    steps = client.get_metric_history(counting[0].info.run_id, "step_loss")
    assert sorted(m.step for m in steps) == list(range(1, 24))
    again = fwbench("export", fresh_run, "--out", tmp_path / "t2", "--mlflow", "--mlflow-uri", uri)
    assert again.returncode == 0 and "already there" in again.stdout
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == len(every)


def test_the_shipped_schemas_are_what_records_defines():
    for name, text in record_schema.generated().items():
        shipped = (record_schema.FOLDER / name).read_text()
        assert shipped == text, f"regenerate: python -m fwbench.harness.record_schema ({name})"


@pytest.mark.parametrize("run", [REFERENCE, RUN_A, SINGLE], ids=["reference", "run-a", "run-single"])
def test_the_schemas_validate_a_run_and_refuse_what_records_refuse(run):
    jsonschema = pytest.importorskip("jsonschema", reason="the schema check needs jsonschema (fwbench[test])")
    load = lambda name: json.loads((record_schema.FOLDER / name).read_text())  # noqa: E731
    results = jsonschema.Draft202012Validator(load("results.schema.json"))
    meta = jsonschema.Draft202012Validator(load("run.schema.json"))
    jsonschema.Draft202012Validator.check_schema(results.schema)
    lines = [json.loads(x) for x in (run / records.RESULTS).read_text().splitlines()]
    for line in lines:
        results.validate(line)
    meta.validate(json.loads((run / records.RUN_JSON).read_text()))
    bad = [{**lines[0], "unknown_field": 1}, {**lines[0], "seed": "zero"},
           {k: v for k, v in lines[0].items() if k != "schema"}, {**lines[0], "step_trace": [["x"]]}]
    for line in bad:
        assert not results.is_valid(line), line
