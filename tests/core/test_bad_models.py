"""viewer.model: bad model files are refused with a one-line ModelError saying what is expected.

TensorFlow is slow to import, so every test that needs Keras lives in this module and the tiny
models are built once per module. Checks that need no TensorFlow are exercised too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from viewer import model as model_module
from viewer.errors import InputError, ModelError
from viewer.model import check_model_io, load_model


def refused(path, *words: str) -> str:
    with pytest.raises(ModelError) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    assert isinstance(info.value, InputError)
    return text


@pytest.fixture(scope="module")
def keras():
    return model_module.import_keras()


@pytest.fixture(scope="module")
def models(keras, tmp_path_factory) -> dict[str, Path]:
    """Tiny saved models, good and bad, keyed by name."""
    folder = tmp_path_factory.mktemp("models")
    layers = keras.layers
    out: dict[str, Path] = {}

    def save(name: str, model, suffix: str = ".keras") -> None:
        path = folder / f"{name}{suffix}"
        model.save(path)
        out[name] = path

    def head(x, units: int = 1):
        return layers.Dense(units, activation="sigmoid")(layers.Flatten()(x))

    inp = keras.Input((32, 32, 3))
    save("good", keras.Model(inp, head(inp)))
    inp = keras.Input((64, 64, 3))
    save("wide_input", keras.Model(inp, head(inp)))
    inp = keras.Input((32, 32, 1))
    save("grey_input", keras.Model(inp, head(inp)))
    inp = keras.Input((None, None, 3))
    save("any_size_input", keras.Model(inp, layers.Dense(1)(layers.GlobalAveragePooling2D()(inp))))
    inp = keras.Input((32, 32, 3))
    flat = layers.Flatten()(inp)
    save("two_outputs", keras.Model(inp, [layers.Dense(1)(flat), layers.Dense(1)(flat)]))
    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    save("two_inputs", keras.Model([a, b], head(layers.Add()([a, b]))))
    inp = keras.Input((32, 32, 3))
    save("ten_outputs", keras.Model(inp, head(inp, 10)))
    inp = keras.Input((32, 32, 3))
    save("lambda", keras.Model(inp, head(layers.Lambda(lambda t: t * 2.0)(inp))))
    inp = keras.Input((32, 32, 3))
    save("lambda_h5", keras.Model(inp, head(layers.Lambda(lambda t: t * 2.0)(inp))), suffix=".h5")
    inp = keras.Input((32, 32, 3))
    save("good_h5", keras.Model(inp, head(inp)), suffix=".h5")

    class Doubler(layers.Layer):  # a custom class Keras cannot rebuild from the file alone
        def call(self, x):
            return x * 2.0

    inp = keras.Input((32, 32, 3))
    save("custom_layer", keras.Model(inp, head(Doubler()(inp))))
    unbuilt = keras.Sequential([layers.Dense(1)])
    save("unbuilt", unbuilt)
    return out


def rewrite_zip(source: Path, target: Path, *, drop=(), replace=None) -> Path:
    replace = replace or {}
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            zout.writestr(name, replace.get(name, zin.read(name)))
    return target


# --------------------------------------------------------------------------- corrupt files


def test_good_tiny_model_loads(models):
    model = load_model(models["good"])
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 3)
    assert model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0).shape == (2, 1)
    assert load_model(models["good_h5"]) is not None  # Keras' legacy format still loads


def test_random_bytes(tmp_path):
    path = tmp_path / "random.keras"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    refused(path, "not a valid .keras file", "zip")


def test_truncated_real_file_at_several_points(models, tmp_path):
    data = models["good"].read_bytes()
    for n in (1, 22, 100, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        path = tmp_path / f"cut_{n}.keras"
        path.write_bytes(data[:n])
        refused(path, ".keras")


def test_zip_without_config(models, tmp_path):
    refused(rewrite_zip(models["good"], tmp_path / "noconfig.keras", drop={"config.json"}), "without config.json")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w"):
        pass
    refused(tmp_path / "empty.keras", "without config.json")


def test_zip_with_broken_config_or_weights(models, tmp_path):
    refused(rewrite_zip(models["good"], tmp_path / "badjson.keras", replace={"config.json": b"{not json"}), "cannot be loaded")
    refused(rewrite_zip(models["good"], tmp_path / "list.keras", replace={"config.json": b"[1, 2]"}), "cannot be loaded")
    with zipfile.ZipFile(models["good"]) as archive:
        weights = [n for n in archive.namelist() if n.endswith((".h5", ".npz"))]
    refused(rewrite_zip(models["good"], tmp_path / "noweights.keras", drop=set(weights)), "cannot be loaded")
    garbage = {name: b"garbage" * 50 for name in weights}
    refused(rewrite_zip(models["good"], tmp_path / "badweights.keras", replace=garbage), "cannot be loaded")


def test_empty_text_and_wrong_suffix_files_are_refused_before_importing_tensorflow(tmp_path):
    (tmp_path / "empty.keras").write_bytes(b"")
    refused(tmp_path / "empty.keras", "empty")
    (tmp_path / "text.h5").write_text("hello")
    refused(tmp_path / "text.h5", "not an HDF5 file")
    (tmp_path / "model.txt").write_text("hello")
    refused(tmp_path / "model.txt", "expected a .keras model file")
    (tmp_path / "model").write_text("hello")
    refused(tmp_path / "model", "(none)")


# --------------------------------------------------------------------------- wrong architecture


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("wide_input", ["(64, 64, 3)", "expected (32, 32, 3)"]),
        ("grey_input", ["(32, 32, 1)", "expected (32, 32, 3)"]),
        ("any_size_input", ["(None, None, 3)", "expected (32, 32, 3)"]),
        ("two_outputs", ["2 outputs", "one tumour probability"]),
        ("two_inputs", ["2 inputs", "one 32x32x3"]),
        ("ten_outputs", ["(10,)", "expected (1,)"]),
        ("lambda", ["Lambda", "safe_mode", "refused for safety"]),
        ("lambda_h5", ["Lambda", "safe_mode"]),
        ("custom_layer", ["custom layer", "built-in Keras layers"]),
        ("unbuilt", ["no defined input"]),  # used to escape as AttributeError
    ],
)
def test_wrong_models_are_refused_with_what_is_expected(models, name, words):
    refused(models[name], *words)


def test_check_model_io_on_models_in_memory(keras):
    layers = keras.layers
    inp = keras.Input((32, 32, 3))
    check_model_io(keras.Model(inp, layers.Dense(1)(layers.Flatten()(inp))))
    with pytest.raises(ModelError, match="no defined input"):
        check_model_io(keras.Sequential([layers.Dense(1)]), "unbuilt")


# --------------------------------------------------------------------------- missing, folder, unreadable


def test_missing_file_and_folder(tmp_path):
    refused(tmp_path / "missing.keras", "not found")
    (tmp_path / "folder.keras").mkdir()
    refused(tmp_path / "folder.keras", "folder")
    refused(tmp_path / ("m" * 300 + ".keras"), "too long")  # used to escape as OSError
    with pytest.raises(ModelError, match="valid file name"):
        load_model("bad\0name.keras")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.keras")
        refused(tmp_path / "pipe.keras", "not a regular file")


def test_unreadable_file(models, monkeypatch):
    monkeypatch.setattr(model_module.os, "access", lambda p, mode, **kw: False)
    refused(models["good"], "permission denied")


def test_missing_bundled_model_says_reinstall(monkeypatch, tmp_path):
    monkeypatch.setattr(model_module, "bundled_model_path", lambda: tmp_path / "gone.keras")
    refused(tmp_path / "gone.keras", "not found")
    with pytest.raises(ModelError, match="reinstall"):
        load_model(None)


# --------------------------------------------------------------------------- quiet import


def test_importing_keras_prints_nothing_on_stderr():
    """TF 2.21 writes oneDNN/absl lines to fd 2 at import; import_keras must keep them off stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("HISTOVIEWER_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    code = "from viewer.model import import_keras; import_keras(); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert result.stderr == ""


def test_concurrent_import_keras_leaves_stderr_working():
    """Two threads importing at once must not leave fd 2 pointing at a temporary file."""
    code = (
        "import sys, threading\n"
        "from viewer.model import import_keras\n"
        "threads = [threading.Thread(target=import_keras) for _ in range(3)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print('stderr still works', file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HISTOVIEWER_DEBUG",)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "stderr still works\n"
