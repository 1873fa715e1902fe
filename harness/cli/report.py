"""``fwbench report``, ``compare`` and ``export``: they read run folders only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fwbench.harness import records
from fwbench.harness.cli.common import csv_items, app, console, err
from fwbench.harness.errors import FwbenchError
from fwbench.harness.report import analysis, compare, terminal, verdict
from fwbench.harness.report import markdown as report


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder (holds results.jsonl)."),
    format: str = typer.Option("md,html", "--format", help="Comma-separated: md, html."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR)."),
    mixed_hardware: bool = typer.Option(False, "--mixed-hardware", help="Rank cells measured on different hardware fingerprints together, labelled (default: each fingerprint apart)."),
) -> None:
    """Markdown and self-contained HTML reports of a run (read from its records only)."""
    formats = csv_items(format, ["md", "html"], "formats")
    folder = out or run_dir
    a = analysis.analyze(run_dir, mixed_hardware)  # once, for both pages
    text = report.markdown_report(a)
    pages = {"md": lambda: text}
    if "html" in formats:
        from fwbench.harness.report import html as html_report

        pages["html"] = lambda: html_report.html_report(a)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt in formats:
            target = folder / f"report.{fmt}"
            target.write_text(pages[fmt]())
            written.append(target)
    except OSError as exc:
        raise FwbenchError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    if "md" in formats:
        console.print(text, markup=False, highlight=False)
    for target in written:
        console.print(f"written: {target}", style="dim")


@app.command("compare")
def compare_cmd(
    run_a: Path = typer.Argument(..., help="The baseline run folder."),
    run_b: Path = typer.Argument(..., help="The run folder to compare with it."),
    fail_on_regression: Optional[float] = typer.Option(None, help="Exit 1 when a significant step-time regression exceeds this percentage."),
    mixed_hardware: bool = typer.Option(False, "--mixed-hardware", help="Also compare cells measured on different hardware fingerprints, labelled (default: they are not compared)."),
) -> None:
    """Per (task, backend): change in step time, throughput, memory and accuracy, with significance."""
    if fail_on_regression is not None and fail_on_regression < 0:
        raise FwbenchError("--fail-on-regression must be a percentage >= 0")
    a, b = records.load_run(run_a), records.load_run(run_b)
    threshold = fail_on_regression if fail_on_regression is not None else 0.0
    result = compare.compare(a, b, threshold, mixed_hardware)
    for m in result.hardware:
        err.print(escape(f"mixed hardware, compared as asked: {m.text()}" if result.mixed_hardware
                         else f"not compared, measured on different hardware: {m.text()} "
                              "(--mixed-hardware compares it, labelled)"),
                  style="yellow", highlight=False)
    for diff in compare.environment_differences(a, b):
        err.print(f"[yellow]warning: environments differ: {escape(diff)}[/]", highlight=False)
    for diff in compare.definition_differences(a, b):
        err.print(f"[yellow]warning: definitions differ: {escape(diff)}[/]", highlight=False)
    console.print(terminal.compare_table(result, f"A = {run_a}, B = {run_b}"))
    console.print(verdict.drift_line(result.stats), highlight=False, markup=False)
    console.print(verdict.compare_note(result.stats), style="dim", highlight=False, markup=False)
    console.print(terminal.compare_other_table(result))
    console.print(verdict.compare_summary(result), highlight=False, markup=False)
    for c in result.changes:  # regressions, improvements, inconclusive cells: one line each
        if c.verdict not in (compare.analysis.NO_CHANGE, compare.analysis.TOO_FEW):
            err.print(verdict.change_line(c, threshold), highlight=False, markup=False)
    if fail_on_regression is not None and result.regressions:  # never on inconclusive / too few
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder."),
    format: str = typer.Option("csv", "--format", help="csv | parquet | json"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR/export)."),
    tensorboard: Optional[Path] = typer.Option(None, help="Also write the per-epoch curves as TensorBoard scalars here."),
) -> None:
    """The records as tables (cells, epochs), and optionally TensorBoard scalars."""
    from fwbench.harness.report import export  # pandas: imported by the command that needs it

    run = records.load_run(run_dir)  # read once, refused with one line if not a run folder
    for path in export.export(run, format, out or run_dir / "export"):
        console.print(f"wrote {path}")
    if tensorboard is not None:
        n = export.tensorboard(run, tensorboard)
        console.print(f"wrote {n} scalars to {tensorboard} (tensorboard --logdir {tensorboard})")
