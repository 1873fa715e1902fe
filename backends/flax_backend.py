"""Flax NNX adapter: an ``nnx.Module`` built from the layer list, optax through ``nnx.Optimizer``.

Layout notes (conversions live in ``_param_map``, used by the loader and the exporters):

- ``nnx.Linear.kernel`` is [in, out] like the canonical Dense kernel.
- ``nnx.Conv`` is channels-last: the model transposes its NCHW input to NHWC once, at the
  start (inside the compiled step), and the conv kernel is [kh, kw, in, out]. Flatten then
  flattens H, W, C, so the rows of the first Dense kernel after a Flatten are permuted:
  canonical row c*H*W + h*W + w is NHWC row (h*W + w)*C + c (the identity for MNIST's MLP,
  where C = 1).
- The LSTM is ``nnx.RNN(nnx.OptimizedLSTMCell)``: in Flax 0.12 that cell holds two fused
  ``Linear`` layers, ``dense_i`` [in, 4H] without bias and ``dense_h`` [H, 4H] with bias,
  gates split i, f, g, o with sigmoid/tanh -- exactly the canonical W_ih.T, W_hh.T and the
  single bias, so there is no second bias to freeze. The carry is (c, h), starts at zero
  (passed explicitly, so the RNN keeps no RNG state) and h_T is returned; no masking.
- ``nnx.Embed.embedding`` is [vocab, dim]; its gradient is dense (a scatter-add into a
  zero table), so Adam is dense Adam, like torch.
- Convolutions get explicit (low, high) padding ("same": (k-1)//2 before, k//2 after). A
  Conv1D is an ``nnx.Conv`` over the [N, T, C] sequence (already channels-last), kernel
  [k, in, out]; MaxPool1D is ``nnx.max_pool`` over T.
- The GRU is the ``GRU`` module below (``nnx.GRUCell`` has no recurrent bias, so it is not
  the spec's cell): ``dense_i`` / ``dense_h`` kernels are the canonical w_ih.T / w_hh.T, their
  biases b_ih / b_hh. A Bidirectional holds two stacks ``fw`` and ``bw``; the parameters of
  inner layer j live under ("layers", i, "fw"|"bw", j, ...).
- Dropout draws from ``nnx.Rngs(dropout=options["seed"])``, whose counter advances every
  training step; evaluation, logits and gradients run with ``deterministic=True``.

The training step follows the Flax performance guide: ``nnx.jit`` traverses the object
graph in Python on every call, which is a large share of a small CPU step, so the default
step is the guide's "functional training loop": ``nnx.split`` the model and optimizer once,
``jax.jit`` a step that ``nnx.merge``s them inside and returns the new state (donated
buffers). ``options={"step": "cached"}`` uses ``nnx.cached_partial`` over an ``nnx.jit``
step and ``{"step": "jit"}`` a plain ``nnx.jit`` step, for comparison.

Optimizers (optax's built-ins, which compute the spec's formulas exactly), the XLA CPU client
and its thread pool, and the thread settings reported are shared with the JAX adapter: see
``jax_common``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import jax
import jax.numpy as jnp
import flax
from flax import nnx

from fwbench.backends import jax_common
from fwbench.harness import spec
from fwbench.harness.adapter import Adapter


class LastHidden(nnx.Module):
    """Single-layer LSTM over [N, T, in] returning h_T."""

    def __init__(self, n_in: int, units: int, *, rngs: nnx.Rngs):
        self.units = units
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(n_in, units, rngs=rngs),
                           return_carry=True, rngs=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        zeros = jnp.zeros((x.shape[0], self.units), x.dtype)
        (_, h), _ = self.rnn(x, initial_carry=(zeros, zeros))
        return h


class GRU(nnx.Module):
    """The spec's GRU (``jax_common.gru``, a ``lax.scan`` shared with the JAX adapter) over
    [N, T, in], in ``nnx.GRUCell``'s parameter layout plus the recurrent bias that cell lacks.

    Flax 0.12's ``nnx.GRUCell`` is reset-after but its ``dense_h`` has no bias, so it cannot
    hold b_hn (inside r * (.)): not the spec's formula, hence this module. ``dense_i`` [in, 3H]
    and ``dense_h`` [H, 3H] (both with bias, gate blocks r, z, n) are the canonical
    w_ih.T / w_hh.T, b_ih / b_hh. The input projection of every step is one 2-D matmul
    before the scan.
    """

    def __init__(self, n_in: int, layer: spec.GRU, *, rngs: nnx.Rngs):
        self.return_sequences = layer.return_sequences
        self.dense_i = nnx.Linear(n_in, 3 * layer.units, rngs=rngs)
        self.dense_h = nnx.Linear(layer.units, 3 * layer.units, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax_common.gru(x, self.dense_i.kernel.value, self.dense_h.kernel.value,
                              self.dense_i.bias.value, self.dense_h.bias.value, self.return_sequences)


def _stack(layers: tuple[spec.Layer, ...], shape: spec.Shape, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([MODULES(layer, s, rngs) for layer, s in spec.with_shapes(layers, shape)])


class Bidirectional(nnx.Module):
    """Two independent stacks: ``fw`` over x, ``bw`` over x[:, ::-1]; the sum of their last
    states. (``nnx.Bidirectional`` merges per-step outputs of one layer, not this.)"""

    def __init__(self, layer: spec.Bidirectional, shape: spec.Shape, *, rngs: nnx.Rngs):
        self.fw = _stack(layer.layers, shape, rngs)
        self.bw = _stack(layer.layers, shape, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        fw, bw = x, x[:, ::-1]
        for f, b in zip(self.fw, self.bw):
            fw, bw = f(fw), b(bw)
        return fw + bw


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _max_pool(layer: spec.MaxPool2D, shape: spec.Shape, rngs: nnx.Rngs) -> Callable[[jax.Array], jax.Array]:
    p = layer.pool
    return lambda x: nnx.max_pool(x, (p, p), strides=(p, p))


def _max_pool1d(layer: spec.MaxPool1D, shape: spec.Shape, rngs: nnx.Rngs) -> Callable[[jax.Array], jax.Array]:
    p = layer.pool
    return lambda x: nnx.max_pool(x, (p,), strides=(p,))  # [N, T, C]: T is the one spatial axis


def _conv(layer: spec.Conv2D | spec.Conv1D, n_in: int, axes: int, rngs: nnx.Rngs) -> nnx.Conv:
    # Explicit (low, high) pairs: the spec's "same" split by construction.
    return nnx.Conv(n_in, layer.filters, (layer.kernel,) * axes,
                    padding=jax_common.conv_padding(layer, axes), rngs=rngs)


# (layer, canonical input shape, rngs) -> the layer's module or function (NHWC images)
MODULES = spec.LayerRules("flax adapter: modules", {
    spec.Flatten: lambda layer, shape, rngs: _flatten,
    spec.Dense: lambda layer, shape, rngs: nnx.Linear(shape[0], layer.units, rngs=rngs),
    spec.Conv2D: lambda layer, shape, rngs: _conv(layer, shape[0], 2, rngs),  # canonical (C, H, W)
    spec.MaxPool2D: _max_pool,
    spec.ReLU: lambda layer, shape, rngs: nnx.relu,
    spec.Dropout: lambda layer, shape, rngs: nnx.Dropout(layer.rate),  # keys: Net.dropout_rngs
    spec.Embedding: lambda layer, shape, rngs: nnx.Embed(layer.vocab, layer.dim, rngs=rngs),
    spec.LSTM: lambda layer, shape, rngs: LastHidden(shape[-1], layer.units, rngs=rngs),
    spec.Conv1D: lambda layer, shape, rngs: _conv(layer, shape[-1], 1, rngs),  # (T, C)
    spec.MaxPool1D: _max_pool1d,
    spec.GRU: lambda layer, shape, rngs: GRU(shape[-1], layer, rngs=rngs),
    spec.Bidirectional: lambda layer, shape, rngs: Bidirectional(layer, shape, rngs=rngs),
})


class Net(nnx.Module):
    """The task's layer list; image inputs arrive NCHW and run NHWC."""

    def __init__(self, task: spec.Task, *, rngs: nnx.Rngs):
        self.channels_last = len(task.input_shape) == 3
        self.layers = nnx.List([MODULES(layer, shape, rngs) for _, layer, shape in spec.layer_inputs(task)])
        self.dropout_rngs = nnx.data(None)  # an nnx.Rngs, set by the adapter if needed

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.channels_last:
            x = jnp.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC, once
        for layer in self.layers:
            if isinstance(layer, nnx.Dropout):
                x = layer(x, deterministic=not train, rngs=self.dropout_rngs)
            else:
                x = layer(x)
        return x


Convert = spec.Convert
Path = tuple[Any, ...]


@dataclass
class _Rows:
    """Row conversions of the next Dense kernel, set by a Flatten of NHWC images."""

    pending: tuple[Convert, Convert] | None = None


def _flatten_params(layer: spec.Flatten, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    rows.pending = spec.nhwc_flatten_rows(shape) if len(shape) == 3 else None
    return {}


def _dense_params(layer: spec.Dense, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    to_k, from_k = rows.pending or (spec.identity, spec.identity)
    rows.pending = None
    return {f"{i}.kernel": (("layers", i, "kernel"), to_k, from_k),
            f"{i}.bias": (("layers", i, "bias"), spec.identity, spec.identity)}


def _conv_params(layer: spec.Conv2D, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    return {f"{i}.kernel": (("layers", i, "kernel"), spec.oihw_to_hwio, spec.hwio_to_oihw),
            f"{i}.bias": (("layers", i, "bias"), spec.identity, spec.identity)}


def _lstm_params(layer: spec.LSTM, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    cell = ("layers", i, "rnn", "cell")
    return {f"{i}.w_ih": (cell + ("dense_i", "kernel"), spec.transpose, spec.transpose),
            f"{i}.w_hh": (cell + ("dense_h", "kernel"), spec.transpose, spec.transpose),
            f"{i}.bias": (cell + ("dense_h", "bias"), spec.identity, spec.identity)}


def _oiw_to_wio(a: np.ndarray) -> np.ndarray:
    """Conv1D kernel [out, in, k] <-> nnx.Conv's [k, in, out] (its own inverse)."""
    return a.transpose(2, 1, 0)


def _conv1d_params(layer: spec.Conv1D, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    return {f"{i}.kernel": (("layers", i, "kernel"), _oiw_to_wio, _oiw_to_wio),
            f"{i}.bias": (("layers", i, "bias"), spec.identity, spec.identity)}


def _gru_params(layer: spec.GRU, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    at = ("layers", i)
    return {f"{i}.w_ih": (at + ("dense_i", "kernel"), spec.transpose, spec.transpose),
            f"{i}.w_hh": (at + ("dense_h", "kernel"), spec.transpose, spec.transpose),
            f"{i}.b_ih": (at + ("dense_i", "bias"), spec.identity, spec.identity),
            f"{i}.b_hh": (at + ("dense_h", "bias"), spec.identity, spec.identity)}


def _bidirectional_params(layer: spec.Bidirectional, i: int, shape: spec.Shape, rows: _Rows) -> dict:
    """Inner layer j's rule, renamed "<i>.<fw|bw>.<j>.<role>" and re-rooted from
    ("layers", j, ...) to ("layers", i, "fw"|"bw", j, ...)."""
    out = {}
    for direction in ("fw", "bw"):
        s = shape
        for j, inner in enumerate(layer.layers):
            for name, (path, to_flax, from_flax) in PARAMS(inner, j, s, _Rows()).items():
                out[f"{i}.{direction}.{name}"] = (("layers", i, direction, *path[1:]), to_flax, from_flax)
            s = spec.output_shape(inner, s)
    return out


# (layer, index, canonical input shape, pending rows) -> {canonical name: (path, to, from)}
PARAMS = spec.LayerRules("flax adapter: parameters", {
    spec.Flatten: _flatten_params,
    spec.Dense: _dense_params,
    spec.Conv2D: _conv_params,
    spec.MaxPool2D: spec.no_params,
    spec.ReLU: spec.no_params,
    spec.Dropout: spec.no_params,
    spec.Embedding: lambda layer, i, shape, rows: {
        f"{i}.table": (("layers", i, "embedding"), spec.identity, spec.identity)},
    spec.LSTM: _lstm_params,
    spec.Conv1D: _conv1d_params,
    spec.MaxPool1D: spec.no_params,
    spec.GRU: _gru_params,
    spec.Bidirectional: _bidirectional_params,
})


def _param_map(task: spec.Task) -> dict[str, tuple[Path, Convert, Convert]]:
    """canonical name -> (path in the model's Param state, to_flax, from_flax)."""
    rows = _Rows()
    return {name: v for i, layer, shape in spec.layer_inputs(task)
            for name, v in PARAMS(layer, i, shape, rows).items()}


def _loss(model: Net, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    return jax_common.mean_loss(model(x, train=train), y)


@nnx.jit(static_argnames="train")
def _jit_step(model: Net, optimizer: nnx.Optimizer, x, y, train: bool = True):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y, train)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _value_and_grad(model: Net, x, y):
    return nnx.value_and_grad(_loss)(model, x, y, False)


@nnx.jit
def _evaluate(model: Net, x, y):
    return jax_common.eval_sums(model(x, train=False), y)


@nnx.jit
def _logits(model: Net, x):
    return model(x, train=False)


def _leaf(v: Any) -> np.ndarray:
    # A copy: on CPU np.asarray can alias the device buffer, which a later donated step reuses.
    return np.array(v.value if isinstance(v, nnx.Variable) else v, copy=True)


class FlaxAdapter(jax_common.XlaDevice, Adapter):  # device methods: jax_common
    layer_rules = (MODULES, PARAMS)

    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        self.step_mode = self.options.get("step", "functional")
        if self.step_mode not in ("functional", "cached", "jit"):
            raise ValueError(f"flax adapter: unknown step mode {self.step_mode!r}")
        jax_common.init_cpu_client(threads)
        self.names = _param_map(task)

    @classmethod
    def framework_version(cls) -> str:
        return flax.__version__  # jax and optax versions: Backend.versions()

    def determinism(self) -> dict[str, Any]:
        # XLA:CPU has no determinism switch: its reductions run in a fixed order; dropout
        # draws from nnx.Rngs seeded from options["seed"].
        return {"xla_cpu": "deterministic, no switch", "rngs_seed": int(self.options.get("seed", 0))}

    def flush_denormals(self) -> str:
        return jax_common.FLUSH_DEFAULT

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return jax_common.denormal_product(a, b)

    def thread_settings(self) -> dict[str, Any]:
        return jax_common.thread_settings(step=self.step_mode)

    # ------------------------------------------------------------------ building

    def build(self, params: dict[str, np.ndarray]) -> None:
        # Abstract init (shapes only, as when restoring a checkpoint): running Flax's random
        # initialisers eagerly would compile a dozen small XLA programs (seconds) only to
        # overwrite their results with the canonical weights.
        self.model = nnx.eval_shape(lambda: Net(self.task, rngs=nnx.Rngs(0)))
        flat = dict(nnx.to_flat_state(nnx.state(self.model, nnx.Param)))
        for name, (path, to_flax, _) in self.names.items():
            var = flat[path]
            value = np.ascontiguousarray(to_flax(params[name]), dtype=np.float32)
            if value.shape != var.value.shape:
                raise ValueError(f"{name}: shape {value.shape} != flax {var.value.shape}")
            var.value = jnp.asarray(value)
        if any(isinstance(layer, spec.Dropout) for layer in self.task.layers):
            self.model.dropout_rngs = nnx.Rngs(dropout=int(self.options.get("seed", 0)))
        abstract = [p for p, v in nnx.to_flat_state(nnx.state(self.model))
                    if not isinstance(v.value, jax.Array)]
        if abstract:
            raise RuntimeError(f"flax adapter: variables left uninitialised: {abstract}")
        self.optimizer = nnx.Optimizer(self.model, jax_common.make_optimizer(self.task.optimizer), wrt=nnx.Param)
        self._stale = False  # functional mode: is self.state newer than the model objects?

        if self.step_mode == "functional":
            graphdef, self.state = nnx.split((self.model, self.optimizer))

            def step(state, x, y):
                model, optimizer = nnx.merge(graphdef, state)
                loss, grads = nnx.value_and_grad(_loss)(model, x, y, True)
                optimizer.update(model, grads)
                return loss, nnx.state((model, optimizer))

            self._step = jax.jit(step, donate_argnums=0)
        elif self.step_mode == "cached":
            self._step = nnx.cached_partial(_jit_step, self.model, self.optimizer)
        else:
            self._step = lambda x, y: _jit_step(self.model, self.optimizer, x, y)

    def _sync(self) -> None:
        """Functional mode: write the latest state back into the model objects."""
        if self._stale:
            nnx.update((self.model, self.optimizer), self.state)
            self._stale = False

    # ------------------------------------------------------------------ running

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        if self.step_mode == "functional":
            loss, self.state = self._step(self.state, x, y)
            self._stale = True
        else:
            loss = self._step(x, y)
        return float(loss)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self._sync()
        loss, correct = _evaluate(self.model, x, y)
        return float(loss), int(correct)

    def logits(self, x: np.ndarray) -> np.ndarray:
        self._sync()
        return np.array(_logits(self.model, x), dtype=np.float32, copy=True)

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        self._sync()
        loss, grads = _value_and_grad(self.model, x, y)
        return float(loss), self._export(grads)

    def export_params(self) -> dict[str, np.ndarray]:
        self._sync()
        return self._export(nnx.state(self.model, nnx.Param))

    def _export(self, state: Any) -> dict[str, np.ndarray]:
        flat = dict(nnx.to_flat_state(state))
        return {name: np.ascontiguousarray(from_flax(_leaf(flat[path])), dtype=np.float32)
                for name, (path, _, from_flax) in self.names.items()}
