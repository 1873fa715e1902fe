"""``fwbench check`` (parity) and ``fwbench overhead`` (the harness's own cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from fwbench.harness import records
from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import labels
from fwbench.harness.check import idiomatic, overhead, parity
from fwbench.harness.cli.common import (CREATE_ENVS_HELP, DEVICE_HELP, ENVS_DIR_HELP, ENVS_HELP,
                                        all_task_names, device_option, discover_backends, print_envs,
                                        resolve_envs, select_backends, task_names, with_envs,
                                        app, console)
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import environment
from fwbench.harness.run import envs, runner


@app.command("overhead", short_help="Harness cost; or each adapter against a hand-written loop.")
def overhead_cmd(
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: all)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every installed base backend)."),
    steps: Optional[int] = typer.Option(None, help="Steps per block (default 50); with --against: "
                                        "timed steps per process (default 200)."),
    blocks: int = typer.Option(5, help="Alternating blocks of harness loop and bare loop."),
    threads: Optional[int] = typer.Option(None, help="Threads (default: all available cores)."),
    against: Optional[str] = typer.Option(None, help="idiomatic: each adapter against a hand-written "
                                          "loop of its framework (benchmarks/idiomatic), one "
                                          "process per round and kind, interleaved."),
    rounds: Optional[int] = typer.Option(None, help="With --against: rounds of processes (default 5; "
                                         "CIs from 3)."),
    profile: Optional[str] = typer.Option(None, help="With --against: smoke (shipped sample, "
                                          "default) or quick (full data)."),
    variants: bool = typer.Option(True, "--variants/--no-variants", help="With --against: also time "
                                  "the framework's variants (torch-compile, tensorflow-xla, "
                                  "mindspore-pynative, paddle-static) for the target column."),
    data_dir: Optional[Path] = typer.Option(None, help="With --against: folder with mnist/ and "
                                            "imdb/ files (or FWBENCH_DATA_DIR)."),
    out: Optional[Path] = typer.Option(None, help="With --against: write every process's step "
                                       "times and the table as JSON here."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """The harness's own cost: its training loop vs a bare loop on the same batches (target <= 1.02);
    with --against idiomatic: each adapter vs a hand-written loop of its framework."""
    chosen = task_names(tasks) or all_task_names()
    if against is not None and against != "idiomatic":
        raise FwbenchError(f"--against {against!r}: the only reference is 'idiomatic'")
    if against is None and (rounds, profile, out, data_dir) != (None, None, None, None):
        raise FwbenchError("--rounds, --profile, --data-dir and --out need --against idiomatic")
    if against is not None and device not in (None, "cpu"):
        raise FwbenchError("--against idiomatic runs on the CPU only; drop --device")
    dev = device_option(device)
    names, known = select_backends(backends)
    cpus = environment.available_cpus()
    n_threads = threads or len(cpus)
    if against is not None:
        code = idiomatic.command(console, chosen, names, known, explicit=backends is not None,
                                 threads=n_threads, cpus=cpus, rounds=rounds, steps=steps,
                                 profile=profile, variants=variants, data_dir=data_dir, out=out)
        if code:
            raise typer.Exit(code)
        return
    steps = 50 if steps is None else steps
    if not 1 <= n_threads <= len(cpus) or steps < 2 or blocks < 1:
        raise FwbenchError(f"need 1 <= --threads <= {len(cpus)}, --steps >= 2, --blocks >= 1")
    with console.status("measuring") as status:
        cells = overhead.measure(chosen, names, known, threads=n_threads, cpus=cpus,
                                 steps=steps, blocks=blocks, device=dev.name,
                                 on_status=status.update)
    title = (f"harness loop / bare loop, median of {blocks} blocks of {steps} steps"
             + (f", on {dev}" if dev.gpu else ""))
    _print_overhead(cells, chosen, names, title)


def _print_overhead(cells: list[overhead.Cell], tasks: list[str], names: list[str],
                    title: str) -> None:
    t = Table(title=title)
    t.add_column("task")
    for n in names:
        t.add_column(n, justify="right")
    by = {(c.task, c.backend): c for c in cells}
    for task in tasks:
        shown = []
        for name in names:
            c = by[(task, name)]
            shown.append("[yellow]unsupported[/]" if c.status == "unsupported"
                         else f"[red]{c.status}[/]" if c.status != "ok"
                         else f"{c.ratio:.3f} ({c.ratio_pregathered:.3f})")
        t.add_row(task, *shown)
    console.print(t)
    for c in cells:
        if c.status == "unsupported":
            console.print(f"{c.task}/{c.backend}: {c.error}", style="yellow", highlight=False,
                          markup=False)
    console.print("ratio = wall time of the harness loop (per-step timer, loss check, progress) / "
                  "a bare loop that gathers each batch the same way: the harness's own overhead, "
                  f"target <= {overhead.TARGET:g}. In brackets: against a bare loop over batches "
                  "gathered beforehand (adds the cost of gathering shuffled batches, which is in "
                  "train_time_s but not in step times).", style="dim")


@app.command("check", short_help="Parity: same logits, loss, gradients and 3 steps everywhere.")
def check_cmd(
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: all)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every installed one)."),
    seed: int = typer.Option(0, help="Seed of the canonical initial weights and batches."),
    threads: int = typer.Option(1, help="Threads per probe process."),
    envs_mode: Optional[str] = typer.Option(None, "--envs", help=ENVS_HELP),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=ENVS_DIR_HELP),
    create_envs: bool = typer.Option(False, "--create-envs", help=CREATE_ENVS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Parity proof: every backend computes the same logits, loss, gradients and 3 steps."""
    chosen = task_names(tasks) or all_task_names()
    if envs_mode is not None and envs_mode not in records.ENVS_MODES:
        raise FwbenchError(f"unknown --envs {envs_mode!r}; choose from {', '.join(records.ENVS_MODES)}")
    dev = device_option(device)
    isolated = envs_mode == "isolated"
    root = envs.envs_dir(envs_dir)
    names, known = _check_backends(backends, isolated, root)
    if not 1 <= threads <= len(environment.available_cpus()):
        raise FwbenchError(f"--threads must be between 1 and {len(environment.available_cpus())}")
    env_map = resolve_envs(names, known, isolated, envs_dir, create_envs)
    print_envs(env_map)
    pythons = {n: runner.env_python(e) for n, e in env_map.items()}
    with console.status("probing") as status:
        rows = parity.check(known, names, chosen, seed=seed, threads=threads,
                            on_status=lambda s: status.update(s), pythons=pythons,
                            device=dev.name)
    console.print(_check_table(rows, names, f"seed {seed}{', ' + dev.name if dev.gpu else ''}"))
    _print_check_notes(rows, parity.loosened(known, names))
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
    if all(r.unsupported for r in rows):  # e.g. --device cuda with no backend able to use it
        raise FwbenchError("nothing was compared: every backend declared every task unsupported")


def _check_backends(backends: Optional[str], isolated: bool,
                    root: Path) -> tuple[list[str], dict[str, Backend]]:
    """The backends to check: given, or every installed one (every one with an env)."""
    known = discover_backends()
    if backends is None:
        names = (with_envs(known, root, base_only=False) if isolated
                 else [n for n, b in known.items() if b.installed])
    else:
        names, known = select_backends(backends, isolated, root, allow_versions=True)
    if not names:
        raise FwbenchError(f"no backend env exists in {root}; create them with: fwbench envs create"
                           if isolated else "no backend is installed")
    return names, known


def _fmt(v: float | None) -> str:
    """6 characters at most: 80 columns fit."""
    return "0" if v == 0 else f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e+")


def _check_table(rows: list[parity.Row], names: list[str], what: str) -> Table:
    t = Table(title=f"fwbench check ({what}): max differences", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    for c, j in (("task", "left"), ("backend", "left"), ("init", "right"), ("logits", "right"),
                 ("loss", "right"), ("grad", "right"), ("3 steps", "right"), ("result", "left")):
        width = max(len(n) for n in names) if c == "backend" else 6 if j == "right" else None
        t.add_column(c, justify=j, no_wrap=True, min_width=width)
    for r in rows:
        if r.error:
            t.add_row(r.task, r.backend, "", "", "", "", "", "[red]error[/]")
        elif r.unsupported:
            t.add_row(r.task, r.backend, "", "", "", "", "", "[yellow]unsupported[/]")
        else:
            result = "[green]pass[/]" if r.ok else "[red]FAIL[/]"
            t.add_row(r.task, r.backend, _fmt(r.init), _fmt(r.logits_abs), _fmt(r.loss_rel),
                      _fmt(r.grad_rel), _fmt(r.params_rel), result)
    return t


def _print_check_notes(rows: list[parity.Row], loose: parity.Loosened) -> None:
    """The problems, the unsupported cells, the legend, the tolerances and what is loosened."""
    for r in rows:
        if r.error:
            console.print(f"[red]{r.task}/{r.backend}: {r.error}[/]", highlight=False)
        elif not r.unsupported and r.breaches:
            console.print(f"[red]{r.task}/{r.backend}: " + "; ".join(r.breaches) + "[/]",
                          highlight=False)
    for r in rows:  # declared by the adapter before building: not a failure
        if r.unsupported and not r.error:
            console.print(f"{r.task}/{r.backend}: {r.unsupported}", style="yellow",
                          highlight=False, markup=False)
    console.print("columns: init = canonical round trip (exact); logits = max abs difference, "
                  "loss = relative difference, against the NumPy reference; grad = max "
                  "difference relative to the tensor's largest magnitude, against "
                  f"{parity.REFERENCE} (the NumPy reference's own: the ground truth); 3 steps "
                  "= L2 distance of the 3-step parameter move relative to its L2 norm, per "
                  "tensor, against the spec's optimizer replayed in float64 on the backend's own "
                  "gradients; probe images "
                  f"jittered by <= {parity.JITTER:g} (no max-pool ties).", style="dim")
    console.print("tolerances: init exact; logits abs <= 1e-4, loss rel <= 1e-5, gradients "
                  "<= 1e-4, 3-step moves <= 1e-4 (SGD) / 1e-3 (RMSprop, Adam).", style="dim")
    shown = {(r.task, labels.uncopied(r.backend)) for r in rows if not (r.error or r.unsupported)}
    loosened: dict[tuple[str, str, float, str], list[str]] = {}
    for (task, backend, metric), (tol, why) in loose.items():
        if (task, backend) in shown:
            loosened.setdefault((task, metric, tol, why), []).append(backend)
    for (task, metric, tol, why), names_ in loosened.items():
        console.print(f"loosened: {task} {metric} <= {tol:g} for {', '.join(names_)}: {why}",
                      highlight=False)
