"""The runner: plan cells, prepare data, run each cell in its own worker process.

One cell = (task, backend, seed, repeat). Cells run one after another (nothing else
competes for the cores), in an order interleaved across backends so drift hits all of them
alike. Each worker gets a timeout and a memory limit, runs in a process group of its own
that dies with the runner (see ``supervise`` and ``watchdog``), its stderr goes to
``logs/<cell>.log``, and its record is appended to ``results.jsonl`` the moment the cell
ends (write, flush, fsync). Where the workers run is the executor's business
(``executors``); what ``run.json`` holds and how a run resumes is ``resume``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fwbench.harness import data, records, spec, stats
from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import tasks as task_registry
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import device, environment
from fwbench.harness.records import RESULTS, RUN_JSON, Cell, CellRecord, RunConfig, RunMeta  # noqa: F401 - re-exported
from fwbench.harness.run import resume, signals
from fwbench.harness.run.executors import Done, Executor, Job, LocalExecutor


@dataclass
class CellEvent:
    """What the UI sees of a running cell."""

    cell: Cell
    kind: str  # "start" | "progress" | "end"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    phase: str = "train"
    record: CellRecord | None = None


def plan(config: RunConfig) -> list[list[Cell]]:
    """Rounds of cells: round 0 trains every (seed, task, backend); round r >= 1 is timing
    repeat r of every (task, backend) (seed 0). Backends innermost: every backend runs
    before any runs again, so the machine's drift over the run hits all backends alike."""
    first = [Cell(t, b, s) for s in config.seeds for t in config.tasks for b in config.backends]
    return [first] + [[Cell(t, b, 0, r) for t in config.tasks for b in config.backends]
                      for r in range(1, config.repeats + 1)]


def backend_spec(backend: Backend, config: RunConfig | None = None, seed: int = 0) -> records.BackendSpec:
    options = dict(backend.options)
    if config is not None:  # the cell's seed seeds its framework's random stream (dropout masks)
        options["seed"] = seed
        if config.deterministic:
            options["deterministic"] = True
    return records.BackendSpec(backend.name, backend.adapter, tuple(backend.requires), options,
                               backend.description, backend.source)


def device_preflight(dev: device.Device, names: list[str], known: dict[str, Backend],
                     pythons: dict[str, str], executor: Executor | None = None) -> dict[str, str]:
    """A GPU run, before anything runs: each backend's installed build asked (in a worker
    process on the executor's first node, after its import) whether it can compute on
    ``dev``. Returns backend -> why not, for each that cannot (its cells are then recorded
    ``unsupported``)."""
    import tempfile

    from fwbench.harness.catalog import labels

    executor = executor or LocalExecutor()
    node = executor.nodes()[0].node
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fwbench-device-") as tmp:
        jobs = [Job(f"device-{name}", records.DeviceRequest(1, [], backend_spec(known[name]), dev.name),
                    Path(tmp) / f"{name}.log", 300, python=pythons.get(name), node=node)
                for name in dict.fromkeys(labels.uncopied(n) for n in names)]
        for done in executor.run(jobs):
            outcome, name = done.outcome, done.job.key.removeprefix("device-")
            why = (outcome.result.get("unsupported") if outcome.status == "ok"
                   else f"its import failed ({outcome.status}: {outcome.error})")
            if why:
                found[name] = why
    return found


def env_python(env: records.EnvInfo) -> str:
    """The interpreter of a backend's env."""
    return str(Path(env.path) / "bin" / "python")


def new_run_dir(base: Path = Path("runs")) -> Path:
    return base / datetime.now().strftime("%Y%m%d-%H%M%S")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(t: float) -> str:
    """A record's start or end (epoch seconds, the clock of the machine that ran the cell)
    in UTC, ISO 8601, to the millisecond: cells of one node never seem to overlap."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------ the run


@dataclass
class _Run:
    """One run in progress: what every round needs (the runner's own state)."""

    config: RunConfig
    run_dir: Path
    backends: dict[str, Backend]
    meta: RunMeta
    executor: Executor
    tasks: dict[str, spec.Task]  # the run's own definitions, parsed once
    envs: dict[str, records.EnvInfo]
    on_event: Callable[[CellEvent], None]
    on_status: Callable[[str], None]
    prepared: dict[str, Path] = field(default_factory=dict)  # data set -> prepared file
    recorded: set[tuple[str, str, int, int]] = field(default_factory=set)
    out: list[CellRecord] = field(default_factory=list)  # this invocation's records

    def save(self) -> None:
        with signals.deferred():
            records.write_meta(self.run_dir, self.meta)


def run(config: RunConfig, run_dir: Path, backends: dict[str, Backend],
        on_event: Callable[[CellEvent], None] = lambda e: None,
        on_status: Callable[[str], None] = lambda s: None,
        force_resume: bool = False,
        envs: dict[str, records.EnvInfo] | None = None,
        executor: Executor | None = None) -> list[CellRecord]:
    """Run every planned cell not already in ``run_dir``; returns this run's records.
    ``envs``: the env of each backend whose workers run in one (its ``bin/python``);
    ``executor``: where the worker processes run (``executors``; default: this machine, one
    after another). This process stays the only writer of results.jsonl and run.json."""
    envs = envs or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    meta, done = _open(config, run_dir, backends, envs, force_resume)
    tasks = {t: meta.task(t) or task_registry.get(t) for t in config.tasks}
    r = _Run(config, run_dir, backends, meta, executor or LocalExecutor(), tasks, envs,
             on_event, on_status, recorded=done)
    # Data first: a missing or corrupted file is the user's to fix, whatever the machine does
    # (and decoding it must not run during the noise probe or a cell).
    for dataset in sorted({task.dataset for task in tasks.values()}):
        on_status(f"preparing {dataset} ({config.profile} profile)")
        r.prepared[dataset] = data.prepare(task_registry.dataset(dataset), config.profile,
                                           config.data_dir)
    r.executor.start(run_dir, r.prepared)
    _noise_guard(config, r.executor, meta, on_status)
    r.save()
    if meta.calibration is None:
        _calibrate(r)
    rounds = plan(config)
    for number, cells in enumerate(rounds):
        _run_round(r, number, [c for c in cells if c.ident not in r.recorded])
    if config.until_ci_pct is not None:
        number = len(rounds)
        while pending := _adaptive_pending(config, records.read_records(run_dir / RESULTS)):
            _run_round(r, number, [Cell(t, b, 0, number) for t, b in pending])
            number += 1
    _record_stopping(config, meta, records.read_records(run_dir / RESULTS))
    r.save()
    return r.out


def _open(config: RunConfig, run_dir: Path, backends: dict[str, Backend],
          envs: dict[str, records.EnvInfo], force_resume: bool
          ) -> tuple[RunMeta, set[tuple[str, str, int, int]]]:
    """run.json of a new run, or of the run being resumed (the environment checked, the
    resumption recorded), and the cells already recorded."""
    results = run_dir / RESULTS
    torn = records.cut_torn_line(results)
    done = {r.ident for r in records.read_records(results)}
    if not done:  # a new run (or one that died before its first record): fresh metadata
        meta = resume.build_meta(config, backends, envs)
        if torn is not None:
            meta.resumed.append(records.Resumption(_now(), False, [], torn.name))
    else:
        meta = records.load_meta(run_dir)
        diffs = resume.accepted_differences(meta, resume.build_meta(config, backends, envs),
                                            force_resume)
        meta.resumed.append(records.Resumption(_now(), bool(diffs), diffs,
                                               torn.name if torn else None))
    records.write_meta(run_dir, meta)
    return meta, done


def _calibrate(r: _Run) -> None:
    """The float32 GEMM peak (and the idle power) on the first node, once per run."""
    config = r.config
    r.on_status(f"calibrating float32 GEMM peak on {config.threads} thread(s)")
    job = Job("calibration", records.CalibrateRequest(config.threads, [], _NUMPY, config.device),
              r.run_dir / "logs" / "calibration.log", 300, node=r.executor.nodes()[0].node)
    (found,) = r.executor.run([job])
    result = found.outcome.result
    r.meta.calibration = records.Calibration(
        result.get("gemm_peak_gflops"), config.threads, result.get("blas") or [], found.node,
        result.get("idle_w"), result.get("idle_source"), result.get("idle_reason"),
        config.device, records.Gpu(**result["gpu"]) if result.get("gpu") else None)
    r.save()


_NUMPY = records.BackendSpec("numpy", "")  # calibration and drift probes import no framework


def _energy(record: CellRecord, calibration: records.Calibration | None,
            batch: int) -> tuple[float | None, float | None]:
    """(energy_j, energy_j_per_sample) of a finished cell: its training phases' counter minus
    the run's idle baseline over the same time (``device.energy_per_sample``); the record's
    ``energy`` gets the baseline (or why there is none)."""
    if record.energy is None or not record.ok:
        return None, None
    idle = calibration.idle_w if calibration is not None else None
    record.energy.idle_w = idle
    if record.energy.train_j is not None and idle is None and record.energy.reason is None:
        record.energy.reason = ("no idle baseline: " + (calibration.idle_reason or "not measured")
                                if calibration is not None else "no idle baseline (no calibration)")
    samples = record.steps * batch if record.steps else None
    return device.energy_per_sample(record.energy.train_j, idle, record.train_time_s, samples)


SECOND_LOOK_S = 2.0  # how long the busy check looks again before it refuses a run


def _busy_figures(busy: Any) -> dict[str, Any]:
    """A ``noise.Busy``'s figures as ``NoiseAtStart`` fields."""
    return {k: v for k, v in records.to_json(busy).items() if k != "busy"}


def _noise_guard(config: RunConfig, executor: Executor, meta: RunMeta,
                 on_status: Callable[[str], None]) -> None:
    """Watch the run's cores for 1 s (on every node): refuse a machine busy then and again
    over the next SECOND_LOOK_S (smoke runs and --allow-busy only warn, after the first
    look), and record what was seen last. The second look lets a blip through (a short command that
    overlapped the first second), not a load that lasts."""
    warn_only = config.allow_busy or config.profile == "smoke"
    seen = executor.noise(config.threads, 1.0)
    looks = 1
    if any(b.busy for b in seen.values()) and not warn_only:
        seen, looks = executor.noise(config.threads, SECOND_LOOK_S), 2
    if len(seen) == 1:
        (busy,) = seen.values()
        found = records.NoiseAtStart(busy=busy.busy, allowed=config.allow_busy, text=busy.text(),
                                     looks=looks, **_busy_figures(busy))
    else:
        found = records.NoiseAtStart(
            busy=any(b.busy for b in seen.values()), allowed=config.allow_busy, looks=looks,
            text="; ".join(f"node {n[:12]}: {b.text()}" for n, b in seen.items()),
            nodes={n: {**records.to_json(b), "busy": b.busy} for n, b in seen.items()})
    meta.noise_at_start = found
    if not found.busy:
        return
    where = "machine" if len(seen) == 1 else "cluster"
    again = f" (and again over the next {SECOND_LOOK_S:g} s)" if looks == 2 else ""
    message = f"the {where} is busy{again}: {found.text}"
    if warn_only:
        on_status(f"warning: {message}; timings will be noisy")
        return
    raise FwbenchError(f"{message}; timings would measure the other load. Wait, or run with "
                       "--allow-busy (recorded in run.json)")


def _figures(rs: list[CellRecord], task: str, backend: str) -> list[float]:
    out = []
    for r in rs:
        if r.task == task and r.backend == backend and r.ok:
            f = stats.process_figure(r.step_samples_ms)
            if f is not None:
                out.append(f)
    return out


def _adaptive_pending(config: RunConfig, rs: list[CellRecord]) -> list[tuple[str, str]]:
    """(task, backend)s whose CI of the median is still wider than --until-ci, below the cap,
    and whose last round did not fail."""
    pending = []
    for t in config.tasks:
        for b in config.backends:
            mine = [r for r in rs if r.task == t and r.backend == b]
            if len(mine) >= config.max_processes or (mine and not mine[-1].ok):
                continue
            if not stats.ci_width_ok(_figures(rs, t, b), config.until_ci_pct / 100):
                pending.append((t, b))
    return pending


def _record_stopping(config: RunConfig, meta: RunMeta, rs: list[CellRecord]) -> None:
    """run.json: per (task, backend), how many processes and why no more."""
    for t in config.tasks:
        for b in config.backends:
            mine = [r for r in rs if r.task == t and r.backend == b]
            if config.until_ci_pct is None:
                reason = "the planned processes (seeds + --repeats)"
            elif stats.ci_width_ok(_figures(rs, t, b), config.until_ci_pct / 100):
                reason = f"the 95% CI of the median is within +-{config.until_ci_pct:g}%"
            elif len(mine) >= config.max_processes:
                reason = f"the cap of {config.max_processes} processes"
            else:
                reason = "its last process did not finish ok"
            meta.stopping[f"{t}/{b}"] = records.Stopping(len(mine), reason)


def _run_round(r: _Run, number: int, cells: list[Cell]) -> None:
    """A drift probe on every node, then the round's cells, one worker process each, in the
    planned order (backends interleaved); each record is appended as its cell ends, once."""
    if not cells:
        return
    _drift_probes(r, number)
    jobs = [_job(r, cell) for cell in cells]
    announced: set[str] = set()

    def started(job: Job, node: str) -> None:
        if job.key in announced:  # a retry on another node
            return
        announced.add(job.key)
        task = r.tasks[job.cell.task]
        r.on_event(CellEvent(job.cell, "start",
                             epochs=1 if job.cell.repeat else task.epochs(r.config.profile)))

    def forward(job: Job, event: dict[str, Any]) -> None:
        r.on_event(CellEvent(job.cell, "progress", event.get("epoch", 0), event.get("epochs", 0),
                             event.get("step", 0), event.get("steps", 0),
                             event.get("phase", "train")))

    for found in r.executor.run(jobs, started, forward, r.on_status):
        cell = found.job.cell
        if cell.ident in r.recorded:  # never twice, whatever an executor hands back
            continue
        with signals.deferred():  # a stop signal waits until the record is written
            record = _record(r, found)
            records.append_record(r.run_dir / RESULTS, record)
            r.recorded.add(cell.ident)
            r.out.append(record)
        r.on_event(CellEvent(cell, "end", record=record))


def _drift_probes(r: _Run, number: int) -> None:
    """The fixed reference workload on every node before round ``number``."""
    nodes = r.executor.nodes()
    probes = [Job(f"drift-{number}", records.DriftRequest(r.config.threads, [], _NUMPY),
                  r.run_dir / "logs" / (f"drift-{number}.log" if len(nodes) == 1
                                        else f"drift-{number}-{n.node[:12]}.log"), 120, node=n.node)
              for n in nodes]
    for found in r.executor.run(probes):
        r.meta.drift_probes.append(records.DriftProbe(
            _now(), number, found.outcome.result.get("median_ms"), found.node))
    r.save()


def _job(r: _Run, cell: Cell) -> Job:
    """The worker job of one cell."""
    config, task = r.config, r.tasks[cell.task]
    request = records.TrainRequest(
        config.threads, [], backend_spec(r.backends[cell.backend], config, cell.seed),
        task=records.task_to_json(task), seed=cell.seed, profile=config.profile,
        data_path=str(r.prepared[task.dataset].resolve()), timing_only=cell.repeat > 0,
        max_steps=min(config.timing_steps, task.timing_steps), denormals=config.denormals,
        device=config.device)
    env = r.envs.get(cell.backend)
    return Job(cell.key, request, r.run_dir / "logs" / f"{cell.key}.log", config.timeout_s,
               config.memory_limit_gib, env_python(env) if env else None,
               dataset=task.dataset, cell=cell)


def _record(r: _Run, found: Done) -> CellRecord:
    """The cell's record: the worker's measurements, then the runner's fields."""
    cell, outcome, cal = found.job.cell, found.outcome, r.meta.calibration
    record = CellRecord.from_worker(outcome.result, outcome.status, outcome.error,
                                    f"the record of {cell.key}")
    hardware = found.hardware
    if hardware is not None and r.config.device != "cpu":
        # the GPU's model and driver are part of a GPU cell's fingerprint (a cell that
        # recorded none, unsupported or failed, gets the GPU of the run's calibration)
        run_gpu = cal.gpu if cal is not None and cal.node == found.node else None
        hardware = environment.with_device(hardware, record.gpu or run_gpu)
    peak = cal.gemm_peak_gflops if cal else None
    if record.gpu is not None:  # the framework's own GEMM on this GPU, not NumPy's
        peak = record.device_gflops
    energy_j, per_sample = _energy(record, cal, r.tasks[cell.task].batch_size)
    record.add_run_fields(records.RunFields(
        *cell.ident, profile=r.config.profile, threads=r.config.threads, affinity=found.cpus,
        noise=found.noise, wall_s=found.ended - found.started, started=_iso(found.started),
        ended=_iso(found.ended), log=str(found.job.log_path.relative_to(r.run_dir)),
        node=found.node, hardware=hardware, lost_node=found.lost_node,
        containment=outcome.containment,
        pct_of_gemm_peak=(100 * record.achieved_gflops / peak
                          if peak and record.achieved_gflops else None),
        energy_j=energy_j, energy_j_per_sample=per_sample))
    return record
