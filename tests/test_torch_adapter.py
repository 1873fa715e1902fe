"""The PyTorch adapter against the NumPy reference: forward pass and one step of each optimizer."""

import numpy as np
import pytest

from fwbench.harness import reference, spec
from fwbench.harness.catalog.backends import discover

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e '.[torch]')")


def batch(task, n=16, seed=0):
    rng = np.random.default_rng(seed)
    if task.input_dtype == "int32":
        x = rng.integers(0, spec.IMDB_VOCAB, (n, *task.input_shape)).astype(np.int32)
        x[:, :50] = 0  # pre-padding, as the data pipeline produces
    else:
        x = rng.standard_normal((n, *task.input_shape)).astype(np.float32)
    return x, rng.integers(0, task.num_classes, n).astype(np.int32)


@pytest.fixture(scope="module")
def torch_adapter():
    return discover()["torch"].load()


@pytest.mark.parametrize("name", list(spec.TASKS))
def test_forward_matches_numpy(torch_adapter, name):
    task = spec.TASKS[name]
    params = spec.init_params(task, 0)
    a = torch_adapter(task, 1)
    a.build(params)
    x, y = batch(task)
    ref = reference.forward(task, params, x)
    np.testing.assert_allclose(a.logits(x), ref, atol=1e-5)
    loss, _ = a.gradients(x, y)
    assert loss == pytest.approx(reference.softmax_cross_entropy(ref, y), rel=1e-5)
    loss_sum, correct = a.evaluate(x, y)
    assert loss_sum == pytest.approx(loss * len(y), rel=1e-5)
    assert correct == int((ref.argmax(1) == y).sum())


@pytest.mark.parametrize("name", list(spec.TASKS))  # RMSprop, SGD momentum, Adam
def test_two_steps_follow_the_optimizer_formula(torch_adapter, name):
    # dropout at rate 0: the masks of a training step are not the gradients' evaluation mode
    task = spec.without_dropout(spec.TASKS[name])
    params = spec.init_params(spec.TASKS[name], 1)
    a = torch_adapter(task, 1)
    a.build(params)
    for k, v in a.export_params().items():  # canonical round trip is exact
        np.testing.assert_array_equal(v, params[k])
    state: dict = {}
    expected = params
    for t, seed in ((1, 1), (2, 2)):
        x, y = batch(task, seed=seed)
        _, grads = a.gradients(x, y)
        a.train_step(x, y)
        expected = reference.optimizer_step(task.optimizer, expected, grads, state, t)
        got = a.export_params()
        for k in params:
            update = expected[k] - params[k]
            err = np.abs(got[k] - expected[k]).max() / max(np.abs(update).max(), 1e-12)
            assert err < 1e-3, (k, t, err)


def test_second_lstm_bias_stays_zero_and_frozen(torch_adapter):
    task = spec.TASKS["lstm"]
    a = torch_adapter(task, 1)
    a.build(spec.init_params(task, 0))
    for seed in range(3):
        a.train_step(*batch(task, seed=seed))
    lstm = a.model[1].lstm
    assert not lstm.bias_hh_l0.requires_grad and not lstm.bias_hh_l0.any()
    assert lstm.bias_ih_l0.requires_grad


def test_threads_are_applied(torch_adapter):
    a = torch_adapter(spec.TASKS["mlp"], 1)
    assert a.thread_settings()["intra_op"] == 1
