"""The task registry (harness/tasks.py) and the data-set registry behind it (harness/data.py).

Plugins are real distributions as importlib.metadata finds them: a ``*.dist-info`` folder with
``entry_points.txt`` and a module, in a tmp folder put on the path (of this process, or of a
``fwbench`` subprocess), never installed into the environment the tests run in.
"""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fwbench.harness import data, spec
from fwbench.harness.catalog import tasks
from fwbench.harness.errors import DataError, FwbenchError

TESTS = Path(__file__).parent

TASK_SOURCE = '''
from pathlib import Path
from fwbench.harness import spec
from fwbench.harness.data import RawFile, npz_dataset

def task(name, dataset="{dataset}", preprocessing="mnist_scaled", **changes):
    import dataclasses
    return dataclasses.replace(spec.TASKS["mlp"], name=name, dataset=dataset,
                               preprocessing=preprocessing, description="a test task", **changes)
'''


def fake_plugin(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str],
                group: str = tasks.ENTRY_POINT_GROUP, version: str = "1.0") -> None:
    """A distribution ``dist`` whose ``group`` entry points name objects of ``module``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Write fake plugins under tmp_path, then discover() sees them in this process."""
    root = tmp_path / "site"

    def add(*args, **kwargs):
        fake_plugin(root, *args, **kwargs)
        monkeypatch.syspath_prepend(str(root))  # also invalidates the import caches

    return add


def test_builtins_come_first_in_spec_order_and_unknown_is_one_line():
    assert list(tasks.all_tasks())[: len(spec.TASKS)] == list(spec.TASKS)
    assert tasks.get("mlp") is spec.TASKS["mlp"] and tasks.source("mlp") == "built-in"
    with pytest.raises(FwbenchError, match=r"unknown task 'resnet'; choose from mlp, "):
        tasks.get("resnet")


def test_builtin_datasets_and_preprocessings_are_registered():
    assert set(data.DATASETS) >= {"mnist", "imdb"}
    for task in spec.TASKS.values():  # every built-in task can run
        assert tasks.task_problem(task) == "", task.name
        assert tasks.dataset(task.dataset).name == task.dataset
        assert callable(tasks.preprocessing(task.preprocessing))
    with pytest.raises(DataError, match="unknown data set 'nope'; registered: mnist, imdb"):
        tasks.dataset("nope")


def test_a_plugin_registers_a_task_with_its_data_set_and_preprocessing(plugins, tmp_path):
    arrays = {"x_train": np.zeros((8, 28, 28), np.uint8), "y_train": np.arange(8) % 10,
              "x_test": np.zeros((4, 28, 28), np.uint8), "y_test": np.arange(4)}
    np.savez(tmp_path / "tiny.npz", **arrays)
    digest = hashlib.sha256((tmp_path / "tiny.npz").read_bytes()).hexdigest()
    plugins("fwbench-good", "good_plugin", TASK_SOURCE.format(dataset="tiny") + f'''
from fwbench.harness.data import Preprocessing
TINY = npz_dataset("tiny", RawFile("tiny.npz", "{digest}"), folder=Path({str(tmp_path)!r}))
HALF = Preprocessing("half", lambda x: (x.astype("float32") / 2)[:, None])
REGISTER = [TINY, HALF, task("good", preprocessing="half")]
''', {"good": "good_plugin:REGISTER"})
    reg = tasks.discover()
    assert reg.warnings == ()
    assert list(reg.tasks) == ["good"] and reg.sources["good"] == "plugin fwbench-good 1.0"
    assert reg.datasets["tiny"].source == "plugin fwbench-good 1.0" and "half" in reg.preprocessings


def test_duplicate_names_are_ignored_with_a_warning(plugins):
    plugins("fwbench-a", "plugin_a", TASK_SOURCE.format(dataset="mnist") + '''
TASKS = [task("mlp"), task("shared", batch_size=7)]
''', {"a": "plugin_a:TASKS"})
    plugins("fwbench-b", "plugin_b", TASK_SOURCE.format(dataset="mnist") + '''
from fwbench.harness import data
MNIST = data.DATASETS["mnist"]
REGISTER = [task("shared", batch_size=9), MNIST]
''', {"b": "plugin_b:REGISTER"})
    warned: list[str] = []
    reg = tasks.discover(warned.append)
    assert reg.warnings == tuple(warned) and len(warned) == 3
    assert "plugin fwbench-a (entry point 'a') registers task 'mlp', already registered by built-in; ignored" in warned
    assert ("plugin fwbench-b (entry point 'b') registers task 'shared', already registered by "
            "plugin fwbench-a 1.0; ignored") in warned
    assert "registers data set 'mnist', already registered by built-in; ignored" in " ".join(warned)
    assert list(reg.tasks) == ["shared"] and reg.tasks["shared"].batch_size == 7  # the first wins
    assert "mnist" not in reg.datasets


def test_broken_plugins_are_skipped_with_one_line_each(plugins):
    plugins("fwbench-broken", "broken_plugin", "raise ImportError('no module named frobnicate')\n",
            {"broken": "broken_plugin:TASK"})
    plugins("fwbench-wrong", "wrong_plugin", "TASK = {'name': 'not a task'}\n", {"wrong": "wrong_plugin:TASK"})
    plugins("fwbench-shapes", "shapes_plugin", TASK_SOURCE.format(dataset="mnist") + '''
from fwbench.harness import spec
TASK = task("shapes", layers=(spec.Flatten(), spec.Dense(3)))  # 3 outputs, 10 classes
''', {"shapes": "shapes_plugin:TASK"})
    plugins("fwbench-fine", "fine_plugin", TASK_SOURCE.format(dataset="mnist") + "TASK = task('fine')\n",
            {"fine": "fine_plugin:TASK"})
    warned: list[str] = []
    reg = tasks.discover(warned.append)
    assert list(reg.tasks) == ["fine"]  # the others do not stop it
    assert all("\n" not in w for w in warned) and len(warned) == 3, warned
    text = " | ".join(warned)
    assert "plugin fwbench-broken (entry point 'broken') failed to load: ImportError: no module named frobnicate; skipped" in text
    assert "plugin fwbench-wrong (entry point 'wrong') registers a dict, not an fwbench Task" in text
    assert "task 'shapes' cannot be built: task shapes: output shape (3,), expected (10,); skipped" in text


def test_a_task_whose_data_set_is_unknown(plugins):
    plugins("fwbench-nodata", "nodata_plugin", TASK_SOURCE.format(dataset="cifar") + "TASK = task('nodata')\n",
            {"nodata": "nodata_plugin:TASK"})
    reg = tasks.discover()
    assert "nodata" not in reg.tasks
    assert reg.warnings == ("plugin fwbench-nodata (entry point 'nodata'): task 'nodata' uses unknown data "
                            "set 'cifar' (registered: mnist, imdb); skipped",)
    assert "uses unknown data set 'cifar'" in reg.skipped["nodata"]


# ------------------------------------------------------------ the CLI, as a user runs it


def fwbench(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``fwbench`` in a subprocess that sees the fake plugins under ``root``."""
    path = os.pathsep.join([str(root), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"})


def test_cli_a_task_with_an_unknown_data_set_is_one_line_exit_2(tmp_path):
    fake_plugin(tmp_path, "fwbench-nodata", "nodata_plugin",
                TASK_SOURCE.format(dataset="cifar") + "TASK = task('nodata')\n", {"nodata": "nodata_plugin:TASK"})
    r = fwbench(tmp_path, "run", "--tasks", "nodata", "--profile", "smoke")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("fwbench: error: task 'nodata' of plugin fwbench-nodata (entry point "
                                "'nodata') uses unknown data set 'cifar' (registered: mnist, imdb), so it "
                                "cannot run")
    listed = fwbench(tmp_path, "list")  # every other command: the same reason as a warning
    assert listed.returncode == 0 and "nodata" not in listed.stdout
    assert "fwbench: warning: plugin fwbench-nodata (entry point 'nodata'): task 'nodata' uses unknown" in listed.stderr


def test_cli_a_plugin_data_set_with_a_wrong_checksum_is_one_line_exit_2(tmp_path):
    arrays = {"x_train": np.zeros((8, 28, 28), np.uint8), "y_train": np.arange(8),
              "x_test": np.zeros((4, 28, 28), np.uint8), "y_test": np.arange(4)}
    np.savez(tmp_path / "tiny.npz", **arrays)
    fake_plugin(tmp_path, "fwbench-badsum", "badsum_plugin", TASK_SOURCE.format(dataset="tiny") + f'''
TINY = npz_dataset("tiny", RawFile("tiny.npz", "{'0' * 64}"), folder=Path({str(tmp_path)!r}))
REGISTER = [TINY, task("badsum")]
''', {"badsum": "badsum_plugin:REGISTER"})
    # a backend that needs nothing but NumPy, so the data set is reached without a framework
    fake_plugin(tmp_path / "b", "fwbench-toy-backend", "toy_backend", '''
from fwbench.harness.adapter import Backend
BACKEND = Backend("toy", "fixture_backends:Toy", ("numpy",), description="fixture toy")
''', {"toy": "toy_backend:BACKEND"}, group="fwbench.backends")
    path_root = f"{tmp_path}{os.pathsep}{tmp_path / 'b'}"
    r = fwbench(Path(path_root), "check", "--tasks", "badsum", "--backends", "toy")
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"fwbench: error: {tmp_path / 'tiny.npz'}: checksum mismatch (sha256 ")
    assert "expected 000000000000..." in line and "Traceback" not in r.stderr
