"""Conformance suite a new backend must pass; an importable pytest module.

    FWBENCH_BACKEND=my-backend python -m pytest --pyargs fwbench.harness.conformance
    FWBENCH_BACKEND=my-backend FWBENCH_TASKS=mlp python -m pytest --pyargs fwbench.harness.conformance

Checks: the backend is registered and installed; its adapter implements the interface; the
canonical weights survive the round trip into the framework and back exactly; it matches the
NumPy reference (logits, loss and its float64 gradients, the ground truth: no other framework
needed) and the optimizer replayed on its own gradients (``fwbench check``); and it is
deterministic: the same seed gives the same logits, gradients and parameters twice. Needs
pytest (``pip install pytest``).
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

from fwbench.harness.check import parity
from fwbench.harness.catalog import tasks
from fwbench.harness.adapter import Adapter
from fwbench.harness.catalog.backends import discover

NAME = os.environ.get("FWBENCH_BACKEND", "")
TASKS = [t for t in os.environ.get("FWBENCH_TASKS", ",".join(tasks.names())).split(",") if t]


@pytest.fixture(scope="module")
def backends():
    if not NAME:
        pytest.skip("set FWBENCH_BACKEND to the backend under test")
    return discover()


@pytest.fixture(scope="module")
def twice(backends):
    """Two independent probe runs of the backend (two processes each time)."""
    first = parity.run_probes(backends, [NAME], TASKS)
    second = parity.run_probes(backends, [NAME], TASKS)
    return first, second


def test_registered_and_installed(backends):
    assert NAME in backends, f"{NAME!r} is not registered in the fwbench.backends entry points"
    assert not backends[NAME].missing(), f"{NAME!r} needs {backends[NAME].missing()}"
    assert set(TASKS) <= set(tasks.names()), f"unknown tasks {set(TASKS) - set(tasks.names())}"


def test_adapter_implements_the_interface(backends):
    cls = backends[NAME].load()
    assert issubclass(cls, Adapter)
    abstract = getattr(cls, "__abstractmethods__", set())
    assert not abstract, f"not implemented: {sorted(abstract)}"
    assert isinstance(cls.framework_version(), str)
    sig = inspect.signature(cls.__init__)
    assert list(sig.parameters)[:3] == ["self", "task", "threads"]


def test_round_trip_and_parity(backends):
    rows = parity.check(backends, [NAME], TASKS)
    for row in rows:
        assert row.error is None, f"{row.task}: {row.error}"
        assert row.unsupported is None, (f"{row.task}: {row.unsupported} (set FWBENCH_TASKS to the "
                                         f"tasks the backend supports)")
        assert row.init == 0.0, f"{row.task}: canonical round trip differs by {row.init}"
        assert row.ok, f"{row.task}: {row.breaches}"


def test_deterministic_with_a_fixed_seed(twice):
    (_, a, err_a), (_, b, err_b) = twice
    assert not err_a and not err_b, (err_a, err_b)
    for task in TASKS:
        for key, value in a[NAME][task].items():
            np.testing.assert_array_equal(value, b[NAME][task][key], err_msg=f"{task} {key}")
