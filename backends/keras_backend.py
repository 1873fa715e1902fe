"""Keras 3 adapter on the TensorFlow backend: ``keras.Sequential`` built from the layer list,
a custom training step under ``tf.function`` (``jit_compile=True`` for the XLA variant).

``model.fit`` is not used: it adds per-batch callback and bookkeeping overhead that is not the
framework's compute. The step is the one of the Keras guide "writing a training loop from
scratch": ``GradientTape`` + ``optimizer.apply``, traced once with a fixed input signature.

Layout notes: activations are channels_last (TensorFlow's CPU poolings are NHWC only, Keras
transposes around them in channels_first; measured on LeNet, channels_first costs ~25% more
CPU per step without XLA and is no faster with it), so a ``Permute`` turns the NCHW
input into NHWC in the graph, conv kernels are [kh, kw, in, out] and the first Dense after a
Flatten of NHWC activations has its rows permuted (canonical row c*H*W + h*W + w is Keras row
(h*W + w)*C + c). Dense kernels and the embedding table match the canonical layout; the Keras
LSTM kernel is [in, 4H], the recurrent kernel [H, 4H] and the single bias [4H], gate order
i, f, c, o (= i, f, g, o), so LSTM weights are transposed.

Optimizers: Keras' SGD(momentum) keeps u = m*u - lr*g; w += u, i.e. u = -lr*v of the spec's
v = m*v + g; w -= lr*v, identical for a constant lr, so it is used as is. Keras 3's RMSprop
puts eps inside the sqrt and its Adam adds eps before the bias correction, so those two are
written as a small ``keras.optimizers.Optimizer`` subclass with the spec's formulas (run inside
the same compiled step). Embedding gradients arrive as ``tf.IndexedSlices`` and are made dense
by the update (dense Adam, like torch; no lazy/sparse update).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "KERAS_HOME" not in os.environ:  # Keras writes keras.json to ~/.keras otherwise
    os.environ["KERAS_HOME"] = os.path.join(tempfile.gettempdir(), "fwbench-keras")

# TensorFlow's TFLite module tries ``from jax import jit`` at import time (optional, for the
# JAX->TFLite converter), which costs ~0.3 s CPU only because JAX shares this venv. A None
# entry in sys.modules makes that optional import fail the way it does in a TF-only install;
# the entry is removed right after, so JAX stays importable later in the process.
_hide_jax = "jax" not in sys.modules
if _hide_jax:
    sys.modules["jax"] = None  # type: ignore[assignment]
try:
    import tensorflow as tf
    import keras
    from keras import layers, ops
finally:
    if _hide_jax and sys.modules.get("jax", 0) is None:
        del sys.modules["jax"]

import numpy as np

from fwbench.harness import spec
from fwbench.harness.adapter import Adapter


def _rmsprop_update(o: spec.RMSprop, opt: keras.optimizers.Optimizer, slots, g, variable, lr) -> None:
    (s,) = slots
    opt.assign(s, o.rho * s + (1.0 - o.rho) * ops.square(g))
    opt.assign_sub(variable, lr * g / (ops.sqrt(s) + o.eps))


def _adam_update(o: spec.Adam, opt: keras.optimizers.Optimizer, slots, g, variable, lr) -> None:
    m, v = slots
    t = ops.cast(opt.iterations + 1, variable.dtype)
    opt.assign(m, o.b1 * m + (1.0 - o.b1) * g)
    opt.assign(v, o.b2 * v + (1.0 - o.b2) * ops.square(g))
    m_hat = m / (1.0 - ops.power(o.b1, t))
    v_hat = v / (1.0 - ops.power(o.b2, t))
    opt.assign_sub(variable, lr * m_hat / (ops.sqrt(v_hat) + o.eps))


# (slot variable names, update) of the formulas SpecOptimizer writes out.
SPEC_FORMULAS = spec.OptimizerRules("keras adapter: SpecOptimizer", {
    spec.RMSprop: (("s",), _rmsprop_update),
    spec.Adam: (("m", "v"), _adam_update),
}, unsupported=(spec.SGDMomentum,))  # Keras' own SGD computes the spec's formula


class SpecOptimizer(keras.optimizers.Optimizer):
    """The spec's RMSprop (eps outside the sqrt) and Adam (eps after bias correction).

    Keras 3's own RMSprop computes lr*g/sqrt(s + eps) and its Adam
    lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v) + eps); both differ from the spec early in training.
    """

    def __init__(self, opt: spec.RMSprop | spec.Adam):
        SPEC_FORMULAS[opt]  # UnsupportedOptimizer now rather than at the first step
        super().__init__(learning_rate=opt.lr, name=type(opt).__name__.lower())
        self.spec = opt

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        names, _ = SPEC_FORMULAS[self.spec]
        self.slots = list(self.add_optimizer_variables(variables, list(names)))  # one list per name

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        g = tf.convert_to_tensor(gradient)  # IndexedSlices (embedding) -> dense
        lr = ops.cast(learning_rate, variable.dtype)
        _, update = SPEC_FORMULAS[self.spec]
        update(self.spec, self, [slot[i] for slot in self.slots], g, variable, lr)


OPTIMIZERS = spec.OptimizerRules("keras adapter: optimizers", {
    spec.SGDMomentum: lambda opt: keras.optimizers.SGD(learning_rate=opt.lr, momentum=opt.momentum),
    spec.RMSprop: SpecOptimizer,
    spec.Adam: SpecOptimizer,
})


def make_optimizer(opt: spec.Optimizer) -> keras.optimizers.Optimizer:
    return OPTIMIZERS(opt)


@dataclass
class _Builder:
    """State of one ``build_model`` walk over the layer list."""

    mods: list = field(default_factory=list)  # the Keras layers, in order
    # per layer with parameters: canonical name -> (variable, to_keras, to_canonical), read
    # once the model is built (Keras creates the variables then)
    params: list[Callable[[], dict[str, tuple[Any, spec.Convert, spec.Convert]]]] = field(default_factory=list)
    nhwc: bool = False  # are the activations channels_last images?
    rows: tuple[spec.Convert, spec.Convert] | None = None  # row permutation for the next Dense

    def add(self, lay: layers.Layer, params: Callable[[layers.Layer], dict] | None = None) -> None:
        self.mods.append(lay)
        if params is not None:
            self.params.append(lambda: params(lay))


def _to_nhwc(b: _Builder) -> None:
    """Insert a Permute NCHW -> NHWC unless the activations are channels-last already."""
    if not b.nhwc:
        b.mods.append(layers.Permute((2, 3, 1)))
        b.nhwc = True


def _flatten(layer: spec.Flatten, i: int, shape: spec.Shape, b: _Builder) -> None:
    if b.nhwc:
        b.rows = spec.nhwc_flatten_rows(shape)
    b.nhwc = False
    b.add(layers.Flatten())


def _dense(layer: spec.Dense, i: int, shape: spec.Shape, b: _Builder) -> None:
    to_k, from_k = b.rows or (spec.identity, spec.identity)
    b.rows = None
    b.add(layers.Dense(layer.units), lambda lay: {
        f"{i}.kernel": (lay.kernel, to_k, from_k),
        f"{i}.bias": (lay.bias, spec.identity, spec.identity)})


def _conv(layer: spec.Conv2D, i: int, shape: spec.Shape, b: _Builder) -> None:
    _to_nhwc(b)
    b.add(layers.Conv2D(layer.filters, layer.kernel, data_format="channels_last"), lambda lay: {
        f"{i}.kernel": (lay.kernel, spec.oihw_to_hwio, spec.hwio_to_oihw),
        f"{i}.bias": (lay.bias, spec.identity, spec.identity)})


def _pool(layer: spec.MaxPool2D, i: int, shape: spec.Shape, b: _Builder) -> None:
    _to_nhwc(b)
    b.add(layers.MaxPooling2D(layer.pool, data_format="channels_last"))


def _lstm(layer: spec.LSTM, i: int, shape: spec.Shape, b: _Builder) -> None:
    # last hidden state, no masking; [4H, in] <-> [in, 4H], [4H, H] <-> [H, 4H]
    b.add(layers.LSTM(layer.units), lambda lay: {
        f"{i}.w_ih": (lay.cell.kernel, spec.transpose, spec.transpose),
        f"{i}.w_hh": (lay.cell.recurrent_kernel, spec.transpose, spec.transpose),
        f"{i}.bias": (lay.cell.bias, spec.identity, spec.identity)})


LAYERS = spec.LayerRules("keras adapter: layers", {
    spec.Flatten: _flatten,
    spec.Dense: _dense,
    spec.Conv2D: _conv,
    spec.MaxPool2D: _pool,
    spec.ReLU: lambda layer, i, shape, b: b.add(layers.ReLU()),
    spec.Dropout: lambda layer, i, shape, b: b.add(layers.Dropout(layer.rate)),
    spec.Embedding: lambda layer, i, shape, b: b.add(layers.Embedding(layer.vocab, layer.dim), lambda lay: {
        f"{i}.table": (lay.embeddings, spec.identity, spec.identity)}),
    spec.LSTM: _lstm,
})


def build_model(task: spec.Task):
    """The Keras model and, per canonical parameter, (variable, to_keras, to_canonical)."""
    dtype = "int32" if task.input_dtype == "int32" else "float32"
    b = _Builder()
    for i, layer, shape in spec.layer_inputs(task):  # canonical shape of one example
        LAYERS(layer, i, shape, b)
    model = keras.Sequential([keras.Input(task.input_shape, dtype=dtype), *b.mods])
    return model, {name: v for params in b.params for name, v in params().items()}


class KerasAdapter(Adapter):
    def __init__(self, task: spec.Task, threads: int, options: dict[str, Any] | None = None):
        super().__init__(task, threads, options)
        try:  # only settable before the TensorFlow runtime is initialised (first op)
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass
        self.jit = bool(self.options.get("jit_compile", False))
        if self.options.get("deterministic"):
            tf.config.experimental.enable_op_determinism()
            keras.utils.set_random_seed(int(self.options.get("seed", 0)))  # dropout masks

    def determinism(self) -> dict[str, Any]:
        on = bool(self.options.get("deterministic"))
        return {"enable_op_determinism": on, "set_random_seed": self.options.get("seed") if on else None}

    @classmethod
    def framework_version(cls) -> str:
        return f"tensorflow {tf.__version__}, keras {keras.__version__}"

    def flush_denormals(self) -> str:
        return "TensorFlow flushes by default (its kernels set FTZ/DAZ)"

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return tf.function(lambda x, y: x * y, jit_compile=self.jit)(a, b).numpy()

    def thread_settings(self) -> dict[str, Any]:
        return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}

    def build(self, params: dict[str, np.ndarray]) -> None:
        self.model, self.params = build_model(self.task)
        for name, (var, to_keras, _) in self.params.items():
            var.assign(np.ascontiguousarray(to_keras(params[name]), dtype=np.float32))
        self.weights = self.model.trainable_variables
        self.opt = make_optimizer(self.task.optimizer)
        self.opt.build(self.weights)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        model, weights, opt, loss_fn = self.model, self.weights, self.opt, self.loss_fn
        x_dtype = tf.int32 if self.task.input_dtype == "int32" else tf.float32
        sig = [tf.TensorSpec((None, *self.task.input_shape), x_dtype),
               tf.TensorSpec((None,), tf.int32)]
        compile_ = dict(jit_compile=self.jit)

        @tf.function(input_signature=sig, **compile_)
        def train(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            opt.apply(tape.gradient(loss, weights), weights)
            return loss

        @tf.function(input_signature=sig, **compile_)
        def grads(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=False))
            return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, weights)]

        @tf.function(input_signature=sig, **compile_)
        def evaluate(x, y):
            out = model(x, training=False)
            losses = keras.losses.sparse_categorical_crossentropy(y, out, from_logits=True)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, 1, tf.int32), y), tf.int32))
            return tf.reduce_sum(losses), correct

        @tf.function(input_signature=sig[:1], **compile_)
        def logits(x):
            return model(x, training=False)

        self._train, self._grads, self._evaluate, self._logits = train, grads, evaluate, logits

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._train(x, y))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, correct = self._evaluate(x, y)
        return float(loss), int(correct)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._logits(x).numpy()

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = self._grads(x, y)
        by_var = {id(v): g.numpy() for v, g in zip(self.weights, grads)}
        return float(loss), self._export(lambda var: by_var[id(var)])

    def export_params(self) -> dict[str, np.ndarray]:
        return self._export(lambda var: var.numpy())

    def _export(self, value) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(to_canonical(value(var)), dtype=np.float32)
                for name, (var, _, to_canonical) in self.params.items()}
