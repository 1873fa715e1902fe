"""Toy adapters for fault-injection tests: they crash, hang, diverge or fail on purpose.

They run inside real worker processes (the tests put this folder on PYTHONPATH).
"""

import os
import time

import numpy as np

from fwbench.harness.adapter import Adapter


class _Base(Adapter):
    def build(self, params):
        self.params = {k: v.copy() for k, v in params.items()}

    def train_step(self, x, y):
        return 1.0

    def evaluate(self, x, y):
        return float(len(y)), int((y == 0).sum())

    def logits(self, x):
        return np.zeros((len(x), self.task.num_classes), np.float32)

    def gradients(self, x, y):
        return 1.0, {k: np.zeros_like(v) for k, v in self.params.items()}

    def export_params(self):
        return self.params

    @classmethod
    def framework_version(cls):
        return "0-toy"


class Constant(_Base):
    """Predicts class 0 and never learns: a cell that finishes."""


class Crash(_Base):
    def train_step(self, x, y):
        os.abort()


class Hang(_Base):
    def train_step(self, x, y):
        if os.environ.get("FWBENCH_TEST_MARK"):  # tests: "the worker is inside the step now"
            with open(os.environ["FWBENCH_TEST_MARK"], "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(3600)
        return 1.0


class NaN(_Base):
    def train_step(self, x, y):
        return float("nan")


class Fail(_Base):
    def build(self, params):
        raise ValueError("this adapter cannot build\nanything")


class Hog(_Base):
    """Allocates (and touches) memory until something stops it."""

    def train_step(self, x, y):
        self.hoard = getattr(self, "hoard", [])
        for _ in range(100):
            self.hoard.append(np.ones(50 * 2**20 // 8))  # 50 MiB, touched
            time.sleep(0.01)
        return 1.0


class Slow(_Base):
    """Finishes, slowly: 0.1 s per step."""

    def train_step(self, x, y):
        time.sleep(0.1)
        return 1.0


class NumpyScalars(_Base):
    """Reports its settings as NumPy scalars, as a framework's getters may."""

    def thread_settings(self):
        return {"intra_op": np.int64(self.threads), "ratio": np.float32(0.5), "flag": np.bool_(True)}

    def determinism(self):
        return {"seed": np.int32(0), "object": object()}


class Spawner(_Base):
    """Starts a long-lived child process (like torch.compile's compile workers) and records
    its pid in the file named by FWBENCH_TEST_SPAWN, then trains slowly."""

    def build(self, params):
        import subprocess
        import sys

        super().build(params)
        # FWBENCH_TEST_SETSID: the child leaves the cell's process group (setsid)
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                      start_new_session=bool(os.environ.get("FWBENCH_TEST_SETSID")))
        with open(os.environ["FWBENCH_TEST_SPAWN"], "a") as f:
            f.write(f"{self.child.pid}\n")

    def train_step(self, x, y):
        time.sleep(0.1)
        return 1.0


class Forker(_Base):
    """Forks a sleeper that keeps every descriptor of the worker, its event pipe included,
    and records its pid in FWBENCH_TEST_SPAWN; then finishes at once."""

    def build(self, params):
        super().build(params)
        pid = os.fork()
        if pid == 0:  # the sleeper: holds the pipe, never writes
            time.sleep(600)
            os._exit(0)
        with open(os.environ["FWBENCH_TEST_SPAWN"], "a") as f:
            f.write(f"{pid}\n")


class Counting(_Base):
    """A loss that falls with each step (1/step): per-step traces show which step is which."""

    def build(self, params):
        super().build(params)
        self.steps = 0

    def train_step(self, x, y):
        self.steps += 1
        return 1.0 / self.steps
