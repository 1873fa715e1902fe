"""The one dispatch over the spec's layer and optimizer types (``spec.LayerRules``,
``spec.OptimizerRules``): exhaustive when built, exact-type dispatch, a one-line error for a
layer a place declared unsupported, and every built-in place breaks when a type is added."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fwbench import backends
from fwbench.harness import spec

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugin"


def _rules() -> dict:
    """A rule for every layer type: (layer, *args) -> (its type, *args)."""
    return {t: (lambda layer, *args, t=t: (t, *args)) for t in spec.LAYER_TYPES}


def test_a_missing_type_fails_at_construction_naming_place_and_type():
    rules = _rules()
    del rules[spec.LSTM], rules[spec.Dropout]
    with pytest.raises(TypeError, match=r"^my place: no rule for Dropout, LSTM "):
        spec.LayerRules("my place", rules)
    spec.LayerRules("my place", rules, unsupported=(spec.LSTM, spec.Dropout))  # explicit: fine
    with pytest.raises(TypeError, match=r"^my optimizer: no rule for Adam "):
        spec.OptimizerRules("my optimizer", {spec.SGDMomentum: print, spec.RMSprop: print})


def test_a_type_with_a_rule_and_unsupported_or_not_of_the_spec_is_refused():
    with pytest.raises(TypeError, match="both a rule and unsupported: Dense"):
        spec.LayerRules("p", _rules(), unsupported=(spec.Dense,))
    with pytest.raises(TypeError, match="not layer types of the spec: Adam"):
        spec.LayerRules("p", {**_rules(), spec.Adam: print})


def test_dispatch_picks_the_rule_of_the_exact_type():
    rules = spec.LayerRules("p", _rules())
    layers = [spec.Flatten(), spec.Dense(3), spec.Conv2D(2, 3), spec.MaxPool2D(2), spec.ReLU(),
              spec.Dropout(0.5), spec.Embedding(10, 4), spec.LSTM(8), spec.Conv1D(2, 3),
              spec.MaxPool1D(2), spec.GRU(4), spec.Bidirectional((spec.GRU(4),))]
    assert {type(layer) for layer in layers} == set(spec.LAYER_TYPES)
    for layer in layers:
        assert rules(layer, 1) == (type(layer), 1)
        assert rules[layer] is rules.rules[type(layer)]

    class MyDense(spec.Dense):  # a subclass does not silently get its parent's rule
        pass

    with pytest.raises(TypeError, match=r"^p: .*MyDense\(units=3\) is not a layer of the spec$"):
        rules(MyDense(3))
    assert not rules.supports(MyDense(3))
    opt = spec.OptimizerRules("o", {spec.SGDMomentum: lambda o: "sgd", spec.RMSprop: lambda o: "rms",
                                    spec.Adam: lambda o: "adam"})
    assert [opt(o) for o in (spec.TASKS["lenet"].optimizer, spec.TASKS["mlp"].optimizer,
                             spec.TASKS["lstm"].optimizer)] == ["sgd", "rms", "adam"]


def test_an_unsupported_layer_raises_one_line_naming_it():
    dense_only = {t: r for t, r in _rules().items() if t in (spec.Flatten, spec.Dense, spec.ReLU)}
    others = [t for t in spec.LAYER_TYPES if t not in dense_only]
    rules = spec.LayerRules("toy", dense_only, unsupported=others)
    with pytest.raises(spec.UnsupportedLayer) as err:
        rules(spec.Conv2D(6, 5))
    assert str(err.value) == "toy: unsupported layer Conv2D(filters=6, kernel=5, padding='valid')"
    assert isinstance(err.value, TypeError) and err.value.place == "toy"
    assert err.value.item == spec.Conv2D(6, 5)
    opt = spec.OptimizerRules("opt", {spec.Adam: print}, unsupported=(spec.SGDMomentum, spec.RMSprop))
    with pytest.raises(spec.UnsupportedOptimizer, match=r"^opt: unsupported optimizer SGDMomentum\(lr"):
        opt[spec.SGDMomentum(0.1, 0.9)]
    # asking before training
    assert spec.unsupported_layers(spec.TASKS["mlp"], rules) == []
    assert spec.unsupported_layers(spec.TASKS["lstm"], rules) == [spec.Embedding(spec.IMDB_VOCAB, 64),
                                                                   spec.LSTM(64)]
    assert spec.unsupported_layers(spec.TASKS["lenet"], spec.LayerRules("all", _rules())) == []


# Every module with rules: (module, modules it needs, families of rules it must hold).
PLACES = [
    ("fwbench.harness.spec", (), {"layer"}),
    ("fwbench.harness.reference", (), {"layer", "optimizer"}),
    ("fwbench.harness.measure.flops", (), {"layer"}),
    ("fwbench_numpy_toy", (), {"layer"}),  # tests/plugin
    ("fwbench.backends.torch_backend", backends.TORCH.requires, {"layer", "optimizer"}),
    ("fwbench.backends.keras_backend", backends.TENSORFLOW.requires, {"layer", "optimizer"}),
    ("fwbench.backends.mindspore_backend", backends.MINDSPORE.requires, {"layer", "optimizer"}),
    ("fwbench.backends.jax_backend", backends.JAX.requires, {"layer"}),
    ("fwbench.backends.jax_common", backends.JAX.requires, {"optimizer"}),
    ("fwbench.backends.flax_backend", backends.FLAX.requires, {"layer"}),
    ("fwbench.backends.paddle_backend", ("paddle",), {"layer", "optimizer"}),  # of paddlepaddle
]

# In a fresh process: import the module, add a layer and an optimizer type to the spec and
# re-check each of the module's rules (all must fail); then import the module again with
# only one of the two added (the import must fail for each family the module handles).
PROBE = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[2])
from fwbench.harness import spec
name = sys.argv[1]
mod = importlib.import_module(name)
rules = [v for v in vars(mod).values() if isinstance(v, spec.Rules)]
class FakeLayer: pass
class FakeOptimizer: pass
layers, optimizers = spec.LAYER_TYPES, spec.OPTIMIZER_TYPES
spec.LAYER_TYPES, spec.OPTIMIZER_TYPES = (*layers, FakeLayer), (*optimizers, FakeOptimizer)
out = {"rules": [], "reimport": {}}
for r in rules:
    try:
        r.check()
        error = None
    except TypeError as e:
        error = str(e)
    out["rules"].append({"place": r.place, "family": r.family, "error": error})
if name != "fwbench.harness.spec":  # re-running spec would reset its own LAYER_TYPES
    for family, types in (("layer", ((*layers, FakeLayer), optimizers)),
                          ("optimizer", (layers, (*optimizers, FakeOptimizer)))):
        spec.LAYER_TYPES, spec.OPTIMIZER_TYPES = types
        sys.modules.pop(name, None)  # a failed import has removed it already
        try:
            importlib.import_module(name)
            out["reimport"][family] = None
        except TypeError as e:
            out["reimport"][family] = str(e)
print("PROBE " + json.dumps(out))
"""


@pytest.mark.parametrize("module,requires,families", PLACES, ids=[p[0].rsplit(".")[-1] for p in PLACES])
@pytest.mark.slow
def test_a_new_type_breaks_every_place_that_has_not_learned_it(module, requires, families):
    missing = [d for d in requires if importlib.util.find_spec(d) is None]
    if missing:
        pytest.skip(f"{module}: {', '.join(missing)} not installed")
    r = subprocess.run([sys.executable, "-c", PROBE, module, str(PLUGIN)],
                       capture_output=True, text=True, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")]
    assert r.returncode == 0 and line, r.stderr[-3000:]
    out = json.loads(line[0][len("PROBE "):])
    assert {x["family"] for x in out["rules"]} == families
    for x in out["rules"]:
        fake = "FakeLayer" if x["family"] == "layer" else "FakeOptimizer"
        assert x["error"] and x["error"].startswith(f"{x['place']}: no rule for {fake} "), x
    if module != "fwbench.harness.spec":
        for family, error in out["reimport"].items():
            fake = "FakeLayer" if family == "layer" else "FakeOptimizer"
            if family in families:
                assert error and f"no rule for {fake} " in error, (family, error)
            else:
                assert error is None, (family, error)


def test_every_module_with_rules_is_probed():
    """A module that declares rules but is missing from PLACES would escape the probe."""
    probed = {name.rsplit(".")[-1] for name, _, _ in PLACES}
    files = [*(REPO / "harness").glob("*.py"), *(REPO / "backends").glob("*.py"), *PLUGIN.glob("*.py")]
    declaring = {f.stem for f in files if "Rules(" in f.read_text() and f.stem != "spec"} | {"spec"}
    assert declaring <= probed, declaring - probed


def test_the_private_jax_import_lives_in_one_place():
    users = [f.name for f in (REPO / "backends").glob("*.py") if "jax._src" in f.read_text()]
    users += [f.name for f in (REPO / "harness").glob("*.py") if "jax._src" in f.read_text()]
    assert users == ["jax_common.py"]
