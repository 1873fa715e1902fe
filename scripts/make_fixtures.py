"""Regenerate the report/compare/export test fixtures as REAL runs of ``runner.run``.

Run from the repository root, in the project's environment, on a quiet machine (about 40 s
on 2 cores, one fixture per core at a time; ``--jobs 1``: one after another, about 70 s).
What else ran on the cores is recorded (each record's ``noise``, ``run.json``'s
``noise_at_start``) and the reports flag it; the tests do not depend on it:

    python scripts/make_fixtures.py            # rewrites every fixture folder
    python scripts/make_fixtures.py run-single # only the named ones

Each folder under ``tests/fixtures/`` is deleted and rewritten by the runner itself, with the
toy adapters of ``tests/fixture_backends.py`` in real worker processes (the script puts
``tests/`` on PYTHONPATH): every record, ``run.json`` and log is exactly what fwbench wrote;
never edit them by hand. Step times are real (so they vary a little from one regeneration to
the next); the differences the tests rely on are made large and deterministic with sleeps.

- ``run-single``: 1 seed, no repeats, tasks mlp, lenet, lstm. Recorded with a task
  definition that differs from today's ``spec.TASKS`` (mlp: target 85%, batch 100, another
  description), as a run made by an older fwbench would be: reports must use the run's own
  snapshot. On lstm one backend fails (an injected ValueError) and the other hangs until
  the 5 s cell timeout kills it: a real ``failed`` and a real ``timeout`` record.
- ``run-a`` / ``run-b``: 3 seeds (training runs) + 4 timing-only repeats: 7 processes per
  task x backend, as many as the quick profile, in 5 rounds, each after a drift probe
  (``run.json`` ``drift_probes``); tasks mlp and lenet, today's task definitions;
  ``numpy-learner-slow`` sleeps 3 ms per lenet step in run-a and 9 ms in run-b: a real
  lenet regression that ``fwbench compare`` must call "regression" (mlp: 20 ms in both, and
  ``numpy-learner`` is the same in both: three cells that must not be called one). With 3
  seeds the TOST of accuracies is decided (the toy's lenet predicts one class: equal
  accuracies on every seed).

The backends' names are as long as the longest built-in ones (``mindspore-pynative``, 18
characters), so the 80-column tests see the worst case.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
FIXTURES = TESTS / "fixtures"

sys.path.insert(0, str(TESTS))  # this process imports nothing from there; its workers do
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(TESTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

from fwbench.harness.run import runner  # noqa: E402
from fwbench.harness import spec
from fwbench.harness.adapter import Backend  # noqa: E402

SOURCE = "fixture (tests/fixture_backends.py)"
TIMEOUT_S = 5.0  # run-single: what the hanging cell gets


def toy(name: str, description: str, **options) -> Backend:
    return Backend(name=name, adapter="fixture_backends:Toy", requires=("numpy",),
                   options=options, description=description, source=SOURCE)


@contextlib.contextmanager
def task_definitions(**changed: spec.Task):
    """Run with other task definitions, as an older fwbench had them."""
    saved = dict(spec.TASKS)
    spec.TASKS.update(changed)
    try:
        yield
    finally:
        spec.TASKS.clear()
        spec.TASKS.update(saved)


OLD_MLP = dataclasses.replace(
    spec.TASKS["mlp"], target_accuracy=0.85, batch_size=100,
    description="MLP 784-512-10 on MNIST (as this fixture's run defined it: target 85%, batch 100)")


# Sleeps per training step (ms). They dominate the toy's own step (~9 ms on mlp, ~0.1 ms on
# lenet, where it only predicts class 0), so rankings and the regression survive a busy machine.
FAST_SLEEP = {"lenet": 1.0}
SLOW_SLEEP = {"mlp": 20.0, "lenet": 3.0}
REGRESSED = {"mlp": 20.0, "lenet": 9.0}  # run-b: lenet 3x slower


def make(name: str, root: Path = FIXTURES) -> None:
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    if name == "run-single":
        backends = {b.name: b for b in (
            toy("numpy-learner", "fixture toy: NumPy MLP, fails on lstm", fail=["lstm"],
                sleep_ms=FAST_SLEEP),
            toy("numpy-learner-slow", "fixture toy: NumPy MLP + a sleep a step, hangs on lstm",
                sleep_ms=SLOW_SLEEP, hang=["lstm"]))}
        config = runner.RunConfig(("mlp", "lenet", "lstm"), tuple(backends), "smoke", (0,), 1,
                                  timeout_s=TIMEOUT_S)
        with task_definitions(mlp=OLD_MLP):
            runner.run(config, out, backends)
    else:
        backends = {b.name: b for b in (
            toy("numpy-learner", "fixture toy: NumPy MLP", sleep_ms=FAST_SLEEP),
            toy("numpy-learner-slow", "fixture toy: NumPy MLP + a sleep a step",
                sleep_ms=SLOW_SLEEP if name == "run-a" else REGRESSED))}
        # 3 seeds + 4 timing-only repeats: 7 processes per (task, backend)
        config = runner.RunConfig(("mlp", "lenet"), tuple(backends), "smoke", (0, 1, 2), 1,
                                  timeout_s=60.0, repeats=4)
        runner.run(config, out, backends)


NAMES = ("run-b", "run-a", "run-single")  # longest first


def _make_on(cpu: int | None, names: list[str], root: Path) -> None:
    """Make ``names`` one after another, pinned to ``cpu`` (so the runner sees that core
    only, and its workers run there)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    for name in names:
        t = time.perf_counter()
        make(name, root)
        print(f"{root / name}: {time.perf_counter() - t:.1f} s" + (f" (cpu {cpu})" if cpu is not None else ""),
              flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *NAMES], metavar="NAME",
                        help=f"fixtures to rewrite (default: all of {', '.join(NAMES)})")
    parser.add_argument("--out", type=Path, default=FIXTURES, help="parent folder (default tests/fixtures)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="fixtures made at once, each pinned to a core of its own (default: "
                             "one per available core); 1: one after another")
    args = parser.parse_args(argv)
    names = [n for n in NAMES if n in (args.names or NAMES)]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    jobs = max(1, min(args.jobs or len(cpus) or 1, len(names), len(cpus) or 1))
    start = time.perf_counter()
    if jobs == 1:
        _make_on(None, names, args.out)
    else:
        import multiprocessing

        lanes = [names[i::jobs] for i in range(jobs)]  # longest first, round robin
        procs = [multiprocessing.Process(target=_make_on, args=(cpus[i], lane, args.out))
                 for i, lane in enumerate(lanes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            print("a fixture failed; see above", file=sys.stderr)
            return 1
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
