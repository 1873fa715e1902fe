"""The run's configuration as one typed record: options checked once, defaults in one place,
run.json's ``config`` read back as a ``RunConfig``; and the harness hash over every room."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from fwbench.harness import records, spec
from fwbench.harness.errors import FwbenchError
from fwbench.harness.measure import environment

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("options, message", [
    ({"profile": "huge"}, "unknown profile 'huge'; choose from smoke, quick, full"),
    ({"seeds": 0}, "--seeds must be at least 1 (got 0)"),
    ({"threads": 0}, "--threads must be at least 1 (got 0)"),
    ({"repeats": -1}, "--repeats must be at least 0 (got -1)"),
    ({"until_ci_pct": 100.0}, "--until-ci must be a percentage between 0 and 100 (got 100)"),
    ({"max_processes": 0}, "--max-processes must be at least 1 (got 0)"),
    ({"timeout_s": 0.0}, "--timeout must be positive"),
    ({"memory_limit_gib": -1.0}, "--memory-limit must be positive (got -1)"),
    ({"denormals": "maybe"}, "--denormals must be flush or framework-default (got 'maybe')"),
    ({"envs": "shared"}, "unknown --envs 'shared'; choose from current, isolated"),
    ({"executor": "slurm"}, "unknown --executor 'slurm'; choose from local, ray"),
])
def test_every_option_is_checked_with_a_line_naming_it(options, message):
    with pytest.raises(FwbenchError) as found:
        records.RunOptions(**options)
    assert str(found.value) == message


def test_defaults_live_in_from_options_and_given_options_win():
    config = records.RunConfig.from_options(records.RunOptions(), tasks=("mlp", "lstm"),
                                            backends=("torch",), cores=2, memory_gib=24.0)
    quick = spec.PROFILE_INFO["quick"]
    assert config == records.RunConfig(
        tasks=("mlp", "lstm"), backends=("torch",), profile="quick",
        seeds=tuple(range(quick.default_seeds)), threads=2, timeout_s=records.DEFAULT_TIMEOUT_S,
        repeats=quick.default_repeats, memory_limit_gib=18.0)
    given = records.RunOptions(tasks=("mlp",), profile="smoke", seeds=2, threads=1,
                               memory_limit_gib=1.234, envs="isolated")
    config = records.RunConfig.from_options(given, tasks=("mlp", "lstm"), backends=("jax",),
                                            cores=2, memory_gib=24.0)
    assert (config.tasks, config.profile, config.seeds, config.threads, config.memory_limit_gib,
            config.repeats, config.isolated) == (("mlp",), "smoke", (0, 1), 1, 1.23, 0, True)
    assert config.differences(given.given()) == []
    assert config.differences({"threads": 2}) == ["threads (saved 1, given 2)"]


def test_the_machine_bounds_threads_and_memory():
    with pytest.raises(FwbenchError, match=r"--threads must be between 1 and 2, the cores available \(got 3\)"):
        records.RunConfig.from_options(records.RunOptions(threads=3), tasks=("mlp",),
                                       backends=("torch",), cores=2, memory_gib=24.0)
    with pytest.raises(FwbenchError, match="the smallest node's memory"):
        records.check_fits(None, 30.0, 2, 24.0, where="ray")


def test_a_config_checks_itself():
    good = records.RunConfig(("mlp",), ("torch",), "smoke", (0,), 1, 60.0)
    for change in ({"profile": "huge"}, {"seeds": ()}, {"threads": 0}, {"envs": "shared"},
                   {"executor": "slurm"}, {"denormals": "maybe"}):
        with pytest.raises(FwbenchError, match="invalid run configuration"):
            dataclasses.replace(good, **change)
    assert records.RunConfig(["mlp"], ["torch"], "smoke", [0], 1, 60.0) == good  # lists -> tuples


def test_run_json_config_and_environment_are_typed(tmp_path):
    meta = records.load_meta(FIX / "run-a")
    assert isinstance(meta.config, records.RunConfig) and meta.config.tasks == ("mlp", "lenet")
    assert meta.config.executor == "local" and meta.config.device == "cpu"  # older run: defaults
    assert isinstance(meta.environment, records.Environment) and meta.environment.cpu_model
    assert isinstance(meta.noise_at_start, records.NoiseAtStart) and meta.noise_at_start.text
    records.write_meta(tmp_path, meta)
    again = records.load_meta(tmp_path)
    assert again.config == meta.config and again.environment == meta.environment
    assert again.noise_at_start == meta.noise_at_start


def test_runner_fields_are_added_in_one_typed_call():
    record = records.CellRecord.from_worker({"steps": 3, "test_accuracy": 0.5}, "ok", None, "here")
    record.add_run_fields(records.RunFields(
        "mlp", "torch", 1, 2, profile="smoke", threads=2, affinity=[0, 1],
        noise=records.Noise(0.0, 0.0, 0.1, False), wall_s=1.5, started="a", ended="b",
        log="logs/x.log", node="local", hardware=None, pct_of_gemm_peak=12.0))
    assert record.ident == ("mlp", "torch", 1, 2) and record.steps == 3
    assert record.pct_of_gemm_peak == 12.0 and record.busy is False
    with pytest.raises(FwbenchError, match="unknown field"):
        records.CellRecord.from_worker({"task": "mlp"}, "ok", None, "here")  # the runner's field
    assert set(records.CellRecord.MEASURED).isdisjoint(f.name for f in dataclasses.fields(records.RunFields))


def test_harness_hash_covers_every_room(tmp_path, monkeypatch):
    copy = tmp_path / "harness"
    shutil.copytree(environment.HARNESS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(environment, "HARNESS", copy)
    before = environment.harness_sha256()
    worker = copy / "run" / "worker.py"
    worker.write_text(worker.read_text() + "\n# changed\n")
    assert environment.harness_sha256() != before
