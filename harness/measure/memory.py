"""The memory instrument of a worker: its resident set size sampled on a thread."""

from __future__ import annotations

import threading
import time
from typing import Any

MIB = 1024 * 1024


class MemorySampler:
    """Resident set size of this process every ``interval`` seconds, on a thread."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.t0 = self.proc.create_time()  # timeline in seconds since the process started
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_t = 0.0
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            now = time.time()
            if now - last_t >= 0.25:  # a downsampled timeline for plots
                self.timeline.append((round(now - self.t0, 3), rss))
                last_t = now
            self._stop.wait(self.interval)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def reset_peak(self) -> None:
        self.peak = self.proc.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, Any]:
        """The record's field: the downsampled timeline, [s since process start, RSS MiB]."""
        return {"memory_timeline": [[t, round(rss / MIB, 1)] for t, rss in self.timeline]}
