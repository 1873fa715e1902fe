"""Flax NNX reference loop: ``nnx.Module`` + ``nnx.Optimizer``, an ``nnx.jit`` step.

Follows the Flax "MNIST tutorial" (NNX) for the model and the step (``nnx.value_and_grad`` of
a loss of the model, ``optimizer.update(model, grads)`` inside an ``@nnx.jit`` function) and
the Flax guide "Performance considerations", which recommends ``nnx.cached_partial`` for
small steps (it caches ``nnx.jit``'s Python graph traversal of the model and optimizer).
Flax's own layers and default initialisers, NHWC images (``nnx.Conv``'s layout), the LSTM as
``nnx.RNN(nnx.OptimizedLSTMCell)`` (the cell the Flax docs call the faster one).
Independent of fwbench: takes NumPy batches, returns the loss as a Python float.
"""

from __future__ import annotations

import os
from typing import Callable

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(784, 512, rngs=rngs)
        self.fc2 = nnx.Linear(512, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.fc1(x)))


class LeNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 6, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(16 * 5 * 5, 120, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x):
        x = jnp.transpose(x, (0, 2, 3, 1))  # fwbench's NCHW -> NHWC, inside the jitted step
        x = nnx.max_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.fc1(x))
        x = nnx.relu(self.fc2(x))
        return self.fc3(x)


class LSTMClassifier(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(20000, 64, rngs=rngs)
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(64, 64, rngs=rngs), return_carry=True)
        self.fc = nnx.Linear(64, 2, rngs=rngs)

    def __call__(self, x):
        (_, h), _ = self.rnn(self.embed(x))  # carry (c, h): the last hidden state
        return self.fc(h)


TASKS = {
    "mlp": (MLP, lambda: optax.rmsprop(1e-3, decay=0.9, eps=1e-7)),
    "lenet": (LeNet, lambda: optax.sgd(0.01, momentum=0.9)),
    "lstm": (LSTMClassifier, lambda: optax.adam(1e-3, eps=1e-7)),
}


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def make_step(task_name: str, threads: int) -> Callable[[np.ndarray, np.ndarray], float]:
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}")
    # XLA:CPU sizes its thread pool from PJRT_NPROC when the CPU client is created, i.e. at
    # the first use of a device (building the model below), not at import.
    os.environ["PJRT_NPROC"] = str(threads)
    cls, tx = TASKS[task_name]
    model = cls(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx(), wrt=nnx.Param)
    cached_step = nnx.cached_partial(train_step, model, optimizer)

    def step(x: np.ndarray, y: np.ndarray) -> float:
        return float(cached_step(x, y))

    return step
