"""Loading an entry-point group: what the backend and the task registries share.

``load(group, warn)`` imports every entry point of ``group`` (fwbench's own first, then the
plugins by distribution and entry-point name) and yields what each names, as a list. An
entry point whose import fails is one line to ``warn`` and skipped, so one broken plugin
never breaks every command; what the items must be is the caller's to check.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Loaded:
    """What one entry point named."""

    where: str  # "plugin <distribution> (entry point 'name')", for messages
    dist: str  # the distribution's name ("" if unknown)
    version: str  # the distribution's version ("?" if unknown)
    items: list[object]  # the object it names, or the items of the list / tuple it names


def load(group: str, warn: Callable[[str], None]) -> Iterator[Loaded]:
    points = sorted(md.entry_points(group=group),
                    key=lambda ep: (_dist_name(ep) != "fwbench", _dist_name(ep), ep.name))
    for ep in points:
        dist = _dist_name(ep)
        where = f"plugin {dist or '?'} (entry point {ep.name!r})"
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - any error in a plugin's import
            warn(f"{where} failed to load: {type(exc).__name__}: {' '.join(str(exc).split())}; skipped")
            continue
        version = getattr(getattr(ep, "dist", None), "version", None) or "?"
        yield Loaded(where, dist, version, list(obj) if isinstance(obj, (list, tuple)) else [obj])


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ""
