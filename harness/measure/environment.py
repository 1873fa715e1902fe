"""What the machine and the software were: stored in ``run.json``, shown by ``fwbench env``."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fwbench.harness import records

PACKAGES = ("fwbench", "numpy", "pandas", "torch", "tensorflow", "keras", "mindspore", "jax",
            "jaxlib", "flax", "optax", "paddlepaddle")
# The harness's own (the "runner packages" line): not what a backend's numbers depend on, so
# a backend's "packages" line leaves them out (analysis.framework_versions).
RUNNER_ONLY = ("fwbench", "pandas")
# "TF_" alone would also catch unrelated tools' variables (Terraform's TF_CLI_CONFIG_FILE).
PERF_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "XLA_", "TF_NUM_", "TF_ENABLE_", "TF_CPP_",
                     "TF_XLA_", "TF_DETERMINISTIC", "TF_FORCE_", "TF_GPU_", "KMP_", "GOMP_",
                     "JAX_", "MS_", "GLOG_", "KERAS_", "TORCH_", "FWBENCH_",
                     # the GPU choice and the TF32 switch (device.py): not CUDA_HOME, a path
                     "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_TF32_OVERRIDE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4", "amx")))
    except OSError:
        pass
    return []


def _all_cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, ARM
                    return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def accelerators() -> list[str]:
    """One line per accelerator of this machine, as its driver names it (``nvidia-smi -L``
    without the per-device UUID, so identical machines match); empty without one. The place
    for device details (memory, driver, compute capability) when fwbench measures on GPUs."""
    import re
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [re.sub(r"\s*\(UUID: [^)]*\)", "", line).strip()
            for line in out.stdout.splitlines() if line.strip()]


def hardware_fingerprint() -> records.Hardware:
    """This machine as cells are matched on it (``records.Hardware``): CPU model, a hash of
    every CPU flag, the cores this process may use and the machine's, memory, kernel and
    accelerators, with a short id hashed from them. Two nodes with the same id count as the
    same hardware."""
    import hashlib

    import psutil

    from fwbench.harness import records

    fields = {
        "cpu_model": cpu_model(),
        "cpu_flags_sha256": hashlib.sha256(" ".join(_all_cpu_flags()).encode()).hexdigest()[:16],
        "cores": len(available_cpus()),
        "logical_cores": psutil.cpu_count(logical=True) or 0,
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "kernel": platform.release(),
        "accelerators": accelerators(),
    }
    return records.Hardware(id=_hardware_id(fields),
                            **{**fields, "accelerators": tuple(fields["accelerators"])})


def _hardware_id(fields: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the fingerprint's fields; an empty ``device`` (a CPU
    cell) is left out, so CPU fingerprints keep the ids they had before devices existed."""
    import hashlib
    import json

    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()
              if k != "id" and not (k == "device" and not v)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def with_device(hw: records.Hardware, gpu: records.Gpu | None) -> records.Hardware:
    """The fingerprint of a cell that computed on ``gpu``: the node's, plus the GPU's model
    and driver (``Hardware.device``), with its own id; unchanged for a CPU cell (None)."""
    import dataclasses

    if gpu is None:
        return hw
    device = f"{gpu.name or 'an unknown GPU'}, driver {gpu.driver or 'unknown'}"
    fields = {**dataclasses.asdict(hw), "device": device}
    return dataclasses.replace(hw, device=device, id=_hardware_id(fields))


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def blas() -> list[dict[str, Any]]:
    try:
        import threadpoolctl  # noqa: F401 - inspects NumPy's BLAS, imports no framework

        import numpy  # noqa: F401

        return [{k: v for k, v in info.items() if k in ("internal_api", "version", "num_threads",
                                                        "threading_layer", "architecture")}
                for info in threadpoolctl.threadpool_info()]
    except Exception:  # pragma: no cover - informational only
        return []


def capture() -> records.Environment:
    import psutil

    from fwbench.harness import records

    return records.Environment(
        cpu_model=cpu_model(),
        cpu_flags=cpu_flags(),
        logical_cores=psutil.cpu_count(logical=True),
        physical_cores=psutil.cpu_count(logical=False),
        affinity=available_cpus(),
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
        os=platform.platform(),
        kernel=platform.release(),
        python=sys.version.split()[0],
        packages=versions(),
        blas=blas(),
        env={k: v for k, v in sorted(os.environ.items()) if k.startswith(PERF_ENV_PREFIXES)},
    )


HARNESS = Path(__file__).resolve().parents[1]  # harness/measure/ -> harness/


def harness_sha256() -> str:
    """One hash over fwbench's harness sources, every room's included (path and content of
    each ``.py`` below ``harness/``): a changed worker or spec changes it."""
    h = hashlib.sha256()
    for path in sorted(HARNESS.rglob("*.py")):
        h.update(path.relative_to(HARNESS).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def fwbench_version() -> str:
    try:
        version = md.version("fwbench")
    except md.PackageNotFoundError:
        version = "unknown"
    return f"{version} (harness {harness_sha256()[:12]})"
