"""One self-contained HTML report of a run: inline CSS, inline SVG plots, no network.

The numbers come from ``analysis.analyze`` (the same ``Analysis`` as the Markdown report),
the words from ``verdict``; this module only draws them (matplotlib, Agg, SVG) and fills
``templates/report.html.j2`` (jinja2). Never imports a framework.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from fwbench.harness.report import verdict as words
from fwbench.harness.report.analysis import Analysis, BackendResult, Run, TaskResult, as_analysis, missing
from fwbench.harness.report.verdict import num, pct

TEMPLATES = Path(__file__).parent / "templates"
# matplotlib's tab10, fixed here so table swatches and plot lines share one colour per backend
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
STYLE = {
    "svg.fonttype": "none",  # text stays text: small, sharp, selectable
    "svg.hashsalt": "fwbench",  # deterministic ids (made unique per plot in _svg)
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#888888",
    "legend.frameon": False,
    "legend.fontsize": 8,
}
FIGSIZE = (4.4, 2.9)
MARKERS = "osD^vPX*"  # shapes differ too, so equal results still show every backend


def _svg(fig: Any, ident: str, label: str) -> str:
    """The figure as an inline <svg>: no XML prolog, no metadata, ids unique in the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r'\bid="', f'id="{ident}-', text)
    text = text.replace('href="#', f'href="#{ident}-').replace("url(#", f"url(#{ident}-")
    text = re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                  rf'<svg class="plot" role="img" aria-label="{html.escape(label)}" \1', text, count=1)
    return text


def _marker(a: Analysis, backend: str) -> str:
    return MARKERS[a.backends.index(backend) % len(MARKERS)]


def _short(value: float, _pos: Any = None) -> str:
    """Axis ticks: 12000 -> 12k."""
    return f"{value / 1000:g}k" if abs(value) >= 1000 else f"{value:g}"


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    return fig, fig.add_subplot()


def _accuracy_plot(a: Analysis, t: TaskResult, colors: dict[str, str], by_time: bool) -> str | None:
    curves = {r.backend: r.curves for r in t.rows if r.curves}
    if not curves:
        return None
    fig, ax = _figure()
    seen: list[float] = []
    shown = list(curves)
    for i, b in enumerate(shown):
        epochs = sorted(curves[b])
        acc = [[v[0] * 100 for v in curves[b][e]] for e in epochs]
        if by_time:
            walls = [[v[1] for v in curves[b][e] if v[1] is not None] for e in epochs]
            if not all(walls):
                continue
            x = [float(np.median(w)) for w in walls]
        else:  # dodged a little, so equal results and their bands stay apart
            x = [e + (i - (len(shown) - 1) / 2) * min(0.08, 0.5 / len(shown)) for e in epochs]
        mid = [float(np.median(v)) for v in acc]
        lo, hi = [min(v) for v in acc], [max(v) for v in acc]
        seen += lo + hi
        ax.plot(x, mid, "-", marker=_marker(a, b), color=colors[b], label=b, markersize=5,
                linewidth=1.6, markerfacecolor="none" if a.backends.index(b) % 2 else colors[b])
        if any(h > l for l, h in zip(lo, hi)):
            if len(x) > 1:
                ax.fill_between(x, lo, hi, color=colors[b], alpha=0.18, linewidth=0)
            else:
                ax.vlines(x, lo, hi, color=colors[b], alpha=0.45, linewidth=5)
    if t.target is not None and seen:
        # the target line only where it does not squash the curves into a corner
        target, span = t.target * 100, max(max(seen) - min(seen), 2.0)
        label = f"target {words.pct_target(t.target)}"
        if min(seen) - span <= target <= max(seen) + span:
            ax.axhline(target, color="#444444", linestyle="--", linewidth=0.9)
            ax.annotate(label, (0.01, target), xycoords=("axes fraction", "data"), va="bottom",
                        fontsize=8, color="#444444")
        else:
            ax.annotate(label + (" (above)" if target > max(seen) else " (below)"), (0.01, 0.98),
                        xycoords="axes fraction", va="top", fontsize=8, color="#444444")
            ax.margins(y=0.25)
    ax.set_xlabel("training time (s)" if by_time else "epoch")
    ax.set_ylabel("test accuracy (%)")
    if not by_time:
        last = max(max(c) for c in curves.values())
        ax.set_xticks(range(1, last + 1))
        ax.set_xlim(0.6, last + 0.4)
    ax.legend(loc="lower right")
    kind = "time" if by_time else "epoch"
    return _svg(fig, f"{t.task}-acc-{kind}", f"{t.task}: test accuracy by {kind}")


def _throughput_plot(t: TaskResult, colors: dict[str, str]) -> str | None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rows = [r for r in t.rows if r.throughput is not None]
    if not rows:
        return None
    fig, ax = _figure()
    y = np.arange(len(rows))[::-1]
    values = [r.throughput for r in rows]
    err = np.array([[r.throughput - r.throughput_ci[0], r.throughput_ci[1] - r.throughput]
                    if r.throughput_ci else [0.0, 0.0] for r in rows]).T
    ax.barh(y, values, color=[colors[r.backend] for r in rows], height=0.6,
            xerr=err if err.any() else None, error_kw={"ecolor": "#333333", "capsize": 3, "lw": 1})
    ax.set_yticks(y, [r.backend for r in rows])
    ax.grid(axis="y", visible=False)
    top = max(v + e for v, e in zip(values, err[1]))
    for yi, v, e in zip(y, values, err[1]):
        ax.annotate(num(v), (v + e + top * 0.015, yi), va="center", fontsize=8)
    ax.set_xlim(0, top * 1.22)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FuncFormatter(_short))
    ax.set_xlabel("samples/s (median step; exact CI, coverage in the table)" if err.any()
                  else "samples/s (median step)")
    return _svg(fig, f"{t.task}-throughput", f"{t.task}: throughput by backend")


def _memory_plot(a: Analysis, t: TaskResult, colors: dict[str, str]) -> str | None:
    fig, ax = _figure()
    drawn = False
    for r in t.rows:
        tl = np.asarray(r.memory_timeline, dtype=float)
        if tl.ndim != 2 or len(tl) == 0 or tl.shape[1] < 2:
            continue
        ax.plot(tl[:, 0], tl[:, 1], color=colors[r.backend], linewidth=1.6,
                label=f"{r.backend} (seed {r.memory_seed})")
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("seconds since process start")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best")
    return _svg(fig, f"{t.task}-memory", f"{t.task}: memory over time")


def scatter_points(t: TaskResult) -> list[tuple[BackendResult, list[tuple[float, float]]]]:
    """What the scatter draws, all from the analysis: per backend its throughput and accuracy
    (the big marker: ``BackendResult.throughput``, the same figure as the tables) and its
    processes' ``Point``s (small dots, by the same definition), accuracies in %."""
    out = []
    for r in t.rows:
        if r.throughput is None or r.accuracy is None:
            continue
        out.append((r, [(p.throughput, p.accuracy * 100) for p in r.points
                        if p.throughput is not None and p.accuracy is not None]))
    return out


def _scatter_plot(a: Analysis, t: TaskResult, colors: dict[str, str]) -> str | None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    shown = scatter_points(t)
    if not shown:
        return None
    fig, ax = _figure()
    xs = []
    for r, seeds in shown:
        m = _marker(a, r.backend)
        if len(seeds) > 1:
            ax.scatter(*zip(*seeds), color=colors[r.backend], marker=m, alpha=0.35, s=14, linewidths=0)
        ax.scatter([r.throughput], [r.accuracy * 100], color=colors[r.backend], marker=m, s=50,
                   edgecolors="white", linewidths=0.8, zorder=3, label=r.backend)
        xs += [r.throughput] + [x for x, _ in seeds]
    ax.margins(y=0.3)
    if max(xs) / min(xs) > 8:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, max(xs) * 1.15)
    ax.xaxis.set_major_formatter(FuncFormatter(_short))
    ax.legend(loc="best")
    ax.set_xlabel("throughput (samples/s: batch / median step)")
    ax.set_ylabel("test accuracy (%)")
    return _svg(fig, f"{t.task}-scatter", f"{t.task}: accuracy against speed")


def task_plots(a: Analysis, t: TaskResult, colors: dict[str, str]) -> list[dict[str, str]]:
    """The task's figures that have data: [{"title", "svg"}]; a missing one gets a note."""
    made = [
        ("Test accuracy by epoch", "median over seeds; band: min to max",
         lambda: _accuracy_plot(a, t, colors, by_time=False)),
        ("Test accuracy by training time", "cumulative training time, median over seeds",
         lambda: _accuracy_plot(a, t, colors, by_time=True)),
        ("Steady-state throughput", "batch / median step time",
         lambda: _throughput_plot(t, colors)),
        ("Memory over time", "resident set size of the worker, repeat 0, first seed",
         lambda: _memory_plot(a, t, colors)),
        ("Accuracy against speed", "up and right is better; small dots: single seeds (each its own median step)",
         lambda: _scatter_plot(a, t, colors)),
    ]
    return [{"title": title, "note": note, "svg": draw()} for title, note, draw in made]


def _cell(text: str, sort: Any = None, ci: str = "", cls: str = "num") -> dict[str, Any]:
    return {"text": text, "ci": ci, "sort": "" if missing(sort) else sort, "cls": cls}


def table_rows(t: TaskResult) -> list[list[dict[str, Any]]]:
    """The ranked table as cells: shown text (the Markdown table's), CI (or ''), sort key."""
    out = []
    energy, gpu = words.device_columns(t.rows)
    for r in t.rows:
        status = "status" + (" bad" if set(r.statuses) - {"unsupported"} or r.flagged else "")
        cells = [
            _cell(str(r.position or "–"), r.position),
            _cell(r.backend, cls="backend"),
            _cell(str(r.processes), r.processes),
            _cell(words.target_text(t, r), r.to_target_s, cls="num words"),
            _cell(num(r.throughput), r.throughput, words.ci_text(r.throughput_ci, level=r.step_ci_level)),
            _cell(pct(r.accuracy), r.accuracy, words.ci_text(r.accuracy_ci, pct, r.accuracy_ci_level)),
            _cell(num(r.step_p50), r.step_p50, words.ci_text(r.step_ci, level=r.step_ci_level)),
            *([_cell(num(r.energy_per_sample), r.energy_per_sample)] if energy else []),
            _cell(words.spread_text(r), r.spread[1] - r.spread[0] if r.spread else None),
            _cell(words.cv_text(r), r.cv),
            _cell(num(r.first_step_s), r.first_step_s),
            _cell(num(r.peak_mib), r.peak_mib),
            *([_cell(num(r.gpu_mib), r.gpu_mib), _cell(num(r.gpu_util), r.gpu_util)] if gpu else []),
            _cell(num(r.start_s), r.start_s),
            _cell(words.status_text(r), r.ok / r.cells if r.cells else 0, cls=status),
        ]
        out.append(cells)
    return out


ENERGY_COLUMN = ("J/sample", "energy per training sample: the device's energy counter over "
                 "training minus the run's idle baseline (see the run's energy line)")
GPU_COLUMNS = [("GPU MiB", "the framework allocator's own peak on the GPU"),
               ("GPU util %", "mean NVML GPU utilisation during training")]


def columns(t: TaskResult) -> list[tuple[str, str]]:
    """The table's columns: ``COLUMNS``, with energy and the GPU's where ``table_rows`` has them."""
    energy, gpu = words.device_columns(t.rows)
    out = []
    for name, tip in COLUMNS:
        out.append((name, tip))
        if name == "step ms" and energy:
            out.append(ENERGY_COLUMN)
        if name == "peak MiB" and gpu:
            out += GPU_COLUMNS
    return out


COLUMNS = [("#", "place: time to target, then throughput"), ("backend", ""),
           ("n", "finished processes with step times (seeds' training runs and timing-only repeats)"),
           ("to target s", "training time until the target accuracy (median over seeds), with "
                           "how many seeds reached it"),
           ("samples/s", "steady-state " + words.THROUGHPUT),
           ("test acc", "final test accuracy, median over seeds"),
           ("step ms", "median over processes of each process's median steady-state step; "
                       "exact interval, its coverage in parentheses where not 95%"),
           ("within-process spread p10-p90 ms", "step-to-step jitter inside a process (median "
                                                "over processes); not run-to-run variation"),
           ("CV", f"process-to-process coefficient of variation; flagged above {words.CV_FLAG:.0%}"),
           ("first step s", "the first step, with tracing or compilation"),
           ("peak MiB", "peak resident memory of the worker"),
           ("start s", "import + setup + first step"), ("cells", "finished / planned; flags")]


def _picks(a: Analysis) -> list[dict[str, Any]]:
    return [{"criterion": p.criterion, "winners": p.winners, "note": words.pick_note(p),
             "per_task": {t.task: words.pick_cell(p, t.task) for t in a.tasks} if p.per_task else {}}
            for p in a.picks]


def _code(text: str) -> Any:
    """Escaped text with its `backticked` names as <code>."""
    from markupsafe import Markup

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text)))


def html_report(source: str | Path | Run | Analysis) -> str:
    """The whole report as one HTML string (write it anywhere; it fetches nothing). Pass the
    ``Analysis`` when you have it (it is not recomputed)."""
    import matplotlib  # no matplotlib.use: Figure() draws without pyplot's global backend
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    a = as_analysis(source)
    colors = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(a.backends)}
    with matplotlib.rc_context(STYLE):
        sections = [{"t": t, "verdict": words.verdict(t), "rows": table_rows(t), "columns": columns(t),
                     "processes": words.processes_line(t),
                     "plots": task_plots(a, t, colors) if t.finished else []}
                    for t in a.tasks]
    jenv = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["j2", "html"]),
                       trim_blocks=True, lstrip_blocks=True)
    jenv.filters["code"] = _code
    return jenv.get_template("report.html.j2").render(
        a=a, sections=sections, colors=colors, columns=COLUMNS, picks=_picks(a),
        meta_lines=words.run_lines(a), facts={t.task: words.task_facts(t) for t in a.tasks},
        sources={b: a.meta.backends[b].source if b in a.meta.backends else "" for b in a.backends},
        cfg=a.meta.config, env=a.meta.environment, method=words.METHOD,
        pairs_head=words.pairs_head(a), title=words.report_title(a))
