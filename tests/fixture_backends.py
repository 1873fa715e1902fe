"""Toy adapters for the report fixtures (``scripts/make_fixtures.py``): real worker processes,
deterministic behaviour chosen through the backend's options.

``Toy`` options (all optional):

- ``sleep_ms``: milliseconds slept in every training step (a float, or ``{task: float}``):
  a real, deterministic slowdown, so two runs of a fixture pair differ by a known amount;
- ``fail``: task names whose ``build`` raises (a ``failed`` cell with a one-line error);
- ``hang``: task names whose first training step never returns (a real ``timeout`` cell).

On tasks made only of Flatten/Dense/ReLU (``mlp``) it trains for real, in NumPy, with the
task's own optimizer formula (``reference.optimizer_step``), so accuracies and times to
target are genuine; on other tasks it predicts class 0 and learns nothing.
"""

from __future__ import annotations

import time

import numpy as np

from fwbench.harness import reference, spec
from fwbench.harness.adapter import Adapter

DENSE = (spec.Flatten, spec.Dense, spec.ReLU)


class Toy(Adapter):
    def build(self, params):
        name = self.task.name
        if name in self.options.get("fail", ()):
            raise ValueError(f"an injected failure for the report fixtures ({name})\n"
                             "(second line of the message)")
        self.learns = all(isinstance(layer, DENSE) for layer in self.task.layers)
        sleep = self.options.get("sleep_ms", 0.0)
        self.sleep_s = float(sleep.get(name, 0.0) if isinstance(sleep, dict) else sleep) / 1e3
        self.hangs = name in self.options.get("hang", ())
        self.params = {k: v.copy() for k, v in params.items()}
        self.state: dict = {}
        self.t = 0

    @classmethod
    def framework_version(cls):
        return f"numpy {np.__version__} (fixture toy)"

    def thread_settings(self):
        return {"intra_op": self.threads}

    # ---------------------------------------------------------------- the dense model

    def _forward(self, x):
        acts = [x.reshape(len(x), -1)]
        for i, layer in enumerate(self.task.layers):
            a = acts[-1]
            if isinstance(layer, spec.Dense):
                a = a @ self.params[f"{i}.kernel"] + self.params[f"{i}.bias"]
            elif isinstance(layer, spec.ReLU):
                a = np.maximum(a, 0)
            acts.append(a)
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
            layer, a_in = self.task.layers[i], acts[i]
            if isinstance(layer, spec.Dense):
                grads[f"{i}.kernel"] = a_in.T @ d
                grads[f"{i}.bias"] = d.sum(axis=0)
                d = d @ self.params[f"{i}.kernel"].T
            elif isinstance(layer, spec.ReLU):
                d = d * (a_in > 0)
        return loss, grads

    # ---------------------------------------------------------------- the contract

    def train_step(self, x, y):
        if self.hangs:
            time.sleep(3600)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if not self.learns:
            return 1.0
        loss, grads = self._loss_and_grads(x, y)
        self.t += 1
        new = reference.optimizer_step(self.task.optimizer, self.params, grads, self.state, self.t)
        self.params = {k: v.astype(np.float32) for k, v in new.items()}
        return loss

    def logits(self, x):
        if not self.learns:
            out = np.zeros((len(x), self.task.num_classes), np.float32)
            out[:, 0] = 1.0
            return out
        return self._forward(x)[-1].astype(np.float32)

    def evaluate(self, x, y):
        logits = self.logits(x).astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].sum()), int((logits.argmax(1) == y).sum())

    def gradients(self, x, y):
        if not self.learns:
            return 1.0, {k: np.zeros_like(v) for k, v in self.params.items()}
        loss, grads = self._loss_and_grads(x, y)
        return loss, {k: v.astype(np.float32) for k, v in grads.items()}

    def export_params(self):
        return {k: v.copy() for k, v in self.params.items()}
