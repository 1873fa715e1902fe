"""JAX + optax reference loop: a pure function of a parameter pytree, one ``jax.jit`` step.

Follows optax's "Getting started" (``optimizer.init``; a ``jax.jit`` step with
``jax.value_and_grad``, ``optimizer.update``, ``optax.apply_updates``; no buffer donation) and
JAX's "Training a simple neural network" tutorial (parameters as plain arrays, ``jnp`` math).
Layers are written the way JAX's own ``jax.example_libraries.stax`` writes them: Glorot-normal
kernels and NHWC / HWIO convolutions through ``lax.conv_general_dilated``, max pooling through
``lax.reduce_window``; the LSTM is the textbook cell under ``lax.scan``. optax's built-in
optimizers with their defaults apart from the task's hyperparameters.
Independent of fwbench: takes NumPy batches, returns the loss as a Python float.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

glorot = jax.nn.initializers.glorot_normal()  # stax's default W_init for Dense and Conv


def dense_init(key, n_in: int, n_out: int):
    return {"w": glorot(key, (n_in, n_out)), "b": jnp.zeros(n_out)}


def dense(p, x):
    return x @ p["w"] + p["b"]


def conv_init(key, c_in: int, c_out: int, k: int):
    return {"w": glorot(key, (k, k, c_in, c_out)), "b": jnp.zeros(c_out)}  # HWIO


def conv(p, x):
    y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


def max_pool(x, k: int = 2):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")


def mlp(p, x):
    x = x.reshape(x.shape[0], -1)
    return dense(p["fc2"], jax.nn.relu(dense(p["fc1"], x)))


def lenet(p, x):
    x = jnp.transpose(x, (0, 2, 3, 1))  # fwbench's NCHW -> NHWC, inside the jitted step
    x = max_pool(jax.nn.relu(conv(p["conv1"], x)))
    x = max_pool(jax.nn.relu(conv(p["conv2"], x)))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(dense(p["fc1"], x))
    x = jax.nn.relu(dense(p["fc2"], x))
    return dense(p["fc3"], x)


def lstm(p, tokens):
    emb = p["embedding"][tokens]  # [N, T, 64]
    units = p["w_hh"].shape[0]

    def cell(carry, x_t):
        h, c = carry
        z = x_t @ p["w_ih"] + h @ p["w_hh"] + p["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    h0 = jnp.zeros((tokens.shape[0], units))
    (h, _), _ = jax.lax.scan(cell, (h0, h0), jnp.swapaxes(emb, 0, 1))  # time-major scan
    return dense(p["fc"], h)  # the last hidden state


def _init(task_name: str, key):
    k = jax.random.split(key, 5)
    if task_name == "mlp":
        return mlp, {"fc1": dense_init(k[0], 784, 512), "fc2": dense_init(k[1], 512, 10)}, \
            optax.rmsprop(1e-3, decay=0.9, eps=1e-7)
    if task_name == "lenet":
        return lenet, {"conv1": conv_init(k[0], 1, 6, 5), "conv2": conv_init(k[1], 6, 16, 5),
                       "fc1": dense_init(k[2], 400, 120), "fc2": dense_init(k[3], 120, 84),
                       "fc3": dense_init(k[4], 84, 10)}, optax.sgd(0.01, momentum=0.9)
    if task_name == "lstm":
        params = {"embedding": jax.nn.initializers.normal()(k[0], (20000, 64)),
                  "w_ih": glorot(k[1], (64, 256)),
                  "w_hh": jax.nn.initializers.orthogonal()(k[2], (64, 256)),
                  "b": jnp.zeros(256), "fc": dense_init(k[3], 64, 2)}
        return lstm, params, optax.adam(1e-3, eps=1e-7)
    raise ValueError(f"unknown task {task_name!r}")


def make_step(task_name: str, threads: int) -> Callable[[np.ndarray, np.ndarray], float]:
    # XLA:CPU sizes its thread pool from PJRT_NPROC when the CPU client is created, i.e. at
    # the first use of a device (below), not at `import jax`.
    os.environ["PJRT_NPROC"] = str(threads)
    forward, params, optimizer = _init(task_name, jax.random.key(0))
    opt_state = optimizer.init(params)

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, opt_state]

    def step(x: np.ndarray, y: np.ndarray) -> float:
        state[0], state[1], loss = train_step(state[0], state[1], x, y)
        return float(loss)

    return step
