"""Backend labels: how a backend is named in a run. ``jax`` is a registered backend,
``jax@0.7.1`` that backend at one version (in an env of its own), ``torch#2`` the second
independent copy of ``torch`` in an A/A run (``jax@0.7.1#2`` both). Parsed once, here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fwbench.harness.errors import FwbenchError

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


@dataclass(frozen=True)
class BackendLabel:
    base: str  # the registered backend
    version: str | None = None  # one exact release, run in an env of its own
    copy: int = 1  # 2, 3, ...: an independent copy in an A/A run

    @classmethod
    def parse(cls, name: str) -> BackendLabel:
        """A label as records, reports and ``check`` write it: ``jax@0.7.1#2``."""
        rest, _, copy = name.partition("#")
        base, _, version = rest.partition("@")
        return cls(base, version or None, int(copy) if copy.isdigit() else 1)

    @classmethod
    def from_option(cls, item: str) -> BackendLabel:
        """An item of ``--backends``: ``jax==0.7.1`` (or ``jax@0.7.1``) or ``jax``; a bad
        version is a one-line error."""
        item = item.strip()
        for sep in ("==", "@"):
            if sep in item:
                base, _, version = item.partition(sep)
                base, version = base.strip(), version.strip()
                if not base or not _VERSION.match(version) or "#" in base:
                    raise FwbenchError(f"bad backend version {item!r}; write NAME==VERSION, "
                                       "e.g. jax==0.7.1")
                return cls(base, version)
        if re.search(r"[<>=!~]", item):
            raise FwbenchError(f"bad backend {item!r}: a backend takes one exact version, "
                               "NAME==VERSION (e.g. jax==0.7.1)")
        return cls(item)

    @property
    def versioned(self) -> str:
        """The backend at its version, without the copy number (``jax@0.7.1``): what an env
        is made for (a copy runs in the same env as the backend it copies)."""
        return f"{self.base}@{self.version}" if self.version else self.base

    @property
    def name(self) -> str:
        """The whole label: ``jax@0.7.1#2``."""
        return self.versioned + (f"#{self.copy}" if self.copy > 1 else "")

    @property
    def option(self) -> str:
        """As the user writes it on the command line: ``jax==0.7.1``."""
        return f"{self.base}=={self.version}" if self.version else self.base

    def copied(self, copy: int) -> BackendLabel:
        return BackendLabel(self.base, self.version, copy)

    def __str__(self) -> str:
        return self.name


def base(name: str) -> str:
    """The registered backend of a label (``jax@0.7.1#2`` -> ``jax``)."""
    return BackendLabel.parse(name).base


def uncopied(name: str) -> str:
    """A label without its copy number (``torch#2`` -> ``torch``)."""
    return BackendLabel.parse(name).versioned
