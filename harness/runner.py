"""The runner: plan cells, prepare data, run each cell in its own worker process.

One cell = (task, backend, seed). Cells run one after another (nothing else competes for
the cores), in an order interleaved across backends so drift hits all of them alike. Each
worker gets a timeout, its stderr goes to ``logs/<cell>.log``, and its record is appended
to ``results.jsonl`` the moment the cell ends (write, flush, fsync: one line per record).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import data, environment, spec
from .adapter import Backend
from .errors import FwbenchError

RESULTS = "results.jsonl"
RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunConfig:
    tasks: tuple[str, ...]
    backends: tuple[str, ...]
    profile: str
    seeds: tuple[int, ...]
    threads: int
    timeout_s: float
    data_dir: str | None = None
    repeats: int = 1  # repeats > 0 are timing-only re-runs of each cell
    memory_limit_gib: float | None = None
    deterministic: bool = False
    timing_steps: int = 200  # steps of a timing-only repeat

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    record: dict[str, Any] = field(default_factory=dict)


def plan(config: RunConfig) -> list[Cell]:
    """Repeats, then seeds outermost, backends innermost: every backend runs before any
    backend repeats, so drift over the run hits all backends alike."""
    return [Cell(t, b, s, r) for r in range(config.repeats) for s in config.seeds
            for t in config.tasks for b in config.backends]


def record_ident(r: dict[str, Any]) -> tuple[str, str, int, int]:
    return (r["task"], r["backend"], r["seed"], r.get("repeat", 0))


def append_record(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, allow_nan=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(value: Any) -> Any:
    """NaN/inf -> None so every record is strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results file; a partial last line (a killed run) is ignored."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline yet: the write was cut short
                continue
            raise FwbenchError(f"{path}: line {i + 1} is not JSON; is this an fwbench results file?")
        if not isinstance(rec, dict) or not {"task", "backend", "seed", "status"} <= rec.keys():
            raise FwbenchError(f"{path}: line {i + 1} is not an fwbench record")
        records.append(rec)
    return records


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_worker(cfg: dict[str, Any], log_path: Path, timeout_s: float,
                on_event: Callable[[dict[str, Any]], None],
                memory_limit_gib: float | None = None) -> dict[str, Any]:
    """Run one worker process; returns its record, or a timeout/oom/crashed record.

    The worker runs in its own process group (killed whole on timeout, memory limit or
    Ctrl-C) and dies with the runner (it asks the kernel for SIGKILL on its parent's death).
    The memory limit is enforced on the resident memory of the worker's process tree,
    sampled every 0.1 s (an address-space rlimit would break JAX and TensorFlow, which
    reserve far more virtual memory than they use).
    """
    import psutil

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({**cfg, "runner_pid": os.getpid()}, f)
        cfg_path = f.name
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    record: dict[str, Any] | None = None
    limit = memory_limit_gib * 2**30 if memory_limit_gib else None
    outcome: dict[str, Any] | None = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fwbench.harness.worker", cfg_path],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
            env=env, start_new_session=True,
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
        try:
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
                        record = event["record"]
                    else:
                        on_event(event)
                    continue
                if time.monotonic() >= deadline:
                    _kill(proc)
                    outcome = {"status": "timeout", "error": f"no result after {timeout_s:g} s; killed"}
                    break
                if limit is not None:
                    rss = _tree_rss(watched)
                    if rss > limit:
                        _kill(proc)
                        outcome = {"status": "oom", "error": f"resident memory {rss / 2**30:.1f} GiB "
                                   f"exceeded the limit of {memory_limit_gib:g} GiB; killed"}
                        break
            proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            os.unlink(cfg_path)
    if outcome is not None:
        return outcome
    if record is not None:
        return record
    code = proc.returncode
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return {"status": "oom", "error": f"worker killed by SIGKILL (the kernel's out-of-memory "
                    f"killer?); see {log_path}"}
        return {"status": "crashed", "error": f"worker killed by {name}; see {log_path}"}
    return {"status": "crashed", "error": f"worker exited with code {code} without a record; see {log_path}"}


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _with_options(backend: Backend, config: RunConfig, cell: Cell) -> dict[str, Any]:
    fields = dataclasses.asdict(backend)
    if config.deterministic:
        fields["options"] = {**fields["options"], "deterministic": True, "seed": cell.seed}
    return fields


def new_run_dir(base: Path = Path("runs")) -> Path:
    return base / datetime.now().strftime("%Y%m%d-%H%M%S")


def run(config: RunConfig, run_dir: Path, backends: dict[str, Backend],
        on_event: Callable[[CellEvent], None] = lambda e: None,
        on_status: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Run every planned cell not already in ``run_dir``; returns this run's records."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    results = run_dir / RESULTS
    done = {record_ident(r) for r in read_records(results)}
    meta_path = run_dir / RUN_JSON
    if not done:  # a new run (or one that died before its first record): fresh metadata
        meta = {
            "fwbench_run": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_json(),
            "environment": environment.capture(),
            "backends": {n: {"requires": backends[n].versions(), "options": backends[n].options,
                             "source": backends[n].source} for n in config.backends},
        }
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    meta = json.loads(meta_path.read_text())
    cpus = environment.available_cpus()[: config.threads]
    if "calibration" not in meta:
        on_status(f"calibrating float32 GEMM peak on {config.threads} thread(s)")
        outcome = run_worker({"mode": "calibrate", "threads": config.threads, "cpus": cpus},
                              run_dir / "logs" / "calibration.log", 300, lambda e: None)
        meta["calibration"] = {"gemm_peak_gflops": outcome.get("gemm_peak_gflops"),
                               "threads": config.threads, "blas": outcome.get("blas")}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    peak = meta["calibration"].get("gemm_peak_gflops")

    prepared: dict[str, Path] = {}
    for dataset in sorted({spec.TASKS[t].dataset for t in config.tasks}):
        on_status(f"preparing {dataset} ({config.profile} profile)")
        prepared[dataset] = data.prepare(dataset, config.profile, config.data_dir)

    records = []
    for cell in plan(config):
        if cell.ident in done:
            continue
        task = spec.TASKS[cell.task]
        on_event(CellEvent(cell, "start", epochs=task.epochs(config.profile)))
        cfg = {
            "task": cell.task, "seed": cell.seed, "profile": config.profile,
            "backend": _with_options(backends[cell.backend], config, cell),
            "threads": config.threads, "cpus": cpus,
            "data_path": str(prepared[task.dataset]),
            "timing_only": cell.repeat > 0, "max_steps": config.timing_steps,
        }
        log_path = run_dir / "logs" / f"{cell.key}.log"
        started = time.time()

        def forward(event: dict[str, Any], cell: Cell = cell) -> None:
            on_event(CellEvent(cell, "progress", event.get("epoch", 0), event.get("epochs", 0),
                               event.get("step", 0), event.get("steps", 0), event.get("phase", "train")))

        outcome = run_worker(cfg, log_path, config.timeout_s, forward, config.memory_limit_gib)
        record = {
            "task": cell.task, "backend": cell.backend, "seed": cell.seed, "repeat": cell.repeat,
            "profile": config.profile,
            "status": outcome.pop("status"), "error": outcome.pop("error", None),
            "test_accuracy": outcome.pop("test_accuracy", None),
            **outcome,
            "threads": config.threads, "affinity": cpus,
            "wall_s": time.time() - started,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "log": str(log_path.relative_to(run_dir)),
        }
        if peak and record.get("achieved_gflops"):
            record["pct_of_gemm_peak"] = 100 * record["achieved_gflops"] / peak
        record = _clean(record)
        append_record(results, record)
        records.append(record)
        on_event(CellEvent(cell, "end", record=record))
    return records

