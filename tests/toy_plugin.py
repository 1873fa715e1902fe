"""Registers the toy adapters of ``toy_backend`` as an installed plugin, without pip.

``make_toy_plugin(folder)`` writes a ``*.dist-info`` with an ``entry_points.txt`` into
``folder``; with ``folder`` and ``tests/`` on PYTHONPATH, ``importlib.metadata`` sees the
plugin in that process only, so the CLI can run toy backends (``--backends slow,hang``) and
nothing is installed into the environment the tests run in.
"""

from __future__ import annotations

from pathlib import Path

from fwbench.harness.adapter import Backend

TOYS = {"constant": "Constant", "crash": "Crash", "hang": "Hang", "nan": "NaN", "fail": "Fail",
        "hog": "Hog", "slow": "Slow", "scalars": "NumpyScalars", "spawner": "Spawner",
        "forker": "Forker"}
BACKENDS = [Backend(name, f"toy_backend:{cls}", (), description=f"toy: {cls}") for name, cls in TOYS.items()]


def make_dist(folder: Path, name: str, entry_points: dict[str, str], module: str | None = None) -> Path:
    """A minimal installed distribution ``name`` registering ``entry_points`` (name ->
    "module:attr") in the fwbench.backends group; ``module`` is written as name_mod.py."""
    dist = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[fwbench.backends]\n{lines}\n")
    if module is not None:
        (folder / f"{name.replace('-', '_')}_mod.py").write_text(module)
    return folder


def make_toy_plugin(folder: Path) -> Path:
    return make_dist(folder, "fwbench-toys", {"toys": "toy_plugin:BACKENDS"})
