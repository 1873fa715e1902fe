"""Cells on a Ray cluster (``--executor ray``), and matched hardware in reports and compare.

The hardware tests rewrite the fixture runs' records with fingerprints (no Ray needed). The
Ray tests start a REAL two-node Ray cluster on this machine, each node pinned with taskset
to a core of its own with one ``fwbench_slot``, run the smoke profile through the CLI on it,
kill the second node's raylet in the middle of a cell, interrupt a run with Ctrl-C and
resume it; ``ray stop --force`` at the end whatever happened, and no Ray process may be left.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from fwbench.harness.report import analysis, compare, markdown as report
from fwbench.harness.measure import environment
from fwbench.harness import records
from fwbench.harness.errors import FwbenchError
from procs import is_worker, wait_for as _wait

FIX = Path(__file__).parent / "fixtures"
RAY_BIN = Path(sys.executable).parent / "ray"
SMOKE = ["--profile", "smoke", "--tasks", "mlp,lenet", "--backends", "torch,jax", "--threads", "1",
         "--timeout", "300"]


# Bounds for a hang only (a cell's own --timeout is 300 s): on a loaded machine a Ray run
# is slow, not stuck (each node has one core; with two CPU hogs and the other test worker,
# 4 smoke cells took over 5 minutes)
RUN_BOUND_S = 900


def fwbench(*args, env=None, timeout=RUN_BOUND_S):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "160", **(env or {})})


# ------------------------------------------------------------------ matched hardware


def _hw(name: str) -> dict:
    fields = {"cpu_model": name, "cpu_flags_sha256": "0" * 16, "cores": 1, "logical_cores": 2,
              "memory_gib": 24, "kernel": "6.1", "accelerators": []}
    return {"id": (name.encode().hex() + "0" * 12)[:12], **fields}


def _fingerprinted(tmp_path: Path, src: Path, name: str, which) -> Path:
    """A copy of a fixture run whose records carry ``which(record) -> cpu name`` as fingerprint."""
    dst = tmp_path / name
    shutil.copytree(src, dst)
    lines = [json.loads(x) for x in (src / records.RESULTS).read_text().splitlines() if x.strip()]
    with open(dst / records.RESULTS, "w") as f:
        for r in lines:
            cpu = which(r)
            f.write(json.dumps({**r, "node": f"node-{cpu}", "hardware": _hw(cpu)}) + "\n")
    return dst


def test_old_runs_without_fingerprints_still_load_and_report():
    run = records.load_run(FIX / "run-a")
    assert all(r.hardware is None and r.node is None for r in run.records)
    a = analysis.analyze(run)
    assert a.hardware.groups == 1 and a.hardware.split == []
    assert [t.task for t in a.tasks] == ["mlp", "lenet"]
    assert "- hardware: 28 record(s) without a fingerprint" in report.markdown_report(a)


def test_cells_on_different_hardware_are_not_ranked_together(tmp_path):
    same = _fingerprinted(tmp_path, FIX / "run-a", "same", lambda r: "Xeon")
    a = analysis.analyze(same)
    assert a.hardware.groups == 1 and [t.task for t in a.tasks] == ["mlp", "lenet"]
    assert "hw 58656f6e: Xeon, 1 of 2 cores" in report.markdown_report(a)

    # one backend's mlp cells on another CPU: mlp is reported once per fingerprint
    mixed = _fingerprinted(tmp_path, FIX / "run-a", "mixed",
                           lambda r: "EPYC" if (r["task"], r["backend"]) == ("mlp", "numpy-learner")
                           else "Xeon")
    a = analysis.analyze(mixed)
    names = [t.task for t in a.tasks]
    assert names == ["mlp [hw 45505943]", "mlp [hw 58656f6e]", "lenet"], names
    assert all(len(t.rows) == 1 for t in a.tasks[:2])  # nothing ranked across them
    assert not [p for t in a.tasks[:2] for p in t.pairs]
    text = report.markdown_report(a)
    assert "are not ranked together: mlp is reported once per fingerprint" in text
    assert "## mlp [hw 45505943]" in text and "## mlp [hw 58656f6e]" in text

    # asked: ranked together, and labelled
    a = analysis.analyze(mixed, mixed_hardware=True)
    assert [t.task for t in a.tasks] == ["mlp", "lenet"] and len(a.tasks[0].rows) == 2
    text = report.markdown_report(a)
    assert "MIXED HARDWARE, ranked together as asked (--mixed-hardware)" in text
    assert "mlp/numpy-learner hw 45505943 x7" in text and "mlp/numpy-learner-slow hw 58656f6e x7" in text
    r = fwbench("report", mixed, "--format", "md", "--mixed-hardware")
    assert r.returncode == 0 and "MIXED HARDWARE" in r.stdout


def test_compare_refuses_cells_measured_on_different_hardware(tmp_path):
    a = _fingerprinted(tmp_path, FIX / "run-a", "a", lambda r: "Xeon")
    b = _fingerprinted(tmp_path, FIX / "run-b", "b",
                       lambda r: "EPYC" if r["backend"] == "numpy-learner-slow" else "Xeon")
    result = compare.compare(a, b)
    assert {(c.task, c.backend) for c in result.changes} == {("mlp", "numpy-learner"),
                                                            ("lenet", "numpy-learner")}
    assert sorted(m.text() for m in result.hardware) == [
        "lenet/numpy-learner-slow (A on hw 58656f6e, B on hw 45505943)",
        "mlp/numpy-learner-slow (A on hw 58656f6e, B on hw 45505943)"]
    assert len(compare.compare(a, b, mixed_hardware=True).changes) == 4
    r = fwbench("compare", a, b)
    assert r.returncode == 0
    assert "not compared, measured on different hardware: lenet/numpy-learner-slow" in r.stderr
    r = fwbench("compare", a, b, "--mixed-hardware", "--fail-on-regression", "5")
    assert r.returncode == 1 and "mixed hardware, compared as asked" in r.stderr  # the lenet regression
    every = _fingerprinted(tmp_path, FIX / "run-b", "every", lambda r: "EPYC")
    with pytest.raises(FwbenchError, match="no .task, backend. measured on the same hardware"):
        compare.compare(a, every)
    old = compare.compare(FIX / "run-a", every)  # an older run's cells are taken on trust
    assert len(old.changes) == 4 and old.hardware == []


def test_env_shows_the_hardware_fingerprint():
    r = fwbench("env", "--json")
    hw = json.loads(r.stdout)["hardware"]
    assert hw == records.to_json(environment.hardware_fingerprint())
    assert len(hw["id"]) == 12 and hw["cores"] == len(environment.available_cpus())


# ------------------------------------------------------------------ a real Ray cluster


@pytest.mark.slow
def test_no_cluster_or_no_ray_is_one_line(tmp_path):
    """Before any cluster exists (this test runs before the module's cluster starts)."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in ("auto", f"127.0.0.1:{port}"):
        r = fwbench("run", "--executor", "ray", "--ray-address", address, *SMOKE,
                    "--out", tmp_path / "x", timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"fwbench: error: no Ray cluster at {address}: start one with "
                                    "`ray start --head --resources '{\"fwbench_slot\": 1}'` "
                                    "(see docs/cluster.md)")
    no_ray = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ray'] = None; "
         "from fwbench.harness.cli import main; main()", "run", "--executor", "ray", *SMOKE],
        capture_output=True, text=True, timeout=60)
    assert no_ray.returncode == 2
    assert no_ray.stderr.strip() == 'fwbench: error: --executor ray needs Ray: pip install -e ".[ray]"'
    r = fwbench("run", "--ray-address", "auto", *SMOKE)
    assert r.returncode == 2 and "--ray-address and --ray-data go with --executor ray" in r.stderr


def _ray_processes(since: float) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= since - 1 and (
                p.info["name"] in ("raylet", "gcs_server") or cmd.startswith("ray::")
                or "/site-packages/ray/" in cmd):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine: the head on the first core, a second node on the second
    (the same core where there is only one), one fwbench slot each."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    cores = environment.available_cpus()
    first, second = cores[0], cores[1 % len(cores)]
    temp = Path(tempfile.mkdtemp(prefix="fwray-"))  # short: Ray's socket paths must fit
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "FWBENCH_CACHE_DIR": os.environ.get("FWBENCH_CACHE_DIR") or str(temp / "cache")}
    common = ["--num-cpus", "1", "--resources", '{"fwbench_slot": 1}',
              "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    since = time.time()
    try:
        subprocess.run(["taskset", "-c", str(first), RAY_BIN, "start", "--head", "--port", str(port),
                        "--temp-dir", str(temp), "--include-dashboard", "false", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(["taskset", "-c", str(second), RAY_BIN, "start",
                        "--address", f"127.0.0.1:{port}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield {"address": f"127.0.0.1:{port}", "env": env, "cores": (first, second)}
    finally:
        subprocess.run([RAY_BIN, "stop", "--force"], env=env, capture_output=True, timeout=120)
        left: list = []
        for _ in range(20):
            left = _ray_processes(since)
            if not left:
                break
            time.sleep(0.5)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left after ray stop: {[p.info['cmdline'] for p in left]}"


def _records(run_dir: Path) -> list[records.CellRecord]:
    return records.read_records(run_dir / records.RESULTS)


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _report_shape(run_dir: Path) -> list[str]:
    """The structure of a Markdown report: headings, run-line labels, table headers."""
    lines = report.markdown_report(run_dir).splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("- "))
    head = lines[start:lines.index("", start)]  # the run's lines: "- label: value"
    shape = [x.split(":")[0] for x in head]
    shape += [x for x in lines if x.startswith("##")]  # not the title, nor the folder line
    shape += [lines[i - 1] for i, x in enumerate(lines) if x.startswith("|---")]
    return shape


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_on_two_nodes_like_a_local_run(cluster, tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    pytest.importorskip("jax", reason="JAX is not installed")
    r = fwbench("run", "--executor", "ray", "--ray-address", cluster["address"], *SMOKE,
                "--out", tmp_path / "ray", env=cluster["env"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)  # the node table and the summary, for the record
    assert "nodes (one cell per node at a time)" in r.stdout
    got = _records(tmp_path / "ray")
    assert [x.status for x in got] == ["ok"] * 4, [(x.status, x.error) for x in got]
    assert len({x.ident for x in got}) == 4
    nodes = {x.node for x in got}
    assert len(nodes) == 2 and "local" not in nodes, nodes
    # each node pinned its cells to its own core; both nodes are the same hardware
    by_node = {n: {tuple(x.affinity) for x in got if x.node == n} for n in nodes}
    assert sorted(v for s in by_node.values() for v in s) == sorted((c,) for c in cluster["cores"])
    assert len({x.hardware.id for x in got}) == 1 and got[0].hardware.cores == 1
    # one cell per node at a time: no two cells of a node overlap
    for n in nodes:
        spans = sorted((_at(x.started), _at(x.ended), x.backend, x.task) for x in got if x.node == n)
        print(f"node {n[:12]}: " + "; ".join(f"{t}/{b} {s % 1000:.3f}-{e % 1000:.3f}"
                                             for s, e, b, t in spans))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    meta = records.load_meta(tmp_path / "ray")
    assert meta.config.executor == "ray"
    assert {p.node for p in meta.drift_probes} == nodes and meta.calibration.node in nodes
    assert all((tmp_path / "ray" / x.log).is_file() for x in got)  # the nodes' logs came back
    # the same cells run locally: records of the same shape, a report of the same structure
    local = fwbench("run", *SMOKE, "--out", tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    mine = _records(tmp_path / "local")
    assert {x.node for x in mine} == {"local"}

    def shape(x):
        return {k for k, v in x.to_json().items() if v not in (None, [], {})}

    assert {frozenset(shape(x)) for x in got} == {frozenset(shape(x)) for x in mine}
    assert _report_shape(tmp_path / "ray") == _report_shape(tmp_path / "local")


def _train_worker_under(raylet: psutil.Process) -> dict | None:
    """The request of a training worker process running under ``raylet``, if there is one."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if not is_worker(cmd):
            continue
        try:
            if raylet.pid not in [q.pid for q in p.parents()]:
                continue
            with open(cmd[-1]) as f:
                request = json.load(f)
        except (OSError, ValueError, psutil.Error):
            continue
        if request.get("mode") == "train":
            return {**request, "pid": p.pid}
    return None


def _frozen(pid: int) -> bool:
    """SIGSTOP a worker; False if it ended first."""
    try:
        os.kill(pid, signal.SIGSTOP)
        p = psutil.Process(pid)
        for _ in range(100):
            if p.status() == psutil.STATUS_STOPPED:
                return True
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            time.sleep(0.02)
    except (ProcessLookupError, psutil.Error):
        pass
    return False


def _job_folders() -> set[str]:
    """The node-side folders of Ray jobs (``ray._ray_job``) on this machine."""
    return {str(p) for p in Path(tempfile.gettempdir()).glob("fwbench-job-*")}


def _raylets() -> list[psutil.Process]:
    found = [p for p in psutil.process_iter(["name", "create_time"]) if p.info["name"] == "raylet"]
    return sorted(found, key=lambda p: p.info["create_time"])


def _kill_if_worker(pid: int) -> None:
    try:
        p = psutil.Process(pid)
        if is_worker(p.cmdline()):
            p.kill()
    except psutil.Error:
        pass


def _workers_left() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if is_worker(p.info["cmdline"])]


@pytest.mark.slow
@pytest.mark.ray
def test_a_node_dying_mid_cell_costs_one_retry_on_the_other(cluster, tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    pytest.importorskip("jax", reason="JAX is not installed")
    raylets = _raylets()
    assert len(raylets) == 2
    second = raylets[1]  # the node started with `ray start --address`
    run_dir = tmp_path / "fault"
    proc = subprocess.Popen([sys.executable, "-m", "fwbench.harness.cli", "run", "--executor", "ray",
                             "--ray-address", cluster["address"], *SMOKE, "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cluster["env"], "COLUMNS": "160"})
    folders = _job_folders()
    victim = None
    deadline = time.monotonic() + RUN_BOUND_S
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        found = _train_worker_under(second)
        # frozen, the victim's cell cannot end (and the next cell start there) before its node dies
        victim = found if found is not None and _frozen(found["pid"]) else None
        time.sleep(0.2)
    assert victim is not None, "no cell ran on the second node"
    # The raylet: the node dies with the cell's worker on it. The victim stays frozen: a Ray
    # worker outlives its raylet for a moment and returns results to the driver directly, so a
    # victim let go here could still finish its cell (seen: then the next cell, sent to the
    # dead node, was the one retried). Its watchdog kills it when its Ray worker dies.
    second.kill()
    try:
        out, err = proc.communicate(timeout=RUN_BOUND_S)
    finally:
        proc.kill()
        _kill_if_worker(victim["pid"])
    print(out[-4000:], err[-2000:])
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    got = _records(run_dir)
    assert len(got) == 4 and len({x.ident for x in got}) == 4  # nothing lost, nothing twice
    assert all(x.status == "ok" for x in got), [(x.status, x.error) for x in got]
    task = victim["task"]["name"]
    backend = victim["backend"]["name"]
    (retried,) = [x for x in got if x.lost_node is not None]
    assert (retried.task, retried.backend) == (task, backend)
    assert retried.node != retried.lost_node and retried.node in {x.node for x in got}
    print(f"killed the raylet of node {retried.lost_node[:12]} during {task}/{backend}; "
          f"the cell ran again on node {retried.node[:12]}: {retried.status}")
    assert "running it again on another node" in out
    _wait(lambda: victim["pid"] not in _workers_left(), 10, "the victim worker to end")
    # the killed node's job never ran its finally: the next job on the machine (the retry,
    # on the same machine here) removed its folder
    assert _job_folders() <= folders, "the dead node's job folder was left"


@pytest.mark.slow
@pytest.mark.ray
def test_ctrl_c_cancels_the_ray_tasks_and_resume_finishes(cluster, tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    pytest.importorskip("jax", reason="JAX is not installed")
    run_dir = tmp_path / "ctrl-c"
    folders = _job_folders()
    args = ["--profile", "smoke", "--tasks", "mlp", "--backends", "torch,jax", "--threads", "1",
            "--timeout", "300"]
    proc = subprocess.Popen([sys.executable, "-m", "fwbench.harness.cli", "run", "--executor", "ray",
                             "--ray-address", cluster["address"], *args, "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cluster["env"], "COLUMNS": "160"})
    victim = None
    deadline = time.monotonic() + RUN_BOUND_S
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        victim = next((w for r in _raylets() if (w := _train_worker_under(r))), None)
        time.sleep(0.2)
    if victim is None:
        proc.kill()
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"no cell started (run exit {proc.returncode}): {err[-2000:]}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert f"Resume with: fwbench run --resume {run_dir}" in err
    # the cancelled task took the cell's worker with it
    _wait(lambda: victim["pid"] not in _workers_left(), 10, "the victim worker to end")
    assert _job_folders() <= folders, "a cancelled task left its node folder"
    before = {x.ident for x in _records(run_dir)}
    r = fwbench("run", "--resume", run_dir, "--ray-address", cluster["address"], env=cluster["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    got = _records(run_dir)
    assert len(got) == 2 and len({x.ident for x in got}) == 2 and before <= {x.ident for x in got}
    assert all(x.status == "ok" and x.node != "local" for x in got)
