"""Typed, versioned records: everything that crosses the corridor between fwbench's rooms.

- ``TrainRequest`` / ``ProbeRequest`` / ``CalibrateRequest`` / ``OverheadRequest`` /
  ``IdiomaticRequest``: what the runner (or ``fwbench check`` / ``fwbench overhead``) sends a
  worker process;
- ``CellRecord``: one line of ``results.jsonl``, what a cell measured (the worker fills the
  measurements, the runner the identity and the run-level fields); every field is defined
  once here, with its unit;
- ``RunMeta``: ``run.json``, the run's configuration, environment, backends (adapter module
  and source hash) and a snapshot of every task's full definition.

Every results line and ``run.json`` carry ``schema``; a folder written with another schema
is refused with one line (``load_*`` raise ``FwbenchError``), never half-read. Reports,
compare and export read the task definitions from the run's own snapshot, not from today's
``spec.TASKS``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import secrets
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fwbench.harness import spec
from fwbench.harness.errors import FwbenchError

SCHEMA = 2  # 1: fwbench 0.1.0 (untyped); 2: typed records with a schema field
RESULTS = "results.jsonl"
RUN_JSON = "run.json"

# Every status a cell can end with.
STATUSES = {
    "ok": "finished; every measurement is valid",
    "failed": "the adapter raised an exception (one line in `error`, the traceback in the log)",
    "unsupported": "the backend cannot run a layer of the task (named in `error`); found before "
                   "anything was built or trained, not a failure",
    "crashed": "the worker died from a signal other than SIGKILL, or exited without a record",
    "killed": "the worker was killed by SIGKILL from outside fwbench, with no sign of memory "
              "exhaustion",
    "oom": "out of memory: the memory limit was hit, the kernel's OOM killer fired during the "
           "cell, or the worker raised MemoryError",
    "timeout": "no result within the cell's timeout; killed",
    "diverged": "the training loss became NaN or infinite; stopped at once",
    "lost": "the cell's node died during it twice (on its run and its one retry on another "
            "node), or no other node was left to retry it (`node` names the last one)",
}


# --------------------------------------------------------------------------- helpers


def _json_value(value: Any) -> Any:
    """Plain JSON types: NumPy scalars/arrays become Python numbers/lists, NaN/inf None,
    tuples lists, dataclasses dicts; anything else is refused (so a bad field fails here,
    in the worker, with its name, not later as a corrupt line)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # NumPy scalar or array
        return _json_value(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    raise TypeError(f"not JSON serialisable: {type(value).__name__} {value!r:.60}")


def to_json(obj: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict (NumPy values converted, NaN/inf as null)."""
    return _json_value(obj)


def dumps(obj: Any) -> str:
    return json.dumps(to_json(obj), allow_nan=False)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls(**data)`` with nested dataclasses rebuilt and unknown fields refused."""
    if not isinstance(data, dict):
        raise FwbenchError(f"{where}: expected an object for {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FwbenchError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _rebuild(hints[name], value, where)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise FwbenchError(f"{where}: {cls.__name__}: {exc}") from None


def _rebuild(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _rebuild(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [_build(args[0], v, where) for v in value]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {k: _build(args[1], v, where) for k, v in value.items()}
    if origin is tuple:
        return tuple(value)
    return value


# ------------------------------------------------------------------ task snapshots


def task_to_json(task: spec.Task) -> dict[str, Any]:
    """A task's full definition as plain JSON: layers and optimizer as {"type": ..., fields}."""
    out = {}
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        if f.name == "layers":
            value = [_layer_json(layer) for layer in value]
        elif f.name == "optimizer":
            value = {"type": type(value).__name__, **dataclasses.asdict(value)}
        out[f.name] = _json_value(value)
    return out


def _layer_json(layer: spec.Layer) -> dict[str, Any]:
    """{"type": ..., fields}; a nested stack (``Bidirectional.layers``) as a list of the same."""
    out: dict[str, Any] = {"type": type(layer).__name__}
    for f in dataclasses.fields(layer):
        value = getattr(layer, f.name)
        out[f.name] = [_layer_json(x) for x in value] if f.name == "layers" else value
    return out


def _typed(obj: dict[str, Any], allowed: tuple[type, ...], what: str) -> Any:
    by_name = {c.__name__: c for c in allowed}
    kind = obj.get("type")
    if kind not in by_name:
        raise FwbenchError(f"unknown {what} type {kind!r} in a task definition")
    fields = {k: v for k, v in obj.items() if k != "type"}
    if what == "layer" and "layers" in fields:  # a nested stack of layers
        fields["layers"] = tuple(_typed(x, allowed, what) for x in fields["layers"])
    return by_name[kind](**fields)


def task_from_json(data: dict[str, Any]) -> spec.Task:
    """Rebuild a ``spec.Task`` from ``task_to_json`` (a run's snapshot, or a worker request)."""
    layer_types = spec.LAYER_TYPES
    opt_types = typing.get_args(spec.Optimizer)
    fields = dict(data)
    fields["layers"] = tuple(_typed(x, layer_types, "layer") for x in data["layers"])
    fields["optimizer"] = _typed(data["optimizer"], opt_types, "optimizer")
    fields["input_shape"] = tuple(data["input_shape"])
    fields["notes"] = tuple(data.get("notes") or ())
    return spec.Task(**fields)


# ---------------------------------------------------------------- the run's configuration

ENVS_MODES = ("current", "isolated")  # --envs (run/envs.py)
EXECUTORS = ("local", "ray")  # --executor (run/executors)
DENORMALS = ("flush", "framework-default")  # --denormals (the README's denormal policy)
DEFAULT_TIMEOUT_S = 3600.0
MEMORY_LIMIT_FRACTION = 0.75  # default --memory-limit: this share of the (smallest) node's RAM


@dataclass(frozen=True)
class RunOptions:
    """What a user asked of ``fwbench run`` (None: not given), each value checked here, once:
    a bad one is a one-line ``FwbenchError`` naming its option, before anything looks for
    backends (so it gets its own message where no framework is installed). ``given()``
    normalises them the way ``RunConfig`` stores them (compared on --resume)."""

    tasks: tuple[str, ...] | None = None
    profile: str | None = None
    seeds: int | None = None  # a count: seeds 0..K-1
    threads: int | None = None
    timeout_s: float | None = None
    data_dir: str | None = None
    repeats: int | None = None
    deterministic: bool | None = None
    memory_limit_gib: float | None = None
    until_ci_pct: float | None = None
    max_processes: int | None = None
    allow_busy: bool | None = None
    denormals: str | None = None
    envs: str | None = None
    executor: str | None = None
    device: str | None = None  # as ``device.parse`` named it
    backends: tuple[str, ...] | None = None  # labels, copies numbered (torch#2)

    def __post_init__(self) -> None:
        checks = (
            (self.profile is not None and self.profile not in spec.PROFILES,
             f"unknown profile {self.profile!r}; choose from {', '.join(spec.PROFILES)}"),
            (self.seeds is not None and self.seeds < 1, f"--seeds must be at least 1 (got {self.seeds})"),
            (self.threads is not None and self.threads < 1,
             f"--threads must be at least 1 (got {self.threads})"),
            (self.repeats is not None and self.repeats < 0,
             f"--repeats must be at least 0 (got {self.repeats})"),
            (self.until_ci_pct is not None and not 0 < self.until_ci_pct < 100,
             f"--until-ci must be a percentage between 0 and 100 (got {self.until_ci_pct or 0:g})"),
            (self.max_processes is not None and self.max_processes < 1,
             f"--max-processes must be at least 1 (got {self.max_processes})"),
            (self.timeout_s is not None and self.timeout_s <= 0, "--timeout must be positive"),
            (self.memory_limit_gib is not None and self.memory_limit_gib <= 0,
             f"--memory-limit must be positive (got {self.memory_limit_gib or 0:g})"),
            (self.denormals is not None and self.denormals not in DENORMALS,
             f"--denormals must be flush or framework-default (got {self.denormals!r})"),
            (self.envs is not None and self.envs not in ENVS_MODES,
             f"unknown --envs {self.envs!r}; choose from {', '.join(ENVS_MODES)}"),
            (self.executor is not None and self.executor not in EXECUTORS,
             f"unknown --executor {self.executor!r}; choose from {', '.join(EXECUTORS)}"),
        )
        for bad, message in checks:
            if bad:
                raise FwbenchError(message)

    def given(self) -> dict[str, Any]:
        """The options given, as ``RunConfig`` fields and values."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if getattr(self, f.name) is not None}
        if self.seeds is not None:
            out["seeds"] = tuple(range(self.seeds))
        if self.memory_limit_gib is not None:
            out["memory_limit_gib"] = round(self.memory_limit_gib, 2)
        return out


@dataclass(frozen=True)
class RunConfig:
    """A run's whole configuration (``run.json``'s ``config``); ``from_options`` is the one
    place its defaults live."""

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
    envs: str = "current"  # "isolated": every backend's workers in its own env (run/envs.py)
    denormals: str = "flush"  # "flush": every framework flushes denormals; or "framework-default"
    executor: str = "local"  # where the cells run: "local" (this machine) or "ray" (run/executors)
    device: str = "cpu"  # cpu | cuda:N (measure/device.py): where every cell computes, one GPU per cell

    def __post_init__(self) -> None:
        for name in ("tasks", "backends", "seeds"):  # JSON lists, a caller's lists: tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = [m for bad, m in (
            (self.profile not in spec.PROFILES, f"profile {self.profile!r}"),
            (not self.seeds, "no seed"), (self.threads < 1, f"threads {self.threads}"),
            (self.repeats < 0, f"repeats {self.repeats}"),
            (self.timeout_s <= 0, f"timeout_s {self.timeout_s}"),
            (self.envs not in ENVS_MODES, f"envs {self.envs!r}"),
            (self.executor not in EXECUTORS, f"executor {self.executor!r}"),
            (self.denormals not in DENORMALS, f"denormals {self.denormals!r}")) if bad]
        if problems:
            raise FwbenchError(f"invalid run configuration: {', '.join(problems)}")

    @classmethod
    def from_options(cls, options: RunOptions, *, tasks: tuple[str, ...],
                     backends: tuple[str, ...], cores: int, memory_gib: float,
                     where: str = "local", data_dir: str | None = None) -> RunConfig:
        """A new run's configuration: the defaults (every task, the profile's seeds and
        repeats, every core, 75% of the memory), then what was given; checked against the
        machine (``cores`` and ``memory_gib`` of the smallest node)."""
        check_fits(options.threads, options.memory_limit_gib, cores, memory_gib, where)
        prof = spec.PROFILE_INFO[options.profile or "quick"]
        defaults: dict[str, Any] = {
            "tasks": tasks, "profile": prof.name, "seeds": tuple(range(prof.default_seeds)),
            "threads": cores, "timeout_s": DEFAULT_TIMEOUT_S, "data_dir": data_dir,
            "repeats": prof.default_repeats,
            "memory_limit_gib": round(MEMORY_LIMIT_FRACTION * memory_gib, 2)}
        return cls(**{**defaults, **options.given(), "backends": tuple(backends)})

    def differences(self, given: dict[str, Any]) -> list[str]:
        """The given options (``RunOptions.given``) that differ from this configuration."""
        return [f"{k} (saved {getattr(self, k)!r}, given {v!r})" for k, v in given.items()
                if getattr(self, k) != v]

    @property
    def isolated(self) -> bool:
        return self.envs == "isolated"


def check_fits(threads: int | None, memory_limit_gib: float | None, cores: int,
               memory_gib: float, where: str = "local") -> None:
    """--threads and --memory-limit within what the machine (the smallest node) has."""
    local = where == "local"
    if threads is not None and threads > cores:
        what = "the cores available" if local else "the cores of the smallest node"
        raise FwbenchError(f"--threads must be between 1 and {cores}, {what} (got {threads})")
    if memory_limit_gib is not None and memory_limit_gib > memory_gib:
        mem = "this machine's memory" if local else "the smallest node's memory"
        raise FwbenchError(f"--memory-limit must be between 0 and {memory_gib:.1f} GiB, {mem} "
                           f"(got {memory_limit_gib:g})")


@dataclass(frozen=True)
class Cell:
    """One worker process of a run: (task, backend, seed, repeat); repeat 0 trains."""

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


# ----------------------------------------------------------------- worker requests


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the worker needs it (mirror of ``adapter.Backend``)."""

    name: str
    adapter: str  # "module:Class"
    requires: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "built-in"


@dataclass(frozen=True)
class _Request:
    mode: ClassVar[str] = ""
    threads: int
    cpus: list[int]
    backend: BackendSpec
    # cpu | cuda:N (``device.parse``): the worker sets ``device.worker_env`` before its import
    device: str = "cpu"

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "mode": self.mode, **to_json(self)}


@dataclass(frozen=True)
class TrainRequest(_Request):
    """Train one cell (``timing_only``: at most ``max_steps`` steps, no evaluation)."""

    mode: ClassVar[str] = "train"
    task: dict[str, Any] = field(default_factory=dict)  # task_to_json
    seed: int = 0
    profile: str = "quick"
    data_path: str = ""
    timing_only: bool = False
    max_steps: int | None = None
    denormals: str = "flush"  # "flush" | "framework-default" (see the README)


@dataclass(frozen=True)
class ProbeItem:
    task: dict[str, Any]  # task_to_json
    batches_path: str
    probe_path: str


@dataclass(frozen=True)
class ProbeRequest(_Request):
    """The parity probe of ``fwbench check`` for one or more tasks."""

    mode: ClassVar[str] = "probe"
    seed: int = 0
    probes: list[ProbeItem] = field(default_factory=list)


@dataclass(frozen=True)
class CalibrateRequest(_Request):
    """The float32 GEMM peak of NumPy's BLAS on the run's cores."""

    mode: ClassVar[str] = "calibrate"


@dataclass(frozen=True)
class DriftRequest(_Request):
    """The fixed reference workload whose change between runs estimates the machine's drift."""

    mode: ClassVar[str] = "drift"


@dataclass(frozen=True)
class OverheadRequest(_Request):
    """``fwbench overhead``: the harness loop against bare loops on the same adapter."""

    mode: ClassVar[str] = "overhead"
    task: dict[str, Any] = field(default_factory=dict)
    data_path: str = ""
    steps: int = 50
    blocks: int = 5


@dataclass(frozen=True)
class IdiomaticRequest(_Request):
    """``fwbench overhead --against idiomatic``: one process timing either the backend's
    adapter (``kind="adapter"``) or a hand-written reference loop (``kind="idiomatic"``, the
    file ``loop`` of ``benchmarks/idiomatic``) on the same batches: ``warmup`` steps, then
    ``steps`` timed ones."""

    mode: ClassVar[str] = "idiomatic"
    task: dict[str, Any] = field(default_factory=dict)  # task_to_json
    data_path: str = ""
    kind: str = "adapter"  # "adapter" | "idiomatic"
    loop: str = ""  # path of the reference loop's module (kind "idiomatic")
    seed: int = 0
    warmup: int = 5
    steps: int = 200


@dataclass(frozen=True)
class DeviceRequest(_Request):
    """Can the backend's installed build compute on ``device``? (``fwbench run --device``,
    before anything runs: ``Adapter.device_unsupported`` after the import.)"""

    mode: ClassVar[str] = "device"


REQUESTS: dict[str, type[_Request]] = {c.mode: c for c in (TrainRequest, ProbeRequest,
                                                              CalibrateRequest, DriftRequest,
                                                              OverheadRequest, IdiomaticRequest,
                                                              DeviceRequest)}
Request = typing.Union[TrainRequest, ProbeRequest, CalibrateRequest, DriftRequest, OverheadRequest,
                       IdiomaticRequest, DeviceRequest]


def request_from_json(data: dict[str, Any]) -> Request:
    if data.get("schema") != SCHEMA:
        raise FwbenchError(f"worker request schema {data.get('schema')} != {SCHEMA}")
    body = {k: v for k, v in data.items() if k not in ("schema", "mode")}
    mode = data.get("mode")
    if mode not in REQUESTS:
        raise FwbenchError(f"unknown worker mode {mode!r}")
    return _build(REQUESTS[mode], body, "worker request")


# -------------------------------------------------------------------- cell records


@dataclass(frozen=True)
class Hardware:
    """The hardware fingerprint of the machine (node) a cell ran on
    (``environment.hardware_fingerprint``): cells are compared only within one ``id``."""

    id: str  # sha256 of the other fields, 12 hex digits
    cpu_model: str
    cpu_flags_sha256: str  # of every flag in /proc/cpuinfo, sorted (16 hex digits)
    cores: int  # logical cores the node's processes may use (their CPU affinity)
    logical_cores: int  # of the whole machine
    memory_gib: int  # total, rounded to a whole GiB
    kernel: str
    accelerators: tuple[str, ...] = ()  # one line per device (nvidia-smi -L without UUIDs)
    # the GPU a cell computed on, "NVIDIA H200, driver 580.159.03" ("": the CPU); part of the
    # id (``environment.with_device``), so cells on different GPU models are never ranked together
    device: str = ""

    def text(self) -> str:
        """'AMD EPYC 7763, 2 of 2 cores, 23 GiB, kernel 6.1.0, no accelerator'."""
        acc = ", ".join(self.accelerators) or "no accelerator"
        on = f", computing on {self.device}" if self.device else ""
        return (f"{self.cpu_model}, {self.cores} of {self.logical_cores} cores, "
                f"{self.memory_gib} GiB, kernel {self.kernel}, {acc}{on}")


@dataclass
class Noise:
    """What else used a cell's cores while it ran (``measure.noise``; None where unreadable)."""

    others_cores: float | None = None  # other processes' CPU on the cell's cores, in cores
    steal_fraction: float | None = None  # stolen by the hypervisor / all time of those cores
    loadavg_1m: float | None = None  # the whole machine's
    busy: bool | None = None  # above the thresholds of ``measure.noise.is_busy``
    runner_cores: float | None = None  # the supervising process's own CPU meanwhile, in cores


@dataclass
class StepTimes:
    """Steady-state step times of one process in milliseconds (the first step excluded)."""

    p50: float | None = None
    p90: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class EpochRow:
    epoch: int
    train_loss: float | None  # mean training loss over the epoch's steps
    test_loss: float | None  # mean per-example loss over the whole test set
    test_accuracy: float | None  # fraction of the test set classified correctly, 0..1
    wall_s: float  # cumulative training time at the end of this epoch, s (evaluation excluded)


@dataclass
class Gpu:
    """The GPU a cell ran on, read by the worker from NVML (``device.gpu_info``), with the
    CUDA and cuDNN its framework reports. None where NVML (or the framework) has no answer."""

    index: int  # NVML's index on the node (= cuda:N)
    name: str | None = None  # "NVIDIA H200"
    driver: str | None = None
    cuda_driver: str | None = None  # the CUDA version the driver supports
    cuda: str | None = None  # the CUDA runtime the framework uses
    cudnn: str | None = None  # the cuDNN the framework uses
    compute_capability: str | None = None
    memory_total_mib: float | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    sm_clock_mhz: float | None = None  # median SM clock sampled during training
    power_limit_w: float | None = None  # enforced power limit
    mig_mode: str | None = None  # enabled | disabled | n/a
    reason: str | None = None  # why the NVML fields are None


@dataclass
class AllocatorMemory:
    """The framework allocator's own peak on the GPU (``Adapter.memory_peak``)."""

    source: str  # the call that reported it
    counts: str  # what the figure counts
    peak_mib: float | None = None
    reserved_peak_mib: float | None = None  # where the allocator also reports what it held


@dataclass
class DeviceMemory:
    """GPU memory seen by NVML during the cell (sampled every 0.1 s)."""

    process_peak_mib: float | None = None  # this worker in NVML's process list: its context,
    # the allocator's pools and the libraries' workspaces
    device_used_peak_mib: float | None = None  # the whole device's memory in use (all processes)
    device_used_before_mib: float | None = None  # the same, before the framework was imported
    reason: str | None = None  # why a field is None


@dataclass
class Utilization:
    """NVML's GPU utilisation (% of time a kernel ran) sampled during training."""

    gpu_pct_mean: float | None = None
    gpu_pct_p50: float | None = None
    gpu_pct_max: float | None = None
    memory_pct_mean: float | None = None  # % of time device memory was read or written
    interval_s: float | None = None
    n: int = 0
    samples: list[float] = field(default_factory=list)  # up to 64, evenly spaced
    reason: str | None = None


@dataclass
class Energy:
    """The energy counter over the cell's training phases (first step included)."""

    source: str | None = None  # "NVML total energy, GPU 0" | "RAPL package-0" | None
    counts: str | None = None  # what the counter covers
    train_j: float | None = None  # counter difference over training, idle not subtracted
    idle_w: float | None = None  # the run's idle baseline (run.json calibration), subtracted
    reason: str | None = None  # why it is None


def _f(doc: str, unit: str = "", default: Any = None, factory: Any = None) -> Any:
    meta = {"doc": doc, "unit": unit}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CellRecord:
    """One line of ``results.jsonl``: one (task, backend, seed, repeat) worker process."""

    # identity (runner)
    task: str = _f("task name")
    backend: str = _f("backend name (a variant or an A/A copy has its own name)")
    seed: int = _f("seed of the initial weights and the batch order", default=0)
    repeat: int = _f("0: the training run; >= 1: a timing-only re-run (no evaluation)", default=0)
    profile: str = _f("profile of the run (smoke, quick, full)", default="")
    status: str = _f("how the cell ended: " + ", ".join(STATUSES), default="ok")
    error: str | None = _f("one line: why the cell did not end ok")
    # results (worker)
    test_accuracy: float | None = _f("test accuracy after the last epoch", "fraction 0..1")
    epochs: list[EpochRow] = _f("per epoch: train_loss, test_loss, test_accuracy, wall_s",
                                factory=list)
    steps: int | None = _f("training steps run, the first included")
    train_time_s: float | None = _f("wall time of all training steps with batch gathering, "
                                    "evaluation excluded", "s")
    first_step_s: float | None = _f("the first step, with tracing/compilation", "s")
    step_time_ms: StepTimes = _f("p50, p90, mean, std of the steady-state steps", "ms",
                                 factory=StepTimes)
    step_samples_ms: list[float] = _f("up to 256 evenly spaced steady-state step times", "ms",
                                      factory=list)
    step_trace: list[list[float]] = _f("up to 256 evenly spaced training steps, the first and "
                                       "last included: [step (1-based, over all epochs), loss, "
                                       "step time ms]", factory=list)
    throughput_samples_s: float | None = _f("batch size / median steady-state step time",
                                            "samples/s")
    time_to_target_s: float | None = _f("training time until the test accuracy first reached "
                                        "the task's target (checked after each epoch)", "s")
    import_s: float | None = _f("process start to framework imported", "s")
    data_s: float | None = _f("loading the prepared arrays", "s")
    setup_s: float | None = _f("model build and weight load", "s")
    eval_s: float | None = _f("all evaluations", "s")
    param_count: int | None = _f("trainable parameters of the task")
    framework_version: str | None = _f("what the adapter reports")
    packages: dict[str, str] = _f("distribution -> version in the worker's interpreter: fwbench, "
                                  "NumPy, the frameworks and the backend's own packages",
                                  factory=dict)
    python: str | None = _f("the worker's interpreter (sys.executable): the backend's env with "
                            "--envs isolated")
    flops_per_step: int | None = _f("analytic FLOPs of one training step (3x forward)", "FLOP")
    achieved_gflops: float | None = _f("flops_per_step / median step time", "GFLOP/s")
    pct_of_gemm_peak: float | None = _f("achieved_gflops / the run's calibrated GEMM peak (NumPy "
                                        "float32 on the CPU; a GPU cell: its device_gemm)", "%")
    cpu_wall_ratio: float | None = _f("CPU time / wall time of training", "ratio")
    threads_exceeded: bool | None = _f("cpu_wall_ratio above the thread count (+5%)")
    baseline_rss_mib: float | None = _f("RSS after imports and data", "MiB")
    train_peak_rss_mib: float | None = _f("peak RSS during training", "MiB")
    train_peak_delta_mib: float | None = _f("train_peak_rss_mib - baseline_rss_mib", "MiB")
    eval_peak_rss_mib: float | None = _f("peak RSS during evaluation", "MiB")
    peak_rss_mib: float | None = _f("peak RSS of the whole cell", "MiB")
    memory_timeline: list[list[float]] = _f("[s since process start, RSS MiB] every 0.25 s",
                                            factory=list)
    thread_settings: dict[str, Any] = _f("thread settings the framework reports", factory=dict)
    determinism: dict[str, Any] = _f("determinism switches in force", factory=dict)
    denormals: dict[str, Any] = _f("denormal floats in the training step: policy, switch (what "
                                   "the adapter set), flushed (probed: 1e-30 * 1e-10 in the "
                                   "framework gave 0), nonzero_fraction", factory=dict)
    device: str = _f("where the cell computed: cpu, or cuda:N (one GPU per cell, chosen with "
                     "CUDA_VISIBLE_DEVICES before the framework import)", default="cpu")
    gpu: Gpu | None = _f("the GPU (NVML): index, name, driver, cuda_driver, cuda and cudnn (as "
                         "the framework reports them), compute_capability, memory_total_mib, "
                         "sm/mem_clock_max_mhz, sm_clock_mhz (median during training), "
                         "power_limit_w, mig_mode; None on the CPU")
    precision: dict[str, Any] = _f("the float32 policy in force: policy, and on a GPU what the "
                                   "framework set (TF32 off) and the variables set before its "
                                   "import", factory=dict)
    allocator_memory: AllocatorMemory | None = _f(
        "GPU: the framework allocator's own peak over the cell: source, counts (what it "
        "counts), peak_mib, reserved_peak_mib")
    device_memory: DeviceMemory | None = _f(
        "GPU memory seen by NVML: process_peak_mib (this worker in NVML's process list), "
        "device_used_peak_mib (the whole device), device_used_before_mib (before the import)")
    gpu_utilization: Utilization | None = _f(
        "NVML GPU utilisation during training, in % of time a kernel ran: mean, p50, max, "
        "memory_pct_mean, n, interval_s, samples")
    device_gemm: dict[str, Any] = _f("GPU: float32 GEMM peak run by the cell's own framework on "
                                     "its GPU (gflops, n, precision): the GPU cell's "
                                     "pct_of_gemm_peak divides by it", factory=dict)
    energy: Energy | None = _f("the energy counter over the training phases: source (NVML total "
                               "energy on a GPU, RAPL on the CPU), counts (what it covers), "
                               "train_j, idle_w (the run's idle baseline), reason when None")
    energy_j: float | None = _f("energy.train_j minus idle_w x train_time_s", "J")
    energy_j_per_sample: float | None = _f("energy_j / training samples (steps x batch)", "J/sample")
    # run-level (runner)
    noise: Noise | None = _f("what else used the cell's cores while it ran: others_cores "
                             "(other processes' CPU, in cores), steal_fraction, loadavg_1m, "
                             "busy, runner_cores (the supervising runner's own CPU, in cores)")
    threads: int | None = _f("threads of the cell")
    affinity: list[int] = _f("CPUs the worker was pinned to", factory=list)
    wall_s: float | None = _f("wall time of the whole worker process", "s")
    started: str | None = _f("UTC start time, ISO 8601 (milliseconds), on the clock of the "
                             "cell's node")
    ended: str | None = _f("UTC end time, ISO 8601, on the clock of the cell's node")
    log: str | None = _f("the worker's log file, relative to the run folder")
    node: str | None = _f("where the cell ran: local (this machine), or the Ray node id "
                          "(--executor ray)")
    hardware: Hardware | None = _f("the node's hardware fingerprint: id (a hash of the rest), "
                                   "cpu_model, cpu_flags_sha256, cores (its CPU affinity), "
                                   "logical_cores, memory_gib, kernel, accelerators; reports "
                                   "never rank cells of different ids together")
    lost_node: str | None = _f("a node that died during an earlier attempt of this cell, "
                               "which then ran again on `node`")
    containment: str | None = _f("how the cell's processes were held and killed: cgroup (its "
                                 "own cgroup v2, cgroup.kill) or process group + subreaper "
                                 "(the watchdog), and why not a cgroup")

    MEASURED: ClassVar[tuple[str, ...]] = ()  # set below: the fields a worker may fill

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **to_json(self)}

    @property
    def ident(self) -> tuple[str, str, int, int]:
        return (self.task, self.backend, self.seed, self.repeat)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def busy(self) -> bool:
        """Other processes used the cell's cores while it ran (``noise.busy``)."""
        return bool(self.noise is not None and self.noise.busy)

    @property
    def flushed(self) -> bool | None:
        """Did the training step flush denormals (probed; None: not probed)?"""
        return self.denormals.get("flushed")

    @property
    def device_gflops(self) -> float | None:
        """A GPU cell: the float32 GEMM peak its framework reached on its GPU."""
        return self.device_gemm.get("gflops")

    @classmethod
    def from_worker(cls, result: dict[str, Any], status: str, error: str | None,
                    where: str) -> CellRecord:
        """A record of a worker's measurements (``measurement``) and how its process ended;
        the runner then adds its own fields with ``add_run_fields``."""
        unknown = sorted(set(result) - set(cls.MEASURED))
        if unknown:
            raise FwbenchError(f"{where}: the worker sent unknown field(s) {', '.join(unknown)}")
        return _build(cls, {**result, "status": status, "error": error}, where)

    def add_run_fields(self, fields: RunFields) -> None:
        """Set the runner's fields (``RunFields``: identity and run level) on this record."""
        for f in dataclasses.fields(fields):
            setattr(self, f.name, getattr(fields, f.name))


@dataclass
class RunFields:
    """What the runner adds to a worker's measurements: the cell's identity and the run-level
    fields of its record (``CellRecord.add_run_fields``); every other field is the worker's."""

    task: str
    backend: str
    seed: int
    repeat: int
    profile: str
    threads: int
    affinity: list[int]
    noise: Noise | None
    wall_s: float
    started: str
    ended: str
    log: str
    node: str | None
    hardware: Hardware | None
    lost_node: str | None = None
    containment: str | None = None
    pct_of_gemm_peak: float | None = None
    energy_j: float | None = None
    energy_j_per_sample: float | None = None


_RUNNER_FIELDS = tuple(f.name for f in dataclasses.fields(RunFields))
CellRecord.MEASURED = tuple(f.name for f in dataclasses.fields(CellRecord)
                            if f.name not in _RUNNER_FIELDS)


def record_fields() -> list[tuple[str, str, str]]:
    """(name, unit, description) of every ``CellRecord`` field: the README's list."""
    return [(f.name, f.metadata.get("unit", ""), f.metadata.get("doc", ""))
            for f in dataclasses.fields(CellRecord)]


def measurement(data: dict[str, Any]) -> dict[str, Any]:
    """A worker's result, checked: only ``CellRecord.MEASURED`` fields, JSON-ready values."""
    unknown = sorted(set(data) - set(CellRecord.MEASURED))
    if unknown:
        raise TypeError(f"worker result has unknown field(s): {', '.join(unknown)}")
    return to_json(data)


def record_from_json(data: dict[str, Any], where: str) -> CellRecord:
    schema = data.get("schema")
    if schema != SCHEMA:
        raise FwbenchError(_schema_message(where, schema))
    return _build(CellRecord, {k: v for k, v in data.items() if k != "schema"}, where)


def _schema_message(where: str, schema: Any) -> str:
    if schema is None:
        return (f"{where} was written by an older fwbench (no schema version); this fwbench "
                f"reads schema {SCHEMA}: re-run it")
    return f"{where} has schema {schema}; this fwbench reads schema {SCHEMA}"


# ---------------------------------------------------------------- results files


def append_record(path: Path, record: CellRecord) -> None:
    """One line, written, flushed and fsynced: a kill leaves at most a torn last line."""
    line = json.dumps(record.to_json(), allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> list[CellRecord]:
    """The records of a results file; a torn last line (a killed write) is ignored."""
    if not path.is_file():
        return []
    out = []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the write was cut short
                continue
            raise FwbenchError(f"{path}: line {i + 1} is not JSON; is this an fwbench results file?")
        if not isinstance(data, dict) or not {"task", "backend", "seed", "status"} <= data.keys():
            raise FwbenchError(f"{path}: line {i + 1} is not an fwbench record")
        out.append(record_from_json(data, f"{path}: line {i + 1}"))
    return out


def cut_torn_line(path: Path) -> Path | None:
    """Before appending: move a torn last line (no newline: a write cut short) to a side file
    ``results.torn-N.txt`` and truncate the results file after the last whole line. Returns
    the side file, or None when the file ends cleanly."""
    if not path.is_file():
        return None
    raw = path.read_bytes()
    if not raw or raw.endswith(b"\n"):
        return None
    cut = raw.rfind(b"\n") + 1
    n = 1
    while (side := path.with_name(f"results.torn-{n}.txt")).exists():
        n += 1
    side.write_bytes(raw[cut:])
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return side


# ------------------------------------------------------------------------ run.json


@dataclass
class EnvInfo:
    """The env a backend's workers ran in (``--envs isolated``, or a versioned backend)."""

    name: str  # folder name: <family>[-<version>]-<key[:12]>
    path: str  # the env's folder; its interpreter is bin/python
    key: str  # sha256 of its full requirement set (harness/run/envs.py)
    python: str  # Python version of the env's interpreter
    packages: dict[str, str]  # every distribution in the env -> version
    requirements: list[str] = field(default_factory=list)  # the backend's requirement lines


@dataclass
class BackendInfo:
    """A backend as the run used it: its packages, options, source and adapter code."""

    requires: dict[str, str]  # distribution -> version (in its env, if it had one)
    options: dict[str, Any]
    source: str
    adapter: str  # "module:Class"
    adapter_sha256: str | None  # of the adapter module's source file
    env: EnvInfo | None = None  # None: the runner's own interpreter (--envs current)


@dataclass
class Calibration:
    gemm_peak_gflops: float | None
    threads: int
    blas: list[dict[str, Any]] = field(default_factory=list)
    node: str | None = None  # where it ran: local, or a Ray node id (None: an older run)
    # the idle baseline of energy_j, measured before the GEMM on the run's device (device.py)
    idle_w: float | None = None
    idle_source: str | None = None
    idle_reason: str | None = None
    # the cells' device (cpu | cuda:N); a GPU cell's % of peak uses its own device_gemm
    device: str = "cpu"
    gpu: Gpu | None = None  # that GPU, as NVML described it at the start of the run


@dataclass
class Resumption:
    at: str  # UTC, ISO 8601
    forced: bool  # --force-resume accepted these differences
    differences: list[str] = field(default_factory=list)
    torn_line: str | None = None  # side file holding a torn last line that was cut


@dataclass
class DriftProbe:
    """One process of the fixed reference workload (``worker.drift``)."""

    at: str  # UTC, ISO 8601
    round: int  # before which round of cells (0: the training runs, r: timing repeat r)
    median_ms: float | None
    node: str | None = None  # where it ran: local, or a Ray node id (None: an older run)


@dataclass
class Stopping:
    """Why a (task, backend) got the number of processes it got."""

    processes: int
    reason: str


@dataclass
class Environment:
    """The machine and the software a run saw (``measure.environment.capture``)."""

    cpu_model: str | None = None
    cpu_flags: list[str] = field(default_factory=list)
    logical_cores: int | None = None
    physical_cores: int | None = None
    affinity: list[int] = field(default_factory=list)  # the runner's CPU affinity
    memory_gib: float | None = None  # total, GiB to one decimal
    os: str | None = None
    kernel: str | None = None
    python: str | None = None
    packages: dict[str, str | None] = field(default_factory=dict)  # fwbench's PACKAGES -> version
    blas: list[dict[str, Any]] = field(default_factory=list)  # threadpoolctl's view of NumPy's BLAS
    env: dict[str, str] = field(default_factory=dict)  # the performance variables set (OMP_*, ...)


def blas_text(info: dict[str, Any]) -> str:
    """One BLAS of threadpoolctl's description (``Environment.blas``, ``Calibration.blas``):
    'openblas 0.3.27 (2 threads, Haswell)'."""
    return (f"{info.get('internal_api')} {info.get('version')} "
            f"({info.get('num_threads')} threads, {info.get('architecture')})")


@dataclass
class NoiseAtStart:
    """The busy check before a run's first cell (``runner._noise_guard``): its last look.
    One node: that look's figures (``measure.noise.Busy``); several: ``nodes``."""

    busy: bool | None = None
    allowed: bool = False  # --allow-busy
    text: str = ""
    looks: int | None = None  # 2: the first second was busy, a second look was taken
    nodes: dict[str, dict[str, Any]] | None = None  # node id -> its Busy figures (a cluster)
    interval_s: float | None = None
    cpus: list[int] = field(default_factory=list)
    cores_busy_s: float | None = None
    own_s: float | None = None
    others_s: float | None = None
    others_cores: float | None = None
    steal_fraction: float | None = None
    iowait_fraction: float | None = None
    loadavg_1m: float | None = None
    top_others: list[list[Any]] = field(default_factory=list)  # [pid, name, CPU s]


@dataclass
class RunMeta:
    """``run.json``: the configuration and the environment of a run, and what it ran."""

    created: str
    fwbench_version: str
    config: RunConfig
    environment: Environment
    backends: dict[str, BackendInfo]
    tasks: dict[str, dict[str, Any]]  # task name -> task_to_json
    calibration: Calibration | None = None
    resumed: list[Resumption] = field(default_factory=list)
    noise_at_start: NoiseAtStart | None = None  # runner._noise_guard: its last look
    drift_probes: list[DriftProbe] = field(default_factory=list)
    stopping: dict[str, Stopping] = field(default_factory=dict)  # "task/backend" -> why
    run_id: str | None = None  # new_run_id() at the start; None: written before run ids

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **to_json(self)}

    def run_id_or_derived(self) -> str:
        """This run's id: the one it recorded, else (a run from before run ids) one derived
        from when and where it started and what it ran, the same on every reading."""
        if self.run_id:
            return self.run_id
        core = json.dumps(to_json([self.created, self.config, self.environment]), sort_keys=True)
        return f"{_compact(self.created)}-{hashlib.sha256(core.encode()).hexdigest()[:8]}"

    def task(self, name: str) -> spec.Task | None:
        """The task as this run defined it (None if the run did not snapshot it)."""
        data = self.tasks.get(name)
        return task_from_json(data) if data else None

    def task_facts(self, name: str) -> TaskFacts:
        """What reports say of a task, from this run's own snapshot read as stored: reporting
        an old run needs neither today's ``spec.TASKS`` nor today's layer types. A task the
        run did not snapshot: its name only."""
        data = self.tasks.get(name) or {}
        target, batch = data.get("target_accuracy"), data.get("batch_size")
        return TaskFacts(str(data.get("description") or name),
                         float(target) if target is not None else None,
                         int(batch) if batch else None)


@dataclass(frozen=True)
class TaskFacts:
    """A task as a report describes it (``RunMeta.task_facts``)."""

    description: str
    target: float | None
    batch: int | None


def write_meta(run_dir: Path, meta: RunMeta) -> None:
    path = run_dir / RUN_JSON
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta.to_json(), indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename: a crash never leaves an empty file
    os.replace(tmp, path)  # atomic: a kill never leaves half a run.json
    _fsync_dir(run_dir)


def _fsync_dir(folder: Path) -> None:
    """The rename itself on disk (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _compact(created: str) -> str:
    """2026-12-01T16:53:13+00:00 -> 20261201T165313Z (an id's readable head)."""
    return re.sub(r"[-:]", "", created.split("+")[0]) + "Z"


def new_run_id(created: str) -> str:
    """A run's id: when it started (UTC) and 8 random hex digits, unique across machines."""
    return f"{_compact(created)}-{secrets.token_hex(4)}"


def load_meta(run_dir: Path) -> RunMeta:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise FwbenchError(f"{run_dir} has no {RUN_JSON}: not an fwbench run folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise FwbenchError(f"{path} is not JSON") from None
    if not isinstance(data, dict):
        raise FwbenchError(f"{path} is not an fwbench run.json")
    if data.get("schema") != SCHEMA:
        raise FwbenchError(_schema_message(str(path), data.get("schema")))
    return _build(RunMeta, {k: v for k, v in data.items() if k != "schema"}, str(path))


@dataclass
class Run:
    """A run folder as reports, compare and export see it."""

    path: Path
    meta: RunMeta
    records: list[CellRecord]

    def task(self, name: str) -> spec.Task | None:
        return self.meta.task(name)


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).is_file():
        raise FwbenchError(f"{run_dir} has no {RESULTS}: not an fwbench run folder")
    found = read_records(run_dir / RESULTS)  # first: a foreign results file is named as such
    return Run(run_dir, load_meta(run_dir), found)


def source_sha256(adapter: str) -> str | None:
    """sha256 of the source file of an adapter's module ("module:Class"), located, never
    imported (so no framework is imported to describe a run)."""
    module = adapter.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if not found or not found.origin or not os.path.isfile(found.origin):
        return None
    return hashlib.sha256(Path(found.origin).read_bytes()).hexdigest()


def fields_markdown() -> str:
    """The README's table of record fields, generated from ``CellRecord`` (a test keeps the
    README equal to it: ``python -m fwbench.harness.records`` prints it)."""
    rows = ["| field | unit | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {unit} | {doc} |" for name, unit, doc in record_fields()]
    rows += ["", "Statuses: " + "; ".join(f"`{k}` {v}" for k, v in STATUSES.items()) + "."]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(fields_markdown(), end="")
