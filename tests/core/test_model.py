"""viewer.model: the Table-1 architecture, the bundled model, and refusal of bad model files."""

from __future__ import annotations

import pytest

from viewer.errors import ModelError
from viewer.model import bundled_model_path, build_convnet, import_keras, load_model

# Table 1 of the paper: output shape per layer (without the batch axis) and parameters.
TABLE_1 = [
    ("Conv2D", (30, 30, 32), 896),
    ("MaxPooling2D", (15, 15, 32), 0),
    ("Conv2D", (14, 14, 32), 4128),
    ("MaxPooling2D", (14, 14, 32), 0),
    ("Conv2D", (12, 12, 64), 18496),
    ("MaxPooling2D", (6, 6, 64), 0),
    ("Flatten", (2304,), 0),
    ("Dense", (64,), 147520),
    ("Dropout", (64,), 0),
    ("Dense", (1,), 65),
]


@pytest.fixture(scope="module")
def convnet():
    return build_convnet(seed=0)


def test_param_count_is_171105(convnet):
    assert convnet.count_params() == 171_105
    dense64 = [layer for layer in convnet.layers if type(layer).__name__ == "Dense" and layer.units == 64]
    assert len(dense64) == 1 and dense64[0].count_params() == 147_520


def test_every_layer_matches_table_1(convnet):
    assert tuple(convnet.inputs[0].shape[1:]) == (32, 32, 3)
    got = [(type(layer).__name__, tuple(layer.output.shape[1:]), layer.count_params()) for layer in convnet.layers]
    assert got == TABLE_1


def test_bundled_model_loads_and_has_the_table_1_shape():
    if not bundled_model_path().is_file():
        pytest.skip(f"bundled model not present at {bundled_model_path()} (train it with 'histoviewer train')")
    model = load_model(None)
    assert model.count_params() == 171_105
    got = [(type(layer).__name__, tuple(layer.output.shape[1:])) for layer in model.layers]
    assert got == [(name, shape) for name, shape, _ in TABLE_1]


def _assert_one_line(exc: pytest.ExceptionInfo, path, *words):
    text = str(exc.value)
    assert "\n" not in text and str(path) in text
    for word in words:
        assert word.lower() in text.lower(), text


def test_missing_model_file(tmp_path):
    path = tmp_path / "nope.keras"
    with pytest.raises(ModelError) as info:
        load_model(path)
    _assert_one_line(info, path, "not found")


def test_corrupt_model_file(tmp_path):
    path = tmp_path / "corrupt.keras"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    with pytest.raises(ModelError) as info:
        load_model(path)
    _assert_one_line(info, path, "corrupt")


def test_truncated_model_file(tmp_path):
    good = tmp_path / "good.keras"
    build_convnet(seed=0).save(good)
    path = tmp_path / "truncated.keras"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelError) as info:
        load_model(path)
    _assert_one_line(info, path)


def test_wrong_input_shape(tmp_path):
    keras = import_keras()
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    path = tmp_path / "wide.keras"
    model.save(path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    _assert_one_line(info, path, "input", "32")


def test_two_outputs(tmp_path):
    keras = import_keras()
    inp = keras.Input((32, 32, 3))
    flat = keras.layers.Flatten()(inp)
    model = keras.Model(inp, [keras.layers.Dense(1)(flat), keras.layers.Dense(1)(flat)])
    path = tmp_path / "two.keras"
    model.save(path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    _assert_one_line(info, path, "2 outputs")


def test_lambda_layer_is_refused(tmp_path):
    keras = import_keras()
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    _assert_one_line(info, path, "lambda")
