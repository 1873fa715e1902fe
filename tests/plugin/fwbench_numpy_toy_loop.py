"""The numpy-toy plugin's hand-written reference loop (``Backend(idiomatic=...)``): the MLP
784-512-10 as one would write it in plain NumPy, RMSprop (lr 1e-3, rho 0.9, eps 1e-7), for
``fwbench overhead --against idiomatic``. Independent of fwbench: no fwbench import."""

import numpy as np


def make_step(task_name: str, threads: int):
    if task_name != "mlp":
        raise ValueError(f"the numpy-toy loop trains mlp only, not {task_name}")
    rng = np.random.default_rng(0)
    w1 = rng.uniform(-0.07, 0.07, (784, 512)).astype(np.float32)
    w2 = rng.uniform(-0.1, 0.1, (512, 10)).astype(np.float32)
    params = [w1, np.zeros(512, np.float32), w2, np.zeros(10, np.float32)]
    squares = [np.zeros_like(p) for p in params]

    def step(x, y):
        x = x.reshape(len(x), -1)
        h = np.maximum(x @ params[0] + params[1], 0)
        z = h @ params[2] + params[3]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y]).mean())
        d = p
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        dh = (d @ params[2].T) * (h > 0)
        grads = [x.T @ dh, dh.sum(0), h.T @ d, d.sum(0)]
        for p_, s, g in zip(params, squares, grads):
            s *= 0.9
            s += 0.1 * g * g
            p_ -= 1e-3 * g / (np.sqrt(s) + 1e-7)
        return loss

    return step
