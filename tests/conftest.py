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


@pytest.fixture(autouse=True)
def _no_cell_cgroup_left():
    """No test leaves a cell's cgroup folder behind (a watchdog that died without removing
    it). One left is removed, so the tests after it are not blamed, and this test errors."""
    from procs import leaked_cgroups, wait_for

    before = leaked_cgroups()
    yield
    try:
        wait_for(lambda: not leaked_cgroups() - before, 10, "the cells' cgroup folders to go")
    except AssertionError:
        left = sorted(leaked_cgroups() - before)
        for folder in left:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        pytest.fail(f"a cell's cgroup folder was left behind: {', '.join(left)}")


@pytest.fixture
def real_data_dir() -> Path:
    """The real data files (FWBENCH_DATA_DIR, as .ci/run sets it); skip where absent."""
    value = os.environ.get("FWBENCH_DATA_DIR")
    path = Path(value) if value else SHARED
    if not (path / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("real data not available: set FWBENCH_DATA_DIR to a folder like shared/datasets")
    return path
