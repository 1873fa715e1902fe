"""Pure JAX adapter: the layer list as a function of a parameter dict, optax, one ``jax.jit`` step.

Parameters live in a plain ``{name: jax.Array}`` dict in the canonical layout itself (Dense
kernel [in, out], Conv kernel OIHW with NCHW activations, LSTM ``w_ih`` [4H, in], ``w_hh``
[4H, H], one bias [4H], gates i, f, g, o), so loading and exporting are copies, no
permutations. The train step (forward, ``jax.value_and_grad``, ``optax`` update) is one
``jax.jit`` function that donates the parameter and optimizer-state buffers; it returns the
loss as a device scalar and ``train_step`` converts it to a host float, the one sync per step.

Optimizers (all built-in optax, checked against optax 0.2.8's source):
- ``optax.sgd(lr, momentum)`` = ``trace`` (v = g + m v, nesterov off) then scale by -lr.
- ``optax.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=False)``: g / (sqrt(s) + eps); optax's
  default ``eps_in_sqrt=True`` would put eps inside the sqrt, which is not the spec's formula.
- ``optax.adam(lr, b1, b2, eps)`` (eps_root 0): Kingma & Ba, eps after bias correction.

Threads: XLA:CPU has no runtime thread setter and no separate inter-op pool (independent
ops of one executable run concurrently on the same intra-op pool). That pool is sized when
the CPU client is created -- lazily, at the first use of a device, not at ``import jax`` --
from the env var ``PJRT_NPROC`` (then ``NPROC``), else the number of CPUs in the process's
affinity mask. The first adapter of a process therefore sets ``PJRT_NPROC = threads`` and
creates the client at once (measured on jax 0.7.1: 1 -> one busy worker thread, 4 -> four).
``XLA_FLAGS`` ``--xla_cpu_multi_thread_eigen=false`` and ``intra_op_parallelism_threads=N``
were measured to change nothing on jax 0.7.1's CPU runtime, so they are not used.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import jax
import jax.numpy as jnp
import optax

from fwbench.harness import spec
from fwbench.harness.adapter import Adapter

_CONV_DIMS = ("NCHW", "OIHW", "NCHW")


# Intra-op pool size of this process's XLA CPU client, fixed when the client is created.
_POOL_THREADS: int | None = None
_POOL_SOURCE = ""


def _init_cpu_client(threads: int) -> None:
    """Create the XLA CPU client with a ``threads``-sized pool (once per process)."""
    global _POOL_THREADS, _POOL_SOURCE
    if _POOL_THREADS is not None:
        return
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        os.environ["PJRT_NPROC"] = str(threads)
        _POOL_THREADS, _POOL_SOURCE = threads, "PJRT_NPROC set by the adapter"
    else:  # someone used a device first: report what was in force, it can no longer change
        env = os.environ.get("PJRT_NPROC") or os.environ.get("NPROC")
        if env:
            _POOL_THREADS, _POOL_SOURCE = int(env), "PJRT_NPROC/NPROC (client created before the adapter)"
        else:
            _POOL_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            _POOL_SOURCE = "CPU affinity (client created before the adapter)"
    jax.devices()  # create the client now, with the pool size above


def build_forward(task: spec.Task):
    """``forward(params, x, key)`` -> logits; ``key`` is None in evaluation mode."""
    layers = task.layers

    def forward(params: dict[str, jax.Array], x: jax.Array, key: jax.Array | None) -> jax.Array:
        a = x
        for i, layer in enumerate(layers):
            if isinstance(layer, spec.Flatten):
                a = a.reshape(a.shape[0], -1)  # NCHW row-major = canonical C, H, W order
            elif isinstance(layer, spec.Dense):
                a = a @ params[f"{i}.kernel"] + params[f"{i}.bias"]
            elif isinstance(layer, spec.Conv2D):
                a = jax.lax.conv_general_dilated(
                    a, params[f"{i}.kernel"], window_strides=(1, 1), padding="VALID",
                    dimension_numbers=_CONV_DIMS,
                ) + params[f"{i}.bias"][None, :, None, None]
            elif isinstance(layer, spec.MaxPool2D):
                p = layer.pool
                a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 1, p, p), (1, 1, p, p), "VALID")
            elif isinstance(layer, spec.ReLU):
                a = jax.nn.relu(a)
            elif isinstance(layer, spec.Dropout):
                if key is not None and layer.rate > 0.0:
                    key, sub = jax.random.split(key)
                    keep = jax.random.bernoulli(sub, 1.0 - layer.rate, a.shape)
                    a = jnp.where(keep, a / (1.0 - layer.rate), 0.0)
            elif isinstance(layer, spec.Embedding):
                a = params[f"{i}.table"][a]  # dense gather; its gradient is a dense scatter-add
            elif isinstance(layer, spec.LSTM):
                a = _lstm_last(a, params[f"{i}.w_ih"], params[f"{i}.w_hh"], params[f"{i}.bias"])
            else:
                raise TypeError(f"jax adapter: unsupported layer {layer!r}")
        return a

    return forward


def _lstm_last(x: jax.Array, w_ih: jax.Array, w_hh: jax.Array, bias: jax.Array) -> jax.Array:
    """x [N, T, in] -> h_T [N, H]; gates i, f, g, o; h_0 = c_0 = 0; no masking."""
    n, t_len, n_in = x.shape
    hidden = w_hh.shape[1]
    # The input projection of every time step in one 2-D matmul, time-major for the scan.
    # (2-D on purpose: XLA:CPU runs a dot with two contracting dims, which the gradient of a
    # 3-D einsum produces, through a slow generic loop instead of Eigen.)
    x_tm = jnp.swapaxes(x, 0, 1).reshape(t_len * n, n_in)
    zx = (x_tm @ w_ih.T + bias).reshape(t_len, n, 4 * hidden)
    w_hh_t = w_hh.T

    def cell(carry, z_t):
        h, c = carry
        z = z_t + h @ w_hh_t
        # One sigmoid over all four gates (the g columns are unused) is faster on XLA:CPU
        # than four sigmoids/tanhs on column slices.
        s = jax.nn.sigmoid(z)
        i, f, o = s[:, :hidden], s[:, hidden : 2 * hidden], s[:, 3 * hidden :]
        g = jnp.tanh(z[:, 2 * hidden : 3 * hidden])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((n, hidden), x.dtype)
    # Rematerialise the cell in the backward pass: saving only (h, c) per step instead of
    # every gate intermediate makes the differentiated loop markedly faster on CPU.
    (h, _), _ = jax.lax.scan(jax.checkpoint(cell), (zeros, zeros), zx)
    return h


def make_optimizer(opt: spec.Optimizer) -> optax.GradientTransformation:
    if isinstance(opt, spec.SGDMomentum):  # trace: v = g + m v; then w -= lr v
        return optax.sgd(opt.lr, momentum=opt.momentum, nesterov=False)
    if isinstance(opt, spec.RMSprop):  # eps outside the sqrt (optax's default puts it inside)
        return optax.rmsprop(opt.lr, decay=opt.rho, eps=opt.eps, eps_in_sqrt=False)
    if isinstance(opt, spec.Adam):  # Kingma & Ba, eps after bias correction, eps_root = 0
        return optax.adam(opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    raise TypeError(f"jax adapter: unsupported optimizer {opt!r}")


class JaxAdapter(Adapter):
    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        _init_cpu_client(threads)
        self.seed = int(self.options.get("seed", 0))  # dropout keys (deterministic per seed)
        self._has_dropout = any(isinstance(layer, spec.Dropout) and layer.rate > 0 for layer in task.layers)
        self.names = [p.name for p in spec.param_specs(task)]

        forward = build_forward(task)
        self.tx = make_optimizer(task.optimizer)
        tx = self.tx

        def loss_fn(params, x, y, key):
            logits = forward(params, x, key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def step(params, opt_state, key, x, y):
            if key is not None:
                key, sub = jax.random.split(key)
            else:
                sub = None
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y, sub)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, key, loss

        def evaluate(params, x, y):
            logits = forward(params, x, None)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
            return loss, (jnp.argmax(logits, axis=1) == y).sum()

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

    def thread_settings(self) -> dict[str, Any]:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return {
            "intra_op": _POOL_THREADS,  # XLA:CPU's one pool; there is no inter-op setting
            "source": _POOL_SOURCE,
            "PJRT_NPROC": os.environ.get("PJRT_NPROC"),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "affinity": cpus,
            "backend": jax.default_backend(),
            "device_count": jax.device_count(),
        }

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
