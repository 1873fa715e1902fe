"""A run's ``run.json`` as it would be written now, what differs from a saved one, and the
checks of ``fwbench run --resume``: a run resumes only as it was configured, in the same
environment (or with ``--force-resume``, recorded)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fwbench.harness import records
from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import labels
from fwbench.harness.catalog import tasks as task_registry
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import environment
from fwbench.harness.records import RUN_JSON, RunConfig, RunMeta


def _backend_info(backend: Backend, env: records.EnvInfo | None) -> records.BackendInfo:
    requires = backend.versions()
    if env is not None:  # the versions in the backend's env, not in the runner's
        by_canon = {k.lower().replace("_", "-"): v for k, v in env.packages.items()}
        requires = {d: by_canon.get(d.lower().replace("_", "-"), "not installed") for d in backend.requires}
    return records.BackendInfo(requires, dict(backend.options), backend.source, backend.adapter,
                               records.source_sha256(backend.adapter), env)


def build_meta(config: RunConfig, backends: dict[str, Backend],
               envs: dict[str, records.EnvInfo] | None = None) -> RunMeta:
    """``run.json`` for a run starting now (before calibration); ``envs``: the env of each
    backend that runs in one."""
    envs = envs or {}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return RunMeta(
        created=created,
        run_id=records.new_run_id(created),
        fwbench_version=environment.fwbench_version(),
        config=config,
        environment=environment.capture(),
        backends={n: _backend_info(backends[n], envs.get(n)) for n in config.backends},
        tasks={t: records.task_to_json(task_registry.get(t)) for t in config.tasks},
    )


ENV_KEYS = ("cpu_model", "logical_cores", "physical_cores", "memory_gib", "kernel", "python")


def environment_differences(saved: RunMeta, now: RunMeta) -> list[str]:
    """What differs between a saved run and one starting now, apart from the configuration:
    fwbench, the machine, package versions, backends' adapters and task definitions."""
    out = []
    if saved.fwbench_version != now.fwbench_version:
        out.append(f"fwbench {saved.fwbench_version} -> {now.fwbench_version}")
    for k in ENV_KEYS:
        a, b = getattr(saved.environment, k), getattr(now.environment, k)
        if a != b:
            out.append(f"{k} {a} -> {b}")
    pa, pb = saved.environment.packages, now.environment.packages
    out += [f"{k} {pa.get(k)} -> {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    for name in sorted(set(saved.backends) | set(now.backends)):
        a, b = saved.backends.get(name), now.backends.get(name)
        if a is None or b is None:
            continue
        for dist in sorted(set(a.requires) | set(b.requires)):  # plugins' own packages
            if dist not in environment.PACKAGES and a.requires.get(dist) != b.requires.get(dist):
                out.append(f"backend {name}: {dist} {a.requires.get(dist)} -> {b.requires.get(dist)}")
        if a.adapter != b.adapter or a.adapter_sha256 != b.adapter_sha256:
            out.append(f"backend {name} adapter code changed ({a.adapter})")
        if a.options != b.options:
            out.append(f"backend {name} options {a.options} -> {b.options}")
        ea, eb = a.env, b.env
        if (ea.key if ea else None) != (eb.key if eb else None):
            out.append(f"backend {name} env {ea.name if ea else 'current'} -> {eb.name if eb else 'current'}")
        elif ea and eb and ea.packages != eb.packages:
            changed = sorted(k for k in set(ea.packages) | set(eb.packages)
                             if ea.packages.get(k) != eb.packages.get(k))
            out.append(f"backend {name} env packages changed ({', '.join(changed)})")
    for name in sorted(set(saved.tasks) & set(now.tasks)):
        if saved.tasks[name] != now.tasks[name]:
            changed = sorted(k for k in saved.tasks[name] if saved.tasks[name][k] != now.tasks[name].get(k))
            out.append(f"task {name} definition changed ({', '.join(changed)})")
    return out


def prepare_resume(run_dir: Path, given: dict[str, Any], backends: dict[str, Backend],
                   envs_for: Callable[[RunConfig], dict[str, records.EnvInfo]] | None = None
                   ) -> RunConfig:
    """The saved configuration of ``run_dir``, after checking that the options agree.

    ``given`` holds the options the user passed with --resume (already normalised as the
    configuration stores them): any that differs from the saved one is refused, and so are
    backends or tasks not available here. ``envs_for`` finds the envs of the saved
    configuration's backends (``--envs isolated``, versioned backends). The environment
    (fwbench, machine, packages, adapters, task definitions) is compared once, when the run
    resumes (``accepted_differences``, from ``runner.run``).
    """
    meta = records.load_meta(run_dir)
    saved = meta.config
    diffs = saved.differences(given)
    if diffs:
        raise FwbenchError(f"--resume: {'; '.join(diffs)} differ from {run_dir / RUN_JSON}; "
                           "drop those options to resume the run as it was configured")
    for name in saved.backends:  # A/A copies (torch#2), versions (jax@0.7.1) of a backend
        base = labels.base(name)
        if name not in backends and base in backends:
            backends[name] = dataclasses.replace(backends[base], name=name)
    now_envs = envs_for(saved) if envs_for is not None else {}
    missing = [b for b in saved.backends
               if b not in backends or (backends[b].missing() and b not in now_envs)]
    if missing:
        raise FwbenchError(f"--resume: backend(s) {', '.join(missing)} of that run are not installed")
    unknown = [t for t in saved.tasks if t not in task_registry.all_tasks()]
    if unknown:
        raise FwbenchError(f"--resume: task(s) {', '.join(unknown)} of that run are not known here")
    return saved


def accepted_differences(saved: RunMeta, now: RunMeta, force: bool) -> list[str]:
    """What differs between the environment of a saved run and now (``environment_differences``),
    refused with one line unless ``force`` (``--force-resume``): the list to record."""
    diffs = environment_differences(saved, now)
    if diffs and not force:
        raise FwbenchError(f"--resume: the environment changed since the run started: "
                           f"{'; '.join(diffs)} (--force-resume accepts that, and records it)")
    return diffs
