"""The idiomatic reference loops (benchmarks/idiomatic) and the sweep of
``fwbench overhead --against idiomatic``. Never a timing assertion: these check that the loops
build, run and learn, and that the sweep runs, pairs and reports its processes."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from fwbench.harness.check import idiomatic
from fwbench.harness import records, spec, stats
from fwbench.harness.adapter import Backend

TESTS = Path(__file__).parent

# family -> distributions its loop imports
NEEDS = {"torch": ("torch",), "tensorflow": ("tensorflow", "keras"), "mindspore": ("mindspore",),
         "jax": ("jax", "optax"), "flax": ("flax", "jax", "optax"), "paddle": ("paddlepaddle",)}
# the tasks each family's loop trains (issue 12's three; Paddle's loop has every task)
LOOP_TASKS = {"paddle": ("mlp", "lenet", "lstm", "cnn", "gru", "bigru", "cnn_gru")}


def _missing(family: str) -> list[str]:
    out = []
    for dist in NEEDS[family]:
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            out.append(dist)
    return out


# One process per framework (thread settings are process-wide and some frameworks do not
# share a process well): 3 steps of every task on real batches of the shipped sample, then
# the MLP's loss on its first batch before and after 20 training steps on real batches.
PROBE = r"""
import json, sys
from fwbench.harness import spec
from fwbench.harness.catalog import tasks
from fwbench.harness.run.worker import load_loop
loop = load_loop(sys.argv[1])
out = {}
for name in sys.argv[2].split(","):
    task = spec.TASKS[name]
    arrays = tasks.arrays(task, tasks.prepare(task, "smoke"))
    x, y = arrays["x_train"], arrays["y_train"]
    step = loop.make_step(name, 1)
    n = 21 if name == "mlp" else 3
    batches = spec.batch_order(len(x), task.batch_size, 0, n)
    losses = [step(x[i], y[i]) for i in batches]
    if name == "mlp":  # the first batch again, after 20 steps: its loss before the update
        losses.append(step(x[batches[0]], y[batches[0]]))
    out[name] = {"types": sorted({type(v).__name__ for v in losses}), "losses": losses}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("family", list(idiomatic.LOOP_FILES))
@pytest.mark.slow
def test_each_loop_builds_runs_and_learns(family, tmp_path):
    missing = _missing(family)
    if missing:
        pytest.skip(f"{family} not installed (missing {', '.join(missing)})")
    path = idiomatic.loops_dir() / idiomatic.LOOP_FILES[family]
    names = LOOP_TASKS.get(family, ("mlp", "lenet", "lstm"))
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), ",".join(names)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PJRT_NPROC": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert list(out) == list(names)
    for name in names:
        losses = out[name]["losses"]
        assert out[name]["types"] == ["float"], (name, out[name]["types"])
        assert len(losses) == (22 if name == "mlp" else 3)
        assert all(math.isfinite(v) and v > 0 for v in losses), (name, losses)
    before, after = out["mlp"]["losses"][0], out["mlp"]["losses"][-1]
    assert after < before, f"mlp: loss on batch 0 {before:.4f} -> {after:.4f} after 20 steps"


def test_every_family_has_a_loop_with_make_step():
    for family, file in idiomatic.LOOP_FILES.items():
        src = (idiomatic.LOOPS_DIR / file).read_text()
        assert "def make_step(task_name: str, threads: int)" in src, file
        assert not re.search(r"^\s*(from|import)\s+fwbench", src, re.M), \
            f"{file} must not import fwbench: it is an independent loop"
    assert (idiomatic.LOOPS_DIR / "README.md").is_file()


def test_family_variants_and_loop_paths():
    assert idiomatic.family("torch") == "torch"
    assert idiomatic.family("torch-compile#2") == "torch"
    assert idiomatic.family("tensorflow-xla") == "tensorflow"
    assert idiomatic.family("flax") == "flax" and idiomatic.family("toy") is None
    known = {n: Backend(n, "m:C", ()) for n in ("torch", "torch-compile", "jax")}
    known["torch-other"] = Backend("torch-other", "other:Adapter", ())  # not on torch's adapter
    known["torch#2"] = Backend("torch#2", "m:C", ())  # an A/A copy, not a variant
    assert idiomatic.variants_of("torch", known) == ["torch-compile"]
    assert idiomatic.variants_of("torch-compile", known) == ["torch"]
    assert idiomatic.variants_of("jax", known) == []
    assert idiomatic.loop_path("tensorflow-xla").name == "keras_loop.py"
    assert idiomatic.loop_path("paddle-static").name == "paddle_loop.py"
    with pytest.raises(Exception, match="no idiomatic reference loop"):
        idiomatic.loop_path("toy")


def test_batch_order_is_the_runs_order_across_epochs():
    got = spec.batch_order(300, 128, 0, 5)  # 2 batches per epoch
    want = spec.train_batches(300, 128, 0, 1) + spec.train_batches(300, 128, 0, 2) + \
        spec.train_batches(300, 128, 0, 3)[:1]
    assert len(got) == 5 and all((a == b).all() for a, b in zip(got, want))


def test_plan_interleaves_adapter_and_loop_round_by_round():
    jobs = idiomatic.plan(["mlp", "lstm"], ["torch", "jax"], 2, {"torch": ["torch-compile"]})
    labels = [(j.round, j.task, j.column, j.label) for j in jobs]
    assert labels[:5] == [(0, "mlp", "torch", "adapter"), (0, "mlp", "torch", "loop"),
                          (0, "mlp", "torch", "torch-compile"), (0, "mlp", "jax", "adapter"),
                          (0, "mlp", "jax", "loop")]
    assert len(jobs) == 2 * 2 * (3 + 2)
    assert [j.round for j in jobs] == sorted(j.round for j in jobs)  # rounds outermost


def test_request_round_trip():
    req = records.IdiomaticRequest(1, [0], records.BackendSpec("torch", "m:C"), task={"a": 1},
                                   data_path="d", kind="idiomatic", loop="l.py", steps=7)
    back = records.request_from_json(json.loads(json.dumps(req.to_json())))
    assert back == req and back.mode == "idiomatic"


def _result(task, column, kind, r, figure, backend=None, status="ok"):
    job = idiomatic.Job(task, column, backend or column, kind, r)
    return idiomatic.Result(job, status, None if status == "ok" else "boom",
                            [figure] * 5 if status == "ok" else [])


def test_summary_ratio_ci_and_target_from_process_figures():
    results = []
    for r, (a, loop, comp) in enumerate([(2.2, 2.0, 1.5), (2.1, 2.0, 1.6), (2.3, 2.1, 1.5)]):
        results += [_result("mlp", "torch", "adapter", r, a), _result("mlp", "torch", "idiomatic", r, loop),
                    _result("mlp", "torch", "adapter", r, comp, backend="torch-compile")]
        results += [_result("mlp", "jax", "adapter", r, 1.0), _result("mlp", "jax", "idiomatic", r, 1.25)]
    results.append(_result("mlp", "jax", "idiomatic", 3, 0, status="crashed"))
    rows = idiomatic.summarize(results)
    torch_row, jax_row = rows[("mlp", "torch")], rows[("mlp", "jax")]
    assert torch_row.ratio == pytest.approx(2.2 / 2.0)
    ci = torch_row.ci
    assert ci == stats.ratio_ci([2.0, 2.0, 2.1], [2.2, 2.1, 2.3]) and ci.lo <= torch_row.ratio <= ci.hi
    assert torch_row.best_variant == ("torch-compile", 1.5)
    assert torch_row.reference[0] == "torch-compile" and torch_row.target == pytest.approx(2.2 / 1.5)
    assert jax_row.ratio == pytest.approx(0.8) and jax_row.reference[0] == "loop"
    assert jax_row.failed == ["loop round 4: crashed: boom"]

    console = Console(width=200, record=True, color_system=None)
    columns = ["torch", "tensorflow", "mindspore", "jax", "flax", "paddle"]  # the widest case
    for item in idiomatic.tables(rows, ["mlp", "lenet", "lstm"], columns, 3, 200, "quick"):
        console.print(item)
    for line, _ in idiomatic.notes(rows, 3):
        console.print(line)
    text = console.export_text()
    assert "1.10" in text and f"[{ci.lo:.2f}, {ci.hi:.2f}]" in text
    assert "1.47* compile" in text and "0.80 loop" in text
    assert "failed" in text  # tasks/backends without processes
    tables_only = text.split("ratio = ")[0]
    assert max(len(ln.rstrip()) for ln in tables_only.splitlines()) <= 80


@pytest.mark.slow
def test_sweep_in_worker_processes_with_a_toy_adapter_and_a_toy_loop(tmp_path, monkeypatch):
    """The whole pipeline without a framework: the column 'torch' runs the toy adapter, its
    reference loop is a toy file in FWBENCH_IDIOMATIC_DIR; a broken loop fails its processes
    only, with the error."""
    loops = tmp_path / "loops"
    loops.mkdir()
    (loops / "torch_loop.py").write_text(
        "def make_step(task_name, threads):\n"
        "    assert task_name == 'mlp' and threads == 1\n"
        "    return lambda x, y: float(x.shape[0] == 128 and y.dtype.name == 'int32')\n")
    (loops / "jax_loop.py").write_text("def make_step(task_name, threads):\n    raise RuntimeError('no')\n")
    monkeypatch.setenv(idiomatic.LOOPS_ENV, str(loops))
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    known = {n: Backend(n, "toy_backend:Constant", (), source="test") for n in ("torch", "jax")}
    from fwbench.harness import data

    jobs = idiomatic.plan(["mlp"], ["torch", "jax"], 2)
    results = idiomatic.run(jobs, known, threads=1, cpus=[os.sched_getaffinity(0).pop()],
                            data_paths={"mlp": data.prepare(data.DATASETS["mnist"], "smoke")}, steps=3,
                            warmup=2, timeout_s=120)
    by = {(r.job.column, r.job.label, r.job.round): r for r in results}
    assert all(by[("torch", k, r)].status == "ok" for k in ("adapter", "loop") for r in (0, 1))
    assert all(len(by[("torch", k, 0)].step_ms) == 3 for k in ("adapter", "loop"))
    assert by[("jax", "adapter", 0)].status == "ok"
    bad = by[("jax", "loop", 0)]
    assert bad.status == "failed" and "RuntimeError: no" in bad.error
    rows = idiomatic.summarize(results)
    assert len(rows[("mlp", "torch")].adapter) == 2 and len(rows[("mlp", "torch")].loop) == 2
    assert rows[("mlp", "jax")].loop == [] and len(rows[("mlp", "jax")].failed) == 2


def _fwbench(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "80", **(env or {})})


def test_cli_refuses_sweep_options_without_against_and_unknown_references():
    r = _fwbench("overhead", "--rounds", "2")
    assert r.returncode == 2 and "need --against idiomatic" in r.stderr
    r = _fwbench("overhead", "--against", "numpy")
    assert r.returncode == 2 and "only reference is 'idiomatic'" in r.stderr


@pytest.mark.slow
@pytest.mark.torch
def test_cli_sweep_torch_mlp(tmp_path):
    if _missing("torch"):
        pytest.skip("torch not installed")
    out = tmp_path / "sweep.json"
    r = _fwbench("overhead", "--against", "idiomatic", "--tasks", "mlp", "--backends", "torch",
                 "--rounds", "1", "--steps", "5", "--profile", "smoke", "--no-variants",
                 "--threads", "1", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    words = " ".join(r.stdout.split())  # the explanation wraps at 80 columns
    assert "adapter / idiomatic loop" in words
    assert "above 1 = fwbench's adapter slower than the hand-written loop" in words
    assert " mlp " in words and " torch " in words
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80
    doc = json.loads(out.read_text())
    assert [(p["label"], p["status"], len(p["step_ms"])) for p in doc["processes"]] == \
        [("adapter", "ok", 5), ("loop", "ok", 5)]
    (row,) = doc["rows"]
    assert row["ratio"] > 0 and row["ratio_ci"] is None  # 1 round: no CI


def test_a_plugin_declares_its_own_reference_loop(monkeypatch):
    """``Backend(idiomatic=MODULE)``: a plugin's hand-written loop, found as its family's."""
    import dataclasses

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin"))
    from fwbench_numpy_toy import BACKEND

    variant = dataclasses.replace(BACKEND, name="numpy-toy-fast", options={"fast": True})
    known = {"numpy-toy": BACKEND, "numpy-toy-fast": variant}
    assert idiomatic.family("numpy-toy", known) == "numpy-toy"
    assert idiomatic.family("numpy-toy-fast", known) == "numpy-toy"
    assert idiomatic.family("numpy-toy") is None  # without the backends, only the built-ins
    assert idiomatic.loop_path("numpy-toy", known).name == "fwbench_numpy_toy_loop.py"
    assert idiomatic.variants_of("numpy-toy", known) == ["numpy-toy-fast"]
    gone = {"numpy-toy": dataclasses.replace(BACKEND, idiomatic="no_such_loop_module")}
    with pytest.raises(Exception, match="is not importable here"):
        idiomatic.loop_path("numpy-toy", gone)


@pytest.mark.slow
def test_overhead_against_idiomatic_covers_a_plugin():
    """As a user runs it: the plugin's adapter against its own loop, a ratio in the table."""
    plugin = Path(__file__).parent / "plugin"
    code = ("import sys, fwbench.harness.catalog.backends as b, fwbench_numpy_toy as t\n"
            "b.discover = lambda warn=None: {t.BACKEND.name: t.BACKEND}\n"
            "from fwbench.harness.cli import main\n"
            "main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", code, "overhead", "--against", "idiomatic",
                        "--backends", "numpy-toy", "--tasks", "mlp", "--rounds", "3",
                        "--steps", "20", "--threads", "1"],
                       env={**os.environ, "COLUMNS": "100", "PYTHONPATH": str(plugin)},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    # the target table: the adapter against the faster of its loop and variants (the loop here)
    assert re.search(r"^\s*mlp\s+\d+\.\d\d\*? loop\s*$", r.stdout, re.M), r.stdout
