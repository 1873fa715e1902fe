"""What else uses the run's CPUs? A cheap probe for around and between cells (Linux).

Timings are only as good as the machine is quiet. `snapshot` reads the per-CPU times of the
run's cores from /proc/stat and the CPU time of every process (psutil); `busy_between` turns
two snapshots into what other processes and the hypervisor took from those cores meanwhile;
`is_busy` says whether that is enough to distrust the timings. Needs no root; where /proc/stat
or a process's times cannot be read, the matching fields are None rather than an error.

"Other processes' CPU seconds on the pinned cores" is approximate: the cores' total busy time
(user + nice + system + irq + softirq) minus the CPU time of our own process tree, wherever
that ran. Our processes running on other cores (an unpinned runner) make it an underestimate;
a process that started and ended between the snapshots is seen only in the cores' totals.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable

OTHERS_CORES_MAX = 0.10
"""Busy when other processes used more than 10% of one core (on average over the interval,
0.1 s of CPU per second) on the run's cores: enough to move a 2-core step time by several %."""

STEAL_MAX = 0.05
"""Busy when the hypervisor stole more than 5% of the run's cores' time (a shared VM)."""

_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_BUSY = ("user", "nice", "system", "irq", "softirq")  # guest time is already inside user


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative seconds of one CPU, from /proc/stat."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float

    @property
    def busy(self) -> float:
        return sum(getattr(self, f) for f in _BUSY)

    @property
    def total(self) -> float:
        return sum(getattr(self, f) for f in _FIELDS)


@dataclass(frozen=True)
class ProcTimes:
    ppid: int
    name: str
    cpu_s: float  # user + system of the process itself
    children_s: float  # user + system of its children that it has waited for
    create_time: float


@dataclass(frozen=True)
class Snapshot:
    monotonic: float
    wall: float
    cpus: tuple[int, ...]
    per_cpu: dict[int, CpuTimes] | None  # None: /proc/stat unreadable
    procs: dict[int, ProcTimes] | None  # None: psutil could not list processes
    loadavg: tuple[float, float, float] | None


@dataclass(frozen=True)
class Busy:
    """What happened on ``cpus`` between two snapshots. Time fields are seconds; None where
    the source could not be read."""

    interval_s: float
    cpus: tuple[int, ...]
    cores_busy_s: float | None  # non-idle time of those cores, everyone's
    own_s: float | None  # CPU time of our process tree (own_pids and descendants), any core
    others_s: float | None  # max(0, cores_busy_s - own_s): other processes on those cores
    others_cores: float | None  # others_s / interval_s, in cores
    steal_fraction: float | None  # stolen by the hypervisor / all time of those cores
    iowait_fraction: float | None
    loadavg_1m: float | None  # whole machine (in a container: the host's)
    top_others: tuple[tuple[int, str, float], ...]  # (pid, name, CPU s) outside our tree, any core

    @property
    def busy(self) -> bool | None:
        return is_busy(self)

    def text(self) -> str:
        parts = []
        if self.others_cores is not None:
            parts.append(f"other processes used {self.others_cores:.2f} cores")
        if self.steal_fraction is not None:
            parts.append(f"steal {100 * self.steal_fraction:.1f}%")
        if self.loadavg_1m is not None:
            parts.append(f"load {self.loadavg_1m:.2f}")
        if self.top_others:
            parts.append("top: " + ", ".join(f"{n} ({pid}) {s:.2f} s" for pid, n, s in self.top_others[:3]))
        return (f"cores {','.join(map(str, self.cpus))} over {self.interval_s:.2f} s: "
                + ("; ".join(parts) or "nothing readable"))


def _read_proc_stat(cpus: Iterable[int]) -> dict[int, CpuTimes] | None:
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    wanted = set(cpus)
    out = {}
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            cpu = int(name[3:])
            ticks = [int(v) for v in values[:len(_FIELDS)]]
        except ValueError:
            continue
        if cpu in wanted:
            ticks += [0] * (len(_FIELDS) - len(ticks))  # old kernels lack steal
            out[cpu] = CpuTimes(*(t / tick for t in ticks))
    return out if out else None


def _read_procs() -> dict[int, ProcTimes] | None:
    try:
        import psutil
    except ImportError:
        return None
    out = {}
    try:
        for p in psutil.process_iter(["ppid", "name", "cpu_times", "create_time"]):
            info = p.info
            t = info.get("cpu_times")
            if t is None:  # access denied or gone
                continue
            out[p.pid] = ProcTimes(
                info.get("ppid") or 0, info.get("name") or "?", t.user + t.system,
                getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0),
                info.get("create_time") or 0.0)
    except Exception:  # noqa: BLE001 - psutil on an odd platform: degrade, never fail a run
        return None
    return out


def _default_cpus() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


def snapshot(cpus: Iterable[int] | None = None) -> Snapshot:
    """Per-CPU times of ``cpus`` (default: this process's affinity) and every process's CPU
    time, now."""
    cpus = tuple(sorted(cpus)) if cpus is not None else _default_cpus()
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    return Snapshot(time.monotonic(), time.time(), cpus, _read_proc_stat(cpus), _read_procs(), load)


def _tree(procs: dict[int, ProcTimes], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    seen, todo = set(), [r for r in roots]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return seen


def _own_s(procs: dict[int, ProcTimes], roots: Iterable[int]) -> float:
    """CPU time of the tree, counting reaped children through their parents' children time:
    the difference of two of these is the tree's CPU time in between."""
    return sum(procs[p].cpu_s + procs[p].children_s for p in _tree(procs, roots) if p in procs)


def busy_between(before: Snapshot, after: Snapshot, own_pids: Iterable[int] = ()) -> Busy:
    """What other processes and the hypervisor took from ``before.cpus`` between the two
    snapshots. ``own_pids``: the roots of our process tree (their descendants count too),
    e.g. [os.getpid()] for a runner and its workers."""
    own_pids = list(own_pids)
    interval = max(after.monotonic - before.monotonic, 1e-9)
    cores_busy = steal = iowait = None
    if before.per_cpu and after.per_cpu:
        common = [c for c in before.cpus if c in before.per_cpu and c in after.per_cpu]
        if common:
            d = {f: sum(getattr(after.per_cpu[c], f) - getattr(before.per_cpu[c], f) for c in common)
                 for f in _FIELDS}
            cores_busy = sum(d[f] for f in _BUSY)
            total = sum(d.values())
            steal = d["steal"] / total if total > 0 else 0.0
            iowait = d["iowait"] / total if total > 0 else 0.0
    own = others = others_cores = None
    top: tuple[tuple[int, str, float], ...] = ()
    if before.procs is not None and after.procs is not None:
        own = max(0.0, _own_s(after.procs, own_pids) - _own_s(before.procs, own_pids))
        mine = _tree(before.procs, own_pids) | _tree(after.procs, own_pids)
        deltas = []
        for pid, p in after.procs.items():
            if pid in mine:
                continue
            q = before.procs.get(pid)
            if q is not None and q.create_time == p.create_time:
                deltas.append((pid, p.name, p.cpu_s - q.cpu_s))
            elif p.create_time >= before.wall - 1:  # started in between
                deltas.append((pid, p.name, p.cpu_s))
        top = tuple(sorted((x for x in deltas if x[2] > 0), key=lambda x: -x[2])[:5])
        if cores_busy is not None:
            others = max(0.0, cores_busy - own)
            others_cores = others / interval
    load = after.loadavg[0] if after.loadavg else None
    return Busy(interval, before.cpus, cores_busy, own, others, others_cores, steal, iowait, load, top)


def is_busy(b: Busy, others_cores_max: float = OTHERS_CORES_MAX,
            steal_max: float = STEAL_MAX) -> bool | None:
    """True when other processes used more than ``others_cores_max`` of a core on the run's
    cores, or the hypervisor stole more than ``steal_max`` of their time; None when neither
    could be measured."""
    if b.others_cores is None and b.steal_fraction is None:
        return None
    return bool((b.others_cores is not None and b.others_cores > others_cores_max)
                or (b.steal_fraction is not None and b.steal_fraction > steal_max))


class Watch:
    """The noise instrument: what else used ``cpus`` between ``start()`` and ``stop()``
    (``result``: a ``Busy``, with our own process tree as ``own_pids``)."""

    def __init__(self, cpus: Iterable[int] | None = None) -> None:
        self.cpus = cpus
        self._before: Snapshot | None = None
        self._after: Snapshot | None = None

    def start(self) -> Watch:
        self._before = snapshot(self.cpus)
        return self

    def stop(self) -> None:
        assert self._before is not None, "stop() before start()"
        self._after = snapshot(self._before.cpus)

    def result(self, own_pids: Iterable[int] | None = None) -> Busy:
        assert self._before is not None and self._after is not None, "result() before stop()"
        own = [os.getpid()] if own_pids is None else list(own_pids)
        return busy_between(self._before, self._after, own)


def probe(cpus: Iterable[int] | None = None, seconds: float = 1.0,
          own_pids: Iterable[int] | None = None) -> Busy:
    """Watch ``cpus`` for ``seconds`` while we sleep, with our own process (and its
    descendants) as the own tree."""
    watch = Watch(cpus).start()
    time.sleep(seconds)
    watch.stop()
    return watch.result(own_pids)
