"""Per-backend environments (harness/envs.py; fwbench envs, run/check --envs isolated).

Real pip, real venvs, in tmp folders (FWBENCH_ENVS_DIR), never the user cache. The one test
marked ``envs`` really builds the torch env (the local CPU wheel: about a minute, 1.3 GiB in
a tmp folder) and runs a smoke cell and the parity check through it; CI runs it as part of
``python -m pytest``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fwbench.harness.cli import common
from fwbench.harness.run import envs
from fwbench.harness.adapter import Backend
from fwbench.harness.catalog.backends import discover
from fwbench.harness.catalog.labels import BackendLabel
from fwbench.harness.errors import FwbenchError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _envs_dir(tmp_path, monkeypatch):
    """Every test's envs in its own tmp folder."""
    monkeypatch.setenv(envs.ENVS_VAR, str(tmp_path / "envs"))


@pytest.fixture(scope="module")
def known() -> dict[str, Backend]:
    return discover()


def fwbench(*args: str, envs_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", envs.ENVS_VAR: str(envs_dir)}
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


# ------------------------------------------------------------------ labels, parsing


def test_backend_labels_are_parsed_once():
    parse = BackendLabel.from_option
    assert parse("jax==0.7.1") == BackendLabel("jax", "0.7.1")
    assert parse(" jax @ 0.7.1 ") == BackendLabel("jax", "0.7.1")
    assert parse("torch-compile") == BackendLabel("torch-compile")
    assert parse("torch==2.13.0+cpu") == BackendLabel("torch", "2.13.0+cpu")
    for bad in ("jax==", "jax>=0.7", "jax~=0.7", "==0.7.1", "jax==0.7 1"):
        with pytest.raises(FwbenchError):
            parse(bad)
    assert BackendLabel("jax", "0.7.1").name == "jax@0.7.1" and BackendLabel("jax").name == "jax"
    copy = BackendLabel.parse("jax@0.7.1#2")
    assert (copy.base, copy.version, copy.copy) == ("jax", "0.7.1", 2)
    assert copy.name == "jax@0.7.1#2" and copy.versioned == "jax@0.7.1"
    assert BackendLabel.parse("torch#2") == BackendLabel("torch", None, 2)
    assert copy.option == "jax==0.7.1"


def test_versions_and_copies_go_through_one_path(known):
    known = dict(known)
    names = common.backend_names("jax==0.7.1,jax,torch,torch,jax==0.7.1", known)
    assert names == ["jax@0.7.1", "jax", "torch", "torch#2", "jax@0.7.1#2"]
    assert known["jax@0.7.1"].name == "jax@0.7.1"
    assert known["jax@0.7.1#2"].adapter == known["jax"].adapter
    assert known["torch#2"].name == "torch#2"
    with pytest.raises(FwbenchError, match="unknown backend 'nope'"):
        common.backend_names("nope==1.0", dict(known))
    with pytest.raises(FwbenchError, match="does not use"):
        common.backend_names("jax==0.7.1", dict(known), allow_versions=False)


# ------------------------------------------------------------------ requirement sets


def test_the_repo_pins_every_backend_and_variants_share_their_base_env(known):
    sets = {n: envs.requirement_set(known[n]) for n in
            ("torch", "torch-compile", "jax", "flax", "tensorflow", "tensorflow-xla",
             "mindspore", "mindspore-pynative", "paddle", "paddle-static")}
    for name, rs in sets.items():
        assert rs.origin == f"requirements/{rs.family}.txt"
        assert rs.lines and all("==" in line for line in rs.lines), (name, rs.lines)  # pinned
        assert "numpy>=1.26" in rs.core and rs.source == str(REPO)
    assert sets["torch-compile"].key == sets["torch"].key  # same env, same name
    assert sets["tensorflow-xla"].name == sets["tensorflow"].name
    assert sets["mindspore-pynative"].key == sets["mindspore"].key
    assert sets["paddle-static"].key == sets["paddle"].key  # paddlepaddle.txt, found by its distribution
    assert len({sets[n].key for n in ("torch", "jax", "flax", "tensorflow", "mindspore", "paddle")}) == 6
    ms = dict(line.split("==") for line in sets["mindspore"].lines)
    assert ms["numpy"].startswith("1."), "MindSpore 2.10 needs NumPy 1.x"
    assert sets["jax"].name == f"jax-{sets['jax'].key[:12]}"


def test_a_version_override_pins_the_backend_and_its_lockstep_partners(known):
    plain = envs.requirement_set(known["jax"])
    old = envs.requirement_set(known["jax"], "0.7.1")
    pins = dict(line.split("==") for line in old.lines)
    assert pins["jax"] == pins["jaxlib"] == "0.7.1"
    assert pins["optax"] == dict(line.split("==") for line in plain.lines)["optax"]  # kept
    assert old.key != plain.key and old.name.startswith("jax-0.7.1-")
    assert old.backend == "jax@0.7.1"
    assert envs.for_label("jax@0.7.1#2", known).key == old.key  # a copy runs in the same env
    # a distribution the file does not name is appended
    assert envs.override(["optax==0.2.8"], "jax", "0.7.1") == ("optax==0.2.8", "jax==0.7.1", )
    assert envs.override(["Jax[cpu]>=0.4 ; python_version>'3'"], "jax", "0.5") == ("Jax[cpu]==0.5",)


def test_the_key_hashes_the_full_requirement_set(known, tmp_path):
    a = envs.requirement_set(known["torch"])
    assert a.key == envs.requirement_set(known["torch"]).key  # stable
    folder = tmp_path / "requirements"
    folder.mkdir()
    (folder / "torch.txt").write_text("# a comment\n\ntorch==2.13.0   # inline\nnumpy==2.4.6\n")
    same = envs.requirement_set(known["torch"], requirements_dir=folder)
    assert same.lines == ("torch==2.13.0", "numpy==2.4.6")
    (folder / "torch.txt").write_text("numpy==2.4.6\ntorch==2.13.0\n")  # order does not matter
    assert envs.requirement_set(known["torch"], requirements_dir=folder).key == same.key
    (folder / "torch.txt").write_text("torch==2.13.0\nnumpy==2.4.5\n")  # a changed pin
    assert envs.requirement_set(known["torch"], requirements_dir=folder).key != same.key
    # fwbench's core requirements, the source tree and the Python version are in it too
    assert dataclasses.replace(same, core=same.core + ("extra>=1",)).key != same.key
    assert dataclasses.replace(same, python="3.99").key != same.key
    assert dataclasses.replace(same, source="/elsewhere").key != same.key
    (folder / "torch.txt").write_text("-r other.txt\n")
    with pytest.raises(FwbenchError, match="not supported"):
        envs.requirement_set(known["torch"], requirements_dir=folder)


def test_a_plugin_declares_its_own_requirements(tmp_path):
    plugin = Backend("toy", "toy_mod:Adapter", ("numpy",), requirements=("numpy==2.4.6",),
                     source="plugin fwbench-toy-not-installed 1.0")
    rs = envs.requirement_set(plugin, requirements_dir=tmp_path)
    assert rs.lines == ("numpy==2.4.6",) and rs.family == "toy"
    assert "Backend.requirements" in rs.origin
    assert envs.requirement_set(plugin, "2.0.2", requirements_dir=tmp_path).lines == ("numpy==2.0.2",)
    (tmp_path / "toy.txt").write_text("numpy==1.26.4\n")  # a file in the repo wins
    assert envs.requirement_set(plugin, requirements_dir=tmp_path).lines == ("numpy==1.26.4",)
    bare = Backend("bare", "m:C", ("numpy",))
    with pytest.raises(FwbenchError, match="no requirement set"):
        envs.requirement_set(bare, requirements_dir=tmp_path / "none")


def test_a_plugin_installed_from_a_folder_brings_itself_into_its_env(tmp_path):
    """The plugin's own distribution is installed into its env from where it came from."""
    import shutil

    target, src = tmp_path / "site", tmp_path / "plugin"
    shutil.copytree(REPO / "tests" / "plugin", src)  # the build writes next to the sources
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import json; from fwbench.harness.run import envs; from fwbench.harness.catalog.backends import discover; b = discover()['numpy-toy'];"
            "print(json.dumps(list(envs.requirement_set(b).lines)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = json.loads(out.stdout)
    assert line == f"fwbench-numpy-toy @ {src.as_uri()}"


# ------------------------------------------------------------------ refusals


@pytest.mark.slow
def test_a_missing_env_is_refused_with_the_command_that_creates_it(tmp_path):
    root = tmp_path / "none"
    r = fwbench("run", "--envs", "isolated", "--backends", "jax==0.7.1,torch,torch", "--tasks", "mlp",
                "--profile", "smoke", "--out", str(tmp_path / "run"), envs_dir=root)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line == (f"fwbench: error: no env for backend(s) jax@0.7.1, torch in {root}; create them "
                    "with: fwbench envs create --backends jax==0.7.1,torch")
    assert not (tmp_path / "run" / "results.jsonl").exists()
    # a version implies its own env, even with --envs current (the default)
    r = fwbench("check", "--backends", "jax==0.7.1", "--tasks", "mlp", envs_dir=root)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("create them with: fwbench envs create --backends jax==0.7.1")
    r = fwbench("run", "--envs", "isolated", "--envs-dir", str(root), "--backends", "torch",
                "--tasks", "mlp", "--profile", "smoke", "--out", str(tmp_path / "run"), envs_dir=root)
    assert r.returncode == 2 and f"fwbench envs create --envs-dir {root} --backends torch" in r.stderr
    for args in (("run", "--envs", "sideways"), ("envs", "create", "--backends", "nope"),
                 ("envs", "create", "--backends", "jax>=0.7"), ("envs", "remove"),
                 ("overhead", "--backends", "jax==0.7.1")):
        r = fwbench(*args, envs_dir=root)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith("fwbench: error: ")


@pytest.mark.slow
def test_a_pip_failure_is_one_line_and_leaves_no_env(tmp_path):
    broken = Backend("broken", "m:C", ("numpy",), requirements=(
        f"fwbench-missing @ file://{tmp_path}/does-not-exist",), source="plugin broken 1.0")
    rs = envs.requirement_set(broken)
    root = tmp_path / "envs"
    lines: list[str] = []
    with pytest.raises(FwbenchError) as info:
        envs.create(rs, root, lines.append)
    message = str(info.value)
    assert "\n" not in message and message.startswith("pip could not build the env of broken:")
    assert (root / f"{rs.name}.failed.log").is_file() and lines
    assert not (root / rs.name).exists() and envs.find(rs, root) is None


def test_list_and_remove_incomplete_and_foreign_folders(tmp_path):
    root = tmp_path / "envs"
    half = root / "torch-0123456789ab"  # a creation that died: a venv, no manifest
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(half)], check=True)
    (half / "requirements.txt").write_text("torch==2.13.0\n")
    (root / "notes").mkdir()  # not an env: never touched
    listed = fwbench("envs", "list", "--json", envs_dir=root)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["envs"]
    assert row["name"] == half.name and row["status"] == "incomplete" and row["size_bytes"] > 0
    removed = fwbench("envs", "remove", "--stale", envs_dir=root)
    assert removed.returncode == 0 and f"removed {half.name}" in removed.stdout
    assert not half.exists() and (root / "notes").is_dir()
    assert "no envs in" in fwbench("envs", "list", envs_dir=root).stdout
    with pytest.raises(FwbenchError, match="not an fwbench env"):
        envs.remove(envs.open_env(root / "notes"))


# ------------------------------------------------------------------ the real thing


@pytest.fixture(scope="module")
def torch_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-envs")
    r = fwbench("envs", "create", "--backends", "torch", envs_dir=root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "pip: collecting torch==2.13.0" in r.stdout and "created torch-" in r.stdout  # progress
    (env,) = envs.all_envs(root)
    assert env.complete
    yield root, env
    import shutil

    shutil.rmtree(root, ignore_errors=True)  # 1.3 GiB: never left in pytest's kept tmp folders


@pytest.mark.envs
@pytest.mark.slow
def test_isolated_env_runs_a_cell_and_the_check_with_its_own_packages(torch_env, tmp_path):
    root, env = torch_env
    out = tmp_path / "run"
    r = fwbench("run", "--envs", "isolated", "--backends", "torch", "--tasks", "mlp", "--profile",
                "smoke", "--out", str(out), envs_dir=root)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (record,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["test_accuracy"] > 0.8
    # the worker ran the env's interpreter, not the test's, and saw the env's packages
    assert record["python"] == str(env.python)
    assert not Path(record["python"]).is_relative_to(sys.prefix)
    installed = env.packages()
    for dist in ("torch", "numpy", "fwbench"):
        assert record["packages"][dist] == installed[dist]
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["envs"] == "isolated"
    info = meta["backends"]["torch"]["env"]
    assert info["path"] == str(env.path) and info["key"] == env.key
    assert info["packages"]["torch"] == installed["torch"] == meta["backends"]["torch"]["requires"]["torch"]
    assert info["python"] == env.manifest["python"]
    from fwbench.harness.report import analysis, verdict  # the report names the env's versions

    lines = dict(verdict.run_lines(analysis.analyze(out)))
    assert f"torch: numpy {installed['numpy']}, torch {installed['torch']}" in lines["backend packages"]
    assert "runner packages" in lines and "packages" not in lines

    check = fwbench("check", "--envs", "isolated", "--backends", "torch", "--tasks", "mlp",
                    envs_dir=root)
    assert check.returncode == 0 and "pass" in check.stdout, check.stdout + check.stderr
    assert f"env torch: {env.path}" in check.stdout

    listed = json.loads(fwbench("envs", "list", "--json", envs_dir=root).stdout)
    (row,) = listed["envs"]
    assert row["name"] == env.name and row["status"] == "current" and row["backend"] == "torch"
    assert row["size_bytes"] > 300 * 2**20 and "torch 2.13.0" in row["packages"]
    assert row["create_s"] > 0 and row["key"] == env.key
    again = fwbench("envs", "create", "--backends", "torch-compile", envs_dir=root)  # same set
    assert again.returncode == 0 and f"exists: {env.name}" in again.stdout

    removed = fwbench("envs", "remove", "--backends", "torch", envs_dir=root)
    assert removed.returncode == 0 and f"removed {env.name}" in removed.stdout
    assert not env.path.exists() and envs.all_envs(root) == []
