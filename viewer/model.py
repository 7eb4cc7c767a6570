"""The paper's ConvNet (Table 1) and loading of saved models.

Keras and TensorFlow are imported lazily, inside the functions: importing them takes seconds,
and the GUI must show its window before that happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
import zipfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from viewer import PATCH_SIZE
from viewer.errors import ModelError, stat_input_file

if TYPE_CHECKING:  # pragma: no cover
    import keras

BUNDLED_MODEL_NAME = "convnet_brecahad.keras"
"""File name of the trained model shipped in ``resources/``."""

INPUT_SHAPE = (PATCH_SIZE, PATCH_SIZE, 3)
"""Model input: one RGB window, float32 pixels scaled to [0, 1]."""


MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
"""File endings Keras 3 can load (``.h5``/``.hdf5`` are its legacy format)."""


def import_keras():
    """Import Keras with TensorFlow's start-up chatter silenced; returns the module.

    TensorFlow's native (C++) logging writes straight to file descriptor 2 while it is
    imported, whatever ``TF_CPP_MIN_LOG_LEVEL`` says (TF 2.21 prints four lines about oneDNN
    and absl). That would break the CLI's one-line error contract, so the import runs with
    descriptor 2 pointed at a temporary file; if the import fails, what was captured is
    replayed. Set ``HISTOVIEWER_DEBUG=1`` (the CLI's ``--debug`` does) to see it all.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        import keras

        return keras
    quiet = not os.environ.get("HISTOVIEWER_DEBUG")
    # One thread at a time: two overlapping fd-2 swaps could leave stderr pointing at a temp file.
    with _IMPORT_LOCK, _native_stderr_captured(enabled=quiet and "keras" not in sys.modules):
        import keras
    return keras


_IMPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr_captured(enabled: bool = True):
    """Point file descriptor 2 at a temporary file for the duration; replay it on error."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (e.g. pythonw): nothing to hide
        yield
        return
    sink = tempfile.TemporaryFile()
    failed = False
    try:
        os.dup2(sink.fileno(), 2)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if failed:
            sink.seek(0)
            captured = sink.read().decode("utf-8", "replace")
            if captured.strip():
                sys.stderr.write(captured)
        sink.close()


def build_convnet(dropout: float = 0.5, seed: int | None = None) -> keras.Model:
    """Build the ConvNet of Table 1 exactly: 171,105 trainable parameters.

    Layer names are stable because the fully convolutional heatmap engine reads weights by
    layer *type and order*, not by name; names only make summaries readable.
    """
    keras = import_keras()
    layers = keras.layers
    init = keras.initializers
    kernel = (lambda i: init.GlorotUniform(seed=None if seed is None else seed + i))
    model = keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="window_rgb"),
            layers.Conv2D(32, 3, activation="relu", kernel_initializer=kernel(0), name="conv1_32x3x3"),
            layers.MaxPooling2D(2, name="pool1_2"),
            layers.Conv2D(32, 2, activation="relu", kernel_initializer=kernel(1), name="conv2_32x2x2"),
            # Table 1 lists a 1x1 max-pool here; it changes nothing but is kept for fidelity.
            layers.MaxPooling2D(1, name="pool2_1"),
            layers.Conv2D(64, 3, activation="relu", kernel_initializer=kernel(2), name="conv3_64x3x3"),
            layers.MaxPooling2D(2, name="pool3_2"),
            layers.Flatten(name="flatten_2304"),
            layers.Dense(64, activation="relu", kernel_initializer=kernel(3), name="dense_64"),
            layers.Dropout(dropout, seed=seed, name="dropout"),
            layers.Dense(1, activation="sigmoid", kernel_initializer=kernel(4), name="p_tumour"),
        ],
        name="brecahad_convnet",
    )
    return model


def bundled_model_path() -> Path:
    """Path of the trained model shipped with the program (inside the wheel or the checkout)."""
    try:
        candidate = Path(str(resources.files("viewer.resources").joinpath(BUNDLED_MODEL_NAME)))
        if candidate.is_file():
            return candidate
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover - broken install
        pass
    return Path(__file__).resolve().parent.parent / "resources" / BUNDLED_MODEL_NAME


def model_card_path() -> Path:
    """Path of the bundled model's card (Markdown)."""
    return bundled_model_path().with_name("MODEL_CARD.md")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, used to tie exported heatmaps to the exact model that made them."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


METADATA_MEMBER = "histoviewer.json"
"""Extra member of a ``.keras`` zip holding what HistoViewer records about a model (Keras
ignores members it does not know): at least ``resolution`` ``{"mpp", "objective_power"}``; a model
written by ``histoviewer train`` also has ``split`` (the image names per part, or the patches per
part), ``data`` (the folder's fingerprint), ``config``, ``command``, ``program`` (version, git
commit) and ``environment`` (see :mod:`viewer.train`)."""

BRECAHAD_RESOLUTION = {"mpp": 0.25, "objective_power": 40}
"""The resolution of models trained on BreCaHAD: 40x, taken as 0.25 µm per pixel.

BreCaHAD states the 40x objective but no pixel size. 0.25 µm/px is what "40x" means for slide
scanners (Aperio 0.252, Hamamatsu 0.227-0.25, Leica 0.26), and it fits the data: tumour nuclei of
8-12 µm are 32-48 px across at 0.25, and the dataset's tumour disks have a 20 px radius (40 px,
10 µm). The model card gives this reasoning; ``--mpp`` overrides it per slide."""


def read_model_metadata(path: str | Path) -> dict:
    """HistoViewer's record inside a ``.keras`` file (``{}`` when there is none or for ``.h5``)."""
    import json

    path = Path(path)
    if path.suffix.lower() != ".keras":
        return {}
    try:
        with zipfile.ZipFile(path) as archive:
            if METADATA_MEMBER not in archive.namelist():
                return {}
            data = json.loads(archive.read(METADATA_MEMBER).decode("utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"has an unreadable {METADATA_MEMBER} record ({type(exc).__name__})", path) from None
    return data if isinstance(data, dict) else {}


def write_model_metadata(path: str | Path, data: dict) -> None:
    """Add or replace HistoViewer's record in a ``.keras`` file, atomically (copy + rename)."""
    import json

    from viewer.atomic import atomic_output

    path = Path(path)
    with atomic_output(path, force=True, suffix=".keras") as tmp:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w") as target:
            for item in source.infolist():
                if item.filename != METADATA_MEMBER:
                    target.writestr(item, source.read(item.filename))
            target.writestr(METADATA_MEMBER, json.dumps(data, indent=2, sort_keys=True) + "\n",
                            compress_type=zipfile.ZIP_DEFLATED)


def append_model_metadata(path: str | Path, data: dict) -> None:
    """Add HistoViewer's record to a ``.keras`` file that has none yet and is not yet published
    (the temporary file of an atomic save)."""
    import json

    with zipfile.ZipFile(path, "a") as archive:
        # Deflated: a patch-split record lists every patch (~100 KB of JSON, a fifth compressed).
        archive.writestr(METADATA_MEMBER, json.dumps(data, indent=2, sort_keys=True) + "\n",
                         compress_type=zipfile.ZIP_DEFLATED)


def model_mpp(path: str | Path) -> float | None:
    """The pixel size (µm) a model expects, from its record; ``None`` when it records none.
    Refuses files that are not models (one line), like :func:`load_model`."""
    _check_model_file(Path(path), False)
    resolution = read_model_metadata(path).get("resolution") or {}
    try:
        mpp = float(resolution.get("mpp"))
    except (TypeError, ValueError):
        return None
    return mpp if 0 < mpp < 100 else None


def load_model(path: str | Path | None = None) -> keras.Model:
    """Load a saved Keras model; ``None`` loads the bundled one.

    Keras ``safe_mode`` stays on, so a file cannot run arbitrary code (Lambda layers are
    refused). The model must take 32x32x3 windows and return one probability per window.
    Files that are obviously not Keras models are refused before TensorFlow is imported.
    """
    bundled = path is None
    path = bundled_model_path() if path is None else Path(path)
    _check_model_file(path, bundled)
    keras = import_keras()
    try:
        with _quiet_python_warnings():
            model = keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text or "lambda" in text:
            raise ModelError(
                "contains a Lambda layer or other executable code, which is refused for safety "
                "(Keras safe_mode); re-save the model without Lambda layers",
                path,
            ) from exc
        raise ModelError(f"cannot be loaded as a Keras model ({_first_line(text)})", path) from exc
    except MemoryError as exc:
        raise ModelError("is too large to load into memory", path) from exc
    except Exception as exc:  # Keras raises many types for damaged archives
        text = str(exc)
        if "could not be deserialized" in text or "Unknown layer" in text:
            raise ModelError(
                "uses a custom layer or object that Keras cannot rebuild without its Python code "
                f"({type(exc).__name__}); use a model made of built-in Keras layers",
                path,
            ) from exc
        raise ModelError(f"cannot be loaded as a Keras model ({type(exc).__name__}: {_first_line(text)})", path) from exc
    check_model_io(model, path)
    return model


def _check_model_file(path: Path, bundled: bool) -> None:
    """Cheap checks that need no TensorFlow: exists, regular file, readable, right kind."""
    hint = " (the bundled model is missing: reinstall histoviewer)" if bundled else ""
    st = stat_input_file(path, ModelError, "a .keras model file", not_found=f"model file not found{hint}")
    if st.st_size == 0:
        raise ModelError("is empty (0 bytes); expected a .keras model file", path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelError(
            f"has the ending '{path.suffix or '(none)'}'; expected a .keras model file (or a legacy .h5 file)", path
        )
    try:
        if suffix == ".keras":
            if not zipfile.is_zipfile(path):
                raise ModelError("is not a valid .keras file (corrupt or truncated zip archive)", path)
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
            if "config.json" not in names:
                raise ModelError("is a zip archive without config.json, so not a saved Keras model", path)
        else:
            with open(path, "rb") as fh:
                head = fh.read(8)
            if head != b"\x89HDF\r\n\x1a\n":
                raise ModelError(f"is not an HDF5 file, so not a legacy Keras {suffix} model", path)
    except ModelError:
        raise
    except PermissionError:
        raise ModelError("cannot be read (permission denied)", path) from None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ModelError(f"is not a valid .keras file ({type(exc).__name__}: {_first_line(str(exc))})", path) from None


@contextlib.contextmanager
def _quiet_python_warnings():
    import warnings

    if os.environ.get("HISTOVIEWER_DEBUG"):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_model_io(model: keras.Model, path: str | Path | None = None) -> None:
    """Refuse models that do not map one 32x32x3 window to one probability."""
    try:
        inputs = list(model.inputs or ())
        outputs = list(model.outputs or ())
    except (AttributeError, ValueError) as exc:  # e.g. a Sequential model saved before it was built
        raise ModelError(
            f"has no defined input ({_first_line(str(exc))}); expected one 32x32x3 image input", path
        ) from None
    if not inputs:
        raise ModelError("has no defined input; expected one 32x32x3 image input", path)
    if not outputs:
        raise ModelError("has no defined output; expected one tumour probability", path)
    if len(inputs) != 1:
        raise ModelError(f"has {len(inputs)} inputs; expected one 32x32x3 image input", path)
    if len(outputs) != 1:
        raise ModelError(f"has {len(outputs)} outputs; expected one tumour probability", path)
    in_shape = tuple(inputs[0].shape[1:])
    if in_shape != INPUT_SHAPE:
        raise ModelError(f"takes input of shape {in_shape}; expected {INPUT_SHAPE} (32x32 RGB windows)", path)
    out_shape = tuple(outputs[0].shape[1:])
    if out_shape not in ((1,), ()):
        raise ModelError(f"returns shape {out_shape}; expected (1,): one tumour probability per window", path)


def _first_line(text: str) -> str:
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else "unknown error"
    return line if len(line) <= 200 else line[:197] + "..."
