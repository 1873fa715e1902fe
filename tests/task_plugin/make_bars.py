"""Write fwbench_toy_task/bars.npz, the toy task's data set: 8x8 uint8 images of one bar each,
horizontal, vertical, diagonal or anti-diagonal (classes 0-3), on a noisy background; 480
training and 160 test images, balanced. Deterministic: run it again and the sha256 is the same.

    python make_bars.py    # prints the sha256 to put in fwbench_toy_task/__init__.py
"""

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np


def bars(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 4
    rng.shuffle(y)
    x = rng.integers(0, 90, (n, 8, 8))
    for img, label in zip(x, y):
        k = rng.integers(0, 8)  # which row / column; the diagonals are shifted by k - 4
        intensity = rng.integers(150, 256, 8)
        i = np.arange(8)
        if label == 0:
            img[k, :] = intensity
        elif label == 1:
            img[:, k] = intensity
        else:
            j = (i + k - 4) if label == 2 else (7 - i + k - 4)
            keep = (j >= 0) & (j < 8)
            img[i[keep], j[keep]] = intensity[keep]
    return x.astype(np.uint8), y.astype(np.int64)


def main() -> None:
    rng = np.random.default_rng(2024)
    x_train, y_train = bars(480, rng)
    x_test, y_test = bars(160, rng)
    out = Path(__file__).parent / "fwbench_toy_task" / "bars.npz"
    buf = io.BytesIO()  # np.savez stamps the time into the zip: write the members by hand
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test),
                        ("y_test", y_test)):
            member = io.BytesIO()
            np.lib.format.write_array(member, a, allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), member.getvalue(),
                       zipfile.ZIP_DEFLATED)
    out.write_bytes(buf.getvalue())
    print(hashlib.sha256(out.read_bytes()).hexdigest(), out.name, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
