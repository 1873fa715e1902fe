"""What the JAX and the Flax adapters share: the XLA CPU client and its thread pool, the
thread settings they report, the spec's optimizers in optax and the loss.

Only those two adapters import this module (it imports jax and optax), so like them it is
loaded inside a worker process only.

Threads: XLA:CPU has no runtime thread setter and no separate inter-op pool (independent
ops of one executable run concurrently on the same intra-op pool). That pool is sized when
the CPU client is created -- lazily, at the first use of a device, not at ``import jax`` --
from the env var ``PJRT_NPROC`` (then ``NPROC``), else the number of CPUs in the process's
affinity mask. The first adapter of a process therefore sets ``PJRT_NPROC = threads`` and
creates the client at once (measured on jax 0.7.1: 1 -> one busy worker thread, 4 -> four).
``XLA_FLAGS`` ``--xla_cpu_multi_thread_eigen=false`` and ``intra_op_parallelism_threads=N``
were measured to change nothing on jax 0.7.1's CPU runtime, so they are not used.

Optimizers (all built-in optax, checked against optax 0.2.8's source):
- ``optax.sgd(lr, momentum)`` = ``trace`` (v = g + m v, nesterov off) then scale by -lr.
- ``optax.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=False)``: g / (sqrt(s) + eps); optax's
  default ``eps_in_sqrt=True`` would put eps inside the sqrt, which is not the spec's formula.
- ``optax.adam(lr, b1, b2, eps)`` (eps_root 0): Kingma & Ba, eps after bias correction.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fwbench.harness import spec

# PJRT_NPROC only takes effect before the CPU client is created, and jax has no public API to
# ask whether it has been: ``backends_are_initialized`` is private (jax 0.6-0.7). fwbench
# imports ``jax._src`` twice: here (without it, a later jax, the adapters cannot tell) and for
# the CUDA and cuDNN versions of a GPU cell (``device_versions``, best effort).
try:
    from jax._src.xla_bridge import backends_are_initialized as _client_created
except ImportError:  # pragma: no cover
    _client_created = None

# Intra-op pool size of this process's XLA CPU client, fixed when the client is created.
_POOL_THREADS: int | None = None
_POOL_SOURCE = ""


def _affinity_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def init_cpu_client(threads: int) -> None:
    """Create the XLA CPU client with a ``threads``-sized pool (once per process).

    If a device was used before (the client exists), records what was in force instead: the
    pool can no longer change.
    """
    global _POOL_THREADS, _POOL_SOURCE
    if _POOL_THREADS is not None:
        return
    if _client_created is None:
        os.environ["PJRT_NPROC"] = str(threads)
        _POOL_THREADS, _POOL_SOURCE = threads, "PJRT_NPROC set by the adapter (unverified: no jax API)"
    elif not _client_created():
        os.environ["PJRT_NPROC"] = str(threads)
        _POOL_THREADS, _POOL_SOURCE = threads, "PJRT_NPROC set by the adapter"
    else:
        env = os.environ.get("PJRT_NPROC") or os.environ.get("NPROC")
        if env:
            _POOL_THREADS, _POOL_SOURCE = int(env), "PJRT_NPROC/NPROC (client created before the adapter)"
        else:
            _POOL_THREADS = _affinity_count()
            _POOL_SOURCE = "CPU affinity (client created before the adapter)"
    jax.devices()  # create the client now, with the pool size above


def _process_threads() -> int | None:
    """OS threads of this process (Linux), evidence of the pools actually started."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    except (OSError, StopIteration):
        return None


def thread_settings(**extra: Any) -> dict[str, Any]:
    """The thread settings both adapters report, under the keys every adapter uses.

    ``intra_op`` is the client's pool; ``inter_op`` is None because XLA:CPU has no such pool
    (``inter_op_reason`` says so). XLA exposes no getter for its pool sizes, so the knobs it
    reads and what the process sees are reported with them; ``extra`` adds adapter keys.
    """
    return {
        "intra_op": _POOL_THREADS,
        "inter_op": None,
        "inter_op_reason": "XLA:CPU has no inter-op pool: independent ops share the intra-op pool",
        "intra_op_source": _POOL_SOURCE,
        "PJRT_NPROC": os.environ.get("PJRT_NPROC"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "process_threads": _process_threads(),
        **extra,
    }


OPTIMIZERS = spec.OptimizerRules("optax (jax and flax adapters)", {
    # trace: v = g + m v; then w -= lr v
    spec.SGDMomentum: lambda opt: optax.sgd(opt.lr, momentum=opt.momentum, nesterov=False),
    # eps outside the sqrt (optax's default puts it inside)
    spec.RMSprop: lambda opt: optax.rmsprop(opt.lr, decay=opt.rho, eps=opt.eps, eps_in_sqrt=False),
    # Kingma & Ba, eps after bias correction, eps_root = 0
    spec.Adam: lambda opt: optax.adam(opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps),
})


def make_optimizer(opt: spec.Optimizer) -> optax.GradientTransformation:
    return OPTIMIZERS(opt)


def mean_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    """The task loss: softmax cross-entropy on logits, mean over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def eval_sums(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of per-example losses, number correct) of one evaluation batch."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, (jnp.argmax(logits, axis=1) == y).sum()


FLUSH_DEFAULT = "XLA:CPU flushes by default (its compiled code runs with FTZ/DAZ)"


class XlaDevice:
    """The device methods of the JAX and Flax adapters (``Adapter``'s, see there). On a GPU
    cell the worker set ``JAX_PLATFORMS=cuda,cpu`` (no silent fall-back to the CPU),
    ``JAX_DEFAULT_MATMUL_PRECISION=highest`` and ``XLA_PYTHON_CLIENT_PREALLOCATE=false``
    before ``import jax``; arrays then go to the GPU (the default device) by themselves."""

    @classmethod
    def device_unsupported(cls, platform: str) -> str | None:
        if platform == "cpu":
            return None
        try:
            found = jax.devices("gpu")
        except RuntimeError as exc:
            why = " ".join(str(exc).split())[:160]
            return f"jax {jax.__version__} has no usable CUDA backend ({why})"
        return None if found else f"jax {jax.__version__} sees no GPU"

    def device_settings(self) -> dict[str, Any]:
        jax.config.update("jax_default_matmul_precision", "highest")
        return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
                "default_backend": jax.default_backend()}

    def device_versions(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cuda": None, "cudnn": None}
        try:  # private, and moved between releases: best effort, None when absent
            from jax._src.lib import cuda_versions

            if cuda_versions is not None:
                out["cuda"] = _cuda_version(cuda_versions.cuda_runtime_get_version())
                out["cudnn"] = _cudnn_version(cuda_versions.cudnn_get_version())
        except Exception:  # noqa: BLE001
            pass
        return out

    def memory_peak(self) -> dict[str, Any]:
        if not getattr(self, "gpu", False):
            return {}
        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return {"source": "jax Device.memory_stats()['peak_bytes_in_use']",
                "counts": "bytes of live buffers in XLA's BFC allocator at its peak over the "
                          "cell (preallocation off)",
                "peak_mib": peak / 2**20 if peak is not None else None,
                "reserved_peak_mib": (stats["peak_pool_bytes"] / 2**20
                                      if stats.get("peak_pool_bytes") else None)}

    def gemm(self, n: int):
        import numpy as np

        rng = np.random.default_rng(0)
        a, b = (jnp.asarray(rng.random((n, n), dtype=np.float32)) for _ in range(2))
        product = jax.jit(lambda x, y: x @ y)

        def run(k: int) -> None:
            c = None
            for _ in range(k):
                c = product(a, b)
            c.block_until_ready()

        return run


def _cuda_version(v: Any) -> str | None:
    """CUDA's integer version as text: 1000 major + 10 minor (12080 -> "12.8")."""
    return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) else None


def _cudnn_version(v: Any) -> str | None:
    """cuDNN's integer version as text: 9.x is 10000 major + 100 minor + patch (90800 ->
    "9.8.0"), 8.x 1000 major + 100 minor + patch (8902 -> "8.9.2")."""
    if not isinstance(v, int):
        return None
    major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def denormal_product(a, b):
    """``a * b`` in a jitted XLA computation, as the training step runs (see
    ``Adapter.denormal_product``)."""
    import numpy as np

    return np.asarray(_multiply(a, b))


_multiply = jax.jit(lambda x, y: x * y)


# ------------------------------------------------------------ layers both adapters build


def conv_padding(layer: spec.Conv2D | spec.Conv1D, axes: int) -> list[tuple[int, int]]:
    """Explicit (low, high) padding of each spatial axis for ``lax.conv_general_dilated`` and
    ``nnx.Conv``: "same" is the spec's split ((k-1)//2 before, k//2 after) by construction,
    not whatever a framework's "SAME" does; "valid" is none."""
    pair = spec.same_padding(layer.kernel) if layer.padding == "same" else (0, 0)
    return [pair] * axes


def time_major_projection(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """x [N, T, in] -> x_t @ w + b for every step, time-major [T, N, G], as one 2-D matmul.

    (2-D on purpose: XLA:CPU runs a dot with two contracting dims, which the gradient of a
    3-D einsum produces, through a slow generic loop instead of Eigen.)
    """
    n, t_len, n_in = x.shape
    x_tm = jnp.swapaxes(x, 0, 1).reshape(t_len * n, n_in)
    return (x_tm @ w + b).reshape(t_len, n, w.shape[1])


def gru(x: jax.Array, w_i: jax.Array, w_h: jax.Array, b_i: jax.Array, b_h: jax.Array,
        return_sequences: bool) -> jax.Array:
    """The spec's GRU over x [N, T, in]: every h_t [N, T, H], or h_T [N, H].

    Gates r, z, n; the reset gate multiplies the recurrent projection (bias included):
    r = sigmoid(xW_ir + b_ir + hW_hr + b_hr), z = sigmoid(xW_iz + b_iz + hW_hz + b_hz),
    n = tanh(xW_in + b_in + r * (hW_hn + b_hn)), h' = (1 - z) * n + z * h; h_0 = 0.
    ``w_i`` [in, 3H] and ``w_h`` [H, 3H] are in ``x @ w`` form (the canonical w_ih.T,
    w_hh.T), gate blocks r, z, n along the columns; ``b_i``, ``b_h`` [3H].
    """
    hidden = w_h.shape[0]
    zx = time_major_projection(x, w_i, b_i)

    def cell(h, zx_t):
        zh = h @ w_h + b_h
        # One sigmoid over the r and z columns together, as the LSTM does over its gates.
        rz = jax.nn.sigmoid(zx_t[:, : 2 * hidden] + zh[:, : 2 * hidden])
        r, z = rz[:, :hidden], rz[:, hidden:]
        n = jnp.tanh(zx_t[:, 2 * hidden :] + r * zh[:, 2 * hidden :])
        h = (1.0 - z) * n + z * h
        return h, (h if return_sequences else None)

    h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
    # Rematerialise the cell in the backward pass (saving only h per step), as the LSTM does.
    h, hs = jax.lax.scan(jax.checkpoint(cell), h0, zx)
    return jnp.swapaxes(hs, 0, 1) if return_sequences else h


def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """Non-overlapping max pooling (window = stride, floor) over the axes where ``window`` > 1."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
