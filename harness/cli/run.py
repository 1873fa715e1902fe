"""``fwbench run``: parse the options, build the ``RunConfig``, call the runner, print."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fwbench.harness import records
from fwbench.harness.adapter import Backend
from fwbench.harness.cli.common import (CREATE_ENVS_HELP, DEVICE_HELP, ENVS_DIR_HELP, ENVS_HELP,
                                        all_task_names, backend_names, device_option, discover_backends,
                                        print_envs, resolve_envs, select_backends, task_names,
                                        app, console, err)
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import device as devices
from fwbench.harness.report import analysis, terminal, verdict
from fwbench.harness.run import envs, executors, resume, runner, signals

_EXECUTOR_HELP = ("local (default): the cells one after another on this machine | ray: on the "
                  "nodes of a Ray cluster, one cell per node at a time (pip install -e \".[ray]\"; "
                  "docs/cluster.md).")


@app.command("run", short_help="Train every (task, backend, seed) cell in its own process.")
def run_cmd(
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: all)."),
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends (default: every installed base backend)."),
    profile: Optional[str] = typer.Option(None, help="smoke | quick (default) | full"),
    seeds: Optional[int] = typer.Option(None, help="Seeds per cell, 0..K-1 (default: the profile's)."),
    threads: Optional[int] = typer.Option(None, help="Threads per cell (default: all available cores)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/<timestamp>)."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder with mnist/ and imdb/ files (or FWBENCH_DATA_DIR)."),
    timeout: Optional[float] = typer.Option(None, help="Seconds per cell before it is killed (default 3600)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted run folder."),
    force_resume: bool = typer.Option(False, "--force-resume", help="With --resume: accept a changed environment (recorded in run.json)."),
    repeats: Optional[int] = typer.Option(None, help="Timing-only processes per (task, backend) after the training runs (default: smoke 0, quick 6, full 7)."),
    until_ci: Optional[float] = typer.Option(None, help="Adaptive: add interleaved repeats until the 95% CI of every cell's median step time is within +-PCT% (or --max-processes)."),
    max_processes: Optional[int] = typer.Option(None, help="Cap of processes per (task, backend) for --until-ci (default 20)."),
    allow_busy: Optional[bool] = typer.Option(None, "--allow-busy", help="Run even when other processes use the run's cores (recorded)."),
    denormals: Optional[str] = typer.Option(None, help="flush (default: every framework flushes denormal floats to zero) | framework-default (each as shipped); probed and recorded per cell."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic", help="Set each framework's determinism switches (recorded)."),
    memory_limit: Optional[float] = typer.Option(None, help="GiB of resident memory per cell before it is killed as oom (default: 75% of RAM)."),
    envs_mode: Optional[str] = typer.Option(None, "--envs", help=ENVS_HELP),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=ENVS_DIR_HELP),
    create_envs: bool = typer.Option(False, "--create-envs", help=CREATE_ENVS_HELP),
    executor: Optional[str] = typer.Option(None, "--executor", help=_EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --executor ray: the cluster (default auto: the one this machine belongs to), e.g. 10.0.0.1:6379."),
    ray_data: Optional[str] = typer.Option(None, "--ray-data", help="With --executor ray: object-store (default: the prepared data travel through Ray's object store) | shared (the nodes read them at the same path: FWBENCH_CACHE_DIR on shared storage); checksums verified on each node."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
) -> None:
    """Train every (task, backend, seed) cell, each in its own process."""
    for note in signals.install():  # SIGINT, SIGTERM and SIGHUP stop a run cleanly
        err.print(f"fwbench: {note}", style="yellow", highlight=False, markup=False)
    # Every option is checked (RunOptions) before anything looks for backends, so a bad value
    # gets its own message even where no framework is installed.
    options = records.RunOptions(
        tasks=tuple(task_names(tasks)) or None, profile=profile, seeds=seeds, threads=threads,
        timeout_s=timeout, data_dir=str(data_dir) if data_dir is not None else None,
        repeats=repeats, deterministic=deterministic, memory_limit_gib=memory_limit,
        until_ci_pct=until_ci, max_processes=max_processes, allow_busy=allow_busy,
        denormals=denormals, envs=envs_mode, executor=executor,
        device=devices.parse(device).name if device is not None else None)
    if force_resume and resume is None:
        raise FwbenchError("--force-resume goes with --resume RUN_DIR")
    if resume is not None and out is not None:
        raise FwbenchError("--resume continues RUN_DIR in place; drop --out")
    where = executor or _saved_executor(resume) or "local"
    if where not in records.EXECUTORS:
        raise FwbenchError(f"unknown --executor {where!r}; choose from {', '.join(records.EXECUTORS)}")
    if where != "ray" and (ray_address is not None or ray_data is not None):
        raise FwbenchError("--ray-address and --ray-data go with --executor ray")
    if ray_data is not None and ray_data not in ("object-store", "shared"):
        raise FwbenchError(f"--ray-data must be object-store or shared (got {ray_data!r})")
    if device is not None:
        device_option(device)  # a GPU this machine does not have: one line here
    # Where the cells run decides the cores and memory a cell may have: the smallest node's.
    machine = executors.make(where, ray_address, ray_data == "shared")
    nodes = machine.nodes()
    cores = min(len(n.cpus) for n in nodes)
    memory = (_total_memory_gib() if where == "local" else min(n.memory_gib for n in nodes))
    records.check_fits(options.threads, options.memory_limit_gib, cores, memory, where)
    if resume is not None:
        config, known, env_map, run_dir = _resumed(resume, options, backends, force_resume,
                                                   envs_dir, create_envs)
    else:
        config, known, env_map, run_dir = _new_run(options, backends, out, cores, memory, where,
                                                   envs_dir, create_envs)
    _check_writable(run_dir, nodes, config.threads)
    if devices.parse(config.device).gpu:  # one line per backend whose build has no CUDA
        if device is None:  # --resume of a GPU run: this machine's GPU checked now
            device_option(config.device)
        device_preflight_lines(devices.parse(config.device), config.backends, known,
                               {n: runner.env_python(e) for n, e in env_map.items()}, machine)
    try:
        _locked(run_dir, lambda: _run_with_progress(config, run_dir, known, force_resume,
                                                    env_map, machine), machine)
    except KeyboardInterrupt as exc:  # signals.Interrupted, or Ctrl-C without its handler
        with signals.deferred():  # a second signal does not skip the hint
            print(f"interrupted; finished cells are kept. Resume with: fwbench run --resume "
                  f"{run_dir}", file=sys.stderr, flush=True)
        raise typer.Exit(getattr(exc, "exit_code", 130)) from None


def _total_memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def _new_run(options: records.RunOptions, backends: Optional[str], out: Optional[Path],
             cores: int, memory: float, where: str, envs_dir: Optional[Path], create_envs: bool):
    """A new run's configuration (the defaults, then the options), its backends, envs and
    folder."""
    chosen, known = select_backends(backends, options.envs == "isolated", envs.envs_dir(envs_dir),
                                    allow_versions=True)
    config = records.RunConfig.from_options(
        options, tasks=tuple(all_task_names()), backends=tuple(chosen), cores=cores,
        memory_gib=memory, where=where, data_dir=os.environ.get("FWBENCH_DATA_DIR"))
    env_map = resolve_envs(config.backends, known, config.isolated, envs_dir, create_envs)
    run_dir = out or runner.new_run_dir()
    if (run_dir / records.RESULTS).exists():
        raise FwbenchError(f"{run_dir} already holds results; use --resume {run_dir} or another --out")
    return config, known, env_map, run_dir


def _resumed(run_dir: Path, options: records.RunOptions, backends: Optional[str],
             force_resume: bool, envs_dir: Optional[Path], create_envs: bool):
    """The saved configuration of ``run_dir`` (every option given must agree with it), its
    backends and envs."""
    if not (run_dir / records.RUN_JSON).is_file():
        raise FwbenchError(f"{run_dir} has no {records.RUN_JSON}: nothing to resume")
    known = discover_backends()
    given = options.given()
    if backends is not None:
        given["backends"] = tuple(backend_names(backends, known))
    resolved: dict = {}

    def envs_for(saved: records.RunConfig) -> dict:
        resolved.update(resolve_envs(saved.backends, known, saved.isolated, envs_dir,
                                      create_envs))
        return resolved

    config = resume.prepare_resume(run_dir, given, known, envs_for)
    return config, known, resolved, run_dir


def _check_writable(run_dir: Path, nodes: list, threads: int) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise FwbenchError(f"cannot write to {run_dir}: {exc.strerror or exc}") from None
    small = [n for n in nodes if len(n.cpus) < threads]
    if small:
        raise FwbenchError(f"the run has {threads} thread(s) per cell but node "
                           f"{small[0].node} has {len(small[0].cpus)} core(s) available")


def device_preflight_lines(dev, names, known: dict[str, Backend], pythons: dict[str, str],
                           machine: executors.Executor | None = None) -> dict[str, str]:
    """One line per backend whose build cannot compute on ``dev`` (its cells are then
    recorded unsupported; asked where the cells run); returns backend -> reason."""
    found = runner.device_preflight(dev, list(names), known, pythons, machine)
    for name, why in found.items():
        err.print(f"fwbench: {name}: --device {dev}: {why}; its cells are recorded "
                  "unsupported, the other backends run", style="yellow", highlight=False,
                  markup=False, soft_wrap=True)
    return found


def _locked(run_dir: Path, work, machine) -> None:
    """``work()`` holding the run folder's lock (one writer), then the executor closed."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".fwbench.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FwbenchError(f"another fwbench run is writing to {run_dir}") from None
    try:
        work()
    finally:
        with signals.deferred():
            lock.release()
            machine.close()


def _saved_executor(run_dir: Optional[Path]) -> Optional[str]:
    """The executor a run folder was started with (for --resume), if it says."""
    if run_dir is None or not (run_dir / records.RUN_JSON).is_file():
        return None
    return records.load_meta(run_dir).config.executor


def _node_table(nodes: list) -> Table:
    """The nodes of a Ray run: id, host, cores, memory and hardware fingerprint."""
    t = Table(title="nodes (one cell per node at a time)", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    for c in ("node", "host", "cores", "GiB", "hardware", "cpu"):
        t.add_column(c, no_wrap=c in ("node", "hardware"), overflow="fold")
    for n in nodes:
        t.add_row(n.node[:12], n.host, ",".join(map(str, n.cpus)), f"{n.memory_gib:.1f}",
                  n.hardware.id, n.hardware.cpu_model)
    return t


def _run_with_progress(config: records.RunConfig, run_dir: Path, known: dict[str, Backend],
                       force_resume: bool, env_map: Optional[dict] = None, machine=None) -> None:
    console.print(f"[bold]fwbench run[/] → {run_dir}  (profile {config.profile}, "
                  f"{len(config.tasks)} task(s) x {len(config.backends)} backend(s) x "
                  f"{len(config.seeds)} seed(s), {config.threads} thread(s)"
                  + (f", on {config.device}" if config.device != "cpu" else "") + ")")
    print_envs(env_map or {})
    if machine is not None and machine.name != "local":
        console.print(_node_table(machine.nodes()))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                        transient=False, refresh_per_second=2)  # the runner shares the cores
    with progress:
        runner.run(config, run_dir, known, on_event=_progress_events(progress, config),
                   on_status=lambda s: console.print(f"[dim]{s}[/]"), force_resume=force_resume,
                   envs=env_map, executor=machine)
    _print_summary(run_dir)


def _progress_events(progress: Progress, config: records.RunConfig):
    """The runner's cell events as progress bars: one line per cell."""
    ids: dict[str, int] = {}
    task_w = max((len(t) for t in config.tasks), default=6)

    def on_event(e: runner.CellEvent) -> None:
        label = f"{e.cell.task:<{task_w}} {e.cell.backend:<18} " + (
            f"repeat {e.cell.repeat}" if e.cell.repeat else f"seed {e.cell.seed}")
        if e.kind == "start":
            ids[e.cell.key] = progress.add_task(label, total=None, note="starting")
        elif e.kind == "progress":
            note = f"epoch {e.epoch}/{e.epochs}" + (" eval" if e.phase == "eval" else "")
            progress.update(ids[e.cell.key], total=e.steps, completed=e.step, note=note)
        else:
            r = e.record
            status = r.status
            if status != "ok":
                note = f"[red]{status}[/]"
            elif r.test_accuracy is None:  # a timing-only repeat
                note = f"[green]ok[/] p50 {r.step_time_ms.p50:.2f} ms"
            else:
                note = f"[green]ok[/] acc {r.test_accuracy:.4f}"
            task = progress.tasks[ids[e.cell.key]]
            progress.update(ids[e.cell.key], total=task.total or 1,
                            completed=task.total or 1 if status == "ok" else task.completed, note=note)

    return on_event


def _print_summary(run_dir: Path) -> None:
    """The summary table, the verdicts and one line per failed or unsupported cell."""
    a = analysis.analyze(run_dir)  # once: the table and the sentences below both read it
    console.print(terminal.summary_table(a, f"summary ({run_dir})"))
    console.print(terminal.SUMMARY_NOTE, style="dim", highlight=False)
    pairs = verdict.significance_lines(a)
    for line in (verdict.hardware_warnings(a) + verdict.flag_lines(a)
                 + ([verdict.pairs_head(a)] + pairs if pairs else [])):
        console.print(line, highlight=False, markup=False)
    for f in a.failed:
        err.print(f"[red]{escape(f'{f.task}/{f.backend}/seed {f.seed}: {f.status}')}[/]: "
                  f"{escape(f.error or 'no error message')}", highlight=False)
    for f in a.unsupported:  # the adapter said so before training: not a failure
        err.print(f"[yellow]{escape(f'{f.task}/{f.backend}: unsupported')}[/]: "
                  f"{escape(f.error or '')}", highlight=False)
    console.print(f"records: {run_dir / records.RESULTS}; report: fwbench report {run_dir}",
                  highlight=False)
    if a.failed:
        raise typer.Exit(1)
