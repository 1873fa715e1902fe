"""``fwbench check`` at smoke scale: every installed backend against the references.

One probe process per backend for all three tasks (the same code path as the CLI), so CI
catches a layout, bias, eps or optimizer regression in any adapter.
"""

import pytest

from fwbench.harness import parity, spec
from fwbench.harness.adapter import discover

BACKENDS = discover()
NAMES = sorted(BACKENDS)


@pytest.fixture(scope="module")
def rows():
    installed = [n for n in NAMES if BACKENDS[n].installed]
    if not installed:
        pytest.skip("no backend installed")
    result = parity.check(BACKENDS, installed, list(spec.TASKS), seed=0, threads=1)
    return {(r.task, r.backend): r for r in result}


# Known failure (issue 14, open): the cnn task's gradients and 3-step moves differ from
# torch's beyond the tolerances on every other backend (seed 0: grad 1.4e-3 > 1e-4, 3-step L2
# 1e-4..1.7e-2) while logits and loss match the NumPy reference to 1.6e-7. Not yet explained;
# Not strict: the variants (torch-compile, ...) were not measured one by one.
KNOWN_FAILURES = {("cnn", b): "issue 14: cnn gradients/3-step moves differ from torch (not yet explained)"
                  for b in NAMES if b != parity.REFERENCE_BACKEND}


def _pairs():
    for task in spec.TASKS:
        for backend in NAMES:
            why = KNOWN_FAILURES.get((task, backend))
            marks = [pytest.mark.xfail(strict=False, reason=why)] if why else []
            yield pytest.param(task, backend, marks=marks, id=f"{task}-{backend}")


@pytest.mark.parametrize("task, backend", list(_pairs()))
def test_backend_matches_the_references(rows, backend, task):
    missing = BACKENDS[backend].missing()
    if missing:
        pytest.skip(f"{backend} not installed (missing {', '.join(missing)})")
    row = rows[(task, backend)]
    assert row.error is None, row.error
    assert row.unsupported is None, row.unsupported  # every built-in runs every built-in task
    assert row.ok, row.breaches
    assert row.init == 0.0 and row.logits_abs is not None
    if backend != parity.REFERENCE_BACKEND and not BACKENDS[parity.REFERENCE_BACKEND].missing():
        assert row.grad_rel is not None and row.params_rel is not None


def test_check_detects_a_wrong_optimizer():
    """The comparison is not vacuous: parameters 2% off after 3 steps fail it."""
    import numpy as np

    from fwbench.harness import reference

    task = spec.TASKS["mlp"]
    batches = parity.probe_batches(task, 0)
    params = spec.init_params(task, 0)
    ref = {f"params/{k}": v + 0.01 for k, v in params.items()}
    ref.update({f"grad/{k}": np.ones_like(v) for k, v in params.items()})
    probe = {f"init/{k}": v for k, v in params.items()}
    probe["logits"] = reference.forward(task, params, batches["x0"]).astype(np.float32)
    probe["loss"] = np.array(reference.softmax_cross_entropy(probe["logits"], batches["y0"]))
    probe.update({f"grad/{k}": np.ones_like(v) for k, v in params.items()})
    probe.update({f"params/{k}": v + 0.0102 for k, v in params.items()})  # 2% off after 3 steps
    row = parity.compare(task, "fake", probe, ref, batches, 0)
    assert not row.ok and any(b.startswith("params_rel") for b in row.breaches)
