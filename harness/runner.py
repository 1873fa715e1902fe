"""The runner: plan cells, prepare data, run each cell in its own worker process.

One cell = (task, backend, seed, repeat). Cells run one after another (nothing else
competes for the cores), in an order interleaved across backends so drift hits all of them
alike. Each worker gets a timeout and a memory limit, runs in a process group of its own
that dies with the runner (see ``watchdog``), its stderr goes to ``logs/<cell>.log``, and
its record is appended to ``results.jsonl`` the moment the cell ends (write, flush, fsync).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import data, environment, records
from . import tasks as task_registry
from .adapter import Backend
from .errors import FwbenchError
from .records import RESULTS, RUN_JSON, CellRecord, RunMeta  # noqa: F401 - re-exported

HARNESS = Path(__file__).parent


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[str, ...]
    backends: tuple[str, ...]
    profile: str
    seeds: tuple[int, ...]
    threads: int
    timeout_s: float
    data_dir: str | None = None
    repeats: int = 0  # timing-only processes per (task, backend), after the training runs
    memory_limit_gib: float | None = None
    deterministic: bool = False
    timing_steps: int = 200  # steps of a timing-only repeat
    allow_busy: bool = False  # run even when other processes use the run's cores
    until_ci_pct: float | None = None  # adaptive: add repeats until every CI is this narrow
    max_processes: int = 20  # the cap of the adaptive repeats, per (task, backend)
    envs: str = "current"  # "isolated": every backend's workers in its own env (harness/envs.py)
    denormals: str = "flush"  # "flush": every framework flushes denormals; or "framework-default"
    executor: str = "local"  # where the cells run: "local" (this machine) or "ray" (executors.py)
    device: str = "cpu"  # cpu | cuda:N (device.py): where every cell computes, one GPU per cell

    def to_json(self) -> dict[str, Any]:
        return records.to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FwbenchError(f"run.json: unknown configuration field(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class Cell:
    task: str
    backend: str
    seed: int
    repeat: int = 0

    @property
    def key(self) -> str:
        return f"{self.task}-{self.backend}-s{self.seed}" + (f"-r{self.repeat}" if self.repeat else "")

    @property
    def ident(self) -> tuple[str, str, int, int]:
        return (self.task, self.backend, self.seed, self.repeat)


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


# ------------------------------------------------------------------ worker processes


@dataclass
class Outcome:
    """How a worker process ended: its status, one-line error and measurements."""

    status: str
    error: str | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    pids: list[int] = dataclasses.field(default_factory=list)  # the cell's processes seen


def _tree(proc) -> list:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _tree_rss(procs: list) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def oom_kills() -> int | None:
    """The kernel's OOM-kill counter: the cgroup's (v2 ``memory.events``) if this process
    sits in one, else the machine's (``/proc/vmstat`` ``oom_kill``); None if neither exists."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if path is not None:
            with open(f"/sys/fs/cgroup{path}/memory.events") as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _start_watchdog() -> subprocess.Popen:
    """A watchdog leading a new process group (in the runner's session: a process may only
    join a group of its own session); the worker joins that group (see ``watchdog``)."""
    dog = subprocess.Popen([sys.executable, "-m", "fwbench.harness.watchdog", str(os.getpid())],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                           **_in_group(0))
    assert dog.stdout is not None
    if dog.stdout.readline().strip() != "ready":
        dog.kill()
        raise FwbenchError("the worker watchdog did not start")
    return dog


def _kill_group(group: int, known: list) -> None:
    """SIGKILL the cell's process group and every descendant seen during the cell (a
    process that left the group with setsid is still among them if it was ever seen)."""
    import psutil

    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in known:
        try:
            p.kill()
        except psutil.Error:
            pass


def _in_group(group: int) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        return {"process_group": group}
    return {"preexec_fn": lambda: os.setpgid(0, group)}  # pragma: no cover - Python 3.10


def run_worker(request: records.Request, log_path: Path, timeout_s: float,
               on_event: Callable[[dict[str, Any]], None],
               memory_limit_gib: float | None = None, python: str | None = None) -> Outcome:
    """Run one worker process for ``request``; its outcome, whatever happens to it.

    ``python``: the interpreter of the worker (a backend's env, ``--envs isolated``; it gets
    no PYTHONPATH, and its env's bin first on PATH); default: the runner's own.

    The worker runs in the process group of a watchdog that SIGKILLs the group when the
    runner dies (even by kill -9); the runner kills the group when the worker ends, times
    out, exceeds the memory limit or on Ctrl-C, so no process of the cell outlives it. The
    memory limit is enforced on the resident memory of the worker's process tree, sampled
    every 0.1 s (an address-space rlimit would break JAX and TensorFlow, which reserve far
    more virtual memory than they use).
    """
    import psutil

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({**request.to_json(), "runner_pid": os.getpid()}, f)
        cfg_path = f.name
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if python is not None:  # the env's interpreter sees its env only
        for var in ("PYTHONPATH", "PYTHONHOME"):
            env.pop(var, None)
        prefix = str(Path(python).parent.parent)
        env.update(VIRTUAL_ENV=prefix, PATH=os.pathsep.join([str(Path(python).parent),
                                                             env.get("PATH", "")]))
    result: dict[str, Any] | None = None
    limit = memory_limit_gib * 2**30 if memory_limit_gib else None
    outcome: Outcome | None = None
    oom_before = oom_kills()
    last_rss = 0
    seen: list = []
    dog = _start_watchdog()
    group = dog.pid
    seen.append(psutil.Process(dog.pid))
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [python or sys.executable, "-m", "fwbench.harness.worker", cfg_path],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                # Frameworks drop files into the working directory (MindSpore's rank_0/ graph
                # dumps): the worker runs in the folder of its log, not the user's.
                cwd=log_path.resolve().parent,
                env=env, **_in_group(group),
            )
            watched = psutil.Process(proc.pid)
            events: queue.Queue[str | None] = queue.Queue()

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    events.put(line)
                events.put(None)

            threading.Thread(target=pump, daemon=True).start()
            deadline = time.monotonic() + timeout_s
            next_sample = 0.0
            while True:
                try:
                    line = events.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if event.get("event") == "record":
                        result = event["record"]
                    else:
                        on_event(event)
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + 0.1
                    tree = _tree(watched)
                    seen.extend(p for p in tree if p not in seen)
                    last_rss = _tree_rss(tree) or last_rss
                    if limit is not None and last_rss > limit:
                        _kill_group(group, seen)
                        outcome = Outcome("oom", f"resident memory {last_rss / 2**30:.1f} GiB "
                                                 f"exceeded the limit of {memory_limit_gib:g} GiB; killed")
                        break
                if time.monotonic() >= deadline:
                    _kill_group(group, seen)
                    outcome = Outcome("timeout", f"no result after {timeout_s:g} s; killed")
                    break
            proc.wait()
    finally:
        _kill_group(group, seen)  # the watchdog, and whatever the worker left behind
        dog.wait()
        os.unlink(cfg_path)
    if outcome is None and result is not None:
        outcome = Outcome(result.pop("status", "crashed"), result.pop("error", None), result)
    if outcome is None:
        outcome = _classify_exit(proc.returncode, log_path, oom_before, last_rss, limit)
    outcome.pids = [p.pid for p in seen]
    return outcome


def _classify_exit(code: int, log_path: Path, oom_before: int | None, last_rss: int,
                   limit: float | None) -> Outcome:
    """A worker that ended without a record: ``oom`` only with evidence, else by signal."""
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            after = oom_kills()
            if oom_before is not None and after is not None and after > oom_before:
                return Outcome("oom", f"killed by the kernel's OOM killer (its oom_kill counter "
                                      f"rose from {oom_before} to {after} during the cell); see {log_path}")
            if limit is not None and last_rss > 0.9 * limit:
                return Outcome("oom", f"worker killed by SIGKILL with resident memory at "
                                      f"{last_rss / 2**30:.1f} GiB, near the limit; see {log_path}")
            return Outcome("killed", f"worker killed by SIGKILL from outside fwbench (no sign of "
                                     f"memory exhaustion); see {log_path}")
        return Outcome("crashed", f"worker killed by {name}; see {log_path}")
    return Outcome("crashed", f"worker exited with code {code} without a record; see {log_path}")


# ------------------------------------------------------------------ run metadata


def backend_spec(backend: Backend, config: RunConfig | None = None, seed: int = 0) -> records.BackendSpec:
    options = dict(backend.options)
    if config is not None:  # the cell's seed seeds its framework's random stream (dropout masks)
        options["seed"] = seed
        if config.deterministic:
            options["deterministic"] = True
    return records.BackendSpec(backend.name, backend.adapter, tuple(backend.requires), options,
                               backend.description, backend.source)


def harness_sha256() -> str:
    """One hash over fwbench's harness sources: a changed worker or spec changes it."""
    h = hashlib.sha256()
    for path in sorted(HARNESS.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def fwbench_version() -> str:
    try:
        version = md.version("fwbench")
    except md.PackageNotFoundError:
        version = "unknown"
    return f"{version} (harness {harness_sha256()[:12]})"


def _backend_info(backend: Backend, env: records.EnvInfo | None) -> records.BackendInfo:
    requires = backend.versions()
    if env is not None:  # the versions in the backend's env, not in the runner's
        by_canon = {k.lower().replace("_", "-"): v for k, v in env.packages.items()}
        requires = {d: by_canon.get(d.lower().replace("_", "-"), "not installed") for d in backend.requires}
    return records.BackendInfo(requires, dict(backend.options), backend.source, backend.adapter,
                               records.source_sha256(backend.adapter), env)


def build_meta(config: RunConfig, backends: dict[str, Backend],
               envs: dict[str, records.EnvInfo] | None = None) -> RunMeta:
    """``run.json`` for a run starting now (before calibration); ``envs``: the env of each
    backend that runs in one."""
    envs = envs or {}
    return RunMeta(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        fwbench_version=fwbench_version(),
        config=config.to_json(),
        environment=environment.capture(),
        backends={n: _backend_info(backends[n], envs.get(n)) for n in config.backends},
        tasks={t: records.task_to_json(task_registry.get(t)) for t in config.tasks},
    )


ENV_KEYS = ("cpu_model", "logical_cores", "physical_cores", "memory_gib", "kernel", "python")


def environment_differences(saved: RunMeta, now: RunMeta) -> list[str]:
    """What differs between a saved run and one starting now, apart from the configuration:
    fwbench, the machine, package versions, backends' adapters and task definitions."""
    out = []
    if saved.fwbench_version != now.fwbench_version:
        out.append(f"fwbench {saved.fwbench_version} -> {now.fwbench_version}")
    for k in ENV_KEYS:
        a, b = saved.environment.get(k), now.environment.get(k)
        if a != b:
            out.append(f"{k} {a} -> {b}")
    pa, pb = saved.environment.get("packages") or {}, now.environment.get("packages") or {}
    out += [f"{k} {pa.get(k)} -> {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    for name in sorted(set(saved.backends) | set(now.backends)):
        a, b = saved.backends.get(name), now.backends.get(name)
        if a is None or b is None:
            continue
        for dist in sorted(set(a.requires) | set(b.requires)):  # plugins' own packages
            if dist not in environment.PACKAGES and a.requires.get(dist) != b.requires.get(dist):
                out.append(f"backend {name}: {dist} {a.requires.get(dist)} -> {b.requires.get(dist)}")
        if a.adapter != b.adapter or a.adapter_sha256 != b.adapter_sha256:
            out.append(f"backend {name} adapter code changed ({a.adapter})")
        if a.options != b.options:
            out.append(f"backend {name} options {a.options} -> {b.options}")
        ea, eb = a.env, b.env
        if (ea.key if ea else None) != (eb.key if eb else None):
            out.append(f"backend {name} env {ea.name if ea else 'current'} -> {eb.name if eb else 'current'}")
        elif ea and eb and ea.packages != eb.packages:
            changed = sorted(k for k in set(ea.packages) | set(eb.packages)
                             if ea.packages.get(k) != eb.packages.get(k))
            out.append(f"backend {name} env packages changed ({', '.join(changed)})")
    for name in sorted(set(saved.tasks) & set(now.tasks)):
        if saved.tasks[name] != now.tasks[name]:
            changed = sorted(k for k in saved.tasks[name] if saved.tasks[name][k] != now.tasks[name].get(k))
            out.append(f"task {name} definition changed ({', '.join(changed)})")
    return out


def prepare_resume(run_dir: Path, given: dict[str, Any], backends: dict[str, Backend],
                   force: bool,
                   envs_for: Callable[[RunConfig], dict[str, records.EnvInfo]] | None = None
                   ) -> RunConfig:
    """The saved configuration of ``run_dir``, after checking that nothing differs.

    ``given`` holds the options the user passed with --resume (already normalised as the
    configuration stores them): any that differs from the saved one is refused. The
    environment (fwbench, machine, packages, adapters, task definitions) must be the same
    too, unless ``force``; what was accepted is recorded in run.json when the run resumes.
    ``envs_for`` finds the envs of the saved configuration's backends (``--envs isolated``,
    versioned backends).
    """
    meta = records.load_meta(run_dir)
    saved = RunConfig.from_json(meta.config)
    diffs = [f"{k} (saved {getattr(saved, k)!r}, given {v!r})" for k, v in given.items()
             if getattr(saved, k) != v]
    if diffs:
        raise FwbenchError(f"--resume: {'; '.join(diffs)} differ from {run_dir / RUN_JSON}; "
                           "drop those options to resume the run as it was configured")
    for name in saved.backends:  # A/A copies (torch#2), versions (jax@0.7.1) of a backend
        base = name.split("#")[0].split("@")[0]
        if name not in backends and base in backends:
            backends[name] = dataclasses.replace(backends[base], name=name)
    now_envs = envs_for(saved) if envs_for is not None else {}
    missing = [b for b in saved.backends
               if b not in backends or (backends[b].missing() and b not in now_envs)]
    if missing:
        raise FwbenchError(f"--resume: backend(s) {', '.join(missing)} of that run are not installed")
    unknown = [t for t in saved.tasks if t not in task_registry.all_tasks()]
    if unknown:
        raise FwbenchError(f"--resume: task(s) {', '.join(unknown)} of that run are not known here")
    env_diffs = environment_differences(meta, build_meta(saved, backends, now_envs))
    if env_diffs and not force:
        raise FwbenchError(f"--resume: the environment changed since the run started: "
                           f"{'; '.join(env_diffs)} (--force-resume accepts that, and records it)")
    return saved


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


def run(config: RunConfig, run_dir: Path, backends: dict[str, Backend],
        on_event: Callable[[CellEvent], None] = lambda e: None,
        on_status: Callable[[str], None] = lambda s: None,
        force_resume: bool = False,
        envs: dict[str, records.EnvInfo] | None = None,
        executor: Any = None) -> list[CellRecord]:
    """Run every planned cell not already in ``run_dir``; returns this run's records.
    ``envs``: the env of each backend whose workers run in one (its ``bin/python``);
    ``executor``: where the worker processes run (``executors``; default: this machine, one
    after another). This process stays the only writer of results.jsonl and run.json."""
    from .executors import Job, LocalExecutor

    executor = executor or LocalExecutor()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    results = run_dir / RESULTS
    torn = records.cut_torn_line(results)
    done = {r.ident for r in records.read_records(results)}
    if not done:  # a new run (or one that died before its first record): fresh metadata
        meta = build_meta(config, backends, envs)
        if torn is not None:
            meta.resumed.append(records.Resumption(_now(), False, [], torn.name))
        records.write_meta(run_dir, meta)
    else:
        meta = records.load_meta(run_dir)
        diffs = environment_differences(meta, build_meta(config, backends, envs))
        if diffs and not force_resume:
            raise FwbenchError(f"--resume: the environment changed since the run started: "
                               f"{'; '.join(diffs)} (--force-resume accepts that, and records it)")
        meta.resumed.append(records.Resumption(_now(), bool(diffs), diffs,
                                               torn.name if torn else None))
        records.write_meta(run_dir, meta)

    # Data first: a missing or corrupted file is the user's to fix, whatever the machine does
    # (and decoding it must not run during the noise probe or a cell).
    prepared: dict[str, Path] = {}
    for dataset in sorted({task_registry.get(t).dataset for t in config.tasks}):
        on_status(f"preparing {dataset} ({config.profile} profile)")
        prepared[dataset] = data.prepare(dataset, config.profile, config.data_dir)
    executor.start(run_dir, prepared)
    _noise_guard(config, executor, meta, on_status)
    records.write_meta(run_dir, meta)
    if meta.calibration is None:
        on_status(f"calibrating float32 GEMM peak on {config.threads} thread(s)")
        job = Job("calibration", records.CalibrateRequest(config.threads, [], _NUMPY, config.device),
                  run_dir / "logs" / "calibration.log", 300, node=executor.nodes()[0].node)
        (found,) = executor.run([job])
        result = found.outcome.result
        meta.calibration = records.Calibration(result.get("gemm_peak_gflops"), config.threads,
                                               result.get("blas") or [], found.node,
                                               result.get("idle_w"), result.get("idle_source"),
                                               result.get("idle_reason"), config.device,
                                               records.Gpu(**result["gpu"]) if result.get("gpu") else None)
        records.write_meta(run_dir, meta)

    out: list[CellRecord] = []
    rounds = plan(config)
    for number, cells in enumerate(rounds):
        _run_round(number, [c for c in cells if c.ident not in done], config, run_dir, backends,
                   meta, prepared, executor, done, out, on_event, envs, on_status)
    if config.until_ci_pct is not None:
        number = len(rounds)
        while True:
            pending = _adaptive_pending(config, meta, records.read_records(results))
            if not pending:
                break
            _run_round(number, [Cell(t, b, 0, number) for t, b in pending], config, run_dir,
                       backends, meta, prepared, executor, done, out, on_event, envs, on_status)
            number += 1
    _record_stopping(config, meta, records.read_records(results))
    records.write_meta(run_dir, meta)
    return out


_NUMPY = records.BackendSpec("numpy", "")  # calibration and drift probes import no framework


def _energy(record: CellRecord, calibration: records.Calibration | None, batch: int) -> None:
    """energy_j and energy_j_per_sample of a finished cell: its training phases' counter
    minus the run's idle baseline over the same time (``device.energy_per_sample``)."""
    from . import device

    if record.energy is None or not record.ok:
        return
    idle = calibration.idle_w if calibration is not None else None
    record.energy.idle_w = idle
    if record.energy.train_j is not None and idle is None and record.energy.reason is None:
        record.energy.reason = ("no idle baseline: " + (calibration.idle_reason or "not measured")
                                if calibration is not None else "no idle baseline (no calibration)")
    samples = record.steps * batch if record.steps else None
    record.energy_j, record.energy_j_per_sample = device.energy_per_sample(
        record.energy.train_j, idle, record.train_time_s, samples)


SECOND_LOOK_S = 2.0  # how long the busy check looks again before it refuses a run


def _noise_guard(config: RunConfig, executor: Any, meta: RunMeta,
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
        meta.noise_at_start = {**records.to_json(busy), "busy": busy.busy, "text": busy.text(),
                               "allowed": config.allow_busy}
    else:
        meta.noise_at_start = {
            "busy": any(b.busy for b in seen.values()), "allowed": config.allow_busy,
            "text": "; ".join(f"node {n[:12]}: {b.text()}" for n, b in seen.items()),
            "nodes": {n: {**records.to_json(b), "busy": b.busy} for n, b in seen.items()}}
    meta.noise_at_start["looks"] = looks
    if not meta.noise_at_start["busy"]:
        return
    where = "machine" if len(seen) == 1 else "cluster"
    again = f" (and again over the next {SECOND_LOOK_S:g} s)" if looks == 2 else ""
    message = f"the {where} is busy{again}: {meta.noise_at_start['text']}"
    if warn_only:
        on_status(f"warning: {message}; timings will be noisy")
        return
    raise FwbenchError(f"{message}; timings would measure the other load. Wait, or run with "
                       "--allow-busy (recorded in run.json)")


def _figures(rs: list[CellRecord], task: str, backend: str) -> list[float]:
    from . import stats

    out = []
    for r in rs:
        if r.task == task and r.backend == backend and r.ok:
            f = stats.process_figure(r.step_samples_ms)
            if f is not None:
                out.append(f)
    return out


def _adaptive_pending(config: RunConfig, meta: RunMeta, rs: list[CellRecord]) -> list[tuple[str, str]]:
    """(task, backend)s whose CI of the median is still wider than --until-ci, below the cap,
    and whose last round did not fail."""
    from . import stats

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
    from . import stats

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


def _run_round(number: int, cells: list[Cell], config: RunConfig, run_dir: Path,
               backends: dict[str, Backend], meta: RunMeta, prepared: dict[str, Path],
               executor: Any, recorded: set[tuple[str, str, int, int]], out: list[CellRecord],
               on_event: Callable[[CellEvent], None],
               envs: dict[str, records.EnvInfo] | None = None,
               on_status: Callable[[str], None] = lambda s: None) -> None:
    """A drift probe on every node, then the round's cells, one worker process each, in the
    planned order (backends interleaved); each record is appended as its cell ends, once."""
    from .executors import Job

    if not cells:
        return
    nodes = executor.nodes()
    probes = [Job(f"drift-{number}", records.DriftRequest(config.threads, [], _NUMPY),
                  run_dir / "logs" / (f"drift-{number}.log" if len(nodes) == 1
                                      else f"drift-{number}-{n.node[:12]}.log"), 120, node=n.node)
              for n in nodes]
    for found in executor.run(probes):
        meta.drift_probes.append(records.DriftProbe(_now(), number,
                                                    found.outcome.result.get("median_ms"), found.node))
    records.write_meta(run_dir, meta)
    jobs = []
    for cell in cells:
        task = meta.task(cell.task) or task_registry.get(cell.task)
        request = records.TrainRequest(
            config.threads, [], backend_spec(backends[cell.backend], config, cell.seed),
            task=records.task_to_json(task), seed=cell.seed, profile=config.profile,
            data_path=str(prepared[task.dataset].resolve()), timing_only=cell.repeat > 0,
            max_steps=min(config.timing_steps, task.timing_steps), denormals=config.denormals, device=config.device)
        env = (envs or {}).get(cell.backend)
        jobs.append(Job(cell.key, request, run_dir / "logs" / f"{cell.key}.log", config.timeout_s,
                        config.memory_limit_gib, env_python(env) if env else None,
                        dataset=task.dataset, cell=cell))

    announced: set[str] = set()

    def started(job: Job, node: str) -> None:
        if job.key in announced:  # a retry on another node
            return
        announced.add(job.key)
        task = meta.task(job.cell.task) or task_registry.get(job.cell.task)
        on_event(CellEvent(job.cell, "start",
                           epochs=1 if job.cell.repeat else task.epochs(config.profile)))

    def forward(job: Job, event: dict[str, Any]) -> None:
        on_event(CellEvent(job.cell, "progress", event.get("epoch", 0), event.get("epochs", 0),
                           event.get("step", 0), event.get("steps", 0), event.get("phase", "train")))

    for found in executor.run(jobs, started, forward, on_status):
        cell = found.job.cell
        if cell.ident in recorded:  # never twice, whatever an executor hands back
            continue
        outcome = found.outcome
        record = records.record_from_json(
            {"schema": records.SCHEMA, **outcome.result, "status": outcome.status,
             "error": outcome.error},
            f"the record of {cell.key}")
        record.task, record.backend, record.seed, record.repeat = cell.ident
        record.profile, record.threads, record.affinity = config.profile, config.threads, found.cpus
        record.noise = found.noise
        record.wall_s = found.ended - found.started
        record.started = _iso(found.started)
        record.ended = _iso(found.ended)
        record.log = str(found.job.log_path.relative_to(run_dir))
        record.node, record.hardware, record.lost_node = found.node, found.hardware, found.lost_node
        if found.hardware is not None and config.device != "cpu":
            # the GPU's model and driver are part of a GPU cell's fingerprint (a cell that
            # recorded none, unsupported or failed, gets the GPU of the run's calibration)
            cal = meta.calibration
            run_gpu = cal.gpu if cal is not None and cal.node == found.node else None
            record.hardware = environment.with_device(found.hardware, record.gpu or run_gpu)
        peak = meta.calibration.gemm_peak_gflops if meta.calibration else None
        if record.gpu is not None:  # the framework's own GEMM on this GPU, not NumPy's
            peak = record.device_gemm.get("gflops")
        if peak and record.achieved_gflops:
            record.pct_of_gemm_peak = 100 * record.achieved_gflops / peak
        _energy(record, meta.calibration, (meta.task(cell.task) or task_registry.get(cell.task)).batch_size)
        records.append_record(run_dir / RESULTS, record)
        recorded.add(cell.ident)
        out.append(record)
        on_event(CellEvent(cell, "end", record=record))
