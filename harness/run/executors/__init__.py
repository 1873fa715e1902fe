"""Where the worker processes of a run execute: ``local`` (this machine, the default) or
``ray`` (the nodes of a Ray cluster), both behind the ``Executor`` protocol of ``base``."""

from __future__ import annotations

from fwbench.harness.errors import FwbenchError
from fwbench.harness.records import EXECUTORS
from fwbench.harness.run.executors.base import LOCAL, Done, Executor, Job, NodeInfo, execute
from fwbench.harness.run.executors.local import LocalExecutor

__all__ = ["EXECUTORS", "LOCAL", "Done", "Executor", "Job", "LocalExecutor", "NodeInfo", "execute", "make"]


def make(name: str, address: str | None = None, shared_data: bool = False) -> Executor:
    """The executor ``fwbench run --executor NAME`` asks for."""
    if name == "ray":
        from fwbench.harness.run.executors.ray import RayExecutor  # imports Ray

        return RayExecutor(address or "auto", shared_data)
    if name != "local":
        raise FwbenchError(f"unknown --executor {name!r}; choose from {', '.join(EXECUTORS)}")
    return LocalExecutor()
