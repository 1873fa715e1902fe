"""MindSpore reference loop: ``nn.Cell`` + ``nn.TrainOneStepCell`` in GRAPH_MODE on the CPU.

Follows MindSpore's LeNet-5 tutorial and model-zoo ``LeNet5`` (``nn.Conv2d(..., pad_mode="valid")``,
``nn.MaxPool2d(kernel_size=2, stride=2)``, ``nn.Dense``; here with conv biases, which the task
has), trained the way MindSpore's "Model training" docs build the step by hand:
``nn.WithLossCell`` + ``nn.TrainOneStepCell`` with the tutorials' loss
``nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")`` and MindSpore's own
optimizers (``nn.RMSProp``, ``nn.Momentum`` as in the LeNet tutorial, ``nn.Adam``), default
initialisers, NCHW (``nn.Conv2d``'s only CPU layout: no conversion). The thread budget goes to
both setters of MindSpore 2.10's runtime (``device_context.cpu.op_tuning.threads_num``, kernel
pool; ``runtime.dispatch_threads_num``, actor threads), as a user reads the API docs.
Independent of fwbench: takes NumPy batches, returns the loss as a Python float.
"""

from __future__ import annotations

import os
from typing import Callable

os.environ.setdefault("GLOG_v", "3")  # errors only

import mindspore as ms
import numpy as np
from mindspore import nn


class LeNet5(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, pad_mode="valid", has_bias=True)
        self.conv2 = nn.Conv2d(6, 16, 5, pad_mode="valid", has_bias=True)
        self.fc1 = nn.Dense(16 * 5 * 5, 120)
        self.fc2 = nn.Dense(120, 84)
        self.fc3 = nn.Dense(84, 10)
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()

    def construct(self, x):
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class LSTMClassifier(nn.Cell):
    def __init__(self, vocab: int = 20000, dim: int = 64, units: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, units, batch_first=True)
        self.fc = nn.Dense(units, 2)

    def construct(self, x):
        _, (h, _) = self.lstm(self.embedding(x))
        return self.fc(h[-1])  # the last hidden state


def _net_and_optimizer(task_name: str):
    if task_name == "mlp":
        net = nn.SequentialCell([nn.Flatten(), nn.Dense(784, 512), nn.ReLU(), nn.Dense(512, 10)])
        return net, nn.RMSProp(net.trainable_params(), learning_rate=1e-3, decay=0.9, epsilon=1e-7)
    if task_name == "lenet":
        net = LeNet5()
        return net, nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
    if task_name == "lstm":
        net = LSTMClassifier()
        return net, nn.Adam(net.trainable_params(), learning_rate=1e-3, eps=1e-7)
    raise ValueError(f"unknown task {task_name!r}")


def make_step(task_name: str, threads: int) -> Callable[[np.ndarray, np.ndarray], float]:
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:  # each of the two can be set once per process
        ms.device_context.cpu.op_tuning.threads_num(threads)
    except RuntimeError:
        pass
    try:
        ms.runtime.dispatch_threads_num(threads)
    except RuntimeError:
        pass
    net, optimizer = _net_and_optimizer(task_name)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    train_net = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), optimizer)
    train_net.set_train()

    def step(x: np.ndarray, y: np.ndarray) -> float:
        # NCHW float32 images / int32 tokens and int32 labels go in as they come.
        loss = train_net(ms.Tensor(x), ms.Tensor(y))
        return float(loss.asnumpy())

    return step
