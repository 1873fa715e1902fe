"""``fwbench check``: proof that the adapters compute the same function with the same math.

For each backend (each in its own worker process), from the canonical weights of one seed,
on real batches of the shipped sample:

- logits and loss on batch 0, compared with the NumPy reference (``reference.forward``);
- gradients on batch 0, compared with the ground truth: the NumPy reference's own float64
  gradients (``reference.gradients``, ``REFERENCE``), which need no compared framework (the
  tests cross-check them with PyTorch in float64 on every task);
- 3 optimizer steps on batches 1, 2, 3: the parameters after them compared with the spec's
  optimizer formula (``reference.optimizer_step``, float64) replayed from the initial weights
  on the gradients this backend reported at each step. The gradients are checked above; this
  checks the optimizer, and that the train step applies it to those gradients (a wrong eps,
  bias correction, momentum, or a lazy Adam that skips the embedding rows a batch does not
  touch: three different batches). Float32 tolerances below; a breach exits non-zero.

Why not the 3-step parameters of another framework, as before: a float32 gradient is a sum
whose rounding depends on the framework's summation order. On cnn (5x5 convs over 512 x 28 x
28 positions, where a bias gradient's terms cancel 160-fold) PyTorch's and TensorFlow's float32
CPU conv gradients are 1.4e-3 from float64, JAX's 3e-6 on one batch and 3.7e-4 on another;
Adam divides each element's step by that element's own gradient, so after 3 steps correct
backends were 1.7e-2 apart (L2): the comparison measured rounding, not the formula.

Dropout: logits and gradients are taken in evaluation mode (dropout is the identity) and the
3 steps on ``spec.without_dropout(task)`` (rate 0), because every framework draws its masks from
its own random stream: the check cannot see dropout masks. A backend whose adapter declares a
layer of a task unsupported gets a row with ``unsupported`` set (not a failure).
"""

from __future__ import annotations

import dataclasses
import queue
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fwbench.harness import records, reference, spec
from fwbench.harness.measure import environment
from fwbench.harness.run import runner
from fwbench.harness.run.supervise import run_worker
from fwbench.harness.catalog import labels
from fwbench.harness.catalog import tasks as task_registry
from fwbench.harness.adapter import Backend
from fwbench.harness.errors import FwbenchError

REFERENCE = "NumPy float64"  # the ground truth of the gradients: reference.gradients
TOLERANCES = {
    "init": 0.0,  # canonical -> framework -> canonical must be exact
    "logits_abs": 1e-4,
    "loss_rel": 1e-5,
    "grad_rel": 1e-4,  # max |a-b| / max |b| per tensor, against float64
    # ||dA-dB|| / ||dB|| (L2) per tensor, d = params after 3 steps - initial params, B the
    # spec's formula replayed on the backend's own gradients. L2, not the max element: where
    # an element's gradient is below eps (1e-7), Adam and RMSprop turn float32 rounding into
    # a 5e-3 difference of its step; the L2 distance of the whole move stays ~1e-6, and a
    # wrong formula moves it O(1) (tests: test_check_detects_a_wrong_optimizer).
    "params_rel": {"SGDMomentum": 1e-4, "RMSprop": 1e-3, "Adam": 1e-3},
}
JITTER = 1e-3  # probe images: uniform noise of at most this, see probe_batches
# A loosened tolerance must be named here with its reason; it is printed with the table.
_CNN_GRAD = ("float32 CPU convolution weight gradients 1.4e-3 from float64 in every oneDNN-based "
             "backend (PyTorch's own kernel alike), XLA's 2e-6..4e-6 (seed 0): the terms of a "
             "5x5 conv's gradient over 512 x 28 x 28 positions cancel 160-fold, so the summation "
             "order shows; the same function (logits 2e-7, 3-step replay 5e-6)")
LOOSENED: dict[tuple[str, str, str], tuple[float, str]] = {
    ("cnn", b, "grad_rel"): (3e-3, _CNN_GRAD)
    for b in ("torch", "torch-compile", "tensorflow", "mindspore", "mindspore-pynative")}


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
    # the adapter declares a layer of the task unsupported (one line); nothing was compared,
    # and it is no failure (``ok``): the table says so
    unsupported: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.breaches


def probe_batches(task: spec.Task, seed: int) -> dict[str, np.ndarray]:
    """Four real batches (0: forward/gradients; 1-3: the optimizer steps) of the sample."""
    arrays = task_registry.arrays(task, task_registry.prepare(task, "smoke"))
    order = spec.epoch_order(seed, 1, len(arrays["x_train"]))
    n = task.batch_size
    rng = np.random.default_rng([seed, 0x7177E5])
    out = {}
    for i in range(4):
        idx = order[i * n : (i + 1) * n]
        x = arrays["x_train"][idx]
        if x.dtype.kind == "f":
            # Jitter (|e| <= 1e-3, the same arrays for every backend and the reference): real
            # images have identical windows (blank background), whose max-pool has exact ties;
            # which element of a tie gets the gradient is arbitrary and differed between
            # frameworks (cnn: 2,524 tied windows in one batch, gradient differences 2e-3).
            x = (x + rng.uniform(-JITTER, JITTER, x.shape)).astype(x.dtype)
        out[f"x{i}"], out[f"y{i}"] = x, arrays["y_train"][idx]
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(float(np.linalg.norm(b.ravel())), 1e-30))


Loosened = dict[tuple[str, str, str], tuple[float, str]]  # (task, backend, metric) -> (tol, why)


def loosened(backends: dict[str, Backend], names: list[str]) -> Loosened:
    """The loosened tolerances in force for ``names``: the built-ins' (``LOOSENED``) and each
    backend's own (``Backend.loosened``: a plugin's measured ones, with their reasons)."""
    out = dict(LOOSENED)
    for name in names:
        for task, metric, tol, why in backends[name].loosened:
            if metric not in TOLERANCES or not str(why).strip():
                raise FwbenchError(f"backend {name!r}: a loosened tolerance needs one of "
                                   f"{', '.join(TOLERANCES)} and its reason, not {metric!r}, {why!r}")
            out[(task, labels.uncopied(name), metric)] = (float(tol), str(why))
    return out


def tolerance(task: spec.Task, backend: str, metric: str, loose: Loosened | None = None) -> float:
    """The tolerance of ``metric`` for ``backend`` on ``task``: loosened where measured (an
    A/A copy, ``torch#2``, is its backend: the same kernels), else the default."""
    loose = LOOSENED if loose is None else loose
    key = (task.name, labels.uncopied(backend), metric)
    if key in loose:
        return loose[key][0]
    tol = TOLERANCES[metric]
    return tol[type(task.optimizer).__name__] if isinstance(tol, dict) else tol


def compare(task: spec.Task, backend: str, probe: dict[str, np.ndarray],
            ground_truth: dict[str, np.ndarray], batches: dict[str, np.ndarray], seed: int,
            loose: Loosened | None = None) -> Row:
    """One backend's row; ``ground_truth``: the float64 gradients on batch 0."""
    params = spec.init_params(task, seed)
    row = Row(task.name, backend)
    row.init = max(float(np.abs(probe[f"init/{k}"] - v).max()) for k, v in params.items())
    ref_logits = reference.forward(task, params, batches["x0"])
    row.logits_abs = float(np.abs(probe["logits"] - ref_logits).max())
    ref_loss = reference.softmax_cross_entropy(ref_logits, batches["y0"])
    row.loss_rel = abs(float(probe["loss"]) - ref_loss) / abs(ref_loss)
    grads = {k: _rel(probe[f"grad/{k}"], ground_truth[k]) for k in params}
    row.grad_rel = max(grads.values())
    replay, state = dict(params), {}
    for t in (1, 2, 3):
        replay = reference.optimizer_step(task.optimizer, replay,
                                          {k: probe[f"step{t}/{k}"] for k in params}, state, t)
    moves = {k: _rel_l2(probe[f"params/{k}"] - params[k], replay[k] - params[k]) for k in params}
    row.params_rel = max(moves.values())
    row.worst = f"grad {max(grads, key=grads.get)}, params {max(moves, key=moves.get)}"
    for metric in ("init", "logits_abs", "loss_rel", "grad_rel", "params_rel"):
        value = getattr(row, metric)
        limit = tolerance(task, backend, metric, loose)
        if not value <= limit:
            row.breaches.append(f"{metric} {value:.2e} > {limit:.0e}")
    return row


Probes = dict[str, dict[str, dict[str, np.ndarray]]]  # backend -> task -> arrays


def run_probes(backends: dict[str, Backend], names: list[str], tasks: list[str], seed: int = 0,
               threads: int = 1, timeout_s: float = 900.0,
               on_status: Callable[[str], None] = lambda s: None,
               pythons: dict[str, str] | None = None, device: str = "cpu"
               ) -> tuple[dict[str, dict[str, np.ndarray]], Probes, dict[str, str]]:
    """(batches per task, probes, errors per backend): one worker process per backend
    (with the interpreter ``pythons`` names for it: its env; default the current one), on
    ``device`` (cpu | cuda:N; the tolerances are the same). On the CPU as many run at once
    as the cores hold ``threads`` each, on disjoint cores (a probe's numbers do not depend
    on time); on a GPU one at a time (JAX preallocates most of its memory)."""
    cores = environment.available_cpus()
    jobs = 1 if device != "cpu" else max(1, min(len(names), len(cores) // threads))
    slots: queue.Queue[list[int]] = queue.Queue()
    for k in range(jobs):
        slots.put(cores[k * threads:(k + 1) * threads])
    batches = {t: probe_batches(task_registry.get(t), seed) for t in tasks}
    probes: Probes = {}
    errors: dict[str, str] = {}
    stop = threading.Event()  # the caller was interrupted: every probe still running stops

    def probe(work: Path, name: str) -> None:
        cpus = slots.get()
        try:
            if stop.is_set():
                return
            on_status(f"probing {name}")
            request = records.ProbeRequest(
                threads, cpus, runner.backend_spec(backends[name]), device, seed=seed,
                probes=[records.ProbeItem(records.task_to_json(task_registry.get(t)),
                                          str(work / f"batches-{t}.npz"),
                                          str(work / f"probe-{name}-{t}.npz")) for t in tasks])
            outcome = run_worker(request, work / f"{name}.log", timeout_s, lambda e: None,
                                 python=(pythons or {}).get(name), stop=stop)
        finally:
            slots.put(cpus)
        if outcome.status != "ok":
            log = (work / f"{name}.log").read_text(errors="replace").strip().splitlines()
            errors[name] = f"{outcome.status}: {outcome.error}" + (
                f" | {log[-1][:200]}" if log and outcome.status != "failed" else "")
            return
        probes[name] = {}
        for t in tasks:
            with np.load(work / f"probe-{name}-{t}.npz", allow_pickle=False) as z:
                probes[name][t] = {k: z[k] for k in z.files}

    with tempfile.TemporaryDirectory(prefix="fwbench-check-") as tmp:
        work = Path(tmp)
        for t, b in batches.items():
            np.savez(work / f"batches-{t}.npz", **b)
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(probe, work, name) for name in names]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()
                raise
    return batches, probes, errors


def check(backends: dict[str, Backend], names: list[str], tasks: list[str], seed: int = 0,
          threads: int = 1, timeout_s: float = 900.0,
          on_status: Callable[[str], None] = lambda s: None,
          pythons: dict[str, str] | None = None, device: str = "cpu") -> list[Row]:
    """Probe every backend in ``names`` (each in its own process, with its interpreter in
    ``pythons``, if any) and compare, the gradients with the NumPy reference's (computed here,
    once per task that some backend ran)."""
    loose = loosened(backends, names)
    batches, probes, errors = run_probes(backends, names, tasks, seed, threads, timeout_s,
                                         on_status, pythons, device)
    rows: list[Row] = []
    for t in tasks:
        task, ground_truth = task_registry.get(t), None
        for name in names:
            if name in errors:
                rows.append(Row(t, name, error=errors[name]))
                continue
            if "unsupported" in probes[name][t]:
                rows.append(Row(t, name, unsupported=str(probes[name][t]["unsupported"])))
                continue
            if ground_truth is None:
                on_status(f"{REFERENCE} gradients of {t}")
                ground_truth = reference.gradients(task, spec.init_params(task, seed),
                                                   batches[t]["x0"], batches[t]["y0"])[1]
            rows.append(compare(task, name, probes[name][t], ground_truth, batches[t], seed, loose))
    return rows
