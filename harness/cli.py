"""The ``fwbench`` command line. Input is validated here, once; the inside trusts it."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import environment, spec
from .adapter import Backend, discover
from .errors import FwbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train the same models on several deep-learning frameworks and compare them.")
console = Console()
err = Console(stderr=True)
DEBUG = False


def _csv(value: Optional[str], allowed: list[str], what: str) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise FwbenchError(f"--{what} is empty; choose from {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise FwbenchError(f"unknown {what[:-1]} {item!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _select_backends(value: Optional[str]) -> tuple[list[str], dict[str, Backend]]:
    known = discover()
    if value is None:
        names = [n for n, b in known.items() if b.installed and not b.options]
        if not names:
            raise FwbenchError("no backend is installed; install one, e.g. pip install -e '.[torch]'")
        return names, known
    names = _csv(value, list(known), "backends")
    for n in names:
        missing = known[n].missing()
        if missing:
            raise FwbenchError(f"backend {n!r} is not installed (missing {', '.join(missing)}); "
                               f"pip install -e '.[{known[n].requires[0]}]'")
    return names, known


@app.command("list")
def list_cmd() -> None:
    """Tasks, profiles and backends (with installed versions)."""
    t = Table(title="tasks")
    for c in ("task", "description", "params", "optimizer", "batch", "epochs (full)", "target"):
        t.add_column(c)
    for task in spec.TASKS.values():
        t.add_row(task.name, task.description, f"{spec.param_count(task):,}",
                  type(task.optimizer).__name__, str(task.batch_size), str(task.epochs_full),
                  f"{task.target_accuracy:g}")
    console.print(t)
    p = Table(title="profiles")
    p.add_column("profile")
    p.add_column("description")
    for prof in spec.PROFILE_INFO.values():
        p.add_row(prof.name, prof.description)
    console.print(p)
    b = Table(title="backends")
    for c in ("backend", "versions", "source", "description"):
        b.add_column(c)
    for name, backend in discover().items():
        versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        b.add_row(name, versions, backend.source, backend.description)
    console.print(b)


@app.command("env")
def env_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The machine and software fwbench sees."""
    info = environment.capture()
    if as_json:
        console.print_json(json.dumps(info))
        return
    t = Table(show_header=False)
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None) or "–"
        t.add_row(k, str(v))
    console.print(t)


@app.command("run")
def run_cmd(
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: all)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every installed base backend)."),
    profile: Optional[str] = typer.Option(None, help="smoke | quick (default) | full"),
    seeds: Optional[int] = typer.Option(None, help="Seeds per cell, 0..K-1 (default: the profile's)."),
    threads: Optional[int] = typer.Option(None, help="Threads per cell (default: all available cores)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/<timestamp>)."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder with mnist/ and imdb/ files (or FWBENCH_DATA_DIR)."),
    timeout: float = typer.Option(3600.0, help="Seconds per cell before it is killed."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted run folder."),
    repeats: Optional[int] = typer.Option(None, help="Runs per cell; repeats after the first are timing-only (default 1)."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic", help="Set each framework's determinism switches (recorded)."),
    memory_limit: Optional[float] = typer.Option(None, help="GiB of resident memory per cell before it is killed as oom (default: 75% of RAM)."),
) -> None:
    """Train every (task, backend, seed) cell, each in its own process."""
    from . import runner

    given = {k: v for k, v in (("tasks", tasks), ("backends", backends), ("profile", profile),
                               ("seeds", seeds), ("threads", threads), ("repeats", repeats),
                               ("deterministic", deterministic))
             if v is not None}
    profile = profile or "quick"
    if profile not in spec.PROFILES:
        raise FwbenchError(f"unknown profile {profile!r}; choose from {', '.join(spec.PROFILES)}")
    task_names = _csv(tasks, list(spec.TASKS), "tasks") or list(spec.TASKS)
    backend_names, known = _select_backends(backends)
    n_seeds = spec.PROFILE_INFO[profile].default_seeds if seeds is None else seeds
    if n_seeds < 1:
        raise FwbenchError(f"--seeds must be at least 1 (got {n_seeds})")
    cpus = environment.available_cpus()
    n_threads = len(cpus) if threads is None else threads
    if not 1 <= n_threads <= len(cpus):
        raise FwbenchError(f"--threads must be between 1 and {len(cpus)}, the cores available (got {n_threads})")
    if repeats is not None and repeats < 1:
        raise FwbenchError(f"--repeats must be at least 1 (got {repeats})")
    if timeout <= 0:
        raise FwbenchError("--timeout must be positive")
    import psutil

    total_gib = psutil.virtual_memory().total / 2**30
    if memory_limit is not None and not 0 < memory_limit <= total_gib:
        raise FwbenchError(f"--memory-limit must be between 0 and {total_gib:.1f} GiB, this machine's "
                           f"memory (got {memory_limit:g})")
    config = runner.RunConfig(tuple(task_names), tuple(backend_names), profile,
                              tuple(range(n_seeds)), n_threads, timeout,
                              str(data_dir) if data_dir else os.environ.get("FWBENCH_DATA_DIR"),
                              repeats=repeats or 1, deterministic=bool(deterministic),
                              memory_limit_gib=round(memory_limit or 0.75 * total_gib, 2))
    if resume is not None:
        run_dir = resume
        meta_path = run_dir / runner.RUN_JSON
        if not meta_path.is_file():
            raise FwbenchError(f"{run_dir} has no {runner.RUN_JSON}: nothing to resume")
        saved = json.loads(meta_path.read_text())["config"]
        saved_config = runner.RunConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in saved.items()})
        mismatched = [k for k in given if getattr(config, k) != getattr(saved_config, k)]
        if mismatched:
            raise FwbenchError(f"--resume: {', '.join(mismatched)} differ from {meta_path}; "
                               "drop those options to resume the run as it was configured")
        config = saved_config
        missing = [b for b in config.backends if b not in known or known[b].missing()]
        if missing:
            raise FwbenchError(f"--resume: backend(s) {', '.join(missing)} of that run are not installed")
    else:
        run_dir = out or runner.new_run_dir()
        if (run_dir / runner.RESULTS).exists():
            raise FwbenchError(f"{run_dir} already holds results; use --resume {run_dir} or another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FwbenchError(f"cannot write to {run_dir}: {exc.strerror or exc}") from None

    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".fwbench.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FwbenchError(f"another fwbench run is writing to {run_dir}") from None
    try:
        _run_with_progress(config, run_dir, known)
    finally:
        lock.release()


def _run_with_progress(config, run_dir: Path, known: dict[str, Backend]) -> None:
    from . import report, runner

    console.print(f"[bold]fwbench run[/] → {run_dir}  (profile {config.profile}, "
                  f"{len(config.tasks)} task(s) x {len(config.backends)} backend(s) x "
                  f"{len(config.seeds)} seed(s), {config.threads} thread(s))")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                        transient=False)
    ids: dict[str, int] = {}

    def on_event(e: runner.CellEvent) -> None:
        label = f"{e.cell.task:<6} {e.cell.backend:<18} seed {e.cell.seed}"
        if e.kind == "start":
            ids[e.cell.key] = progress.add_task(label, total=None, note="starting")
        elif e.kind == "progress":
            note = f"epoch {e.epoch}/{e.epochs}" + (" eval" if e.phase == "eval" else "")
            progress.update(ids[e.cell.key], total=e.steps, completed=e.step, note=note)
        else:
            r = e.record
            status = r["status"]
            if status != "ok":
                note = f"[red]{status}[/]"
            elif r.get("test_accuracy") is None:  # a timing-only repeat
                note = f"[green]ok[/] p50 {r['step_time_ms']['p50']:.2f} ms"
            else:
                note = f"[green]ok[/] acc {r['test_accuracy']:.4f}"
            task = progress.tasks[ids[e.cell.key]]
            progress.update(ids[e.cell.key], total=task.total or 1,
                            completed=task.total or 1 if status == "ok" else task.completed, note=note)

    try:
        with progress:
            runner.run(config, run_dir, known, on_event=on_event,
                       on_status=lambda s: console.print(f"[dim]{s}[/]"))
    except KeyboardInterrupt:
        print(f"interrupted; finished cells are kept. Resume with: fwbench run --resume {run_dir}",
              file=sys.stderr)
        raise typer.Exit(130)
    cells, _ = report.load_results(run_dir)
    rows = report.summary_rows(run_dir)
    shown = ("task", "backend", "ok", "test acc", "train s", "step p50 ms", "samples/s",
             "peak MiB", "status")
    t = Table(title=f"summary ({run_dir})")
    for c in shown:
        t.add_column(c, justify="left" if c in ("task", "backend", "status") else "right")
    for r in rows:
        t.add_row(*(r[c] for c in shown))
    console.print(t)
    for line in report.significance_lines(run_dir):
        console.print(line, highlight=False)
    bad = cells[cells["status"] != "ok"]
    for r in bad.itertuples():
        err.print(f"[red]{r.task}/{r.backend}/seed {r.seed}: {r.status}[/]: {r.error}")
    console.print(f"records: {run_dir / runner.RESULTS}; report: fwbench report {run_dir}")
    if len(bad):
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (holds results.jsonl)."),
    format: str = typer.Option("md,html", "--format", help="Comma-separated: md, html."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR)."),
) -> None:
    """Markdown and self-contained HTML reports of a run (read from its records only)."""
    from . import report

    formats = _csv(format, ["md", "html"], "formats")
    folder = out or run_dir
    text = report.markdown_report(run_dir)
    pages = {"md": lambda: text}
    if "html" in formats:
        from . import html_report

        pages["html"] = lambda: html_report.html_report(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in formats:
            target = folder / f"report.{fmt}"
            target.write_text(pages[fmt]())
            written.append(target)
    except OSError as exc:
        raise FwbenchError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    if "md" in formats:
        console.print(text, markup=False, highlight=False)
    for target in written:
        console.print(f"written: {target}", style="dim")


@app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., help="The baseline run folder."),
    run_b: Path = typer.Argument(..., help="The run folder to compare with it."),
    fail_on_regression: Optional[float] = typer.Option(None, help="Exit 1 when a significant step-time regression exceeds this percentage."),
) -> None:
    """Per (task, backend): change in step time, throughput, memory and accuracy, with significance."""
    from . import compare

    if fail_on_regression is not None and fail_on_regression < 0:
        raise FwbenchError("--fail-on-regression must be a percentage >= 0")
    changes = compare.compare(run_a, run_b)
    for diff in compare.environment_differences(run_a, run_b):
        err.print(f"[yellow]warning: environments differ: {diff}[/]", highlight=False)
    pct = lambda v: "–" if v is None else f"{v:+.1f}%"  # noqa: E731
    t = Table(title=f"{run_a} → {run_b}")
    for c in ("task", "backend", "step ms A", "step ms B", "step", "p", "throughput", "peak memory",
              "accuracy"):
        t.add_column(c, justify="left" if c in ("task", "backend") else "right")
    for c in changes:
        verdict = "" if c.p_value is None else (" [bold]significant[/]" if c.significant else " n.s.")
        t.add_row(c.task, c.backend, "–" if c.step_a is None else f"{c.step_a:.2f}",
                  "–" if c.step_b is None else f"{c.step_b:.2f}", pct(c.step_pct) + verdict,
                  "–" if c.p_value is None else f"{c.p_value:.1e}", pct(c.throughput_pct),
                  pct(c.memory_pct), "–" if c.accuracy_delta is None else f"{c.accuracy_delta:+.4f}")
    console.print(t)
    if fail_on_regression is not None:
        worst = [c for c in changes if c.regression_pct > fail_on_regression]
        for c in worst:
            err.print(f"regression: {c.task}/{c.backend} step time {c.step_pct:+.1f}% "
                      f"(p = {c.p_value:.1e}) exceeds {fail_on_regression:g}%")
        if worst:
            raise typer.Exit(1)


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder."),
    format: str = typer.Option("csv", "--format", help="csv | parquet | json"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR/export)."),
    tensorboard: Optional[Path] = typer.Option(None, help="Also write the per-epoch curves as TensorBoard scalars here."),
) -> None:
    """The records as tables (cells, epochs), and optionally TensorBoard scalars."""
    from . import export

    for path in export.export(run_dir, format, out or run_dir / "export"):
        console.print(f"wrote {path}")
    if tensorboard is not None:
        n = export.tensorboard(run_dir, tensorboard)
        console.print(f"wrote {n} scalars to {tensorboard} (tensorboard --logdir {tensorboard})")


@app.command("overhead")
def overhead_cmd(
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: all)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every installed base backend)."),
    steps: int = typer.Option(50, help="Steps per block."),
    blocks: int = typer.Option(5, help="Alternating blocks of harness loop and bare loop."),
    threads: Optional[int] = typer.Option(None, help="Threads (default: all available cores)."),
) -> None:
    """The harness's own cost: its training loop vs a bare loop on the same batches (target <= 1.02)."""
    import dataclasses
    import tempfile

    from . import data, runner

    task_names = _csv(tasks, list(spec.TASKS), "tasks") or list(spec.TASKS)
    names, known = _select_backends(backends)
    cpus = environment.available_cpus()
    n_threads = threads or len(cpus)
    if not 1 <= n_threads <= len(cpus) or steps < 2 or blocks < 1:
        raise FwbenchError(f"need 1 <= --threads <= {len(cpus)}, --steps >= 2, --blocks >= 1")
    t = Table(title=f"harness loop / bare loop, median of {blocks} blocks of {steps} steps")
    t.add_column("task")
    for n in names:
        t.add_column(n, justify="right")
    with tempfile.TemporaryDirectory() as tmp, console.status("measuring") as status:
        for task in task_names:
            path = data.prepare(spec.TASKS[task].dataset, "smoke")
            cells = []
            for name in names:
                status.update(f"{task} / {name}")
                cfg = {"mode": "overhead", "task": task, "backend": dataclasses.asdict(known[name]),
                       "threads": n_threads, "cpus": cpus[:n_threads], "data_path": str(path),
                       "steps": steps, "blocks": blocks}
                r = runner.run_worker(cfg, Path(tmp) / "log", 1800, lambda e: None)
                if r["status"] != "ok":
                    cells.append(f"[red]{r['status']}[/]")
                    continue

                cells.append(f"{r['ratio']:.3f} ({r['ratio_pregathered']:.3f})")
            t.add_row(task, *cells)
    console.print(t)
    console.print("ratio = wall time of the harness loop (per-step timer, loss check, progress) / "
                  "a bare loop that gathers each batch the same way: the harness's own overhead, "
                  "target <= 1.02. In brackets: against a bare loop over batches gathered "
                  "beforehand (adds the cost of gathering shuffled batches, which is in "
                  "train_time_s but not in step times).", style="dim")


@app.command("check")
def check_cmd(
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: all)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every installed one)."),
    seed: int = typer.Option(0, help="Seed of the canonical initial weights and batches."),
    threads: int = typer.Option(1, help="Threads per probe process."),
) -> None:
    """Parity proof: every backend computes the same logits, loss, gradients and 3 steps."""
    from . import parity

    task_names = _csv(tasks, list(spec.TASKS), "tasks") or list(spec.TASKS)
    known = discover()
    if backends is None:
        names = [n for n, b in known.items() if b.installed]
    else:
        names, known = _select_backends(backends)
    if not names:
        raise FwbenchError("no backend is installed")
    if not 1 <= threads <= len(environment.available_cpus()):
        raise FwbenchError(f"--threads must be between 1 and {len(environment.available_cpus())}")
    with console.status("probing") as status:
        rows = parity.check(known, names, task_names, seed=seed, threads=threads,
                            on_status=lambda s: status.update(s))
    t = Table(title=f"fwbench check (seed {seed}): max differences")
    for c, j in (("task", "left"), ("backend", "left"), ("init", "right"), ("logits abs", "right"),
                 ("loss rel", "right"), ("grad rel", "right"), ("3-step params rel", "right"),
                 ("result", "left")):
        t.add_column(c, justify=j)
    fmt = lambda v: "ref" if v is None else f"{v:.1e}"  # noqa: E731
    for r in rows:
        if r.error:
            t.add_row(r.task, r.backend, "", "", "", "", "", f"[red]{r.error}[/]")
            continue
        result = "[green]pass[/]" if r.ok else "[red]FAIL[/] " + "; ".join(r.breaches)
        t.add_row(r.task, r.backend, fmt(r.init), fmt(r.logits_abs), fmt(r.loss_rel),
                  fmt(r.grad_rel), fmt(r.params_rel), result)
    console.print(t)
    console.print("tolerances: init exact; logits abs <= 1e-4 and loss rel <= 1e-5 against the "
                  "NumPy reference; gradients <= 1e-4 and 3-step parameter updates <= 1e-4 (SGD) "
                  "/ 1e-3 (RMSprop, Adam) relative to the tensor's max magnitude, against "
                  f"{parity.REFERENCE_BACKEND} (ref).", style="dim")
    for (task, backend, metric), (tol, why) in parity.LOOSENED.items():
        console.print(f"loosened: {task}/{backend} {metric} <= {tol:g}: {why}")
    if not all(r.ok for r in rows):
        raise typer.Exit(1)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: bad input is one line on stderr and exit code 2; --debug shows tracebacks."""
    global DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        DEBUG = True
        args.remove("--debug")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="fwbench", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err.print("aborted")
        code = 130
    except typer.TyperException as exc:  # typer's usage errors (it vendors click since 0.20)
        print(f"fwbench: error: {exc.format_message()} (see fwbench --help)", file=sys.stderr)
        code = 2
    except FwbenchError as exc:
        if DEBUG:
            traceback.print_exc()
        print(f"fwbench: error: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:  # a bug in fwbench: still one line unless --debug
        if DEBUG:
            traceback.print_exc()
        print(f"fwbench: internal error: {type(exc).__name__}: {exc} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)

if __name__ == "__main__":
    main()
