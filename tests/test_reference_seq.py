"""The NumPy reference of the issue-14 layers against independently written small cases."""

import numpy as np

from fwbench.harness import reference, spec


def _sig(v):
    return 1 / (1 + np.exp(-v))


def test_same_conv2d_is_a_valid_conv_of_the_explicitly_padded_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))
    for k_size, (before, after) in ((5, (2, 2)), (4, (1, 2)), (3, (1, 1))):
        k = rng.standard_normal((4, 3, k_size, k_size))
        b = rng.standard_normal(4)
        padded = np.zeros((2, 3, 6 + before + after, 5 + before + after))
        padded[:, :, before : before + 6, before : before + 5] = x
        out = reference.conv(spec.Conv2D(4, k_size, "same"), x, k, b)[0]
        assert out.shape == (2, 4, 6, 5)
        np.testing.assert_allclose(out, reference.conv2d_valid(padded, k, b)[0])
        # one output by hand: the top-left corner only sees the kernel's lower-right part
        by_hand = (x[1, :, : k_size - before, : k_size - before] * k[2, :, before:, before:]).sum() + b[2]
        assert np.isclose(out[1, 2, 0, 0], by_hand)
    valid = reference.conv(spec.Conv2D(4, 3), x, k, b)[0]
    np.testing.assert_array_equal(valid, reference.conv2d_valid(x, k, b)[0])


def test_conv1d_matches_a_naive_loop_valid_and_same():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 3))  # [N, T, C]
    k = rng.standard_normal((4, 3, 5))  # [O, C, k]
    b = rng.standard_normal(4)
    valid = reference.conv(spec.Conv1D(4, 5), x, k, b)[0]
    assert valid.shape == (2, 3, 4)
    for n, t, o in ((0, 0, 0), (1, 2, 3)):
        assert np.isclose(valid[n, t, o], sum(x[n, t + j, c] * k[o, c, j] for j in range(5) for c in range(3)) + b[o])
    same = reference.conv(spec.Conv1D(4, 5, "same"), x, k, b)[0]
    assert same.shape == (2, 7, 4)
    padded = np.concatenate([np.zeros((2, 2, 3)), x, np.zeros((2, 2, 3))], axis=1)
    np.testing.assert_allclose(same, reference.conv(spec.Conv1D(4, 5), padded, k, b)[0])


def test_maxpool1d_over_time():
    x = np.array([[[1.0, 9.0], [3.0, 2.0], [5.0, 0.0], [4.0, 7.0], [100.0, 100.0]]])  # [1, T=5, C=2]
    np.testing.assert_array_equal(reference.maxpool1d(x, 2)[0], [[[3.0, 9.0], [5.0, 7.0]]])


def _gru_step_by_hand(x, h, w_ih, w_hh, b_ih, b_hh):
    """One step written out gate by gate, rows r = 0:H, z = H:2H, n = 2H:3H."""
    hid = len(h)
    r = _sig(w_ih[:hid] @ x + b_ih[:hid] + w_hh[:hid] @ h + b_hh[:hid])
    z = _sig(w_ih[hid:2 * hid] @ x + b_ih[hid:2 * hid] + w_hh[hid:2 * hid] @ h + b_hh[hid:2 * hid])
    n = np.tanh(w_ih[2 * hid:] @ x + b_ih[2 * hid:] + r * (w_hh[2 * hid:] @ h + b_hh[2 * hid:]))
    return (1 - z) * n + z * h


def test_gru_steps_by_hand_on_2x3_inputs():
    rng = np.random.default_rng(2)
    hid = 2
    w_ih, w_hh = rng.standard_normal((3 * hid, 3)), rng.standard_normal((3 * hid, hid))
    b_ih, b_hh = rng.standard_normal(3 * hid), rng.standard_normal(3 * hid)
    x = rng.standard_normal((2, 3, 3))  # 2 examples, T = 3, 3 features
    seq = reference.gru(x, w_ih, w_hh, b_ih, b_hh, return_sequences=True)[0]
    last = reference.gru(x, w_ih, w_hh, b_ih, b_hh, return_sequences=False)[0]
    assert seq.shape == (2, 3, hid) and last.shape == (2, hid)
    for n in range(2):
        h = np.zeros(hid)
        for t in range(3):
            h = _gru_step_by_hand(x[n, t], h, w_ih, w_hh, b_ih, b_hh)
            np.testing.assert_allclose(seq[n, t], h)
        np.testing.assert_allclose(last[n], h)


def test_gru_reset_gate_is_applied_after_the_recurrent_matmul():
    # With b_hn != 0 reset-after and reset-before differ already at h = 0 (reset-before would
    # not see b_hn scaled by r): pins the formulation, not just the shapes.
    hid = 1
    w_ih = np.zeros((3, 1))
    w_hh = np.zeros((3, 1))
    b_ih = np.array([0.0, -50.0, 0.0])  # r = sigmoid(0 + b_hr), z ~ 0
    b_hh = np.array([np.log(3.0), 0.0, 2.0])  # r = 0.75, b_hn = 2
    out = reference.gru(np.zeros((1, 1, 1)), w_ih, w_hh, b_ih, b_hh, return_sequences=False)[0]
    np.testing.assert_allclose(out[0, 0], np.tanh(0.75 * 2.0), rtol=1e-12)
    assert hid == out.shape[1]


def test_bidirectional_sum_is_fw_plus_bw_on_the_reversed_input():
    rng = np.random.default_rng(3)
    layer = spec.Bidirectional((spec.GRU(4, return_sequences=True), spec.GRU(3)))
    task = spec.Task(name="bi", description="", dataset="mnist", preprocessing="mnist_rows",
                     input_shape=(5, 2), input_dtype="float32", layers=(layer,),
                     optimizer=spec.Adam(1e-3, 0.9, 0.999, 1e-7), batch_size=2, epochs_full=1,
                     target_accuracy=0.0, num_classes=3)
    p = {k: v.astype(np.float64) for k, v in spec.init_params(task, 0).items()}
    p = {k: v + rng.standard_normal(v.shape) * 0.1 for k, v in p.items()}  # non-zero biases too
    x = rng.standard_normal((2, 5, 2))

    def stack(direction, seq):
        g0 = [p[f"0.{direction}.0.{r}"] for r in ("w_ih", "w_hh", "b_ih", "b_hh")]
        g1 = [p[f"0.{direction}.1.{r}"] for r in ("w_ih", "w_hh", "b_ih", "b_hh")]
        return reference.gru(reference.gru(seq, *g0, True)[0], *g1, False)[0]

    expected = stack("fw", x) + stack("bw", x[:, ::-1])
    np.testing.assert_allclose(reference.forward(task, p, x), expected)
    assert not np.allclose(stack("bw", x[:, ::-1]), stack("bw", x))  # the reversal matters


def test_course_forward_shapes_and_dropout_is_identity():
    for name in ("cnn", "gru", "bigru", "cnn_gru"):
        task = spec.TASKS[name]
        p = spec.init_params(task, 0)
        x = np.random.default_rng(4).random((3, *task.input_shape)).astype(np.float32)
        logits = reference.forward(task, p, x)
        assert logits.shape == (3, 10) and np.isfinite(logits).all()
    cnn = spec.TASKS["cnn"]
    no_dropout = spec.Task(**{**cnn.__dict__, "layers": tuple(layer for layer in cnn.layers if type(layer) is not spec.Dropout)})
    p = spec.init_params(cnn, 0)
    p2 = {f"{i if i < 9 else i - 1}.{k.split('.')[1]}": v for k, v in p.items() for i in [int(k.split(".")[0])]}
    x = np.random.default_rng(5).random((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(reference.forward(cnn, p, x), reference.forward(no_dropout, p2, x))
