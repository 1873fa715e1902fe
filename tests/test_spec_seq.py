"""The layers of issue 14 in the spec: same padding, Conv1D, MaxPool1D, GRU, Bidirectional;
their shapes, canonical parameter names and init, and the four course tasks."""

import numpy as np
import pytest

from fwbench.harness import records, spec

COURSE = ("cnn", "gru", "bigru", "cnn_gru")
GRU_ROLES = ("w_ih", "w_hh", "b_ih", "b_hh")


def _shapes(task: spec.Task) -> list[spec.Shape]:
    out, shape = [], task.input_shape
    for layer in task.layers:
        shape = spec.output_shape(layer, shape)
        out.append(shape)
    return out


def test_same_padding_keeps_the_size_and_valid_is_the_default():
    assert spec.Conv2D(6, 5) == spec.Conv2D(6, 5, "valid")  # lenet unchanged
    assert spec.output_shape(spec.Conv2D(8, 5, "same"), (3, 28, 27)) == (8, 28, 27)
    assert spec.output_shape(spec.Conv2D(8, 4, "same"), (3, 9, 9)) == (8, 9, 9)
    assert spec.output_shape(spec.Conv2D(8, 5), (3, 28, 27)) == (8, 24, 23)
    assert spec.same_padding(5) == (2, 2) and spec.same_padding(4) == (1, 2)
    with pytest.raises(ValueError, match="padding"):
        spec.Conv2D(8, 5, "full")
    with pytest.raises(ValueError, match="padding"):
        spec.Conv1D(8, 5, "causal")


def test_sequence_layer_shapes():
    assert spec.output_shape(spec.Conv1D(32, 5, "same"), (28, 28)) == (28, 32)
    assert spec.output_shape(spec.Conv1D(32, 5), (28, 7)) == (24, 32)
    assert spec.output_shape(spec.MaxPool1D(2), (29, 32)) == (14, 32)
    assert spec.output_shape(spec.GRU(16, return_sequences=True), (14, 32)) == (14, 16)
    assert spec.output_shape(spec.GRU(16), (14, 32)) == (16,)
    bi = spec.Bidirectional((spec.GRU(8, return_sequences=True), spec.GRU(4)))
    assert spec.output_shape(bi, (5, 3)) == (4,)


def test_bidirectional_validates_its_stack():
    with pytest.raises(ValueError, match="merge"):
        spec.Bidirectional((spec.GRU(4),), merge="concat")
    with pytest.raises(ValueError, match="last"):
        spec.Bidirectional((spec.GRU(4), spec.GRU(4)))  # the first must return sequences
    with pytest.raises(ValueError, match="last"):
        spec.Bidirectional((spec.GRU(4, return_sequences=True),))
    with pytest.raises(ValueError, match="stack"):
        spec.Bidirectional((spec.Dense(4),))
    with pytest.raises(ValueError, match="stack"):
        spec.Bidirectional(())


def test_course_task_shapes():
    assert _shapes(spec.TASKS["cnn"])[:7] == [(32, 28, 28), (32, 28, 28), (32, 14, 14), (64, 14, 14),
                                              (64, 14, 14), (64, 7, 7), (3136,)]
    assert _shapes(spec.TASKS["gru"]) == [(28, 128), (256,), (1024,), (1024,), (10,)]
    assert _shapes(spec.TASKS["bigru"]) == [(256,), (1024,), (1024,), (10,)]
    assert _shapes(spec.TASKS["cnn_gru"]) == [(28, 32), (28, 32), (14, 32), (14, 128), (256,),
                                              (1024,), (1024,), (10,)]


def test_course_tasks_follow_the_issue():
    for name in COURSE:
        t = spec.TASKS[name]
        assert t.dataset == "mnist" and t.batch_size == 512 and t.num_classes == 10
        assert t.optimizer == spec.Adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-7)
        assert any("all 15 seeds" in note for note in t.notes)  # the target's measured source
        assert t.timing_steps == 20 and t.epochs_full == 1
    assert spec.TASKS["cnn"].preprocessing == "mnist_scaled"
    assert {spec.TASKS[n].preprocessing for n in COURSE[1:]} == {"mnist_rows"}
    assert spec.Dropout(0.4) in spec.TASKS["cnn"].layers


def test_gru_and_conv1d_param_layout():
    gru = {p.name: (p.shape, p.init) for p in spec.param_specs(spec.TASKS["gru"])}
    assert gru["0.w_ih"] == ((384, 28), "glorot_uniform")  # [3H, in]
    assert gru["0.w_hh"] == ((384, 128), "orthogonal")  # [3H, H]
    assert gru["0.b_ih"] == ((384,), "zeros") and gru["0.b_hh"] == ((384,), "zeros")
    assert gru["1.w_ih"][0] == (768, 128) and gru["1.w_hh"][0] == (768, 256)
    assert gru["2.kernel"][0] == (256, 1024)
    conv = {p.name: p for p in spec.param_specs(spec.TASKS["cnn_gru"])}
    assert conv["0.kernel"].shape == (32, 28, 5) and conv["0.kernel"].fan == (140, 160)
    assert conv["3.w_ih"].shape == (384, 32)
    glorot = next(p for p in spec.param_specs(spec.TASKS["gru"]) if p.name == "0.w_ih")
    assert glorot.fan == (28, 384)  # Keras: the input kernel [in, 3H]


def test_bidirectional_param_names_are_nested():
    names = [p.name for p in spec.param_specs(spec.TASKS["bigru"])]
    expected = [f"0.{d}.{j}.{r}" for d in ("fw", "bw") for j in (0, 1) for r in GRU_ROLES]
    assert names == expected + ["1.kernel", "1.bias", "3.kernel", "3.bias"]
    shapes = {p.name: p.shape for p in spec.param_specs(spec.TASKS["bigru"])}
    assert shapes["0.bw.1.w_hh"] == (768, 256) and shapes["0.fw.0.w_ih"] == (384, 28)
    # fw and bw are independent copies: different initial values
    p = spec.init_params(spec.TASKS["bigru"], 0)
    assert not np.array_equal(p["0.fw.0.w_ih"], p["0.bw.0.w_ih"])


@pytest.mark.parametrize("name", COURSE[1:])
def test_gru_init_orthogonal_recurrent_and_glorot_input(name):
    task = spec.TASKS[name]
    p = spec.init_params(task, 5)
    for s in spec.param_specs(task):
        v = p[s.name].astype(np.float64)
        if s.init == "orthogonal":  # [3H, H] with orthonormal columns
            np.testing.assert_allclose(v.T @ v, np.eye(v.shape[1]), atol=1e-5)
        elif s.init == "glorot_uniform":
            limit = np.sqrt(6 / sum(s.fan))
            assert np.abs(v).max() <= limit and np.abs(v).max() > 0.9 * limit
        else:
            assert s.init == "zeros" and not v.any()


def test_unsupported_layers_sees_padding_and_nested_layers():
    def rules(**kw):
        return spec.LayerRules("t", {t: (lambda *a: None) for t in spec.LAYER_TYPES
                                     if t not in kw.get("unsupported", ())}, **kw)

    valid_only = rules(only={spec.Conv2D: spec.valid_padding})
    assert spec.unsupported_layers(spec.TASKS["lenet"], valid_only) == []
    bad = spec.unsupported_layers(spec.TASKS["cnn"], valid_only)
    assert bad == [spec.Conv2D(32, 5, "same"), spec.Conv2D(64, 5, "same")]
    with pytest.raises(spec.UnsupportedLayer, match=r"^t: unsupported layer Conv2D\(filters=32, kernel=5, padding='same'\)$"):
        valid_only(spec.Conv2D(32, 5, "same"))
    assert valid_only(spec.Conv2D(6, 5)) is None
    no_gru = rules(unsupported=(spec.GRU,))
    bi = spec.TASKS["bigru"].layers[0]
    assert spec.unsupported_layers(spec.TASKS["bigru"], no_gru) == [bi, *bi.layers]
    no_bi = rules(unsupported=(spec.Bidirectional,))
    assert spec.unsupported_layers(spec.TASKS["bigru"], no_bi) == [bi]
    assert spec.unsupported_layers(spec.TASKS["gru"], no_bi) == []
    with pytest.raises(TypeError, match="'only' for types without a rule: GRU"):
        rules(unsupported=(spec.GRU,), only={spec.GRU: bool})


@pytest.mark.parametrize("name", COURSE)
def test_task_json_round_trip_keeps_nested_layers(name):
    import json

    task = spec.TASKS[name]
    again = records.task_from_json(json.loads(json.dumps(records.task_to_json(task))))
    assert again == task


def test_without_dropout_keeps_indices_params_and_init():
    cnn = spec.TASKS["cnn"]
    plain = spec.without_dropout(cnn)
    assert plain.layers[9] == spec.Dropout(0.0) and cnn.layers[9] == spec.Dropout(0.4)
    assert len(plain.layers) == len(cnn.layers) and plain.name == cnn.name
    assert spec.param_specs(plain) == spec.param_specs(cnn)
    a, b = spec.init_params(cnn, 0), spec.init_params(plain, 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    gru = spec.TASKS["gru"]
    assert spec.without_dropout(gru) is gru  # no dropout: the task itself
