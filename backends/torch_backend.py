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


def build_module(task: spec.Task) -> nn.Sequential:
    mods: list[nn.Module] = []
    shape = task.input_shape
    for layer in task.layers:
        if isinstance(layer, spec.Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, spec.Dense):
            mods.append(nn.Linear(shape[0], layer.units))
        elif isinstance(layer, spec.Conv2D):
            mods.append(nn.Conv2d(shape[0], layer.filters, layer.kernel))
        elif isinstance(layer, spec.MaxPool2D):
            mods.append(nn.MaxPool2d(layer.pool))
        elif isinstance(layer, spec.ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, spec.Dropout):
            mods.append(nn.Dropout(layer.rate))
        elif isinstance(layer, spec.Embedding):
            mods.append(nn.Embedding(layer.vocab, layer.dim))
        elif isinstance(layer, spec.LSTM):
            mods.append(LastHidden(shape[-1], layer.units))
        else:
            raise TypeError(f"torch adapter: unsupported layer {layer!r}")
        shape = spec.output_shape(layer, shape)
    return nn.Sequential(*mods)


def canonical_to_torch(task: spec.Task) -> dict[str, tuple[str, bool]]:
    """canonical name -> (torch state_dict key, transpose?)"""
    out: dict[str, tuple[str, bool]] = {}
    for i, layer in enumerate(task.layers):
        if isinstance(layer, (spec.Dense, spec.Conv2D)):
            out[f"{i}.kernel"] = (f"{i}.weight", isinstance(layer, spec.Dense))
            out[f"{i}.bias"] = (f"{i}.bias", False)
        elif isinstance(layer, spec.Embedding):
            out[f"{i}.table"] = (f"{i}.weight", False)
        elif isinstance(layer, spec.LSTM):
            out[f"{i}.w_ih"] = (f"{i}.lstm.weight_ih_l0", False)
            out[f"{i}.w_hh"] = (f"{i}.lstm.weight_hh_l0", False)
            out[f"{i}.bias"] = (f"{i}.lstm.bias_ih_l0", False)
    return out


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
        opt = self.task.optimizer
        if isinstance(opt, spec.SGDMomentum):  # v = m v + g; w -= lr v (dampening 0)
            self.opt = torch.optim.SGD(trainable, lr=opt.lr, momentum=opt.momentum)
        elif isinstance(opt, spec.RMSprop):  # eps outside the sqrt, as the spec says
            self.opt = torch.optim.RMSprop(trainable, lr=opt.lr, alpha=opt.rho, eps=opt.eps)
        elif isinstance(opt, spec.Adam):  # Kingma & Ba with eps after bias correction
            self.opt = torch.optim.Adam(trainable, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps)
        else:
            raise TypeError(f"torch adapter: unsupported optimizer {opt!r}")
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
