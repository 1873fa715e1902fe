"""PyTorch adapter: eager ``nn.Module`` built from the layer list, ``torch.optim``.

Layout notes: ``nn.Linear.weight`` is [out, in] (canonical Dense kernel transposed);
``nn.Conv2d`` and NCHW flattening match the canonical layout; ``nn.LSTM`` uses gate order
i, f, g, o like the spec but has two biases: the canonical bias goes into ``bias_ih`` and
``bias_hh`` stays zero and frozen, or the bias would learn at twice the rate of every other
backend.
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


MODULES = spec.LayerRules("torch adapter: modules", {
    spec.Flatten: lambda layer, shape: nn.Flatten(),
    spec.Dense: lambda layer, shape: nn.Linear(shape[0], layer.units),
    spec.Conv2D: lambda layer, shape: nn.Conv2d(shape[0], layer.filters, layer.kernel),
    spec.MaxPool2D: lambda layer, shape: nn.MaxPool2d(layer.pool),
    spec.ReLU: lambda layer, shape: nn.ReLU(),
    spec.Dropout: lambda layer, shape: nn.Dropout(layer.rate),
    spec.Embedding: lambda layer, shape: nn.Embedding(layer.vocab, layer.dim),
    spec.LSTM: lambda layer, shape: LastHidden(shape[-1], layer.units),
})


def build_module(task: spec.Task) -> nn.Sequential:
    return nn.Sequential(*(MODULES(layer, shape) for _, layer, shape in spec.layer_inputs(task)))


def _weight_bias(layer: spec.Dense | spec.Conv2D, i: int) -> dict[str, tuple[str, bool]]:
    return {f"{i}.kernel": (f"{i}.weight", type(layer) is spec.Dense),  # Linear: [out, in]
            f"{i}.bias": (f"{i}.bias", False)}


def _lstm_keys(layer: spec.LSTM, i: int) -> dict[str, tuple[str, bool]]:
    return {f"{i}.w_ih": (f"{i}.lstm.weight_ih_l0", False),
            f"{i}.w_hh": (f"{i}.lstm.weight_hh_l0", False),
            f"{i}.bias": (f"{i}.lstm.bias_ih_l0", False)}  # bias_hh_l0: zero and frozen


STATE_KEYS = spec.LayerRules("torch adapter: state_dict keys", {
    spec.Flatten: spec.no_params,
    spec.Dense: _weight_bias,
    spec.Conv2D: _weight_bias,
    spec.MaxPool2D: spec.no_params,
    spec.ReLU: spec.no_params,
    spec.Dropout: spec.no_params,
    spec.Embedding: lambda layer, i: {f"{i}.table": (f"{i}.weight", False)},
    spec.LSTM: _lstm_keys,
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
    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable once per process, before any parallel work
            pass
        self.names = canonical_to_torch(task)
        if self.options.get("deterministic"):
            torch.use_deterministic_algorithms(True)
            torch.manual_seed(int(self.options.get("seed", 0)))  # dropout masks

    def determinism(self) -> dict[str, Any]:
        return {"use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "manual_seed": self.options.get("seed") if self.options.get("deterministic") else None}

    @classmethod
    def framework_version(cls) -> str:
        return torch.__version__

    def flush_denormals(self) -> str:
        # PyTorch does not flush denormals on CPU by default (TensorFlow and XLA do): a
        # default-initialised LSTM ran 9x slower here because of it.
        return "torch.set_flush_denormal(True)" if torch.set_flush_denormal(True) else ""

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # large enough to run on every intra-op thread
            return (torch.from_numpy(a) * torch.from_numpy(b)).numpy()

    def thread_settings(self) -> dict[str, Any]:
        return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}

    def build(self, params: dict[str, np.ndarray]) -> None:
        self.model = build_module(self.task)
        state = self.model.state_dict()
        for name, (key, transpose) in self.names.items():
            value = params[name].T if transpose else params[name]
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
        for key in state:
            if key.endswith("bias_hh_l0"):
                state[key] = torch.zeros_like(state[key])
        self.model.load_state_dict(state)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.task.optimizer, trainable)
        self.loss_fn = nn.CrossEntropyLoss()
        if self.options.get("compile"):
            self.model = torch.compile(self.model)

    def _tensors(self, x: np.ndarray, y: np.ndarray | None = None):
        tx = torch.from_numpy(x)
        ty = None if y is None else torch.from_numpy(y.astype(np.int64))
        return tx, ty

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        tx, ty = self._tensors(x, y)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(tx), ty)
        loss.backward()
        self.opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        tx, ty = self._tensors(x, y)
        self.model.eval()
        out = self.model(tx)
        loss = nn.functional.cross_entropy(out, ty, reduction="sum").item()
        return loss, int((out.argmax(1) == ty).sum().item())

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        return self.model(torch.from_numpy(x)).numpy()

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        tx, ty = self._tensors(x, y)
        self.model.eval()  # same function as training for these layers; no dropout noise
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
            v = tensors[key].detach().numpy()  # shares memory with the live tensor: copy
            out[name] = np.array(v.T if transpose else v, dtype=np.float32, order="C", copy=True)
        return out
