"""NumPy reference: the forward pass, the loss and the optimizer formulas of the spec.

Adapters are held to these: the parity check compares every backend's logits with
``forward`` and every optimizer step with ``optimizer_step``. Plain float64 NumPy,
written for clarity, not speed.
"""

from __future__ import annotations

import numpy as np

from . import spec


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def conv2d_valid(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [N, C, H, W], k [O, C, kh, kw] -> [N, O, H-kh+1, W-kw+1] (cross-correlation)."""
    kh, kw = k.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, k, optimize=True) + b[None, :, None, None]


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


_FORWARD = spec.LayerRules("reference.forward", {
    spec.Flatten: lambda layer, i, p, a: a.reshape(a.shape[0], -1),
    spec.Dense: lambda layer, i, p, a: a @ p[f"{i}.kernel"] + p[f"{i}.bias"],
    spec.Conv2D: lambda layer, i, p, a: conv2d_valid(a, p[f"{i}.kernel"], p[f"{i}.bias"]),
    spec.MaxPool2D: lambda layer, i, p, a: maxpool(a, layer.pool),
    spec.ReLU: lambda layer, i, p, a: np.maximum(a, 0.0),
    spec.Dropout: lambda layer, i, p, a: a,  # evaluation mode: the identity
    spec.Embedding: lambda layer, i, p, a: p[f"{i}.table"][a],
    spec.LSTM: lambda layer, i, p, a: lstm_last(a, p[f"{i}.w_ih"], p[f"{i}.w_hh"], p[f"{i}.bias"]),
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
