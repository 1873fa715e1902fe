"""The backend registry: every ``Backend`` registered in the ``fwbench.backends`` entry-point
group (fwbench's own first, then the plugins'), found without importing a framework."""

from __future__ import annotations

import dataclasses
from typing import Callable

from fwbench.harness.adapter import Backend
from fwbench.harness.catalog import plugins

ENTRY_POINT_GROUP = "fwbench.backends"


def discover(warn: Callable[[str], None] | None = None) -> dict[str, Backend]:
    """All registered backends by name (sorted): built-ins first, then plugins.

    A plugin whose entry point fails to load, or names no ``Backend``, is skipped; a plugin
    backend named like a built-in (or like another plugin's, which registered first) is
    ignored. Each such problem is passed to ``warn`` as one line (the CLI prints it on
    stderr), so one broken plugin never breaks every command.
    """
    warn = warn or (lambda message: None)
    found: dict[str, Backend] = {}
    for entry in plugins.load(ENTRY_POINT_GROUP, warn):
        for b in entry.items:
            if not isinstance(b, Backend):
                warn(f"{entry.where} is not an fwbench Backend ({type(b).__name__}); skipped")
                continue
            if entry.dist != "fwbench" and b.source == "built-in":
                b = dataclasses.replace(b, source=f"plugin {entry.dist} {entry.version}")
            if b.name in found:
                warn(f"{entry.where} registers backend {b.name!r}, already registered by "
                     f"{found[b.name].source}; ignored")
                continue
            found[b.name] = b
    return dict(sorted(found.items()))
