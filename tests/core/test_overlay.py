"""viewer.overlay: cell placement, threshold/NaN transparency, blending, markers, legend, saving.
Pure numpy/Pillow: no model, no Qt."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
from PIL import Image

from viewer.annotations import Annotations, class_colour
from viewer.colormaps import colormap_lut
from viewer.errors import OutputError
from viewer.heatmap import cell_centre, heatmap_rect, heatmap_shape
from viewer.overlay import MARKER_OUTLINE, OverlayStyle, compose, save_overlay

H, W = 100, 120


@pytest.fixture
def grey():
    img = np.full((H, W, 3), 100, np.uint8)
    img.setflags(write=False)  # like Slide.pixels: compose must not need to write its input
    return img


def nan_heatmap(stride=8):
    return np.full(heatmap_shape(H, W, stride), np.nan, np.float32)


def changed(a, b):
    return np.any(a != b, axis=2)


def test_nothing_to_draw_returns_a_copy(grey):
    out = compose(grey)
    assert out is not grey and out.flags.writeable
    np.testing.assert_array_equal(out, grey)
    np.testing.assert_array_equal(compose(grey, nan_heatmap(), None), grey)  # NaN = not computed = transparent
    style = OverlayStyle(show_heatmap=False)
    np.testing.assert_array_equal(compose(grey, np.ones(heatmap_shape(H, W, 8), np.float32), None, style), grey)


@pytest.mark.parametrize("stride", [4, 7, 8, 16])
def test_one_cell_is_a_stride_square_centred_on_its_window_centre(grey, stride):
    heat = nan_heatmap(stride)
    r, c = 2, 3
    heat[r, c] = 1.0
    out = compose(grey, heat, None, OverlayStyle(opacity=1.0, stride=stride))
    ys, xs = np.nonzero(changed(out, grey))
    assert len(set(ys)) == stride and len(set(xs)) == stride and len(ys) == stride * stride
    cx, cy = cell_centre(r, c, stride)
    # The square's centre (in continuous pixel coordinates) is the window centre (rounded for odd strides).
    assert abs((xs.min() + xs.max() + 1) / 2 - cx) <= 0.5 and abs((ys.min() + ys.max() + 1) / 2 - cy) <= 0.5
    x0, y0, _, _ = heatmap_rect(*heat.shape, stride)
    assert xs.min() == int(np.ceil(x0 + c * stride - 0.5)) and ys.min() == int(np.ceil(y0 + r * stride - 0.5))
    np.testing.assert_array_equal(out[ys[0], xs[0]], colormap_lut(OverlayStyle().colormap)[255])


def test_full_heatmap_covers_exactly_the_documented_band(grey):
    heat = np.full(heatmap_shape(H, W, 8), 0.5, np.float32)
    out = compose(grey, heat, None, OverlayStyle(opacity=1.0))
    mask = changed(out, grey)
    rows, cols = heat.shape
    band = np.zeros_like(mask)
    band[12 : 12 + 8 * rows, 12 : 12 + 8 * cols] = True
    np.testing.assert_array_equal(mask, band)


def test_threshold_hides_low_cells_and_opacity_blends(grey):
    heat = np.full(heatmap_shape(H, W, 8), 0.2, np.float32)
    heat[1, 1] = 0.9
    heat[2, 2] = 0.5  # exactly at the threshold: shown
    style = OverlayStyle(threshold=0.5, opacity=0.45, colormap="viridis")
    out = compose(grey, heat, None, style)
    mask = changed(out, grey)
    assert mask.sum() == 2 * 64
    x, y = cell_centre(1, 1, 8)
    colour = colormap_lut("viridis")[int(np.rint(0.9 * 255))].astype(np.float32)
    expected = np.rint(100 + (colour - 100) * np.float32(0.45)).astype(np.uint8)
    np.testing.assert_array_equal(out[y, x], expected)
    assert not mask[cell_centre(0, 0, 8)[1], cell_centre(0, 0, 8)[0]]
    none = compose(grey, heat, None, dataclasses.replace(style, opacity=0.0))
    np.testing.assert_array_equal(none, grey)


def test_wrong_heatmap_shape_is_refused(grey):
    with pytest.raises(ValueError, match="does not fit"):
        compose(grey, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="stride 4"):
        compose(grey, np.zeros(heatmap_shape(H, W, 8), np.float32), style=OverlayStyle(stride=4))


def test_style_validation():
    for bad in (dict(opacity=1.5), dict(opacity=-0.1), dict(threshold=2), dict(colormap="rainbowz"), dict(stride=0), dict(marker_radius=0)):
        with pytest.raises(ValueError):
            OverlayStyle(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        OverlayStyle().opacity = 0.3


def test_markers_are_rings_in_class_colours(grey):
    ann = Annotations.from_pixels({"tumor": [(50.2, 40.7)], "mitosis": [(90.0, 70.0)]}, W, H)
    style = OverlayStyle(show_heatmap=False, marker_radius=10)
    out = compose(grey, None, ann, style)
    # Within 1 px of the circle: the class colour; 1-2 px outside and inside: the dark edge; centre: untouched.
    np.testing.assert_array_equal(out[40, 50 + 10], class_colour("tumor"))
    np.testing.assert_array_equal(out[40 - 10, 50], class_colour("tumor"))
    np.testing.assert_array_equal(out[40, 50 + 11], MARKER_OUTLINE)  # centre 61.5: d = 11.3
    np.testing.assert_array_equal(out[40, 50 + 8], MARKER_OUTLINE)
    np.testing.assert_array_equal(out[40, 50], grey[40, 50])
    np.testing.assert_array_equal(out[70, 90 - 10], class_colour("mitosis"))
    ys, xs = np.nonzero(np.all(out == class_colour("tumor"), axis=2))
    d = np.hypot(xs + 0.5 - 50.2, ys + 0.5 - 40.7)
    assert d.min() >= 9 and d.max() <= 11
    # visible_classes filters; show_annotations=False hides all; a plain mapping of pixel points works too.
    only_tumour = compose(grey, None, ann, dataclasses.replace(style, visible_classes=("tumor",)))
    np.testing.assert_array_equal(only_tumour[70, 80], grey[70, 80])
    np.testing.assert_array_equal(only_tumour[40, 60], class_colour("tumor"))
    np.testing.assert_array_equal(compose(grey, None, ann, dataclasses.replace(style, show_annotations=False)), grey)
    as_mapping = compose(grey, None, {"tumor": [[50.2, 40.7]], "mitosis": np.array([[90.0, 70.0]])}, style)
    np.testing.assert_array_equal(as_mapping, out)


def test_markers_at_the_border_are_clipped(grey):
    out = compose(grey, None, {"tumor": [[0.0, 0.0], [119.9, 99.9]]}, OverlayStyle(marker_radius=6))
    assert out.shape == grey.shape
    np.testing.assert_array_equal(out[0, 6], class_colour("tumor"))


def test_legend_extends_the_canvas_and_keeps_the_image_area(grey):
    heat = np.linspace(0, 1, np.prod(heatmap_shape(H, W, 8)), dtype=np.float32).reshape(heatmap_shape(H, W, 8))
    ann = Annotations.from_pixels({"tumor": [(50, 40)], "non_tumor": [(20, 70)]}, W, H)
    style = OverlayStyle(threshold=0.3, colormap="jet")
    plain = compose(grey, heat, ann, style)
    with_legend = compose(grey, heat, ann, dataclasses.replace(style, legend=True))
    assert with_legend.shape[1] > W and with_legend.shape[0] >= H  # wider; taller for a short image
    np.testing.assert_array_equal(with_legend[:H, :W], plain)
    panel = with_legend[:, W:].reshape(-1, 3)
    colours = {tuple(p) for p in np.unique(panel, axis=0)}
    assert tuple(class_colour("tumor")) in colours and tuple(class_colour("non_tumor")) in colours
    lut = colormap_lut("jet")
    assert tuple(lut[255]) in colours and tuple(lut[int(0.3 * 255) + 5]) in colours
    assert tuple(lut[10]) not in colours  # below the threshold the bar is hatched, not coloured
    # No annotations and no heatmap: the legend is just an empty white panel, but still valid.
    bare = compose(grey, None, None, OverlayStyle(legend=True))
    assert bare.shape[0] >= H and (bare[:H, :W] == grey).all()


def test_large_image_legend_is_not_taller_than_the_image():
    img = np.full((1024, 1360, 3), 200, np.uint8)
    heat = np.full(heatmap_shape(1024, 1360, 8), 0.7, np.float32)
    out = compose(img, heat, {"tumor": [[100, 100]]}, OverlayStyle(legend=True))
    assert out.shape[0] == 1024 and 1360 + 100 < out.shape[1] < 1360 + 500


@pytest.mark.parametrize("name", ["o.png", "o.tif", "o.tiff"])
def test_save_overlay_round_trip(tmp_path, grey, name):
    img = compose(grey, None, {"tumor": [[50, 40]]})
    path = save_overlay(img, tmp_path / name)
    back = tifffile.imread(path) if name.endswith(("tif", "tiff")) else np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, img)
    with pytest.raises(OutputError, match="already exists"):
        save_overlay(img, tmp_path / name)
    save_overlay(img, tmp_path / name, force=True)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary files left behind


def test_save_overlay_refuses_bad_targets(tmp_path, grey):
    with pytest.raises(OutputError, match="unsupported"):
        save_overlay(np.array(grey), tmp_path / "o.bmp")
    with pytest.raises(OutputError, match="does not exist"):
        save_overlay(np.array(grey), tmp_path / "missing" / "o.png")
    with pytest.raises(ValueError):
        save_overlay(np.zeros((4, 4), np.uint8), tmp_path / "o.png")


def test_export_and_the_viewer_share_their_defaults_from_one_place():
    """`histoviewer export` with no options draws what the viewer shows on first start."""
    import argparse

    from viewer.commands import export as export_command
    from viewer.gui.layers import LayerState  # a plain dataclass: no Qt is imported
    from viewer.overlay import DEFAULT_OPACITY, DEFAULT_THRESHOLD

    parser = argparse.ArgumentParser()
    export_command.register(parser.add_subparsers())
    args = parser.parse_args(["export", "in.tif", "--out", "o.png"])
    assert args.threshold == LayerState().threshold == OverlayStyle().threshold == DEFAULT_THRESHOLD == 0.5
    assert args.opacity == LayerState().opacity == OverlayStyle().opacity == DEFAULT_OPACITY
    assert export_command.style_from_args(args) == LayerState().overlay_style((), args.stride)
