"""Keras 3 on TensorFlow reference loop: ``keras.Sequential`` + a custom step under ``tf.function``.

Follows the Keras guide "Writing a training loop from scratch in TensorFlow" (its
``@tf.function train_step``: ``GradientTape``, ``model(x, training=True)``, ``tape.gradient``,
``optimizer.apply``), not ``model.fit``, so one call is one step. Keras' own layers (with
``activation="relu"`` as the Keras examples write them), its own optimizers and loss, its
default initialisers, channels-last images (Keras' default ``image_data_format``).
Independent of fwbench: takes NumPy batches, returns the loss as a Python float.
"""

from __future__ import annotations

import os
from typing import Callable

os.environ["KERAS_BACKEND"] = "tensorflow"  # before importing keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def _model_and_optimizer(task_name: str):
    if task_name == "mlp":  # the classic mnist_mlp example, without its dropout
        model = keras.Sequential([keras.Input((1, 28, 28)), layers.Flatten(),
                                  layers.Dense(512, activation="relu"), layers.Dense(10)])
        return model, keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-7)
    if task_name == "lenet":
        model = keras.Sequential([
            keras.Input((32, 32, 1)),  # NHWC
            layers.Conv2D(6, 5, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(16, 5, activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dense(120, activation="relu"),
            layers.Dense(84, activation="relu"), layers.Dense(10)])
        return model, keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    if task_name == "lstm":
        model = keras.Sequential([keras.Input((200,), dtype="int32"), layers.Embedding(20000, 64),
                                  layers.LSTM(64), layers.Dense(2)])
        return model, keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7)
    raise ValueError(f"unknown task {task_name!r}")


def make_step(task_name: str, threads: int) -> Callable[[np.ndarray, np.ndarray], float]:
    try:  # tf.config.threading: only before the TensorFlow runtime starts (first op)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass
    model, optimizer = _model_and_optimizer(task_name)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    nchw_images = task_name == "lenet"

    @tf.function  # traced once: every batch has the same shape and dtype
    def train_step(x, y):
        if nchw_images:
            # fwbench hands NCHW batches; the conversion to Keras' NHWC is the first op of
            # the compiled step (for the MLP, Flatten takes [N, 1, 28, 28] as it is).
            x = tf.transpose(x, [0, 2, 3, 1])
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss_value = loss_fn(y, logits)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss_value

    def step(x: np.ndarray, y: np.ndarray) -> float:
        return float(train_step(x, y))

    return step
