"""tests/test_layers.py for the PaddlePaddle adapter, in a pytest process of its own:
PaddlePaddle segfaults when imported into a process that has imported TensorFlow, and this
suite's workers run the other frameworks' layer tests in-process."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("paddle") is None,
                    reason="PaddlePaddle is not installed (pip install -e '.[paddle]')")
def test_paddle_layers_in_a_process_of_their_own():
    r = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
                        str(TESTS / "test_layers.py")],
                       env={**os.environ, "FWBENCH_LAYERS": "paddle"}, capture_output=True,
                       text=True, timeout=900, cwd=TESTS.parent)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 10, summary  # every case ran
