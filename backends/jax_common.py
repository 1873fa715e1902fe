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
# ask whether it has been: ``backends_are_initialized`` is private (jax 0.6-0.7). This is the
# only import of ``jax._src`` in fwbench; without it (a later jax) the adapters cannot tell.
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


def denormal_product(a, b):
    """``a * b`` in a jitted XLA computation, as the training step runs (see
    ``Adapter.denormal_product``)."""
    import numpy as np

    return np.asarray(_multiply(a, b))


_multiply = jax.jit(lambda x, y: x * y)
