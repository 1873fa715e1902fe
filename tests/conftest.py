import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


# The longest test files (measured: seconds in one process on 2 cores), first. pytest-xdist
# hands whole files to its workers in collection order (--no-loadscope-reorder in addopts):
# started first, a long file does not end alone while the other cores idle.
LONGEST_FIRST = ("test_parity.py",   # ~290 s: every backend probed on every task
                 "test_runner.py", "test_cli.py", "test_ray.py", "test_envs.py",  # 85-120 s
                 "test_signals.py")  # ~50 s


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets the same session-wide private cache (never the user's)."""
    monkeypatch.setenv("FWBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the xdist controller, or `-n 0`'s process
        from procs import leaked_cgroups

        session.config.stash[_CGROUPS] = leaked_cgroups()


def pytest_sessionfinish(session, exitstatus):
    """No cell cgroup folder is left when the suite ends (a watchdog that died without
    removing it, and no later cell swept it). Checked once, in the controlling process: with
    several workers, one test cannot tell its own folders from another worker's, which may
    exist for a moment (a Ray node killed mid-cell leaves one until the next cell sweeps it)."""
    if hasattr(session.config, "workerinput") or _CGROUPS not in session.config.stash:
        return
    from procs import leaked_cgroups, wait_for

    before = session.config.stash[_CGROUPS]
    try:
        wait_for(lambda: not leaked_cgroups() - before, 10, "the cells' cgroup folders to go")
    except AssertionError:
        left = sorted(leaked_cgroups() - before)
        for folder in left:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        print(f"\nFAILED: a cell's cgroup folder was left behind: {', '.join(left)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_CGROUPS = pytest.StashKey[set]()


@pytest.fixture
def real_data_dir() -> Path:
    """The real data files (FWBENCH_DATA_DIR, as .ci/run sets it); skip where absent."""
    value = os.environ.get("FWBENCH_DATA_DIR")
    path = Path(value) if value else SHARED
    if not (path / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("real data not available: set FWBENCH_DATA_DIR to a folder like shared/datasets")
    return path
