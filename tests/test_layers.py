"""The torch, Keras (tensorflow), MindSpore and PaddlePaddle adapters on the layers of issue 14
(same-padding Conv2D, Conv1D, MaxPool1D, stacked GRU, Bidirectional, Dropout): exact layout
round trips, logits against the NumPy reference, gradients against central differences, dropout
only in training (see tests/layer_cases.py; the JAX family: tests/test_layers_jax.py)."""

import os

import pytest

from fwbench.harness.catalog import tasks
from fwbench.harness.catalog.backends import discover

from layer_cases import (CASES, NEW_TASKS, check_dropout_only_in_training, check_forward_and_gradients,
                         check_round_trip)

pytestmark = pytest.mark.slow  # processes or frameworks in every test (the quick subset skips them)

FRAMEWORKS = {"torch": ("torch", "PyTorch", "torch"), "tensorflow": ("keras", "Keras/TensorFlow", "tensorflow"),
              "mindspore": ("mindspore", "MindSpore", "mindspore"),
              "paddle": ("paddle", "PaddlePaddle", "paddle")}
# PaddlePaddle 3.3.1 segfaults when imported into a process that has imported TensorFlow 2.21
# (`import tensorflow; import paddle`), and a pytest worker runs the frameworks one after
# another: Paddle's cases run in a pytest process of their own (tests/test_layers_paddle.py
# sets FWBENCH_LAYERS=paddle). fwbench itself never imports two frameworks in one process.
OWN_PROCESS = {"paddle"}
ONLY = os.environ.get("FWBENCH_LAYERS")


@pytest.fixture(scope="module", params=[ONLY] if ONLY else [f for f in FRAMEWORKS if f not in OWN_PROCESS])
def adapter(request):
    module, label, extra = FRAMEWORKS[request.param]
    pytest.importorskip(module, reason=f"{label} is not installed (pip install -e '.[{extra}]')")
    return discover()[request.param].load()


@pytest.mark.parametrize("name", NEW_TASKS)
def test_new_tasks_are_supported_and_round_trip_exactly(adapter, name):
    task = tasks.get(name)
    assert adapter.unsupported(task) == []
    check_round_trip(adapter, task)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_with_random_weights_is_exact(adapter, name):
    check_round_trip(adapter, CASES[name])


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_gradients_match_the_reference(adapter, name):
    check_forward_and_gradients(adapter, CASES[name])


def test_dropout_applies_in_training_only_with_seeded_masks(adapter):
    first = check_dropout_only_in_training(adapter, {"seed": 5})
    assert check_dropout_only_in_training(adapter, {"seed": 5}) == first
