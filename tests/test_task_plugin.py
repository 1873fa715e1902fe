"""The example task plugin of docs/adding-a-task.md (tests/task_plugin: a data set shipped as
a .npz, a preprocessing, a small CNN task), pip-installed into a throw-away virtual environment
layered on this one, so the environment the tests run in never sees it: listed, checked and run
on two backends through that environment's fwbench, like a built-in task."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "task_plugin"
DOC = Path(__file__).parents[1] / "docs" / "adding-a-task.md"
BACKENDS = ("torch", "jax")


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    """A venv in tmp that sees this environment's packages (frameworks, fwbench) and has the
    example plugin installed in its own site-packages: no network, no build isolation."""
    venv = tmp_path_factory.mktemp("task-plugin-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    # --system-site-packages sees the base interpreter's packages; when the tests run in a venv
    # the frameworks live in that venv's site-packages, so layer it in (its .pth files too).
    outer = sysconfig.get_paths()["purelib"]
    Path(own, "_fwbench_outer_env.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    build = tmp_path_factory.mktemp("task-plugin-src") / "plugin"
    shutil.copytree(PLUGIN, build)  # the build writes egg-info next to the sources
    r = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", str(build)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return python


def fwbench(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "fwbench.harness.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=900)


def test_the_plugin_is_not_in_this_environment():
    from fwbench.harness.catalog import tasks

    assert "toy-bars" not in tasks.discover().tasks  # only the throw-away venv has it


def test_doc_shows_the_example_files_exactly():
    doc = DOC.read_text()
    for name in ("pyproject.toml", "fwbench_toy_task/__init__.py"):
        assert (PLUGIN / name).read_text().strip() in doc, f"docs/adding-a-task.md: {name} differs"


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(b) is None for b in BACKENDS),
                    reason="needs the torch and jax backends installed")
def test_task_plugin_is_listed_checked_and_runs(venv_python, tmp_path):
    listed = fwbench(venv_python, "list")
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith(" toy-bars "))
    assert "toy-bars" in line.split()[1] and "2,548" in line  # its data set, its parameters
    assert "plugin fwbench-toy-task 0.1.0" in line
    assert "warning" not in listed.stderr, listed.stderr

    check = fwbench(venv_python, "check", "--tasks", "toy-bars", "--backends", ",".join(BACKENDS))
    assert check.returncode == 0, check.stdout + check.stderr
    rows = [x.split() for x in check.stdout.splitlines() if x.startswith(" toy-bars ")]
    assert sorted(r[1] for r in rows) == sorted(BACKENDS) and all(r[-1] == "pass" for r in rows)

    out = tmp_path / "run"
    run = fwbench(venv_python, "run", "--profile", "smoke", "--tasks", "toy-bars", "--backends",
                  ",".join(BACKENDS), "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["backend"] for r in records) == sorted(BACKENDS)
    assert all(r["status"] == "ok" and r["test_accuracy"] > 0.25 for r in records), records
    meta = json.loads((out / "run.json").read_text())
    assert meta["tasks"]["toy-bars"]["dataset"] == "toy-bars"  # the snapshot reports read

    # The report reads the run's snapshot: this environment, without the plugin, renders it.
    report = subprocess.run([sys.executable, "-m", "fwbench.harness.cli", "report", str(out)],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert report.returncode == 0, report.stderr
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert "toy-bars" in (out / "report.md").read_text()
