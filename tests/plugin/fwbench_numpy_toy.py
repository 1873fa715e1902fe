"""A toy fwbench backend: plain NumPy, Flatten/Dense/ReLU only (the ``mlp`` task).

It shows the whole contract of an adapter in a few lines; see docs/adding-a-backend.md.
"""

from __future__ import annotations

import numpy as np

from fwbench.harness import reference, spec
from fwbench.harness.adapter import Adapter, Backend

BACKEND = Backend(
    name="numpy-toy",
    adapter="fwbench_numpy_toy:NumpyAdapter",
    requires=("numpy",),
    description="toy: NumPy dense layers, hand-written backward pass",
    idiomatic="fwbench_numpy_toy_loop",  # its hand-written loop: fwbench overhead --against idiomatic
)


# Unsupported: every other layer type of the spec (build() refuses such a task).
_UNSUPPORTED = (spec.Conv2D, spec.MaxPool2D, spec.Dropout, spec.Embedding, spec.LSTM,
                spec.Conv1D, spec.MaxPool1D, spec.GRU, spec.Bidirectional)

# (layer, index, params, activations) -> activations
FORWARD = spec.LayerRules("numpy-toy", {
    spec.Flatten: lambda layer, i, p, a: a.reshape(len(a), -1),
    spec.Dense: lambda layer, i, p, a: a @ p[f"{i}.kernel"] + p[f"{i}.bias"],
    spec.ReLU: lambda layer, i, p, a: np.maximum(a, 0),
}, unsupported=_UNSUPPORTED)


def _dense_backward(layer, i, p, a_in, d, grads):
    grads[f"{i}.kernel"] = a_in.T @ d
    grads[f"{i}.bias"] = d.sum(axis=0)
    return d @ p[f"{i}.kernel"].T


# (layer, index, params, layer input, gradient w.r.t. its output, grads to fill) -> gradient
# w.r.t. its input
BACKWARD = spec.LayerRules("numpy-toy", {
    spec.Flatten: lambda layer, i, p, a_in, d, grads: d,  # _forward flattens the input first
    spec.Dense: _dense_backward,
    spec.ReLU: lambda layer, i, p, a_in, d, grads: d * (a_in > 0),
}, unsupported=_UNSUPPORTED)


class NumpyAdapter(Adapter):
    layer_rules = (FORWARD, BACKWARD)

    def build(self, params):
        unsupported = spec.unsupported_layers(self.task, FORWARD, BACKWARD)
        if unsupported:
            raise spec.UnsupportedLayer("numpy-toy", unsupported[0])
        self.params = {k: v.copy() for k, v in params.items()}
        self.state: dict = {}
        self.t = 0

    @classmethod
    def framework_version(cls):
        return np.__version__

    def _forward(self, x):
        acts = [x.reshape(len(x), -1) if x.ndim > 2 else x]
        for i, layer in enumerate(self.task.layers):
            acts.append(FORWARD(layer, i, self.params, acts[-1]))
        return acts

    def _loss_and_grads(self, x, y):
        acts = self._forward(x)
        z = acts[-1] - acts[-1].max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y]).mean())
        d = p
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        grads = {}
        for i in reversed(range(len(self.task.layers))):
            d = BACKWARD(self.task.layers[i], i, self.params, acts[i], d, grads)
        return loss, grads

    def train_step(self, x, y):
        loss, grads = self._loss_and_grads(x, y)
        self.t += 1
        new = reference.optimizer_step(self.task.optimizer, self.params, grads, self.state, self.t)
        self.params = {k: v.astype(np.float32) for k, v in new.items()}
        return loss

    def evaluate(self, x, y):
        logits = self.logits(x)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].sum()), int((logits.argmax(1) == y).sum())

    def logits(self, x):
        return self._forward(x)[-1].astype(np.float32)

    def gradients(self, x, y):
        loss, grads = self._loss_and_grads(x, y)
        return loss, {k: v.astype(np.float32) for k, v in grads.items()}

    def export_params(self):
        return {k: v.copy() for k, v in self.params.items()}
