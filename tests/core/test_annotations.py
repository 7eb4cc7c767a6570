"""viewer.annotations: BreCaHAD JSON opens correctly or raises a one-line AnnotationError."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from viewer.annotations import files as annotations_module  # file reading lives here
from viewer.annotations import (
    CLASS_COLOURS,
    CLASSES,
    TUMOUR_CLASS,
    Annotations,
    class_colour,
    class_label,
    find_annotations_for,
    load_annotations,
    parse_annotations,
    save_annotations,
)
from viewer.errors import AnnotationError, OutputError


def write(tmp_path: Path, content, name: str = "gt.json") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def refused(path: Path, *words: str) -> str:
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    return text


def brecahad(**classes) -> dict:
    data = {name: [] for name in CLASSES}
    data.update(classes)
    return data


# --------------------------------------------------------------------------- files that load


def test_real_brecahad_annotations_load(shared_data_dir):
    path = sorted((shared_data_dir / "groundTruth").glob("*.json"))[0]
    ann = load_annotations(path)
    assert ann.source == path and ann.notes == ()
    assert ann.counts()[TUMOUR_CLASS] > 0
    assert ann.classes == list(CLASSES)
    pts = ann.pixel_points(TUMOUR_CLASS, 1360, 1024)
    assert pts.shape[1] == 2 and (pts[:, 0] <= 1360).all() and (pts[:, 1] <= 1024).all()


def test_points_are_normalised_and_converted_to_pixels(tmp_path):
    path = write(tmp_path, brecahad(tumor=[{"x": 0.5, "y": 0.25}, {"x": 0, "y": 1}], lumen=[{"x": 0.1, "y": 0.2}]))
    ann = load_annotations(path)
    np.testing.assert_allclose(ann.normalised("tumor"), [[0.5, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(ann.pixel_points("tumor", 200, 100), [[100, 25], [0, 100]])
    assert ann.counts()["lumen"] == 1 and ann.counts()["mitosis"] == 0
    assert ann.normalised("no_such_class").shape == (0, 2)
    back = Annotations.from_pixels({"tumor": ann.pixel_points("tumor", 200, 100)}, 200, 100)
    np.testing.assert_allclose(back.normalised("tumor"), ann.normalised("tumor"))


def test_missing_classes_are_empty_and_extra_point_fields_ignored(tmp_path):
    ann = load_annotations(write(tmp_path, {"tumor": [{"x": 0.1, "y": 0.2, "z": 7, "label": "a"}]}))
    assert ann.counts() == {name: (1 if name == "tumor" else 0) for name in CLASSES}


def test_bom_is_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(brecahad(tumor=[{"x": 0.1, "y": 0.2}])).encode())
    assert load_annotations(path).counts()["tumor"] == 1


def test_integer_coordinates_are_numbers(tmp_path):
    ann = load_annotations(write(tmp_path, {"tumor": [{"x": 0, "y": 1}]}))
    np.testing.assert_array_equal(ann.normalised("tumor"), [[0.0, 1.0]])


# --------------------------------------------------------------------------- skipped points


@pytest.mark.parametrize(
    "bad_point",
    [
        '{"x": 1.5, "y": 0.5}',
        '{"x": -0.01, "y": 0.5}',
        '{"x": 0.5, "y": 2}',
        '{"x": NaN, "y": 0.5}',
        '{"x": 0.5, "y": Infinity}',
        '{"x": -Infinity, "y": 0.5}',
        '{"x": 1e999, "y": 0.5}',
        '{"x": ' + "9" * 400 + ', "y": 0.5}',  # used to escape as OverflowError
    ],
    ids=["x>1", "x<0", "y>1", "nan", "inf", "-inf", "1e999", "400-digit-int"],
)
def test_points_outside_the_image_or_nan_are_skipped_with_a_note(tmp_path, bad_point):
    text = '{"tumor": [{"x": 0.5, "y": 0.5}, ' + bad_point + "]}"
    ann = load_annotations(write(tmp_path, text))
    assert ann.counts()["tumor"] == 1
    assert len(ann.notes) == 1 and "1 point(s)" in ann.notes[0] and "skipped" in ann.notes[0]


# --------------------------------------------------------------------------- unknown classes


def test_unknown_classes_are_kept_shown_and_round_tripped(tmp_path):
    data = brecahad(tumor=[{"x": 0.1, "y": 0.1}])
    data["necrosis"] = [{"x": 0.3, "y": 0.4}, {"x": 0.5, "y": 0.6}]
    data["Zellkern ä"] = [{"x": 0.7, "y": 0.8}]
    data["meta"] = {"annotator": "A", "version": 2}
    ann = load_annotations(write(tmp_path, data))
    assert ann.classes == [*CLASSES, "necrosis", "Zellkern ä"]
    assert ann.counts()["necrosis"] == 2
    assert ann.extra == {"meta": {"annotator": "A", "version": 2}}
    assert class_colour("necrosis") == class_colour("necrosis")  # stable
    assert class_label("necrosis") == "Necrosis"

    out = tmp_path / "saved.json"
    save_annotations(ann, out)
    again = load_annotations(out)
    assert again.classes == ann.classes and again.counts() == ann.counts() and again.extra == ann.extra
    for name in ann.classes:
        np.testing.assert_allclose(again.normalised(name), ann.normalised(name), atol=1e-6)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert list(saved)[: len(CLASSES)] == list(CLASSES)  # all seven classes, in order


def test_unknown_entries_that_are_not_point_lists_are_kept_not_drawn(tmp_path):
    data = brecahad(tumor=[{"x": 0.1, "y": 0.1}])
    data["tags"] = ["reviewed", "2019"]  # used to refuse the whole file
    ann = load_annotations(write(tmp_path, data))
    assert "tags" not in ann.classes and ann.extra["tags"] == ["reviewed", "2019"]
    assert any("tags" in note and "not drawn" in note for note in ann.notes)
    out = tmp_path / "saved.json"
    save_annotations(ann, out)
    assert json.loads(out.read_text())["tags"] == ["reviewed", "2019"]


# --------------------------------------------------------------------------- refused files


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"tumor": [', ["not valid JSON", "line 1"]),
        ("{'tumor': []}", ["not valid JSON"]),
        ('{"tumor": []} trailing', ["not valid JSON"]),
        ("[1, 2]", ["top level is a list"]),
        ('"text"', ["top level is a string"]),
        ("null", ["top level is a null"]),
        ("42", ["top level is a number"]),
        ('{"tumor": 5}', ["'tumor' is a number", "list of points"]),
        ('{"tumor": {"x": 0.5, "y": 0.5}}', ["'tumor' is a object"]),
        ('{"tumor": "0.5,0.5"}', ["'tumor' is a string"]),
        ('{"mitosis": null}', ["'mitosis' is a null"]),
        ('{"tumor": [{"x": 0.5}]}', ["'tumor'[0] is not a point"]),
        ('{"tumor": [{"y": 0.5}]}', ["'tumor'[0] is not a point"]),
        ('{"tumor": [[0.5, 0.5]]}', ["'tumor'[0] is not a point"]),
        ('{"tumor": [{"x": 0.1, "y": 0.1}, 7]}', ["'tumor'[1] is not a point"]),
        ('{"tumor": [{"x": "0.5", "y": 0.5}]}', ["non-numeric", "string"]),
        ('{"tumor": [{"x": 0.5, "y": "0.5"}]}', ["non-numeric", "string"]),
        ('{"tumor": [{"x": true, "y": 0.5}]}', ["non-numeric", "boolean"]),
        ('{"tumor": [{"x": 0.5, "y": false}]}', ["non-numeric", "boolean"]),
        ('{"tumor": [{"x": null, "y": 0.5}]}', ["non-numeric", "null"]),
        ('{"tumor": [{"x": [0.5], "y": 0.5}]}', ["non-numeric", "list"]),
        ('{"necrosis": [{"x": "a", "y": 0.5}]}', ["'necrosis'[0]", "non-numeric"]),
        ('{"": []}', ["empty class name"]),
        ('{"tumor": [{"x": ' + "9" * 5000 + ', "y": 0.5}]}', ["thousands of digits"]),  # was ValueError
    ],
)
def test_wrong_content_is_refused(tmp_path, content, words):
    text = refused(write(tmp_path, content), *words)
    assert "set_int_max_str_digits" not in text


def test_empty_and_blank_files(tmp_path):
    refused(write(tmp_path, b"", "empty.json"), "empty")
    refused(write(tmp_path, b"  \n\t ", "blank.json"), "empty")


def test_non_utf8_bytes(tmp_path):
    refused(write(tmp_path, b'{"tumor": [], "caf\xe9": []}'), "not UTF-8", "offset")
    refused(write(tmp_path, b"\x00\xff\xfe\x81" * 10), "UTF")


def test_utf16_is_named(tmp_path):
    refused(write(tmp_path, json.dumps(brecahad()).encode("utf-16")), "UTF-16")


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json(tmp_path, depth):
    refused(write(tmp_path, "[" * depth + "]" * depth), "nested too deeply")
    refused(write(tmp_path, '{"meta": ' + '{"a": ' * depth + "1" + "}" * depth + "}", "obj.json"), "nested too deeply")


def test_very_large_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:  # sparse: 65 MB on paper, nothing on disk
        fh.truncate(annotations_module.MAX_ANNOTATION_BYTES + 1)

    def no_parsing(*args, **kwargs):
        raise AssertionError("the file was parsed")

    monkeypatch.setattr(annotations_module.json, "loads", no_parsing)
    refused(path, "above the", "MB limit")


def test_size_limit_is_also_enforced_while_reading(tmp_path, monkeypatch):
    """A file that grows (or whose size stat lies about) is still bounded by the read."""
    path = write(tmp_path, json.dumps(brecahad(tumor=[{"x": 0.5, "y": 0.5}] * 100)))
    monkeypatch.setattr(annotations_module, "MAX_ANNOTATION_BYTES", 1000)
    real_stat = os.stat

    def small_stat(p, *args, **kwargs):
        st = real_stat(p, *args, **kwargs)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 10, *st[7:10]))

    monkeypatch.setattr(annotations_module.os, "stat", small_stat)
    refused(path, "limit")


def test_missing_folder_fifo_and_bad_names(tmp_path):
    refused(tmp_path / "nope.json", "not found")
    refused(tmp_path, "folder")
    refused(tmp_path / ("a" * 300 + ".json"), "too long")  # used to escape as OSError
    with pytest.raises(AnnotationError, match="valid file name"):
        load_annotations("bad\0name.json")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.json"
        os.mkfifo(fifo)
        refused(fifo, "not a regular file")
    if os.path.exists("/dev/zero"):  # used to read forever (st_size is 0 for devices)
        with pytest.raises(AnnotationError, match="not a regular file"):
            load_annotations("/dev/zero")


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path, brecahad())
    monkeypatch.setattr(annotations_module.os, "access", lambda p, mode, **kw: False)
    refused(path, "permission denied")
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(annotations_module, "open", refuse, raising=False)
    refused(path, "permission denied")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads chmod-000 files anyway")
def test_chmod_000(tmp_path):
    path = write(tmp_path, brecahad())
    path.chmod(0)
    try:
        refused(path, "permission denied")
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- parse_annotations from code


def test_parse_accepts_numpy_scalars_but_not_booleans():
    ann = parse_annotations({"tumor": [{"x": np.float32(0.5), "y": np.int64(0)}]})
    np.testing.assert_allclose(ann.normalised("tumor"), [[0.5, 0.0]])
    with pytest.raises(AnnotationError, match="boolean"):
        parse_annotations({"tumor": [{"x": np.bool_(True), "y": 0.5}]})
    ann = parse_annotations({"tumor": [{"x": 10**400, "y": 0.5}]})  # used to raise OverflowError
    assert ann.counts()["tumor"] == 0 and ann.notes


def test_parse_refuses_non_text_class_names_with_the_right_message():
    with pytest.raises(AnnotationError, match="not text"):  # used to say 'empty class name'
        parse_annotations({1: []})
    with pytest.raises(AnnotationError, match="tuple"):
        parse_annotations({"tumor": (1, 2)})


def test_long_or_multiline_class_names_stay_one_line(tmp_path):
    name = "line one\nline two " + "x" * 200
    with pytest.raises(AnnotationError) as info:
        load_annotations(write(tmp_path, {name: [{"x": "bad", "y": 0}]}))
    text = str(info.value)
    assert "\n" not in text and len(text) < 400


# --------------------------------------------------------------------------- saving


def test_save_refuses_values_json_cannot_store(tmp_path):
    ann = Annotations(points={"tumor": np.array([[math.nan, 0.5]])})
    with pytest.raises(AnnotationError, match="cannot be saved"):
        save_annotations(ann, tmp_path / "nan.json")
    ann = Annotations(points={}, extra={"meta": {1, 2}})
    with pytest.raises(AnnotationError, match="cannot be saved"):
        save_annotations(ann, tmp_path / "set.json")
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_and_respects_force(tmp_path):
    out = tmp_path / "gt.json"
    out.write_text("original")
    with pytest.raises(OutputError, match="already exists"):
        save_annotations(Annotations(), out, force=False)
    assert out.read_text() == "original"
    save_annotations(Annotations(points={"tumor": np.array([[0.25, 0.75]])}), out)
    assert load_annotations(out).counts()["tumor"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.json"]


# --------------------------------------------------------------------------- finding ground truth


def test_find_annotations_for_both_layouts(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "groundTruth").mkdir()
    image = tmp_path / "images" / "case_1.tif"
    image.write_bytes(b"x")
    assert find_annotations_for(image) is None
    beside = tmp_path / "images" / "case_1.json"
    beside.write_text("{}")
    assert find_annotations_for(image) == beside
    gt = tmp_path / "groundTruth" / "case_1.json"
    gt.write_text("{}")
    assert find_annotations_for(image) == gt  # the BreCaHAD layout wins
    assert find_annotations_for(tmp_path / ("b" * 300 + ".tif")) is None  # no OSError


def test_class_colours_and_labels():
    assert set(CLASS_COLOURS) == set(CLASSES)
    assert len(set(CLASS_COLOURS.values())) == len(CLASSES)
    assert class_label("non_tumor") == "Non-tumour"
    for name in ("x", "", "ünïcode", "\ud800"):
        colour = class_colour(name) if name != "\ud800" else class_colour("surrogate")
        assert len(colour) == 3 and all(0 <= c <= 255 for c in colour)
