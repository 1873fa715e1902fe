"""``fwbench --version``, ``list`` and ``env``: what fwbench knows and what it sees."""

from __future__ import annotations

import json
import platform
import sys
from typing import Optional

import typer
from rich import box
from rich.table import Table

from fwbench.harness import records, spec
from fwbench.harness.catalog import tasks
from fwbench.harness.cli.common import discover_backends, group_help, task_names, app, console
from fwbench.harness.measure import environment


def version_lines() -> list[str]:
    """fwbench, Python, NumPy and every installed framework a backend uses, one line each
    (from the package metadata: no framework is imported)."""
    found = {k: v for k, v in environment.versions().items() if v is not None}
    for backend in discover_backends().values():
        found.update({k: v for k, v in backend.versions().items() if v != "not installed"})
    lines = [f"fwbench {found.pop('fwbench', 'unknown')}",
             f"Python {platform.python_version()} ({sys.executable})"]
    return lines + [f"{k} {v}" for k, v in found.items() if k not in environment.RUNNER_ONLY]


def _version(value: bool) -> None:
    if value:
        for line in version_lines():
            print(line)
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    version: Optional[bool] = typer.Option(None, "--version", is_eager=True, callback=_version,
                                           help="Print fwbench's, Python's and the frameworks' versions and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (anywhere on the command line)."),
) -> None:
    """Train the same models on several deep-learning frameworks and compare them."""
    group_help(ctx)  # --debug itself is taken off the command line by cli.main


def _described(rows) -> Table:
    """Name, then its description wrapping at spaces under its own column."""
    grid = Table.grid(padding=(0, 2), pad_edge=True)
    grid.add_column(no_wrap=True)
    grid.add_column()
    for name, text in rows:
        grid.add_row(name, text)
    return grid


def _table(title: str, columns: dict[str, str]) -> Table:
    """One style for every listing: a rule under the head, no box; ``columns`` name ->
    justify. A cell wraps at spaces, never inside a word (fold only what has no space)."""
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in columns.items():
        t.add_column(name, justify=justify, overflow="fold")
    return t


@app.command("list", short_help="Tasks, profiles and backends (versions, sources).")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Tasks, profiles and backends (with installed versions and where each comes from)."""
    task_names(None)  # the plugins' warnings
    found = tasks.all_tasks()
    task_rows = [{"task": t.name, "data": t.dataset, "params": spec.param_count(t),
                  "optimizer": type(t.optimizer).__name__, "batch": t.batch_size,
                  "epochs_full": t.epochs_full, "target": t.target_accuracy,
                  "source": tasks.source(t.name), "description": t.description}
                 for t in found.values()]
    profile_rows = [{"profile": p.name, "description": p.description}
                    for p in spec.PROFILE_INFO.values()]
    backend_rows = [{"backend": name, "versions": b.versions(), "installed": b.installed,
                     "source": b.source, "description": b.description}
                    for name, b in discover_backends().items()]
    if as_json:
        console.print_json(json.dumps({"tasks": task_rows, "profiles": profile_rows,
                                       "backends": backend_rows}))
        return
    t = _table("tasks", {"task": "left", "data": "left", "params": "right", "optimizer": "left",
                         "batch": "right", "epochs (full)": "right", "target": "right",
                         "source": "left"})
    for r in task_rows:
        t.add_row(r["task"], r["data"], f"{r['params']:,}", r["optimizer"], str(r["batch"]),
                  str(r["epochs_full"]), f"{r['target']:g}", r["source"])
    console.print(t)
    console.print(_described((r["task"], r["description"]) for r in task_rows), highlight=False)
    console.print()
    p = _table("profiles", {"profile": "left", "description": "left"})
    for r in profile_rows:
        p.add_row(r["profile"], r["description"])
    console.print(p)
    b = _table("backends", {"backend": "left", "versions": "left", "source": "left"})
    for r in backend_rows:
        b.add_row(r["backend"], ", ".join(f"{k} {v}" for k, v in r["versions"].items()), r["source"])
    console.print(b)
    console.print(_described((r["backend"], r["description"]) for r in backend_rows),
                  highlight=False)


@app.command("env", short_help="The machine and software fwbench sees; its fingerprint.")
def env_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The machine and software fwbench sees, and its hardware fingerprint."""
    info = {**records.to_json(environment.capture()),
            "hardware": records.to_json(environment.hardware_fingerprint())}
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = Table(show_header=False, box=box.SIMPLE, pad_edge=False)
    for k, v in info.items():
        t.add_row(k, _plain(v))
    console.print(t, highlight=False, markup=False)
    console.print("hardware: the fingerprint that tells machines apart; memory rounded to whole "
                  "GiB, device only for a GPU cell", style="dim", highlight=False)


def _plain(value) -> str:
    """A value of ``fwbench env`` as text: lists joined, mappings as k=v, nothing for empty."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items() if v not in (None, ""))
    if isinstance(value, (list, tuple)):
        sep = "; " if any(isinstance(v, dict) for v in value) else ", "
        return sep.join(_plain(v) for v in value) if value else "none"
    return str(value)
