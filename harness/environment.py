"""What the machine and the software were: stored in ``run.json``, shown by ``fwbench env``."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
from typing import Any

PACKAGES = ("fwbench", "numpy", "pandas", "torch", "tensorflow", "keras", "mindspore", "jax",
            "jaxlib", "flax", "optax")
# "TF_" alone would also catch unrelated tools' variables (Terraform's TF_CLI_CONFIG_FILE).
PERF_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "XLA_", "TF_NUM_", "TF_ENABLE_", "TF_CPP_",
                     "TF_XLA_", "TF_DETERMINISTIC", "TF_FORCE_", "TF_GPU_", "KMP_", "GOMP_",
                     "JAX_", "MS_", "GLOG_", "KERAS_", "TORCH_", "FWBENCH_")


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


def capture() -> dict[str, Any]:
    import psutil

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "affinity": available_cpus(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": versions(),
        "blas": blas(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(PERF_ENV_PREFIXES)},
    }
