"""NumPy reference: the forward pass, the loss and the optimizer formulas of the spec.

Adapters are held to these: the parity check compares every backend's logits with
``forward`` and every optimizer step with ``optimizer_step``. Plain float64 NumPy,
written for clarity, not speed.
"""

from __future__ import annotations

import numpy as np

from fwbench.harness import spec


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def conv2d_valid(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [N, C, H, W], k [O, C, kh, kw] -> [N, O, H-kh+1, W-kw+1] (cross-correlation).

    out[n, o, h, w] = b[o] + sum_{c, i, j} x[n, c, h+i, w+j] k[o, c, i, j], summed one kernel
    offset (i, j) at a time (no [N, C, H, W, kh, kw] window array in memory)."""
    kh, kw = k.shape[2:]
    h_out, w_out = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = np.zeros((x.shape[0], k.shape[0], h_out, w_out))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i : i + h_out, j : j + w_out], k[:, :, i, j])
    return out + b[None, :, None, None]


def pad_same(x: np.ndarray, kernel: int, axes: tuple[int, ...]) -> np.ndarray:
    """Zero padding for "same" (stride 1): (k-1)//2 before and k//2 after on each of ``axes``."""
    widths = [(0, 0)] * x.ndim
    for axis in axes:
        widths[axis] = spec.same_padding(kernel)
    return np.pad(x, widths)


def conv2d(layer: spec.Conv2D, x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv2D with the layer's padding: "same" is a valid conv of the zero-padded input."""
    if layer.padding == "same":
        x = pad_same(x, layer.kernel, (2, 3))
    return conv2d_valid(x, k, b)


def conv1d(layer: spec.Conv1D, x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [N, T, C], k [O, C, kw] -> [N, T', O]: out[n, t, o] = b[o] + sum_{c, j} x[n, t+j, c] k[o, c, j]
    (T' = T - kw + 1 valid, T same, on the zero-padded input)."""
    if layer.padding == "same":
        x = pad_same(x, layer.kernel, (1,))
    kw = k.shape[2]
    t_out = x.shape[1] - kw + 1
    out = np.zeros((x.shape[0], t_out, k.shape[0]))
    for j in range(kw):
        out += x[:, j : j + t_out, :] @ k[:, :, j].T
    return out + b


def maxpool1d(x: np.ndarray, p: int) -> np.ndarray:
    """[N, T, C] -> [N, T // p, C], non-overlapping windows (a remainder is dropped)."""
    n, t, c = x.shape
    t2 = t // p
    return x[:, : t2 * p].reshape(n, t2, p, c).max(axis=2)


def maxpool(x: np.ndarray, p: int) -> np.ndarray:
    n, c, h, w = x.shape
    h2, w2 = h // p, w // p
    return x[:, :, : h2 * p, : w2 * p].reshape(n, c, h2, p, w2, p).max(axis=(3, 5))


def lstm_last(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x [N, T, in] -> h_T [N, H]; gates i, f, g, o; h_0 = c_0 = 0."""
    n, t_len, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((n, hidden))
    c = np.zeros((n, hidden))
    for t in range(t_len):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + bias
        i, f, g, o = np.split(z, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
    return h


def gru(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray,
        return_sequences: bool) -> np.ndarray:
    """The spec's reset-after GRU (gates r, z, n; h_0 = 0): x [N, T, in] -> [N, T, H] or h_T [N, H].

    r = sig(x W_ir' + b_ir + h W_hr' + b_hr); z = sig(x W_iz' + b_iz + h W_hz' + b_hz);
    n = tanh(x W_in' + b_in + r * (h W_hn' + b_hn)); h' = (1 - z) n + z h."""
    n, t_len, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((n, hidden))
    states = []
    for t in range(t_len):
        x_r, x_z, x_n = np.split(x[:, t] @ w_ih.T + b_ih, 3, axis=1)
        h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=1)
        r = _sigmoid(x_r + h_r)
        z = _sigmoid(x_z + h_z)
        cand = np.tanh(x_n + r * h_n)
        h = (1 - z) * cand + z * h
        states.append(h)
    return np.stack(states, axis=1) if return_sequences else h


def _gru(layer: spec.GRU, i: int | str, p: dict[str, np.ndarray], a: np.ndarray) -> np.ndarray:
    return gru(a, p[f"{i}.w_ih"], p[f"{i}.w_hh"], p[f"{i}.b_ih"], p[f"{i}.b_hh"], layer.return_sequences)


def _bidirectional(layer: spec.Bidirectional, i: int | str, p: dict[str, np.ndarray],
                   a: np.ndarray) -> np.ndarray:
    """fw stack over t = 1..T plus bw stack over the reversed input ("sum" merge)."""
    merged = 0.0
    for direction, seq in (("fw", a), ("bw", a[:, ::-1])):
        for j, inner in enumerate(layer.layers):
            seq = _FORWARD(inner, f"{i}.{direction}.{j}", p, seq)
        merged = merged + seq
    return merged


_FORWARD = spec.LayerRules("reference.forward", {
    spec.Flatten: lambda layer, i, p, a: a.reshape(a.shape[0], -1),
    spec.Dense: lambda layer, i, p, a: a @ p[f"{i}.kernel"] + p[f"{i}.bias"],
    spec.Conv2D: lambda layer, i, p, a: conv2d(layer, a, p[f"{i}.kernel"], p[f"{i}.bias"]),
    spec.MaxPool2D: lambda layer, i, p, a: maxpool(a, layer.pool),
    spec.ReLU: lambda layer, i, p, a: np.maximum(a, 0.0),
    spec.Dropout: lambda layer, i, p, a: a,  # evaluation mode: the identity
    spec.Embedding: lambda layer, i, p, a: p[f"{i}.table"][a],
    spec.LSTM: lambda layer, i, p, a: lstm_last(a, p[f"{i}.w_ih"], p[f"{i}.w_hh"], p[f"{i}.bias"]),
    spec.Conv1D: lambda layer, i, p, a: conv1d(layer, a, p[f"{i}.kernel"], p[f"{i}.bias"]),
    spec.MaxPool1D: lambda layer, i, p, a: maxpool1d(a, layer.pool),
    spec.GRU: _gru,
    spec.Bidirectional: _bidirectional,
})


def forward(task: spec.Task, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of ``task`` for the batch ``x`` (evaluation mode: dropout is the identity)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    a = x if x.dtype.kind in "iu" else x.astype(np.float64)
    for i, layer in enumerate(task.layers):
        a = _FORWARD(layer, i, p, a)
    return a


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the batch of -log softmax(logits)[label]."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def _sgd(opt: spec.SGDMomentum, w: np.ndarray, g: np.ndarray, s: dict, t: int) -> np.ndarray:
    s["v"] = opt.momentum * s.get("v", 0.0) + g
    return w - opt.lr * s["v"]


def _rmsprop(opt: spec.RMSprop, w: np.ndarray, g: np.ndarray, s: dict, t: int) -> np.ndarray:
    s["s"] = opt.rho * s.get("s", 0.0) + (1 - opt.rho) * g * g
    return w - opt.lr * g / (np.sqrt(s["s"]) + opt.eps)


def _adam(opt: spec.Adam, w: np.ndarray, g: np.ndarray, s: dict, t: int) -> np.ndarray:
    s["m"] = opt.b1 * s.get("m", 0.0) + (1 - opt.b1) * g
    s["v"] = opt.b2 * s.get("v", 0.0) + (1 - opt.b2) * g * g
    m_hat = s["m"] / (1 - opt.b1**t)
    v_hat = s["v"] / (1 - opt.b2**t)
    return w - opt.lr * m_hat / (np.sqrt(v_hat) + opt.eps)


_UPDATE = spec.OptimizerRules("reference.optimizer_step",
                              {spec.SGDMomentum: _sgd, spec.RMSprop: _rmsprop, spec.Adam: _adam})


def optimizer_step(
    opt: spec.Optimizer,
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    state: dict[str, dict[str, np.ndarray]],
    t: int,
) -> dict[str, np.ndarray]:
    """One step of the spec's formula (t from 1). Updates ``state`` in place, returns new params."""
    update = _UPDATE[opt]
    return {name: update(opt, w.astype(np.float64), grads[name].astype(np.float64),
                         state.setdefault(name, {}), t)
            for name, w in params.items()}
