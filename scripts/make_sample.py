"""Rebuild the sample shipped in harness/sample from the real data files.

    python scripts/make_sample.py /path/to/datasets    # a folder laid out like shared/datasets

The sample is a fixed random subset (seed 0) of the official files, written in the same
formats (gzipped IDX, labeled IMDB CSV), so the smoke profile runs the real loading code.
"""

import sys
from pathlib import Path

from fwbench.harness import data

if __name__ == "__main__":
    src = Path(sys.argv[1])
    data.write_sample(src, data.SAMPLE_DIR, mnist_train=3000, mnist_test=1000,
                      imdb_train=1500, imdb_test=500)
    for line in (data.SAMPLE_DIR / "SHA256SUMS").read_text().splitlines():
        name = line.split()[1]
        print(f"{(data.SAMPLE_DIR / name).stat().st_size:>10,}  {line}")
