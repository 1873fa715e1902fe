"""fwbench's adapters against hand-written reference loops (``fwbench overhead --against idiomatic``).

``fwbench overhead`` compares the harness loop with a bare loop on the *same* adapter, so it
cannot see an adapter that is slower than a good loop written by hand in its framework. The
reference loops in ``benchmarks/idiomatic/`` (one module per framework, each exposing
``make_step(task_name, threads) -> step(x, y) -> float``) train each task the way the
framework's own documentation does: its layers, optimizers, layout, compilation and default
initialisers. They do not import fwbench.

The sweep: for each round, task and backend, one fresh worker process (``worker.idiomatic``)
times the adapter's ``train_step``, the next one the reference loop's step -- interleaved
(adapter, loop, adapter, loop, ...), then one process per variant of the framework
(``torch-compile``, ``tensorflow-xla``, ``mindspore-pynative``, ``paddle-static``) -- on the
same batches in the same order, with warm-up steps first. Each process is reduced to one figure, the median of
its timed steps (``stats.process_figure``), and the table reports, per task and backend:

- ratio = median adapter figure / median loop figure over rounds, with a bootstrap CI that
  resamples processes (``stats.ratio_ci``, from 3 rounds); above 1: the adapter is slower;
- target = adapter / the faster of (the loop, the best variant), the issue's goal is <= 1.05.

Nothing here imports a framework; the loops are imported inside worker processes only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from fwbench.harness import stats
from fwbench.harness.catalog import labels
from fwbench.harness.catalog import tasks as task_registry
from fwbench.harness.errors import FwbenchError

LOOPS_ENV = "FWBENCH_IDIOMATIC_DIR"  # another folder of reference loops (same file names)
LOOPS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "idiomatic"
# framework family (a backend's base name) -> its reference loop's module
LOOP_FILES = {
    "torch": "torch_loop.py",
    "tensorflow": "keras_loop.py",
    "mindspore": "mindspore_loop.py",
    "jax": "jax_loop.py",
    "flax": "flax_loop.py",
    "paddle": "paddle_loop.py",
}
PROFILES = ("smoke", "quick")
WARMUP = 5  # untimed steps per process: compilation, tracing, allocator
DEFAULT_ROUNDS = 5
DEFAULT_STEPS = 200
TIMEOUT_S = 1800.0  # per process (torch.compile of the LSTM on 2 cores takes minutes)
TARGET = 1.05

EXPLANATION = (
    "ratio = fwbench adapter / hand-written idiomatic loop (benchmarks/idiomatic), each the "
    "median over processes of a process's median step time; above 1 = fwbench's adapter "
    "slower than the hand-written loop. CI: 95% bootstrap over processes. target = adapter / "
    f"the faster of the loop and the best variant (named), goal <= {TARGET:g}.")


# ------------------------------------------------------------------------- the loops


def loops_dir() -> Path:
    return Path(os.environ.get(LOOPS_ENV) or LOOPS_DIR)


def _plugin_loops(known: Mapping[str, Any] | None) -> dict[str, str]:
    """family -> module of its reference loop, for the backends that declare one
    (``Backend.idiomatic``: a plugin's own; a base backend, not a variant)."""
    return {n: b.idiomatic for n, b in (known or {}).items()
            if b.idiomatic and not b.options and n not in LOOP_FILES}


def family(backend: str, known: Mapping[str, Any] | None = None) -> str | None:
    """The framework family of a backend name (``torch-compile#2`` -> ``torch``), if any: a
    built-in loop's, or (with ``known``) a plugin backend's that declares its own loop."""
    base = labels.uncopied(backend)
    for fam in [*LOOP_FILES, *_plugin_loops(known)]:
        if base == fam or base.startswith(fam + "-"):
            return fam
    return None


def loop_path(backend: str, known: Mapping[str, Any] | None = None) -> Path:
    """The reference loop of ``backend``'s framework; FwbenchError if it has none."""
    fam = family(backend, known)
    if fam is None:
        raise FwbenchError(f"backend {backend!r} has no idiomatic reference loop "
                           f"(there are loops for {', '.join(LOOP_FILES)}; a plugin declares "
                           "its own with Backend(idiomatic=MODULE))")
    plugin = _plugin_loops(known).get(fam)
    if plugin is not None:
        try:
            found = importlib.util.find_spec(plugin)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin:
            raise FwbenchError(f"backend {fam!r}: its reference loop module {plugin!r} is not "
                               "importable here")
        return Path(found.origin)
    path = loops_dir() / LOOP_FILES[fam]
    if not path.is_file():
        raise FwbenchError(f"reference loop {path} not found (the loops live in the source tree's "
                           f"benchmarks/idiomatic; set {LOOPS_ENV} to their folder)")
    return path


def variants_of(backend: str, known: Mapping[str, Any]) -> list[str]:
    """The other installed backends of ``backend``'s family that compute the same function:
    the variants of a base backend (the backends registered on its adapter class, with
    options); for a variant, the base and the other variants."""
    fam = family(backend, known)
    if fam is None:
        return []
    if fam not in known:
        return []
    base = labels.uncopied(backend)
    # the registered backends on the family's adapter class (variants pass it options)
    same = [n for n, b in known.items() if b.adapter == known[fam].adapter
            and family(n, known) == fam
            and labels.BackendLabel.parse(n).name == labels.base(n)]
    return [c for c in same if c != base and known[c].installed]


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Job:
    """One worker process of the sweep."""

    task: str
    column: str  # the backend whose row/column this measures
    backend: str  # the backend whose adapter runs (column or a variant); kind "idiomatic": column
    kind: str  # "adapter" | "idiomatic"
    round: int

    @property
    def label(self) -> str:
        if self.kind == "idiomatic":
            return "loop"
        return "adapter" if self.backend == self.column else self.backend

    @property
    def key(self) -> str:
        return f"{self.task}-{self.column}-{self.label}-r{self.round}"


def plan(tasks: Sequence[str], columns: Sequence[str], rounds: int,
         variants: Mapping[str, Sequence[str]] | None = None) -> list[Job]:
    """Rounds outermost, then tasks, then backends; within a (task, backend): the adapter,
    the loop, then each variant -- so adapter and loop alternate process by process and the
    machine's drift hits both alike."""
    variants = variants or {}
    jobs = []
    for r in range(rounds):
        for t in tasks:
            for c in columns:
                jobs.append(Job(t, c, c, "adapter", r))
                jobs.append(Job(t, c, c, "idiomatic", r))
                jobs += [Job(t, c, v, "adapter", r) for v in variants.get(c, ())]
    return jobs


# ---------------------------------------------------------------------------- running


@dataclass
class Result:
    job: Job
    status: str
    error: str | None = None
    step_ms: list[float] = field(default_factory=list)
    first_step_s: float | None = None
    setup_s: float | None = None

    @property
    def figure(self) -> float | None:
        """The process's figure: the median of its timed steps (ms)."""
        return stats.process_figure(self.step_ms) if self.status == "ok" else None

    def to_json(self) -> dict[str, Any]:
        return {"task": self.job.task, "backend": self.job.column, "measured": self.job.backend,
                "kind": self.job.kind, "label": self.job.label, "round": self.job.round,
                "status": self.status, "error": self.error, "figure_ms": self.figure,
                "first_step_s": self.first_step_s, "setup_s": self.setup_s,
                "step_ms": [round(v, 4) for v in self.step_ms]}


def run(jobs: Sequence[Job], known: Mapping[str, Any], *, threads: int, cpus: list[int],
        data_paths: Mapping[str, str | os.PathLike], steps: int, warmup: int = WARMUP,
        seed: int = 0, timeout_s: float = TIMEOUT_S, log_dir: Path | None = None,
        on_job: Callable[[int, Job], None] | None = None) -> list[Result]:
    """Run every job in its own worker process, one after another; a failed process is a
    Result with its status and error (the sweep goes on). ``data_paths``: task -> prepared
    data set (``data.prepare``)."""
    from fwbench.harness import records
    from fwbench.harness.run import runner
    from fwbench.harness.run.supervise import run_worker

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(log_dir or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for i, job in enumerate(jobs):
            if on_job is not None:
                on_job(i, job)
            loop = str(loop_path(job.column, known)) if job.kind == "idiomatic" else ""
            request = records.IdiomaticRequest(
                threads, list(cpus), runner.backend_spec(known[job.backend]),
                task=records.task_to_json(task_registry.get(job.task)),
                data_path=str(data_paths[job.task]),
                kind=job.kind, loop=loop, seed=seed, warmup=warmup, steps=steps)
            log = logs / f"{job.key}.log"
            out = run_worker(request, log, timeout_s, lambda event: None)
            error = out.error
            if out.status not in ("ok", "failed", "diverged") and log_dir is None:
                tail = _tail(log)  # a crash says why in its log, which goes with the temp folder
                error = f"{error}; log: {tail}" if tail else error
            results.append(Result(job, out.status, error, list(out.result.get("step_ms") or []),
                                  out.result.get("first_step_s"), out.result.get("setup_s")))
    return results


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


# ---------------------------------------------------------------------------- summary


@dataclass
class Row:
    """One (task, backend) of the table."""

    task: str
    column: str
    adapter: list[float]  # process figures (ms)
    loop: list[float]
    variants: dict[str, list[float]]
    failed: list[str] = field(default_factory=list)  # "label round r: status: error"

    @staticmethod
    def _median(v: Sequence[float]) -> float | None:
        import numpy as np

        return float(np.median(v)) if len(v) else None

    @property
    def adapter_ms(self) -> float | None:
        return self._median(self.adapter)

    @property
    def loop_ms(self) -> float | None:
        return self._median(self.loop)

    @property
    def ratio(self) -> float | None:
        """Median adapter figure / median loop figure (> 1: the adapter is slower)."""
        a, b = self.adapter_ms, self.loop_ms
        return a / b if a is not None and b else None

    @property
    def ci(self) -> stats.RatioCI | None:
        """Bootstrap CI of ``ratio`` over processes; None below 3 processes a side."""
        return stats.ratio_ci(self.loop, self.adapter)

    @property
    def best_variant(self) -> tuple[str, float] | None:
        """(name, median figure) of the fastest variant measured."""
        found = [(name, self._median(v)) for name, v in self.variants.items() if v]
        return min(found, key=lambda item: item[1]) if found else None  # type: ignore[return-value]

    @property
    def reference(self) -> tuple[str, float, list[float]] | None:
        """(label, median, figures) of the faster of the loop and the best variant."""
        options = [("loop", self.loop_ms, self.loop)]
        best = self.best_variant
        if best is not None:
            options.append((best[0], best[1], self.variants[best[0]]))
        options = [o for o in options if o[1] is not None]
        return min(options, key=lambda o: o[1]) if options else None  # type: ignore[return-value]

    @property
    def target(self) -> float | None:
        """Adapter / the faster of (loop, best variant): the issue's goal is <= 1.05."""
        ref, a = self.reference, self.adapter_ms
        return a / ref[1] if ref is not None and a is not None and ref[1] else None

    @property
    def target_ci(self) -> stats.RatioCI | None:
        ref = self.reference
        return stats.ratio_ci(ref[2], self.adapter) if ref is not None else None

    def to_json(self) -> dict[str, Any]:
        ci, tci, best, ref = self.ci, self.target_ci, self.best_variant, self.reference
        return {"task": self.task, "backend": self.column, "adapter_ms": self.adapter_ms,
                "loop_ms": self.loop_ms, "ratio": self.ratio,
                "ratio_ci": [ci.lo, ci.hi] if ci else None,
                "best_variant": best[0] if best else None,
                "best_variant_ms": best[1] if best else None,
                "target_reference": ref[0] if ref else None, "target": self.target,
                "target_ci": [tci.lo, tci.hi] if tci else None, "failed": self.failed}


def summarize(results: Iterable[Result]) -> dict[tuple[str, str], Row]:
    """(task, backend) -> Row, in the order the results first name them."""
    rows: dict[tuple[str, str], Row] = {}
    for res in results:
        j = res.job
        row = rows.setdefault((j.task, j.column), Row(j.task, j.column, [], [], {}))
        fig = res.figure
        if fig is None:
            row.failed.append(f"{j.label} round {j.round + 1}: {res.status}: {res.error}")
            if j.label not in ("adapter", "loop"):
                row.variants.setdefault(j.backend, [])
            continue
        if j.kind == "idiomatic":
            row.loop.append(fig)
        elif j.backend == j.column:
            row.adapter.append(fig)
        else:
            row.variants.setdefault(j.backend, []).append(fig)
    return rows


def _short(variant: str) -> str:
    """``torch-compile`` -> ``compile``: the variant's own part, for narrow cells."""
    fam = family(variant)
    base = labels.uncopied(variant)
    if fam is not None and base.startswith(fam + "-"):
        return base[len(fam) + 1:]
    return base


def tables(rows: Mapping[tuple[str, str], Row], tasks: Sequence[str], columns: Sequence[str],
           rounds: int, steps: int, profile: str) -> list:
    """What ``fwbench overhead --against idiomatic`` prints, as rich renderables (a title line,
    then its table; tasks as rows, backends as columns, 80 columns wide for the five base
    backends): the ratio, its CI, the target, and the median step times behind them."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    def table(title: str) -> Table:
        # The title as a caption line above (a rich title wraps to the table's width).
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        t.add_column("task", no_wrap=True)
        for c in columns:
            t.add_column(c, justify="right", no_wrap=True)
        return t

    def cells(fn: Callable[[Row], str]) -> Callable[[str], list[str]]:
        def make(task: str) -> list[str]:
            out = []
            for c in columns:
                row = rows.get((task, c))
                out.append("[red]failed[/]" if row is None or not row.adapter or not row.loop
                           else fn(row))
            return out
        return make

    def ci_text(ci: stats.RatioCI | None) -> str:
        return f"[{ci.lo:.2f}, {ci.hi:.2f}]" if ci else "-"

    def target_text(row: Row) -> str:
        ref = row.reference
        mark = "" if row.target is None or row.target <= TARGET else "[yellow]*[/]"
        return f"{row.target:.2f}{mark} {_short(ref[0]) if ref else ''}"

    def ms_text(row: Row) -> str:
        return f"{row.adapter_ms:.3g}/{row.loop_ms:.3g}"

    what = f"{rounds} round{'s' if rounds != 1 else ''} x {steps} steps, {profile}"
    out = []
    specs = [
        (f"adapter / idiomatic loop, median step times ({what})",
         cells(lambda r: f"{r.ratio:.2f}")),
        ("95% CI of that ratio (bootstrap over processes)" if rounds >= stats.MIN_PROCESSES else None,
         cells(lambda r: ci_text(r.ci))),
        (f"target: adapter / faster of (loop, best variant); * above {TARGET:g}",
         cells(target_text)),
        ("median step time, ms: adapter/loop", cells(ms_text)),
    ]
    for title, make in specs:
        if title is None:
            continue
        t = table(title)
        for task in tasks:
            t.add_row(task, *make(task))
        out += [Text(title, style="bold"), t]
    return out


def notes(rows: Mapping[tuple[str, str], Row], rounds: int) -> list[tuple[str, str]]:
    """(line, rich style) under the tables: what the numbers are, the variants behind the
    target, missing CIs, and every process that failed."""
    out = [(EXPLANATION, "dim")]
    names = sorted({v for row in rows.values() for v in row.variants})
    if names:
        out.append(("variants: " + ", ".join(f"{_short(v)} = {v}" for v in names), "dim"))
    if rounds < stats.MIN_PROCESSES:
        out.append((f"no CIs: they need >= {stats.MIN_PROCESSES} rounds (the process, one per "
                    "round and kind, is the unit of replication)", "dim"))
    for row in rows.values():
        out += [(f"{row.task}/{row.column} {line}", "red") for line in row.failed]
    return out


def write_json(path: Path, results: Sequence[Result], rows: Mapping[tuple[str, str], Row],
               config: dict[str, Any]) -> None:
    """Every process's figures and steps, and the table's numbers, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"config": config, "rows": [r.to_json() for r in rows.values()],
           "processes": [r.to_json() for r in results]}
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------- the command


def command(console, tasks: Sequence[str], backends: Sequence[str], known: Mapping[str, Any], *,
            explicit: bool, threads: int, cpus: list[int], rounds: int | None = None,
            steps: int | None = None, profile: str | None = None, variants: bool = True,
            data_dir: str | os.PathLike | None = None, out: Path | None = None) -> int:
    """``fwbench overhead --against idiomatic``: validate, run the sweep, print the tables;
    the exit code (1 if any process did not end ok). ``explicit``: the user named the
    backends (one without a reference loop is an error; by default it is left out)."""

    rounds = DEFAULT_ROUNDS if rounds is None else rounds
    steps = DEFAULT_STEPS if steps is None else steps
    profile = profile or "smoke"
    if profile not in PROFILES:
        raise FwbenchError(f"--profile {profile!r}: choose from {', '.join(PROFILES)}")
    if not 1 <= threads <= len(cpus) or steps < 1 or rounds < 1:
        raise FwbenchError(f"need 1 <= --threads <= {len(cpus)}, --steps >= 1, --rounds >= 1")
    columns = list(backends) if explicit else [b for b in backends if family(b, known) is not None]
    if not columns:
        raise FwbenchError(f"no installed backend has a reference loop ({', '.join(LOOP_FILES)})")
    for b in columns:
        loop_path(b, known)  # FwbenchError now, not once per process
    extra = {b: variants_of(b, known) for b in columns} if variants else {}
    paths = {t: task_registry.prepare(task_registry.get(t), profile, data_dir) for t in tasks}
    jobs = plan(tasks, columns, rounds, extra)
    with console.status("measuring") as status:
        results = run(jobs, known, threads=threads, cpus=cpus[:threads], data_paths=paths,
                      steps=steps, on_job=lambda i, j: status.update(
                          f"{i + 1}/{len(jobs)}: round {j.round + 1}, {j.task} / {j.column} "
                          f"({j.label})"))
    rows = summarize(results)
    for table in tables(rows, tasks, columns, rounds, steps, profile):
        console.print(table)
    for line, style in notes(rows, rounds):
        console.print(line, style=style, highlight=False)
    if out is not None:
        write_json(Path(out), results, rows, {
            "tasks": list(tasks), "backends": columns, "rounds": rounds, "steps": steps,
            "warmup": WARMUP, "profile": profile, "threads": threads, "cpus": cpus[:threads],
            "variants": extra})
        console.print(f"wrote {out}")
    return 1 if any(r.status != "ok" for r in results) else 0
