"""``fwbench list`` and ``fwbench env``: what fwbench knows and what it sees."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.table import Table

from fwbench.harness import records, spec
from fwbench.harness.catalog import tasks
from fwbench.harness.cli.common import discover_backends, task_names, app, console
from fwbench.harness.measure import environment


@app.command("list")
def list_cmd() -> None:
    """Tasks, profiles and backends (with installed versions and where each comes from)."""
    task_names(None)  # the plugins' warnings
    t = Table(title="tasks", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for c in ("task", "data", "params", "optimizer", "batch", "epochs (full)", "target", "source"):
        t.add_column(c, no_wrap=c != "source", overflow="fold",
                     justify="left" if c in ("task", "data", "optimizer", "source") else "right")
    found = tasks.all_tasks()
    for task in found.values():
        t.add_row(task.name, task.dataset, f"{spec.param_count(task):,}",
                  type(task.optimizer).__name__, str(task.batch_size), str(task.epochs_full),
                  f"{task.target_accuracy:g}", tasks.source(task.name))
    console.print(t)
    described = Table.grid(padding=(0, 2), pad_edge=True)  # wraps under its own column
    described.add_column(no_wrap=True)
    described.add_column()
    for task in found.values():
        described.add_row(task.name, task.description)
    console.print(described, highlight=False)
    console.print()
    p = Table(title="profiles")
    p.add_column("profile")
    p.add_column("description")
    for prof in spec.PROFILE_INFO.values():
        p.add_row(prof.name, prof.description)
    console.print(p)
    b = Table(title="backends")
    for c in ("backend", "versions", "source", "description"):
        b.add_column(c, no_wrap=c == "backend", overflow="fold")
    for name, backend in discover_backends().items():
        versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        b.add_row(name, versions, backend.source, backend.description)
    console.print(b)


@app.command("env")
def env_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The machine and software fwbench sees, and its hardware fingerprint."""
    info = {**records.to_json(environment.capture()),
            "hardware": records.to_json(environment.hardware_fingerprint())}
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = Table(show_header=False)
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None) or "–"
        t.add_row(k, str(v))
    console.print(t)
