"""What every executor shares: the ``Executor`` protocol the runner calls, the ``Job`` it
hands over and the ``Done`` it gets back, and ``execute``, the one way a job runs on a machine
(a worker process under ``supervise``, pinned, with the noise on its cores measured around it).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from fwbench.harness import records
from fwbench.harness.measure import environment, noise
from fwbench.harness.run.supervise import Outcome, run_worker

LOCAL = "local"  # the node name of every job of the local executor


@dataclass(frozen=True)
class NodeInfo:
    """A machine that runs jobs, as it describes itself (a row of the node table)."""

    node: str  # "local", or Ray's node id
    host: str
    hardware: records.Hardware
    cpus: list[int]  # the cores its jobs may use (its processes' CPU affinity)
    memory_gib: float
    fwbench: str  # environment.fwbench_version() there
    python: str  # the interpreter of its jobs (sys.executable there)


@dataclass(frozen=True)
class Job:
    """One worker process: a cell's training run, or a calibration or drift probe."""

    key: str  # the cell's key, "calibration", "drift-0"
    request: records.Request  # its cpus are set where it runs: that node's cores
    log_path: Path  # the worker's log in the run folder (the driver's side)
    timeout_s: float
    memory_limit_gib: float | None = None
    python: str | None = None  # a backend env's interpreter (--envs isolated)
    dataset: str | None = None  # whose prepared arrays ``request.data_path`` names
    node: str | None = None  # run on this node (the probes); None: the next free node
    cell: records.Cell | None = None  # the cell it runs (None: a calibration or drift probe)


@dataclass
class Done:
    """How a job ended, where it ran, and when (the node's clock, epoch seconds)."""

    job: Job
    outcome: Outcome
    node: str
    hardware: records.Hardware | None
    cpus: list[int]
    started: float
    ended: float
    noise: records.Noise | None = None  # what else used its cores meanwhile
    lost_node: str | None = None  # a node that died during an earlier attempt of the job
    log_text: str | None = None  # the worker's log, when it ran on another machine


class Executor(Protocol):
    """Where the worker processes of a run execute (``local``: this machine; ``ray``: the nodes
    of a Ray cluster). The runner plans and records; an executor only runs jobs."""

    name: str

    def nodes(self) -> list[NodeInfo]:
        """The machines that take jobs (one for the local executor)."""

    def start(self, run_dir: Path, prepared: dict[str, Path]) -> None:
        """Before the first job: make the prepared data sets reachable where jobs run."""

    def noise(self, threads: int, seconds: float) -> dict[str, noise.Busy]:
        """What else uses the cores jobs would use, per node, over ``seconds``."""

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, str], None] = ...,
            on_progress: Callable[[Job, dict[str, Any]], None] = ...,
            on_status: Callable[[str], None] = ...) -> Iterator[Done]:
        """Run the jobs in their order; yield each one's ``Done`` as it ends."""

    def close(self) -> None:
        """Release what ``__init__`` and ``start`` took."""


def node_info(node: str = LOCAL) -> NodeInfo:
    """This machine (or the node this runs on) as a ``NodeInfo``."""
    import psutil

    return NodeInfo(node, platform.node(), environment.hardware_fingerprint(),
                    environment.available_cpus(), psutil.virtual_memory().total / 2**30,
                    environment.fwbench_version(), sys.executable)


def execute(job: Job, node: str, hardware: records.Hardware | None, data_path: str | None = None,
            on_event: Callable[[dict[str, Any]], None] = lambda e: None) -> Done:
    """Run one job's worker process here, pinned to the first ``threads`` cores this process
    may use, and measure what else used those cores meanwhile. Both executors run this."""
    threads = job.request.threads
    cpus = environment.available_cpus()[:threads]
    started = time.time()
    if len(cpus) < threads:
        outcome = Outcome("failed", f"node {node} has {len(cpus)} core(s) available for "
                                    f"{threads} thread(s)")
        return Done(job, outcome, node, hardware, cpus, started, time.time())
    changes: dict[str, Any] = {"cpus": cpus}
    if data_path is not None:
        changes["data_path"] = data_path
    request = dataclasses.replace(job.request, **changes)
    watch = noise.Watch(cpus).start()
    own = time.process_time()  # this process's CPU, all its threads: the cost of supervising
    outcome = run_worker(request, job.log_path, job.timeout_s, on_event, job.memory_limit_gib,
                         python=job.python)
    own = time.process_time() - own
    watch.stop()
    busy = watch.result([os.getpid(), *outcome.pids])
    ended = time.time()
    seen = records.Noise(busy.others_cores, busy.steal_fraction, busy.loadavg_1m, busy.busy,
                         round(own / max(ended - started, 1e-9), 5))
    return Done(job, outcome, node, hardware, cpus, started, ended, seen)


def probe_noise(threads: int, seconds: float) -> noise.Busy:
    """``noise.probe`` of the cores this process's jobs would use."""
    return noise.probe(environment.available_cpus()[:threads], seconds)


def one_line(exc: BaseException, width: int = 240) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= width else text[: width - 1] + "…"
