"""Property-based robustness tests: the only exception that may escape is the project's own.

* annotation parsing: arbitrary JSON values (and mutated JSON bytes) -> Annotations or
  AnnotationError, never anything else;
* image loading: small valid TIFF/PNG/JPEG files with bytes flipped, overwritten, inserted,
  deleted or cut off -> Slide or ImageError, never anything else.

Runs are derandomised, without an example database and without deadlines, so CI sees the same
examples every time and a slow machine cannot make them flaky. Decoding is bounded with a small
``max_pixels`` so a mutated header cannot ask for gigabytes.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from viewer.annotations import CLASSES, Annotations, load_annotations, parse_annotations, save_annotations
from viewer.errors import AnnotationError, ImageError
from viewer.slide import Slide, open_slide

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SMALL = settings(FUZZ, max_examples=60)

FUZZ_DIR = Path(tempfile.gettempdir())
"""One scratch folder for the module (hypothesis examples cannot use function-scoped tmp_path);
set to a fresh folder by the autouse fixture below before any test runs."""


@pytest.fixture(scope="module", autouse=True)
def _scratch_folder(tmp_path_factory):
    global FUZZ_DIR
    FUZZ_DIR = tmp_path_factory.mktemp("fuzz")
    yield


# --------------------------------------------------------------------------- annotations

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30,
)
coordinate = st.one_of(
    st.floats(min_value=0, max_value=1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=10**300, max_value=10**320),
    json_scalars,
)
point = st.one_of(
    st.fixed_dictionaries({"x": coordinate, "y": coordinate}),
    st.fixed_dictionaries({"x": coordinate}),
    st.dictionaries(st.sampled_from(["x", "y", "z"]), coordinate, max_size=3),
    json_values,
)
class_name = st.one_of(st.sampled_from(CLASSES), st.text(max_size=10))
near_brecahad = st.dictionaries(class_name, st.one_of(st.lists(point, max_size=6), json_values), max_size=8)


def check_annotations(result: Annotations) -> None:
    assert isinstance(result, Annotations)
    for name in result.classes:
        pts = result.normalised(name)
        assert pts.ndim == 2 and pts.shape[1] == 2 and pts.dtype == np.float64
        assert np.isfinite(pts).all() and (pts >= 0).all() and (pts <= 1).all()
    assert set(result.counts()) == set(result.classes)
    for note in result.notes:
        assert "\n" not in note


def parse_or_refuse(data) -> Annotations | None:
    try:
        result = parse_annotations(data, "fuzz.json")
    except AnnotationError as exc:
        assert "\n" not in str(exc)
        return None
    check_annotations(result)
    return result


@FUZZ
@given(json_values)
def test_arbitrary_json_values_parse_or_refuse(data):
    parse_or_refuse(data)


@FUZZ
@given(near_brecahad)
def test_near_brecahad_documents_parse_or_refuse_and_round_trip(data):
    result = parse_or_refuse(data)
    if result is None:
        return
    # Whatever was accepted can be saved (unless it holds values JSON cannot store) and reloads the same.
    out = FUZZ_DIR / "round_trip.json"
    try:
        save_annotations(result, out)
    except AnnotationError:
        assume(False)
    again = load_annotations(out)
    assert again.classes == result.classes
    for name in result.classes:
        np.testing.assert_allclose(again.normalised(name), result.normalised(name), atol=1e-6)


def mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, payload in edits:
        if not buf:
            break
        pos %= len(buf)
        if kind == "flip":
            buf[pos] ^= payload[0] if payload else 0xFF
        elif kind == "set":
            buf[pos : pos + len(payload)] = payload
        elif kind == "insert":
            buf[pos:pos] = payload
        elif kind == "delete":
            del buf[pos : pos + max(1, len(payload))]
        elif kind == "truncate":
            del buf[pos:]
    return bytes(buf)


edit = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=1 << 20),
    st.binary(min_size=1, max_size=8),
)
edits = st.lists(edit, min_size=1, max_size=6)

_JSON_SEED = json.dumps(
    {"tumor": [{"x": 0.25, "y": 0.5}, {"x": 0.75, "y": 0.125}], "non_tumor": [], "lumen": [{"x": 1, "y": 0}]}
).encode()


@FUZZ
@given(edits)
def test_mutated_json_bytes_load_or_refuse(changes):
    path = FUZZ_DIR / "mutated.json"
    path.write_bytes(mutate(_JSON_SEED, changes))
    try:
        result = load_annotations(path)
    except AnnotationError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    check_annotations(result)


# --------------------------------------------------------------------------- images

_RGB = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)


def _tiff(**kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, kwargs.pop("data", _RGB), **kwargs)
    return buf.getvalue()


def _pillow(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_RGB).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {
    "uncompressed": _tiff(photometric="rgb", rowsperstrip=8),
    "deflate": _tiff(photometric="rgb", compression="zlib", rowsperstrip=8),
    "lzw-tiled-bigtiff": _tiff(
        data=np.ascontiguousarray(np.pad(_RGB, ((0, 8), (0, 0), (0, 0)))),
        photometric="rgb",
        compression="lzw",
        tile=(16, 16),
        bigtiff=True,
    ),
    "jpeg-tiff": _tiff(photometric="rgb", compression="jpeg"),
    "stack": _tiff(data=np.stack([_RGB, _RGB[::-1]]), photometric="rgb"),
    "planar-16bit": _tiff(data=np.moveaxis(_RGB.astype(np.uint16) * 257, -1, 0), photometric="rgb", planarconfig="separate"),
    "png": _pillow("PNG"),
    "jpeg": _pillow("JPEG"),
}


def open_or_refuse(path: Path) -> None:
    """Open and decode the whole image, or refuse with one line naming the file. TIFFs are read
    lazily, so a damaged tile may only be found by ``read_all``: that is a refusal too."""
    try:
        result = open_slide(path, max_pixels=1_000_000)
    except ImageError as exc:
        assert_refusal(exc, path)
        return
    assert isinstance(result, Slide)
    try:
        pixels = result.read_all()
    except ImageError as exc:
        assert_refusal(exc, path)
        return
    finally:
        result.close()
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[:2] == (result.height, result.width)
    assert result.width >= 32 and result.height >= 32


def assert_refusal(exc: ImageError, path: Path) -> None:
    text = str(exc)
    assert "\n" not in text and str(path) in text, text


def test_seeds_are_valid(tmp_path):
    for name, data in SEEDS.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        open_slide(path)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_mutated_images_open_or_refuse(seed):
    path = FUZZ_DIR / f"mutated-{seed}.tif"

    @FUZZ_SMALL
    @given(edits)
    def check(changes):
        path.write_bytes(mutate(SEEDS[seed], changes))
        open_or_refuse(path)

    check()


def test_fuzz_regression_looped_directory_chain():
    """Found by a long fuzz run: one deleted and 8 inserted bytes made two directories point at
    each other, and tifffile walked the loop forever (212,000 pages in 8 s and counting)."""
    path = FUZZ_DIR / "regression-loop.tif"
    path.write_bytes(mutate(SEEDS["deflate"], [("delete", 12198, b"\xa9"), ("insert", 52, b"W_t\xc0\xf1\x88\x0c(")]))
    with pytest.raises(ImageError, match="loops back"):
        open_slide(path)


@FUZZ
@given(st.integers(min_value=0, max_value=len(SEEDS["deflate"])), st.sampled_from(sorted(SEEDS)))
def test_every_truncation_opens_or_refuses(cut, seed):
    path = FUZZ_DIR / "truncated.img"
    path.write_bytes(SEEDS[seed][:cut])
    open_or_refuse(path)


@FUZZ
@given(st.binary(min_size=0, max_size=600), st.sampled_from([b"II*\x00", b"MM\x00*", b"II+\x00", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b""]))
def test_random_bytes_behind_a_real_magic_number_open_or_refuse(body, magic):
    path = FUZZ_DIR / "random.img"
    path.write_bytes(magic + body)
    open_or_refuse(path)


def test_fuzz_limits_are_sane():
    assert FUZZ.max_examples * 3 + FUZZ_SMALL.max_examples * len(SEEDS) < 2000
    assert math.isfinite(FUZZ_SMALL.max_examples)
