"""MindSpore adapter: ``nn.Cell`` built from the layer list, one compiled train step on CPU.

Modes: GRAPH_MODE by default -- each top-level Cell (train step, loss+gradients, eval,
logits) is compiled on its first call for an input shape and cached, so the train batch,
the eval batch and a smaller last eval batch compile once each, never per step;
PYNATIVE_MODE with ``options={"mode": "pynative"}`` runs the same Cells op by op
(synchronously, see ``_configure``; ``"launch_blocking": False`` restores the async pipeline).

Layout notes: ``nn.Dense.weight`` is [out, in] (canonical kernel transposed); ``nn.Conv2d``
weight is [out, in, kh, kw] and activations are NCHW, so conv kernels and the NCHW
``nn.Flatten`` match the canonical layout as is. ``nn.Conv2d`` defaults to
``pad_mode="same"`` and no bias, so it is built with ``pad_mode="valid", has_bias=True``.
``nn.LSTM`` on CPU calls the fused ``ops.LSTM`` kernel, whose gate order is i, f, g, o
(checked against ``reference.forward``: no permutation needed); it has two biases that it
adds (``bias_ih + bias_hh``): the canonical bias goes into ``bias_ih``, ``bias_hh`` stays zero
and frozen (``requires_grad=False``: not differentiated, not given to the optimizer).
``nn.GRU`` on CPU has no fused kernel: it runs ``rnn_cells._gru_cell`` step by step, whose
formula and layout are the spec's (gates r, z, n, reset after the recurrent matmul, ``b_ih``
and ``b_hh`` both trained), so GRU weights load as they are. ``nn.Conv1d`` is a Conv2D over
[N, C, 1, T] with weight [out, in, 1, k] (the canonical kernel reshaped), applied between
transposes of the spec's [N, T, C] sequences; ``pad_mode="same"`` puts the odd zero at the
end, as the spec does. Dropout: ``nn.Dropout`` in ``set_train(True)`` only (MindSpore's RNG,
seeded by ``ms.set_seed`` from ``options["seed"]`` when given).
Initialisers do not matter: every parameter is overwritten with the canonical values.

Optimizers (the spec's formulas, see ``spec.py``):
- momentum SGD: ``nn.SGD(momentum=m)``: v = m*v + g (dampening 0; v = g on the first step,
  the same as from v = 0); w -= lr*v. ``nn.Momentum`` computes the same but its 2.10
  docstring marks it deprecated.
- RMSprop and Adam: ``AdamKernel`` below, the fused ``ops.Adam`` kernel with arguments that
  make it compute the spec's formulas exactly (RMSprop with eps outside the sqrt; Adam with
  eps after the bias correction). ``nn.RMSProp`` puts eps inside the sqrt; ``nn.Adam`` and
  ``experimental.optim.Adam`` add it before the bias correction; ``mint.optim.Adam`` has the
  spec's formula but is Ascend-only (on CPU it leaves the weights unchanged in PYNATIVE_MODE).
"""

from __future__ import annotations

import os
from typing import Any

# MindSpore logs INFO/WARNING through glog to stderr; keep only errors unless the user chose
# a level. Exceptions are Python exceptions and propagate regardless of this setting.
os.environ.setdefault("GLOG_v", "3")

import mindspore as ms
import numpy as np
from fwbench.harness import spec
from fwbench.harness.adapter import Adapter
from mindspore import Parameter, Tensor, nn, ops

# ----------------------------------------------------------------------------- model


class LastHidden(nn.Cell):
    """Single-layer LSTM returning h_T."""

    def __init__(self, n_in: int, units: int):
        super().__init__()
        self.lstm = nn.LSTM(n_in, units, batch_first=True)
        self.lstm.b_hh_list[0].requires_grad = False

    def construct(self, x):
        _, (h, _) = self.lstm(x)  # h: [num_layers * directions, N, H]
        return h[-1]


class GRULayer(nn.Cell):
    """One ``nn.GRU`` layer: every h_t [N, T, H] or the last state h_T [N, H]."""

    def __init__(self, n_in: int, units: int, return_sequences: bool):
        super().__init__()
        self.gru = nn.GRU(n_in, units, batch_first=True)
        self.return_sequences = return_sequences

    def construct(self, x):
        out, h = self.gru(x)  # h: [num_layers * directions, N, H]
        if self.return_sequences:
            return out
        return h[-1]


class Conv1dNTC(nn.Cell):
    """``nn.Conv1d`` (weight [out, in, 1, k]) on the spec's channels-last sequences [N, T, C]."""

    def __init__(self, n_in: int, layer: spec.Conv1D):
        super().__init__()
        self.conv = nn.Conv1d(n_in, layer.filters, layer.kernel, pad_mode=layer.padding, has_bias=True)

    def construct(self, x):
        return ops.transpose(self.conv(ops.transpose(x, (0, 2, 1))), (0, 2, 1))


class MaxPool1dNTC(nn.Cell):
    def __init__(self, pool: int):
        super().__init__()
        self.pool = nn.MaxPool1d(kernel_size=pool, stride=pool)

    def construct(self, x):
        return ops.transpose(self.pool(ops.transpose(x, (0, 2, 1))), (0, 2, 1))


class SumBidirectional(nn.Cell):
    """Two independent stacks, ``bw`` run on the time-reversed input, last states summed.

    Not ``nn.GRU(bidirectional=True)``: from its second layer on, each direction reads the
    concatenation of both directions' outputs, which is not the spec's two stacks."""

    def __init__(self, layer: spec.Bidirectional, shape: spec.Shape):
        super().__init__()
        self.fw, self.bw = _stack(layer.layers, shape), _stack(layer.layers, shape)

    def construct(self, x):
        return self.fw(x) + self.bw(ops.flip(x, (1,)))


CELLS = spec.LayerRules("mindspore adapter: cells", {
    spec.Flatten: lambda layer, shape: nn.Flatten(),
    spec.Dense: lambda layer, shape: nn.Dense(shape[0], layer.units),
    # pad_mode "same": (k-1)//2 before, k//2 after (the odd one at the end), as the spec
    spec.Conv2D: lambda layer, shape: nn.Conv2d(shape[0], layer.filters, layer.kernel,
                                                pad_mode=layer.padding, has_bias=True),
    spec.MaxPool2D: lambda layer, shape: nn.MaxPool2d(kernel_size=layer.pool, stride=layer.pool),
    spec.ReLU: lambda layer, shape: nn.ReLU(),
    spec.Dropout: lambda layer, shape: nn.Dropout(p=layer.rate),
    spec.Embedding: lambda layer, shape: nn.Embedding(layer.vocab, layer.dim),
    spec.LSTM: lambda layer, shape: LastHidden(shape[-1], layer.units),
    spec.Conv1D: lambda layer, shape: Conv1dNTC(shape[-1], layer),
    spec.MaxPool1D: lambda layer, shape: MaxPool1dNTC(layer.pool),
    spec.GRU: lambda layer, shape: GRULayer(shape[-1], layer.units, layer.return_sequences),
    spec.Bidirectional: SumBidirectional,
})


def _stack(layers: tuple[spec.Layer, ...], shape: spec.Shape) -> nn.SequentialCell:
    """The cells of ``layers`` given the canonical shape of one example entering them."""
    return nn.SequentialCell([CELLS(layer, s) for layer, s in spec.with_shapes(layers, shape)])


def build_cell(task: spec.Task) -> nn.SequentialCell:
    return _stack(task.layers, task.input_shape)


def _weight_bias(layer: spec.Dense | spec.Conv2D, i: int, cell: nn.Cell) -> dict[str, tuple[Parameter, bool]]:
    return {f"{i}.kernel": (cell.weight, type(layer) is spec.Dense),  # nn.Dense: [out, in]
            f"{i}.bias": (cell.bias, False)}


def _lstm_params(layer: spec.LSTM, i: int, cell: nn.Cell) -> dict[str, tuple[Parameter, bool]]:
    return {f"{i}.w_ih": (cell.lstm.w_ih_list[0], False),
            f"{i}.w_hh": (cell.lstm.w_hh_list[0], False),
            f"{i}.bias": (cell.lstm.b_ih_list[0], False)}  # b_hh: zero and frozen


def _gru_params(layer: spec.GRU, i: int | str, cell: nn.Cell) -> dict[str, tuple[Parameter, bool]]:
    # the CPU nn.GRU (rnn_cells._gru_cell, one step at a time) has the canonical layout:
    # gates r, z, n, reset after the recurrent matmul, b_ih and b_hh both trained
    gru = cell.gru
    return {f"{i}.w_ih": (gru.w_ih_list[0], False), f"{i}.w_hh": (gru.w_hh_list[0], False),
            f"{i}.b_ih": (gru.b_ih_list[0], False), f"{i}.b_hh": (gru.b_hh_list[0], False)}


def _bidirectional_params(layer: spec.Bidirectional, i: int | str,
                          cell: nn.Cell) -> dict[str, tuple[Parameter, bool]]:
    return {name: v for d in ("fw", "bw") for j, inner in enumerate(layer.layers)
            for name, v in PARAMS(inner, f"{i}.{d}.{j}", getattr(cell, d)[j]).items()}


PARAMS = spec.LayerRules("mindspore adapter: parameters", {
    spec.Flatten: spec.no_params,
    spec.Dense: _weight_bias,
    spec.Conv2D: _weight_bias,
    spec.MaxPool2D: spec.no_params,
    spec.ReLU: spec.no_params,
    spec.Dropout: spec.no_params,
    spec.Embedding: lambda layer, i, cell: {f"{i}.table": (cell.embedding_table, False)},
    spec.LSTM: _lstm_params,
    # weight [out, in, 1, k]: the canonical [out, in, k] reshaped (see MindSporeAdapter.build)
    spec.Conv1D: lambda layer, i, cell: {f"{i}.kernel": (cell.conv.weight, False),
                                         f"{i}.bias": (cell.conv.bias, False)},
    spec.MaxPool1D: spec.no_params,
    spec.GRU: _gru_params,
    spec.Bidirectional: _bidirectional_params,
})


def canonical_to_mindspore(task: spec.Task, net: nn.SequentialCell) -> dict[str, tuple[Parameter, bool]]:
    """canonical name -> (MindSpore Parameter, transpose?); the transposed canonical array is
    reshaped to the parameter's shape (Conv1d's [out, in, 1, k]), and back on export."""
    return {name: v for i, layer in enumerate(task.layers) for name, v in PARAMS(layer, i, net[i]).items()}


# ------------------------------------------------------------------------- optimizer

_fused_adam = ops.MultitypeFuncGraph("fused_adam")


@_fused_adam.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                      "Tensor", "Tensor", "Tensor", "Tensor")
def _fused_adam_update(adam, b1_power, b2_power, lr, b1, b2, eps_hat, grad, param, m, v):
    return ops.depend(True, adam(param, m, v, b1_power, b2_power, lr, b1, b2, eps_hat, grad))


class AdamKernel(nn.Optimizer):
    """The spec's Adam or RMSprop in MindSpore's fused ``ops.Adam`` kernel, one call per tensor.

    The kernel computes m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    w -= lr*sqrt(1-b2p)/(1-b1p) * m/(sqrt(v) + e), with b1p, b2p the powers passed in.
    - Adam (Kingma & Ba, eps after bias correction): b1p = b1^t, b2p = b2^t and
      e = eps*sqrt(1-b2^t), recomputed every step: then the update is exactly
      lr*(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) (Kingma & Ba, Sec. 2).
    - RMSprop (eps outside the sqrt): b1 = 0 (so m = g), b2 = rho, b1p = b2p = 0 and e = eps:
      w -= lr*g/(sqrt(s) + eps) with s = rho*s + (1-rho)*g^2, the spec's formula.
    MindSpore's own optimizers differ: ``nn.Adam`` adds eps before the bias correction,
    ``nn.RMSProp`` puts it inside the sqrt, and ``experimental.optim.RMSprop`` (the formula as
    ~7 separate kernels per tensor) was 1.09x the hand-written ``nn.RMSProp`` loop on the MLP.
    Dense: every row of an embedding table is updated (no lazy/sparse Adam).
    """

    def __init__(self, params, lr: float, b1: float, b2: float, eps: float, bias_correction: bool):
        super().__init__(lr, params)
        self.bias_correction = bias_correction
        self.b1 = Tensor(b1, ms.float32)
        self.b2 = Tensor(b2, ms.float32)
        self.eps = float(eps)
        self.moment1 = self._parameters.clone(prefix="adam_m", init="zeros")
        self.moment2 = self._parameters.clone(prefix="adam_v", init="zeros")
        self.b1_power = Parameter(Tensor(1.0, ms.float32), name="adam_b1_power", requires_grad=False)
        self.b2_power = Parameter(Tensor(1.0, ms.float32), name="adam_b2_power", requires_grad=False)
        self.zero = Tensor(0.0, ms.float32)
        self.adam = ops.Adam()

    def construct(self, gradients):
        if self.bias_correction:
            b1_power = self.b1_power * self.b1  # b1^t
            b2_power = self.b2_power * self.b2  # b2^t
            ops.assign(self.b1_power, b1_power)
            ops.assign(self.b2_power, b2_power)
            eps_hat = self.eps * ops.sqrt(1.0 - b2_power)
        else:
            b1_power, b2_power = self.zero, self.zero
            eps_hat = self.zero + self.eps
        lr = self.get_lr()
        return self.hyper_map(
            ops.partial(_fused_adam, self.adam, b1_power, b2_power, lr, self.b1, self.b2, eps_hat),
            gradients, self._parameters, self.moment1, self.moment2)


OPTIMIZERS = spec.OptimizerRules("mindspore adapter: optimizers", {
    # v = m v + g; w -= lr v (dampening 0, no nesterov): the fused ops.SGD kernel
    spec.SGDMomentum: lambda opt, params: nn.SGD(params, learning_rate=opt.lr, momentum=opt.momentum),
    # eps outside the sqrt (nn.RMSProp has it inside), see AdamKernel
    spec.RMSprop: lambda opt, params: AdamKernel(params, opt.lr, 0.0, opt.rho, opt.eps, bias_correction=False),
    # eps after bias correction (nn.Adam has it before)
    spec.Adam: lambda opt, params: AdamKernel(params, opt.lr, opt.b1, opt.b2, opt.eps, bias_correction=True),
})


def make_optimizer(opt: spec.Optimizer, params: list[Parameter]) -> nn.Cell:
    return OPTIMIZERS(opt, params)


# ----------------------------------------------------------------------- step cells


class LossAndGrads(nn.Cell):
    """(mean loss, gradients w.r.t. ``weights``) without an optimizer step."""

    def __init__(self, net_with_loss: nn.Cell, weights):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, y):
        loss = self.net_with_loss(x, y)
        grads = self.grad(self.net_with_loss, self.weights)(x, y)
        return loss, grads


class EvalStep(nn.Cell):
    """(sum of per-example losses, number correct) for one batch."""

    def __init__(self, net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = nn.CrossEntropyLoss(reduction="sum")

    def construct(self, x, y):
        logits = self.net(x)
        correct = (ops.argmax(logits, 1).astype(y.dtype) == y).astype(ms.int32).sum()
        return self.loss(logits, y), correct


# --------------------------------------------------------------------------- adapter


# Thread counts applied in this process: MindSpore 2.10 has setters but no getters for them,
# and each can be set only once per process (a second call raises RuntimeError).
_APPLIED_THREADS: dict[str, int] = {}

# Actor (dispatch) threads. MindSpore's runtime adds these to the CPU kernel pool and warns
# when the sum exceeds the cores ("The total num of thread pool is 4, but the num of cpu core
# is 2"); idle actor threads busy-wait. With `threads` of them next to `threads` kernel
# threads on `threads` cores, steps were 1.5-2x slower at best and 5-40x slower whenever
# another process wanted a core (measured on 2 cores: mlp 6.3 vs 3.8 ms, lstm 57 vs 38 ms
# minimum; p50 under load 32 vs 6.6 ms and 1500 vs 36 ms). These models are chains of
# dependent ops with no inter-op parallelism to exploit, so one actor thread is used and the
# cell's thread budget goes to the kernel pool.
_DISPATCH_THREADS = 1


def _configure(mode: str, threads: int, launch_blocking: bool) -> None:
    """Device, execution mode and thread pools (all process-wide in MindSpore)."""
    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE if mode == "pynative" else ms.GRAPH_MODE)
    if launch_blocking:
        # PYNATIVE_MODE normally pipelines every op through two queue threads (frontend_queue,
        # backend_queue) before it runs on the kernel pool. On a few CPU cores those hand-offs
        # compete with the compute threads: train steps were 2-10x slower than with ops run
        # synchronously in the calling thread (2 busy shared cores: mlp 84 vs 13.5 ms, lenet
        # 199 vs 19 ms, lstm 101 vs 53 ms; no difference in GRAPH_MODE, so only set here).
        # Synchronous execution is what eager CPU training is in the other frameworks.
        ms.runtime.launch_blocking()
    # The harness builds one adapter per worker process; a later adapter in the same process
    # keeps the first one's thread settings (and thread_settings() reports those).
    try:  # CPU kernel thread pool (intra-op); replaces set_context(runtime_num_threads=)
        ms.device_context.cpu.op_tuning.threads_num(threads)
        _APPLIED_THREADS["intra_op"] = threads
    except RuntimeError:  # already set in this process
        pass
    try:  # actor/dispatch threads (inter-op); replaces set_context(inter_op_parallel_num=)
        ms.runtime.dispatch_threads_num(_DISPATCH_THREADS)
        _APPLIED_THREADS["inter_op"] = _DISPATCH_THREADS
    except RuntimeError:
        pass


def _avoid_reference_conv(tasks: list[spec.Task]) -> None:
    """Cap oneDNN at AVX2 for models with convolutions (before the first oneDNN primitive).

    MindSpore's CPU Conv2D hands oneDNN 3.10 (bundled) plain NCHW/OIHW memory. On an AVX-512
    host oneDNN then picks "jit_uni_ncsp:conv+ref:any", a wrapper around its *reference*
    convolution, for the forward and backward-data passes: LeNet-5 trains ~8x and evaluates
    ~25x slower than with the AVX2 kernels, where oneDNN uses im2col + JIT sgemm
    ("x64:gemm:jit"). ``nn.Conv2d`` has no NHWC mode on CPU. The cap costs the matmul-only
    models some speed (AVX2 instead of AVX-512 sgemm), so it is applied only with Conv2D.
    oneDNN reads the variable at its first primitive, once per process (so ``fwbench check``,
    one process for all tasks, sets it before its first task: ``prepare_process``; without,
    its cnn probe took 5 min of 6); a value set by the user wins.
    """
    convs = (spec.Conv2D, spec.Conv1D)  # Conv1d is a Conv2D
    if any(isinstance(layer, convs) for task in tasks for layer in task.layers):
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


class _Multiply(nn.Cell):
    """x * y as a Cell: compiled in GRAPH_MODE, op by op in PyNative, like the train step."""

    def construct(self, x, y):
        return x * y


class MindSporeAdapter(Adapter):
    layer_rules = (CELLS, PARAMS)

    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        self.mode = str(self.options.get("mode", "graph")).lower()
        if self.mode not in ("graph", "pynative"):
            raise ValueError(f"mindspore adapter: unknown mode {self.mode!r}")
        # PYNATIVE_MODE only: run ops synchronously (see _configure); options
        # {"launch_blocking": False} keeps MindSpore's default asynchronous pipeline.
        self.launch_blocking = self.mode == "pynative" and bool(self.options.get("launch_blocking", True))
        _avoid_reference_conv([task])
        _configure(self.mode, threads, self.launch_blocking)
        self._training: bool | None = None
        if self.options.get("deterministic"):
            ms.set_deterministic(True)
        if self.options.get("deterministic") or "seed" in self.options:
            ms.set_seed(int(self.options.get("seed", 0)))  # dropout masks

    @classmethod
    def prepare_process(cls, tasks: list[spec.Task]) -> None:
        _avoid_reference_conv(tasks)

    def determinism(self) -> dict[str, Any]:
        on = bool(self.options.get("deterministic"))
        seeded = on or "seed" in self.options
        return {"set_deterministic": on, "set_seed": self.options.get("seed", 0) if seeded else None}

    @classmethod
    def framework_version(cls) -> str:
        return ms.__version__

    @classmethod
    def device_unsupported(cls, platform: str) -> str | None:
        # The adapter runs MindSpore on the CPU (``_configure``); GPU builds are not wired up.
        if platform == "cpu":
            return None
        has_gpu = getattr(getattr(ms, "hal", None), "is_available", lambda _: False)("GPU")
        return (f"mindspore {ms.__version__}: " + ("fwbench runs MindSpore on the CPU only"
                                                   if has_gpu else "a build without GPU support"))

    def flush_denormals(self) -> str:
        # Measured on 2.10 (CPU): GRAPH_MODE kernels flush, PyNative ops do not, and there
        # is no switch for either.
        return "GRAPH_MODE flushes by default" if self.mode == "graph" else ""

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _Multiply()(Tensor(a), Tensor(b)).asnumpy()

    def thread_settings(self) -> dict[str, Any]:
        # What this process applied through device_context.cpu.op_tuning.threads_num (CPU kernel
        # pool) and runtime.dispatch_threads_num (actor threads; see _DISPATCH_THREADS). There
        # are no getters in 2.10; with GLOG_v=1 the runtime logs "The actor thread number: A,
        # the kernel thread number: K" when its graph scheduler starts.
        return {
            "intra_op": _APPLIED_THREADS.get("intra_op"),
            "inter_op": _APPLIED_THREADS.get("inter_op"),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
            "mode": "PYNATIVE_MODE" if ms.get_context("mode") == ms.PYNATIVE_MODE else "GRAPH_MODE",
            "launch_blocking": self.launch_blocking,
        }

    def build(self, params: dict[str, np.ndarray]) -> None:
        self.net = build_cell(self.task)
        self.names = canonical_to_mindspore(self.task, self.net)
        self.shapes = {name: params[name].shape for name in self.names}  # canonical, for export
        for name, (param, transpose) in self.names.items():
            value = (params[name].T if transpose else params[name]).reshape(param.shape)
            param.set_data(Tensor(np.ascontiguousarray(value, dtype=np.float32)))
        for _, cell in self.net.cells_and_names():  # nested ones too (a Bidirectional's)
            if isinstance(cell, LastHidden):
                b_hh = cell.lstm.b_hh_list[0]
                b_hh.set_data(Tensor(np.zeros(b_hh.shape, np.float32)))
        trainable = self.net.trainable_params()
        self.opt = make_optimizer(self.task.optimizer, trainable)
        net_with_loss = nn.WithLossCell(self.net, nn.CrossEntropyLoss())
        self.train_cell = nn.TrainOneStepCell(net_with_loss, self.opt)
        self.grad_cell = LossAndGrads(net_with_loss, self.opt.parameters)
        self.eval_cell = EvalStep(self.net)
        self._training = None

    def _set_train(self, mode: bool) -> None:
        # Only Dropout depends on this; each top-level Cell's compiled graph is cached with
        # the flag it had at compile time, so toggle it only when it changes.
        if self._training is not mode:
            self.net.set_train(mode)
            self._training = mode

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        self._set_train(True)
        loss = self.train_cell(Tensor(x), Tensor(y))
        return float(loss.asnumpy())

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        self._set_train(False)
        loss, correct = self.eval_cell(Tensor(x), Tensor(y))
        return float(loss.asnumpy()), int(correct.asnumpy())

    def logits(self, x: np.ndarray) -> np.ndarray:
        self._set_train(False)
        return self.net(Tensor(x)).asnumpy()

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        self._set_train(False)  # same function as training for these layers; no dropout noise
        loss, grads = self.grad_cell(Tensor(x), Tensor(y))
        by_param = {p.name: g for p, g in zip(self.opt.parameters, grads)}
        return float(loss.asnumpy()), self._export({n: by_param[p.name] for n, (p, _) in self.names.items()})

    def export_params(self) -> dict[str, np.ndarray]:
        return self._export({n: p for n, (p, _) in self.names.items()})

    def _export(self, tensors: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for name, (_, transpose) in self.names.items():
            v = tensors[name].asnumpy()
            v = v.reshape(self.shapes[name][::-1]) if transpose else v.reshape(self.shapes[name])
            out[name] = np.array(v.T if transpose else v, dtype=np.float32, order="C", copy=True)
        return out
