"""The Markdown report of a run: draws an ``analysis.Analysis`` with the words of ``verdict``.

Reads results only (through ``analysis``); never imports a framework. The HTML report
(``html``) draws the same analysis; the tables for export are ``tables``.
"""

from __future__ import annotations

from pathlib import Path

from fwbench.harness.report import verdict as words
from fwbench.harness.report.analysis import Analysis, Run, as_analysis


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no records_\n"
    cols = list(rows[0])
    numeric = {c for c in cols if c not in ("task", "backend", "status", "criterion")}
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_report(source: str | Path | Run | Analysis) -> str:
    """The whole report; pass the ``Analysis`` when you have it (it is not recomputed)."""
    a = as_analysis(source)
    parts = [f"# fwbench: {words.report_title(a)}", "", f"Run folder `{a.name}`.", ""]
    parts += [f"- {label}: {value}" for label, value in words.run_lines(a)]
    parts += ["", words.METHOD, ""]
    if a.picks and a.tasks:
        parts += ["## Which framework for what", ""]
        rows = []
        for p in a.picks:
            row = {"criterion": p.criterion}
            row.update({t.task: words.pick_cell(p, t.task) if p.per_task else "" for t in a.tasks})
            row["overall"] = words.pick_overall(p)
            rows.append(row)
        parts += [markdown_table(rows).replace("---:", "---")]
        sizes = words.adapter_text(a)
        if sizes:
            parts += ["Adapter size (lines of code, without blank lines, comments and docstrings): "
                      + sizes + ".", ""]
    for t in a.tasks:
        parts += [f"## {t.task}: {t.description}", ""]
        facts = words.task_facts(t)
        parts += ["_" + (facts + "; " if facts else "") + "ranked by time to target, then throughput._", ""]
        parts += [markdown_table(words.task_rows(t)), words.processes_line(t), ""]
        parts += [f"- {v}" for v in words.verdict(t)] + [""]
        if t.pairs:
            parts += [words.pairs_head(a), ""]
            parts += [f"- {p.sentence}" for p in t.pairs] + [""]
    if a.failed:
        parts += ["## Cells that did not finish", ""]
        parts += [f"- {words.failed_text(f)}" for f in a.failed] + [""]
    if a.unsupported:
        parts += ["## Unsupported (the adapter cannot run a layer of the task, or on the device; "
                  "not failures)", ""]
        parts += [f"- {words.unsupported_text(f)}" for f in a.unsupported] + [""]
    parts += ["## All numbers", "", markdown_table(words.summary_rows(a))]
    return "\n".join(parts)
