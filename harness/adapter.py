"""The contract between the harness and a framework adapter, and backend discovery.

An adapter is the only place a framework is imported. It translates the task's layer
list, loads the canonical initial weights, trains on the batches the harness hands it and
exports parameters and gradients back to the canonical layout. It does no timing, no
statistics and no file writing: the worker measures it from the outside, the same way for
every backend.

A ``Backend`` is a small framework-free description of one (which module and class, which
distributions it needs), so listing backends never imports a framework; they are found
through the ``fwbench.backends`` entry-point group (``catalog.backends.discover``).
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata as md
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from fwbench.harness import spec



class Adapter(abc.ABC):
    """One framework's implementation of a task. Built in a worker process, one per cell.

    Arrays cross the interface as NumPy: inputs ``x`` (float32 NCHW images or int32 token
    ids), labels ``y`` (int32), parameters and gradients as ``{name: float32 array}`` in
    the canonical layout of ``spec``.
    """

    # The adapter's layer tables: what it can build. ``unsupported`` reads them before training.
    layer_rules: ClassVar[tuple[spec.LayerRules[Any], ...]] = ()

    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        self.task = task
        self.threads = threads
        self.options = dict(options or {})

    @classmethod
    def prepare_process(cls, tasks: list[spec.Task]) -> None:
        """Called once in a worker process, before the first adapter of ``tasks`` is made
        (one task in a run's cell, several in ``fwbench check``'s probe): for settings a
        framework reads once per process. Default: nothing."""

    @classmethod
    def unsupported(cls, task: spec.Task) -> list[spec.Layer]:
        """The layers of ``task`` this adapter cannot run ([] if it can run the task); asked by
        the worker before building anything, so a missing layer is ``unsupported``, never a
        mid-run ``failed``. Default: from ``layer_rules`` (see ``spec.unsupported_layers``)."""
        return spec.unsupported_layers(task, *cls.layer_rules)

    @abc.abstractmethod
    def build(self, params: dict[str, np.ndarray]) -> None:
        """Build the model and its optimizer from canonical ``params``."""

    @abc.abstractmethod
    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch; returns the batch's mean loss as a Python float.

        Returning a host float synchronises the step, so asynchronous dispatch cannot hide
        work from the timer around this call.
        """

    @abc.abstractmethod
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """(sum of per-example losses, number of correct predictions) on one eval batch."""

    @abc.abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits in evaluation mode, float32 [N, classes]."""

    @abc.abstractmethod
    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """(mean loss, gradients in the canonical layout) at the current parameters; no step."""

    @abc.abstractmethod
    def export_params(self) -> dict[str, np.ndarray]:
        """Current parameters in the canonical layout."""

    def thread_settings(self) -> dict[str, Any]:
        """The thread counts the framework itself reports (recorded, not trusted)."""
        return {}

    def flush_denormals(self) -> str:
        """Policy ``--denormals flush``: make the framework flush denormal floats to zero in
        training, and say how ("" where it has no switch). Called right after construction.
        Whether it worked is not trusted: ``denormal_product`` is probed afterwards."""
        return ""

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """``a * b`` (float32, ~1M elements) computed by the framework the way its training
        step runs (compiled where the step is compiled, on its thread pool). The harness
        passes products that underflow into the denormal range: a framework that flushes
        returns zeros. None: this adapter cannot be probed."""
        return None

    def determinism(self) -> dict[str, Any]:
        """The determinism switches in force. ``options["deterministic"]`` (``fwbench run
        --deterministic``) asks the adapter to set its framework's switches and seed its
        random streams from ``options["seed"]``; an adapter reports what it set here."""
        return {}

    # ---------------------------------------------------------------- devices (device.py)
    # ``options["device"]`` is "cuda" for a GPU cell (absent on the CPU: CPU cells run exactly
    # as before). The worker has already set ``device.worker_env`` before the import: the
    # cell's GPU is the framework's device 0, TF32 is off in cuBLAS/cuDNN, no preallocation.

    @property
    def gpu(self) -> bool:
        """Whether this cell computes on the GPU (``fwbench run --device cuda[:N]``)."""
        return self.options.get("device", "cpu") != "cpu"

    @classmethod
    def device_unsupported(cls, platform: str) -> str | None:
        """None if the installed build can compute on ``platform`` ("cpu" or "cuda"), else
        one line why (the cells are then ``unsupported``). Asked after the import, before
        anything is built. Default: the CPU only."""
        return None if platform == "cpu" else "this adapter has no GPU support"

    def device_settings(self) -> dict[str, Any]:
        """GPU cells, right after construction: make float32 math exact float32 (TF32 off
        in matmuls and convolutions, the highest matmul precision) and report each switch
        as set. Not called on the CPU."""
        return {}

    def device_versions(self) -> dict[str, Any]:
        """GPU cells: the CUDA and cuDNN versions the framework uses, ``{"cuda", "cudnn"}``."""
        return {}

    def memory_peak(self) -> dict[str, Any]:
        """GPU cells, after training: the allocator's own peak (``records.AllocatorMemory``
        fields: source, counts, peak_mib, reserved_peak_mib); {} where it reports none."""
        return {}

    def gemm(self, n: int) -> Callable[[int], None] | None:
        """GPU cells: ``run(k)`` computing k float32 n x n matrix products on the device with
        the cell's precision, returning once they are done (the worker times it: the
        framework's own GEMM peak on this GPU). None: not measured."""
        return None

    @classmethod
    def framework_version(cls) -> str:
        return ""


@dataclass(frozen=True)
class Backend:
    """What the harness knows of a backend without importing its framework."""

    name: str
    adapter: str  # "module:Class"
    requires: tuple[str, ...]  # distributions that must be installed
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "built-in"
    # pip specifiers of the backend's own env (``fwbench envs create``), used where the repo
    # has no requirements/<name>.txt for it: a plugin pins its framework here (its own
    # distribution is added as it is installed here).
    requirements: tuple[str, ...] = ()
    # measured tolerances of ``fwbench check`` this backend needs beyond the defaults, each
    # (task, metric, tolerance, reason): printed with the table like the built-ins' own
    loosened: tuple[tuple[str, str, float, str], ...] = ()
    # the module of a hand-written loop of its framework (``make_step(task_name, threads)``,
    # see benchmarks/idiomatic/README.md): ``fwbench overhead --against idiomatic`` runs it
    idiomatic: str = ""

    def missing(self) -> list[str]:
        out = []
        for dist in self.requires:
            try:
                md.version(dist)
            except md.PackageNotFoundError:
                out.append(dist)
        return out

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in self.requires:
            try:
                out[dist] = md.version(dist)
            except md.PackageNotFoundError:
                out[dist] = "not installed"
        return out

    @property
    def installed(self) -> bool:
        return not self.missing()

    def load(self) -> type[Adapter]:
        """Import the adapter class (and so its framework). Call in a worker only."""
        module, _, cls = self.adapter.partition(":")
        return getattr(importlib.import_module(module), cls)
