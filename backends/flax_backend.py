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

Optimizers are optax's built-ins, which compute the spec's formulas exactly:
``optax.sgd(lr, momentum)`` (trace: v = g + m v; w -= lr v), ``optax.rmsprop(...,
eps_in_sqrt=False)`` (eps outside the sqrt; optax's default puts it inside) and
``optax.adam`` (eps after bias correction, eps_root = 0).

The training step follows the Flax performance guide: ``nnx.jit`` traverses the object
graph in Python on every call, which is a large share of a small CPU step, so the default
step is the guide's "functional training loop": ``nnx.split`` the model and optimizer once,
``jax.jit`` a step that ``nnx.merge``s them inside and returns the new state (donated
buffers). ``options={"step": "cached"}`` uses ``nnx.cached_partial`` over an ``nnx.jit``
step and ``{"step": "jit"}`` a plain ``nnx.jit`` step, for comparison.

Threads: the XLA CPU client sizes its thread pools (the Eigen intra-op pool and the client's
task pool) from the ``PJRT_NPROC`` environment variable, else from the CPU affinity mask,
when the backend is first initialised -- which is lazy, so the constructor can still set it
after ``import jax``. XLA has no separate inter-op knob on CPU.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

import jax
import jax.numpy as jnp
import flax
import optax
from flax import nnx

from fwbench.harness import spec
from fwbench.harness.adapter import Adapter

try:  # private, but the only way to know whether PJRT_NPROC can still take effect
    from jax._src.xla_bridge import backends_are_initialized as _backends_initialised
except ImportError:  # pragma: no cover
    _backends_initialised = None


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


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class Net(nnx.Module):
    """The task's layer list; image inputs arrive NCHW and run NHWC."""

    def __init__(self, task: spec.Task, *, rngs: nnx.Rngs):
        self.channels_last = len(task.input_shape) == 3
        layers: list[Any] = []
        shape = task.input_shape
        for layer in task.layers:
            if isinstance(layer, spec.Flatten):
                layers.append(_flatten)
            elif isinstance(layer, spec.Dense):
                layers.append(nnx.Linear(shape[0], layer.units, rngs=rngs))
            elif isinstance(layer, spec.Conv2D):
                layers.append(nnx.Conv(shape[0], layer.filters, (layer.kernel, layer.kernel),
                                       padding="VALID", rngs=rngs))
            elif isinstance(layer, spec.MaxPool2D):
                p = layer.pool
                layers.append(lambda x, p=p: nnx.max_pool(x, (p, p), strides=(p, p)))
            elif isinstance(layer, spec.ReLU):
                layers.append(nnx.relu)
            elif isinstance(layer, spec.Dropout):  # keys come from self.dropout_rngs
                layers.append(nnx.Dropout(layer.rate))
            elif isinstance(layer, spec.Embedding):
                layers.append(nnx.Embed(layer.vocab, layer.dim, rngs=rngs))
            elif isinstance(layer, spec.LSTM):
                layers.append(LastHidden(shape[-1], layer.units, rngs=rngs))
            else:
                raise TypeError(f"flax adapter: unsupported layer {layer!r}")
            shape = spec.output_shape(layer, shape)
        self.layers = nnx.List(layers)
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


Convert = Callable[[np.ndarray], np.ndarray]


def _param_map(task: spec.Task) -> dict[str, tuple[tuple[Any, ...], Convert, Convert]]:
    """canonical name -> (path in the model's Param state, to_flax, from_flax)."""
    ident: Convert = lambda a: a  # noqa: E731
    transpose: Convert = lambda a: a.T  # noqa: E731
    out: dict[str, tuple[tuple[Any, ...], Convert, Convert]] = {}
    shape = task.input_shape
    flat_from: tuple[int, ...] | None = None  # (C, H, W) of the last Flatten's input
    for i, layer in enumerate(task.layers):
        base = ("layers", i)
        if isinstance(layer, spec.Flatten):
            flat_from = shape if len(shape) == 3 else None
        elif isinstance(layer, spec.Dense):
            to_k, from_k = ident, ident
            if flat_from is not None:  # rows in C,H,W order <-> rows in H,W,C order
                c, h, w = flat_from
                to_k = lambda a, c=c, h=h, w=w: (  # noqa: E731
                    a.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1))
                from_k = lambda a, c=c, h=h, w=w: (  # noqa: E731
                    a.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1))
                flat_from = None
            out[f"{i}.kernel"] = (base + ("kernel",), to_k, from_k)
            out[f"{i}.bias"] = (base + ("bias",), ident, ident)
        elif isinstance(layer, spec.Conv2D):  # [out, in, kh, kw] <-> [kh, kw, in, out]
            out[f"{i}.kernel"] = (base + ("kernel",), lambda a: a.transpose(2, 3, 1, 0),
                                  lambda a: a.transpose(3, 2, 0, 1))
            out[f"{i}.bias"] = (base + ("bias",), ident, ident)
        elif isinstance(layer, spec.Embedding):
            out[f"{i}.table"] = (base + ("embedding",), ident, ident)
        elif isinstance(layer, spec.LSTM):
            cell = base + ("rnn", "cell")
            out[f"{i}.w_ih"] = (cell + ("dense_i", "kernel"), transpose, transpose)
            out[f"{i}.w_hh"] = (cell + ("dense_h", "kernel"), transpose, transpose)
            out[f"{i}.bias"] = (cell + ("dense_h", "bias"), ident, ident)
        shape = spec.output_shape(layer, shape)
    return out


def _optimizer(opt: spec.Optimizer) -> optax.GradientTransformation:
    if isinstance(opt, spec.SGDMomentum):  # v = g + m v; w -= lr v
        return optax.sgd(opt.lr, momentum=opt.momentum)
    if isinstance(opt, spec.RMSprop):  # eps outside the sqrt, as the spec says
        return optax.rmsprop(opt.lr, decay=opt.rho, eps=opt.eps, eps_in_sqrt=False)
    if isinstance(opt, spec.Adam):  # Kingma & Ba, eps after bias correction
        return optax.adam(opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    raise TypeError(f"flax adapter: unsupported optimizer {opt!r}")


def _loss(model: Net, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    logits = model(x, train=train)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


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
    logits = model(x, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, (jnp.argmax(logits, axis=1) == y).sum()


@nnx.jit
def _logits(model: Net, x):
    return model(x, train=False)


def _leaf(v: Any) -> np.ndarray:
    # A copy: on CPU np.asarray can alias the device buffer, which a later donated step reuses.
    return np.array(v.value if isinstance(v, nnx.Variable) else v, copy=True)


class FlaxAdapter(Adapter):
    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        self.step_mode = self.options.get("step", "functional")
        if self.step_mode not in ("functional", "cached", "jit"):
            raise ValueError(f"flax adapter: unknown step mode {self.step_mode!r}")
        # PJRT_NPROC sizes XLA's CPU thread pools when the backend is first created.
        self.threads_applied = _backends_initialised is not None and not _backends_initialised()
        if self.threads_applied:
            os.environ["PJRT_NPROC"] = str(threads)
        self.names = _param_map(task)

    @classmethod
    def framework_version(cls) -> str:
        return flax.__version__  # jax and optax versions: Backend.versions()

    def determinism(self) -> dict[str, Any]:
        # XLA:CPU has no determinism switch: its reductions run in a fixed order; dropout
        # draws from nnx.Rngs seeded from options["seed"].
        return {"xla_cpu": "deterministic, no switch", "rngs_seed": int(self.options.get("seed", 0))}

    def thread_settings(self) -> dict[str, Any]:
        # XLA exposes no API for its pool sizes; report the knobs it reads and what it sees.
        try:
            with open("/proc/self/status") as f:
                os_threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        except (OSError, StopIteration):
            os_threads = None
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return {
            "PJRT_NPROC": os.environ.get("PJRT_NPROC"),
            "set_before_backend_init": self.threads_applied,
            "affinity_cpus": affinity,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "devices": [str(d) for d in jax.devices()],
            "process_threads": os_threads,
            "step": self.step_mode,
        }

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
        self.optimizer = nnx.Optimizer(self.model, _optimizer(self.task.optimizer), wrt=nnx.Param)
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
