"""The worker: one cell (task, backend, seed) in its own fresh process.

    python -m fwbench.harness.run.worker CELL.json

Order matters: CPU affinity and thread variables are set before the framework is imported
(the one knob every framework obeys), then the adapter is imported, and every phase is
measured from the outside, the same way for every backend. The worker talks to the runner
over the original stdout (one JSON event per line); the framework's own stdout and stderr
go to the cell's log file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


def _emit(stream, event: str, **fields: Any) -> None:
    from fwbench.harness import records  # after pin_threads: it imports NumPy through spec

    stream.write(records.dumps({"event": event, **fields}) + "\n")
    stream.flush()


def pin_threads(cpus: list[int], threads: int) -> None:
    """Affinity plus every thread variable a framework or BLAS reads at import time."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                "PJRT_NPROC"):  # XLA:CPU sizes its pool from PJRT_NPROC at client creation
        os.environ[var] = str(threads)


# NumPy is imported inside functions, after ``pin_threads``: its BLAS starts threads at
# import, and threads that exist before the affinity is set would not be bound by it.


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def _subsample(values: list[float], n: int = 256) -> list[float]:
    """At most ``n`` evenly spaced values (kept in records for significance tests)."""
    import numpy as np

    if len(values) <= n:
        return list(values)
    return [values[int(i)] for i in np.linspace(0, len(values) - 1, n)]


def run_steps(adapter, x, y, batches, step_times: list[float], losses: list[float],
              progress=None) -> int | None:
    """The harness's training loop: gather each batch, time its step, watch the loss.

    Returns the (1-based) step whose loss was not finite, or None. ``fwbench overhead``
    measures this exact loop against a bare one.
    """
    last = time.perf_counter()
    for step, idx in enumerate(batches, 1):
        xb, yb = x[idx], y[idx]
        t = time.perf_counter()
        loss = adapter.train_step(xb, yb)
        step_times.append(time.perf_counter() - t)
        losses.append(loss)
        if not math.isfinite(loss):
            return step
        if progress is not None and t - last > 0.5:
            progress(step, len(batches))
            last = t
    return None


def _describe(settings: dict[str, Any]) -> dict[str, Any]:
    """An adapter's thread_settings()/determinism() as JSON: NumPy scalars become numbers,
    anything else that JSON cannot hold becomes its repr (these are descriptions)."""
    from fwbench.harness import records

    out = {}
    for k, v in dict(settings or {}).items():
        try:
            out[str(k)] = records.to_json(v)
        except TypeError:
            out[str(k)] = repr(v)
    return out


def denormal_state(adapter, policy: str, switch: str) -> dict[str, Any]:
    """Does the framework flush denormals in its training step? Probed, not trusted: 2^20
    float32 products 1e-30 * 1e-10 (= 1e-40, denormal) computed by the adapter after
    training, on its thread pool; a framework that flushes returns zeros everywhere."""
    import numpy as np

    a = np.full(1 << 20, 1e-30, np.float32)
    b = np.full(1 << 20, 1e-10, np.float32)
    product = adapter.denormal_product(a, b)
    if product is None:
        return {"policy": policy, "switch": switch or None, "flushed": None, "nonzero_fraction": None}
    nonzero = float(np.count_nonzero(np.asarray(product)) / a.size)
    return {"policy": policy, "switch": switch or None, "flushed": nonzero == 0.0,
            "nonzero_fraction": nonzero}


def packages(backend) -> dict[str, str]:
    """The versions of the packages that matter, as this interpreter has them: fwbench,
    NumPy, the frameworks (``environment.PACKAGES``) and the backend's own distributions."""
    from fwbench.harness.measure import environment

    found = {k: v for k, v in environment.versions().items() if v is not None}
    found.update({k: v for k, v in backend.versions().items() if v != "not installed"})
    return found


@dataclass
class _Loop:
    """What the epochs of one cell measure (``_epochs``)."""

    step_times: list[float] = field(default_factory=list)  # every step, the first included
    losses: list[float] = field(default_factory=list)  # every step's loss, over all epochs
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)
    train_wall: float = 0.0
    train_cpu: float = 0.0
    eval_wall: float = 0.0
    train_peak: int = 0
    eval_peak: int = 0
    status: str = "ok"
    error: str | None = None


def train(req, out) -> dict[str, Any]:
    """Train one cell; ``req.timing_only`` runs at most ``req.max_steps`` steps and no eval."""
    from fwbench.harness import records, spec
    from fwbench.harness.adapter import Backend
    from fwbench.harness.catalog import tasks
    from fwbench.harness.measure import device as devices
    from fwbench.harness.measure.memory import MIB, MemorySampler

    task = records.task_from_json(req.task)
    backend = Backend(**dataclasses.asdict(req.backend))
    dev = devices.parse(req.device)
    record: dict[str, Any] = {"status": "ok", "error": None, "device": dev.name}

    memory = MemorySampler().start()
    monitor = devices.monitor(dev)  # before the import: the GPU's memory in use without us
    adapter_cls = backend.load()
    # From the process's creation (interpreter start included) to the framework imported.
    record["import_s"] = time.time() - memory.proc.create_time()
    missing = adapter_cls.unsupported(task)
    no_device = adapter_cls.device_unsupported(dev.platform)
    if missing or no_device:  # said before anything is built or trained: never a mid-run "failed"
        memory.stop()
        return records.measurement({
            **record, "status": "unsupported",
            "error": (spec.unsupported_text(f"{backend.name} adapter", missing) if missing
                      else f"{backend.name} adapter: --device {dev}: {no_device}"),
            "framework_version": adapter_cls.framework_version(), "python": sys.executable})

    t = time.perf_counter()
    arrays = tasks.arrays(task, req.data_path)
    record["data_s"] = time.perf_counter() - t
    baseline = memory.proc.memory_info().rss
    record["baseline_rss_mib"] = baseline / MIB

    t = time.perf_counter()
    adapter_cls.prepare_process([task])
    adapter = adapter_cls(task, req.threads, devices.adapter_options(backend.options, dev))
    switch = adapter.flush_denormals() if req.denormals == "flush" else ""
    record["precision"] = precision_state(adapter, dev)
    adapter.build(spec.init_params(task, req.seed))
    record["setup_s"] = time.perf_counter() - t
    record["framework_version"] = adapter_cls.framework_version()
    record["param_count"] = spec.param_count(task)

    memory.reset_peak()
    monitor.start()
    loop = _epochs(req, task, adapter, arrays, memory, monitor, out)
    record.update(status=loop.status, error=loop.error)
    record.update(_summary(task, req.threads, req.timing_only, loop, baseline, memory.peak))
    record.update(
        denormals=denormal_state(adapter, req.denormals, switch),
        thread_settings=_describe(adapter.thread_settings()),
        determinism=_describe(adapter.determinism()),
        packages=packages(backend),
        python=sys.executable,
    )
    record.update(device_state(adapter, dev, monitor))
    memory.stop()
    record.update(memory.result())
    return records.measurement(record)


def _epochs(req, task, adapter, arrays, memory, monitor, out) -> _Loop:
    """The training epochs (one, cut to ``req.max_steps``, for a timing-only repeat), each
    followed by an evaluation on the whole test set; stops at a non-finite loss."""
    import numpy as np

    from fwbench.harness import spec

    x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    epochs = 1 if req.timing_only else task.epochs(req.profile)
    steps_per_epoch = len(x_train) // task.batch_size
    max_steps = min(req.max_steps or steps_per_epoch, steps_per_epoch)
    loop = _Loop()
    for epoch in range(1, epochs + 1):
        losses: list[float] = []
        batches = spec.train_batches(len(x_train), task.batch_size, req.seed, epoch)
        if req.timing_only:
            batches = batches[:max_steps]
        monitor.train_begin()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        progress = lambda step, n, epoch=epoch: _emit(  # noqa: E731
            out, "progress", epoch=epoch, epochs=epochs, step=step, steps=n)
        bad = run_steps(adapter, x_train, y_train, batches, loop.step_times, losses, progress)
        if bad is not None:
            loop.status, loop.error = "diverged", f"loss is {losses[-1]} at epoch {epoch} step {bad}"
        loop.train_wall += time.perf_counter() - wall0
        loop.train_cpu += time.process_time() - cpu0
        monitor.train_end()
        loop.losses += losses
        loop.train_peak = max(loop.train_peak, memory.peak)
        if loop.status != "ok" or req.timing_only:
            break
        _emit(out, "progress", epoch=epoch, epochs=epochs, step=len(batches), steps=len(batches),
              phase="eval")
        memory.reset_peak()
        t = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for sl in spec.eval_slices(len(x_test), task.eval_batch):
            batch_loss, batch_correct = adapter.evaluate(x_test[sl], y_test[sl])
            loss_sum += batch_loss
            correct += batch_correct
        loop.eval_wall += time.perf_counter() - t
        loop.eval_peak = max(loop.eval_peak, memory.peak)
        loop.epoch_rows.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                                "test_loss": loss_sum / len(x_test),
                                "test_accuracy": correct / len(x_test), "wall_s": loop.train_wall})
        memory.reset_peak()
    return loop


def _summary(task, threads: int, timing_only: bool, loop: _Loop, baseline: int,
             last_peak: int) -> dict[str, Any]:
    """The record's fields of time, speed and memory from what the epochs measured."""
    import numpy as np

    from fwbench.harness.measure import flops
    from fwbench.harness.measure.memory import MIB

    steady = loop.step_times[1:]
    p50 = _percentile(steady, 50)
    step_flops = flops.train_step_flops(task)
    ratio = loop.train_cpu / loop.train_wall if loop.train_wall else None
    rows = loop.epoch_rows
    return dict(
        epochs=rows,
        test_accuracy=rows[-1]["test_accuracy"] if rows else None,
        steps=len(loop.step_times),
        train_time_s=loop.train_wall,
        first_step_s=loop.step_times[0] if loop.step_times else None,
        step_time_ms={
            "p50": p50 * 1e3,
            "p90": _percentile(steady, 90) * 1e3,
            "mean": float(np.mean(steady)) * 1e3 if steady else None,
            "std": float(np.std(steady)) * 1e3 if steady else None,
        },
        step_samples_ms=[round(v * 1e3, 4) for v in _subsample(steady)],
        step_trace=[[i + 1, loop.losses[i], round(loop.step_times[i] * 1e3, 4)]
                    for i in _subsample(range(len(loop.losses)))],
        # One definition everywhere: the batch over the median steady-state step time.
        throughput_samples_s=task.batch_size / p50 if steady else None,
        eval_s=loop.eval_wall if not timing_only else None,
        time_to_target_s=next((r["wall_s"] for r in rows
                               if r["test_accuracy"] >= task.target_accuracy), None),
        flops_per_step=step_flops,
        achieved_gflops=step_flops / p50 / 1e9 if steady else None,
        cpu_wall_ratio=ratio,
        # CPU time / wall time above the thread count means threads escaped the setting.
        threads_exceeded=bool(ratio is not None and ratio > threads * 1.05),
        train_peak_rss_mib=loop.train_peak / MIB,
        train_peak_delta_mib=(loop.train_peak - baseline) / MIB,
        eval_peak_rss_mib=loop.eval_peak / MIB if loop.eval_peak else None,
        peak_rss_mib=max(last_peak, loop.train_peak, loop.eval_peak) / MIB,
    )


def precision_state(adapter, dev) -> dict[str, Any]:
    """The cell's float32 policy: on a GPU, the adapter's switches (TF32 off, applied here,
    right after construction) and the variables set before the import (``device.worker_env``)."""
    from fwbench.harness.measure import device as devices

    if not dev.gpu:
        return {"policy": "float32"}
    env = devices.worker_env(dev)
    return {"policy": "float32, TF32 off", **_describe(adapter.device_settings()),
            "env": {k: os.environ.get(k) for k in env}}


def device_state(adapter, dev, monitor) -> dict[str, Any]:
    """What the device monitor and the adapter measured: energy on every cell (None with the
    reason where no counter is readable); on a GPU also the GPU, the allocator's and NVML's
    memory, the utilisation and the framework's own GEMM peak."""
    from fwbench.harness.measure import device as devices

    monitor.stop()
    found = monitor.result()
    if not dev.gpu:
        return found
    found["gpu"].update({k: v for k, v in adapter.device_versions().items() if k in ("cuda", "cudnn")})
    peak = adapter.memory_peak()
    found["allocator_memory"] = peak or None
    gflops = devices.time_gemm(adapter.gemm(devices.GEMM_N))
    found["device_gemm"] = ({"gflops": gflops, "n": devices.GEMM_N, "precision": "float32, TF32 off",
                             "by": type(adapter).__name__} if gflops else {})
    return found


def probe(req) -> dict[str, Any]:
    """The parity probe (``fwbench check``): for each task, from the canonical weights, the
    exported initial weights, logits, loss and gradients on batch 0, then 3 optimizer steps on
    batches 1, 2, 3 (the gradients at each, taken before its step) and the parameters after
    them. Arrays go to one ``.npz`` per task."""
    import numpy as np

    from fwbench.harness.measure import device as devices
    from fwbench.harness import records, spec
    from fwbench.harness.adapter import Backend

    backend = Backend(**dataclasses.asdict(req.backend))
    dev = devices.parse(req.device)
    adapter_cls = backend.load()
    no_device = adapter_cls.device_unsupported(dev.platform)
    adapter_cls.prepare_process([records.task_from_json(item.task) for item in req.probes])
    for item in req.probes:
        task = records.task_from_json(item.task)
        missing = adapter_cls.unsupported(task)
        if missing or no_device:  # this task only; the others are probed
            np.savez(item.probe_path, unsupported=np.array(
                spec.unsupported_text(f"{backend.name} adapter", missing) if missing
                else f"{backend.name} adapter: --device {dev}: {no_device}"))
            continue
        adapter = adapter_cls(task, req.threads, devices.adapter_options(backend.options, dev))
        adapter.flush_denormals()  # the default policy of runs
        precision_state(adapter, dev)  # and float32 with TF32 off on a GPU, as in runs
        with np.load(item.batches_path, allow_pickle=False) as z:
            batches = {k: z[k] for k in z.files}
        adapter.build(spec.init_params(task, req.seed))
        out: dict[str, np.ndarray] = {f"init/{k}": v for k, v in adapter.export_params().items()}
        out["logits"] = adapter.logits(batches["x0"])
        loss, grads = adapter.gradients(batches["x0"], batches["y0"])
        out["loss"] = np.array(loss)
        out.update({f"grad/{k}": v for k, v in grads.items()})
        if spec.without_dropout(task) is not task:  # the steps without dropout (see the README)
            adapter = adapter_cls(spec.without_dropout(task), req.threads,
                                  devices.adapter_options(backend.options, dev))
            adapter.flush_denormals()
            precision_state(adapter, dev)
            adapter.build(spec.init_params(task, req.seed))
        losses = []
        for i in (1, 2, 3):  # each step's gradients first: parity replays the spec's optimizer on them
            _, grads = adapter.gradients(batches[f"x{i}"], batches[f"y{i}"])
            out.update({f"step{i}/{k}": v for k, v in grads.items()})
            losses.append(adapter.train_step(batches[f"x{i}"], batches[f"y{i}"]))
        out["step_losses"] = np.array(losses)
        out.update({f"params/{k}": v for k, v in adapter.export_params().items()})
        np.savez(item.probe_path, **out)
    return {"status": "ok", "error": None, "framework_version": adapter_cls.framework_version()}


def calibrate(req) -> dict[str, Any]:
    """The idle baseline of the run's device (its energy counter over 2 s, before anything
    runs on it; ``device.idle_power``), then this machine's float32 GEMM peak with NumPy's
    BLAS on the cell's cores and threads."""
    from fwbench.harness.measure import device, environment, flops

    dev = device.parse(req.device)
    idle = device.idle_power(dev)
    return {"status": "ok", "error": None, **idle, "gemm_peak_gflops": flops.gemm_peak_gflops(),
            "blas": environment.blas(), "gpu": device.gpu_info(dev.index) if dev.gpu else None}


def drift(req) -> dict[str, Any]:
    """The machine's speed now: the median step of a fixed NumPy workload (an MLP-sized
    forward and backward pass in float32 on the run's cores: 784-512-10 at batch 128, 300
    steps, the first 50 discarded). Run in its own process between rounds of cells, its
    change between two runs estimates the machine's own drift (``fwbench compare``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 784), dtype=np.float32)
    w1 = rng.standard_normal((784, 512), dtype=np.float32) * 0.05
    w2 = rng.standard_normal((512, 10), dtype=np.float32) * 0.05
    times = []
    for _ in range(300):
        t = time.perf_counter()
        h = np.maximum(x @ w1, 0.0)
        g = h @ w2
        dw2 = h.T @ g
        dh = (g @ w2.T) * (h > 0)
        dw1 = x.T @ dh
        w1 -= 1e-6 * dw1
        w2 -= 1e-6 * dw2
        times.append(time.perf_counter() - t)
    return {"status": "ok", "error": None, "median_ms": float(np.median(times[50:])) * 1e3}


def overhead(req) -> dict[str, Any]:
    """The harness loop (``run_steps``) against two bare loops on the same adapter and batches,
    in alternating blocks of ``steps`` steps; medians of block wall times.

    - ``ratio``: harness / bare loop that gathers each batch the same way (``x[idx]``): the
      cost of the harness's timing, loss check and progress -- its own overhead;
    - ``ratio_pregathered``: harness / bare loop over batches gathered beforehand: adds the
      cost of gathering shuffled batches, which any training loop pays somewhere (it is in
      ``train_time_s``, not in the step times).
    """
    import numpy as np

    from fwbench.harness import records, spec
    from fwbench.harness.catalog import tasks
    from fwbench.harness.measure import device as devices
    from fwbench.harness.adapter import Backend

    task = records.task_from_json(req.task)
    backend = Backend(**dataclasses.asdict(req.backend))
    dev = devices.parse(req.device)
    arrays = tasks.arrays(task, req.data_path)
    x, y = arrays["x_train"], arrays["y_train"]
    adapter_cls = backend.load()
    no_device = adapter_cls.device_unsupported(dev.platform)
    if no_device:
        return {"status": "unsupported", "error": f"{backend.name} adapter: --device {dev}: {no_device}"}
    adapter = adapter_cls(task, req.threads, devices.adapter_options(backend.options, dev))
    adapter.flush_denormals()  # the default policy of runs
    precision_state(adapter, dev)  # and float32 with TF32 off on a GPU, as in runs
    adapter.build(spec.init_params(task, 0))
    batches = spec.train_batches(len(x), task.batch_size, 0, 1)[: req.steps]
    gathered = [(x[idx], y[idx]) for idx in batches]
    for xb, yb in gathered[:5]:  # warm-up: compilation, allocator
        adapter.train_step(xb, yb)
    harness, bare, pre = [], [], []
    for _ in range(req.blocks):
        t = time.perf_counter()
        run_steps(adapter, x, y, batches, [], [], progress=lambda step, n: None)
        harness.append(time.perf_counter() - t)
        t = time.perf_counter()
        for idx in batches:
            adapter.train_step(x[idx], y[idx])
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        for xb, yb in gathered:
            adapter.train_step(xb, yb)
        pre.append(time.perf_counter() - t)
    return {"status": "ok", "error": None, "harness_s": harness, "bare_s": bare, "pregathered_s": pre,
            "ratio": float(np.median(harness) / np.median(bare)),
            "ratio_pregathered": float(np.median(harness) / np.median(pre))}


def idiomatic(req) -> dict[str, Any]:
    """``fwbench overhead --against idiomatic``: ``req.kind`` "adapter" times the backend's
    ``train_step`` (canonical weights of ``req.seed``, the default denormal policy, as in
    ``train``), "idiomatic" the step of the hand-written loop ``req.loop``
    (``benchmarks/idiomatic``, its own initialisers). Both run through ``run_steps`` on the
    same batches (``spec.train_batches`` of ``req.seed``, epoch after epoch as needed):
    ``req.warmup`` steps, then ``req.steps`` timed ones, returned in ms."""
    import types

    from fwbench.harness import records, spec
    from fwbench.harness.catalog import tasks
    from fwbench.harness.adapter import Backend

    task = records.task_from_json(req.task)
    arrays = tasks.arrays(task, req.data_path)
    x, y = arrays["x_train"], arrays["y_train"]
    t = time.perf_counter()
    if req.kind == "adapter":
        backend = Backend(**dataclasses.asdict(req.backend))
        adapter = backend.load()(task, req.threads, backend.options)
        adapter.flush_denormals()
        adapter.build(spec.init_params(task, req.seed))
    elif req.kind == "idiomatic":
        step = load_loop(req.loop).make_step(task.name, req.threads)
        adapter = types.SimpleNamespace(train_step=step)
    else:
        raise ValueError(f"unknown kind {req.kind!r}")
    setup_s = time.perf_counter() - t
    batches = spec.batch_order(len(x), task.batch_size, req.seed, req.warmup + req.steps)
    times: list[float] = []
    losses: list[float] = []
    bad = run_steps(adapter, x, y, batches, times, losses)
    if bad is not None:
        return {"status": "diverged", "error": f"loss is {losses[-1]} at step {bad}"}
    return {"status": "ok", "error": None, "setup_s": setup_s, "first_step_s": times[0],
            "step_ms": [v * 1e3 for v in times[req.warmup:]], "losses": losses}


def load_loop(path: str | os.PathLike) -> ModuleType:
    """Import a reference loop's module from its file (in a worker process).

    Registered in ``sys.modules`` under its own name before it runs: MindSpore's graph
    compiler re-imports the module of every Cell it parses by that name."""
    path = Path(path)
    name = f"fwbench_idiomatic_{path.stem}"
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    try:
        found.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    if not callable(getattr(module, "make_step", None)):
        raise ImportError(f"{path} has no make_step(task_name, threads)")
    return module


def device_check(req) -> dict[str, Any]:
    """``fwbench run --device``: whether the backend's installed build can compute there
    (None, or the one-line reason), asked after the import with the device's environment."""
    from fwbench.harness.measure import device as devices
    from fwbench.harness.adapter import Backend

    adapter_cls = Backend(**dataclasses.asdict(req.backend)).load()
    return {"status": "ok", "error": None, "framework_version": adapter_cls.framework_version(),
            "unsupported": adapter_cls.device_unsupported(devices.parse(req.device).platform)}


MODES = {"train": train, "probe": probe, "calibrate": calibrate, "drift": drift,
         "overhead": overhead, "idiomatic": idiomatic, "device": device_check}


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its watchdog dies (even by kill -9)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    except (OSError, AttributeError):  # not Linux: the watchdog's kill remains
        return
    parent = os.environ.get("FWBENCH_PARENT_PID")  # watchdog.PARENT_ENV
    if parent is not None and os.getppid() != int(parent):  # it died before prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        cfg = json.load(f)
    die_with_parent()
    # The runner reads events from our original stdout; anything else printed goes to the log.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    pin_threads(cfg["cpus"], cfg["threads"])
    from fwbench.harness.measure import device  # stdlib only: no framework, no NumPy before the pinning above

    device.apply_env(device.parse(cfg.get("device")))  # the GPU (or none) before any import
    try:
        from fwbench.harness import records

        req = records.request_from_json(cfg)
        record = train(req, out) if req.mode == "train" else MODES[req.mode](req)
    except MemoryError:
        traceback.print_exc()
        record = {"status": "oom", "error": "MemoryError in the worker"}
    except Exception as exc:  # the cell failed; the run goes on
        traceback.print_exc()
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        record = {"status": "failed", "error": msg[:300]}
    _emit(out, "record", record=record)
    out.close()
    sys.stderr.flush()
    # Some frameworks hang or crash in their own atexit/teardown; the record is out.
    os._exit(0)


if __name__ == "__main__":
    main()
