"""Keras 3 adapter on the TensorFlow backend: ``keras.Sequential`` built from the layer list,
a custom training step under ``tf.function`` (``jit_compile=True`` for the XLA variant).

``model.fit`` is not used: it adds per-batch callback and bookkeeping overhead that is not the
framework's compute. The step is the one of the Keras guide "writing a training loop from
scratch": ``GradientTape``, then the optimizer's update, traced once for the task's batch shape.

Layout notes: activations are channels_last (TensorFlow's CPU poolings are NHWC only, Keras
transposes around them in channels_first; measured on LeNet, channels_first costs ~25% more
CPU per step without XLA and is no faster with it), so a ``Permute`` turns the NCHW
input into NHWC in the graph, conv kernels are [kh, kw, in, out] and the first Dense after a
Flatten of NHWC activations has its rows permuted (canonical row c*H*W + h*W + w is Keras row
(h*W + w)*C + c). Dense kernels and the embedding table match the canonical layout; the Keras
LSTM kernel is [in, 4H], the recurrent kernel [H, 4H] and the single bias [4H], gate order
i, f, c, o (= i, f, g, o), so LSTM weights are transposed. ``layers.GRU(reset_after=True)``
(the default) computes the spec's GRU with kernel [in, 3H], recurrent kernel [H, 3H], gate
order z, r, h and one [2, 3H] bias (row 0 = b_ih, row 1 = b_hh): weights are transposed and
the r and z blocks swapped. Sequences are [N, T, C] in both; a Conv1D kernel is [k, in, out].
Dropout: ``layers.Dropout`` with ``training=True`` only in the train step (Keras' seed
generator, seeded by ``keras.utils.set_random_seed`` from ``options["seed"]`` when given).

Optimizers: ``FusedOptimizer`` below runs the spec's formulas as TensorFlow's fused training
kernels (``ResourceApplyMomentum``, ``ResourceApplyAdam``) inside the compiled step, one kernel
per variable; Keras 3's RMSprop puts eps inside the sqrt and its Adam adds eps before the bias
correction, and both run as several separate ops per variable.
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


class FusedOptimizer:
    """The spec's optimizers as TensorFlow's fused training kernels, one per variable.

    Keras 3's optimizers are written as several separate ops per variable, and its RMSprop
    puts eps inside the sqrt and its Adam adds eps before the bias correction. TensorFlow's
    own fused kernels (``tf.raw_ops.ResourceApply*``, what ``tf.compat.v1`` optimizers and
    Keras 2 ran; XLA compiles them too) compute the spec's formulas exactly:
    - momentum SGD: ``ResourceApplyMomentum``: accum = m*accum + g; w -= lr*accum.
    - RMSprop: ``ResourceApplyAdam`` with beta1 = 0 (m = g), beta2 = rho and both powers 0
      (lr_t = lr): w -= lr*g/(sqrt(s) + eps), s = rho*s + (1-rho)*g^2, eps outside the sqrt.
    - Adam: ``ResourceApplyAdam`` with the powers b1^t, b2^t and epsilon = eps*sqrt(1-b2^t):
      lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v) + eps*sqrt(1-b2^t)) is exactly Kingma & Ba's
      lr*(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).
    Embedding gradients (``tf.IndexedSlices``) are made dense: every row is updated (dense
    Adam, like torch; no lazy/sparse update).
    """

    def __init__(self, opt: spec.Optimizer, variables: list):
        self.spec = opt
        self.variables = list(variables)
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        slots = 1 if isinstance(opt, spec.SGDMomentum) else 2
        self.slots = [[tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for _ in range(slots)]
                      for v in self.variables]
        _APPLY[opt]  # UnsupportedOptimizer now rather than at the first step

    def apply(self, grads: list) -> None:
        t = tf.cast(self.t.assign_add(1), tf.float32)
        for var, slots, g in zip(self.variables, self.slots, grads):
            _APPLY(self.spec, var.handle, [s.handle for s in slots], tf.convert_to_tensor(g), t)


def _momentum(o: spec.SGDMomentum, var, slots, g, t) -> None:
    tf.raw_ops.ResourceApplyMomentum(var=var, accum=slots[0], lr=o.lr, grad=g, momentum=o.momentum,
                                     use_locking=False, use_nesterov=False)


def _rmsprop(o: spec.RMSprop, var, slots, g, t) -> None:
    tf.raw_ops.ResourceApplyAdam(var=var, m=slots[0], v=slots[1], beta1_power=0.0, beta2_power=0.0,
                                 lr=o.lr, beta1=0.0, beta2=o.rho, epsilon=o.eps, grad=g,
                                 use_locking=False, use_nesterov=False)


def _adam(o: spec.Adam, var, slots, g, t) -> None:
    b2_power = tf.pow(o.b2, t)
    tf.raw_ops.ResourceApplyAdam(var=var, m=slots[0], v=slots[1], beta1_power=tf.pow(o.b1, t),
                                 beta2_power=b2_power, lr=o.lr, beta1=o.b1, beta2=o.b2,
                                 epsilon=o.eps * tf.sqrt(1.0 - b2_power), grad=g,
                                 use_locking=False, use_nesterov=False)


_APPLY = spec.OptimizerRules("keras adapter: fused optimizers", {
    spec.SGDMomentum: _momentum, spec.RMSprop: _rmsprop, spec.Adam: _adam})


@dataclass(frozen=True)
class _Param:
    """Where one canonical tensor lives in Keras: the variable ``var`` (or its row ``row``:
    Keras' GRU keeps both biases in one [2, 3H] variable) and the conversions both ways."""

    var: Any
    to_keras: spec.Convert = spec.identity
    to_canonical: spec.Convert = spec.identity
    row: int | None = None


@dataclass
class _Builder:
    """State of one ``build_model`` walk over the layer list."""

    mods: list = field(default_factory=list)  # the Keras layers, in order
    # per layer with parameters: canonical name -> _Param, read once the model is built
    # (Keras creates the variables then)
    params: list[Callable[[], dict[str, _Param]]] = field(default_factory=list)
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
        f"{i}.kernel": _Param(lay.kernel, to_k, from_k),
        f"{i}.bias": _Param(lay.bias)})


def _conv(layer: spec.Conv2D, i: int, shape: spec.Shape, b: _Builder) -> None:
    # padding "same" of TensorFlow: (k-1)//2 before, k//2 after, as the spec
    _to_nhwc(b)
    b.add(layers.Conv2D(layer.filters, layer.kernel, padding=layer.padding,
                        data_format="channels_last"), lambda lay: {
        f"{i}.kernel": _Param(lay.kernel, spec.oihw_to_hwio, spec.hwio_to_oihw),
        f"{i}.bias": _Param(lay.bias)})


def _oik_kio(a: np.ndarray) -> np.ndarray:
    """Conv1D kernel [out, in, k] <-> Keras' [k, in, out] (its own inverse)."""
    return a.transpose(2, 1, 0)


def _conv1d(layer: spec.Conv1D, i: int, shape: spec.Shape, b: _Builder) -> None:
    # sequences are [N, T, C] in the spec and in Keras: no permutation of the activations
    b.add(layers.Conv1D(layer.filters, layer.kernel, padding=layer.padding), lambda lay: {
        f"{i}.kernel": _Param(lay.kernel, _oik_kio, _oik_kio),
        f"{i}.bias": _Param(lay.bias)})


def _pool(layer: spec.MaxPool2D, i: int, shape: spec.Shape, b: _Builder) -> None:
    _to_nhwc(b)
    b.add(layers.MaxPooling2D(layer.pool, data_format="channels_last"))


def _lstm(layer: spec.LSTM, i: int, shape: spec.Shape, b: _Builder) -> None:
    # last hidden state, no masking; [4H, in] <-> [in, 4H], [4H, H] <-> [H, 4H]
    b.add(layers.LSTM(layer.units), lambda lay: {
        f"{i}.w_ih": _Param(lay.cell.kernel, spec.transpose, spec.transpose),
        f"{i}.w_hh": _Param(lay.cell.recurrent_kernel, spec.transpose, spec.transpose),
        f"{i}.bias": _Param(lay.cell.bias)})


def _swap_rz(a: np.ndarray) -> np.ndarray:
    """Gate blocks on axis 0: canonical r, z, n <-> Keras z, r, h (its own inverse)."""
    h = a.shape[0] // 3
    return np.concatenate([a[h : 2 * h], a[:h], a[2 * h :]])


def _gru_to_keras(a: np.ndarray) -> np.ndarray:
    return _swap_rz(a).T  # [3H, in] -> [in, 3H]


def _gru_to_canonical(a: np.ndarray) -> np.ndarray:
    return _swap_rz(a.T)


def _gru(layer: spec.GRU, i: int | str, shape: spec.Shape, b: _Builder) -> None:
    # reset_after=True (the default): the spec's formula, bias [2, 3H] = (b_ih, b_hh)
    b.add(layers.GRU(layer.units, return_sequences=layer.return_sequences, reset_after=True), lambda lay: {
        f"{i}.w_ih": _Param(lay.cell.kernel, _gru_to_keras, _gru_to_canonical),
        f"{i}.w_hh": _Param(lay.cell.recurrent_kernel, _gru_to_keras, _gru_to_canonical),
        f"{i}.b_ih": _Param(lay.cell.bias, _swap_rz, _swap_rz, row=0),
        f"{i}.b_hh": _Param(lay.cell.bias, _swap_rz, _swap_rz, row=1)})


class SumBidirectional(layers.Layer):
    """Two independent stacks, ``bw`` run on the time-reversed input, last states summed.

    Not ``layers.Bidirectional``: it wraps one layer, and a stack of two of them would feed
    the second layer both directions' outputs, which is not the spec's two stacks."""

    def __init__(self, fw: list, bw: list, **kwargs):
        super().__init__(**kwargs)
        self.fw, self.bw = fw, bw

    def call(self, x, training=None):
        a, r = x, ops.flip(x, axis=1)
        for lay in self.fw:
            a = lay(a, training=training)
        for lay in self.bw:
            r = lay(r, training=training)
        return a + r


def _bidirectional(layer: spec.Bidirectional, i: int | str, shape: spec.Shape, b: _Builder) -> None:
    stacks = {}
    for d in ("fw", "bw"):
        stacks[d] = sub = _Builder()
        s = shape
        for j, inner in enumerate(layer.layers):  # canonical names "<i>.<d>.<j>.<role>"
            LAYERS(inner, f"{i}.{d}.{j}", s, sub)
            s = spec.output_shape(inner, s)
        b.params += sub.params
    b.add(SumBidirectional(stacks["fw"].mods, stacks["bw"].mods))


LAYERS = spec.LayerRules("keras adapter: layers", {
    spec.Flatten: _flatten,
    spec.Dense: _dense,
    spec.Conv2D: _conv,
    spec.MaxPool2D: _pool,
    spec.ReLU: lambda layer, i, shape, b: b.add(layers.ReLU()),
    spec.Dropout: lambda layer, i, shape, b: b.add(layers.Dropout(layer.rate)),
    spec.Embedding: lambda layer, i, shape, b: b.add(layers.Embedding(layer.vocab, layer.dim), lambda lay: {
        f"{i}.table": _Param(lay.embeddings)}),
    spec.LSTM: _lstm,
    spec.Conv1D: _conv1d,
    spec.MaxPool1D: lambda layer, i, shape, b: b.add(layers.MaxPooling1D(layer.pool)),
    spec.GRU: _gru,
    spec.Bidirectional: _bidirectional,
})


def build_model(task: spec.Task):
    """The Keras model and, per canonical parameter, where it lives (``_Param``)."""
    dtype = "int32" if task.input_dtype == "int32" else "float32"
    b = _Builder()
    for i, layer, shape in spec.layer_inputs(task):  # canonical shape of one example
        LAYERS(layer, i, shape, b)
    model = keras.Sequential([keras.Input(task.input_shape, dtype=dtype), *b.mods])
    return model, {name: v for params in b.params for name, v in params().items()}


class KerasAdapter(Adapter):
    layer_rules = (LAYERS,)

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
        if self.options.get("deterministic") or "seed" in self.options:
            keras.utils.set_random_seed(int(self.options.get("seed", 0)))  # dropout masks

    def determinism(self) -> dict[str, Any]:
        on = bool(self.options.get("deterministic"))
        seeded = on or "seed" in self.options
        return {"enable_op_determinism": on,
                "set_random_seed": self.options.get("seed", 0) if seeded else None}

    @classmethod
    def framework_version(cls) -> str:
        return f"tensorflow {tf.__version__}, keras {keras.__version__}"

    @classmethod
    def device_unsupported(cls, platform: str) -> str | None:
        if platform == "cpu" or tf.config.list_physical_devices("GPU"):
            return None
        built = "built with CUDA" if tf.test.is_built_with_cuda() else "a build without CUDA"
        return (f"tensorflow {tf.__version__} ({built}) lists no GPU "
                "(tf.config.list_physical_devices('GPU') is empty)")

    def device_settings(self) -> dict[str, Any]:
        # Memory growth: TF_FORCE_GPU_ALLOW_GROWTH=true, set by the worker before the import.
        tf.config.experimental.enable_tensor_float_32_execution(False)
        return {"tensor_float_32_execution": tf.config.experimental.tensor_float_32_execution_enabled()}

    def device_versions(self) -> dict[str, Any]:
        info = tf.sysconfig.get_build_info()
        return {"cuda": info.get("cuda_version"), "cudnn": info.get("cudnn_version")}

    def memory_peak(self) -> dict[str, Any]:
        if not self.gpu:
            return {}
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return {"source": "tf.config.experimental.get_memory_info('GPU:0')['peak']",
                "counts": "bytes in use by TensorFlow's GPU allocator at its peak over the cell "
                          "(memory growth on)", "peak_mib": peak / 2**20}

    def gemm(self, n: int):
        rng = np.random.default_rng(0)
        a, b = (tf.constant(rng.random((n, n), dtype=np.float32)) for _ in range(2))
        product = tf.function(lambda x, y: tf.matmul(x, y), jit_compile=self.jit)

        def run(k: int) -> None:
            c = None
            for _ in range(k):
                c = product(a, b)
            c[0, 0].numpy()  # ops run in stream order: this waits for the last product

        return run

    def flush_denormals(self) -> str:
        return "TensorFlow flushes by default (its kernels set FTZ/DAZ)"

    def denormal_product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return tf.function(lambda x, y: x * y, jit_compile=self.jit)(a, b).numpy()

    def thread_settings(self) -> dict[str, Any]:
        return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}

    def build(self, params: dict[str, np.ndarray]) -> None:
        self.model, self.params = build_model(self.task)
        for name, p in self.params.items():
            value = np.ascontiguousarray(p.to_keras(params[name]), dtype=np.float32)
            if p.row is not None:  # one row of a shared variable (GRU biases)
                whole = p.var.numpy()
                whole[p.row] = value
                value = whole
            p.var.assign(value)
        self.weights = self.model.trainable_variables
        self.opt = FusedOptimizer(self.task.optimizer, self.weights)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        model, weights, opt, loss_fn = self.model, self.weights, self.opt, self.loss_fn
        x_dtype = tf.int32 if self.task.input_dtype == "int32" else tf.float32
        sig = [tf.TensorSpec((None, *self.task.input_shape), x_dtype),
               tf.TensorSpec((None,), tf.int32)]
        compile_ = dict(jit_compile=self.jit)

        # The train step is traced for the shapes it is called with (the task's batch), as the
        # Keras guide's step is: static shapes let TensorFlow's graph optimiser specialise it.
        # (With this and FusedOptimizer together the LSTM step went from 68 to 44 ms and the
        # MLP's from 4.6 to 2.6 ms on 2 cores; the two changes were not measured apart.) The
        # other functions keep a (None, ...) signature for evaluation's smaller last batch.
        @tf.function(reduce_retracing=False, **compile_)
        def train(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            opt.apply(tape.gradient(loss, weights))
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
        return {name: np.ascontiguousarray(
                    p.to_canonical(value(p.var) if p.row is None else value(p.var)[p.row]), dtype=np.float32)
                for name, p in self.params.items()}
