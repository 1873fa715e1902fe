"""The analysis, the Markdown and HTML reports and the terminal tables, on the fixture runs.

The fixtures are real runs (``python scripts/make_fixtures.py`` rewrites them); a test that
needs a variant derives it here, in a temporary folder, with fwbench's own record writers.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fwbench.harness.report import analysis, markdown as report, terminal, verdict
from fwbench.harness import records, spec, stats

from run_copies import derived_run
from fwbench.harness.report.html import html_report, scatter_points

TESTS = Path(__file__).parent
FIX = TESTS / "fixtures"
SINGLE, RUN_A, RUN_B = FIX / "run-single", FIX / "run-a", FIX / "run-b"
FAST, SLOW = "numpy-learner", "numpy-learner-slow"
FRAMEWORKS = ("torch", "tensorflow", "jax", "flax", "mindspore", "keras", "optax", "paddle")
CHROMIUM = Path("/usr/bin/chromium")
PLOTS_PER_TASK = 5  # accuracy by epoch, by time, throughput, memory, accuracy vs speed
REGENERATE = "regenerate the fixtures: python scripts/make_fixtures.py"
TIMEOUT = records.load_meta(SINGLE).config.timeout_s  # of run-single's hanging cell


def renamed_run(tmp_path: Path, src: Path, names: dict[str, str]) -> Path:
    """``src`` with its backends renamed (the longest built-in names, for the width tests)."""
    def meta(m):
        m.config = dataclasses.replace(m.config, backends=[names[b] for b in m.config.backends])
        m.backends = {names[b]: info for b, info in m.backends.items()}

    def rename(r):
        r.backend = names[r.backend]

    return derived_run(tmp_path, src, f"renamed-{src.name}", rename, meta)


def synthetic_run(tmp_path: Path) -> Path:
    """run-a reshaped: 3 epochs on mlp, where the slow backend reaches the 98% target on
    every seed and the fast one on one seed of three; lenet/slow lost its epochs, lenet/fast
    its memory timeline."""
    def edit(r):
        if r.task == "mlp" and r.ok and not r.repeat:
            slow = r.backend == SLOW
            accs = [0.95, 0.979, 0.983] if slow or r.seed == 0 else [0.94, 0.97, 0.978]
            step = 0.5 if slow else 1.5
            r.epochs = [records.EpochRow(i + 1, 0.3 / (i + 1), 0.2 / (i + 1),
                                         a + 0.002 * r.seed * slow, step * (i + 1))
                        for i, a in enumerate(accs)]
            r.test_accuracy = r.epochs[-1].test_accuracy
            r.time_to_target_s = 3 * step if r.test_accuracy >= 0.98 else None
        if r.task == "lenet" and r.backend == SLOW:
            r.epochs = []
        if r.task == "lenet" and r.backend == FAST:
            r.memory_timeline = []

    return derived_run(tmp_path, RUN_A, "run-synthetic", edit)


def fwbench(*args, columns=200, env=None):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": str(columns), **(env or {})})


def section(md: str, task: str) -> str:
    return md.split(f"## {task}: ")[1].split("\n## ")[0]


def table(md_section: str) -> list[dict[str, str]]:
    """The first Markdown table of a section as rows of cells."""
    lines = [x for x in md_section.splitlines() if x.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in x.strip("|").split("|")))) for x in lines[2:]]


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.svgs, self.srcs = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.svgs += 1
        self.srcs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag not in ("meta", "br", "img", "link", "input", "hr", "path", "use", "rect", "circle",
                       "line", "polyline", "polygon", "stop", "ellipse"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "svg":
            self.svgs += 1
        self.srcs += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_endtag(self, tag):
        if tag in ("path", "use", "rect", "circle", "line", "polyline", "polygon", "stop", "ellipse"):
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def parse(html: str) -> _Parser:
    p = _Parser()
    p.feed(html)
    p.close()
    assert p.stack == [], f"unclosed: {p.stack}"
    return p


def render(run) -> str:
    pytest.importorskip("matplotlib", reason="the HTML report draws its plots with matplotlib")
    pytest.importorskip("jinja2", reason="the HTML report is a jinja2 template")
    return html_report(run)


# ------------------------------------------------------------------ the fixtures themselves


@pytest.mark.parametrize("run", [SINGLE, RUN_A, RUN_B])
def test_fixtures_are_what_the_runner_wrote(run):
    """Every line reads as a current record, and the facts agree with each other (the old
    hand-edited fixture had a "600 s" timeout that took 4.2 s)."""
    loaded = records.load_run(run)
    timeout = loaded.meta.config.timeout_s
    assert loaded.records and all(r.log and (run / r.log).is_file() for r in loaded.records)
    for r in loaded.records:
        assert r.task in loaded.meta.tasks and r.backend in loaded.meta.backends
        if r.status == "timeout":
            assert r.error == f"no result after {timeout:g} s; killed" and r.wall_s >= timeout
        if r.ok:
            task = loaded.task(r.task)
            assert r.wall_s < timeout
            # the worker's one definition: the batch (of the run's task) / the median step
            assert r.throughput_samples_s == pytest.approx(task.batch_size / r.step_time_ms.p50 * 1e3)


# ------------------------------------------------------------------ a run's own definitions


def test_the_run_s_own_task_definitions_are_reported(monkeypatch):
    """run-single was recorded with mlp at target 85%, batch 100: that is what the report
    says, whatever today's spec.TASKS holds."""
    today = spec.TASKS["mlp"]
    assert (today.target_accuracy, today.batch_size) != (0.85, 100), "the test would prove nothing"
    monkeypatch.setitem(spec.TASKS, "mlp", dataclasses.replace(
        today, target_accuracy=0.5, batch_size=7, description="TODAY'S DEFINITION"))
    a = analysis.analyze(SINGLE)
    mlp = a.tasks[0]
    assert (mlp.task, mlp.target, mlp.batch) == ("mlp", 0.85, 100)
    md = report.markdown_report(a)
    text = section(md, "mlp")
    assert "TODAY" not in md and "50% target" not in md
    assert text.startswith("MLP 784-512-10 on MNIST (as this fixture's run defined it")
    assert "_target accuracy 85%, batch 100;" in text
    assert f"Fastest to the 85% target: {FAST} in " in text
    fast = next(r for r in mlp.rows if r.backend == FAST)
    assert fast.to_target_s is not None and fast.position == 1
    assert fast.throughput == pytest.approx(100 / fast.step_p50 * 1e3)  # the run's batch
    html = render(a)
    assert "target accuracy 85%, batch 100" in html and "TODAY" not in html


# ------------------------------------------------------------------ Markdown


@pytest.mark.slow
def test_reports_import_no_framework():
    """In a fresh process (other tests may have imported torch into this one)."""
    pytest.importorskip("matplotlib")
    code = ("import sys; from fwbench.harness.report import markdown as report, html as html_report; "
            f"[report.markdown_report(r) + html_report.html_report(r) for r in {[str(RUN_A), str(SINGLE)]!r}]; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


STEP_CI = r"[\d.,]+ \[[\d.,]+, [\d.,]+\] \(98%\)"  # 7 processes: [min, max], 98.4% coverage


def test_markdown_has_ranked_tables_verdicts_and_intervals():
    md = report.markdown_report(RUN_A)
    for task in ("mlp", "lenet"):
        assert f"## {task}: " in md
    assert "## Which framework for what" in md
    assert "| # | backend | n | to target s | samples/s | test acc | step ms |" in md
    # the slow backend sleeps 3 ms per lenet step, the fast one 1 ms: over 7 processes each
    lenet = section(md, "lenet")
    rows = table(lenet)
    assert [(r["#"], r["backend"], r["n"]) for r in rows] == [("1", FAST, "7"), ("2", SLOW, "7")]
    assert re.search(rf"Highest steady-state throughput: {FAST}, [\d,]+ samples/s; {FAST} is "
                     rf"[\d.]+x faster than {SLOW} \[[\d.]+, [\d.]+\] \(p = [\d.e-]+, "
                     r"Holm-adjusted, 7 vs 7 processes\)\.", lenet), lenet
    # 7 processes: exact intervals, labelled with their real coverage (98%, not 95%)
    for r in rows:
        assert re.fullmatch(STEP_CI, r["step ms"]), r
        assert re.fullmatch(STEP_CI, r["samples/s"]), r
        assert re.fullmatch(r"[\d.]+-[\d.]+", r["within-process spread p10-p90 ms"]), r
        assert re.fullmatch(r"[\d.]+%", r["CV"]), r
    assert "No backend reached the 98% target" in section(md, "mlp")
    n = sum((r.task, r.backend) == ("mlp", FAST) for r in records.load_run(RUN_A).records)
    assert n == 7 and f"| mlp | {FAST} | {n}/{n} | {n} |" in md  # the full table stays
    assert "Cells that did not finish" not in md


def test_the_method_says_what_is_done():
    md = report.markdown_report(RUN_A)
    assert "Mann-Whitney U on the step times" not in md
    assert "Mann-Whitney U" not in analysis.PAIR_TEST
    assert ("exact two-sided Mann-Whitney test over the per-process median step times, with Holm's "
            "correction over every pair of every task of the report (0.05 family-wise)") in md
    assert "unit of replication is one worker process" in md
    # the step times, their intervals, the spread and the pairs: over processes, never steps
    a = analysis.analyze(RUN_A)
    run = records.load_run(RUN_A)
    for t in a.tasks:
        for r in t.rows:
            figures = sorted(stats.process_figure(x.step_samples_ms) for x in run.records
                             if (x.task, x.backend) == (t.task, r.backend))
            assert r.step_p50 == pytest.approx(float(np.median(figures)))
            assert r.step_ci == pytest.approx((figures[0], figures[-1]))  # n = 7: [min, max]
            assert r.step_ci_level == pytest.approx(1 - 2 / 2 ** 7)


def test_markdown_single_run_has_no_intervals_and_lists_failures():
    md = report.markdown_report(SINGLE)
    for task in ("mlp", "lenet", "lstm"):
        assert f"## {task}: " in md
    table_lines = [x for x in md.splitlines() if x.startswith("|")]
    assert len(table_lines) > 10
    assert not any(re.search(r"\[\d", x) for x in table_lines), "a single run must not get an interval"
    # never a verdict from one process each
    assert f"{FAST} vs {SLOW}: 1 vs 1 processes: too few for a verdict" in md
    assert f"Highest steady-state throughput: too few runs to tell {FAST} (" in md
    assert "none of the report's 2 pairs has enough processes for a verdict" in md
    # the task whose cells all failed, with each cell's one-line error
    assert f"No backend finished lstm: {FAST} failed, {SLOW} timeout." in md
    assert (f"lstm / {FAST} / seed 0: **failed**: ValueError: an injected failure for the report "
            "fixtures (lstm) (second line of the message)") in md
    assert f"lstm / {SLOW} / seed 0: **timeout**: no result after {TIMEOUT:g} s; killed" in md
    a = analysis.analyze(SINGLE)
    rows = verdict.summary_rows(a)
    assert {(r["task"], r["backend"]) for r in rows} == {(t, b) for t in ("mlp", "lenet", "lstm")
                                                         for b in (FAST, SLOW)}
    assert all("[" not in v for r in rows for v in r.values())


def test_markdown_states_the_throughput_definition_once():
    md = report.markdown_report(RUN_A)
    assert md.count(verdict.THROUGHPUT) == 1
    assert md.count("batch size / median steady-state step time") == 1


def test_which_framework_for_what_from_the_numbers():
    a = analysis.analyze(RUN_A)
    picks = {p.criterion: p for p in a.picks}
    assert set(picks) >= {"fastest to target", "highest throughput", "lowest peak memory", "fastest start"}
    assert picks["fastest to target"].winners == []  # 98%: not reached in one smoke epoch
    assert verdict.pick_overall(picks["fastest to target"]) == "no backend reached a target"
    tp = picks["highest throughput"]  # significant on both tasks (7 vs 7, sleeps 1 vs 3 ms)
    assert tp.winners == [FAST] and verdict.pick_note(tp) == "2 of 2 tasks"
    assert verdict.pick_cell(tp, "lenet").startswith(f"{FAST} (")
    single = {p.criterion: p for p in analysis.analyze(SINGLE).picks}
    assert single["fastest to target"].winners == [FAST]  # the run's own 85% target
    assert verdict.pick_note(single["fastest to target"]) == "1 of 1 task"
    # one process each: no throughput winner is named as if decided
    assert single["highest throughput"].winners == []
    tp = single["highest throughput"]
    assert verdict.pick_overall(tp) == "undecided on every task (tied or too few runs)"
    assert verdict.pick_cell(tp, "lenet") == f"too few runs to tell {FAST} from {SLOW}"
    rec = next(r for r in records.load_run(SINGLE).records if (r.task, r.backend) == ("mlp", SLOW))
    row = next(r for r in analysis.analyze(SINGLE).tasks[0].rows if r.backend == SLOW)
    assert row.start_s == pytest.approx(rec.import_s + rec.setup_s + rec.first_step_s)


def test_time_to_target_ranks_first(tmp_path):
    a = analysis.analyze(synthetic_run(tmp_path))
    mlp = next(t for t in a.tasks if t.task == "mlp")
    first, second = mlp.rows
    # the slower backend (lower throughput) reaches the target first on every seed: first
    assert (first.backend, first.to_target_s, first.reached, first.seeds) == (SLOW, 1.5, 3, 3)
    assert first.throughput < second.throughput
    # two seeds of three never got there: no median of the one that did
    assert (second.backend, second.to_target_s, second.reached) == (FAST, None, 1)
    assert verdict.verdict(mlp)[0] == (f"Fastest to the 98% target: {SLOW} in 1.50 s (3/3 seeds); "
                                       f"{FAST} not reached by most seeds (1/3).")
    rows = {r["backend"]: r for r in verdict.task_rows(mlp)}
    assert rows[SLOW]["to target s"] == "1.50 (3/3 seeds)"
    assert rows[FAST]["to target s"] == "not reached by most seeds (1/3)"
    assert next(p for p in a.picks if p.criterion == "fastest to target").winners == [SLOW]


def test_time_to_target_always_says_how_many_seeds(tmp_path):
    """2 of 3 seeds: the median of the three (the never counted as infinite) with its count;
    1 of 3 on every backend: no backend reached it with most of its seeds."""
    def edit(reached_by):
        def change(r):
            if r.task == "mlp" and r.ok and not r.repeat:
                r.time_to_target_s = 1.0 + r.seed if r.seed in reached_by[r.backend] else None
        return change

    two = analysis.analyze(derived_run(tmp_path, RUN_A, "two", edit({FAST: {0, 1}, SLOW: {0}})))
    mlp = two.tasks[0]
    fast = next(r for r in mlp.rows if r.backend == FAST)
    assert (fast.to_target_s, fast.reached, fast.seeds) == (2.0, 2, 3)
    assert verdict.target_text(mlp, fast) == "2.00 (2/3 seeds)"
    assert verdict.verdict(mlp)[0] == (f"Fastest to the 98% target: {FAST} in 2.00 s (2/3 seeds); "
                                       f"{SLOW} not reached by most seeds (1/3).")
    one = analysis.analyze(derived_run(tmp_path, RUN_A, "one", edit({FAST: {2}, SLOW: {0}})))
    assert verdict.verdict(one.tasks[0])[0] == (
        f"No backend reached the 98% target with most of its seeds ({FAST} 1/3, {SLOW} 1/3).")
    md = report.markdown_report(one)
    assert "not reached by most seeds (1/3)" in md and not re.search(r"\| [\d.]+ \| ", md.split("| mlp |")[0])


# ------------------------------------------------------------------ process-level statistics


def keep(repeats: set[int], seeds: set[int] | None = None):
    """A ``derived_run`` edit keeping only those repeats (and seeds, for repeat 0)."""
    def edit(r):
        if r.repeat not in repeats or (r.repeat == 0 and seeds is not None and r.seed not in seeds):
            return False
    return edit


def test_a_two_process_cell_is_too_few(tmp_path):
    """2 processes a side (two seeds, no repeats): no interval, no verdict, no winner."""
    run = derived_run(tmp_path, RUN_A, "two-processes", keep({0}, {0, 1}))
    a = analysis.analyze(run)
    md = report.markdown_report(a)
    lenet = section(md, "lenet")
    for r in table(lenet):
        assert r["n"] == "2" and "[" not in r["step ms"] and "[" not in r["samples/s"], r
    assert f"- {FAST} vs {SLOW}: 2 vs 2 processes: too few for a verdict" in lenet
    assert f"Highest steady-state throughput: too few runs to tell {FAST} (" in lenet
    assert "none of the report's 2 pairs has enough processes for a verdict" in md
    assert "2 seeds: too few to show equivalence (TOST needs 3 a side)" in lenet
    assert a.family == 0 and all(not p.tested and p.p_value is None for t in a.tasks for p in t.pairs)
    tp = next(p for p in a.picks if p.criterion == "highest throughput")
    assert tp.winners == [] and tp.undecided == 2
    assert "| highest throughput | too few runs to tell" in md
    assert "is 2" not in md and "x faster than" not in md


def test_a_pair_that_cannot_pass_holm_is_too_few(tmp_path):
    """3 vs 3 processes: tested, but an exact test at those sizes can never reach 0.05."""
    a = analysis.analyze(derived_run(tmp_path, RUN_A, "three", keep({0})))
    p = a.tasks[1].pairs[0]
    assert (p.n_a, p.n_b, p.verdict, p.p_value) == (3, 3, analysis.TOO_FEW, None)
    assert p.sentence.endswith("3 vs 3 processes: too few for a verdict among 2 comparisons "
                               "(needs 5 per side)")


def with_copy(tmp_path: Path, name: str = f"{FAST}#2") -> Path:
    """run-a with an A/A copy of the fast backend: the same processes under another name."""
    def meta(m):
        m.config = dataclasses.replace(m.config, backends=[*m.config.backends, name])
        m.backends[name] = m.backends[FAST]
        for t in m.config.tasks:
            m.stopping[f"{t}/{name}"] = m.stopping[f"{t}/{FAST}"]

    out = derived_run(tmp_path, RUN_A, "with-copy", edit_meta=meta)
    for r in records.load_run(RUN_A).records:
        if r.backend == FAST:
            records.append_record(out / records.RESULTS, dataclasses.replace(r, backend=name))
    return out


def test_holm_family_is_every_pair_of_every_task(tmp_path):
    """3 backends x 2 tasks: 6 pairs, tested as ONE family; an A/A copy is no different."""
    a = analysis.analyze(with_copy(tmp_path))
    found = [p for t in a.tasks for p in t.pairs]
    assert len(found) == 6 and a.family == 6 and all(p.family == 6 for p in found)
    run = records.load_run(RUN_A)
    figures = {}
    for r in run.records:
        figures.setdefault((r.task, r.backend), []).append(stats.process_figure(r.step_samples_ms))
    copy = f"{FAST}#2"
    raw = [stats.test_difference(figures[(p.task, p.faster.replace(copy, FAST))],
                                 figures[(p.task, p.slower.replace(copy, FAST))]) for p in found]
    assert [p.p_value for p in found] == pytest.approx(stats.holm(raw))
    aa = [p for p in found if {p.faster, p.slower} == {FAST, copy}]
    assert len(aa) == 2 and all(p.verdict == analysis.NO_DIFFERENCE for p in aa)
    assert all(p.sentence.startswith(f"{FAST} vs {copy}: no significant difference (1.00x") for p in aa)
    md = report.markdown_report(a)
    assert "the Holm family is all 6 pairs of the report" in md
    # the top two are an A/A pair: the throughput lead is tied, never a winner
    lenet = section(md, "lenet")
    assert (f"Highest steady-state throughput: tied, no significant difference between {FAST} (") in lenet
    tp = next(p for p in a.picks if p.criterion == "highest throughput")
    assert tp.winners == [] and verdict.pick_cell(tp, "mlp") == (
        f"tied: {FAST} / {copy} (no significant difference)")


def test_interval_coverage_is_labelled(tmp_path):
    assert verdict.coverage(None) == verdict.coverage(0.95) == verdict.coverage(0.951) == ""
    assert verdict.coverage(1 - 2 / 2 ** 5) == " (94%)" and verdict.coverage(0.75) == " (75%)"
    five = analysis.analyze(derived_run(tmp_path, RUN_A, "five", keep({0, 1, 2})))
    for t in five.tasks:
        for r in verdict.task_rows(t):
            assert r["n"] == "5" and r["step ms"].endswith("] (94%)"), r
            assert r["test acc"].endswith("] (75%)"), r  # 3 seeds: [min, max], 75%
    assert 'class="ci">[' in render(five) and "] (94%)</span>" in render(five)


def accuracy_run(tmp_path: Path, name: str, offset: float, spread: float) -> Path:
    """run-a with the slow backend's accuracies moved by ``offset`` and spread over seeds."""
    def edit(r):
        if r.ok and not r.repeat:
            moved = offset + spread * (r.seed - 1) if r.backend == SLOW else 0.0
            r.test_accuracy = 0.90 + 0.001 * r.seed + moved
    return derived_run(tmp_path, RUN_A, name, edit)


def test_accuracy_equivalence_by_tost(tmp_path):
    close = analysis.analyze(accuracy_run(tmp_path, "close", -0.001, 0.0))
    mlp = close.tasks[0]
    assert mlp.reference == FAST
    slow = next(r for r in mlp.rows if r.backend == SLOW)
    assert slow.equivalence.verdict == analysis.EQUIVALENT and slow.equivalence.n == 3
    line = next(v for v in verdict.verdict(mlp) if v.startswith("Accuracy"))
    assert line.startswith(f"Accuracy, each backend against the most accurate ({FAST}, 90.10% median "
                           f"over 3 seeds): {SLOW} 90.00%, equivalent within ±0.5 points (TOST, "
                           "difference -0.10 points, 90% CI [")
    assert "agrees" not in report.markdown_report(close)
    far = analysis.analyze(accuracy_run(tmp_path, "far", -0.003, 0.004)).tasks[0]
    line = next(v for v in verdict.verdict(far) if v.startswith("Accuracy"))
    assert f"{SLOW} 89.80%, equivalence within ±0.5 points not shown (TOST, difference -0.30 points" in line
    two = analysis.analyze(derived_run(tmp_path, RUN_A, "two-seeds", keep({0, 1, 2, 3, 4}, {0, 1})))
    line = next(v for v in verdict.verdict(two.tasks[0]) if v.startswith("Accuracy"))
    assert line.endswith(", 2 seeds: too few to show equivalence (TOST needs 3 a side).")


def flagged_run(tmp_path: Path) -> Path:
    """run-a, quiet everywhere but: one lenet/fast process twice as slow (CV > 10%), two
    lenet/slow processes recorded on a busy machine."""
    def edit(r):
        r.noise = dataclasses.replace(r.noise or records.Noise(),
                                      busy=r.task == "lenet" and r.backend == SLOW and r.repeat in (1, 2))
        if (r.task, r.backend, r.repeat) == ("lenet", FAST, 3):
            r.step_samples_ms = [2 * x for x in r.step_samples_ms]

    def meta(m):
        m.noise_at_start = dataclasses.replace(m.noise_at_start, busy=False,
                                               text="cores 1 over 1.00 s: quiet")
    return derived_run(tmp_path, RUN_A, "flagged", edit, meta)


def test_cv_and_busy_flags(tmp_path):
    a = analysis.analyze(flagged_run(tmp_path))
    md = report.markdown_report(a)
    lenet = section(md, "lenet")  # lenet's step times are sleeps: CV well under 1% unflagged
    rows = {r["backend"]: r for r in table(lenet)}
    fast = next(r for r in a.tasks[1].rows if r.backend == FAST)
    assert fast.cv_flagged and fast.cv > analysis.CV_FLAG and fast.busy == 0
    assert rows[FAST]["status"] == f"7/7 ok; ⚠ CV {fast.cv * 100:.1f}%"
    assert rows[SLOW]["status"] == "7/7 ok; ⚠ busy 2/7"
    assert f"- ⚠ CV: {FAST}'s processes differ by {fast.cv * 100:.1f}% (coefficient of variation" in lenet
    assert f"- ⚠ busy: 2 of 7 processes of {SLOW} ran while other processes used their cores" in lenet
    assert "load at start: cores 1 over 1.00 s: quiet" in md
    html = unescape(render(a))
    assert f"⚠ CV {fast.cv * 100:.1f}%" in html and "⚠ busy 2/7" in html
    assert f"{SLOW} ran while other processes used their cores" in html
    assert any(x.startswith("lenet: ⚠ busy: 2 of 7") for x in verdict.flag_lines(a))


def test_load_at_start_says_when_a_second_look_let_the_run_through():
    meta = records.load_run(RUN_A).meta
    second = records.NoiseAtStart(busy=False, looks=2, text="cores 0 over 2.00 s: quiet")
    for noise, shown in ((second, "cores 0 over 2.00 s: quiet (a second look: the first second "
                                  "was busy)"),
                         (dataclasses.replace(second, looks=1), "cores 0 over 2.00 s: quiet")):
        lines = dict(verdict.meta_lines(dataclasses.replace(meta, noise_at_start=noise)))
        assert lines["load at start"] == shown


def test_run_json_noise_drift_and_stopping_are_shown():
    a = analysis.analyze(RUN_A)
    md = report.markdown_report(a)
    html = unescape(render(a))
    stop = (f"Processes per backend: {FAST} 7 and {SLOW} 7: the planned processes "
            "(seeds + --repeats).")
    assert section(md, "lenet").count(stop) == 1 and html.count(stop) == 2
    noise = a.meta.noise_at_start
    assert noise.text and f"load at start: {'BUSY: ' if noise.busy else ''}{noise.text}" in md
    assert len(a.drift_ms) == 5 and "drift probes: 5 (a fixed NumPy workload before each round" in md
    for text in (md, html):
        assert "timing-only repeats per cell" in text


def test_adapter_sizes_without_importing_frameworks(tmp_path):
    a = analysis.analyze(RUN_A)
    source = TESTS / "fixture_backends.py"
    for name in (FAST, SLOW):
        info = a.adapters[name]
        assert info.module == "fixture_backends" and Path(info.path) == source
        assert info.loc == analysis.count_loc(source)
        assert info.changed is False, REGENERATE  # the adapter file the run used
    assert f"{FAST} {analysis.count_loc(source)}," in report.markdown_report(a)
    # an adapter edited since the run is flagged
    def edit(meta):
        meta.backends[FAST].adapter_sha256 = "0" * 64
    changed = analysis.analyze(derived_run(tmp_path, RUN_A, "edited", edit_meta=edit))
    assert changed.adapters[FAST].changed is True
    assert f"{FAST} {changed.adapters[FAST].loc} (changed since the run)" in report.markdown_report(changed)
    # an unknown backend is reported, not fatal
    assert analysis.adapter_sizes(["no-such-backend"], a.meta)["no-such-backend"].loc is None


def test_count_loc_skips_blanks_comments_docstrings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Doc\nstring."""\n\n# comment\nimport os  # trailing\n\n'
                 'def f():\n    """One line."""\n    return 1\n')
    assert analysis.count_loc(f) == 3


def test_the_analysis_is_computed_once(monkeypatch):
    """The renderers draw a given Analysis; they never analyse again."""
    a = analysis.analyze(RUN_A)
    calls = []
    monkeypatch.setattr(analysis, "analyze", lambda *args: calls.append(args))
    report.markdown_report(a)
    render(a)
    verdict.summary_rows(a)
    verdict.significance_lines(a)
    assert calls == []


# ------------------------------------------------------------------ one throughput


@pytest.mark.parametrize("run", [RUN_A, SINGLE])
def test_throughput_is_one_definition_in_markdown_html_and_scatter(run):
    a = analysis.analyze(run)
    md = report.markdown_report(a)
    html = render(a)
    by_record = {}
    for r in a.records:
        if r.ok and not r.repeat and r.test_accuracy is not None:
            by_record.setdefault((r.task, r.backend), []).append(r.throughput_samples_s)
    for t in a.tasks:
        md_rows = {r["backend"]: r for r in table(section(md, t.task))}
        html_task = html.split(f'id="task-{t.task}"')[1].split("</table>")[0]
        html_cells = re.findall(r'<td class="num" data-v="([^"]*)">([^<]*)', html_task)
        drawn = {r.backend: dots for r, dots in scatter_points(t)}
        for r in t.finished:
            # batch (of the run's task) / median step
            assert r.throughput == pytest.approx(t.batch / r.step_p50 * 1e3)
            shown = verdict.num(r.throughput)
            assert md_rows[r.backend]["samples/s"].split(" [")[0] == shown
            # the HTML table shows the same figure, and sorts on it
            assert (str(r.throughput), shown) in html_cells
            # the scatter: the same figure for the backend, each process's median for a dot
            # (the worker's throughput_samples_s), never a mean-based one
            assert [x for x, _ in drawn[r.backend]] == pytest.approx(by_record[(t.task, r.backend)])
            assert [p.throughput for p in r.points] == pytest.approx(by_record[(t.task, r.backend)])
    assert verdict.THROUGHPUT in unescape(html)


# ------------------------------------------------------------------ schema


@pytest.mark.parametrize("schema,message", [
    (1, "line 1 has schema 1; this fwbench reads schema 2"),
    (None, "line 1 was written by an older fwbench (no schema version)"),
])
def test_a_results_line_of_another_schema_is_one_line_and_exit_2(tmp_path, schema, message):
    run = tmp_path / "old"
    shutil.copytree(SINGLE, run)
    lines = (run / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    if schema is None:
        del first["schema"]
    else:
        first["schema"] = schema
    (run / "results.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    for command in (["report", run], ["export", run, "--out", tmp_path / "x"], ["compare", run, RUN_A]):
        r = fwbench(*command)
        assert r.returncode == 2, (command, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not (run / "report.md").exists()


def test_a_run_json_without_schema_is_refused(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(SINGLE, run)
    meta = json.loads((run / "run.json").read_text())
    del meta["schema"]
    (run / "run.json").write_text(json.dumps(meta))
    r = fwbench("report", run)
    assert r.returncode == 2 and "run.json was written by an older fwbench" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ 80 columns


def rendered(table, width=80) -> list[str]:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    console.print(table)
    return console.export_text().splitlines()


def assert_names_whole(lines: list[str], pairs: set[tuple[str, str]]):
    assert max(map(len, lines)) <= 80, "\n".join(lines)
    for task, backend in pairs:
        pattern = rf"(^|\s){re.escape(task)}\s+{re.escape(backend)}(\s|$)"
        assert any(re.search(pattern, x) for x in lines), f"{task} {backend} cut:\n" + "\n".join(lines)


LONGEST = {FAST: "mindspore-pynative", SLOW: "tensorflow-xla"}


@pytest.mark.parametrize("run", [SINGLE, RUN_A])
def test_run_summary_fits_80_columns_with_whole_names(tmp_path, run):
    for source in (run, renamed_run(tmp_path, run, LONGEST)):
        a = analysis.analyze(source)
        lines = rendered(terminal.summary_table(a, f"summary ({source})"))
        assert_names_whole(lines, {(t.task, r.backend) for t in a.tasks for r in t.rows})


def test_compare_fits_80_columns_with_whole_names(tmp_path):
    a, b = renamed_run(tmp_path, RUN_A, LONGEST), renamed_run(tmp_path, RUN_B, LONGEST)
    r = fwbench("compare", a, b, columns=80)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert_names_whole(lines, {(t, n) for t in ("mlp", "lenet") for n in LONGEST.values()})
    # one line per cell: the ratio with its interval and the verdict are not folded either
    slow = next(x for x in lines if re.match(r"\s*lenet\s+tensorflow-xla\s", x))
    assert re.search(r"\s[\d.]+x \[[\d.]+, [\d.]+\]\s+[\d.e-]+\s+regression\s*$", slow), slow
    assert any(x.startswith("machine drift (drift probes, B/A): ") for x in lines)


PLUGIN = """\
from fwbench.harness.adapter import Backend
FAST = Backend("{fast}", "fixture_backends:Toy", ("numpy",), {{"sleep_ms": 1.0}}, "toy", "test")
SLOW = Backend("{slow}", "fixture_backends:Toy", ("numpy",), {{"sleep_ms": 3.0}}, "toy", "test")
"""


@pytest.mark.slow
def test_fwbench_run_prints_a_summary_that_fits_80_columns(tmp_path):
    """A real ``fwbench run`` of two toy backends registered as a plugin (a dist-info on
    PYTHONPATH, nothing installed), in an 80-column terminal."""
    site = tmp_path / "site"
    dist = site / "fixture_toys-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fixture-toys\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[fwbench.backends]\n{FAST} = fixture_toys:FAST\n"
                                           f"{SLOW} = fixture_toys:SLOW\n")
    (site / "fixture_toys.py").write_text(PLUGIN.format(fast=FAST, slow=SLOW))
    out = tmp_path / "run"
    r = fwbench("run", "--profile", "smoke", "--tasks", "mlp,lenet", "--backends", f"{FAST},{SLOW}",
                "--threads", "1", "--out", out, columns=80,
                env={"PYTHONPATH": os.pathsep.join([str(site), str(TESTS)])})
    assert r.returncode == 0, r.stderr + r.stdout
    lines = r.stdout.splitlines()
    head = next(i for i, x in enumerate(lines) if re.match(r"\s*task\s+backend\s+ok\s", x))
    # the summary table's own rows (the progress lines above it name the cells too)
    assert_names_whole(lines[head:], {(t, b) for t in ("mlp", "lenet") for b in (FAST, SLOW)})
    assert max(map(len, lines)) <= 80


# ------------------------------------------------------------------ HTML


@pytest.mark.parametrize("run,tasks_with_plots", [(RUN_A, 2), (SINGLE, 2)])
def test_html_is_self_contained_and_parses(run, tasks_with_plots):
    html = render(run)
    for bad in ('src="http', "src='http", 'href="http', "href='http", "url(http", "url('http",
                'url("http', "@import", "<link", 'src="//', 'href="//'):
        assert bad not in html, bad
    p = parse(html)
    assert all(s.startswith("#") for s in p.srcs), p.srcs  # only in-page links
    assert p.svgs == html.count("<svg") == PLOTS_PER_TASK * tasks_with_plots
    assert "Which framework for what" in html and "<table" in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids must be unique across the inline SVGs"


def test_html_failed_cells_and_no_brackets_for_one_run():
    single = render(SINGLE)
    assert "ValueError: an injected failure for the report fixtures (lstm)" in single
    assert f"no result after {TIMEOUT:g} s; killed" in single
    assert "No finished cells to plot" in single  # lstm: every cell failed
    assert 'class="ci"' not in single and 'class="ci"' in render(RUN_A)


def test_html_with_missing_epochs_and_timeline(tmp_path):
    html = render(synthetic_run(tmp_path))
    parse(html)
    assert "no data recorded for this plot" not in html
    lenet = html.split('id="task-lenet"')[1]
    # lenet/fast kept its epochs, lenet/slow its timeline: every lenet plot still drawn
    assert lenet.count("<svg") == PLOTS_PER_TASK
    assert "Fastest to the 98% target" in html


def test_html_when_nothing_has_data(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    meta = records.load_meta(RUN_A)
    meta.config = dataclasses.replace(meta.config, tasks=["mlp"], backends=["toy", "other"])
    records.write_meta(run, meta)
    for r in (records.CellRecord("mlp", "toy", status="ok", test_accuracy=0.9),
              records.CellRecord("mlp", "other", status="crashed",
                                 error="Traceback (most recent call last):\n  ...\nRuntimeError: <img src=x> broke")):
        records.append_record(run / records.RESULTS, r)
    html = render(run)  # no epochs, no step times, no timeline
    parse(html)
    assert html.count("<svg") == 0
    assert "RuntimeError: &lt;img src=x&gt; broke" in html and "<img" not in html  # last line, escaped
    assert html.count("no data recorded for this plot") == PLOTS_PER_TASK
    assert "## mlp: " in report.markdown_report(run)  # and the Markdown still renders


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: the screenshot check needs a "
                    "headless Chromium (apt-get install chromium)")
@pytest.mark.parametrize("run", [RUN_A, SINGLE])
def test_chromium_screenshot_is_not_blank(run, tmp_path):
    from PIL import Image

    page, png = tmp_path / "report.html", tmp_path / "shot.png"
    page.write_text(render(run), encoding="utf-8")
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
                    "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=180, check=False)
    assert png.is_file(), "chromium wrote no screenshot"
    im = Image.open(png).convert("RGB")
    assert im.size == (1280, 2000)
    colours = im.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"the page looks blank: {len(colours)} colours"
    # the backend colours of the plots and table swatches are on the page
    present = {c for _, c in colours}
    assert (31, 119, 180) in present and (255, 127, 14) in present  # tab10 blue and orange


LAYOUT_PROBE = """<script>
const wide = [...document.querySelectorAll(".tablewrap")].filter(w => w.scrollWidth > w.clientWidth + 1);
const loose = wide.filter(w => w.querySelector("table.cells")).flatMap(w =>
  [...w.querySelectorAll("tr")].flatMap(tr => [...tr.children].slice(0, 2)))
  .filter(c => getComputedStyle(c).position !== "sticky");
document.body.setAttribute("data-probe", JSON.stringify({wide: wide.length, loose: loose.length,
  tables: document.querySelectorAll(".tablewrap").length}));
</script></body>"""


def layout(html: str, width: int, tmp_path) -> dict:
    """Chromium's own layout of the page at ``width`` px: how many tables are wider than their
    box (and scroll), and how many first-two-column cells of those do not stay in view."""
    page = tmp_path / f"layout-{width}.html"
    page.write_text(html.replace("</body>", LAYOUT_PROBE, 1), encoding="utf-8")
    r = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},2000",
                        "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'data-probe="([^"]*)"', r.stdout)
    assert found, f"chromium ran no layout probe: {r.stderr[-500:]}"
    return json.loads(unescape(found.group(1)))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: the layout check needs a "
                    "headless Chromium (apt-get install chromium)")
@pytest.mark.parametrize("run", [RUN_A, SINGLE, TESTS.parent / "reports"], ids=["run-a", "run-single", "reference"])
def test_every_column_of_the_html_report_is_visible_on_a_1280_px_page(run, tmp_path):
    html = render(run)
    wide = layout(html, 1280, tmp_path)
    assert wide["tables"] >= 2 and wide["wide"] == 0, wide
    narrow = layout(html, 760, tmp_path)  # a phone-sized page: the tables scroll, place and
    assert narrow["wide"] >= 1 and narrow["loose"] == 0, narrow  # backend stay in view


def test_the_report_title_says_what_was_run_not_the_folder(tmp_path):
    shutil.copytree(RUN_A, tmp_path / "reports")
    html = render(tmp_path / "reports")
    title = re.search(r"<title>(.*)</title>", html).group(1)
    a = analysis.analyze(RUN_A)
    meta = a.meta
    for word in [*(t.task for t in a.tasks), *a.backends, meta.config.profile,
                 meta.environment.cpu_model]:
        assert unescape(word) in unescape(title), (word, title)
    assert "reports" not in title
    assert unescape(title) == "fwbench: " + verdict.report_title(a)


def test_the_html_report_leaves_matplotlib_s_backend_alone():
    """Importing the report and drawing it does not switch the caller's plotting backend."""
    code = ("import matplotlib; matplotlib.use('pdf'); "
            "from fwbench.harness.report.html import html_report; "
            f"html_report({str(RUN_A)!r}); print(matplotlib.get_backend())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout.strip()) == (0, "pdf"), r.stderr[-2000:]
