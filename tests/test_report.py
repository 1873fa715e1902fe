"""The Markdown and HTML reports, on the checked-in fixture runs (no framework needed)."""

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fwbench.harness import report
from fwbench.harness.html_report import html_report

FIX = Path(__file__).parent / "fixtures"
SINGLE, SEEDS = FIX / "run-single", FIX / "run-seeds"
FRAMEWORKS = ("torch", "tensorflow", "jax", "flax", "mindspore", "keras", "optax")
CHROMIUM = Path("/usr/bin/chromium")
PLOTS_PER_TASK = 5  # accuracy by epoch, by time, throughput, memory, accuracy vs speed


def synthetic_run(tmp_path: Path) -> Path:
    """run-seeds reshaped: 3 epochs, torch reaches the mlp target on one seed of two,
    tensorflow on both; lenet/tensorflow lost its epochs, lenet/torch its memory timeline."""
    run = tmp_path / "run-synthetic"
    run.mkdir()
    shutil.copy(SEEDS / "run.json", run / "run.json")
    out = []
    for line in (SEEDS / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["task"] == "mlp" and r["status"] == "ok" and not r["repeat"]:
            fast = r["backend"] == "tensorflow"
            accs = [0.95, 0.979, 0.983] if fast or r["seed"] == 0 else [0.94, 0.97, 0.978]
            step = 0.5 if fast else 1.5
            r["epochs"] = [{"epoch": i + 1, "train_loss": 0.3 / (i + 1), "test_loss": 0.2 / (i + 1),
                            "test_accuracy": a + 0.002 * r["seed"] * fast, "wall_s": step * (i + 1)}
                           for i, a in enumerate(accs)]
            r["test_accuracy"] = r["epochs"][-1]["test_accuracy"]
            r["time_to_target_s"] = 3 * step if r["test_accuracy"] >= 0.98 else None
        if r["task"] == "lenet" and r["backend"] == "tensorflow":
            r.pop("epochs", None)
        if r["task"] == "lenet" and r["backend"] == "torch":
            r.pop("memory_timeline", None)
        out.append(json.dumps(r))
    (run / "results.jsonl").write_text("\n".join(out) + "\n")
    return run


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


def render(run: Path) -> str:
    pytest.importorskip("matplotlib", reason="the HTML report draws its plots with matplotlib")
    pytest.importorskip("jinja2", reason="the HTML report is a jinja2 template")
    return html_report(run)


def test_reports_import_no_framework():
    """In a fresh process (other tests may have imported torch into this one)."""
    pytest.importorskip("matplotlib")
    code = ("import sys; from fwbench.harness import report, html_report; "
            f"[report.markdown_report(r) + html_report.html_report(r) for r in {[str(SEEDS), str(SINGLE)]!r}]; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ------------------------------------------------------------------ Markdown


def test_markdown_has_ranked_tables_verdicts_and_failures():
    md = report.markdown_report(SEEDS)
    for task in ("mlp", "lenet", "lstm"):
        assert f"## {task}: " in md
    assert "## Which framework for what" in md
    assert "| # | backend | to target s | samples/s | test acc |" in md
    # tensorflow is ~7x faster per step in this fixture, significantly
    mlp = md.split("## mlp: ")[1].split("## lenet")[0]
    assert mlp.index("| 1 | tensorflow |") < mlp.index("| 2 | torch |")
    assert "Highest steady-state throughput: tensorflow" in mlp and "is significant" in mlp
    assert "No backend reached the 98% target" in mlp
    # two seeds: CIs in brackets
    assert re.search(r"87\.15% \[86\.80%, 87\.50%\]", mlp)
    # the task whose cells all failed
    assert "No backend finished lstm: tensorflow failed, torch timeout." in md
    assert "lstm / tensorflow / seed 0: **failed**: ValueError: an injected failure for the report tests" in md
    assert "lstm / torch / seed 0: **timeout**: no result after 600 s; killed" in md
    assert "| mlp | torch | 4/4 |" in md  # the full table stays


def test_markdown_single_seed_has_no_ci_brackets():
    md = report.markdown_report(SINGLE)
    for task in ("mlp", "lenet", "lstm"):
        assert f"## {task}: " in md
    table_lines = [x for x in md.splitlines() if x.startswith("|")]
    assert len(table_lines) > 10
    assert not any(re.search(r"\[\d", x) for x in table_lines), "a single run must not get an interval"
    assert "Cells that did not finish" not in md
    assert "from one run each" in md
    rows = report.summary_rows(SINGLE)
    assert {(r["task"], r["backend"]) for r in rows} == {(t, b) for t in ("mlp", "lenet", "lstm")
                                                         for b in ("torch", "tensorflow")}
    assert all("[" not in v for r in rows for v in r.values())


def test_which_framework_for_what_from_the_numbers():
    a = report.analyze(SINGLE)
    picks = {p.criterion: p for p in a.picks}
    assert set(picks) >= {"fastest to target", "highest throughput", "lowest peak memory", "fastest start"}
    assert picks["fastest to target"].winners == []  # smoke profile: no target reached
    assert picks["highest throughput"].winners == ["torch"] and picks["highest throughput"].note == "2 of 3 tasks"
    assert picks["lowest peak memory"].winners == ["torch"]
    lstm = next(t for t in a.tasks if t.task == "lstm")
    torch_row = next(r for r in lstm.rows if r.backend == "torch")
    assert torch_row.start_s == pytest.approx(
        sum(json.loads(x)[k] for x in (SINGLE / "results.jsonl").read_text().splitlines()
            if '"lstm", "backend": "torch"' in x for k in ("import_s", "setup_s", "first_step_s")))


def test_time_to_target_ranks_first(tmp_path):
    a = report.analyze(synthetic_run(tmp_path))
    mlp = next(t for t in a.tasks if t.task == "mlp")
    tf, torch = mlp.rows
    assert (tf.backend, tf.to_target_s, tf.reached) == ("tensorflow", 1.5, 2)
    # one seed of two never got there: the median counts it as never
    assert (torch.backend, torch.to_target_s, torch.reached) == ("torch", None, 1)
    assert mlp.verdict[0].startswith("Fastest to the 98% target: tensorflow in 1.50 s (torch not reached)")
    assert next(p for p in a.picks if p.criterion == "fastest to target").winners == ["tensorflow"]


def test_adapter_sizes_without_importing_frameworks():
    a = report.analyze(SEEDS)
    for name in ("torch", "tensorflow"):
        info = a.adapters[name]
        assert info["module"] and info["loc"] and 20 < info["loc"] < 1000
    # an unknown backend is reported, not fatal
    assert report.adapter_sizes(["no-such-backend"], {})["no-such-backend"]["loc"] is None


def test_count_loc_skips_blanks_comments_docstrings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Doc\nstring."""\n\n# comment\nimport os  # trailing\n\n'
                 'def f():\n    """One line."""\n    return 1\n')
    assert report.count_loc(f) == 3


# ------------------------------------------------------------------ HTML


@pytest.mark.parametrize("run,tasks_with_plots", [(SEEDS, 2), (SINGLE, 3)])
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


def test_html_failed_cells_and_no_brackets_for_one_seed():
    html = render(SEEDS)
    assert "ValueError: an injected failure for the report tests" in html
    assert "no result after 600 s; killed" in html
    assert "No finished cells to plot" in html  # lstm: every cell failed
    single = render(SINGLE)
    assert 'class="ci"' not in single and 'class="ci"' in html


def test_html_with_missing_epochs_and_timeline(tmp_path):
    html = render(synthetic_run(tmp_path))
    parse(html)
    assert "no data recorded for this plot" not in html.split('id="task-lenet"')[0]
    lenet = html.split('id="task-lenet"')[1].split('id="task-lstm"')[0]
    # lenet/torch kept its epochs, lenet/tensorflow its timeline: every lenet plot still drawn
    assert lenet.count("<svg") == PLOTS_PER_TASK
    assert "Fastest to the 98% target" in html


def test_html_when_nothing_has_data(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    records = [{"task": "mlp", "backend": "torch", "seed": 0, "status": "ok", "test_accuracy": 0.9},
               {"task": "mlp", "backend": "other", "seed": 0, "status": "crashed",
                "error": "Traceback (most recent call last):\n  ...\nRuntimeError: <img src=x> broke"}]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    html = render(run)  # no run.json, no epochs, no step times, no timeline
    parse(html)
    assert html.count("<svg") == 0
    assert "RuntimeError: &lt;img src=x&gt; broke" in html and "<img" not in html  # last line, escaped
    assert html.count("no data recorded for this plot") == PLOTS_PER_TASK
    assert "has no run.json" in html
    assert "## mlp: " in report.markdown_report(run)  # and the Markdown still renders


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: the screenshot check needs a "
                    "headless Chromium (apt-get install chromium)")
@pytest.mark.parametrize("run", [SEEDS, SINGLE])
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
