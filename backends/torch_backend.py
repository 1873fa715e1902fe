"""PyTorch adapter: eager ``nn.Module`` built from the layer list, ``torch.optim``.

Layout notes: ``nn.Linear.weight`` is [out, in] (canonical Dense kernel transposed);
``nn.Conv2d`` and NCHW flattening match the canonical layout; ``nn.LSTM`` uses gate order
i, f, g, o like the spec but has two biases: the canonical bias goes into ``bias_ih`` and
``bias_hh`` stays zero and frozen, or the bias would learn at twice the rate of every other
backend. ``nn.GRU`` has the spec's GRU exactly (gates r, z, n, reset after the recurrent
matmul, ``bias_ih`` and ``bias_hh``, both trained); ``nn.Conv1d`` weights are the canonical
[out, in, k], applied to transposed views of the [N, T, C] sequences. Dropout: ``nn.Dropout``
in ``train()``, masks from torch's RNG (seeded from ``options["seed"]`` when given); every
probe (logits, gradients, evaluation) runs in ``eval()``, where it is the identity.

``options["float64"]``: the model, its optimizer state and the inputs in float64 (exports stay
float32). The tests use it to cross-check the NumPy reference's float64 gradients, the
ground truth of ``fwbench check``, with PyTorch's autograd.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fwbench.harness import spec
from fwbench.harness.adapter import Adapter


class LastHidden(nn.Module):
    """Single-layer LSTM returning h_T."""

    def __init__(self, n_in: int, units: int):
        super().__init__()
        self.lstm = nn.LSTM(n_in, units, batch_first=True)
        self.lstm.bias_hh_l0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return h[-1]


class GRULayer(nn.Module):
    """One ``nn.GRU`` layer (its formula is the spec's: gates r, z, n, reset after the
    recurrent matmul, two biases): every h_t [N, T, H] or the last state h_T [N, H]."""

    def __init__(self, n_in: int, units: int, return_sequences: bool):
        super().__init__()
        self.gru = nn.GRU(n_in, units, batch_first=True)
        self.return_sequences = return_sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.gru(x)
        return out if self.return_sequences else h[-1]


class Conv1dNTC(nn.Module):
    """``nn.Conv1d`` on the spec's channels-last sequences [N, T, C] (transposed views)."""

    def __init__(self, n_in: int, layer: spec.Conv1D):
        super().__init__()
        self.conv = nn.Conv1d(n_in, layer.filters, layer.kernel, padding=layer.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class MaxPool1dNTC(nn.Module):
    def __init__(self, pool: int):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool1d(x.transpose(1, 2), self.pool).transpose(1, 2)


class SumBidirectional(nn.Module):
    """Two independent stacks, ``bw`` run on the time-reversed input, last states summed.

    Not ``nn.GRU(bidirectional=True)``: from its second layer on, each direction reads the
    concatenation of both directions' outputs, which is not the spec's two stacks."""

    def __init__(self, layer: spec.Bidirectional, shape: spec.Shape):
        super().__init__()
        self.fw, self.bw = _stack(layer.layers, shape), _stack(layer.layers, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fw(x) + self.bw(torch.flip(x, (1,)))


MODULES = spec.LayerRules("torch adapter: modules", {
    spec.Flatten: lambda layer, shape: nn.Flatten(),
    spec.Dense: lambda layer, shape: nn.Linear(shape[0], layer.units),
    # padding "same" of nn.Conv2d/Conv1d: (k-1)//2 before, k//2 after, as the spec
    spec.Conv2D: lambda layer, shape: nn.Conv2d(shape[0], layer.filters, layer.kernel, padding=layer.padding),
    spec.MaxPool2D: lambda layer, shape: nn.MaxPool2d(layer.pool),
    spec.ReLU: lambda layer, shape: nn.ReLU(),
    spec.Dropout: lambda layer, shape: nn.Dropout(layer.rate),
    spec.Embedding: lambda layer, shape: nn.Embedding(layer.vocab, layer.dim),
    spec.LSTM: lambda layer, shape: LastHidden(shape[-1], layer.units),
    spec.Conv1D: lambda layer, shape: Conv1dNTC(shape[-1], layer),
    spec.MaxPool1D: lambda layer, shape: MaxPool1dNTC(layer.pool),
    spec.GRU: lambda layer, shape: GRULayer(shape[-1], layer.units, layer.return_sequences),
    spec.Bidirectional: SumBidirectional,
})


def _stack(layers: tuple[spec.Layer, ...], shape: spec.Shape) -> nn.Sequential:
    """The modules of ``layers`` given the canonical shape of one example entering them."""
    return nn.Sequential(*(MODULES(layer, s) for layer, s in spec.with_shapes(layers, shape)))


def build_module(task: spec.Task) -> nn.Sequential:
    return _stack(task.layers, task.input_shape)


def _weight_bias(layer: spec.Dense | spec.Conv2D, i: int) -> dict[str, tuple[str, bool]]:
    return {f"{i}.kernel": (f"{i}.weight", type(layer) is spec.Dense),  # Linear: [out, in]
            f"{i}.bias": (f"{i}.bias", False)}


def _lstm_keys(layer: spec.LSTM, i: int) -> dict[str, tuple[str, bool]]:
    return {f"{i}.w_ih": (f"{i}.lstm.weight_ih_l0", False),
            f"{i}.w_hh": (f"{i}.lstm.weight_hh_l0", False),
            f"{i}.bias": (f"{i}.lstm.bias_ih_l0", False)}  # bias_hh_l0: zero and frozen


def _gru_keys(layer: spec.GRU, i: int | str) -> dict[str, tuple[str, bool]]:
    # nn.GRU has the canonical layout: gates r, z, n; b_ih and b_hh both trained
    return {f"{i}.{role}": (f"{i}.gru.{key}_l0", False) for role, key in
            (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"))}


def _bidirectional_keys(layer: spec.Bidirectional, i: int | str) -> dict[str, tuple[str, bool]]:
    # canonical "<i>.fw.<j>.<role>" is the module path "<i>.fw.<j>" of SumBidirectional
    return {name: key for d in ("fw", "bw") for j, inner in enumerate(layer.layers)
            for name, key in STATE_KEYS(inner, f"{i}.{d}.{j}").items()}


STATE_KEYS = spec.LayerRules("torch adapter: state_dict keys", {
    spec.Flatten: spec.no_params,
    spec.Dense: _weight_bias,
    spec.Conv2D: _weight_bias,
    spec.MaxPool2D: spec.no_params,
    spec.ReLU: spec.no_params,
    spec.Dropout: spec.no_params,
    spec.Embedding: lambda layer, i: {f"{i}.table": (f"{i}.weight", False)},
    spec.LSTM: _lstm_keys,
    spec.Conv1D: lambda layer, i: {f"{i}.kernel": (f"{i}.conv.weight", False),  # [out, in, k]
                                   f"{i}.bias": (f"{i}.conv.bias", False)},
    spec.MaxPool1D: spec.no_params,
    spec.GRU: _gru_keys,
    spec.Bidirectional: _bidirectional_keys,
})


def canonical_to_torch(task: spec.Task) -> dict[str, tuple[str, bool]]:
    """canonical name -> (torch state_dict key, transpose?)"""
    return {name: key for i, layer in enumerate(task.layers) for name, key in STATE_KEYS(layer, i).items()}


OPTIMIZERS = spec.OptimizerRules("torch adapter: optimizers", {
    # v = m v + g; w -= lr v (dampening 0)
    spec.SGDMomentum: lambda opt, params: torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum),
    # eps outside the sqrt, as the spec says
    spec.RMSprop: lambda opt, params: torch.optim.RMSprop(params, lr=opt.lr, alpha=opt.rho, eps=opt.eps),
    # Kingma & Ba with eps after bias correction
    spec.Adam: lambda opt, params: torch.optim.Adam(params, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps),
})


def make_optimizer(opt: spec.Optimizer, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return OPTIMIZERS(opt, params)


class TorchAdapter(Adapter):
    layer_rules = (MODULES, STATE_KEYS)

    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable once per process, before any parallel work
            pass
        self.names = canonical_to_torch(task)
        self.device = torch.device("cuda") if self.gpu else None  # None: the CPU, no .to()
        self.float64 = bool(self.options.get("float64"))  # read once: _tensors runs every step
        if self.options.get("deterministic"):
            torch.use_deterministic_algorithms(True)
        if self.options.get("deterministic") or "seed" in self.options:
            torch.manual_seed(int(self.options.get("seed", 0)))  # dropout masks

    def determinism(self) -> dict[str, Any]:
        seeded = self.options.get("deterministic") or "seed" in self.options
        return {"use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "manual_seed": self.options.get("seed", 0) if seeded else None}

    @classmethod
    def framework_version(cls) -> str:
        return torch.__version__

    @classmethod
    def device_unsupported(cls, platform: str) -> str | None:
        if platform == "cpu" or torch.cuda.is_available():
            return None
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a build without CUDA"
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"

    def device_settings(self) -> dict[str, Any]:
        # float32 as on the CPU: cuDNN convolutions and RNNs default to TF32 in PyTorch.
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        if hasattr(matmul, "fp32_precision"):  # PyTorch >= 2.9 (the old flags are deprecated)
            matmul.fp32_precision = "ieee"
            cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = "ieee"
            return {"cuda.matmul.fp32_precision": matmul.fp32_precision,
                    "cudnn.conv.fp32_precision": cudnn.conv.fp32_precision,
                    "cudnn.rnn.fp32_precision": cudnn.rnn.fp32_precision,
                    "cudnn.benchmark": cudnn.benchmark}
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        return {"cuda.matmul.allow_tf32": matmul.allow_tf32, "cudnn.allow_tf32": cudnn.allow_tf32,
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "cudnn.benchmark": cudnn.benchmark}

    def device_versions(self) -> dict[str, Any]:
        return {"cuda": torch.version.cuda, "cudnn": str(torch.backends.cudnn.version())}

    def memory_peak(self) -> dict[str, Any]:
        if not self.gpu:
            return {}
        return {"source": "torch.cuda.max_memory_allocated / max_memory_reserved",
                "counts": "tensors allocated through PyTorch's caching allocator (peak over the "
                          "cell); reserved: the blocks it held from CUDA, cached free ones included",
                "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                "reserved_peak_mib": torch.cuda.max_memory_reserved() / 2**20}

    def gemm(self, n: int):
        a, b = (torch.rand(n, n, device=self.device) for _ in range(2))
        c = torch.empty(n, n, device=self.device)

        def run(k: int) -> None:
            for _ in range(k):
                torch.mm(a, b, out=c)
            if self.gpu:
                torch.cuda.synchronize()

        return run

    def flush_denormals(self) -> str:
        # PyTorch does not flush denormals on CPU by default (TensorFlow and XLA do): a
        # default-initialised LSTM ran 9x slower here because of it.
        return "torch.set_flush_denormal(True)" if torch.set_flush_denormal(True) else ""

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # large enough to run on every intra-op thread
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            if self.device is not None:
                ta, tb = ta.to(self.device), tb.to(self.device)
            return (ta * tb).cpu().numpy()

    def thread_settings(self) -> dict[str, Any]:
        return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}

    def build(self, params: dict[str, np.ndarray]) -> None:
        self.model = build_module(self.task)
        state = self.model.state_dict()
        for name, (key, transpose) in self.names.items():
            value = params[name].T if transpose else params[name]
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
        for key in state:
            if key.endswith("lstm.bias_hh_l0"):  # LastHidden's frozen second bias (not GRU's)
                state[key] = torch.zeros_like(state[key])
        self.model.load_state_dict(state)
        if self.float64:
            self.model.double()
        if self.device is not None:
            self.model.to(self.device)  # before the optimizer: its state follows the parameters
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.task.optimizer, trainable)
        self.loss_fn = nn.CrossEntropyLoss()
        if self.options.get("compile"):
            self.model = torch.compile(self.model)
        self._training: bool | None = None

    def _tensors(self, x: np.ndarray, y: np.ndarray | None = None):
        if self.float64 and x.dtype.kind == "f":
            x = x.astype(np.float64)
        tx = torch.from_numpy(x)
        ty = None if y is None else torch.from_numpy(y.astype(np.int64))
        if self.device is not None:
            tx, ty = tx.to(self.device), None if ty is None else ty.to(self.device)
        return tx, ty

    def _set_train(self, mode: bool) -> None:
        # Module.train()/eval() walks every submodule; only Dropout reads the flag, so set it
        # when it changes, not on every step (evaluation between epochs switches it back).
        if self._training is not mode:
            self.model.train(mode)
            self._training = mode

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        tx, ty = self._tensors(x, y)
        self._set_train(True)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(tx), ty)
        loss.backward()
        self.opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        tx, ty = self._tensors(x, y)
        self._set_train(False)
        out = self.model(tx)
        loss = nn.functional.cross_entropy(out, ty, reduction="sum").item()
        return loss, int((out.argmax(1) == ty).sum().item())

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self._set_train(False)
        return self.model(self._tensors(x)[0]).cpu().numpy()

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        tx, ty = self._tensors(x, y)
        self._set_train(False)  # evaluation mode: no dropout noise
        self.model.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(tx), ty)
        loss.backward()
        named = dict(self._module().named_parameters())
        return loss.item(), self._export({k: p.grad for k, p in named.items()})

    def export_params(self) -> dict[str, np.ndarray]:
        return self._export(dict(self._module().named_parameters()))

    def _module(self) -> nn.Module:
        return getattr(self.model, "_orig_mod", self.model)

    def _export(self, tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        out = {}
        for name, (key, transpose) in self.names.items():
            v = tensors[key].detach().cpu().numpy()  # may share the live tensor's memory: copy
            out[name] = np.array(v.T if transpose else v, dtype=np.float32, order="C", copy=True)
        return out
