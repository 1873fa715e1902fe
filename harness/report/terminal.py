"""Tables for the terminal (``fwbench run``'s summary, ``fwbench compare``), sized for 80
columns: few short columns, and backend names never cut (they do not wrap; the other
columns fold instead). The run summary has no intervals (the reports have them)."""

from __future__ import annotations

from typing import Iterable

from rich import box
from rich.table import Table

from fwbench.harness.report import verdict as words
from fwbench.harness.report.analysis import Analysis

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
                      ", ".join(r.statuses + ([words.flags_text(r)] if r.flagged else [])) or "ok")
    return t


SUMMARY_NOTE = ("medians over processes; samples/s = batch / median step; ⚠: flagged (see "
                "below); intervals and verdicts: fwbench report")


def compare_table(comparison, title: str) -> Table:
    """Per (task, backend): median step in A and B, the ratio B/A with its interval, the
    Holm-adjusted p and the drift-corrected verdict (``compare.Comparison``;
    ``verdict.compare_note`` says what each column is)."""
    t = _table(title, ("task", "backend", "A ms", "B ms", "B/A", "p", "verdict"),
               NAMES + ("verdict",))
    for c in comparison.changes:
        ci = f" [{c.ratio_ci[0]:.2f}, {c.ratio_ci[1]:.2f}]" if c.ratio_ci else ""
        t.add_row(c.task, c.backend, words.num(c.step_a), words.num(c.step_b),
                  words.ratio_text(c.ratio) + ci, "–" if c.p_value is None else words.p_text(c.p_value),
                  words.CHANGE_WORDS[c.verdict])
    return t


def compare_other_table(comparison) -> Table:
    """Per (task, backend): peak memory and test accuracy (medians), B against A."""
    pct = lambda v: "–" if v is None else f"{v:+.1f}%"  # noqa: E731
    t = _table("peak memory and accuracy, B against A",
               ("task", "backend", "A MiB", "B MiB", "change", "A acc", "B acc", "points"))
    for c in comparison.changes:
        t.add_row(c.task, c.backend, words.num(c.memory_a), words.num(c.memory_b),
                  pct(c.memory_pct), words.pct(c.accuracy_a), words.pct(c.accuracy_b),
                  "–" if c.accuracy_delta is None else words.points(c.accuracy_delta))
    return t
