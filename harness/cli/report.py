"""``fwbench report``, ``compare`` and ``export``: they read run folders only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from fwbench.harness import records
from fwbench.harness.cli.common import csv_items, app, console, err
from fwbench.harness.errors import FwbenchError
from fwbench.harness.report import analysis, compare, terminal, tracking, verdict
from fwbench.harness.report import markdown as report


@app.command("report", short_help="Markdown and HTML reports of a run folder.")
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


@app.command("compare", short_help="Run B against run A, cell by cell, after the drift.")
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


@app.command("export", short_help="Tables (CSV, Parquet, JSON), TensorBoard, MLflow.")
def export_cmd(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="One or more run folders: their rows go into one table, told apart by run id."),
    format: str = typer.Option("csv", "--format", help="csv | parquet | json"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR/export for one run; required for several)."),
    tensorboard: Optional[Path] = typer.Option(None, help="Also write TensorBoard scalars here: loss and step time per training step, and the per-epoch curves."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Also log each run to MLflow: a parent run per fwbench run, a nested run per cell (pip install -e \".[mlflow]\")."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help=f"With --mlflow: the tracking store (default: MLFLOW_TRACKING_URI, else {tracking.DEFAULT_URI} here)."),
    mlflow_experiment: str = typer.Option(tracking.EXPERIMENT, "--mlflow-experiment", help="With --mlflow: the experiment's name."),
) -> None:
    """The records as tables (cells, epochs), and optionally TensorBoard scalars and MLflow runs."""
    from fwbench.harness.report import export

    if out is None and len(run_dirs) > 1:
        raise FwbenchError("several runs go into one table: say where with --out")
    if (mlflow_uri is not None or mlflow_experiment != tracking.EXPERIMENT) and not mlflow:
        raise FwbenchError("--mlflow-uri and --mlflow-experiment go with --mlflow")
    runs = export.load_runs(run_dirs)  # each refused with one line if not a run folder
    for path in export.export(runs, format, out or run_dirs[0] / "export"):
        console.print(f"wrote {path}", highlight=False, markup=False, soft_wrap=True)
    if tensorboard is not None:
        n, stepped = export.tensorboard(runs, tensorboard)
        cells = sum(len(r.records) for r in runs)
        console.print(f"wrote {n} scalars to {tensorboard}, per training step for {stepped} of "
                      f"{cells} cells (tensorboard --logdir {tensorboard})",
                      highlight=False, markup=False, soft_wrap=True)
    if mlflow:
        uri = tracking.tracking_uri(mlflow_uri)
        for run in runs:
            logged = tracking.log_run(run, uri, mlflow_experiment)
            what = ("already there" if logged.existed
                    else f"{logged.cells} cells, {logged.metrics} metric values")
            console.print(f"mlflow: {logged.run_id} -> run {logged.parent} in {uri} "
                          f"(experiment {mlflow_experiment}): {what}",
                          highlight=False, markup=False, soft_wrap=True)
