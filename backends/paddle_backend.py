"""PaddlePaddle adapter: dygraph ``paddle.nn.Layer`` built from the layer list, ``paddle.optimizer``.

Variant ``options={"to_static": True}`` (``paddle-static``): the model's forward goes through
``paddle.jit.to_static`` (Paddle 3's default, SOT bytecode translation; a program per input
shape and per training flag of the layers it reads), the loss, ``backward()`` and the
optimizer stay in dygraph, as Paddle's dynamic-to-static docs train a ``Layer``.

Layout notes: every Paddle parameter here has the canonical layout, so weights load as they
are: ``nn.Linear.weight`` is [in, out]; ``nn.Conv2D`` is [out, in, kh, kw] on NCHW (NCHW
``nn.Flatten``); ``nn.Conv1D(data_format="NLC")`` is [out, in, k] on the spec's [N, T, C];
``nn.Embedding.weight`` [vocab, dim]; ``nn.LSTM`` has gates i, f, g, o and ``nn.GRU`` the
spec's reset-after GRU (gates r, z, n, ``bias_ih`` and ``bias_hh`` both trained), both checked
against ``reference``. Padding "same" is ``spec.same_padding`` given explicitly (odd zero at
the end); max pooling over time is ``F.max_pool1d``, channels-first only, between transposes.

``nn.LSTM`` has two biases: the canonical bias goes into ``bias_ih``, ``bias_hh`` stays zero
and out of the optimizer (the README's two-bias rule). It cannot be frozen with
``stop_gradient=True``: the fused ``rnn`` op's backward then fails ("Required tensor shall
not be nullptr"), so it is still differentiated and its gradient dropped with the others.

Evaluation mode: ``logits`` and ``evaluate`` run in ``eval()``. The fused ``rnn`` op in
``eval()`` keeps nothing for its backward ("Tensor holds no memory" in ``RnnGradNode``), so
``gradients`` runs in ``train()`` with only the Dropout layers in ``eval()``: the same function
without dropout noise. Dropout: ``nn.Dropout`` (inverted, "upscale_in_train") in training,
masks from Paddle's global generator, seeded with ``paddle.seed`` from ``options["seed"]``.

Optimizers (the spec's formulas): ``paddle.optimizer.Momentum`` (v = m v + g; w -= lr v) and
``paddle.optimizer.Adam`` (its kernel scales lr by sqrt(1 - b2^t) / (1 - b1^t) and eps by
sqrt(1 - b2^t): eps after the bias correction; checked against the spec with eps 0.1, where the
two placements differ) compute them. ``paddle.optimizer.RMSProp`` puts eps inside
the sqrt, so RMSprop runs on the fused Adagrad kernel (``SpecRMSprop``).

Threads: Paddle's CPU kernels (MKL, Intel OpenMP) follow ``OMP_NUM_THREADS``, which the worker
sets before the import, and run on one thread without it (``FLAGS_paddle_num_threads`` = 1).
The only setter is internal, ``paddle.base.core.set_num_threads`` (MKL and OpenMP, no getter);
it wins over the variable both ways (measured: 1 or 2 busy threads as set, with
``OMP_NUM_THREADS`` 2 or 1), so the cell's count holds whatever the environment says.
Denormals: Paddle has no switch and does not flush; ``flush_denormals`` sets FTZ and DAZ in the
calling thread's MXCSR before the first op, which Paddle's OpenMP workers follow (probed:
``denormal_product`` gives zeros, eager and static).
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import warnings
from typing import Any

# Paddle logs INFO/WARNING through glog to stderr (e.g. "New Executor is Running" for every
# static program); keep only errors unless the user chose a level. Exceptions still propagate.
os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np

with warnings.catch_warnings():  # paddle.utils.cpp_extension warns at import without ccache
    warnings.filterwarnings("ignore", message="No ccache found")
    import paddle
    import paddle.nn.functional as F
    from paddle import nn
    from paddle.base import core

from fwbench.harness import spec
from fwbench.harness.adapter import Adapter

# ----------------------------------------------------------------------------- model


class LastHidden(nn.Layer):
    """Single-layer LSTM returning h_T."""

    def __init__(self, n_in: int, units: int):
        super().__init__()
        self.lstm = nn.LSTM(n_in, units)

    def forward(self, x):
        _, (h, _) = self.lstm(x)  # h: [num_layers * directions, N, H]
        return h[-1]


class GRULayer(nn.Layer):
    """One ``nn.GRU`` layer: every h_t [N, T, H] or the last state h_T [N, H]."""

    def __init__(self, n_in: int, units: int, return_sequences: bool):
        super().__init__()
        self.gru = nn.GRU(n_in, units)
        self.return_sequences = return_sequences

    def forward(self, x):
        out, h = self.gru(x)
        return out if self.return_sequences else h[-1]


class MaxPool1dNTC(nn.Layer):
    """``F.max_pool1d`` (channels-first only) on the spec's [N, T, C] sequences."""

    def __init__(self, pool: int):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return F.max_pool1d(x.transpose([0, 2, 1]), self.pool).transpose([0, 2, 1])


class SumBidirectional(nn.Layer):
    """Two independent stacks, ``bw`` run on the time-reversed input, last states summed.

    Not ``nn.GRU(direction="bidirect")``: from its second layer on, each direction reads the
    concatenation of both directions' outputs, which is not the spec's two stacks."""

    def __init__(self, layer: spec.Bidirectional, shape: spec.Shape):
        super().__init__()
        self.fw, self.bw = _stack(layer.layers, shape), _stack(layer.layers, shape)

    def forward(self, x):
        return self.fw(x) + self.bw(paddle.flip(x, [1]))


def _padding(layer: spec.Conv2D | spec.Conv1D, dims: int) -> int | list[int]:
    # [before, after] per spatial axis: (k-1)//2 zeros before, k//2 after, as the spec
    return list(spec.same_padding(layer.kernel)) * dims if layer.padding == "same" else 0


LAYERS = spec.LayerRules("paddle adapter: layers", {
    spec.Flatten: lambda layer, shape: nn.Flatten(),
    spec.Dense: lambda layer, shape: nn.Linear(shape[0], layer.units),
    spec.Conv2D: lambda layer, shape: nn.Conv2D(shape[0], layer.filters, layer.kernel,
                                                padding=_padding(layer, 2)),
    spec.MaxPool2D: lambda layer, shape: nn.MaxPool2D(layer.pool),
    spec.ReLU: lambda layer, shape: nn.ReLU(),
    spec.Dropout: lambda layer, shape: nn.Dropout(layer.rate),
    spec.Embedding: lambda layer, shape: nn.Embedding(layer.vocab, layer.dim),
    spec.LSTM: lambda layer, shape: LastHidden(shape[-1], layer.units),
    spec.Conv1D: lambda layer, shape: nn.Conv1D(shape[-1], layer.filters, layer.kernel,
                                                padding=_padding(layer, 1), data_format="NLC"),
    spec.MaxPool1D: lambda layer, shape: MaxPool1dNTC(layer.pool),
    spec.GRU: lambda layer, shape: GRULayer(shape[-1], layer.units, layer.return_sequences),
    spec.Bidirectional: SumBidirectional,
})


def _stack(layers: tuple[spec.Layer, ...], shape: spec.Shape) -> nn.Sequential:
    """The layers of ``layers`` given the canonical shape of one example entering them."""
    return nn.Sequential(*(LAYERS(layer, s) for layer, s in spec.with_shapes(layers, shape)))


def build_layer(task: spec.Task) -> nn.Sequential:
    return _stack(task.layers, task.input_shape)


def _weight_bias(layer: spec.Dense | spec.Conv2D | spec.Conv1D, i: int | str) -> dict[str, str]:
    return {f"{i}.kernel": f"{i}.weight", f"{i}.bias": f"{i}.bias"}


def _gru_keys(layer: spec.GRU, i: int | str) -> dict[str, str]:
    return {f"{i}.{role}": f"{i}.gru.{key}_l0" for role, key in
            (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}


def _bidirectional_keys(layer: spec.Bidirectional, i: int | str) -> dict[str, str]:
    # canonical "<i>.fw.<j>.<role>" is the sublayer path "<i>.fw.<j>" of SumBidirectional
    return {name: key for d in ("fw", "bw") for j, inner in enumerate(layer.layers)
            for name, key in KEYS(inner, f"{i}.{d}.{j}").items()}


KEYS = spec.LayerRules("paddle adapter: parameter names", {
    spec.Flatten: spec.no_params,
    spec.Dense: _weight_bias,  # nn.Linear.weight is [in, out], the canonical kernel
    spec.Conv2D: _weight_bias,
    spec.MaxPool2D: spec.no_params,
    spec.ReLU: spec.no_params,
    spec.Dropout: spec.no_params,
    spec.Embedding: lambda layer, i: {f"{i}.table": f"{i}.weight"},
    spec.LSTM: lambda layer, i: {f"{i}.w_ih": f"{i}.lstm.weight_ih_l0", f"{i}.w_hh": f"{i}.lstm.weight_hh_l0",
                                 f"{i}.bias": f"{i}.lstm.bias_ih_l0"},  # bias_hh_l0: zero, not trained
    spec.Conv1D: _weight_bias,
    spec.MaxPool1D: spec.no_params,
    spec.GRU: _gru_keys,
    spec.Bidirectional: _bidirectional_keys,
})


def canonical_to_paddle(task: spec.Task) -> dict[str, str]:
    """canonical name -> Paddle parameter name (``named_parameters``); no layout change."""
    return {name: key for i, layer in enumerate(task.layers) for name, key in KEYS(layer, i).items()}


# ------------------------------------------------------------------------- optimizer


class SpecRMSprop(paddle.optimizer.Adagrad):
    """The spec's RMSprop, s = rho s + (1-rho) g^2; w -= lr g / (sqrt(s) + eps), on Paddle's
    fused Adagrad kernel (m += g'^2; w -= lr' g' / (sqrt(m) + eps), eps outside the sqrt as
    the spec's): with g' = sqrt(1-rho) g and lr' = lr / sqrt(1-rho), and m scaled by rho after
    each step, m is the spec's s and the update its formula.

    Not ``paddle.optimizer.RMSProp``: eps inside the sqrt. Not the fused Adam kernel with
    beta1 = 0 (the spec's formula too): after one step of Paddle 3.3.1's CPU Adam kernel every
    later MKL GEMM of the process runs ~4x slower at 2 threads (mlp: 17.5 ms a step against 4.8
    for the idiomatic loop on RMSProp). Not written out in elementwise ops: 9 passes over each
    tensor, 1.09x the loop on mlp. This one: 5.82 ms vs 5.86 for ``RMSProp`` (one process,
    interleaved blocks); the two extra passes (g', m) are the cost of eps's place."""

    def __init__(self, opt: spec.RMSprop, parameters: list):
        super().__init__(opt.lr / math.sqrt(1 - opt.rho), epsilon=opt.eps, parameters=parameters)
        self.rho, self.grad_scale = opt.rho, math.sqrt(1 - opt.rho)

    @paddle.no_grad()
    def step(self) -> None:
        trained = [p for p in self._parameter_list if p.grad is not None]
        for p in trained:
            p.grad.scale_(self.grad_scale)
        super().step()
        for p in trained:  # m = rho s: the next step adds (1-rho) g^2
            self._get_accumulator(self._moment_acc_str, p).scale_(self.rho)


OPTIMIZERS = spec.OptimizerRules("paddle adapter: optimizers", {
    # v = m v + g; w -= lr v (no nesterov, no weight decay)
    spec.SGDMomentum: lambda opt, params: paddle.optimizer.Momentum(opt.lr, opt.momentum, parameters=params),
    # eps outside the sqrt (RMSProp has it inside), see SpecRMSprop
    spec.RMSprop: lambda opt, params: SpecRMSprop(opt, params),
    # Kingma & Ba with eps after bias correction
    spec.Adam: lambda opt, params: paddle.optimizer.Adam(opt.lr, opt.b1, opt.b2, opt.eps, parameters=params),
})


def make_optimizer(opt: spec.Optimizer, params: list) -> paddle.optimizer.Optimizer:
    return OPTIMIZERS(opt, params)


# --------------------------------------------------------------------------- adapter

_APPLIED_THREADS: dict[str, int] = {}  # what this process set: Paddle has no getter
_FTZ_DAZ = 0x8040  # MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6)


def _flush_denormals_here() -> bool:
    """FTZ and DAZ in this thread's MXCSR (x86-64 glibc: fegetenv/fesetenv, whose fenv_t
    ends with the MXCSR word). True if set."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libm = ctypes.CDLL("libm.so.6")
    except OSError:
        return False
    env = (ctypes.c_uint32 * 8)()  # glibc's x86-64 fenv_t: 28 bytes of x87 state, then mxcsr
    if libm.fegetenv(env) != 0:
        return False
    env[7] |= _FTZ_DAZ
    return libm.fesetenv(env) == 0


def _multiply(a, b):
    return a * b


class PaddleAdapter(Adapter):
    layer_rules = (LAYERS, KEYS)

    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        paddle.set_device("cpu")
        core.set_num_threads(threads)  # MKL and OpenMP; over OMP_NUM_THREADS (or its absence: 1)
        _APPLIED_THREADS["intra_op"] = threads
        self.to_static = bool(self.options.get("to_static"))
        self.names = canonical_to_paddle(task)
        if self.options.get("deterministic") or "seed" in self.options:
            paddle.seed(int(self.options.get("seed", 0)))  # dropout masks
        self._multiply = paddle.jit.to_static(_multiply) if self.to_static else _multiply

    def determinism(self) -> dict[str, Any]:
        # The CPU build has no determinism flag (FLAGS_cudnn_deterministic is for cuDNN).
        seeded = self.options.get("deterministic") or "seed" in self.options
        return {"paddle.seed": self.options.get("seed", 0) if seeded else None}

    @classmethod
    def framework_version(cls) -> str:
        return paddle.__version__

    @classmethod
    def device_unsupported(cls, platform: str) -> str | None:
        if platform == "cpu":
            return None
        if not paddle.is_compiled_with_cuda():
            return f"paddlepaddle {paddle.__version__} is a build without CUDA"
        return f"paddlepaddle {paddle.__version__}: fwbench runs Paddle on the CPU only"

    def flush_denormals(self) -> str:
        # No switch in Paddle (its ScopedFlushDenormal is internal to a few kernels); threads
        # created later inherit the MXCSR, and the probe checks the ones that compute.
        return "MXCSR FTZ+DAZ of the calling thread (fesetenv)" if _flush_denormals_here() else ""

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with paddle.no_grad():  # large enough to run on every OpenMP thread
            return self._multiply(paddle.to_tensor(a), paddle.to_tensor(b)).numpy()

    def thread_settings(self) -> dict[str, Any]:
        # What this process gave paddle.base.core.set_num_threads: there is no getter, and
        # FLAGS_paddle_num_threads keeps its start-up value (1) after that call.
        return {"intra_op": _APPLIED_THREADS.get("intra_op")}

    def build(self, params: dict[str, np.ndarray]) -> None:
        self.net = build_layer(self.task)
        named = dict(self.net.named_parameters())
        self.params = {name: named[key] for name, key in self.names.items()}
        for name, p in self.params.items():
            p.set_value(np.ascontiguousarray(params[name], dtype=np.float32))
        for key, p in named.items():
            if key.endswith("lstm.bias_hh_l0"):  # LastHidden's second bias: zero, not trained
                p.set_value(np.zeros(p.shape, np.float32))
        self.dropouts = [layer for layer in self.net.sublayers() if isinstance(layer, nn.Dropout)]
        self.opt = make_optimizer(self.task.optimizer, list(self.params.values()))
        self.loss_fn = nn.CrossEntropyLoss()
        self.model = paddle.jit.to_static(self.net) if self.to_static else self.net
        self._mode: str | None = None

    def _set_mode(self, mode: str) -> None:
        """"train"; "eval"; "probe": train() for the RNNs' backward, Dropout layers in eval().
        Layer.train()/eval() walks every sublayer: only when the mode changes."""
        if self._mode != mode:
            self.net.eval() if mode == "eval" else self.net.train()
            if mode == "probe":
                for layer in self.dropouts:
                    layer.eval()
            self._mode = mode

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        self._set_mode("train")
        loss = self.loss_fn(self.model(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss.backward()
        self.opt.step()
        self.net.clear_gradients(set_to_zero=False)  # the LSTM's untrained bias_hh too
        return loss.item()

    @paddle.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self._set_mode("eval")
        out = self.model(paddle.to_tensor(x))
        ty = paddle.to_tensor(y)
        loss = F.cross_entropy(out, ty, reduction="sum").item()
        return loss, int((out.argmax(1) == ty.astype("int64")).sum().item())

    @paddle.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self._set_mode("eval")
        return self.model(paddle.to_tensor(x)).numpy()

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        self._set_mode("probe")  # no dropout noise; the RNN op differentiates only in train()
        self.net.clear_gradients(set_to_zero=False)
        loss = self.loss_fn(self.model(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss.backward()
        grads = self._export({n: p.grad for n, p in self.params.items()})
        self.net.clear_gradients(set_to_zero=False)
        return loss.item(), grads

    def export_params(self) -> dict[str, np.ndarray]:
        return self._export(self.params)

    def _export(self, tensors: dict[str, Any]) -> dict[str, np.ndarray]:
        return {name: np.array(t.numpy(), dtype=np.float32, order="C", copy=True)
                for name, t in tensors.items()}
