"""The command line behaves like its typer/click/pip neighbours (issue 24): help without
arguments, -h, --version, --debug listed, brackets kept, flags shown as flags, errors that
name the subcommand's help, --json on every listing, 80 columns, and a README that lists the
options the CLI has."""

import json
import os
import re
import subprocess
import sys
from importlib import metadata as md
from pathlib import Path

import pytest
import typer

from fwbench.harness.catalog.backends import discover
from fwbench.harness.cli import app

ROOT = Path(__file__).parent.parent
LISTINGS = [["list"], ["env"], ["envs", "list"]]  # the commands that list what fwbench knows


def fwbench(*args, columns=80):
    return subprocess.run([sys.executable, "-m", "fwbench.harness.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": str(columns)}, timeout=300)


def commands(group=None, path=()):
    """Every command's path below ``group`` (click's tree of the app), groups included."""
    group = group or typer.main.get_command(app)
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


@pytest.mark.parametrize("group", [[], ["envs"]])
def test_a_group_without_a_command_prints_its_help_and_exits_0(group):
    r = fwbench(*group)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.startswith(f"Usage: {' '.join(['fwbench', *group])} [OPTIONS] COMMAND")
    assert r.stdout == fwbench(*group, "--help").stdout


@pytest.mark.parametrize("path", [p for p, _ in commands()], ids=lambda p: " ".join(p) or "fwbench")
def test_every_command_has_h_and_help_fitting_80_columns_with_flags_as_flags(path):
    short, long = fwbench(*path, "-h"), fwbench(*path, "--help")
    assert short.returncode == long.returncode == 0 and short.stdout == long.stdout, short.stderr
    lines = long.stdout.splitlines()
    assert lines[0].startswith("Usage: " + " ".join(["fwbench", *path]))
    assert max(map(len, lines)) <= 80, [x for x in lines if len(x) > 80]
    command = dict(commands())[path]
    for param in (p for p in command.params if p.param_type_name == "option"):
        for opt in param.opts:
            (line,) = [x for x in lines if re.match(rf"\s+(-\w, )?{opt}(\s|$)", x)] or [None]
            assert line is not None, f"{opt} is not in the help of {path}"
            shown_value = re.match(rf"\s+(-\w, )?{opt} (<\w+>|[A-Z_]+)", line)
            assert bool(shown_value) == (not getattr(param, "is_flag", False)), line


def test_the_command_lists_are_whole_lines_not_cut_with_dots():
    for group in ([], ["envs"]):
        listed = fwbench(*group).stdout.split("Commands:")[1]
        assert "..." not in listed, listed


def test_help_texts_keep_their_brackets():
    r = fwbench("run", "--help")
    assert 'pip install -e ".[ray]"' in " ".join(r.stdout.split())


def test_version_names_fwbench_python_and_each_installed_framework():
    r = fwbench("--version")
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    import platform

    assert lines[0] == f"fwbench {md.version('fwbench')}"
    assert lines[1].startswith(f"Python {platform.python_version()} ")
    assert f"numpy {md.version('numpy')}" in lines
    expected = {dist: md.version(dist) for b in discover(warn=lambda m: None).values()
                for dist in b.requires if b.installed}  # none in CI's framework-free venv
    for dist, version in expected.items():
        assert f"{dist} {version}" in lines
    missing = {d for b in discover(warn=lambda m: None).values() for d in b.requires} - set(expected)
    assert not any(line.split()[0] in missing for line in lines[2:]), lines  # only what is there
    assert len(lines) == len(set(lines))


def test_debug_is_listed_and_works_anywhere_on_the_line(tmp_path):
    assert re.search(r"^\s+--debug\s+\S", fwbench("--help").stdout, re.M)
    r = fwbench("report", str(tmp_path), "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


@pytest.mark.parametrize("args,where", [(["run", "--frobnicate"], "fwbench run"),
                                        (["envs", "list", "--frobnicate"], "fwbench envs list"),
                                        (["frobnicate"], "fwbench")])
def test_a_usage_error_names_the_help_of_its_own_command(args, where):
    r = fwbench(*args)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.strip().endswith(f"(see {where} --help)"), r.stderr


@pytest.mark.parametrize("path", LISTINGS, ids=" ".join)
def test_every_listing_has_json_and_its_table_fits_80_columns(path, tmp_path):
    env_dir = ["--envs-dir", str(tmp_path)] if path == ["envs", "list"] else []
    data = json.loads(fwbench(*path, *env_dir, "--json").stdout)
    assert data
    r = fwbench(*path, *env_dir)
    assert r.returncode == 0 and max(map(len, r.stdout.splitlines())) <= 80, r.stdout


def test_the_listing_commands_are_every_command_that_lists():
    """A new listing command (a name that lists) must be in LISTINGS, with its --json."""
    named = {p for p, c in commands() if p and p[-1] in ("list", "env", "show", "ls")}
    assert named == {tuple(p) for p in LISTINGS}


def test_list_wraps_at_spaces_never_inside_a_word():
    r = fwbench("list")
    text = r.stdout
    for b in discover(warn=lambda m: None).values():
        for word in b.description.split():
            assert word in text, f"{word!r} of {b.name}'s description is broken in fwbench list"
        assert re.search(rf"^\s*{re.escape(b.name)}\s", text, re.M)


def test_the_readme_lists_every_run_option_and_no_other():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("`fwbench run` options:")
    paragraph = readme[start:readme.index("\n\n", start)]
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", paragraph))
    run = dict(commands())[("run",)]
    actual = {o for p in run.params for o in p.opts if o.startswith("--")} - {"--help"}
    assert documented == actual, (f"in the CLI, not the README: {sorted(actual - documented)}; "
                                  f"in the README, not the CLI: {sorted(documented - actual)}")


def test_the_backend_guide_names_every_method_of_the_adapter_contract():
    """docs/adding-a-backend.md's method table lists every public method of ``Adapter``
    (issue 23): a method added to the contract must be documented for plugin authors."""
    import inspect

    from fwbench.harness.adapter import Adapter

    text = (ROOT / "docs" / "adding-a-backend.md").read_text()
    table = text[text.index("| method | what it must do |"):]
    table = table[:table.index("\n\n")]
    documented = {re.match(r"\| `(\w+)", line).group(1) for line in table.splitlines()[2:]}
    contract = {name for name, _ in inspect.getmembers(Adapter)
                if not name.startswith("_") and name != "layer_rules"} | {"__init__"}
    assert documented == contract, (sorted(contract - documented), sorted(documented - contract))
    required = {m for m in Adapter.__abstractmethods__}
    for line in table.splitlines()[2:]:
        name = re.match(r"\| `(\w+)", line).group(1)
        assert ("*required*" in line) == (name in required), line
