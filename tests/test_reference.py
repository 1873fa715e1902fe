import numpy as np

from fwbench.harness import reference, spec


def test_conv_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    k = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    out = reference.conv2d_valid(x, k, b)[0]
    assert out.shape == (2, 4, 5, 5)
    n, o, i, j = 1, 2, 3, 4
    assert np.isclose(out[n, o, i, j], (x[n, :, i:i + 3, j:j + 2] * k[o]).sum() + b[o])


def test_maxpool():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(reference.maxpool(x, 2)[0][0, 0], [[5, 7], [13, 15]])


def test_lstm_single_step_by_hand():
    rng = np.random.default_rng(1)
    w_ih, w_hh, b = rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), rng.standard_normal(8)
    x = rng.standard_normal((1, 1, 3))
    z = w_ih @ x[0, 0] + b  # h0 = 0
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c = sig(z[0:2]) * np.tanh(z[4:6])  # c0 = 0: only the input gate times g
    h = sig(z[6:8]) * np.tanh(c)
    np.testing.assert_allclose(reference.lstm_last(x, w_ih, w_hh, b)[0][0], h)


def test_loss_is_mean_cross_entropy():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    expected = (-np.log(np.exp(2) / (np.exp(2) + 1)) + np.log(2)) / 2
    assert np.isclose(reference.softmax_cross_entropy(logits, np.array([0, 1])), expected)


def test_optimizer_formulas_by_hand():
    w, g = {"w": np.array([1.0])}, {"w": np.array([0.5])}
    sgd = spec.SGDMomentum(lr=0.1, momentum=0.9)
    state = {}
    w1 = reference.optimizer_step(sgd, w, g, state, 1)
    w2 = reference.optimizer_step(sgd, w1, g, state, 2)
    assert np.isclose(w1["w"][0], 1 - 0.1 * 0.5) and np.isclose(w2["w"][0], w1["w"][0] - 0.1 * (0.9 * 0.5 + 0.5))
    rms = spec.RMSprop(lr=0.01, rho=0.9, eps=1e-7)
    w1 = reference.optimizer_step(rms, w, g, {}, 1)
    assert np.isclose(w1["w"][0], 1 - 0.01 * 0.5 / (np.sqrt(0.1 * 0.25) + 1e-7))
    adam = spec.Adam(lr=0.001, b1=0.9, b2=0.999, eps=1e-7)
    w1 = reference.optimizer_step(adam, w, g, {}, 1)
    # first step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    assert np.isclose(w1["w"][0], 1 - 0.001 * 0.5 / (0.5 + 1e-7), rtol=0, atol=1e-12)


def test_forward_shapes():
    for name, task in spec.TASKS.items():
        p = spec.init_params(task, 0)
        x = (np.zeros((3, *task.input_shape), np.int32) if task.input_dtype == "int32"
             else np.zeros((3, *task.input_shape), np.float32))
        assert reference.forward(task, p, x).shape == (3, task.num_classes)
