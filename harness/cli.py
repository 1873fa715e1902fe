"""The ``fwbench`` command line. Input is validated here, once; the inside trusts it."""

from __future__ import annotations

import dataclasses
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
_ENVS_HELP = ("current (default): every worker in this interpreter | isolated: each backend's "
              "workers in its own env (fwbench envs create). A versioned backend (jax==0.7.1) "
              "always runs in its own env.")
_ENVS_DIR_HELP = "Where the per-backend envs live (default: FWBENCH_ENVS_DIR, else the user cache)."
_CREATE_ENVS_HELP = "Create the missing envs first (default: refuse, naming the command that creates them)."
_DEVICE_HELP = ("cpu (default) | cuda | cuda:N: one GPU per cell (CUDA_VISIBLE_DEVICES), float32 "
                "with TF32 off, no preallocation; a backend whose build has no CUDA is "
                "unsupported, the others run.")


def _device(value: Optional[str]):
    """--device, parsed and, for a GPU, checked here (one line, exit 2, where this machine
    has no usable GPU of that index); a warning line where NVML cannot be read."""
    from . import device

    dev = device.parse(value)
    warning = device.require_gpu(dev)
    if warning:
        print(f"fwbench: warning: {warning}", file=sys.stderr)
    return dev


def _device_preflight(dev, names, known: dict[str, Backend], pythons: dict[str, str]) -> dict[str, str]:
    """A GPU run, before anything runs: each backend's installed build asked (in a worker
    process, after its import) whether it can compute on ``dev``; one line per backend that
    cannot (its cells are then recorded ``unsupported``). Returns backend -> reason."""
    import tempfile

    from . import records, runner

    found: dict[str, str] = {}
    cpus = environment.available_cpus()[:1]
    with tempfile.TemporaryDirectory(prefix="fwbench-device-") as tmp:
        for name in dict.fromkeys(n.split("#")[0] for n in names):
            request = records.DeviceRequest(1, cpus, runner.backend_spec(known[name]), dev.name)
            outcome = runner.run_worker(request, Path(tmp) / f"{name}.log", 300, lambda e: None,
                                        python=pythons.get(name))
            why = (outcome.result.get("unsupported") if outcome.status == "ok"
                   else f"its import failed ({outcome.status}: {outcome.error})")
            if why:
                found[name] = why
                err.print(f"fwbench: {name}: --device {dev}: {why}; its cells are recorded "
                          "unsupported, the other backends run", style="yellow", highlight=False,
                          markup=False, soft_wrap=True)
    return found


def _discover() -> dict[str, Backend]:
    """The registered backends; a broken or clashing plugin is a warning line, not a failure."""
    return discover(warn=lambda m: print(f"fwbench: warning: {m}", file=sys.stderr))


_WARNED: set[str] = set()


def _task_names(value: Optional[str]) -> list[str]:
    """--tasks as task names ([] if not given): built-in and plugin tasks (harness/tasks.py).
    A broken or clashing task plugin is a warning line, printed once; a task named here that
    cannot run is the one-line error instead (saying why)."""
    from . import tasks

    for item in (value or "").split(","):
        if item.strip():
            tasks.get(item.strip())  # unknown, or a plugin's task that was skipped: why
    for message in tasks.registry().warnings:
        if message not in _WARNED:
            _WARNED.add(message)
            print(f"fwbench: warning: {message}", file=sys.stderr)
    return _csv(value, tasks.names(), "tasks")


def _all_task_names() -> list[str]:
    from . import tasks

    return tasks.names()


def _csv(value: Optional[str], allowed: list[str], what: str) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise FwbenchError(f"--{what} is empty; choose from {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise FwbenchError(f"unknown {what[:-1]} {item!r}; choose from {', '.join(allowed)}")
    return items if what == "backends" else list(dict.fromkeys(items))


def _with_copies(names: list[str], known: dict[str, Backend]) -> list[str]:
    """A backend named twice runs as independent labelled copies, ``torch``, ``torch#2``: an
    A/A test, interleaved like any other backends (``known`` gains the copies)."""
    out: list[str] = []
    for n in names:
        count = sum(1 for x in out if x.split("#")[0] == n)
        name = n if count == 0 else f"{n}#{count + 1}"
        if name != n:
            known[name] = dataclasses.replace(known[n], name=name)
        out.append(name)
    return out


def _backend_names(value: str, known: dict[str, Backend], allow_versions: bool = True) -> list[str]:
    """--backends as backend names: ``jax==0.7.1`` is the labelled backend ``jax@0.7.1`` (run
    in an env of its own), and a backend named twice runs as copies (``_with_copies``)."""
    from . import envs

    parsed = [envs.parse_backend(v) for v in value.split(",") if v.strip()]
    _csv(",".join(b for b, _ in parsed) if parsed else value, list(known), "backends")
    labels = []
    for base, version in parsed:
        name = envs.label(base, version)
        if version is not None:
            if not allow_versions:
                raise FwbenchError(f"{base}=={version}: a backend version runs in an env of its own, "
                                   "which this command does not use (fwbench run and fwbench check do)")
            known.setdefault(name, dataclasses.replace(known[base], name=name))
        labels.append(name)
    return _with_copies(labels, known)


def _with_envs(known: dict[str, Backend], root: Path, base_only: bool) -> list[str]:
    """The backends whose env (today's requirement set) exists under ``root``."""
    from . import envs

    sets = envs.backend_requirement_sets({n: b for n, b in known.items()
                                          if not (base_only and b.options)})
    return [n for n, rs in sets.items() if envs.find(rs, root) is not None]


def _select_backends(value: Optional[str], isolated: bool = False, root: Optional[Path] = None,
                     allow_versions: bool = False) -> tuple[list[str], dict[str, Backend]]:
    known = _discover()
    if value is None and isolated:
        from . import envs

        root = root or envs.envs_dir()
        names = _with_envs(known, root, base_only=True)
        if not names:
            raise FwbenchError(f"no backend env exists in {root}; create them with: fwbench envs create")
        return names, known
    if value is None:
        names = [n for n, b in known.items() if b.installed and not b.options]
        if not names:
            raise FwbenchError("no backend is installed; install one, e.g. pip install -e '.[torch]'")
        return names, known
    names = _backend_names(value, known, allow_versions)
    for n in names:
        if isolated or "@" in n:  # runs in its own env: need not be installed here
            continue
        missing = known[n].missing()
        if missing:
            raise FwbenchError(f"backend {n!r} is not installed (missing {', '.join(missing)}); "
                               f"pip install -e '.[{known[n].requires[0]}]'")
    return names, known


@app.command("list")
def list_cmd() -> None:
    """Tasks, profiles and backends (with installed versions and where each comes from)."""
    from . import tasks

    _task_names(None)  # the plugins' warnings
    from rich import box

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
    for name, backend in _discover().items():
        versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        b.add_row(name, versions, backend.source, backend.description)
    console.print(b)


@app.command("env")
def env_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The machine and software fwbench sees, and its hardware fingerprint."""
    from . import records

    info = {**environment.capture(), "hardware": records.to_json(environment.hardware_fingerprint())}
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
    envs_mode: Optional[str] = typer.Option(None, "--envs", help=_ENVS_HELP),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=_ENVS_DIR_HELP),
    create_envs: bool = typer.Option(False, "--create-envs", help=_CREATE_ENVS_HELP),
    executor: Optional[str] = typer.Option(None, "--executor", help="local (default): the cells one after another on this machine | ray: on the nodes of a Ray cluster, one cell per node at a time (pip install -e \".[ray]\"; docs/cluster.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --executor ray: the cluster (default auto: the one this machine belongs to), e.g. 10.0.0.1:6379."),
    ray_data: Optional[str] = typer.Option(None, "--ray-data", help="With --executor ray: object-store (default: the prepared data travel through Ray's object store) | shared (the nodes read them at the same path: FWBENCH_CACHE_DIR on shared storage); checksums verified on each node."),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
) -> None:
    """Train every (task, backend, seed) cell, each in its own process."""
    import psutil

    from . import executors, runner

    # Every option is validated before anything looks for backends, so a bad value gets
    # its own message even where no framework is installed.
    if profile is not None and profile not in spec.PROFILES:
        raise FwbenchError(f"unknown profile {profile!r}; choose from {', '.join(spec.PROFILES)}")
    task_names = _task_names(tasks) or None
    if seeds is not None and seeds < 1:
        raise FwbenchError(f"--seeds must be at least 1 (got {seeds})")
    if threads is not None and threads < 1:
        raise FwbenchError(f"--threads must be at least 1 (got {threads})")
    if repeats is not None and repeats < 0:
        raise FwbenchError(f"--repeats must be at least 0 (got {repeats})")
    if until_ci is not None and not 0 < until_ci < 100:
        raise FwbenchError(f"--until-ci must be a percentage between 0 and 100 (got {until_ci:g})")
    if max_processes is not None and max_processes < 1:
        raise FwbenchError(f"--max-processes must be at least 1 (got {max_processes})")
    if timeout is not None and timeout <= 0:
        raise FwbenchError("--timeout must be positive")
    if memory_limit is not None and memory_limit <= 0:
        raise FwbenchError(f"--memory-limit must be positive (got {memory_limit:g})")
    if denormals is not None and denormals not in ("flush", "framework-default"):
        raise FwbenchError(f"--denormals must be flush or framework-default (got {denormals!r})")
    _check_envs_mode(envs_mode)
    if force_resume and resume is None:
        raise FwbenchError("--force-resume goes with --resume RUN_DIR")
    if resume is not None and out is not None:
        raise FwbenchError("--resume continues RUN_DIR in place; drop --out")
    where = executor or _saved_executor(resume) or "local"
    if where not in executors.EXECUTORS:
        raise FwbenchError(f"unknown --executor {where!r}; choose from {', '.join(executors.EXECUTORS)}")
    if where != "ray" and (ray_address is not None or ray_data is not None):
        raise FwbenchError("--ray-address and --ray-data go with --executor ray")
    if ray_data is not None and ray_data not in ("object-store", "shared"):
        raise FwbenchError(f"--ray-data must be object-store or shared (got {ray_data!r})")
    dev = _device(device) if device is not None else None

    # Where the cells run decides the cores and memory a cell may have: the smallest node's.
    machine = executors.make(where, ray_address, ray_data == "shared")
    nodes = machine.nodes()
    cores = min(len(n.cpus) for n in nodes)
    what = "the cores available" if where == "local" else "the cores of the smallest node"
    if threads is not None and threads > cores:
        raise FwbenchError(f"--threads must be between 1 and {cores}, {what} (got {threads})")
    total_gib = (psutil.virtual_memory().total / 2**30 if where == "local"
                 else min(n.memory_gib for n in nodes))
    if memory_limit is not None and memory_limit > total_gib:
        mem = "this machine's memory" if where == "local" else "the smallest node's memory"
        raise FwbenchError(f"--memory-limit must be between 0 and {total_gib:.1f} GiB, {mem} "
                           f"(got {memory_limit:g})")

    # The options given, as the configuration stores them (compared on --resume).
    normalised = {
        "tasks": tuple(task_names) if task_names is not None else None,
        "profile": profile,
        "seeds": tuple(range(seeds)) if seeds is not None else None,
        "threads": threads,
        "timeout_s": timeout,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "repeats": repeats,
        "deterministic": deterministic,
        "memory_limit_gib": round(memory_limit, 2) if memory_limit is not None else None,
        "until_ci_pct": until_ci,
        "max_processes": max_processes,
        "allow_busy": allow_busy,
        "denormals": denormals,
        "envs": envs_mode,
        "executor": executor,
        "device": dev.name if dev is not None else None,
    }
    given = {k: v for k, v in normalised.items() if v is not None}

    if resume is not None:
        run_dir = resume
        if not (run_dir / runner.RUN_JSON).is_file():
            raise FwbenchError(f"{run_dir} has no {runner.RUN_JSON}: nothing to resume")
        known = _discover()
        if backends is not None:
            given["backends"] = tuple(_backend_names(backends, known))
        resolved: dict = {}

        def envs_for(saved: runner.RunConfig) -> dict:
            resolved.update(_resolve_envs(saved.backends, known, saved.envs == "isolated",
                                          envs_dir, create_envs))
            return resolved

        config = runner.prepare_resume(run_dir, given, known, force_resume, envs_for)
        env_map = resolved
    else:
        from . import envs as envs_mod

        backend_names, known = _select_backends(backends, envs_mode == "isolated",
                                                envs_mod.envs_dir(envs_dir), allow_versions=True)
        prof = spec.PROFILE_INFO[profile or "quick"]
        config = runner.RunConfig(**{  # the defaults, then what was given
            "tasks": tuple(_all_task_names()), "profile": prof.name,
            "seeds": tuple(range(prof.default_seeds)), "threads": cores, "timeout_s": 3600.0,
            "data_dir": os.environ.get("FWBENCH_DATA_DIR"), "repeats": prof.default_repeats,
            "memory_limit_gib": round(0.75 * total_gib, 2), **given,
            "backends": tuple(backend_names)})
        env_map = _resolve_envs(config.backends, known, config.envs == "isolated", envs_dir,
                                create_envs)
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
    small = [n for n in nodes if len(n.cpus) < config.threads]
    if small:
        raise FwbenchError(f"the run has {config.threads} thread(s) per cell but node "
                           f"{small[0].node} has {len(small[0].cpus)} core(s) available")

    from . import device as devices

    if devices.parse(config.device).gpu:  # one line per backend whose build has no CUDA
        if dev is None:  # --resume of a GPU run: this machine's GPU checked now
            _device(config.device)
        _device_preflight(devices.parse(config.device), config.backends, known,
                          {n: runner.env_python(e) for n, e in env_map.items()})

    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".fwbench.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FwbenchError(f"another fwbench run is writing to {run_dir}") from None
    try:
        _run_with_progress(config, run_dir, known, force_resume, env_map, machine)
    finally:
        lock.release()
        machine.close()


def _saved_executor(run_dir: Optional[Path]) -> Optional[str]:
    """The executor a run folder was started with (for --resume), if it says."""
    from . import records

    if run_dir is None or not (run_dir / records.RUN_JSON).is_file():
        return None
    return records.load_meta(run_dir).config.get("executor")


def _node_table(nodes: list) -> Table:
    """The nodes of a Ray run: id, host, cores, memory and hardware fingerprint."""
    from rich import box

    t = Table(title="nodes (one cell per node at a time)", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    for c in ("node", "host", "cores", "GiB", "hardware", "cpu"):
        t.add_column(c, no_wrap=c in ("node", "hardware"), overflow="fold")
    for n in nodes:
        t.add_row(n.node[:12], n.host, ",".join(map(str, n.cpus)), f"{n.memory_gib:.1f}",
                  n.hardware.id, n.hardware.cpu_model)
    return t


def _run_with_progress(config, run_dir: Path, known: dict[str, Backend], force_resume: bool,
                       env_map: Optional[dict] = None, machine=None) -> None:
    from . import report, runner

    console.print(f"[bold]fwbench run[/] → {run_dir}  (profile {config.profile}, "
                  f"{len(config.tasks)} task(s) x {len(config.backends)} backend(s) x "
                  f"{len(config.seeds)} seed(s), {config.threads} thread(s)"
                  + (f", on {config.device}" if config.device != "cpu" else "") + ")")
    _print_envs(env_map or {})
    if machine is not None and machine.name != "local":
        console.print(_node_table(machine.nodes()))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                        transient=False)
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

    try:
        with progress:
            runner.run(config, run_dir, known, on_event=on_event,
                       on_status=lambda s: console.print(f"[dim]{s}[/]"), force_resume=force_resume,
                       envs=env_map, executor=machine)
    except KeyboardInterrupt:
        print(f"interrupted; finished cells are kept. Resume with: fwbench run --resume {run_dir}",
              file=sys.stderr)
        raise typer.Exit(130)
    from rich.markup import escape

    from . import analysis, terminal, verdict

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
    console.print(f"records: {run_dir / runner.RESULTS}; report: fwbench report {run_dir}",
                  highlight=False)
    if a.failed:
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (holds results.jsonl)."),
    format: str = typer.Option("md,html", "--format", help="Comma-separated: md, html."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR)."),
    mixed_hardware: bool = typer.Option(False, "--mixed-hardware", help="Rank cells measured on different hardware fingerprints together, labelled (default: each fingerprint apart)."),
) -> None:
    """Markdown and self-contained HTML reports of a run (read from its records only)."""
    from . import analysis, report

    formats = _csv(format, ["md", "html"], "formats")
    folder = out or run_dir
    a = analysis.analyze(run_dir, mixed_hardware)  # once, for both pages
    text = report.markdown_report(a)
    pages = {"md": lambda: text}
    if "html" in formats:
        from . import html_report

        pages["html"] = lambda: html_report.html_report(a)
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
    mixed_hardware: bool = typer.Option(False, "--mixed-hardware", help="Also compare cells measured on different hardware fingerprints, labelled (default: they are not compared)."),
) -> None:
    """Per (task, backend): change in step time, throughput, memory and accuracy, with significance."""
    from rich.markup import escape

    from . import compare, records, terminal, verdict

    if fail_on_regression is not None and fail_on_regression < 0:
        raise FwbenchError("--fail-on-regression must be a percentage >= 0")
    a, b = records.load_run(run_a), records.load_run(run_b)
    threshold = fail_on_regression if fail_on_regression is not None else 0.0
    result = compare.compare(a, b, threshold, mixed_hardware)
    for m in result.hardware:
        err.print(escape(f"mixed hardware, compared as asked: {m.text()}" if result.mixed_hardware
                         else f"not compared, measured on different hardware: {m.text()} "
                              "(--mixed-hardware compares it, labelled)"),
                  style="yellow", highlight=False)
    for diff in compare.environment_differences(a, b):
        err.print(f"[yellow]warning: environments differ: {escape(diff)}[/]", highlight=False)
    for diff in compare.definition_differences(a, b):
        err.print(f"[yellow]warning: definitions differ: {escape(diff)}[/]", highlight=False)
    console.print(terminal.compare_table(result, f"A = {run_a}, B = {run_b}"))
    console.print(verdict.drift_line(result.stats), highlight=False, markup=False)
    console.print(verdict.compare_note(result.stats), style="dim", highlight=False, markup=False)
    console.print(terminal.compare_other_table(result))
    console.print(verdict.compare_summary(result), highlight=False, markup=False)
    for c in result.changes:  # regressions, improvements, inconclusive cells: one line each
        if c.verdict not in (compare.analysis.NO_CHANGE, compare.analysis.TOO_FEW):
            err.print(verdict.change_line(c, threshold), highlight=False, markup=False)
    if fail_on_regression is not None and result.regressions:  # never on inconclusive / too few
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder."),
    format: str = typer.Option("csv", "--format", help="csv | parquet | json"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR/export)."),
    tensorboard: Optional[Path] = typer.Option(None, help="Also write the per-epoch curves as TensorBoard scalars here."),
) -> None:
    """The records as tables (cells, epochs), and optionally TensorBoard scalars."""
    from . import export, records

    run = records.load_run(run_dir)  # read once, refused with one line if not a run folder
    for path in export.export(run, format, out or run_dir / "export"):
        console.print(f"wrote {path}")
    if tensorboard is not None:
        n = export.tensorboard(run, tensorboard)
        console.print(f"wrote {n} scalars to {tensorboard} (tensorboard --logdir {tensorboard})")


@app.command("overhead")
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
                                  "mindspore-pynative) for the target column."),
    data_dir: Optional[Path] = typer.Option(None, help="With --against: folder with mnist/ and "
                                            "imdb/ files (or FWBENCH_DATA_DIR)."),
    out: Optional[Path] = typer.Option(None, help="With --against: write every process's step "
                                       "times and the table as JSON here."),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
) -> None:
    """The harness's own cost: its training loop vs a bare loop on the same batches (target <= 1.02);
    with --against idiomatic: each adapter vs a hand-written loop of its framework."""
    import tempfile

    from . import data, records, runner
    from . import tasks as tasks_mod

    task_names = _task_names(tasks) or _all_task_names()
    if against is not None and against != "idiomatic":
        raise FwbenchError(f"--against {against!r}: the only reference is 'idiomatic'")
    if against is None and (rounds, profile, out, data_dir) != (None, None, None, None):
        raise FwbenchError("--rounds, --profile, --data-dir and --out need --against idiomatic")
    if against is not None and device not in (None, "cpu"):
        raise FwbenchError("--against idiomatic runs on the CPU only; drop --device")
    dev = _device(device)
    names, known = _select_backends(backends)
    cpus = environment.available_cpus()
    n_threads = threads or len(cpus)
    if against is not None:
        from . import idiomatic

        code = idiomatic.command(console, task_names, names, known, explicit=backends is not None,
                                 threads=n_threads, cpus=cpus, rounds=rounds, steps=steps,
                                 profile=profile, variants=variants, data_dir=data_dir, out=out)
        if code:
            raise typer.Exit(code)
        return
    steps = 50 if steps is None else steps
    if not 1 <= n_threads <= len(cpus) or steps < 2 or blocks < 1:
        raise FwbenchError(f"need 1 <= --threads <= {len(cpus)}, --steps >= 2, --blocks >= 1")
    t = Table(title=f"harness loop / bare loop, median of {blocks} blocks of {steps} steps"
                    + (f", on {dev}" if dev.gpu else ""))
    notes: list[str] = []
    t.add_column("task")
    for n in names:
        t.add_column(n, justify="right")
    with tempfile.TemporaryDirectory() as tmp, console.status("measuring") as status:
        for task in task_names:
            path = data.prepare(tasks_mod.get(task).dataset, "smoke")
            cells = []
            for name in names:
                status.update(f"{task} / {name}")
                request = records.OverheadRequest(
                    n_threads, cpus[:n_threads], runner.backend_spec(known[name]),
                    task=records.task_to_json(tasks_mod.get(task)), data_path=str(path),
                    steps=steps, blocks=blocks, device=dev.name)
                r = runner.run_worker(request, Path(tmp) / "log", 1800, lambda e: None)
                if r.status == "unsupported":
                    cells.append("[yellow]unsupported[/]")
                    notes.append(f"{task}/{name}: {r.error}")
                    continue
                if r.status != "ok":
                    cells.append(f"[red]{r.status}[/]")
                    continue
                cells.append(f"{r.result['ratio']:.3f} ({r.result['ratio_pregathered']:.3f})")
            t.add_row(task, *cells)
    console.print(t)
    for line in notes:
        console.print(line, style="yellow", highlight=False, markup=False)
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
    envs_mode: Optional[str] = typer.Option(None, "--envs", help=_ENVS_HELP),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=_ENVS_DIR_HELP),
    create_envs: bool = typer.Option(False, "--create-envs", help=_CREATE_ENVS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=_DEVICE_HELP),
) -> None:
    """Parity proof: every backend computes the same logits, loss, gradients and 3 steps."""
    from . import envs, parity, runner

    task_names = _task_names(tasks) or _all_task_names()
    _check_envs_mode(envs_mode)
    dev = _device(device)
    isolated = envs_mode == "isolated"
    root = envs.envs_dir(envs_dir)
    known = _discover()
    if backends is None:
        names = (_with_envs(known, root, base_only=False) if isolated
                 else [n for n, b in known.items() if b.installed])
    else:
        names, known = _select_backends(backends, isolated, root, allow_versions=True)
    if not names:
        raise FwbenchError(f"no backend env exists in {root}; create them with: fwbench envs create"
                           if isolated else "no backend is installed")
    if not 1 <= threads <= len(environment.available_cpus()):
        raise FwbenchError(f"--threads must be between 1 and {len(environment.available_cpus())}")
    env_map = _resolve_envs(names, known, isolated, envs_dir, create_envs)
    ref = parity.REFERENCE_BACKEND
    if isolated and ref not in env_map and ref in known:  # the reference from its env, if any
        found = envs.find(envs.requirement_set(known[ref]), root)
        if found is not None:
            env_map[ref] = found.info()
    _print_envs(env_map)
    pythons = {n: runner.env_python(e) for n, e in env_map.items()}
    with console.status("probing") as status:
        rows = parity.check(known, names, task_names, seed=seed, threads=threads,
                            on_status=lambda s: status.update(s), pythons=pythons,
                            device=dev.name)
    from rich import box

    t = Table(title=f"fwbench check (seed {seed}{', ' + dev.name if dev.gpu else ''}): max differences",
              box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True)
    for c, j in (("task", "left"), ("backend", "left"), ("init", "right"), ("logits", "right"),
                 ("loss", "right"), ("grad", "right"), ("3 steps", "right"), ("result", "left")):
        width = max(len(n) for n in names) if c == "backend" else 6 if j == "right" else None
        t.add_column(c, justify=j, no_wrap=True, min_width=width)

    def fmt(v: float | None) -> str:  # 6 characters at most: 80 columns fit
        if v is None:  # not compared: no reference probe (torch missing) for this task
            return "-"
        return "0" if v == 0 else f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e+")
    problems, unsupported = [], []
    for r in rows:
        if r.error:
            t.add_row(r.task, r.backend, "", "", "", "", "", "[red]error[/]")
            problems.append(f"{r.task}/{r.backend}: {r.error}")
            continue
        if r.unsupported:
            t.add_row(r.task, r.backend, "", "", "", "", "", "[yellow]unsupported[/]")
            unsupported.append(f"{r.task}/{r.backend}: {r.unsupported}")
            continue
        if not r.ok:
            problems.append(f"{r.task}/{r.backend}: " + "; ".join(r.breaches))
        t.add_row(r.task, r.backend, fmt(r.init), fmt(r.logits_abs), fmt(r.loss_rel),
                  fmt(r.grad_rel), fmt(r.params_rel), "[green]pass[/]" if r.ok else "[red]FAIL[/]")
    console.print(t)
    for line in problems:
        console.print(f"[red]{line}[/]", highlight=False)
    for line in unsupported:  # declared by the adapter before building: not a failure
        console.print(line, style="yellow", highlight=False, markup=False)
    console.print("columns: init = canonical round trip (exact); logits = max abs difference, "
                  "loss = relative difference, against the NumPy reference; grad = max "
                  "difference relative to the tensor's largest magnitude, against "
                  f"{parity.REFERENCE} (ground truth); 3 steps = L2 distance of the 3-step "
                  "parameter move relative to its L2 norm, per tensor, against the spec's "
                  "optimizer replayed in float64 on the backend's own gradients; probe images "
                  f"jittered by <= {parity.JITTER:g} (no max-pool ties).", style="dim")
    console.print("tolerances: init exact; logits abs <= 1e-4, loss rel <= 1e-5, gradients "
                  "<= 1e-4, 3-step moves <= 1e-4 (SGD) / 1e-3 (RMSprop, Adam).", style="dim")
    shown = {(r.task, r.backend) for r in rows if not (r.error or r.unsupported)}
    loosened: dict[tuple[str, str, float, str], list[str]] = {}
    for (task, backend, metric), (tol, why) in parity.LOOSENED.items():
        if (task, backend) in shown:
            loosened.setdefault((task, metric, tol, why), []).append(backend)
    for (task, metric, tol, why), names_ in loosened.items():
        console.print(f"loosened: {task} {metric} <= {tol:g} for {', '.join(names_)}: {why}",
                      highlight=False)
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
    if all(r.unsupported for r in rows):  # e.g. --device cuda with no backend able to use it
        raise FwbenchError("nothing was compared: every backend declared every task unsupported")


# ------------------------------------------------------------------ per-backend envs

envs_app = typer.Typer(no_args_is_help=True, help="Per-backend virtual environments (fwbench run --envs isolated).")
app.add_typer(envs_app, name="envs")


def _check_envs_mode(mode: Optional[str]) -> None:
    from . import envs

    if mode is not None and mode not in envs.MODES:
        raise FwbenchError(f"unknown --envs {mode!r}; choose from {', '.join(envs.MODES)}")


def _resolve_envs(names, known: dict[str, Backend], isolated: bool, envs_dir: Optional[Path],
                  create: bool) -> dict:
    """name -> records.EnvInfo of every backend that runs in its own env."""
    from . import envs

    root = envs.envs_dir(envs_dir)
    creator = (lambda missing: _create_envs(missing, known, root)) if create else None
    found = envs.resolve(names, known, root, isolated, creator, str(envs_dir) if envs_dir else None)
    return {n: e.info() for n, e in found.items()}


def _print_envs(env_map: dict) -> None:
    from rich.markup import escape

    for name, info in env_map.items():
        if "#" in name:
            continue
        pkgs = ", ".join(f"{k} {v}" for k, v in info.packages.items()
                         if k.lower() in environment.PACKAGES and k.lower() not in environment.RUNNER_ONLY)
        console.print(f"[dim]env {escape(name)}: {escape(info.path)}[/]", highlight=False, soft_wrap=True)
        console.print(f"[dim]  Python {info.python}; {escape(pkgs)}[/]", highlight=False)


def _create_envs(names: list[str], known: dict[str, Backend], root: Path) -> None:
    """Create the env of every backend in ``names`` that has none (one per requirement set)."""
    import time

    from rich.markup import escape

    from . import envs

    sets: dict[str, tuple] = {}
    for n in names:
        rs = envs.for_label(n, known)
        users = sets.setdefault(rs.key, (rs, []))[1]
        if n.split("#")[0] not in users:
            users.append(n.split("#")[0])
    for rs, users in sets.values():
        existing = envs.find(rs, root)
        if existing is not None:
            console.print(f"exists: {existing.name} ({', '.join(users)}): {existing.path}",
                          highlight=False, markup=False, soft_wrap=True)
            continue
        console.print(f"[bold]creating[/] {escape(rs.name)} for {escape(', '.join(users))} "
                      f"from {escape(rs.origin)} ({escape(' '.join(rs.lines))}) in {escape(str(root))}",
                      highlight=False, soft_wrap=True)
        t0 = time.monotonic()
        if console.is_terminal:
            with console.status(f"{rs.backend}: python -m venv") as status:
                def on_line(line: str, status=status, rs=rs) -> None:
                    note = envs.condense(line)
                    if note:
                        status.update(escape(f"{rs.backend}: pip: {note}"))
                env = envs.create(rs, root, on_line)
        else:
            def on_line(line: str) -> None:  # not a terminal (a log): one line per package
                note = envs.condense(line)
                if note and note.startswith(("collecting", "obtaining", "building editable",
                                             "installing", "installed")) and "started" not in note:
                    console.print(f"  pip: {note}", style="dim", markup=False, highlight=False,
                                  soft_wrap=True)
            env = envs.create(rs, root, on_line)
        size = (env.manifest or {}).get("size_bytes") or envs.disk_usage(env.path)
        console.print(f"created {env.name} in {time.monotonic() - t0:.0f} s, {envs.human_size(size)}: "
                      f"{envs.summary(env)}", highlight=False, markup=False, soft_wrap=True)


@envs_app.command("create")
def envs_create_cmd(
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends, NAME or NAME==VERSION (default: the five base backends)."),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=_ENVS_DIR_HELP),
) -> None:
    """Create each backend's env: a venv with its requirement file and fwbench's core (pip)."""
    from . import envs

    known = _discover()
    names = (_backend_names(backends, known) if backends is not None
             else [n for n, b in known.items() if b.source == "built-in" and not b.options])
    _create_envs(names, known, envs.envs_dir(envs_dir))


def _env_status(env, known: dict[str, Backend]) -> str:
    """current: today's requirement set of its backend; stale: an older one; incomplete."""
    from . import envs

    if not env.complete:
        return "incomplete"
    base, version = envs.split_label(env.manifest.get("backend", ""))
    if base not in known:
        return "stale"
    try:
        rs = envs.requirement_set(known[base], version)
    except FwbenchError:
        return "stale"
    return "current" if rs.key == env.key else "stale"


@envs_app.command("list")
def envs_list_cmd(
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=_ENVS_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The envs: name, backend, status, packages, size on disk, creation time, path and key."""
    from . import envs

    root = envs.envs_dir(envs_dir)
    known = _discover()
    rows = []
    for env in envs.all_envs(root):
        m = env.manifest or {}
        rows.append({"name": env.name, "backend": m.get("backend"), "status": _env_status(env, known),
                     "path": str(env.path), "key": env.key, "python": m.get("python"),
                     "packages": envs.summary(env), "size_bytes": envs.disk_usage(env.path),
                     "created": m.get("created"), "create_s": m.get("create_s")})
    if as_json:
        console.print_json(json.dumps({"envs_dir": str(root), "envs": rows}))
        return
    if not rows:
        console.print(f"no envs in {root}; create them with: fwbench envs create", highlight=False)
        return
    # 80 columns: one line per env (the name carries the backend and the key's head), its
    # packages indented below; --json has every field
    width = max(len(r["name"]) for r in rows)
    console.print(f"envs in {root}", highlight=False)
    console.print(f"{'name':<{width}}  {'status':<8} {'size':>10}  created", style="bold", highlight=False)
    for r in rows:
        created = (r["created"] or "?")[:10] + (f" ({r['create_s']:.0f} s)" if r["create_s"] is not None else "")
        console.print(f"{r['name']:<{width}}  {r['status']:<8} {envs.human_size(r['size_bytes']):>10}  "
                      f"{created}", highlight=False)
        console.print(f"  {r['packages']}", style="dim", highlight=False, markup=False)
    total = sum(r["size_bytes"] for r in rows)
    console.print(f"{len(rows)} env(s), {envs.human_size(total)} in {root}", highlight=False)


@envs_app.command("remove")
def envs_remove_cmd(
    backends: Optional[str] = typer.Option(None, help="Comma-separated backends, NAME or NAME==VERSION: remove their current env."),
    all_envs: bool = typer.Option(False, "--all", help="Remove every env."),
    stale: bool = typer.Option(False, "--stale", help="Remove the envs no backend's requirement set uses any more (and incomplete ones)."),
    envs_dir: Optional[Path] = typer.Option(None, "--envs-dir", help=_ENVS_DIR_HELP),
) -> None:
    """Remove envs (--backends, --stale or --all)."""
    from . import envs

    if sum([backends is not None, all_envs, stale]) != 1:
        raise FwbenchError("say which envs to remove: --backends NAMES, --stale or --all")
    root = envs.envs_dir(envs_dir)
    known = _discover()
    if backends is not None:
        targets, seen = [], set()
        for n in _backend_names(backends, known):
            rs = envs.for_label(n, known)
            if rs.name in seen:
                continue
            seen.add(rs.name)
            env = envs.open_env(root / rs.name)
            if envs.is_env_folder(env.path):
                targets.append(env)
            else:
                console.print(f"no env for {n} in {root}", highlight=False)
    else:
        targets = [e for e in envs.all_envs(root) if all_envs or _env_status(e, known) != "current"]
    for env in targets:
        size = envs.disk_usage(env.path)
        envs.remove(env)
        console.print(f"removed {env.name} ({envs.human_size(size)})", highlight=False)
    if not targets and backends is None:
        console.print(f"nothing to remove in {root}", highlight=False)


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
