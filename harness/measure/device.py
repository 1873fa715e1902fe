"""Where a cell computes: ``--device cpu|cuda[:N]``, and what fwbench reads from the device.

No framework is imported here. What lives here:

- ``Device``, parsed once at the CLI (``parse``); a worker request carries its text;
- ``worker_env``: the variables a worker sets *before* its framework is imported (the only
  knobs every framework obeys at import): one GPU per cell through ``CUDA_VISIBLE_DEVICES``
  (empty on ``cpu``, so no framework grabs a GPU), numbered as NVML numbers them
  (``CUDA_DEVICE_ORDER=PCI_BUS_ID``); float32 math with TF32 off (``NVIDIA_TF32_OVERRIDE=0``
  for cuBLAS and cuDNN under every framework, JAX's default matmul precision "highest"); no
  preallocation (JAX's ``XLA_PYTHON_CLIENT_PREALLOCATE=false``, TensorFlow's
  ``TF_FORCE_GPU_ALLOW_GROWTH=true``), so allocator figures mean what they say;
- ``require_gpu``: the one-line refusal of ``--device cuda`` where no GPU is usable;
- NVML (``nvidia-ml-py``, the optional extra ``fwbench[gpu]``, imported lazily): the GPU's
  identity (``gpu_info``) and, during training, a sampling thread (``GpuMonitor``):
  utilisation, this process's and the device's memory, SM clock, and the total-energy
  counter read at the start and end of every training phase;
- RAPL on the CPU (``CpuMonitor``): ``/sys/class/powercap/intel-rapl:*/energy_uj``, root-only
  on most kernels since 2020 (then every energy field is None, with the reason);
- ``idle_power``: the idle baseline, measured once per run (the calibration worker), which
  ``energy_j`` subtracts;
- ``time_gemm``: the float32 GEMM peak of a GPU cell, run by the cell's own framework.
"""

from __future__ import annotations

import glob
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from fwbench.harness.errors import FwbenchError

GEMM_N = 4096  # the GPU GEMM of a cell: 4096^3 float32, 137 GFLOP per product
RAPL_UNREADABLE = "RAPL not readable (root-only on most kernels)"
RAPL_COUNTS = "the whole CPU package (every core, the uncore and the other processes on it)"
NVML_ENERGY_COUNTS = ("the whole GPU board (nvmlDeviceGetTotalEnergyConsumption, Volta and "
                      "newer): every process on it")


@dataclass(frozen=True)
class Device:
    """``cpu``, or ``cuda`` with the GPU's index on its node (NVML's numbering)."""

    platform: str = "cpu"
    index: int | None = None

    @property
    def gpu(self) -> bool:
        return self.platform != "cpu"

    @property
    def name(self) -> str:
        return self.platform if self.index is None else f"{self.platform}:{self.index}"

    def __str__(self) -> str:
        return self.name


CPU = Device()


def parse(text: str | None) -> Device:
    """``cpu``, ``cuda`` (= ``cuda:0``) or ``cuda:N``; anything else is a one-line error."""
    value = (text or "cpu").strip().lower()
    if value == "cpu":
        return CPU
    m = re.fullmatch(r"cuda(?::(\d+))?", value)
    if not m:
        raise FwbenchError(f"--device {text!r}: expected cpu, cuda or cuda:N")
    return Device("cuda", int(m.group(1) or 0))


def worker_env(device: Device) -> dict[str, str]:
    """The variables a worker sets before its framework is imported (see the module doc)."""
    if not device.gpu:
        # No framework may grab a GPU for a CPU cell; JAX then never probes its GPU plugin.
        return {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA's numbering = NVML's = nvidia-smi's
        "CUDA_VISIBLE_DEVICES": str(device.index),  # the framework sees this GPU as its 0
        "JAX_PLATFORMS": "cuda,cpu",  # no silent fall-back to the CPU
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",  # float32 dots and convolutions, no TF32
        "NVIDIA_TF32_OVERRIDE": "0",  # cuBLAS and cuDNN refuse TF32, whatever a framework asks
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX: grow, do not take 75% of the GPU
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TensorFlow: memory growth, not all of the GPU
    }


def apply_env(device: Device) -> dict[str, str]:
    """Set ``worker_env`` in this process (a worker, before any framework import)."""
    env = worker_env(device)
    os.environ.update(env)
    return env


def adapter_options(options: dict[str, Any], device: Device) -> dict[str, Any]:
    """The options an adapter is built with: the backend's, plus ``device: "cuda"`` on a GPU
    (inside the worker the cell's GPU is always the framework's device 0). CPU cells get the
    backend's options unchanged."""
    return {**options, "device": device.platform} if device.gpu else dict(options)


# ------------------------------------------------------------------------------ NVML


class Unavailable(Exception):
    """NVML cannot be used here; the message is the one-line reason recorded."""


def nvml():
    """The initialised ``pynvml`` module (nvidia-ml-py), or ``Unavailable`` saying why."""
    try:
        import pynvml
    except ImportError:
        raise Unavailable("nvidia-ml-py is not installed (pip install 'fwbench[gpu]')") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise Unavailable(f"NVML did not start: {_one_line(exc)}") from None
    return pynvml


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvidia_smi_count() -> int | None:
    """GPUs listed by ``nvidia-smi -L`` (None: no nvidia-smi, or it failed)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def require_gpu(device: Device) -> str | None:
    """Refuse ``device`` with one line where it cannot be used: no NVIDIA driver (no NVML,
    no nvidia-smi), or no GPU of that index. Returns a warning line where the GPU exists
    but NVML cannot be read (its fields will be None), else None."""
    if not device.gpu:
        return None
    try:
        pynvml = nvml()
        count = pynvml.nvmlDeviceGetCount()
        warning = None
    except Unavailable as why:
        count = _nvidia_smi_count()
        if count is None:
            raise FwbenchError(f"--device {device}: no usable NVIDIA GPU here: no nvidia-smi, "
                               f"and {why}") from None
        warning = f"--device {device}: {why}: GPU model, memory, utilisation and energy are not recorded"
    if count == 0:
        raise FwbenchError(f"--device {device}: no NVIDIA GPU here (the driver lists none)")
    if device.index >= count:
        raise FwbenchError(f"--device {device}: this machine has {count} GPU(s), "
                           f"cuda:0 to cuda:{count - 1}")
    return warning


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # NVMLError_NotSupported and friends: that field stays None
        return None


def gpu_info(index: int) -> dict[str, Any]:
    """The GPU ``index`` as NVML describes it (``records.Gpu`` fields; None where NVML has
    no answer; ``reason`` when NVML is unavailable)."""
    try:
        pynvml = nvml()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Unavailable as why:
        return {"index": index, "name": None, "reason": str(why)}
    except Exception as exc:
        return {"index": index, "name": None, "reason": f"NVML: {_one_line(exc)}"}
    cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion)
    cc = _try(lambda: pynvml.nvmlDeviceGetCudaComputeCapability(h))
    mig = _try(lambda: pynvml.nvmlDeviceGetMigMode(h))
    limit = _try(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h))
    mem = _try(lambda: pynvml.nvmlDeviceGetMemoryInfo(h))
    return {
        "index": index,
        "name": _text(pynvml.nvmlDeviceGetName(h)),
        "driver": _try(lambda: _text(pynvml.nvmlSystemGetDriverVersion())),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
        "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
        "memory_total_mib": mem.total / 2**20 if mem is not None else None,
        "sm_clock_max_mhz": _try(lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
        "mem_clock_max_mhz": _try(lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)),
        "power_limit_w": limit / 1000 if limit is not None else None,
        "mig_mode": ("n/a" if mig is None else "enabled" if mig[0] else "disabled"),
    }


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "max": None}
    ordered = sorted(values)
    return {"mean": sum(values) / len(values), "p50": ordered[len(ordered) // 2], "max": ordered[-1]}


def _spaced(values: list[float], n: int = 64) -> list[float]:
    if len(values) <= n:
        return list(values)
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


class CpuMonitor:
    """CPU cells: the RAPL package counters read at the start and end of each training
    phase (no thread, nothing per step). Unreadable RAPL is checked once, at construction."""

    def __init__(self) -> None:
        self.domains = rapl_domains()
        self.reason = None if self.domains else rapl_reason()
        self.train_j = 0.0 if self.domains else None
        self._start: dict[str, int] = {}

    def start(self) -> CpuMonitor:
        return self

    def train_begin(self) -> None:
        if self.domains:
            self._start = _rapl_read(self.domains)

    def train_end(self) -> None:
        if self.domains and self._start:
            self.train_j += _rapl_joules(self.domains, self._start, _rapl_read(self.domains))

    def stop(self) -> None:
        pass

    def result(self) -> dict[str, Any]:
        return {"energy": {
            "source": "RAPL " + "+".join(sorted(d["name"] for d in self.domains.values()))
                      if self.domains else None,
            "counts": RAPL_COUNTS if self.domains else None,
            "train_j": self.train_j, "reason": self.reason}}


def rapl_domains() -> dict[str, dict[str, Any]]:
    """The readable top-level RAPL domains (one per CPU package): path -> name, wrap range."""
    out = {}
    for path in sorted(glob.glob("/sys/class/powercap/intel-rapl:[0-9]*")):
        if ":" in os.path.basename(path)[len("intel-rapl:"):]:  # a subdomain (core, dram)
            continue
        try:
            with open(os.path.join(path, "energy_uj")) as f:
                int(f.read())
            with open(os.path.join(path, "name")) as f:
                name = f.read().strip()
            try:
                with open(os.path.join(path, "max_energy_range_uj")) as f:
                    wrap = int(f.read())
            except (OSError, ValueError):
                wrap = 0
        except (OSError, ValueError):
            continue
        out[path] = {"name": name, "wrap": wrap}
    return out


def rapl_reason() -> str:
    if not glob.glob("/sys/class/powercap/intel-rapl:[0-9]*"):
        return "RAPL not available here (no /sys/class/powercap/intel-rapl:*; a VM or a non-x86 CPU)"
    return RAPL_UNREADABLE


def _rapl_read(domains: dict[str, dict[str, Any]]) -> dict[str, int]:
    out = {}
    for path in domains:
        with open(os.path.join(path, "energy_uj")) as f:
            out[path] = int(f.read())
    return out


def _rapl_joules(domains, start: dict[str, int], end: dict[str, int]) -> float:
    total = 0
    for path, d in domains.items():
        delta = end[path] - start[path]
        if delta < 0 and d["wrap"]:  # the counter wrapped once
            delta += d["wrap"]
        total += max(delta, 0)
    return total / 1e6


class GpuMonitor:
    """GPU cells: a thread sampling NVML every ``interval`` s while the cell runs (utilisation,
    device memory in use, this process's device memory, SM clock), samples kept for the
    training phases only; the total-energy counter read at the start and end of each
    training phase. Every field is None, with the reason, where NVML cannot be read."""

    def __init__(self, index: int, interval: float = 0.1):
        self.index = index
        self.interval = interval
        self.pid = os.getpid()
        self.reason: str | None = None
        self.energy_reason: str | None = None
        self.training = False
        self.util: list[float] = []
        self.mem_util: list[float] = []
        self.clock: list[float] = []
        self.used_peak = 0.0
        self.proc_peak: float | None = None
        self.train_j: float | None = 0.0
        self._energy_start: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            self.nvml = nvml()
            self.h = self.nvml.nvmlDeviceGetHandleByIndex(index)
            self.used_before = self.nvml.nvmlDeviceGetMemoryInfo(self.h).used / 2**20
        except Unavailable as why:
            self.nvml, self.reason = None, str(why)
        except Exception as exc:
            self.nvml, self.reason = None, f"NVML: {_one_line(exc)}"
        if self.nvml is None:
            self.train_j = None
            self.energy_reason = self.reason
        elif _try(lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.h)) is None:
            self.train_j = None
            self.energy_reason = ("this GPU has no total-energy counter "
                                  "(nvmlDeviceGetTotalEnergyConsumption: Volta and newer)")

    def start(self) -> GpuMonitor:
        if self.nvml is not None:
            self._thread.start()
        return self

    def _process_mib(self) -> float | None:
        procs = _try(lambda: self.nvml.nvmlDeviceGetComputeRunningProcesses(self.h)) or []
        for p in procs:
            if p.pid == self.pid and isinstance(p.usedGpuMemory, int):
                return p.usedGpuMemory / 2**20
        return None

    def _sample(self, training: bool) -> None:
        nv, h = self.nvml, self.h
        if training:
            rates = _try(lambda: nv.nvmlDeviceGetUtilizationRates(h))
            if rates is not None:
                self.util.append(float(rates.gpu))
                self.mem_util.append(float(rates.memory))
            clock = _try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            if clock is not None:
                self.clock.append(float(clock))
        mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(h))
        if mem is not None:
            self.used_peak = max(self.used_peak, mem.used / 2**20)
        mine = self._process_mib()
        if mine is not None:
            self.proc_peak = max(self.proc_peak or 0.0, mine)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample(self.training)
            self._stop.wait(self.interval)

    def train_begin(self) -> None:
        self.training = True
        if self.train_j is not None:
            self._energy_start = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.h)

    def train_end(self) -> None:
        self.training = False
        if self.train_j is not None and self._energy_start is not None:
            end = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.h)
            self.train_j += (end - self._energy_start) / 1000  # mJ
            self._energy_start = None
        if self.nvml is not None:  # one sample per phase at least (NVML's utilisation covers
            self._sample(True)  # its last sampling period: the end of this training phase)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def result(self) -> dict[str, Any]:
        gpu = gpu_info(self.index)
        if self.clock:
            gpu["sm_clock_mhz"] = _stats(self.clock)["p50"]
        if self.nvml is None:
            return {"gpu": gpu,
                    "device_memory": {"process_peak_mib": None, "device_used_peak_mib": None,
                                      "device_used_before_mib": None, "reason": self.reason},
                    "gpu_utilization": {"reason": self.reason},
                    "energy": {"source": None, "counts": None, "train_j": None,
                               "reason": self.reason}}
        util = _stats(self.util)
        return {
            "gpu": gpu,
            "device_memory": {
                "process_peak_mib": self.proc_peak,
                "device_used_peak_mib": self.used_peak or None,
                "device_used_before_mib": self.used_before,
                "reason": None if self.proc_peak is not None else (
                    "this process is not in NVML's process list (another PID namespace, as in "
                    "most containers): only the whole device's memory in use is known")},
            "gpu_utilization": {
                "gpu_pct_mean": util["mean"], "gpu_pct_p50": util["p50"], "gpu_pct_max": util["max"],
                "memory_pct_mean": _stats(self.mem_util)["mean"], "interval_s": self.interval,
                "n": len(self.util), "samples": _spaced(self.util),
                "reason": None if self.util else "no sample during training (too short?)"},
            "energy": {
                "source": f"NVML total energy, GPU {self.index}" if self.train_j is not None else None,
                "counts": NVML_ENERGY_COUNTS if self.train_j is not None else None,
                "train_j": self.train_j, "reason": self.energy_reason},
        }


def monitor(device: Device) -> CpuMonitor | GpuMonitor:
    return GpuMonitor(device.index) if device.gpu else CpuMonitor()


def idle_power(device: Device, seconds: float = 2.0) -> dict[str, Any]:
    """The idle baseline of the run (before any cell): the device's energy counter over
    ``seconds`` with nothing of fwbench's running on it, in watts (``records.Calibration``'s
    ``idle_*`` fields). None with the reason where the counter cannot be read."""
    mon = monitor(device)
    reason = mon.energy_reason if isinstance(mon, GpuMonitor) else mon.reason
    if mon.train_j is None:
        return {"idle_w": None, "idle_source": None, "idle_reason": reason}
    t = time.monotonic()
    mon.train_begin()
    time.sleep(seconds)
    mon.train_end()
    watts = mon.train_j / (time.monotonic() - t)
    return {"idle_w": watts, "idle_source": mon.result()["energy"]["source"], "idle_reason": None}


def time_gemm(run: Callable[[int], None] | None, n: int = GEMM_N, reps: int = 20) -> float | None:
    """GFLOP/s of ``run(k)``: ``k`` float32 n x n products on the device, then a sync (an
    adapter's ``gemm(n)``); 3 warm-ups, then the best of 3 timed batches of ``reps``."""
    if run is None:
        return None
    run(3)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        run(reps)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2.0 * n**3 / best / 1e9


def energy_per_sample(train_j: float | None, idle_w: float | None, train_s: float | None,
                      samples: int | None) -> tuple[float | None, float | None]:
    """(energy_j, energy_j_per_sample): the training phase's joules minus the idle baseline
    over the same time. None where any input is missing."""
    if train_j is None or idle_w is None or train_s is None:
        return None, None
    joules = train_j - idle_w * train_s
    return joules, (joules / samples if samples else None)
