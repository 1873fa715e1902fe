"""The Ray executor: the jobs of a run on the nodes of a Ray cluster.

The runner plans the cells and stays the only writer of ``results.jsonl`` and ``run.json``;
an executor runs ``Job``s (a cell's worker process, or a calibration or drift probe) and hands
back each one's ``Done`` as it finishes, from which the runner builds and appends the record.

- ``LocalExecutor`` (the default): one job after another, on this machine, exactly as fwbench
  always ran them.
- ``RayExecutor`` (``fwbench run --executor ray``): the jobs run as Ray tasks on the nodes of a
  Ray cluster, one job per node at a time. Ray's CPUs are logical (it pins nothing), so each
  node advertises one ``fwbench_slot`` resource, every task asks for it (and ``num_cpus=0``),
  and the driver itself places each job on a free node (``NodeAffinitySchedulingStrategy``),
  in the order the runner planned (backends interleaved). On the node the task runs
  ``execute``, the same code as the local executor: the same fresh worker process
  (``supervise.run_worker``: watchdog, timeout, memory limit), pinned to the cores the node's
  processes may use (``environment.available_cpus()`` there, i.e. how the node was started:
  ``taskset``, a cgroup, a container), with the same noise measurement around it.

Prepared data reach the nodes through Ray's object store (``ray.put`` once per data set,
with its sha256), are written to a node-local cache file and verified there; with
``shared_data`` the nodes read the driver's prepared files at the same path (shared storage),
verified too. A node that dies during a job costs that job one retry on another node; a
second loss makes the cell ``lost`` (with the node id). A stop signal (``signals``) or an
error in the driver cancels the tasks in flight, first gently (each kills its cell's
processes and removes its node folder), then by force; the driver's death kills them (Ray
ties a task to its owner), and ``--resume`` finishes the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import environment, noise
from fwbench.harness.run import signals
from fwbench.harness.run.executors.base import Done, Job, NodeInfo, execute, node_info, one_line, probe_noise
from fwbench.harness.run.supervise import Outcome

SLOT = "fwbench_slot"  # the custom resource: one per node, one job per node at a time
NODE_PROBE_S = 120.0  # how long a node may take to answer the node probe
CANCEL_WAIT_S = 10.0  # how long cancelled tasks may take to clean up before they are forced

# The functions below with a leading ``_ray`` run on the nodes, as Ray tasks.


def _ray_node_info() -> NodeInfo:
    import ray

    return node_info(ray.get_runtime_context().get_node_id())


def _node_data(dataset: str, sha256: str, holder: list[Any], shared_path: str | None) -> str:
    """The prepared arrays of ``dataset`` on this node, verified against ``sha256``: the
    shared file itself, or a node-local cache file written from the object store."""
    from filelock import FileLock

    from fwbench.harness import data

    if shared_path is not None:
        if not os.path.isfile(shared_path):
            raise FwbenchError(f"{shared_path} (the shared prepared {dataset} data) is not on "
                               "this node; drop --ray-data shared to ship it through Ray")
        data.verify(Path(shared_path), sha256)
        return shared_path
    path = data.cache_dir() / "prepared" / "nodes" / f"{dataset}-{sha256[:16]}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file() and data.sha256_file(path) == sha256:
            return str(path)
        import ray

        blob = ray.get(holder[0])
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise FwbenchError(f"the prepared {dataset} data from the object store do not match "
                               f"their sha256 {sha256[:12]}...")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        data.verify(path, sha256)  # as written on this node's disk
    return str(path)


JOB_PREFIX = "fwbench-job-"  # a job's node-side folder: JOB_PREFIX + the Ray worker's pid + "-..."


def _sweep_job_folders() -> None:
    """Remove the job folders of Ray workers that are gone: one killed with its node (the
    raylet died mid-cell) never ran its ``finally``."""
    import psutil

    for folder in Path(tempfile.gettempdir()).glob(f"{JOB_PREFIX}*-*"):
        pid = folder.name[len(JOB_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _ray_job(job: Job, data: tuple[str, str, list[Any], str | None] | None) -> Done:
    """A job on a node: its prepared data, then ``execute`` with the log in a node-local
    folder (also the worker's working directory), returned with the outcome."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    hardware = environment.hardware_fingerprint()
    _sweep_job_folders()
    folder = Path(tempfile.mkdtemp(prefix=f"{JOB_PREFIX}{os.getpid()}-"))
    local = dataclasses.replace(job, log_path=folder / job.log_path.name)
    try:
        try:
            data_path = _node_data(*data) if data is not None else None
        except (FwbenchError, OSError) as exc:
            now = time.time()
            return Done(job, Outcome("failed", str(exc)), node, hardware, [], now, now)
        done = execute(local, node, hardware, data_path)
        log = local.log_path
        done.log_text = log.read_text(errors="replace") if log.is_file() else ""
        if done.outcome.error:
            done.outcome.error = done.outcome.error.replace(str(log), str(job.log_path))
        done.job = job
        return done
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_reachable(address: str) -> None:
    """An explicit host:port that nobody listens on is refused at once (Ray itself would
    retry for minutes)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError):
        raise _no_cluster(address) from None


def _no_cluster(address: str) -> FwbenchError:
    return FwbenchError(f"no Ray cluster at {address}: start one with `ray start --head "
                        f"--resources '{{\"{SLOT}\": 1}}'` (see docs/cluster.md)")


class RayExecutor:
    """Jobs as Ray tasks, one per node at a time, placed by the driver (see the module)."""

    name = "ray"

    def __init__(self, address: str = "auto", shared_data: bool = False) -> None:
        try:
            import ray
        except ImportError:
            raise FwbenchError('--executor ray needs Ray: pip install -e ".[ray]"') from None
        self._ray = ray
        self.address = address
        self.shared_data = shared_data
        self._dead: set[str] = set()
        self._data: dict[str, tuple[str, str, list[Any], str | None]] = {}
        self._messages: Any = None
        _check_reachable(address)
        self._quiet()
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                     namespace="fwbench")
        except ConnectionError:
            raise _no_cluster(address) from None
        # Ray's own retries are off: fwbench retries a lost cell itself, once, elsewhere.
        self._job = ray.remote(num_cpus=0, resources={SLOT: 1}, max_retries=0,
                               retry_exceptions=False)(_ray_job)
        try:
            self._nodes = self._probe_nodes()
        except BaseException:
            ray.shutdown()
            raise

    # -- the cluster

    def _alive(self) -> dict[str, dict[str, Any]]:
        return {n["NodeID"]: n for n in self._ray.nodes() if n.get("Alive")}

    def _pinned(self, node: str, **options: Any) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=node, soft=False, **options)

    def _probe_nodes(self) -> list[NodeInfo]:
        """Every live node with a fwbench slot describes itself (no slot taken); a node with
        more than one slot, or another fwbench, is refused."""
        ray = self._ray
        alive = self._alive()
        slots = {nid: n.get("Resources", {}).get(SLOT, 0) for nid, n in alive.items()}
        with_slots = sorted(nid for nid, s in slots.items() if s)
        if not with_slots:
            raise FwbenchError(f"the Ray cluster at {self.address} has no node with a {SLOT} "
                               f"resource: start each node with --resources '{{\"{SLOT}\": 1}}' "
                               "(see docs/cluster.md)")
        many = [f"{nid[:12]} ({slots[nid]:g})" for nid in with_slots if slots[nid] != 1]
        if many:
            raise FwbenchError(f"node(s) {', '.join(many)} advertise more than one {SLOT}: one "
                               f"job per node at a time needs exactly 1 each")
        probe = ray.remote(_ray_node_info)
        refs = {nid: probe.options(num_cpus=0, scheduling_strategy=self._pinned(nid),
                                   max_retries=0).remote() for nid in with_slots}
        found: list[NodeInfo] = []
        gone: list[str] = []
        for nid, ref in refs.items():
            try:
                found.append(ray.get(ref, timeout=NODE_PROBE_S))
            except ray.exceptions.GetTimeoutError:
                raise FwbenchError(f"node {nid[:12]} did not answer within {NODE_PROBE_S:g} s") from None
            except ray.exceptions.TaskUnschedulableError as exc:
                # Right after a raylet dies the cluster still lists its node as alive; pinning a
                # task to it is refused: that node is gone, not misconfigured. Skip it.
                gone.append(f"{nid[:12]} ({one_line(exc)})")
            except ray.exceptions.RayError as exc:
                raise FwbenchError(f"node {nid[:12]} cannot run fwbench: {one_line(exc)}; install "
                                   "the same fwbench in the Python that runs `ray start` there "
                                   "(see docs/cluster.md)") from None
        if not found:
            raise FwbenchError(f"no node of the Ray cluster at {self.address} can take a cell: "
                               + "; ".join(gone))
        mine = environment.fwbench_version()
        other = [f"{n.node[:12]} ({n.fwbench})" for n in found if n.fwbench != mine]
        if other:
            raise FwbenchError(f"node(s) {', '.join(other)} run another fwbench than this driver "
                               f"({mine}): install the same version everywhere")
        return found

    def nodes(self) -> list[NodeInfo]:
        """The live nodes with a slot, in the node table's order."""
        return [n for n in self._nodes if n.node not in self._dead]

    def _hardware(self, node: str) -> records.Hardware | None:
        return next((n.hardware for n in self._nodes if n.node == node), None)

    def _quiet(self) -> None:
        """Ray's driver prints the cluster's error messages (a dying raylet's last log lines)
        to stdout; they go to the run's logs/ray.log instead (``start``)."""
        try:
            import ray._private.worker as worker
        except ImportError:  # pragma: no cover - another Ray layout: its messages stay
            return

        def sink(data: dict[str, Any], ignore_prefix: bool = False) -> None:
            if self._messages is not None:
                self._messages.write("".join(f"({data.get('pid')}) {line}\n"
                                             for line in data.get("lines", [])))
                self._messages.flush()

        worker.print_to_stdstream = sink

    # -- the run

    def start(self, run_dir: Path, prepared: dict[str, Path]) -> None:
        """Put each data set into the object store once (or name the shared file)."""
        from fwbench.harness import data

        self._messages = open(run_dir / "logs" / "ray.log", "a", encoding="utf-8")
        for dataset, path in prepared.items():
            sha = data.sha256_file(path)
            if self.shared_data:
                self._data[dataset] = (dataset, sha, [], str(path.resolve()))
            else:
                self._data[dataset] = (dataset, sha, [self._ray.put(path.read_bytes())], None)

    def noise(self, threads: int, seconds: float) -> dict[str, noise.Busy]:
        probe = self._ray.remote(probe_noise)
        refs = {n.node: probe.options(num_cpus=0, scheduling_strategy=self._pinned(n.node),
                                      max_retries=0).remote(threads, seconds)
                for n in self.nodes()}
        try:
            return {node: self._ray.get(ref, timeout=NODE_PROBE_S) for node, ref in refs.items()}
        except self._ray.exceptions.RayError as exc:
            raise FwbenchError(f"the noise probe of the nodes failed: {one_line(exc)}") from None

    def _free_node(self, job: Job, busy: set[str], avoid: list[str]) -> str | None:
        if job.node is not None:
            return job.node if job.node not in busy else None
        for n in self.nodes():
            if n.node not in busy and n.node not in avoid:
                return n.node
        return None

    def _lost(self, job: Job, lost: list[str], started: float, why: str) -> Done:
        node = lost[-1] if lost else (job.node or "")
        return Done(job, Outcome("lost", why), node, self._hardware(node), [], started,
                    time.time(), lost_node=lost[0] if len(lost) > 1 else None)

    def run(self, jobs: Iterable[Job], on_start: Callable[[Job, str], None] = lambda j, n: None,
            on_progress: Callable[[Job, dict[str, Any]], None] = lambda j, e: None,
            on_status: Callable[[str], None] = lambda s: None) -> Iterator[Done]:
        """Submit the jobs in their order, each to the next free node, and yield each ``Done``
        as it finishes (progress within a job is not streamed from the nodes)."""
        ray = self._ray
        # The node died (or is gone): never again in this run. The Ray worker died, or the
        # result was lost with its node's object store: another node for this job's retry.
        node_died = (ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError,
                     ray.exceptions.TaskUnschedulableError)
        lost_errors = (*node_died, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
        pending: deque[tuple[Job, list[str]]] = deque((job, []) for job in jobs)
        inflight: dict[Any, tuple[Job, str, list[str], float]] = {}
        last_check = 0.0
        try:
            while pending or inflight:
                if time.monotonic() - last_check > 2:  # nodes the cluster saw die meanwhile
                    alive = self._alive()
                    self._dead.update(n.node for n in self._nodes if n.node not in alive)
                    last_check = time.monotonic()
                busy = {node for _, node, _, _ in inflight.values()}
                while pending:
                    job, lost = pending[0]
                    if job.node is not None and job.node in self._dead:
                        pending.popleft()
                        yield self._lost(job, lost or [job.node], time.time(),
                                         f"its node {job.node} died before it ran")
                        continue
                    node = self._free_node(job, busy, lost)
                    if node is None:
                        break
                    pending.popleft()
                    data = self._data.get(job.dataset) if job.dataset else None
                    with signals.deferred():  # every submitted task is known to the finally
                        ref = self._job.options(scheduling_strategy=self._pinned(node)).remote(job, data)
                        inflight[ref] = (job, node, lost, time.time())
                    busy.add(node)
                    on_start(job, node)
                if not inflight:
                    for job, lost in pending:  # nowhere left to run them
                        yield self._lost(job, lost, time.time(), "no live node with a "
                                         f"{SLOT} is left in the Ray cluster")
                    pending.clear()
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    job, node, lost, submitted = inflight.pop(ref)
                    try:
                        done = ray.get(ref)
                    except lost_errors as exc:
                        if isinstance(exc, node_died):
                            self._dead.add(node)
                        lost = [*lost, node]
                        others = [n.node for n in self.nodes() if n.node not in lost]
                        if job.node is None and len(lost) < 2 and others:
                            on_status(f"{job.key}: lost on node {node[:12]} ({type(exc).__name__}); "
                                      "running it again on another node")
                            pending.appendleft((job, lost))
                            continue
                        why = " and ".join(f"node {n}" for n in lost)
                        yield self._lost(job, lost, submitted, f"{why} died during the job"
                                         + ("" if len(lost) > 1 or job.node else
                                            "; no other node was left to run it again"))
                        continue
                    except ray.exceptions.OutOfMemoryError as exc:
                        done = Done(job, Outcome("oom", f"Ray's memory monitor killed the job on "
                                                        f"node {node}: {one_line(exc)}"),
                                    node, self._hardware(node), [], submitted, time.time())
                    except ray.exceptions.RayError as exc:
                        done = Done(job, Outcome("crashed", f"the Ray task failed on node {node}: "
                                                            f"{one_line(exc)}"),
                                    node, self._hardware(node), [], submitted, time.time())
                    done = dataclasses.replace(done, job=job, lost_node=lost[0] if lost else None)
                    if done.log_text is not None:
                        job.log_path.write_text(done.log_text)
                    yield done
        finally:  # Ctrl-C, a stop signal, an error in the driver, or the caller stopped early
            with signals.deferred():
                self._cancel(list(inflight))

    def _cancel(self, refs: list[Any]) -> None:
        """Cancel the tasks in flight: first as a KeyboardInterrupt in each (its ``finally``
        kills the cell's processes and removes its node folder), then by force whatever has
        not ended within CANCEL_WAIT_S."""
        ray = self._ray
        for ref in refs:
            ray.cancel(ref)
        try:
            _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
        except ray.exceptions.RayError:
            left = refs
        for ref in left:
            ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._messages is not None:
            self._messages.close()
            self._messages = None
        self._ray.shutdown()
