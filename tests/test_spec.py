import numpy as np
import pytest

from fwbench.harness import spec


@pytest.mark.parametrize("task,count", [("mlp", 407_050), ("lenet", 61_706), ("lstm", 1_313_154),
                                        ("cnn", 3_274_634), ("gru", 630_538), ("bigru", 987_658),
                                        ("cnn_gru", 636_586)])
def test_param_counts(task, count):
    assert spec.param_count(spec.TASKS[task]) == count


def test_shapes_follow_canonical_layout():
    shapes = {p.name: p.shape for p in spec.param_specs(spec.TASKS["lenet"])}
    assert shapes["0.kernel"] == (6, 1, 5, 5)  # [out, in, kh, kw]
    assert shapes["3.kernel"] == (16, 6, 5, 5)
    assert shapes["7.kernel"] == (400, 120)  # Dense [in, out] after Flatten of 16x5x5
    lstm = {p.name: p.shape for p in spec.param_specs(spec.TASKS["lstm"])}
    assert lstm == {"0.table": (20000, 64), "1.w_ih": (256, 64), "1.w_hh": (256, 64),
                    "1.bias": (256,), "2.kernel": (64, 2), "2.bias": (2,)}


def test_output_shapes():
    shape = spec.TASKS["lenet"].input_shape
    seen = []
    for layer in spec.TASKS["lenet"].layers:
        shape = spec.output_shape(layer, shape)
        seen.append(shape)
    assert seen[:7] == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10),
                        (16, 5, 5), (400,)]


@pytest.mark.parametrize("task", list(spec.TASKS))
def test_init_is_deterministic_per_seed(task):
    t = spec.TASKS[task]
    a, b, c = spec.init_params(t, 0), spec.init_params(t, 0), spec.init_params(t, 1)
    assert a.keys() == b.keys() == {p.name for p in spec.param_specs(t)}
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])
    kernels = [p.name for p in spec.param_specs(t) if p.init not in ("zeros", "lstm_bias")]
    assert all(not np.array_equal(a[k], c[k]) for k in kernels)


def test_init_follows_keras_defaults():
    p = spec.init_params(spec.TASKS["lstm"], 3)
    table = p["0.table"]
    assert table.min() >= -0.05 and table.max() <= 0.05 and table.std() > 0.02
    w_hh = p["1.w_hh"].astype(np.float64)  # [4H, H] with orthonormal columns
    np.testing.assert_allclose(w_hh.T @ w_hh, np.eye(64), atol=1e-5)
    bias = p["1.bias"]
    np.testing.assert_array_equal(bias[64:128], 1.0)  # forget gate (order i, f, g, o)
    assert not bias[:64].any() and not bias[128:].any()
    k = p["2.kernel"]
    limit = np.sqrt(6 / (64 + 2))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.8 * limit
    w_ih = p["1.w_ih"]
    assert np.abs(w_ih).max() <= np.sqrt(6 / (64 + 256))
    conv = spec.init_params(spec.TASKS["lenet"], 0)["0.kernel"]
    assert np.abs(conv).max() <= np.sqrt(6 / (25 + 150))
    assert not spec.init_params(spec.TASKS["mlp"], 0)["1.bias"].any()


def test_train_batches_drop_last_and_depend_on_seed_and_epoch():
    b = spec.train_batches(1000, 128, seed=0, epoch=1)
    assert len(b) == 7 and all(len(x) == 128 for x in b)
    flat = np.concatenate(b)
    assert len(np.unique(flat)) == len(flat) == 896
    np.testing.assert_array_equal(flat, np.concatenate(spec.train_batches(1000, 128, 0, 1)))
    assert not np.array_equal(flat, np.concatenate(spec.train_batches(1000, 128, 0, 2)))
    assert not np.array_equal(flat, np.concatenate(spec.train_batches(1000, 128, 1, 1)))


def test_eval_covers_every_example_once():
    for n in (10_000, 25_000, 500, 1234):
        slices = spec.eval_slices(n)
        idx = np.concatenate([np.arange(n)[s] for s in slices])
        np.testing.assert_array_equal(idx, np.arange(n))
    assert len(spec.eval_slices(10_000)) == 10 and len(spec.eval_slices(25_000)) == 25


def test_profiles():
    assert spec.TASKS["mlp"].epochs("full") == 5 and spec.TASKS["lstm"].epochs("full") == 3
    assert spec.TASKS["mlp"].epochs("quick") == 1 and spec.TASKS["lenet"].epochs("smoke") == 1


def test_layer_inputs_walk_the_shapes():
    walk = spec.layer_inputs(spec.TASKS["lenet"])
    assert [i for i, _, _ in walk] == list(range(12))
    assert walk[0][2] == (1, 32, 32) and walk[6] == (6, spec.Flatten(), (16, 5, 5))


def test_nhwc_flatten_rows_match_a_channels_last_flatten():
    """A Dense after Flatten computes the same on NCHW with the canonical kernel as on NHWC
    with the converted one, and the conversion round-trips exactly."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))  # N, C, H, W
    k = rng.standard_normal((60, 7))
    to_nhwc, to_canonical = spec.nhwc_flatten_rows((3, 4, 5))
    np.testing.assert_allclose(x.reshape(2, -1) @ k,
                               x.transpose(0, 2, 3, 1).reshape(2, -1) @ to_nhwc(k), rtol=1e-12)
    np.testing.assert_array_equal(to_canonical(to_nhwc(k)), k)
    conv = rng.standard_normal((6, 3, 5, 2))
    assert spec.oihw_to_hwio(conv).shape == (5, 2, 3, 6)
    np.testing.assert_array_equal(spec.hwio_to_oihw(spec.oihw_to_hwio(conv)), conv)
