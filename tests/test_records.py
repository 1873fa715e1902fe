"""The typed records: round trips, NumPy values, task snapshots, and the README's field list."""

import json
from pathlib import Path

import numpy as np
import pytest

from fwbench.harness import records, spec
from fwbench.harness.errors import FwbenchError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_record_field_as_defined():
    text = README.read_text()
    start = text.index("<!-- record fields")
    block = text[text.index("\n", start) + 1 : text.index("<!-- end of record fields -->")]
    assert block == records.fields_markdown(), "regenerate with python -m fwbench.harness.records"


@pytest.mark.parametrize("name", list(spec.TASKS))
def test_task_snapshot_round_trip(name):
    task = spec.TASKS[name]
    data = json.loads(json.dumps(records.task_to_json(task)))
    assert records.task_from_json(data) == task


def test_unknown_layer_in_a_snapshot_is_one_line():
    data = records.task_to_json(spec.TASKS["mlp"])
    data["layers"][0] = {"type": "Transformer", "heads": 8}
    with pytest.raises(FwbenchError, match="unknown layer type 'Transformer'"):
        records.task_from_json(data)


def test_record_round_trip_with_numpy_values_and_nan():
    r = records.CellRecord(task="mlp", backend="torch", test_accuracy=np.float32(0.5),
                           steps=np.int64(3), step_time_ms=records.StepTimes(p50=1.0, p90=float("nan")),
                           epochs=[records.EpochRow(1, 0.1, 0.2, 0.5, 1.0)])
    data = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert data["schema"] == records.SCHEMA and data["step_time_ms"]["p90"] is None
    back = records.record_from_json(data, "test")
    assert back.epochs[0].test_accuracy == 0.5 and back.step_time_ms.p50 == 1.0 and back.steps == 3


def test_a_worker_result_with_an_unknown_field_is_refused():
    with pytest.raises(TypeError, match="unknown field"):
        records.measurement({"status": "ok", "made_up_s": 1.0})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        records.measurement({"status": "ok", "error": object()})


def test_requests_round_trip():
    b = records.BackendSpec("torch", "m:C", ("torch",), {"compile": True})
    req = records.TrainRequest(2, [0, 1], b, task=records.task_to_json(spec.TASKS["lenet"]), seed=3)
    back = records.request_from_json(json.loads(json.dumps(req.to_json())))
    assert back == req and back.mode == "train" and back.backend.requires == ("torch",)
    with pytest.raises(FwbenchError, match="schema"):
        records.request_from_json({**req.to_json(), "schema": 1})


def test_cut_torn_line(tmp_path):
    path = tmp_path / records.RESULTS
    path.write_text('{"a": 1}\n{"b": ')
    side = records.cut_torn_line(path)
    assert path.read_text() == '{"a": 1}\n' and side.read_text() == '{"b": '
    assert records.cut_torn_line(path) is None
    path.write_text('{"c"')
    assert records.cut_torn_line(path).name == "results.torn-2.txt" and path.read_text() == ""
