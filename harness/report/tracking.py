"""``fwbench export --mlflow``: a run's cells as MLflow runs, read back with MLflow's own client.

One parent MLflow run per fwbench run (its configuration as params, its results.jsonl,
run.json and report.html as artifacts) and one nested run per cell: params that say what ran
(task, backend, framework and version, seed, threads, device, profile, env), metrics of what it
measured (per epoch and per training step where recorded), tags that say where (hardware id,
node, fwbench version). MLflow is imported here only (the ``mlflow`` extra).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from fwbench.harness.records import CellRecord, Run
from fwbench.harness.report.export import cell_name
from fwbench.harness.report.tables import cell_row

# MLflow's own default since 3.7 (its file store ./mlruns now refuses to open unless
# MLFLOW_ALLOW_FILE_STORE=true); artifacts then go to ./mlruns beside it
DEFAULT_URI = "sqlite:///mlflow.db"
EXPERIMENT = "fwbench"
RUN_TAG = "fwbench.run_id"
# a cell's final figures and what says what ran: columns of its export row (tables.cell_row)
METRICS = ("step_p50_ms", "step_p90_ms", "throughput_samples_s", "test_accuracy", "train_time_s",
           "time_to_target_s", "first_step_s", "peak_rss_mib", "energy_j", "energy_j_per_sample",
           "wall_s")
PARAMS = ("task", "backend", "framework", "framework_version", "seed", "repeat", "device", "env",
          "env_key", "threads", "profile", "status")
COMPLETE = "fwbench.complete"  # set on the parent once every cell and artifact is logged
# an fwbench status -> the MLflow run status it ends with
STATUS = {"ok": "FINISHED", "timeout": "KILLED", "killed": "KILLED", "lost": "KILLED"}


@dataclass(frozen=True)
class Logged:
    """What one fwbench run became in MLflow."""

    run_id: str  # fwbench's
    parent: str  # the MLflow run id of the parent run
    cells: int
    metrics: int
    existed: bool  # already in the experiment (logged earlier): nothing was logged again


def tracking_uri(uri: str | None) -> str:
    """--mlflow-uri, else MLFLOW_TRACKING_URI, else MLflow's default local store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise FwbenchError("--mlflow needs MLflow: pip install 'fwbench[mlflow]'") from None
    for name in ("mlflow", "alembic"):  # their INFO lines (creating tables) are not ours
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return MlflowClient(uri)
    except Exception as exc:  # MlflowException, a missing driver: one line, the URI named
        raise FwbenchError(f"cannot open the MLflow tracking store {uri}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _ms(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


def _params(items: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in items.items() if v is not None]


def _tags(items: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in items.items() if v is not None]


def _metrics(r: CellRecord, row: dict[str, Any], now: int):
    """The cell's final figures, then per epoch and (where recorded) per training step."""
    from mlflow.entities import Metric

    out = [Metric(k, float(row[k]), now, 0) for k in METRICS if row[k] is not None]
    for e in r.epochs:
        out += [Metric(f"epoch_{k}", float(v), now, int(e.epoch))
                for k in ("train_loss", "test_loss", "test_accuracy")
                if (v := getattr(e, k)) is not None]
    for step, loss, ms in r.step_trace:
        out += [Metric(k, float(v), now, int(step))
                for k, v in (("step_loss", loss), ("step_ms", ms)) if v is not None]
    return out


def _log_cell(client, experiment: str, parent: str, run: Run, r: CellRecord) -> int:
    row = cell_row(run, r)
    child = client.create_run(experiment, run_name=cell_name(r), start_time=_ms(r.started),
                              tags={"mlflow.parentRunId": parent, RUN_TAG: row["run_id"]})
    cid = child.info.run_id
    metrics = _metrics(r, row, _ms(r.ended) or _ms(r.started) or 0)
    params = _params({k: row[k] for k in PARAMS})
    tags = _tags({"hardware_id": row["hardware_id"], "node": r.node, "python": r.python,
                  "fwbench_version": row["fwbench_version"], "fwbench.error": r.error})
    client.log_batch(cid, params=params, tags=tags)
    for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(cid, metrics=metrics[i:i + 1000])
    client.set_terminated(cid, status=STATUS.get(r.status, "FAILED"), end_time=_ms(r.ended))
    return len(metrics)


def _artifacts(client, parent: str, run: Run) -> None:
    """results.jsonl, run.json, report.html (rendered now if the folder has none), report.md."""
    for name in (records.RESULTS, records.RUN_JSON, "report.html", "report.md"):
        if (run.path / name).is_file():
            client.log_artifact(parent, str(run.path / name))
    if not (run.path / "report.html").is_file():
        from fwbench.harness.report.html import html_report

        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "report.html"
            page.write_text(html_report(run), encoding="utf-8")
            client.log_artifact(parent, str(page))


def log_run(run: Run, uri: str, experiment_name: str = EXPERIMENT) -> Logged:
    """One fwbench run into the MLflow store at ``uri``: a parent run and a nested run per
    cell. A run already logged there whole (same fwbench run id) is left as it is; one logged
    in part (the export was interrupted) is deleted and logged again."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment_name)
    experiment = found.experiment_id if found else client.create_experiment(experiment_name)
    run_id = run.meta.run_id_or_derived()
    earlier = client.search_runs([experiment], f"tags.`{RUN_TAG}` = '{run_id}'", max_results=50000)
    whole = [x for x in earlier if x.data.tags.get(COMPLETE) == "true"]
    if whole:
        return Logged(run_id, whole[0].info.run_id, 0, 0, True)
    for x in earlier:  # a part: its parent without the mark, and the cells it got to
        client.delete_run(x.info.run_id)
    cfg = run.meta.config
    parent = client.create_run(experiment, run_name=run_id, start_time=_ms(run.meta.created),
                               tags={RUN_TAG: run_id, "fwbench.kind": "run"}).info.run_id
    client.log_batch(parent, params=_params({
        "tasks": ",".join(cfg.tasks), "backends": ",".join(cfg.backends), "profile": cfg.profile,
        "seeds": len(cfg.seeds), "repeats": cfg.repeats, "threads": cfg.threads,
        "device": cfg.device, "denormals": cfg.denormals}), tags=_tags({
            "fwbench_version": run.meta.fwbench_version, "run_folder": str(run.path),
            "hardware_id": ",".join(sorted({r.hardware.id for r in run.records if r.hardware}))}))
    metrics = sum(_log_cell(client, experiment, parent, run, r) for r in run.records)
    _artifacts(client, parent, run)
    ended = [e for r in run.records if (e := _ms(r.ended)) is not None]
    client.set_tag(parent, COMPLETE, "true")
    client.set_terminated(parent, end_time=max(ended) if ended else None)
    return Logged(run_id, parent, len(run.records), metrics, False)
