"""The new layers of issue 14 (same-padding Conv2D, Conv1D, MaxPool1D, GRU, stacked GRUs,
Bidirectional) and dropout in the JAX-family adapters (jax, flax), on tiny tasks: the canonical
round trip, logits against the NumPy reference, gradients (exported in the canonical layout)
against finite differences of the reference, one Adam step, Flax's parameter layout, and
dropout in training only.

The tiny tasks use even kernels, where "same" padding is asymmetric ((k-1)//2 before, k//2
after), which the course's 5-wide kernels cannot show.
"""

import numpy as np
import pytest

from fwbench.harness import reference, spec
from fwbench.harness.catalog.backends import discover

pytestmark = pytest.mark.slow  # processes or frameworks in every test (the quick subset skips them)

pytest.importorskip("jax", reason="JAX is not installed (pip install -e '.[jax]')")

ADAM = spec.Adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-7)


def _task(name, input_shape, layers, optimizer=ADAM):
    return spec.Task(name=name, description=name, dataset="mnist", preprocessing="mnist_rows",
                     input_shape=input_shape, input_dtype="float32", layers=layers,
                     optimizer=optimizer, batch_size=8, epochs_full=1, target_accuracy=0.0,
                     num_classes=3)


SEQUENCE = _task("tiny_sequence", (7, 3), (
    spec.Conv1D(4, 4, "same"), spec.ReLU(), spec.MaxPool1D(2),  # (7, 4) -> (3, 4)
    spec.GRU(5, return_sequences=True),  # (3, 5): stacked, the next layer gets the sequence
    spec.Bidirectional((spec.GRU(4, return_sequences=True), spec.LSTM(6))),  # (6,)
    spec.Dense(3)))
IMAGE = _task("tiny_image", (2, 6, 6), (
    spec.Conv2D(3, 4, "same"), spec.ReLU(), spec.MaxPool2D(2),  # (3, 3, 3)
    spec.Conv2D(2, 2, "same"), spec.Conv2D(2, 3), spec.Flatten(), spec.Dropout(0.5), spec.Dense(3)))
SEQUENCE_VALID = _task("tiny_valid", (9, 2), (
    spec.Conv1D(3, 3), spec.MaxPool1D(3), spec.GRU(4), spec.Dense(3)))  # valid conv, floor pool
TASKS = [SEQUENCE, IMAGE, SEQUENCE_VALID]
BACKENDS = ["jax", "flax"]


def _batch(task, n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *task.input_shape)).astype(np.float32)
    return x, rng.integers(0, task.num_classes, n).astype(np.int32)


@pytest.fixture(scope="module", params=BACKENDS)
def adapter_cls(request):
    backend = discover()[request.param]
    if backend.missing():
        pytest.skip(f"{request.param} needs {backend.missing()}")
    return backend.load()


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_round_trip_is_exact_and_logits_match_the_reference(adapter_cls, task):
    params = spec.init_params(task, 0)
    assert adapter_cls.unsupported(task) == []
    a = adapter_cls(task, 1, {"seed": 0})
    a.build(params)
    exported = a.export_params()
    assert sorted(exported) == sorted(params)
    for k, v in exported.items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    x, y = _batch(task)
    ref = reference.forward(task, params, x)
    np.testing.assert_allclose(a.logits(x), ref, atol=1e-5)
    loss, _ = a.gradients(x, y)
    assert loss == pytest.approx(reference.softmax_cross_entropy(ref, y), rel=1e-5)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_gradients_match_finite_differences_of_the_reference(adapter_cls, task):
    params = spec.init_params(task, 1)
    params = {k: v + np.float32(0.1) if k.endswith(("bias", "b_ih", "b_hh")) else v  # non-zero biases
              for k, v in params.items()}
    a = adapter_cls(task, 1, {"seed": 0})
    a.build(params)
    x, y = _batch(task, seed=2)
    _, grads = a.gradients(x, y)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}

    def loss(p):
        return reference.softmax_cross_entropy(reference.forward(task, p, x), y)

    rng = np.random.default_rng(3)
    h = 1e-5
    for name, g in grads.items():
        assert g.shape == params[name].shape, name
        scale = float(np.abs(g).max())
        assert scale > 0, f"{name}: zero gradient"
        coords = [np.unravel_index(np.argmax(np.abs(g)), g.shape)]
        coords += [tuple(int(rng.integers(0, n)) for n in g.shape) for _ in range(3)]
        for c in coords:
            plus, minus = dict(p64), dict(p64)
            plus[name], minus[name] = p64[name].copy(), p64[name].copy()
            plus[name][c] += h
            minus[name][c] -= h
            numeric = (loss(plus) - loss(minus)) / (2 * h)
            assert abs(g[c] - numeric) <= 1e-4 * scale, (name, c, g[c], numeric)


def test_one_adam_step_follows_the_formula(adapter_cls):
    task = SEQUENCE
    params = spec.init_params(task, 2)
    a = adapter_cls(task, 1, {"seed": 0})
    a.build(params)
    x, y = _batch(task, seed=4)
    _, grads = a.gradients(x, y)
    a.train_step(x, y)
    expected = reference.optimizer_step(task.optimizer, params, grads, {}, 1)
    got = a.export_params()
    for k in params:
        update = expected[k] - params[k]
        err = np.abs(got[k] - expected[k]).max() / max(np.abs(update).max(), 1e-12)
        assert err < 1e-3, (k, err)


def test_dropout_in_training_only_with_a_fresh_mask_each_step(adapter_cls):
    # lr 0: the parameters never move, so the training losses differ only by their masks
    task = _task("tiny_dropout", IMAGE.input_shape, IMAGE.layers, spec.SGDMomentum(lr=0.0, momentum=0.0))
    params = spec.init_params(task, 0)
    x, y = _batch(task, n=64)
    eval_loss = reference.softmax_cross_entropy(reference.forward(task, params, x), y)

    def losses(seed):
        a = adapter_cls(task, 1, {"seed": seed})
        a.build(params)
        out = [a.train_step(x, y) for _ in range(3)]
        np.testing.assert_allclose(a.logits(x), reference.forward(task, params, x), atol=1e-5)
        assert a.gradients(x, y)[0] == pytest.approx(eval_loss, rel=1e-5)  # evaluation mode
        assert a.evaluate(x, y)[0] == pytest.approx(eval_loss * len(y), rel=1e-5)
        return out

    first = losses(0)
    assert len(set(first)) == 3, f"the same mask twice: {first}"
    assert all(abs(v - eval_loss) > 1e-6 for v in first), "dropout not applied in training"
    assert losses(0) == first  # seeded from options["seed"]
    assert losses(1) != first


def test_the_course_tasks_are_supported(adapter_cls):
    for name in ("cnn", "gru", "bigru", "cnn_gru"):
        assert adapter_cls.unsupported(spec.TASKS[name]) == [], name


def test_flax_layout_of_gru_conv1d_and_bidirectional_parameters():
    backend = discover()["flax"]
    if backend.missing():
        pytest.skip(f"flax needs {backend.missing()}")
    task = SEQUENCE
    params = spec.init_params(task, 0)
    a = backend.load()(task, 1)
    a.build(params)
    layers = a.model.layers
    conv = layers[0].kernel.value
    assert conv.shape == (4, 3, 4)  # nnx.Conv [k, in, out]; canonical [out, in, k]
    np.testing.assert_array_equal(np.asarray(conv), params["0.kernel"].transpose(2, 1, 0))
    gru = layers[3]
    assert gru.dense_i.kernel.value.shape == (4, 15) and gru.dense_h.kernel.value.shape == (5, 15)
    np.testing.assert_array_equal(np.asarray(gru.dense_i.kernel.value), params["3.w_ih"].T)
    np.testing.assert_array_equal(np.asarray(gru.dense_h.kernel.value), params["3.w_hh"].T)
    np.testing.assert_array_equal(np.asarray(gru.dense_h.bias.value), params["3.b_hh"])
    bi = layers[4]
    for d in ("fw", "bw"):
        stack = getattr(bi, d)
        np.testing.assert_array_equal(np.asarray(stack[0].dense_h.bias.value), params[f"4.{d}.0.b_hh"])
        np.testing.assert_array_equal(np.asarray(stack[1].rnn.cell.dense_h.kernel.value),
                                      params[f"4.{d}.1.w_hh"].T)
    assert not np.array_equal(params["4.fw.0.w_ih"], params["4.bw.0.w_ih"])  # independent stacks
