"""QuPath GeoJSON and BreCaHAD round trips, QuPath-shaped files, regions, recovery files, convert."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from viewer.annotations import (
    CLASSES,
    IGNORE_CLASS,
    Annotations,
    Region,
    annotations_to_geojson,
    image_regions,
    load_annotation_file,
    load_annotations,
    points_in_regions,
    save_annotation_file,
)
from viewer.annotations.recovery import find_recovery, list_recoveries, read_recovery, remove_recovery, write_recovery
from viewer.cli import main
from viewer.errors import AnnotationError

SIZE = (1360, 1024)


def random_annotations(seed: int = 0, n: int = 40) -> Annotations:
    rng = np.random.default_rng(seed)
    points = {name: rng.uniform(0, 1, (int(rng.integers(0, n)), 2)) for name in CLASSES}
    points["tumor"] = rng.uniform(0, 1, (n, 2))
    return Annotations(points=points)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def feature(geometry: dict, name: str | None = "Tumor", object_type: str | None = "annotation") -> dict:
    properties: dict = {}
    if object_type:
        properties["objectType"] = object_type
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "id": "7e5c1f0e-0000-4000-8000-000000000000", "geometry": geometry,
            "properties": properties}


def square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("first", [".json", ".geojson"])
def test_point_round_trips_are_lossless_to_1e6_of_the_image(tmp_path, first):
    ann = random_annotations(1)
    ann.points["Stroma"] = np.array([[0.25, 0.75]])  # an unknown class survives both ways
    ann.extra["meta"] = {"annotator": "A"}  # and so do BreCaHAD entries that are not points
    second = ".geojson" if first == ".json" else ".json"
    a, b, c = tmp_path / f"a{first}", tmp_path / f"b{second}", tmp_path / f"c{first}"
    save_annotation_file(ann, a, SIZE)
    save_annotation_file(load_annotation_file(a, SIZE), b, SIZE)
    save_annotation_file(load_annotation_file(b, SIZE), c, SIZE)
    back = load_annotation_file(c, SIZE)
    assert back.classes == ann.classes
    for name in ann.classes:
        assert back.normalised(name).shape == ann.normalised(name).shape
        assert np.abs(back.normalised(name) - ann.normalised(name)).max(initial=0) <= 1e-6, name
    assert any("Stroma" in note for note in back.notes)  # kept, and said
    assert back.extra == {"meta": {"annotator": "A"}}


def test_geojson_follows_qupath_conventions(tmp_path):
    ann = random_annotations(2).with_regions([
        Region.polygon("tumor", [[10, 10], [300, 20], [200, 400]]),
        Region.polygon(IGNORE_CLASS, [[500, 500], [700, 500], [700, 700], [500, 700]]),
    ])
    collection = annotations_to_geojson(ann, SIZE)
    assert collection["type"] == "FeatureCollection"
    kinds = [f["geometry"]["type"] for f in collection["features"]]
    assert kinds.count("MultiPoint") == sum(1 for n in ann.classes if len(ann.normalised(n)))
    assert kinds.count("Polygon") == 2
    for f in collection["features"]:
        assert f["properties"]["objectType"] == "annotation"
        cls = f["properties"]["classification"]
        assert isinstance(cls["name"], str) and len(cls["color"]) == 3
    names = {f["properties"]["classification"]["name"] for f in collection["features"]}
    assert {"Tumor", "Ignore*"} <= names  # QuPath's own built-in classes
    tumour = next(f for f in collection["features"] if f["geometry"]["type"] == "MultiPoint"
                  and f["properties"]["classification"]["name"] == "Tumor")
    np.testing.assert_allclose(tumour["geometry"]["coordinates"], ann.pixel_points("tumor", *SIZE), atol=1e-6)
    ring = next(f for f in collection["features"] if f["geometry"]["type"] == "Polygon")["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]  # closed, as GeoJSON wants


def test_regions_round_trip_through_geojson_and_the_brecahad_sidecar(tmp_path):
    outer = [[100, 100], [600, 100], [600, 600], [100, 600]]
    hole = [[200, 200], [300, 200], [300, 300], [200, 300]]
    island = [[800, 800], [900, 800], [900, 900]]
    regions = [Region("tumor", tuple(np.array(r, float) for r in (outer, hole, island))),
               Region.polygon(IGNORE_CLASS, [[10.25, 20.5], [50.125, 20.5], [30, 60.75]])]
    ann = random_annotations(3).with_regions(regions)
    geo = tmp_path / "a.geojson"
    save_annotation_file(ann, geo, SIZE)
    shapes = [f["geometry"]["type"] for f in json.loads(geo.read_text())["features"]]
    assert shapes.count("MultiPolygon") == 1 and shapes.count("Polygon") == 1

    truth = tmp_path / "groundTruth" / "img.json"
    truth.parent.mkdir()
    report = save_annotation_file(load_annotation_file(geo, SIZE), truth, SIZE)
    sidecar = tmp_path / "groundTruth" / "img.regions.geojson"
    assert sidecar.is_file() and any(sidecar.name in note for note in report.notes)  # the user is told where
    assert set(json.loads(truth.read_text())) == set(CLASSES)  # the BreCaHAD file stays in its layout
    back = load_annotations(truth)
    assert [r.name for r in back.regions] == ["tumor", IGNORE_CLASS]
    for a, b in zip(regions, back.regions):
        assert len(a.rings) == len(b.rings)
        for ra, rb in zip(a.rings, b.rings):
            np.testing.assert_allclose(ra, rb, atol=1e-6)
    assert back.regions[0].area() == pytest.approx(500 * 500 - 100 * 100 + 100 * 100 / 2)

    # Regions deleted and saved again: the sidecar goes, so they do not come back.
    save_annotation_file(back.with_regions([]), truth, SIZE)
    assert not sidecar.exists() and load_annotations(truth).regions == ()


# --------------------------------------------------------------------------- what QuPath writes


def test_qupath_shaped_files_load(tmp_path):
    w, h = SIZE
    features = [
        feature({"type": "Point", "coordinates": [100.5, 200.25]}, "Tumor"),
        feature({"type": "MultiPoint", "coordinates": [[10, 20], [30, 40]]}, "Tumour", object_type=None),
        feature({"type": "Point", "coordinates": [50, 60]}, "Non-tumor", object_type="detection"),
        feature({"type": "Polygon", "coordinates": [square(100, 100, 50)]}, "Ignore*"),
        feature({"type": "MultiPolygon", "coordinates": [[square(400, 400, 20)], [square(500, 500, 20)]]}, "Stroma"),
        feature({"type": "Polygon", "coordinates": [square(0, 0, 10)]}, None),  # unclassified
        {"type": "Feature", "geometry": None, "properties": {}},  # allowed by GeoJSON
    ]
    files = {
        "collection.geojson": {"type": "FeatureCollection", "features": features},
        "array.json": features,  # older QuPath: a bare array of features
    }
    for name, data in files.items():
        ann = load_annotation_file(write_json(tmp_path / name, data), SIZE)
        np.testing.assert_allclose(ann.pixel_points("tumor", w, h), [[100.5, 200.25], [10, 20], [30, 40]])
        np.testing.assert_allclose(ann.pixel_points("non_tumor", w, h), [[50, 60]])
        assert [r.name for r in ann.regions] == [IGNORE_CLASS, "Stroma", "unclassified"]
        assert len(ann.regions[1].rings) == 2
        assert any("'Stroma'" in n for n in ann.notes) and any("detection" in n for n in ann.notes)
    single = load_annotation_file(write_json(tmp_path / "one.geojson", features[0]), SIZE)  # a bare Feature
    assert len(single.normalised("tumor")) == 1
    # QuPath 0.5 derived classes: classification.names
    derived = feature({"type": "Point", "coordinates": [5, 5]}, None)
    derived["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}
    ann = load_annotation_file(write_json(tmp_path / "derived.geojson", [derived]), SIZE)
    assert ann.classes[-1] == "Tumor: Positive"


@pytest.mark.parametrize(
    ("geometry", "words"),
    [
        ({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, ["feature 0", "LineString", "Point, MultiPoint"]),
        ({"type": "GeometryCollection", "geometries": []}, ["GeometryCollection"]),
        ({"type": "Point", "coordinates": ["a", 2]}, ["pair of numbers"]),
        ({"type": "Point", "coordinates": [True, 2]}, ["pair of numbers"]),
        ({"type": "MultiPoint", "coordinates": []}, ["no coordinates"]),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, ["fewer than 3"]),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1e400, 1], [2, 0], [0, 0]]]}, ["NaN or infinite"]),
    ],
)
def test_wrong_geometries_are_refused_in_one_line_naming_the_file(tmp_path, geometry, words):
    path = write_json(tmp_path / "bad.geojson", {"type": "FeatureCollection", "features": [feature(geometry)]})
    with pytest.raises(AnnotationError) as info:
        load_annotation_file(path, SIZE)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    for word in words:
        assert word in text, text


def test_coordinates_outside_the_image(tmp_path):
    inside_and_out = [feature({"type": "MultiPoint", "coordinates": [[10, 10], [5000, 10], [-1, 3]]})]
    ann = load_annotation_file(write_json(tmp_path / "some.geojson", inside_and_out), SIZE)
    assert len(ann.normalised("tumor")) == 1 and any("2 point(s) outside" in n for n in ann.notes)
    all_out = [feature({"type": "MultiPoint", "coordinates": [[5000, 10], [9000, 7000]]})]
    with pytest.raises(AnnotationError, match="none of its 2 points lies on the 1360 x 1024 image"):
        load_annotation_file(write_json(tmp_path / "other.geojson", all_out), SIZE)
    far = [feature({"type": "Polygon", "coordinates": [square(5000, 5000, 10)]}),
           feature({"type": "Polygon", "coordinates": [square(1350, 1000, 100)]})]  # partly on: kept
    ann = load_annotation_file(write_json(tmp_path / "far.geojson", far), SIZE)
    assert len(ann.regions) == 1 and any("outside the image" in n for n in ann.notes)


def test_geojson_points_need_the_image_size(tmp_path):
    path = write_json(tmp_path / "p.geojson", [feature({"type": "Point", "coordinates": [1, 2]})])
    with pytest.raises(AnnotationError, match="image size is needed"):
        load_annotation_file(path, None)


def test_huge_geojson_is_refused_before_parsing(tmp_path, monkeypatch):
    from viewer.annotations import files

    monkeypatch.setattr(files, "MAX_ANNOTATION_BYTES", 100)
    path = write_json(tmp_path / "big.geojson", [feature({"type": "Point", "coordinates": [1, 2]})] * 10)
    with pytest.raises(AnnotationError, match="MB limit"):
        load_annotation_file(path, SIZE)


# --------------------------------------------------------------------------- regions for training


def test_points_in_regions_even_odd_and_by_class():
    outer = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], float)
    hole = np.array([[40, 40], [60, 40], [60, 60], [40, 60]], float)
    tri = np.array([[200, 0], [300, 0], [200, 100]], float)
    regions = [Region("tumor", (outer, hole)), Region(IGNORE_CLASS, (tri,))]
    xy = np.array([[10, 10], [50, 50], [150, 50], [210, 10], [290, 90], [99.9, 0.1], [-1, 50]])
    assert points_in_regions(xy, regions).tolist() == [True, False, False, True, False, True, False]
    assert points_in_regions(xy, regions, {IGNORE_CLASS}).tolist() == [False, False, False, True, False, False, False]
    # Against a brute-force reference on a dense grid: a concave freehand-like outline.
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 60))
    radii = rng.uniform(20, 50, 60)
    star = np.stack([100 + radii * np.cos(angles), 100 + radii * np.sin(angles)], axis=1)
    grid = np.stack(np.meshgrid(np.arange(40.5, 160), np.arange(40.5, 160)), axis=-1).reshape(-1, 2)
    assert np.array_equal(points_in_regions(grid, [Region("x", (star,))]), crossing_number_odd(grid, star))
    # Two overlapping rings in one region: the overlap is outside (even-odd), as QPainterPath fills it.
    both = Region("x", (star, star + [30, 0]))
    expected = crossing_number_odd(grid, star) ^ crossing_number_odd(grid, star + [30, 0])
    assert np.array_equal(points_in_regions(grid, [both]), expected) and expected.any()


def crossing_number_odd(xy: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Textbook reference: a ray to +x crosses the ring's edges an odd number of times."""
    a, b = ring, np.roll(ring, -1, axis=0)
    px, py = xy[:, :1], xy[:, 1:]
    straddles = (a[:, 1] > py) != (b[:, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return (np.count_nonzero(straddles & (px < x_cross), axis=1) % 2).astype(bool)


def test_image_regions_reads_the_sidecar_in_level0_pixels(tmp_path):
    image = tmp_path / "images" / "a.tif"
    image.parent.mkdir()
    tifffile.imwrite(image, np.zeros((64, 80, 3), np.uint8))
    assert image_regions(image) == []  # no annotations at all
    truth = tmp_path / "groundTruth" / "a.json"
    truth.parent.mkdir()
    ann = Annotations.empty().with_regions([Region.polygon(IGNORE_CLASS, [[1, 2], [30, 2], [30, 40]])])
    save_annotation_file(ann, truth, (80, 64))
    regions = image_regions(image)
    assert [r.name for r in regions] == [IGNORE_CLASS]
    np.testing.assert_allclose(regions[0].rings[0], [[1, 2], [30, 2], [30, 40]])


# --------------------------------------------------------------------------- saving over ground truth


def test_saving_over_ground_truth_keeps_a_one_time_original(tmp_path):
    truth = tmp_path / "groundTruth" / "img.json"
    truth.parent.mkdir()
    original = json.dumps({"tumor": [{"x": 0.5, "y": 0.5}]})
    truth.write_text(original)
    ann = load_annotations(truth).with_points({"tumor": [[0.1, 0.1]]})
    report = save_annotation_file(ann, truth, SIZE)
    backup = truth.with_name("img.json.orig")
    assert report.backup == backup and backup.read_text() == original
    save_annotation_file(ann.with_points({"tumor": []}), truth, SIZE)  # a second save keeps the first original
    assert backup.read_text() == original
    assert len(load_annotations(truth).normalised("tumor")) == 0
    elsewhere = tmp_path / "mine.json"  # not a dataset file: no backup
    save_annotation_file(ann, elsewhere, SIZE)
    save_annotation_file(ann, elsewhere, SIZE)
    assert not (tmp_path / "mine.json.orig").exists()


# --------------------------------------------------------------------------- recovery files


def test_recovery_file_restores_the_exact_state(tmp_path):
    folder = tmp_path / "recovery"
    image = tmp_path / "img.tif"
    ann = random_annotations(5)
    ann.points["tumor"] = ann.points["tumor"] + 1e-13  # full precision, not rounded
    ann = ann.with_regions([Region.polygon(IGNORE_CLASS, [[1.123456789, 2], [3, 4], [5, 0]])])
    ann.extra["meta"] = {"who": "me"}
    path = write_recovery(folder, image, SIZE, ann, tmp_path / "gt.json")
    assert not list(folder.glob(".*"))  # written atomically: no temporary left behind
    back = find_recovery(folder, image)
    assert back is not None and back.path == path and back.size == SIZE and back.source == tmp_path / "gt.json"
    assert back.annotations.same_as(ann) and back.annotations.extra == {"meta": {"who": "me"}}
    assert [r.image for r in list_recoveries(folder)] == [image.absolute()]
    (folder / "junk.recovery.json").write_text("{broken")
    assert len(list_recoveries(folder)) == 1  # a damaged file is skipped, not fatal
    with pytest.raises(AnnotationError, match="junk.recovery.json"):
        read_recovery(folder / "junk.recovery.json")
    remove_recovery(folder, image)
    assert find_recovery(folder, image) is None


# --------------------------------------------------------------------------- histoviewer annotations convert


def make_dataset(tmp_path: Path) -> tuple[Path, Path]:
    image = tmp_path / "data" / "images" / "img.tif"
    image.parent.mkdir(parents=True)
    tifffile.imwrite(image, np.zeros((SIZE[1], SIZE[0], 3), np.uint8), photometric="rgb")
    truth = tmp_path / "data" / "groundTruth" / "img.json"
    truth.parent.mkdir()
    save_annotation_file(random_annotations(7), truth, SIZE, keep_original=False)
    return image, truth


def test_convert_both_ways_with_the_image_found_beside(tmp_path, capsys):
    image, truth = make_dataset(tmp_path)
    geo = tmp_path / "out.geojson"
    assert main(["annotations", "convert", str(truth), "--out", str(geo)]) == 0
    assert "1360 x 1024" in capsys.readouterr().out
    back = tmp_path / "back.json"
    assert main(["annotations", "convert", str(geo), "--out", str(back), "--image", str(image)]) == 0
    a, b = load_annotations(truth), load_annotations(back)
    for name in CLASSES:
        assert np.abs(a.normalised(name) - b.normalised(name)).max(initial=0) <= 1e-6
    assert main(["annotations", "convert", str(geo), "--out", str(back), "--image", str(image)]) == 2  # exists
    assert "--force" in capsys.readouterr().err


def test_convert_regions_to_brecahad_says_where_they_went(tmp_path, capsys):
    image, _ = make_dataset(tmp_path)
    geo = write_json(tmp_path / "qupath.geojson", [feature({"type": "Polygon", "coordinates": [square(5, 5, 50)]}, "Ignore*"),
                                                   feature({"type": "Point", "coordinates": [7, 9]})])
    out = tmp_path / "out.json"
    assert main(["annotations", "convert", str(geo), "--out", str(out), "--image", str(image)]) == 0
    err = capsys.readouterr().err
    assert "out.regions.geojson" in err and (tmp_path / "out.regions.geojson").is_file()


def test_convert_bad_input_is_one_line_exit_2(tmp_path):
    image, _ = make_dataset(tmp_path)
    bad = write_json(tmp_path / "bad.geojson", [feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})])
    result = subprocess.run(
        [sys.executable, "-m", "viewer", "annotations", "convert", str(bad), "--out", str(tmp_path / "o.json"),
         "--image", str(image)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.geojson" in lines[0] and "LineString" in lines[0], result.stderr
    assert not (tmp_path / "o.json").exists()
    nowhere = write_json(tmp_path / "lonely.geojson", [feature({"type": "Point", "coordinates": [1, 1]})])
    assert main(["annotations", "convert", str(nowhere), "--out", str(tmp_path / "o.geojson")]) == 2


def test_convert_over_ground_truth_keeps_the_original(tmp_path, capsys):
    image, truth = make_dataset(tmp_path)
    original = truth.read_bytes()
    geo = tmp_path / "edited.geojson"
    assert main(["annotations", "convert", str(truth), "--out", str(geo)]) == 0
    assert main(["annotations", "convert", str(geo), "--out", str(truth), "--force"]) == 0
    assert "img.json.orig" in capsys.readouterr().err
    assert truth.with_name("img.json.orig").read_bytes() == original
