"""A toy fwbench task plugin: a small CNN on 8x8 images of bars (the example of
docs/adding-a-task.md). It registers a data set shipped in this package, a preprocessing and a
task through the ``fwbench.tasks`` entry point ``REGISTER`` (see pyproject.toml)."""

from pathlib import Path

import numpy as np

from fwbench.harness import spec
from fwbench.harness.data import Preprocessing, RawFile, npz_dataset

HERE = Path(__file__).parent

# The data set: one .npz of x_train, y_train, x_test, y_test, shipped next to this file.
# fwbench checks its sha256 before every use (a changed file is refused with one line).
BARS = npz_dataset(
    "toy-bars",
    RawFile("bars.npz", "5a62e52d4b3bf6bb7e414af3435a2a688104452ff69486a7f442c396203025f9"),
    folder=HERE,
    description="8x8 uint8 images of one bar (horizontal, vertical, 2 diagonals), 480 + 160",
)


def unit_images(x: np.ndarray) -> np.ndarray:
    """uint8 [N, 8, 8] -> float32 [N, 1, 8, 8] in [0, 1] (NCHW, one channel)."""
    return (x.astype(np.float32) / 255.0)[:, None, :, :]


UNIT_IMAGES = Preprocessing("toy_unit_images", unit_images, "uint8 images / 255, one channel")

TASK = spec.Task(
    name="toy-bars",
    description="Toy CNN on 8x8 bar images (the task plugin example of docs/adding-a-task.md)",
    dataset="toy-bars",
    preprocessing="toy_unit_images",
    input_shape=(1, 8, 8),
    input_dtype="float32",
    layers=(
        spec.Conv2D(8, 3), spec.ReLU(), spec.MaxPool2D(2),
        spec.Flatten(), spec.Dense(32), spec.ReLU(), spec.Dense(4),
    ),
    optimizer=spec.Adam(lr=1e-2, b1=0.9, b2=0.999, eps=1e-7),
    batch_size=32,
    epochs_full=5,
    target_accuracy=0.99,  # measured: a full run (5 epochs) of 3 seeds ends at 99.4-100%
    num_classes=4,
    source="fwbench docs/adding-a-task.md",
)

REGISTER = [BARS, UNIT_IMAGES, TASK]
