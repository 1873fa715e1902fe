"""PyTorch reference loop: eager ``nn.Module`` + ``torch.optim``, as PyTorch's tutorials train.

Follows "Learn the Basics: Optimizing Model Parameters" (the ``train_loop``: forward, loss,
``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad()``, ``loss.item()``) and, for
LeNet, the "Neural Networks" tutorial of "Deep Learning with PyTorch: A 60 Minute Blitz" (the
same LeNet-5 on 32x32 with ``F.max_pool2d(F.relu(conv(x)), 2)``). PyTorch's default
initialisers, NCHW (PyTorch's native layout: no conversion), eager mode as the tutorials do.
Independent of fwbench: takes NumPy batches, returns the loss as a Python float.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 20000, dim: int = 64, units: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, units, batch_first=True)
        self.fc = nn.Linear(units, 2)

    def forward(self, x):
        _, (h, _) = self.lstm(self.embedding(x))
        return self.fc(h[-1])  # the last hidden state


def _model_and_optimizer(task_name: str):
    if task_name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
        return model, torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    if task_name == "lenet":
        model = LeNet()
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if task_name == "lstm":
        model = LSTMClassifier()
        return model, torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    raise ValueError(f"unknown task {task_name!r}")


def make_step(task_name: str, threads: int) -> Callable[[np.ndarray, np.ndarray], float]:
    torch.set_num_threads(threads)  # intra-op pool ("CPU threading and TorchScript inference")
    try:
        torch.set_num_interop_threads(threads)  # only before the first parallel work
    except RuntimeError:
        pass
    # Not in the tutorials, but fwbench's default policy (--denormals flush) for every
    # framework; PyTorch is the one that does not flush on CPU by default.
    torch.set_flush_denormal(True)
    model, optimizer = _model_and_optimizer(task_name)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step(x: np.ndarray, y: np.ndarray) -> float:
        # NCHW float32 images / int32 tokens are used as they come (zero-copy from_numpy);
        # CrossEntropyLoss wants int64 class indices, hence .long().
        pred = model(torch.from_numpy(x))
        loss = loss_fn(pred, torch.from_numpy(y).long())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step
