"""The watchdog of one worker's process group: it dies with the runner, and takes the group.

    python -m fwbench.harness.run.watchdog RUNNER_PID

The runner starts this first, as the leader of a new process group (its pid is the group
id), then starts the worker *in that group*. Everything the worker starts
(torch.compile's compile workers, XLA or TensorFlow helpers) inherits the group. The
kernel sends the watchdog SIGTERM the moment the runner dies, even by ``kill -9``
(``PR_SET_PDEATHSIG``), and the watchdog SIGKILLs the whole group, itself included. When a
cell ends normally the runner kills the group itself, so nothing a worker left behind
survives the cell either. A process that leaves the group on purpose (``setsid``) escapes
both; the runner also kills any descendant it can still see (see ``supervise._kill_group``).
"""

from __future__ import annotations

import os
import signal
import sys


def _kill_group(*_: object) -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    runner_pid = int(argv[0])
    signal.signal(signal.SIGTERM, _kill_group)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the runner's own group kill remains
        pass
    if os.getppid() != runner_pid:  # the runner died before prctl took effect
        _kill_group()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
