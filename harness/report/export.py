"""``fwbench export``: runs' records as CSV, Parquet or JSON tables, TensorBoard scalars, and
MLflow runs (``tracking``). Every row and every logged run carries its run id, so the exports
of several runs go together."""

from __future__ import annotations

from pathlib import Path

from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from fwbench.harness.records import CellRecord, Run
from fwbench.harness.report.tables import load_results

FORMATS = ("csv", "parquet", "json")


def load_runs(sources: list[str | Path | Run]) -> list[Run]:
    return [s if isinstance(s, Run) else records.load_run(s) for s in sources]


def export(runs: list[Run], fmt: str, out: Path) -> list[Path]:
    """Writes ``cells.<fmt>`` (one row per cell) and ``epochs.<fmt>`` into ``out``, the runs
    concatenated (``tables.KEY_COLUMNS`` tell them apart)."""
    if fmt not in FORMATS:
        raise FwbenchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    cells, epochs = load_results(*runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FwbenchError(f"cannot write to {out}: {exc.strerror or exc}") from None
    paths = []
    for name, frame in (("cells", cells), ("epochs", epochs)):
        path = out / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "json":
            frame.to_json(path, orient="records", indent=1)
        else:
            try:
                frame.to_parquet(path, index=False)
            except ImportError:
                raise FwbenchError("parquet export needs pyarrow: pip install 'fwbench[export]'") from None
        paths.append(path)
    return paths


def cell_name(r: CellRecord) -> str:
    """task/backend/seedN (and /repeatN for a timing-only process): one cell of a run."""
    return f"{r.task}/{r.backend}/seed{r.seed}" + (f"/repeat{r.repeat}" if r.repeat else "")


def tensorboard(runs: list[Run], logdir: Path) -> tuple[int, int]:
    """Scalars per cell under ``logdir/<run id>/<task>/<backend>/seedN[/repeatN]``: the loss
    and step time per training step (``step_trace``), and the per-epoch curves. Returns
    (scalars written, cells with per-step values)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise FwbenchError("--tensorboard needs tensorboardX: pip install 'fwbench[export]'") from None
    count = stepped = 0
    for run in runs:
        for r in run.records:
            if not (r.epochs or r.step_trace):
                continue
            stepped += bool(r.step_trace)
            with SummaryWriter(str(logdir / run.meta.run_id_or_derived() / cell_name(r))) as w:
                for step, loss, ms in r.step_trace:
                    for tag, value in (("step_loss", loss), ("step_ms", ms)):
                        if value is not None:
                            w.add_scalar(f"{r.task}/{tag}", float(value), int(step))
                            count += 1
                for e in r.epochs:
                    for tag in ("train_loss", "test_loss", "test_accuracy", "wall_s"):
                        value = getattr(e, tag)
                        if value is not None:
                            w.add_scalar(f"{r.task}/{tag}", float(value), int(e.epoch))
                            count += 1
    return count, stepped
