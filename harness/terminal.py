"""Tables for the terminal (``fwbench run``'s summary, ``fwbench compare``), sized for 80
columns: few short columns, no intervals (the reports have them), and backend names never
cut (they do not wrap; the other columns fold instead)."""

from __future__ import annotations

from typing import Iterable

from rich import box
from rich.table import Table

from . import verdict as words
from .analysis import ALPHA, PAIR_TEST, Analysis

NAMES = ("task", "backend")


def _table(title: str, columns: Iterable[str], left: Iterable[str] = NAMES) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    left = set(left)
    for c in columns:
        if c in NAMES:
            t.add_column(c, no_wrap=True)  # a name is never cut or folded
        else:
            t.add_column(c, justify="left" if c in left else "right", overflow="fold")
    return t


def summary_table(a: Analysis, title: str) -> Table:
    """One row per task x backend: cells ok, accuracy, median step, throughput, peak memory."""
    t = _table(title, ("task", "backend", "ok", "acc", "step ms", "samples/s", "MiB", "status"),
               NAMES + ("status",))
    for task in a.tasks:
        for r in sorted(task.rows, key=lambda r: r.position or 10**6):
            t.add_row(task.task, r.backend, f"{r.ok}/{r.cells}", words.pct(r.accuracy),
                      words.num(r.step_p50), words.num(r.throughput), words.num(r.peak_mib),
                      ", ".join(r.statuses) or "ok")
    return t


SUMMARY_NOTE = ("medians; samples/s = batch / median step; intervals and verdicts: "
                "fwbench report")


def compare_table(changes: list, title: str) -> Table:
    """Per (task, backend): median step in A and B, the change, whether it is significant,
    and the changes in peak memory and accuracy."""
    pct = lambda v: "–" if v is None else f"{v:+.1f}%"  # noqa: E731
    t = _table(title, ("task", "backend", "A ms", "B ms", "step", "sig", "memory", "acc"))
    for c in changes:
        sig = "–" if not c.tested else ("yes" if c.significant else "n.s.")
        t.add_row(c.task, c.backend, words.num(c.step_a), words.num(c.step_b), pct(c.step_pct), sig,
                  pct(c.memory_pct), "–" if c.accuracy_delta is None else f"{c.accuracy_delta * 100:+.2f}")
    return t


COMPARE_NOTE = (f"step: change of the median step time, B against A (+ = B slower); sig: yes = "
                f"significant ({PAIR_TEST}, p < {ALPHA}), n.s. = not significant, – = too few "
                "runs to test; memory: peak RSS; acc: test accuracy, points")
