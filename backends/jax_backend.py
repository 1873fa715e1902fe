"""Pure JAX adapter: the layer list as a function of a parameter dict, optax, one ``jax.jit`` step.

Parameters live in a plain ``{name: jax.Array}`` dict in the canonical layout itself (Dense
kernel [in, out], Conv kernel OIHW (images run NHWC inside the step, see _CONV_DIMS), LSTM ``w_ih`` [4H, in], ``w_hh``
[4H, H], one bias [4H], gates i, f, g, o; Conv1D kernel [out, in, k] with [N, T, C]
sequences; GRU ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``, gates r, z, n), so loading and
exporting are copies, no permutations. "same" padding is explicit ((k-1)//2 before, k//2
after), the GRU is ``jax_common.gru`` (a ``lax.scan``, shared with Flax) and a Bidirectional
runs its two stacks, the backward one on the time-reversed input, and sums their last states.
Dropout draws from a key seeded by ``options["seed"]`` and split every step; evaluation,
logits and gradients pass no key (dropout is the identity).

The train step (forward, ``jax.value_and_grad``, ``optax`` update) is one ``jax.jit``
function that donates the parameter and optimizer-state buffers; it returns the loss as a
device scalar and ``train_step`` converts it to a host float, the one sync per step.

Optimizers, the XLA CPU client and its thread pool, and the thread settings reported are
shared with the Flax adapter: see ``jax_common``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import jax
import jax.numpy as jnp
import optax

from fwbench.backends import jax_common
from fwbench.harness import spec
from fwbench.harness.adapter import Adapter

# Images run channels-last inside the step: every 4-D activation of this adapter is NHWC
# (``forward`` transposes the canonical NCHW input once; Flatten transposes back to C, H, W
# order, so Dense kernels keep the canonical rows). XLA:CPU's NCHW convolutions were 1.19x
# slower per LeNet step than the same model in NHWC. Kernels stay canonical OIHW parameters;
# XLA lays them out for the NHWC convolution inside the compiled step.
_CONV_DIMS = ("NHWC", "OIHW", "NHWC")
_CONV1D_DIMS = ("NWC", "OIW", "NWC")  # sequences [N, T, C], the canonical kernel [out, in, k]

# A rule's ``i`` is the layer's name prefix: its index, or "<i>.fw.<j>" inside a Bidirectional.


def _conv(layer: spec.Conv2D, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    out = jax.lax.conv_general_dilated(a, params[f"{i}.kernel"], window_strides=(1, 1),
                                       padding=jax_common.conv_padding(layer, 2),
                                       dimension_numbers=_CONV_DIMS)
    return out + params[f"{i}.bias"], key


def _conv1d(layer: spec.Conv1D, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    out = jax.lax.conv_general_dilated(a, params[f"{i}.kernel"], window_strides=(1,),
                                       padding=jax_common.conv_padding(layer, 1),
                                       dimension_numbers=_CONV1D_DIMS)
    return out + params[f"{i}.bias"], key


def _max_pool(layer: spec.MaxPool2D, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    p = layer.pool
    return jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, p, p, 1), (1, p, p, 1), "VALID"), key


def _flatten(layer: spec.Flatten, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    if a.ndim == 4:  # NHWC -> the canonical C, H, W order
        a = jnp.transpose(a, (0, 3, 1, 2))
    return a.reshape(a.shape[0], -1), key


def _dropout(layer: spec.Dropout, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    if key is None or layer.rate <= 0.0:  # evaluation mode (no key): the identity
        return a, key
    key, sub = jax.random.split(key)
    keep = jax.random.bernoulli(sub, 1.0 - layer.rate, a.shape)
    return jnp.where(keep, a / (1.0 - layer.rate), 0.0), key


def _lstm(layer: spec.LSTM, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    return _lstm_last(a, params[f"{i}.w_ih"], params[f"{i}.w_hh"], params[f"{i}.bias"]), key


def _gru(layer: spec.GRU, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    # .T of a parameter is free: XLA folds it into the dot's dimension numbers.
    return jax_common.gru(a, params[f"{i}.w_ih"].T, params[f"{i}.w_hh"].T, params[f"{i}.b_ih"],
                          params[f"{i}.b_hh"], layer.return_sequences), key


def _bidirectional(layer: spec.Bidirectional, i: int, params: dict[str, jax.Array], a: jax.Array, key):
    """Two independent stacks, "<i>.fw.<j>" over x and "<i>.bw.<j>" over x[:, ::-1]; merge sum."""
    def stack(direction: str, seq: jax.Array) -> jax.Array:
        for j, inner in enumerate(layer.layers):
            seq, _ = FORWARD(inner, f"{i}.{direction}.{j}", params, seq, None)
        return seq

    return stack("fw", a) + stack("bw", a[:, ::-1]), key


# (layer, index, params, activations, dropout key or None) -> (activations, key)
FORWARD = spec.LayerRules("jax adapter: forward", {
    spec.Flatten: _flatten,
    spec.Dense: lambda layer, i, p, a, key: (a @ p[f"{i}.kernel"] + p[f"{i}.bias"], key),
    spec.Conv2D: _conv,
    spec.MaxPool2D: _max_pool,
    spec.ReLU: lambda layer, i, p, a, key: (jax.nn.relu(a), key),
    spec.Dropout: _dropout,
    # dense gather; its gradient is a dense scatter-add
    spec.Embedding: lambda layer, i, p, a, key: (p[f"{i}.table"][a], key),
    spec.LSTM: _lstm,
    spec.Conv1D: _conv1d,
    spec.MaxPool1D: lambda layer, i, p, a, key: (jax_common.max_pool(a, (1, layer.pool, 1)), key),
    spec.GRU: _gru,
    spec.Bidirectional: _bidirectional,
})


def build_forward(task: spec.Task):
    """``forward(params, x, key)`` -> logits; ``key`` is None in evaluation mode."""
    layers = task.layers

    images = len(task.input_shape) == 3

    def forward(params: dict[str, jax.Array], x: jax.Array, key: jax.Array | None) -> jax.Array:
        a = jnp.transpose(x, (0, 2, 3, 1)) if images else x  # NCHW -> NHWC, once
        for i, layer in enumerate(layers):
            a, key = FORWARD(layer, i, params, a, key)
        return a

    return forward


def _lstm_last(x: jax.Array, w_ih: jax.Array, w_hh: jax.Array, bias: jax.Array) -> jax.Array:
    """x [N, T, in] -> h_T [N, H]; gates i, f, g, o; h_0 = c_0 = 0; no masking."""
    n = x.shape[0]
    hidden = w_hh.shape[1]
    w_ih_t, w_hh_t = w_ih.T, w_hh.T

    def cell(carry, x_t):
        h, c = carry
        # Both projections inside the scan, one time step at a time. Measured on 2 cores
        # (AMD EPYC, jax 0.7.1, alternating blocks in one process): 56 ms per step, against
        # 72 ms with the input projection of all time steps hoisted into one matmul before
        # the scan; four separate gate activations instead of one sigmoid: 74 ms.
        z = x_t @ w_ih_t + h @ w_hh_t + bias
        s = jax.nn.sigmoid(z)  # one sigmoid over all four gates (the g columns are unused)
        i, f, o = s[:, :hidden], s[:, hidden : 2 * hidden], s[:, 3 * hidden :]
        g = jnp.tanh(z[:, 2 * hidden : 3 * hidden])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((n, hidden), x.dtype)
    # Rematerialise the cell in the backward pass: saving only (h, c) per step instead of
    # every gate intermediate made the differentiated loop faster (63 vs 76 ms, as above).
    (h, _), _ = jax.lax.scan(jax.checkpoint(cell), (zeros, zeros), jnp.swapaxes(x, 0, 1))
    return h


class JaxAdapter(jax_common.XlaDevice, Adapter):  # device methods: jax_common
    layer_rules = (FORWARD,)

    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        jax_common.init_cpu_client(threads)
        self.seed = int(self.options.get("seed", 0))  # dropout keys (deterministic per seed)
        self._has_dropout = any(isinstance(layer, spec.Dropout) and layer.rate > 0 for layer in task.layers)
        self.names = [p.name for p in spec.param_specs(task)]

        forward = build_forward(task)
        self.tx = jax_common.make_optimizer(task.optimizer)
        tx = self.tx

        def loss_fn(params, x, y, key):
            return jax_common.mean_loss(forward(params, x, key), y)

        def step(params, opt_state, key, x, y):
            if key is not None:
                key, sub = jax.random.split(key)
            else:
                sub = None
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y, sub)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, key, loss

        def evaluate(params, x, y):
            return jax_common.eval_sums(forward(params, x, None), y)

        self._step = jax.jit(step, donate_argnums=(0, 1, 2))
        self._eval = jax.jit(evaluate)
        self._logits = jax.jit(lambda params, x: forward(params, x, None))
        # Gradients in evaluation mode (no dropout noise), like the torch adapter.
        self._grads = jax.jit(jax.value_and_grad(lambda p, x, y: loss_fn(p, x, y, None)))

    @classmethod
    def framework_version(cls) -> str:
        return f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, optax {optax.__version__}"

    def determinism(self) -> dict[str, Any]:
        # XLA:CPU has no determinism switch: its reductions run in a fixed order; randomness
        # (dropout) comes only from keys derived from the seed.
        return {"xla_cpu": "deterministic, no switch", "dropout_key_seed": self.seed}

    def flush_denormals(self) -> str:
        return jax_common.FLUSH_DEFAULT

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return jax_common.denormal_product(a, b)

    def thread_settings(self) -> dict[str, Any]:
        return jax_common.thread_settings()

    def build(self, params: dict[str, np.ndarray]) -> None:
        # Fresh host copies, so a zero-copy device_put can never alias (and a donated step
        # overwrite) the caller's arrays.
        self.params = {k: jax.device_put(np.array(params[k], dtype=np.float32, copy=True))
                       for k in self.names}
        self.opt_state = self.tx.init(self.params)
        self.key = jax.random.key(self.seed) if self._has_dropout else None

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        self.params, self.opt_state, self.key, loss = self._step(self.params, self.opt_state, self.key, x, y)
        return float(loss)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, correct = jax.device_get(self._eval(self.params, x, y))
        return float(loss), int(correct)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._logits(self.params, x), dtype=np.float32)

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = jax.device_get(self._grads(self.params, x, y))
        return float(loss), self._export(grads)

    def export_params(self) -> dict[str, np.ndarray]:
        return self._export(jax.device_get(self.params))

    def _export(self, tree: dict[str, Any]) -> dict[str, np.ndarray]:
        # Copies: the device buffers behind these may be donated by the next train step.
        return {k: np.array(tree[k], dtype=np.float32, copy=True) for k in self.names}
