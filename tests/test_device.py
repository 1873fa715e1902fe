"""``--device cpu|cuda[:N]`` on a machine without a GPU: parsing, the variables a worker sets
before its framework import, the one-line refusals, and the whole GPU record path (NVML
sampler, energy minus the idle baseline, the framework's GEMM, the fingerprint with the GPU,
reports and compare) run for real in worker processes against a fake ``pynvml`` module.

This file is also the toy backends' module: the workers import ``test_device:...`` (the
tests put this folder and the fake NVML on PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fwbench.harness.measure import device, environment
from fwbench.harness import records
from fwbench.harness.run import runner
from fwbench.harness.adapter import Backend
from fwbench.harness.errors import FwbenchError

from toy_backend import _Base as ToyBase  # build, evaluate, logits, gradients that learn nothing

TESTS = Path(__file__).parent
# What the worker had set when it imported the adapter's module (= the framework import).
ENV_AT_IMPORT = {k: os.environ.get(k) for k in (
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "JAX_PLATFORMS", "JAX_DEFAULT_MATMUL_PRECISION",
    "NVIDIA_TF32_OVERRIDE", "XLA_PYTHON_CLIENT_PREALLOCATE", "TF_FORCE_GPU_ALLOW_GROWTH")}


# ------------------------------------------------------------------ toy adapters


class CpuOnly(ToyBase):
    """Learns nothing, runs anywhere the base class says: the CPU only."""

    def train_step(self, x, y):
        time.sleep(0.002)
        return 1.0

    def thread_settings(self):
        return {"env_at_import": ENV_AT_IMPORT, "options_device": self.options.get("device")}


class FakeGpu(CpuOnly):
    """Says it can compute on "cuda", and answers every device question like a framework."""

    @classmethod
    def device_unsupported(cls, platform):
        return None

    def device_settings(self):
        return {"tf32": False}

    def device_versions(self):
        return {"cuda": "12.8", "cudnn": "9.8.0"}

    def memory_peak(self):
        return {"source": "toy", "counts": "nothing real", "peak_mib": 12.5, "reserved_peak_mib": 16.0}

    def gemm(self, n):
        return lambda k: time.sleep(0.001 * k)  # 2 n^3 / 1 ms: about 137,000 GFLOP/s


def toy(name, cls):
    return Backend(name=name, adapter=f"test_device:{cls}", requires=(), source="test")


TOYS = {"cpuonly": toy("cpuonly", "CpuOnly"), "fakegpu": toy("fakegpu", "FakeGpu"),
        "fakegpu2": toy("fakegpu2", "FakeGpu")}

# A fake NVML: one GPU whose energy counter runs at 250 W while a toy adapter is loaded in
# the process (training) and at 100 W otherwise (the runner's idle baseline).
FAKE_PYNVML = '''
import os, sys, time
from types import SimpleNamespace as NS
NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1
class NVMLError(Exception):
    pass
def nvmlInit():
    if os.environ.get("FAKE_NVML_FAIL"):
        raise NVMLError("Driver Not Loaded")
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(i):
    if i != 0:
        raise NVMLError("Invalid Argument")
    return "gpu0"
def nvmlDeviceGetName(h): return os.environ.get("FAKE_GPU_NAME", "Fake GPU 80GB")
def nvmlSystemGetDriverVersion(): return b"999.1"
def nvmlSystemGetCudaDriverVersion(): return 13000
def nvmlDeviceGetCudaComputeCapability(h): return (9, 0)
def nvmlDeviceGetMigMode(h): return (0, 0)
def nvmlDeviceGetEnforcedPowerLimit(h): return 700000
def nvmlDeviceGetMemoryInfo(h):
    return NS(total=80 * 2**30, used=(1024 if "test_device" in sys.modules else 512) * 2**20)
def nvmlDeviceGetMaxClockInfo(h, kind): return 1980 if kind == NVML_CLOCK_SM else 3201
def nvmlDeviceGetClockInfo(h, kind): return 1755
def nvmlDeviceGetUtilizationRates(h): return NS(gpu=87, memory=40)
def nvmlDeviceGetComputeRunningProcesses(h):
    return [NS(pid=os.getpid(), usedGpuMemory=300 * 2**20)] if "test_device" in sys.modules else []
def nvmlDeviceGetTotalEnergyConsumption(h):
    watts = 250 if "test_device" in sys.modules else 100
    return int(time.time() * watts * 1000)  # mJ
'''


def _with_fake_nvml(folder: Path, mp: pytest.MonkeyPatch) -> Path:
    """This folder (the toy adapters) and a fake pynvml on the workers' PYTHONPATH, and in
    this process's sys.path (the CLI's check)."""
    folder.mkdir(exist_ok=True)
    (folder / "pynvml.py").write_text(FAKE_PYNVML)
    mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(folder)]))
    mp.syspath_prepend(str(folder))
    mp.delitem(sys.modules, "pynvml", raising=False)
    return folder


@pytest.fixture
def fake_nvml(tmp_path, monkeypatch):
    yield _with_fake_nvml(tmp_path / "fake_nvml", monkeypatch)
    sys.modules.pop("pynvml", None)


@pytest.fixture
def no_gpu(tmp_path, monkeypatch):
    """Neither NVML nor nvidia-smi, whatever machine the tests run on."""
    folder = tmp_path / "no_nvml"
    folder.mkdir()
    (folder / "pynvml.py").write_text("def nvmlInit():\n    raise OSError('libnvidia-ml.so.1: not found')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(folder)]))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(device, "_nvidia_smi_count", lambda: None)
    yield folder
    sys.modules.pop("pynvml", None)


def config(backends, dev="cpu", tasks=("mlp",)):
    return runner.RunConfig(tuple(tasks), tuple(backends), "smoke", (0,), 1, 120.0, device=dev)


def read(run_dir):
    return {r.backend: r for r in records.read_records(Path(run_dir) / runner.RESULTS)}


# ------------------------------------------------------------------ parsing and env


def test_parse_devices():
    assert device.parse(None) == device.parse("cpu") == device.CPU and not device.CPU.gpu
    assert device.parse("cuda") == device.Device("cuda", 0) and device.parse("cuda").name == "cuda:0"
    assert device.parse(" CUDA:3 ").index == 3 and device.parse("cuda:3").gpu
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "tpu", "cpu:0"):
        with pytest.raises(FwbenchError, match="expected cpu, cuda or cuda:N"):
            device.parse(bad)


def test_worker_env_chooses_one_gpu_and_the_float32_policy():
    assert device.worker_env(device.CPU) == {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    env = device.worker_env(device.parse("cuda:2"))
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["JAX_DEFAULT_MATMUL_PRECISION"] == "highest" and env["NVIDIA_TF32_OVERRIDE"] == "0"
    assert env["JAX_PLATFORMS"] == "cuda,cpu"  # never a silent fall-back to the CPU


def test_cpu_cells_get_the_backends_options_unchanged():
    opts = {"compile": True}
    assert device.adapter_options(opts, device.CPU) == opts
    assert "device" not in device.adapter_options(opts, device.CPU)
    assert device.adapter_options(opts, device.parse("cuda:1")) == {"compile": True, "device": "cuda"}


def test_energy_is_the_training_phase_minus_the_idle_baseline():
    assert device.energy_per_sample(500.0, 100.0, 2.0, 1000) == (300.0, 0.3)
    assert device.energy_per_sample(None, 100.0, 2.0, 1000) == (None, None)
    assert device.energy_per_sample(500.0, None, 2.0, 1000) == (None, None)


def test_rapl_unreadable_or_absent_is_none_with_the_reason(monkeypatch, tmp_path):
    mon = device.CpuMonitor()
    if mon.domains:  # readable here (root on bare metal): it says what it counts
        mon.train_begin()
        mon.train_end()
        found = mon.result()["energy"]
        assert found["source"].startswith("RAPL") and found["counts"] == device.RAPL_COUNTS
        return
    found = mon.result()["energy"]
    assert found["train_j"] is None and found["source"] is None
    assert found["reason"] == device.rapl_reason()
    assert "RAPL not" in found["reason"]


def test_rapl_counts_the_packages_and_their_wrap(tmp_path, monkeypatch):
    pkg = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a subdomain (core): not counted again
    for d, name in ((pkg, "package-0"), (sub, "core")):
        d.mkdir()
        (d / "name").write_text(name)
        (d / "energy_uj").write_text("999000000")
        (d / "max_energy_range_uj").write_text("1000000000")
    real_glob = device.glob.glob
    monkeypatch.setattr(device.glob, "glob", lambda pattern: real_glob(
        pattern.replace("/sys/class/powercap", str(tmp_path))))
    mon = device.CpuMonitor()
    assert [d["name"] for d in mon.domains.values()] == ["package-0"]
    mon.train_begin()
    (pkg / "energy_uj").write_text("1000000")  # wrapped: 999 J -> 1000 J -> 1 J
    mon.train_end()
    assert mon.result()["energy"]["train_j"] == pytest.approx(2.0)
    assert mon.result()["energy"]["source"] == "RAPL package-0"


# ------------------------------------------------------------------ one-line refusals


def test_cuda_without_a_gpu_is_refused_in_one_line(no_gpu):
    with pytest.raises(FwbenchError, match=r"--device cuda:0: no usable NVIDIA GPU here: no "
                                           r"nvidia-smi, and NVML did not start"):
        device.require_gpu(device.parse("cuda"))
    assert device.require_gpu(device.CPU) is None


@pytest.mark.parametrize("command", [["run", "--profile", "smoke"], ["check"], ["overhead"]])
def test_cli_refuses_cuda_here_before_anything_runs(command, no_gpu, tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no nvidia-smi on it
    done = subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *command, "--device", "cuda",
                           "--tasks", "mlp"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fwbench: error: --device cuda:0: no usable NVIDIA GPU")
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_gpu_index_the_machine_does_not_have_is_refused(fake_nvml):
    assert device.require_gpu(device.parse("cuda:0")) is None
    with pytest.raises(FwbenchError, match=r"has 1 GPU\(s\), cuda:0 to cuda:0"):
        device.require_gpu(device.parse("cuda:1"))


def test_preflight_names_each_backend_without_cuda_and_keeps_the_others(fake_nvml, capsys):
    from fwbench.harness.cli import run as cli_run

    found = cli_run.device_preflight_lines(device.parse("cuda"), ["cpuonly", "fakegpu"], dict(TOYS), {})
    assert found == {"cpuonly": "this adapter has no GPU support"}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cpuonly: --device cuda:0: this adapter has no GPU support" in err


# ------------------------------------------------------------------ real worker processes


@pytest.mark.slow
def test_cpu_cell_sets_no_gpu_before_the_import_and_records_the_new_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    runner.run(config(["cpuonly"]), tmp_path, dict(TOYS))
    r = read(tmp_path)["cpuonly"]
    assert r.status == "ok" and r.device == "cpu"
    seen = r.thread_settings["env_at_import"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "" and seen["JAX_PLATFORMS"] == "cpu"
    assert seen["XLA_PYTHON_CLIENT_PREALLOCATE"] is None  # the GPU policy is for GPU cells
    assert r.thread_settings["options_device"] is None  # CPU cells: the options as they were
    assert r.precision == {"policy": "float32"}
    assert r.gpu is None and r.allocator_memory is None and r.device_memory is None
    assert r.gpu_utilization is None and r.device_gemm == {}
    rapl = device.CpuMonitor()
    if rapl.domains:
        assert r.energy.source.startswith("RAPL") and r.energy.train_j is not None
    else:  # the usual case: energy None, with the reason
        assert r.energy.train_j is None and r.energy_j is None and r.energy_j_per_sample is None
        assert r.energy.reason == device.rapl_reason()
    meta = records.load_meta(tmp_path)
    assert meta.config.device == "cpu" and meta.calibration.device == "cpu"
    assert r.hardware == environment.hardware_fingerprint()  # CPU ids as before devices


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """One GPU run (fake NVML) of two GPU toys and a CPU-only one, shared by the tests below."""
    out = tmp_path_factory.mktemp("gpu-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FWBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        _with_fake_nvml(tmp_path_factory.mktemp("nvml"), mp)
        runner.run(config(["fakegpu", "cpuonly", "fakegpu2"], "cuda:0"), out, dict(TOYS))
    sys.modules.pop("pynvml", None)
    return out


@pytest.mark.slow
def test_gpu_cells_record_device_memory_utilisation_and_energy(gpu_run):
    found = read(gpu_run)
    r = found["fakegpu"]
    assert r.status == "ok" and r.device == "cuda:0", r.error
    seen = r.thread_settings["env_at_import"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "0" and seen["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert seen["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and seen["NVIDIA_TF32_OVERRIDE"] == "0"
    assert r.thread_settings["options_device"] == "cuda"
    assert r.precision["policy"] == "float32, TF32 off" and r.precision["tf32"] is False
    assert r.precision["env"]["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"
    g = r.gpu
    assert (g.name, g.driver, g.cuda_driver, g.cuda, g.cudnn) == ("Fake GPU 80GB", "999.1", "13.0", "12.8", "9.8.0")
    assert (g.compute_capability, g.power_limit_w, g.mig_mode, g.sm_clock_max_mhz) == ("9.0", 700.0, "disabled", 1980)
    assert g.sm_clock_mhz == 1755 and g.memory_total_mib == 80 * 1024
    assert r.allocator_memory == records.AllocatorMemory("toy", "nothing real", 12.5, 16.0)
    assert r.device_memory.process_peak_mib == 300 and r.device_memory.device_used_peak_mib == 1024
    assert r.device_memory.device_used_before_mib == 512  # before the framework import
    u = r.gpu_utilization
    assert u.gpu_pct_mean == 87 and u.memory_pct_mean == 40 and u.n >= 1 and u.samples[0] == 87
    assert r.device_gemm["gflops"] == pytest.approx(2 * 4096**3 / 1e-3 / 1e9, rel=0.5)
    assert r.pct_of_gemm_peak == pytest.approx(100 * r.achieved_gflops / r.device_gemm["gflops"])
    # energy: 250 W while training, 100 W idle -> 150 W over the training time
    e = r.energy
    assert e.source == "NVML total energy, GPU 0" and e.counts == device.NVML_ENERGY_COUNTS
    assert e.idle_w == pytest.approx(100, rel=0.02)
    assert r.energy_j == pytest.approx(150 * r.train_time_s, rel=0.05, abs=0.2)
    assert r.energy_j_per_sample == pytest.approx(r.energy_j / (r.steps * 128))
    meta = records.load_meta(gpu_run)
    assert meta.config.device == "cuda:0" and meta.calibration.idle_source == "NVML total energy, GPU 0"
    # the GPU is part of the fingerprint: not the node's id, the same for both GPU backends
    assert r.hardware.device == "Fake GPU 80GB, driver 999.1"
    assert r.hardware.id != environment.hardware_fingerprint().id == environment.with_device(
        environment.hardware_fingerprint(), None).id
    assert found["fakegpu2"].hardware.id == r.hardware.id


def test_a_backend_without_cuda_is_unsupported_and_the_others_run(gpu_run):
    found = read(gpu_run)
    r = found["cpuonly"]
    assert r.status == "unsupported"
    assert r.error == "cpuonly adapter: --device cuda:0: this adapter has no GPU support"
    assert found["fakegpu"].ok and found["fakegpu2"].ok


def test_report_shows_energy_next_to_time_and_the_gpu(gpu_run):
    from fwbench.harness.report import html as html_report, markdown as report

    text = report.markdown_report(gpu_run)
    head = next(line for line in text.splitlines() if line.startswith("| #"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols.index("J/sample") == cols.index("step ms") + 1
    assert "GPU MiB" in cols and "GPU util %" in cols
    assert "computing on Fake GPU 80GB, driver 999.1" in text
    assert "- device: cuda:0, one GPU per cell: float32 with TF32 off" in text
    assert "- energy: NVML total energy, GPU 0" in text and "idle baseline (100.0 W" in text
    assert "cpuonly" in text and "this adapter has no GPU support" in text
    page = html_report.html_report(gpu_run)
    assert "<th class=\"num\" title=\"energy per training sample" in page
    section = page[page.index("<table class=\"sortable cells\">"):]  # the task's table
    section = section[: section.index("</table>")]
    first_row = section[section.index("<tr", section.index("<tbody>")):section.index("</tr>", section.index("<tbody>"))]
    assert section.count("</th>") == first_row.count("</td>") == 16  # every column has its cell


def test_cells_on_different_gpu_models_are_never_ranked_together(gpu_run):
    from fwbench.harness.report import analysis, compare

    run = records.load_run(gpu_run)
    other = [dataclasses.replace(r, hardware=environment.with_device(
        dataclasses.replace(r.hardware, device=""), records.Gpu(0, "Other GPU", "999.1")))
        if r.gpu is not None else r for r in run.records]
    assert other[0].hardware.id != run.records[0].hardware.id
    b = records.Run(gpu_run, run.meta, other)
    result = compare.compare(run, b)
    assert sorted(m.backend for m in result.hardware) == ["fakegpu", "fakegpu2"]
    assert not {c.backend for c in result.changes} & {"fakegpu", "fakegpu2"}  # not compared
    mixed = records.Run(gpu_run, run.meta, [other[0]] + [r for r in run.records if r.backend != other[0].backend])
    a = analysis.analyze(mixed)
    assert a.hardware.groups == 2  # one task, reported once per GPU model
    assert len({t.task for t in a.tasks}) == 2


def test_check_on_a_gpu_marks_a_backend_without_cuda_unsupported(fake_nvml):
    from fwbench.harness.check import parity

    _, probes, errors = parity.run_probes(dict(TOYS), ["cpuonly"], ["mlp"], device="cuda:0")
    assert not errors
    assert str(probes["cpuonly"]["mlp"]["unsupported"]) == \
        "cpuonly adapter: --device cuda:0: this adapter has no GPU support"
