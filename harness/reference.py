"""NumPy reference: the forward pass, its gradients, the loss and the optimizer formulas of
the spec.

Adapters are held to these: the parity check compares every backend's logits with
``forward``, its gradients with ``gradients`` (the ground truth: backpropagation written
out per layer, no framework) and every optimizer step with ``optimizer_step``. Plain
float64 NumPy, written for clarity, not speed. Each layer's rule returns its output and a
``back`` closure over what it saw, so forward and backward are one definition.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import numpy as np

from fwbench.harness import spec


# einsum through BLAS (tensordot): the cnn probe's gradients in 7 s instead of 19 s
_sum = functools.partial(np.einsum, optimize=True)
Back = Callable[[np.ndarray, dict[str, np.ndarray]], "np.ndarray | None"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def pad_same(x: np.ndarray, kernel: int, axes: tuple[int, ...]) -> np.ndarray:
    """Zero padding for "same" (stride 1): (k-1)//2 before and k//2 after on each of ``axes``."""
    widths = [(0, 0)] * x.ndim
    for axis in axes:
        widths[axis] = spec.same_padding(kernel)
    return np.pad(x, widths)


def _unpad(d: np.ndarray, kernel: int, axes: tuple[int, ...]) -> np.ndarray:
    """The gradient of ``pad_same``: the padded positions cut off again."""
    before, after = spec.same_padding(kernel)
    cut = [slice(None)] * d.ndim
    for axis in axes:
        cut[axis] = slice(before, d.shape[axis] - after)
    return d[tuple(cut)]


def conv2d_valid(x: np.ndarray, k: np.ndarray, b: np.ndarray
                 ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    """x [N, C, H, W], k [O, C, kh, kw] -> [N, O, H-kh+1, W-kw+1] (cross-correlation).

    out[n, o, h, w] = b[o] + sum_{c, i, j} x[n, c, h+i, w+j] k[o, c, i, j], summed one kernel
    offset (i, j) at a time (no [N, C, H, W, kh, kw] window array in memory). ``back(d)``
    returns (dx, dk, db)."""
    kh, kw = k.shape[2:]
    h_out, w_out = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = np.zeros((x.shape[0], k.shape[0], h_out, w_out))
    for i in range(kh):
        for j in range(kw):
            out += _sum("nchw,oc->nohw", x[:, :, i : i + h_out, j : j + w_out], k[:, :, i, j])

    def back(d):
        dx, dk = np.zeros_like(x, dtype=np.float64), np.zeros_like(k, dtype=np.float64)
        for i in range(kh):
            for j in range(kw):
                window = x[:, :, i : i + h_out, j : j + w_out]
                dk[:, :, i, j] = _sum("nohw,nchw->oc", d, window)
                dx[:, :, i : i + h_out, j : j + w_out] += _sum("nohw,oc->nchw", d, k[:, :, i, j])
        return dx, dk, d.sum(axis=(0, 2, 3))
    return out + b[None, :, None, None], back


def conv1d_valid(x: np.ndarray, k: np.ndarray, b: np.ndarray
                 ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    """x [N, T, C], k [O, C, kw] -> [N, T-kw+1, O]: out[n, t, o] = b[o] + sum_{c, j} x[n, t+j, c]
    k[o, c, j]. ``back(d)`` returns (dx, dk, db)."""
    kw = k.shape[2]
    t_out = x.shape[1] - kw + 1
    out = np.zeros((x.shape[0], t_out, k.shape[0]))
    for j in range(kw):
        out += x[:, j : j + t_out, :] @ k[:, :, j].T

    def back(d):
        dx, dk = np.zeros_like(x, dtype=np.float64), np.zeros_like(k, dtype=np.float64)
        for j in range(kw):
            dk[:, :, j] = _sum("nto,ntc->oc", d, x[:, j : j + t_out, :])
            dx[:, j : j + t_out, :] += d @ k[:, :, j]
        return dx, dk, d.sum(axis=(0, 1))
    return out + b, back


def conv(layer: spec.Conv2D | spec.Conv1D, x: np.ndarray, k: np.ndarray, b: np.ndarray
         ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    """Conv2D ([N, C, H, W]) or Conv1D ([N, T, C]) with the layer's padding: "same" is a valid
    conv of the zero-padded input. ``back(d)`` returns (dx, dk, db)."""
    axes = (2, 3) if isinstance(layer, spec.Conv2D) else (1,)
    padded = pad_same(x, layer.kernel, axes) if layer.padding == "same" else x
    valid = conv2d_valid if isinstance(layer, spec.Conv2D) else conv1d_valid
    out, valid_back = valid(padded, k, b)

    def back(d):
        dx, dk, db = valid_back(d)
        return (_unpad(dx, layer.kernel, axes) if layer.padding == "same" else dx), dk, db
    return out, back


def _max_windows(windows: np.ndarray, shape: tuple[int, ...],
                 unfold: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, Back]:
    """Max over the last axis of ``windows`` (non-overlapping pooling windows, made by a
    reshape of the input cut to whole windows); the gradient goes to the first maximum of
    each window (the probe's jitter leaves no ties but the zeros after a ReLU, whose
    gradient the ReLU stops). ``unfold`` puts window-shaped values back in input layout."""
    first = windows.argmax(axis=-1)[..., None]

    def back(d, g):
        dw = np.zeros(windows.shape)
        np.put_along_axis(dw, first, d[..., None], axis=-1)
        dx = np.zeros(shape)
        cut = unfold(dw)
        dx[tuple(slice(0, n) for n in cut.shape)] = cut
        return dx
    return np.take_along_axis(windows, first, axis=-1)[..., 0], back


def maxpool(x: np.ndarray, p: int) -> tuple[np.ndarray, Back]:
    """[N, C, H, W] -> [N, C, H // p, W // p], non-overlapping windows."""
    n, c, h, w = x.shape
    h2, w2 = h // p, w // p
    windows = (x[:, :, : h2 * p, : w2 * p].reshape(n, c, h2, p, w2, p)
               .transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h2, w2, p * p))
    return _max_windows(windows, x.shape, lambda dw: dw.reshape(n, c, h2, w2, p, p)
                        .transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h2 * p, w2 * p))


def maxpool1d(x: np.ndarray, p: int) -> tuple[np.ndarray, Back]:
    """[N, T, C] -> [N, T // p, C], non-overlapping windows (a remainder is dropped)."""
    n, t, c = x.shape
    t2 = t // p
    windows = x[:, : t2 * p].reshape(n, t2, p, c).transpose(0, 1, 3, 2)
    return _max_windows(windows, x.shape,
                        lambda dw: dw.transpose(0, 1, 3, 2).reshape(n, t2 * p, c))


def lstm_last(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray
              ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    """x [N, T, in] -> h_T [N, H]; gates i, f, g, o; h_0 = c_0 = 0. ``back(d)`` (d of h_T)
    returns (dx, dw_ih, dw_hh, dbias), through time."""
    n, t_len, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((n, hidden))
    c = np.zeros((n, hidden))
    tape = []
    for t in range(t_len):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + bias
        i, f, g, o = np.split(z, 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        tape.append((h, c, i, f, g, o))
        c = f * c + i * g
        h = o * np.tanh(c)
    tape.append((h, c))

    def back(d):
        dx = np.zeros(x.shape)
        dw_ih, dw_hh, dbias = np.zeros(w_ih.shape), np.zeros(w_hh.shape), np.zeros(bias.shape)
        dh, dc = d, np.zeros((n, hidden))
        for t in reversed(range(t_len)):
            h_prev, c_prev, i, f, g, o = tape[t]
            tanh_c = np.tanh(tape[t + 1][1])
            dc = dc + dh * o * (1 - tanh_c**2)
            dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                 dc * i * (1 - g**2), dh * tanh_c * o * (1 - o)], axis=1)
            dw_ih += dz.T @ x[:, t]
            dw_hh += dz.T @ h_prev
            dbias += dz.sum(axis=0)
            dx[:, t] = dz @ w_ih
            dh, dc = dz @ w_hh, dc * f
        return dx, dw_ih, dw_hh, dbias
    return h, back


def gru(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray,
        return_sequences: bool
        ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    """The spec's reset-after GRU (gates r, z, n; h_0 = 0): x [N, T, in] -> [N, T, H] or h_T [N, H].

    r = sig(x W_ir' + b_ir + h W_hr' + b_hr); z = sig(x W_iz' + b_iz + h W_hz' + b_hz);
    n = tanh(x W_in' + b_in + r * (h W_hn' + b_hn)); h' = (1 - z) n + z h. ``back(d)``
    returns (dx, dw_ih, dw_hh, db_ih, db_hh), through time."""
    n, t_len, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((n, hidden))
    tape, states = [], []
    for t in range(t_len):
        x_r, x_z, x_n = np.split(x[:, t] @ w_ih.T + b_ih, 3, axis=1)
        h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=1)
        r = _sigmoid(x_r + h_r)
        z = _sigmoid(x_z + h_z)
        cand = np.tanh(x_n + r * h_n)
        tape.append((h, r, z, cand, h_n))
        h = (1 - z) * cand + z * h
        states.append(h)

    def back(d):
        dx = np.zeros(x.shape)
        dw_ih, dw_hh = np.zeros(w_ih.shape), np.zeros(w_hh.shape)
        db_ih, db_hh = np.zeros(b_ih.shape), np.zeros(b_hh.shape)
        dh = np.zeros((n, hidden)) if return_sequences else d
        for t in reversed(range(t_len)):
            if return_sequences:
                dh = dh + d[:, t]
            h_prev, r, z, cand, h_n = tape[t]
            dn = dh * (1 - z) * (1 - cand**2)
            dr = dn * h_n * r * (1 - r)
            dz = dh * (h_prev - cand) * z * (1 - z)
            d_xs = np.concatenate([dr, dz, dn], axis=1)
            d_hs = np.concatenate([dr, dz, dn * r], axis=1)
            dw_ih += d_xs.T @ x[:, t]
            dw_hh += d_hs.T @ h_prev
            db_ih += d_xs.sum(axis=0)
            db_hh += d_hs.sum(axis=0)
            dx[:, t] = d_xs @ w_ih
            dh = dh * z + d_hs @ w_hh
        return dx, dw_ih, dw_hh, db_ih, db_hh
    return (np.stack(states, axis=1) if return_sequences else h), back


def _with_params(fn: Callable[..., tuple[np.ndarray, Callable]], roles: tuple[str, ...]):
    """A layer rule from ``fn(layer, x, *params) -> (out, back)``, whose ``back(d)`` returns
    (dx, *the gradients of params): the params by role from the layer's prefix, and their
    gradients put back under the same names."""
    def rule(layer, i, p, a):
        out, fn_back = fn(layer, a, *(p[f"{i}.{role}"] for role in roles))

        def back(d, g):
            dx, *grads = fn_back(d)
            g.update({f"{i}.{role}": grad for role, grad in zip(roles, grads)})
            return dx
        return out, back
    return rule


def _stack(layers: Iterable[tuple[spec.Layer, int | str]], p: dict[str, np.ndarray],
           a: np.ndarray) -> tuple[np.ndarray, Back]:
    """Layers one after another (each with its parameter prefix); ``back`` runs their
    backward steps in reverse, filling the gradients, and returns the input's gradient."""
    backs = []
    for layer, i in layers:
        a, step = _LAYER(layer, i, p, a)
        backs.append(step)

    def back(d, g):
        for step in reversed(backs):
            if d is None:
                break
            d = step(d, g)
        return d
    return a, back


def _bidirectional(layer: spec.Bidirectional, i: int | str, p: dict[str, np.ndarray],
                   a: np.ndarray) -> tuple[np.ndarray, Back]:
    """fw stack over t = 1..T plus bw stack over the reversed input ("sum" merge)."""
    fw, fw_back = _stack(((inner, f"{i}.fw.{j}") for j, inner in enumerate(layer.layers)), p, a)
    bw, bw_back = _stack(((inner, f"{i}.bw.{j}") for j, inner in enumerate(layer.layers)), p,
                         a[:, ::-1])

    def back(d, g):
        return fw_back(d, g) + bw_back(d, g)[:, ::-1]
    return fw + bw, back


def dense(x: np.ndarray, w: np.ndarray, b: np.ndarray
          ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    """x [N, in] @ w [in, out] + b; ``back(d)`` returns (dx, dw, db)."""
    return x @ w + b, lambda d: (d @ w.T, x.T @ d, d.sum(axis=0))


def _embedding(layer: spec.Embedding, i: int | str, p: dict[str, np.ndarray], a: np.ndarray
               ) -> tuple[np.ndarray, Back]:
    table = p[f"{i}.table"]

    def back(d, g):
        g[f"{i}.table"] = np.zeros(table.shape)
        np.add.at(g[f"{i}.table"], a, d)  # rows a batch does not touch: exactly 0
        return None  # token ids: nothing before them has a gradient
    return table[a], back


def _elementwise(f: Callable[[np.ndarray], np.ndarray], df: Callable[[np.ndarray], np.ndarray]):
    """A layer without parameters that maps each element: out = f(a), da = d * df(a)."""
    return lambda layer, i, p, a: (f(a), lambda d, g: d * df(a))


# Every layer of the IR: (layer, parameter prefix, params, input) -> (output, back), where
# back(d_output, grads) puts the layer's parameter gradients in grads and returns d_input.
_LAYER = spec.LayerRules("reference", {
    spec.Flatten: lambda layer, i, p, a: (a.reshape(a.shape[0], -1),
                                          lambda d, g: d.reshape(a.shape)),
    spec.Dense: _with_params(lambda layer, x, w, b: dense(x, w, b), ("kernel", "bias")),
    spec.Conv2D: _with_params(conv, ("kernel", "bias")),
    spec.MaxPool2D: lambda layer, i, p, a: maxpool(a, layer.pool),
    spec.ReLU: _elementwise(lambda a: np.maximum(a, 0.0), lambda a: a > 0),
    # evaluation mode, and the probe's gradients are taken without dropout: the identity
    spec.Dropout: _elementwise(lambda a: a, lambda a: 1.0),
    spec.Embedding: _embedding,
    spec.LSTM: _with_params(lambda layer, x, *w: lstm_last(x, *w), ("w_ih", "w_hh", "bias")),
    spec.Conv1D: _with_params(conv, ("kernel", "bias")),
    spec.MaxPool1D: lambda layer, i, p, a: maxpool1d(a, layer.pool),
    spec.GRU: _with_params(lambda layer, x, *w: gru(x, *w, layer.return_sequences),
                           ("w_ih", "w_hh", "b_ih", "b_hh")),
    spec.Bidirectional: _bidirectional,
})


def _model(task: spec.Task, params: dict[str, np.ndarray], x: np.ndarray
           ) -> tuple[np.ndarray, Back]:
    p = {k: v.astype(np.float64) for k, v in params.items()}
    a = x if x.dtype.kind in "iu" else x.astype(np.float64)
    return _stack(((layer, i) for i, layer in enumerate(task.layers)), p, a)


def forward(task: spec.Task, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits of ``task`` for the batch ``x`` (evaluation mode: dropout is the identity)."""
    return _model(task, params, x)[0]


def gradients(task: spec.Task, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
              ) -> tuple[float, dict[str, np.ndarray]]:
    """The loss on (x, y) and its float64 gradient for every parameter (without dropout, as
    the probe's ``gradients`` is taken): the check's ground truth, framework-free."""
    logits, back = _model(task, params, x)
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    d = prob.copy()
    d[np.arange(len(y)), y] -= 1.0
    grads: dict[str, np.ndarray] = {}
    back(d / len(y), grads)
    return softmax_cross_entropy(logits, y), grads


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
