"""harness/noise.py: does the probe see another process burning the run's core?"""

import os
import subprocess
import sys
import time

import pytest

from fwbench.harness.measure import noise

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"), reason="Linux /proc only")

BURN = ("import os, time\nos.sched_setaffinity(0, {%d})\n"
        "end = time.time() + %f\nwhile time.time() < end: pass\n")


def _core() -> int:
    return max(os.sched_getaffinity(0))


def test_a_process_burning_the_core_is_seen():
    """Relative to what the burner itself got (psutil): on a loaded machine (other tests,
    CPU hogs) it gets only a share of its core, and the core is busier still."""
    import psutil

    core = _core()
    burner = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\n" + BURN % (core, 30)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert burner.stdout.readline().strip() == "spinning"
        cpu = psutil.Process(burner.pid)
        used = sum(cpu.cpu_times()[:2])
        before = noise.snapshot([core])
        time.sleep(1.0)  # the interval measured, not a wait for something to happen
        after = noise.snapshot([core])
        burned = sum(cpu.cpu_times()[:2]) - used
    finally:
        burner.kill()
        burner.wait()
    assert burned > 0.1, burned  # it had at least a tenth of its core
    # the burner is not ours for this probe (no own pids): it is "other"
    b = noise.busy_between(before, after, own_pids=[])
    assert b.cpus == (core,) and b.interval_s == pytest.approx(1.0, abs=0.3)
    assert b.others_s >= 0.8 * burned, (b.text(), burned)
    assert burner.pid in [pid for pid, _, _ in b.top_others]
    if burned > 0.5:  # the burner alone made the core busy
        assert noise.is_busy(b) is True and b.busy is True
    # as our own child it counts as our own tree, and leaves the cores
    mine = noise.busy_between(before, after, own_pids=[os.getpid()])
    assert mine.own_s >= 0.8 * burned and mine.others_s < b.others_s


def test_a_child_that_ended_in_between_is_counted_as_ours():
    core = _core()
    before = noise.snapshot([core])
    # 0.6 s of CPU, however loaded the core is; reaped before `after`
    subprocess.run([sys.executable, "-c", BURN.replace("time.time()", "time.process_time()") % (core, 0.6)],
                   check=True)
    after = noise.snapshot([core])
    b = noise.busy_between(before, after, own_pids=[os.getpid()])
    assert b.own_s > 0.3  # seen through our children time


def test_probe_fields_are_present_and_sane():
    b = noise.probe(seconds=0.5)
    n = len(b.cpus)
    assert b.interval_s == pytest.approx(0.5, abs=0.3)
    assert 0 <= b.cores_busy_s <= n * b.interval_s * 1.2 + 0.05
    assert b.own_s >= 0 and b.others_s >= 0 and b.others_cores >= 0
    assert 0 <= b.steal_fraction <= 1 and 0 <= b.iowait_fraction <= 1
    assert b.loadavg_1m is not None and b.loadavg_1m >= 0
    assert noise.is_busy(b) in (True, False)  # a shared VM may well be busy: not asserted
    assert b.text().startswith("cores ")


def test_degrades_without_proc(monkeypatch):
    def no_file(*a, **k):
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(noise, "open", no_file, raising=False)
    monkeypatch.setattr(noise, "_read_procs", lambda: None)
    s = noise.snapshot([0])
    assert s.per_cpu is None and s.procs is None
    b = noise.busy_between(s, noise.snapshot([0]), [os.getpid()])
    assert (b.cores_busy_s, b.own_s, b.others_s, b.others_cores, b.steal_fraction) == (None,) * 5
    assert noise.is_busy(b) is None
    assert b.text().endswith("nothing readable") or "load" in b.text()


def test_thresholds():
    quiet = noise.Busy(1.0, (0,), 0.5, 0.45, 0.05, 0.05, 0.01, 0.0, 1.0, ())
    assert noise.is_busy(quiet) is False
    assert noise.is_busy(noise.Busy(1.0, (0,), 0.5, 0.3, 0.2, 0.2, 0.0, 0.0, 1.0, ())) is True
    assert noise.is_busy(noise.Busy(1.0, (0,), 0.5, 0.5, 0.0, 0.0, 0.08, 0.0, 1.0, ())) is True
    assert noise.OTHERS_CORES_MAX == 0.10 and noise.STEAL_MAX == 0.05
