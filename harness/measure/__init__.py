"""Instruments: the environment and hardware fingerprint, noise, devices, FLOPs, memory.

The instruments that watch a phase share one shape (``Instrument``): ``start()`` returns the
instrument, ``stop()`` ends the watch, ``result()`` gives what it saw: the memory sampler
(``memory.MemorySampler``), the device monitors (``device.CpuMonitor``, ``device.GpuMonitor``:
record fields) and the noise watch of a job's cores (``noise.Watch``: a ``noise.Busy``).
"""

from __future__ import annotations

from typing import Any, Protocol


class Instrument(Protocol):
    def start(self) -> Instrument: ...

    def stop(self) -> None: ...

    def result(self) -> Any: ...
