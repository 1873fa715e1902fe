"""``fwbench export``: the records as CSV, Parquet or JSON tables, and TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from fwbench.harness.records import Run
from fwbench.harness.report.tables import load_results

FORMATS = ("csv", "parquet", "json")


def export(run_dir: str | Path | Run, fmt: str, out: Path) -> list[Path]:
    """Writes ``cells.<fmt>`` (one row per cell) and ``epochs.<fmt>`` into ``out``."""
    if fmt not in FORMATS:
        raise FwbenchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    cells, epochs = load_results(run_dir)
    out.mkdir(parents=True, exist_ok=True)
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


def tensorboard(run_dir: str | Path | Run, logdir: Path) -> int:
    """Per-epoch curves as TensorBoard scalars, one run per (task, backend, seed)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise FwbenchError("--tensorboard needs tensorboardX: pip install 'fwbench[export]'") from None
    run = run_dir if isinstance(run_dir, Run) else records.load_run(run_dir)
    count = 0
    for r in run.records:
        if not r.epochs:
            continue
        with SummaryWriter(str(logdir / f"{r.task}/{r.backend}/seed{r.seed}")) as w:
            for e in r.epochs:
                for tag in ("train_loss", "test_loss", "test_accuracy", "wall_s"):
                    value = getattr(e, tag)
                    if value is not None:
                        w.add_scalar(f"{r.task}/{tag}", float(value), int(e.epoch))
                        count += 1
    return count
