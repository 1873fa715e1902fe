"""What the commands share: the consoles, the help texts of shared options, and turning
--tasks, --backends, --device and --envs into names and envs (parsing and printing only)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import labels
from fwbench.harness.catalog import tasks as tasks_mod
from fwbench.harness.catalog.backends import discover
from fwbench.harness.catalog.labels import BackendLabel
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import device as devices
from fwbench.harness.measure import environment
from fwbench.harness.run import envs

# Plain click help (rich_markup_mode=None): help texts keep their brackets (pip install -e
# ".[ray]"), flags show no value, and it wraps at spaces to the terminal's width.
# A group without a command prints its help and exits 0 (group_help), as pip does.
HELP = {"rich_markup_mode": None, "invoke_without_command": True,
        "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, **HELP)  # help: info.root
console = Console()
err = Console(stderr=True)
ENVS_HELP = ("current (default): every worker in this interpreter | isolated: each backend's "
              "workers in its own env (fwbench envs create). A versioned backend (jax==0.7.1) "
              "always runs in its own env.")
ENVS_DIR_HELP = "Where the per-backend envs live (default: FWBENCH_ENVS_DIR, else the user cache)."
CREATE_ENVS_HELP = "Create the missing envs first (default: refuse, naming the command that creates them)."
DEVICE_HELP = ("cpu (default) | cuda | cuda:N: one GPU per cell (CUDA_VISIBLE_DEVICES), float32 "
                "with TF32 off, no preallocation; a backend whose build has no CUDA is "
                "unsupported, the others run.")


def group_help(ctx: typer.Context) -> None:
    """A command group's callback: without a command, its help (exit 0)."""
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(0)


def device_option(value: Optional[str]):
    """--device, parsed and, for a GPU, checked here (one line, exit 2, where this machine
    has no usable GPU of that index); a warning line where NVML cannot be read."""
    dev = devices.parse(value)
    warning = devices.require_gpu(dev)
    if warning:
        print(f"fwbench: warning: {warning}", file=sys.stderr)
    return dev


def discover_backends() -> dict[str, Backend]:
    """The registered backends; a broken or clashing plugin is a warning line, not a failure."""
    return discover(warn=lambda m: print(f"fwbench: warning: {m}", file=sys.stderr))


_WARNED: set[str] = set()


def task_names(value: Optional[str]) -> list[str]:
    """--tasks as task names ([] if not given): built-in and plugin tasks (catalog/tasks.py).
    A broken or clashing task plugin is a warning line, printed once; a task named here that
    cannot run is the one-line error instead (saying why)."""
    for item in (value or "").split(","):
        if item.strip():
            tasks_mod.get(item.strip())  # unknown, or a plugin's task that was skipped: why
    for message in tasks_mod.registry().warnings:
        if message not in _WARNED:
            _WARNED.add(message)
            print(f"fwbench: warning: {message}", file=sys.stderr)
    return csv_items(value, tasks_mod.names(), "tasks")


def all_task_names() -> list[str]:
    return tasks_mod.names()


def csv_items(value: Optional[str], allowed: list[str], what: str) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise FwbenchError(f"--{what} is empty; choose from {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise FwbenchError(f"unknown {what[:-1]} {item!r}; choose from {', '.join(allowed)}")
    return items if what == "backends" else list(dict.fromkeys(items))


def with_copies(names: list[str], known: dict[str, Backend]) -> list[str]:
    """A backend named twice runs as independent labelled copies, ``torch``, ``torch#2``: an
    A/A test, interleaved like any other backends (``known`` gains the copies)."""
    out: list[str] = []
    for n in names:
        count = sum(1 for x in out if labels.uncopied(x) == n)
        name = n if count == 0 else f"{n}#{count + 1}"
        if name != n:
            known[name] = dataclasses.replace(known[n], name=name)
        out.append(name)
    return out


def backend_names(value: str, known: dict[str, Backend], allow_versions: bool = True) -> list[str]:
    """--backends as backend names: ``jax==0.7.1`` is the labelled backend ``jax@0.7.1`` (run
    in an env of its own), and a backend named twice runs as copies (``with_copies``)."""
    parsed = [BackendLabel.from_option(v) for v in value.split(",") if v.strip()]
    csv_items(",".join(b.base for b in parsed) if parsed else value, list(known), "backends")
    names = []
    for lab in parsed:
        if lab.version is not None:
            if not allow_versions:
                raise FwbenchError(f"{lab.option}: a backend version runs in an env of its own, "
                                   "which this command does not use (fwbench run and fwbench check do)")
            known.setdefault(lab.name, dataclasses.replace(known[lab.base], name=lab.name))
        names.append(lab.name)
    return with_copies(names, known)


def with_envs(known: dict[str, Backend], root: Path, base_only: bool) -> list[str]:
    """The backends whose env (today's requirement set) exists under ``root``."""
    sets = envs.backend_requirement_sets({n: b for n, b in known.items()
                                          if not (base_only and b.options)})
    return [n for n, rs in sets.items() if envs.find(rs, root) is not None]


def select_backends(value: Optional[str], isolated: bool = False, root: Optional[Path] = None,
                     allow_versions: bool = False) -> tuple[list[str], dict[str, Backend]]:
    known = discover_backends()
    if value is None and isolated:
        root = root or envs.envs_dir()
        names = with_envs(known, root, base_only=True)
        if not names:
            raise FwbenchError(f"no backend env exists in {root}; create them with: fwbench envs create")
        return names, known
    if value is None:
        names = [n for n, b in known.items() if b.installed and not b.options]
        if not names:
            raise FwbenchError("no backend is installed; install one, e.g. pip install -e '.[torch]'")
        return names, known
    names = backend_names(value, known, allow_versions)
    for n in names:
        if isolated or BackendLabel.parse(n).version:  # runs in its own env: need not be installed here
            continue
        missing = known[n].missing()
        if missing:
            raise FwbenchError(f"backend {n!r} is not installed (missing {', '.join(missing)}); "
                               f"pip install -e '.[{known[n].requires[0]}]'")
    return names, known


def resolve_envs(names, known: dict[str, Backend], isolated: bool, envs_dir: Optional[Path],
                  create: bool) -> dict:
    """name -> records.EnvInfo of every backend that runs in its own env."""
    root = envs.envs_dir(envs_dir)
    creator = (lambda missing: create_envs(missing, known, root)) if create else None
    found = envs.resolve(names, known, root, isolated, creator, str(envs_dir) if envs_dir else None)
    return {n: e.info() for n, e in found.items()}


def print_envs(env_map: dict) -> None:
    for name, info in env_map.items():
        if BackendLabel.parse(name).copy > 1:
            continue
        pkgs = ", ".join(f"{k} {v}" for k, v in info.packages.items()
                         if k.lower() in environment.PACKAGES and k.lower() not in environment.RUNNER_ONLY)
        console.print(f"[dim]env {escape(name)}: {escape(info.path)}[/]", highlight=False, soft_wrap=True)
        console.print(f"[dim]  Python {info.python}; {escape(pkgs)}[/]", highlight=False)


def create_envs(names: list[str], known: dict[str, Backend], root: Path) -> None:
    """Create the env of every backend in ``names`` that has none (one per requirement set)."""
    sets: dict[str, tuple] = {}
    for n in names:
        rs = envs.for_label(n, known)
        users = sets.setdefault(rs.key, (rs, []))[1]
        if labels.uncopied(n) not in users:
            users.append(labels.uncopied(n))
    for rs, users in sets.values():
        existing = envs.find(rs, root)
        if existing is not None:
            console.print(f"exists: {existing.name} ({', '.join(users)}): {existing.path}",
                          highlight=False, markup=False, soft_wrap=True)
            continue
        console.print(f"[bold]creating[/] {escape(rs.name)} for {escape(', '.join(users))} "
                      f"from {escape(rs.origin)} ({escape(' '.join(rs.lines))}) in {escape(str(root))}",
                      highlight=False, soft_wrap=True)
        t0 = time.monotonic()
        if console.is_terminal:
            with console.status(f"{rs.backend}: python -m venv") as status:
                def on_line(line: str, status=status, rs=rs) -> None:
                    note = envs.condense(line)
                    if note:
                        status.update(escape(f"{rs.backend}: pip: {note}"))
                env = envs.create(rs, root, on_line)
        else:
            def on_line(line: str) -> None:  # not a terminal (a log): one line per package
                note = envs.condense(line)
                if note and note.startswith(("collecting", "obtaining", "building editable",
                                             "installing", "installed")) and "started" not in note:
                    console.print(f"  pip: {note}", style="dim", markup=False, highlight=False,
                                  soft_wrap=True)
            env = envs.create(rs, root, on_line)
        size = (env.manifest or {}).get("size_bytes") or envs.disk_usage(env.path)
        console.print(f"created {env.name} in {time.monotonic() - t0:.0f} s, {envs.human_size(size)}: "
                      f"{envs.summary(env)}", highlight=False, markup=False, soft_wrap=True)
