"""``fwbench check``: proof that the adapters compute the same function with the same math.

For each backend (each in its own worker process), from the canonical weights of one seed,
on real batches of the shipped sample: logits and loss on batch 0 (compared with the NumPy
reference), gradients on batch 0 and the parameters after 3 optimizer steps on batches 1, 2, 3
(compared with the PyTorch adapter). Three different batches, so a lazy/sparse Adam on the
embedding cannot look like dense Adam. Float32 tolerances below; a breach exits non-zero.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import data, environment, records, reference, runner, spec
from .adapter import Backend

REFERENCE_BACKEND = "torch"
TOLERANCES = {
    "init": 0.0,  # canonical -> framework -> canonical must be exact
    "logits_abs": 1e-4,
    "loss_rel": 1e-5,
    "grad_rel": 1e-4,  # max |a-b| / max |b| per tensor
    # max |dA-dB| / max |dB| per tensor, d = params after 3 steps - initial params
    "params_rel": {"SGDMomentum": 1e-4, "RMSprop": 1e-3, "Adam": 1e-3},
}
# A loosened tolerance must be named here with its reason; it is printed with the table.
LOOSENED: dict[tuple[str, str, str], tuple[float, str]] = {}


@dataclass
class Row:
    task: str
    backend: str
    init: float | None = None
    logits_abs: float | None = None
    loss_rel: float | None = None
    grad_rel: float | None = None
    params_rel: float | None = None
    worst: str = ""  # the tensor with the largest gradient / parameter difference
    error: str | None = None
    breaches: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.breaches


def probe_batches(task: spec.Task, seed: int) -> dict[str, np.ndarray]:
    """Four real batches (0: forward/gradients; 1-3: the optimizer steps) of the sample."""
    arrays = data.task_arrays(task, data.load_prepared(data.prepare(task.dataset, "smoke")))
    order = spec.epoch_order(seed, 1, len(arrays["x_train"]))
    n = task.batch_size
    out = {}
    for i in range(4):
        idx = order[i * n : (i + 1) * n]
        out[f"x{i}"], out[f"y{i}"] = arrays["x_train"][idx], arrays["y_train"][idx]
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def tolerance(task: spec.Task, backend: str, metric: str) -> float:
    if (task.name, backend, metric) in LOOSENED:
        return LOOSENED[(task.name, backend, metric)][0]
    tol = TOLERANCES[metric]
    return tol[type(task.optimizer).__name__] if isinstance(tol, dict) else tol


def compare(task: spec.Task, backend: str, probe: dict[str, np.ndarray],
            ref: dict[str, np.ndarray] | None, batches: dict[str, np.ndarray], seed: int) -> Row:
    params = spec.init_params(task, seed)
    row = Row(task.name, backend)
    row.init = max(float(np.abs(probe[f"init/{k}"] - v).max()) for k, v in params.items())
    ref_logits = reference.forward(task, params, batches["x0"])
    row.logits_abs = float(np.abs(probe["logits"] - ref_logits).max())
    ref_loss = reference.softmax_cross_entropy(ref_logits, batches["y0"])
    row.loss_rel = abs(float(probe["loss"]) - ref_loss) / abs(ref_loss)
    if ref is not None:
        grads = {k: _rel(probe[f"grad/{k}"], ref[f"grad/{k}"]) for k in params}
        moves = {k: _rel(probe[f"params/{k}"] - params[k], ref[f"params/{k}"] - params[k])
                 for k in params}
        row.grad_rel, row.params_rel = max(grads.values()), max(moves.values())
        worst_g, worst_p = max(grads, key=grads.get), max(moves, key=moves.get)
        row.worst = f"grad {worst_g}, params {worst_p}"
    for metric in ("init", "logits_abs", "loss_rel", "grad_rel", "params_rel"):
        value = getattr(row, metric)
        if value is not None and not value <= tolerance(task, backend, metric):
            row.breaches.append(f"{metric} {value:.2e} > {tolerance(task, backend, metric):.0e}")
    return row


Probes = dict[str, dict[str, dict[str, np.ndarray]]]  # backend -> task -> arrays


def run_probes(backends: dict[str, Backend], names: list[str], tasks: list[str], seed: int = 0,
               threads: int = 1, timeout_s: float = 900.0,
               on_status: Callable[[str], None] = lambda s: None,
               pythons: dict[str, str] | None = None
               ) -> tuple[dict[str, dict[str, np.ndarray]], Probes, dict[str, str]]:
    """(batches per task, probes, errors per backend): one worker process per backend
    (with the interpreter ``pythons`` names for it: its env; default the current one)."""
    cpus = environment.available_cpus()[:threads]
    batches = {t: probe_batches(spec.TASKS[t], seed) for t in tasks}
    probes: Probes = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fwbench-check-") as tmp:
        work = Path(tmp)
        for t, b in batches.items():
            np.savez(work / f"batches-{t}.npz", **b)
        for name in names:
            on_status(f"probing {name}")
            request = records.ProbeRequest(
                threads, cpus, runner.backend_spec(backends[name]), seed=seed,
                probes=[records.ProbeItem(records.task_to_json(spec.TASKS[t]),
                                          str(work / f"batches-{t}.npz"),
                                          str(work / f"probe-{name}-{t}.npz")) for t in tasks])
            outcome = runner.run_worker(request, work / f"{name}.log", timeout_s, lambda e: None,
                                        python=(pythons or {}).get(name))
            if outcome.status != "ok":
                log = (work / f"{name}.log").read_text(errors="replace").strip().splitlines()
                errors[name] = f"{outcome.status}: {outcome.error}" + (
                    f" | {log[-1][:200]}" if log and outcome.status != "failed" else "")
                continue
            probes[name] = {}
            for t in tasks:
                with np.load(work / f"probe-{name}-{t}.npz", allow_pickle=False) as z:
                    probes[name][t] = {k: z[k] for k in z.files}
    return batches, probes, errors


def check(backends: dict[str, Backend], names: list[str], tasks: list[str], seed: int = 0,
          threads: int = 1, timeout_s: float = 900.0,
          on_status: Callable[[str], None] = lambda s: None,
          pythons: dict[str, str] | None = None) -> list[Row]:
    """Probe every backend in ``names`` (each in its own process, with its interpreter in
    ``pythons``, if any) and compare."""
    order = [REFERENCE_BACKEND] + [n for n in names if n != REFERENCE_BACKEND]
    if REFERENCE_BACKEND not in backends or (backends[REFERENCE_BACKEND].missing()
                                             and REFERENCE_BACKEND not in (pythons or {})):
        order = [n for n in names if n != REFERENCE_BACKEND]  # forward-only comparison
    batches, probes, errors = run_probes(backends, order, tasks, seed, threads, timeout_s, on_status,
                                         pythons)
    rows: list[Row] = []
    for t in tasks:
        ref = probes.get(REFERENCE_BACKEND, {}).get(t)
        for name in names:
            if name in errors:
                rows.append(Row(t, name, error=errors[name]))
                continue
            rows.append(compare(spec.TASKS[t], name, probes[name][t],
                                None if name == REFERENCE_BACKEND else ref, batches[t], seed))
    return rows
