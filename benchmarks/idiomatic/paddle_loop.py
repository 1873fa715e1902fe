"""PaddlePaddle reference loop: dygraph ``paddle.nn.Layer`` + ``paddle.optimizer``, as Paddle's guides train.

The hand-written loop of Paddle's training guides (forward, loss, ``loss.backward()``,
``opt.step()``, ``opt.clear_grad()``, not the high-level ``paddle.Model``); LeNet is written as
``paddle.vision.models.LeNet`` (``features`` and ``fc`` Sequentials of ``nn.Conv2D``,
``nn.ReLU``, ``nn.MaxPool2D(2, 2)``, ``nn.Linear``) with the task's layers (that one has a 3x3
'same' first conv for 28x28 input and no ReLU between its dense layers). Paddle's default
initialisers, NCHW (Paddle's native layout), eager (dygraph) mode, the ``paddle.optimizer``
classes with the task's hyperparameters (``RMSProp`` has eps inside the sqrt, the adapter's
outside: the same work), ``nn.CrossEntropyLoss``. Every task, the course's too (cnn, gru, bigru,
cnn_gru): ``nn.GRU`` layers, ``nn.Conv1D`` and ``nn.MaxPool1D`` channels-first (their default)
between transposes of the [N, T, C] rows. Independent of fwbench: takes NumPy batches, returns
the loss as a Python float.

Two lines the guides do not have: ``paddle.base.core.set_num_threads(threads)`` (Paddle's
kernels follow OMP_NUM_THREADS, which fwbench's worker sets, and run on one thread without it;
this internal call, the only setter, makes the count independent of the environment, as in the
adapter), and FTZ/DAZ in the MXCSR, fwbench's default denormal policy (Paddle has no switch and
does not flush; the adapter does the same).
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from typing import Callable

os.environ.setdefault("GLOG_minloglevel", "2")  # errors only

import numpy as np

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="No ccache found")
    import paddle
    import paddle.nn.functional as F
    from paddle import nn


class LeNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2D(1, 6, 5), nn.ReLU(), nn.MaxPool2D(2, 2),
            nn.Conv2D(6, 16, 5), nn.ReLU(), nn.MaxPool2D(2, 2))
        self.fc = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                nn.Linear(84, 10))

    def forward(self, x):
        return self.fc(paddle.flatten(self.features(x), 1))


class LSTMClassifier(nn.Layer):
    def __init__(self, vocab: int = 20000, dim: int = 64, units: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, units)
        self.fc = nn.Linear(units, 2)

    def forward(self, x):
        _, (h, _) = self.lstm(self.embedding(x))
        return self.fc(h[-1])  # the last hidden state


class CNN(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2D(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.dropout = nn.Dropout(0.4)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(self.dropout(F.relu(self.fc1(paddle.flatten(x, 1)))))


class GRUStack(nn.Layer):
    """GRU 128 (every step) -> GRU 256, the last state."""

    def __init__(self, n_in: int):
        super().__init__()
        self.gru1 = nn.GRU(n_in, 128)
        self.gru2 = nn.GRU(128, 256)

    def forward(self, x):
        out, _ = self.gru1(x)
        _, h = self.gru2(out)
        return h[-1]


class GRUClassifier(nn.Layer):
    """gru: the stack over the 28 rows; bigru: a second stack over the reversed rows, last
    states summed; cnn_gru: conv1d 32@5 'same' + max-pool 2 over the rows first."""

    def __init__(self, task_name: str):
        super().__init__()
        self.conv = nn.Conv1D(28, 32, 5, padding=2) if task_name == "cnn_gru" else None
        self.pool = nn.MaxPool1D(2) if task_name == "cnn_gru" else None
        self.fw = GRUStack(32 if task_name == "cnn_gru" else 28)
        self.bw = GRUStack(28) if task_name == "bigru" else None
        self.fc = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 10))

    def forward(self, x):  # x: [N, T, C]
        if self.conv is not None:  # Conv1D and MaxPool1D are channels-first: [N, C, T]
            x = self.pool(F.relu(self.conv(x.transpose([0, 2, 1])))).transpose([0, 2, 1])
        h = self.fw(x)
        if self.bw is not None:
            h = h + self.bw(paddle.flip(x, [1]))
        return self.fc(h)


def _model_and_optimizer(task_name: str):
    if task_name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
        return model, paddle.optimizer.RMSProp(1e-3, rho=0.9, epsilon=1e-7, parameters=model.parameters())
    if task_name == "lenet":
        model = LeNet()
        return model, paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters())
    if task_name == "lstm":
        model = LSTMClassifier()
    elif task_name == "cnn":
        model = CNN()
    elif task_name in ("gru", "bigru", "cnn_gru"):
        model = GRUClassifier(task_name)
    else:
        raise ValueError(f"unknown task {task_name!r}")
    return model, paddle.optimizer.Adam(1e-3, epsilon=1e-7, parameters=model.parameters())


def _flush_denormals() -> None:
    """FTZ and DAZ in this thread's MXCSR (glibc x86-64 fenv_t: its last word); the OpenMP
    workers Paddle starts later follow it."""
    if platform.machine() == "x86_64":
        libm = ctypes.CDLL("libm.so.6")
        env = (ctypes.c_uint32 * 8)()
        if libm.fegetenv(env) == 0:
            env[7] |= 0x8040
            libm.fesetenv(env)


def make_step(task_name: str, threads: int) -> Callable[[np.ndarray, np.ndarray], float]:
    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(threads)  # MKL + OpenMP (else OMP_NUM_THREADS, or 1)
    _flush_denormals()  # not in the docs: fwbench's default policy (--denormals flush)
    model, optimizer = _model_and_optimizer(task_name)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step(x: np.ndarray, y: np.ndarray) -> float:
        # NCHW float32 images / int32 tokens and int32 labels go in as they come.
        loss = loss_fn(model(paddle.to_tensor(x)), paddle.to_tensor(y))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return loss.item()

    return step
