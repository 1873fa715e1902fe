"""``fwbench export``: the records as CSV, Parquet or JSON tables, and TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from .errors import FwbenchError
from .report import load_results

FORMATS = ("csv", "parquet", "json")


def export(run_dir: Path, fmt: str, out: Path) -> list[Path]:
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


def tensorboard(run_dir: Path, logdir: Path) -> int:
    """Per-epoch curves as TensorBoard scalars, one run per (task, backend, seed)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise FwbenchError("--tensorboard needs tensorboardX: pip install 'fwbench[export]'") from None
    _, epochs = load_results(run_dir)
    count = 0
    for (task, backend, seed), g in epochs.groupby(["task", "backend", "seed"]):
        with SummaryWriter(str(logdir / f"{task}/{backend}/seed{seed}")) as w:
            for row in g.itertuples():
                for tag in ("train_loss", "test_loss", "test_accuracy", "wall_s"):
                    w.add_scalar(f"{task}/{tag}", float(getattr(row, tag)), int(row.epoch))
                    count += 1
    return count
