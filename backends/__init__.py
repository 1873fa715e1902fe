"""Built-in backends: framework-free descriptions, registered as entry points.

Each adapter lives in its own module (never named like the framework it imports); the
module is imported only inside a worker process, through ``Backend.load``. Variants are
backends of their own (own name, own records) that pass options to the same adapter.
"""

from fwbench.harness.adapter import Backend

TORCH = Backend(
    name="torch",
    adapter="fwbench.backends.torch_backend:TorchAdapter",
    requires=("torch",),
    description="PyTorch, eager nn.Module + torch.optim",
)
TORCH_COMPILE = Backend(
    name="torch-compile",
    adapter="fwbench.backends.torch_backend:TorchAdapter",
    requires=("torch",),
    options={"compile": True},
    description="PyTorch with torch.compile (variant)",
)
TENSORFLOW = Backend(
    name="tensorflow",
    adapter="fwbench.backends.keras_backend:KerasAdapter",
    requires=("tensorflow", "keras"),
    description="Keras 3 on TensorFlow, custom step under tf.function",
)
TENSORFLOW_XLA = Backend(
    name="tensorflow-xla",
    adapter="fwbench.backends.keras_backend:KerasAdapter",
    requires=("tensorflow", "keras"),
    options={"jit_compile": True},
    description="Keras 3 on TensorFlow, tf.function(jit_compile=True) (variant)",
)
MINDSPORE = Backend(
    name="mindspore",
    adapter="fwbench.backends.mindspore_backend:MindSporeAdapter",
    requires=("mindspore",),
    description="MindSpore nn.Cell, GRAPH_MODE on CPU",
)
MINDSPORE_PYNATIVE = Backend(
    name="mindspore-pynative",
    adapter="fwbench.backends.mindspore_backend:MindSporeAdapter",
    requires=("mindspore",),
    options={"mode": "pynative"},
    description="MindSpore nn.Cell, PYNATIVE_MODE (variant)",
)
JAX = Backend(
    name="jax",
    adapter="fwbench.backends.jax_backend:JaxAdapter",
    requires=("jax", "optax"),
    description="pure JAX + optax, one jax.jit step with donated buffers",
)
FLAX = Backend(
    name="flax",
    adapter="fwbench.backends.flax_backend:FlaxAdapter",
    requires=("flax", "jax", "optax"),
    description="Flax NNX modules + optax via nnx.Optimizer, nnx.jit step",
)
PADDLE = Backend(
    name="paddle",
    adapter="fwbench.backends.paddle_backend:PaddleAdapter",
    requires=("paddlepaddle",),
    description="PaddlePaddle, dygraph nn.Layer + paddle.optimizer",
)
PADDLE_STATIC = Backend(
    name="paddle-static",
    adapter="fwbench.backends.paddle_backend:PaddleAdapter",
    requires=("paddlepaddle",),
    options={"to_static": True},
    description="PaddlePaddle with paddle.jit.to_static on the forward (variant)",
)
