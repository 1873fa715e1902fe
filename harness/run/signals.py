"""One signal path for a run: SIGINT, SIGTERM and SIGHUP stop it the same way.

``install`` (``fwbench run`` calls it first) unblocks the three signals, overrides an
inherited "ignored" SIGINT or SIGTERM (a background job of a non-interactive shell gets
SIGINT ignored: Ctrl-C and ``kill -INT`` would do nothing) and installs one handler. The
handler remembers the first signal and raises ``Interrupted`` at once, unless the code is in
a ``deferred`` section (starting a cell's processes, writing a record, cleaning up): there it
only sets the flag, and the section raises when it ends, or ``check`` (which the loops that
wait on a cell call) raises first. Every signal after the first is ignored, so a second
Ctrl-C never cuts the cleanup short or skips the resume hint. The runner kills the cell's
processes on the way out (``supervise``), keeps every finished record, and ``fwbench run``
exits 128 + the signal's number (130, 143, 129).

A SIGHUP that was inherited ignored stays ignored: that is what ``nohup`` asks for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FAULT_ENV = "FWBENCH_FAULT"  # tests: a named point where the runner sends itself a signal


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (a KeyboardInterrupt, so code that cleans up on Ctrl-C
    cleans up on SIGTERM and SIGHUP too)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: int | None = None  # the first signal
_raised = False  # its Interrupted has been raised
_depth = 0  # nesting of deferred sections


def _handler(signum: int, frame: object) -> None:
    global _received, _raised
    if _received is not None:  # a second signal: the first one's cleanup is under way
        return
    _received = signum
    if _depth == 0:
        _raised = True
        raise Interrupted(signum)


def install() -> list[str]:
    """Handle SIGINT, SIGTERM and SIGHUP from now on (main thread only); returns a line
    for each inherited disposition that was overridden."""
    global _received, _raised
    notes: list[str] = []
    _received, _raised = None, False
    if threading.current_thread() is not threading.main_thread():  # Python allows none there
        return notes
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
    for signum in STOPS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            if signum == signal.SIGHUP:  # nohup: the user asked to survive a hangup
                continue
            notes.append(f"{signal.Signals(signum).name} was ignored (inherited from the "
                         "process that started fwbench); fwbench run stops on it anyway")
        signal.signal(signum, _handler)
    return notes


def check() -> None:
    """Raise ``Interrupted`` if a signal arrived and has not been raised yet."""
    global _raised
    if _received is not None and not _raised:
        _raised = True
        raise Interrupted(_received)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section no signal interrupts: one that arrives meanwhile is raised at its end (not
    if an exception is already on its way out)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0:
        check()


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """A deferred section that also blocks the stop signals in this thread: a process forked
    inside it starts with them blocked (and pending ones stay with the parent), so it
    cannot die of one before it has set itself up; the children unblock them themselves."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        with deferred():
            yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def fault(point: str) -> None:
    """Tests: send this process a signal at a named point of the runner (``spawn``,
    ``started``, ``loop``, ``cleanup``) when ``FWBENCH_FAULT`` names it: a comma-separated
    list of ``point`` or ``point:SIGNAME`` (default SIGINT); nothing otherwise."""
    for wanted in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        name, _, signame = wanted.partition(":")
        if name == point:
            os.kill(os.getpid(), signal.Signals[signame or "SIGINT"])
