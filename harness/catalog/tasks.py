"""The task registry: the built-in tasks of ``spec.TASKS`` and those of plugins.

A package registers tasks through the ``fwbench.tasks`` entry-point group. An entry point
names a ``spec.Task``, a ``data.DataSet``, a ``data.Preprocessing``, or a list of them, so one
plugin can bring a model, its data set and its preprocessing (docs/adding-a-task.md). Every
place that looks a task up by name (the CLI, the runner, the parity check, the idiomatic
sweep) goes through ``all_tasks`` / ``get``; reports read the task definitions a run
snapshotted in its run.json, so they need neither the plugin nor this registry.

Discovery never imports a framework (a task is data). A plugin that fails to load, names
something else, or registers a task that cannot be built (unknown data set or preprocessing,
layers whose shapes do not end in the task's classes, ...) is skipped with one warning line;
so is anything named like a built-in or like something another plugin registered first.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fwbench.harness import data, spec
from fwbench.harness.catalog import plugins
from fwbench.harness.errors import DataError, FwbenchError

ENTRY_POINT_GROUP = "fwbench.tasks"
BUILT_IN = "built-in"


@dataclass(frozen=True)
class Registry:
    """What the plugins registered (the built-ins stay in ``spec.TASKS``, ``data.DATASETS``,
    ``data.PREPROCESS``), with where each task came from and the warnings of discovery."""

    tasks: dict[str, spec.Task]
    sources: dict[str, str]  # plugin task name -> "plugin <distribution> <version>"
    datasets: dict[str, data.DataSet]
    preprocessings: dict[str, data.Preprocessing]
    warnings: tuple[str, ...] = ()
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # task name -> why


def discover(warn: Callable[[str], None] | None = None) -> Registry:
    """Read the ``fwbench.tasks`` entry points (every call reads them afresh).

    Data sets and preprocessings of every plugin are registered before any task is checked,
    so one plugin's task may use another's data set. Each problem is one line to ``warn``
    and in ``Registry.warnings``."""
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    loaded: list[tuple[str, str, object]] = []  # (where, source, item)
    for entry in plugins.load(ENTRY_POINT_GROUP, note):
        for item in entry.items:
            if not isinstance(item, (spec.Task, data.DataSet, data.Preprocessing)):
                note(f"{entry.where} registers a {type(item).__name__}, not an fwbench Task, "
                     "DataSet or Preprocessing; skipped")
                continue
            loaded.append((entry.where, f"plugin {entry.dist or '?'} {entry.version}", item))

    datasets: dict[str, data.DataSet] = {}
    preprocessings: dict[str, data.Preprocessing] = {}
    for kind, builtins, found, cls in (("data set", data.DATASETS, datasets, data.DataSet),
                                       ("preprocessing", data.PREPROCESS, preprocessings,
                                        data.Preprocessing)):
        for where, source, item in loaded:
            if not isinstance(item, cls):
                continue
            clash = _clash(item.name, builtins, found, lambda x: x.source)
            if clash:
                note(f"{where} registers {kind} {item.name!r}, already registered by {clash}; ignored")
                continue
            found[item.name] = dataclasses.replace(item, source=source)

    tasks: dict[str, spec.Task] = {}
    sources: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for where, source, item in loaded:
        if not isinstance(item, spec.Task):
            continue
        clash = _clash(item.name, spec.TASKS, tasks, lambda t: sources[t.name])
        if clash:
            note(f"{where} registers task {item.name!r}, already registered by {clash}; ignored")
            continue
        problem = task_problem(item, datasets, preprocessings)
        if problem:
            skipped.setdefault(item.name, f"task {item.name!r} of {where} {problem}")
            note(f"{where}: task {item.name!r} {problem}; skipped")
            continue
        tasks[item.name], sources[item.name] = item, source
    return Registry(tasks, sources, datasets, preprocessings, tuple(warnings),
                    {k: v for k, v in skipped.items() if k not in tasks})


def _clash(name: str, builtins: dict, found: dict, source_of: Callable[[object], str]) -> str:
    """Who registered ``name`` already ("" if nobody)."""
    if name in builtins:
        return BUILT_IN
    if name in found:
        return source_of(found[name])
    return ""


def task_problem(task: spec.Task, datasets: dict[str, data.DataSet] | None = None,
                 preprocessings: dict[str, data.Preprocessing] | None = None) -> str:
    """Why ``task`` cannot run ("" if it can): checked once, at registration."""
    datasets, preprocessings = datasets or {}, preprocessings or {}
    if not task.name or not task.name.replace("_", "").replace("-", "").isalnum():
        return "needs a name of letters, digits, '-' and '_'"
    if task.dataset not in data.DATASETS and task.dataset not in datasets:
        return (f"uses unknown data set {task.dataset!r} (registered: "
                f"{', '.join([*data.DATASETS, *datasets])})")
    if task.preprocessing not in data.PREPROCESS and task.preprocessing not in preprocessings:
        return (f"uses unknown preprocessing {task.preprocessing!r} (registered: "
                f"{', '.join([*data.PREPROCESS, *preprocessings])})")
    if task.input_dtype not in ("float32", "int32"):
        return f"has input_dtype {task.input_dtype!r} (float32 or int32)"
    if not isinstance(task.optimizer, typing.get_args(spec.Optimizer)):
        return f"has optimizer {type(task.optimizer).__name__}, not one of the spec's"
    if task.batch_size < 1 or task.epochs_full < 1 or task.num_classes < 2:
        return "needs batch_size >= 1, epochs_full >= 1 and num_classes >= 2"
    if not 0 < task.target_accuracy <= 1:
        return f"has target_accuracy {task.target_accuracy} (a fraction in (0, 1])"
    try:
        spec.param_specs(task)  # every layer known to the spec, shapes ending in the classes
    except (TypeError, ValueError) as exc:
        return f"cannot be built: {' '.join(str(exc).split())}"
    return ""


@functools.cache
def registry() -> Registry:
    """The plugins' registrations, discovered once per process."""
    return discover()


def all_tasks() -> dict[str, spec.Task]:
    """Every task by name: the built-ins (``spec.TASKS``, in its order), then the plugins'."""
    return {**spec.TASKS, **registry().tasks}


def names() -> list[str]:
    return list(all_tasks())


def get(name: str) -> spec.Task:
    """The task ``name``; one-line FwbenchError if no built-in or plugin has it (saying why,
    for a plugin's task that was skipped)."""
    found = all_tasks()
    if name not in found:
        if name in registry().skipped:
            raise FwbenchError(f"{registry().skipped[name]}, so it cannot run")
        raise FwbenchError(f"unknown task {name!r}; choose from {', '.join(found)}")
    return found[name]


def dataset(name: str) -> data.DataSet:
    """The registered data set ``name`` (built-in or from a plugin)."""
    found = {**data.DATASETS, **registry().datasets}
    if name not in found:
        raise DataError(f"unknown data set {name!r}; registered: {', '.join(found)}")
    return found[name]


def preprocessing(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The registered preprocessing ``name``: ``data.PREPROCESS`` (built-in) or a plugin's."""
    if name in data.PREPROCESS:  # no plugin discovery for a built-in (workers ask this)
        return data.PREPROCESS[name]
    found = registry().preprocessings
    if name not in found:
        raise DataError(f"unknown preprocessing {name!r}; registered: "
                        f"{', '.join([*data.PREPROCESS, *found])}")
    return found[name].function


def arrays(task: spec.Task, prepared_path: Path | str) -> dict[str, np.ndarray]:
    """The task's x_train, y_train, x_test, y_test from its prepared data set file."""
    return data.task_arrays(task, data.load_prepared(Path(prepared_path)),
                            preprocessing(task.preprocessing))


def prepare(task: spec.Task, profile: str, data_dir: str | None = None) -> Path:
    """The prepared (decoded, cached) file of the task's data set."""
    return data.prepare(dataset(task.dataset), profile, data_dir)


def source(name: str) -> str:
    """Where task ``name`` comes from: "built-in" or "plugin <distribution> <version>"."""
    return BUILT_IN if name in spec.TASKS else registry().sources.get(name, "unknown")
