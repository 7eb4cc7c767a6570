"""Composite figures: image + heatmap + annotation markers (+ legend), at full resolution.

:func:`compose` is the one exporter: the CLI's ``export`` command and the GUI's Export Overlay
both call it with the same :class:`OverlayStyle`, so their pixels are identical. Qt-free.

Heatmap drawing follows :mod:`viewer.heatmap` geometry exactly: cell ``(r, c)`` is a
``stride`` x ``stride`` square centred on its window centre ``(stride*c + 16, stride*r + 16)``;
an image pixel takes the colour of the cell whose square contains the pixel's centre
(nearest neighbour). Pixels outside the covered band, cells that are NaN (not computed yet) and
cells below ``threshold`` are left untouched (transparent). Colour index is ``rint(p * 255)``
into the colormap's 256-entry table, as in the GUI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from viewer import DEFAULT_STRIDE
from viewer.colormaps import COLORMAPS, DEFAULT_COLORMAP, colormap_lut, colour_index
from viewer.errors import OutputError
from viewer.heatmap import heatmap_shape, pixel_cell_index

OVERLAY_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}
"""Output types :func:`save_overlay` writes, by file suffix."""

MARKER_OUTLINE = (0, 0, 0)
"""Thin dark edge on both sides of every marker ring, so rings read on pale and dark tissue alike."""

LEGEND_BACKGROUND = (255, 255, 255)
LEGEND_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class OverlayStyle:
    """How to draw an overlay. Immutable, so a GUI can hand one to a worker safely.

    ``opacity``: heatmap alpha in [0, 1]. ``threshold``: cells with ``p < threshold`` are not
    drawn. ``visible_classes``: annotation classes to draw (``None`` = all).
    ``marker_radius``: ring radius in image pixels. ``legend``: add a legend panel (see
    :func:`compose`). ``stride``: the heatmap's stride in pixels.
    """

    show_heatmap: bool = True
    show_annotations: bool = True
    opacity: float = 0.45
    colormap: str = DEFAULT_COLORMAP
    threshold: float = 0.0
    visible_classes: tuple[str, ...] | frozenset[str] | None = None
    marker_radius: int = 10
    legend: bool = False
    stride: int = DEFAULT_STRIDE

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.opacity) <= 1.0:
            raise ValueError(f"opacity must be between 0 and 1, got {self.opacity}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.colormap not in COLORMAPS:
            raise ValueError(f"unknown colormap {self.colormap!r}; choose one of {', '.join(COLORMAPS)}")
        if int(self.marker_radius) < 1:
            raise ValueError(f"marker_radius must be at least 1, got {self.marker_radius}")
        if isinstance(self.stride, bool) or int(self.stride) != self.stride or self.stride < 1:
            raise ValueError(f"stride must be a positive whole number, got {self.stride}")


# ---------------------------------------------------------------------------------------------
# Annotations access (an Annotations object, or a plain mapping of pixel points)
# ---------------------------------------------------------------------------------------------


def _class_colour(name: str) -> tuple[int, int, int]:
    from viewer.annotations import class_colour

    return tuple(int(v) for v in class_colour(name))


def _class_label(name: str) -> str:
    from viewer.annotations import class_label

    return class_label(name)


def annotation_points(annotations: Any, width: int, height: int, visible: Sequence[str] | frozenset[str] | None = None) -> dict[str, np.ndarray]:
    """``{class: (N, 2) float pixel (x, y)}`` for the classes to draw, in legend order.

    ``annotations`` is a :class:`viewer.annotations.Annotations` (normalised points, converted
    with ``pixel_points``) or a mapping ``{class: pixel points}``. Empty classes are dropped.
    """
    if annotations is None:
        return {}
    if isinstance(annotations, Mapping):
        items = {name: np.asarray(pts, dtype=np.float64).reshape(-1, 2) for name, pts in annotations.items()}
    else:
        items = {name: np.asarray(annotations.pixel_points(name, width, height), dtype=np.float64).reshape(-1, 2) for name in annotations.classes}
    if visible is not None:
        visible = set(visible)
        items = {name: pts for name, pts in items.items() if name in visible}
    return {name: pts for name, pts in items.items() if len(pts)}


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def blend_heatmap(out: np.ndarray, heatmap: np.ndarray, style: OverlayStyle) -> None:
    """Blend ``heatmap`` into the RGB image ``out`` in place (geometry as in the module doc)."""
    height, width = out.shape[:2]
    expected = heatmap_shape(height, width, style.stride)
    if heatmap.shape != expected:
        raise ValueError(
            f"heatmap shape {heatmap.shape} does not fit a {width}x{height} image at stride {style.stride} "
            f"(expected {expected})"
        )
    if heatmap.size == 0 or style.opacity == 0:
        return
    row_of = pixel_cell_index(height, expected[0], style.stride)
    col_of = pixel_cell_index(width, expected[1], style.stride)
    ys = np.flatnonzero(row_of >= 0)
    xs = np.flatnonzero(col_of >= 0)
    if not len(ys) or not len(xs):
        return
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    probs = np.asarray(heatmap)[np.ix_(row_of[y0:y1], col_of[x0:x1])]
    finite = np.isfinite(probs)
    show = finite & (np.where(finite, probs, 0.0) >= style.threshold)
    if not show.any():
        return
    colours = colormap_lut(style.colormap)[colour_index(probs)]
    block = out[y0:y1, x0:x1]
    alpha = np.float32(style.opacity)
    under = block[show].astype(np.float32)
    over = colours[show].astype(np.float32)
    block[show] = np.clip(np.rint(under + (over - under) * alpha), 0, 255).astype(np.uint8)


def draw_markers(out: np.ndarray, points: Mapping[str, np.ndarray], radius: int) -> None:
    """Draw a ring of radius ``radius`` px around each point, in its class colour, in place.

    Rings are 2 px wide (pixel centres within 1 px of the circle) with a 1 px dark edge on each
    side; all edges are drawn before any colour so neighbouring markers stay readable.
    """
    height, width = out.shape[:2]
    r = float(radius)
    span = np.arange(-int(radius) - 3, int(radius) + 4)
    jobs = []
    for name, pts in points.items():
        colour = np.array(_class_colour(name), dtype=np.uint8)
        for x, y in pts:
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            cx, cy = int(np.floor(x)), int(np.floor(y))
            ys = cy + span
            xs = cx + span
            yk = (ys >= 0) & (ys < height)
            xk = (xs >= 0) & (xs < width)
            if not yk.any() or not xk.any():
                continue
            ys, xs = ys[yk], xs[xk]
            dist = np.hypot((xs[None, :] + 0.5) - x, (ys[:, None] + 0.5) - y)
            off = np.abs(dist - r)
            jobs.append((ys[0], xs[0], off <= 1.0, (off > 1.0) & (off <= 2.0), colour))
    for y0, x0, _ring, edge, _colour in jobs:
        block = out[y0 : y0 + edge.shape[0], x0 : x0 + edge.shape[1]]
        block[edge] = MARKER_OUTLINE
    for y0, x0, ring, _edge, colour in jobs:
        block = out[y0 : y0 + ring.shape[0], x0 : x0 + ring.shape[1]]
        block[ring] = colour


# ---------------------------------------------------------------------------------------------
# Legend
# ---------------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def legend_panel(
    height: int,
    *,
    style: OverlayStyle,
    heatmap_shown: bool,
    classes: Mapping[str, int],
    scale: float = 1.0,
) -> np.ndarray:
    """Render the legend panel as an RGB array (at least ``height`` tall): a colour bar for the
    heatmap (0 at the bottom, 1 at the top, threshold marked) and a ring + name + count per class."""
    from PIL import Image, ImageDraw

    unit = max(1.0, scale)
    font_size = int(round(14 * unit))
    font = _font(font_size)
    small = _font(int(round(12 * unit)))
    pad = int(round(12 * unit))
    line = int(round(font_size * 1.6))
    bar_w, bar_h = int(round(22 * unit)), int(round(200 * unit))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str, f) -> int:
        box = probe.textbbox((0, 0), text, font=f)
        return box[2] - box[0]

    entries = [(name, count) for name, count in classes.items()]
    widths = [text_width("Tumour probability", font)] if heatmap_shown else []
    widths += [line + text_width(f"{_class_label(n)} ({c})", font) for n, c in entries]
    if entries:
        widths.append(text_width("Annotations", font))
    panel_w = pad * 2 + max([bar_w + text_width("0.00", small) + pad] + widths)
    panel_h = pad
    if heatmap_shown:
        panel_h += line + bar_h + pad + line // 2
    if entries:
        panel_h += line + line * len(entries) + pad
    panel_h = max(panel_h, int(height))
    img = Image.new("RGB", (panel_w, panel_h), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(img)
    y = pad
    if heatmap_shown:
        draw.text((pad, y), "Tumour probability", fill=LEGEND_TEXT, font=font)
        y += line
        lut = colormap_lut(style.colormap)
        values = np.linspace(1.0, 0.0, bar_h, dtype=np.float32)
        bar = lut[colour_index(values)]
        bar = np.repeat(bar[:, None, :], bar_w, axis=1)
        if style.threshold > 0:  # below the threshold nothing is drawn: show that as hatching
            hidden = values < style.threshold
            yy, xx = np.mgrid[0:bar_h, 0:bar_w]
            hatch = ((yy + xx) // max(2, int(4 * unit)) % 2 == 0)[:, :, None]
            bar[hidden] = np.where(hatch[hidden], 200, 245).astype(np.uint8)
        img.paste(Image.fromarray(np.ascontiguousarray(bar)), (pad, y))
        draw.rectangle((pad - 1, y - 1, pad + bar_w, y + bar_h), outline=LEGEND_TEXT)
        ticks = [1.0, 0.5, 0.0] + ([style.threshold] if 0 < style.threshold < 1 else [])
        for value in ticks:
            ty = y + int(round((1.0 - value) * (bar_h - 1)))
            draw.line((pad + bar_w, ty, pad + bar_w + int(4 * unit), ty), fill=LEGEND_TEXT)
            label = f"{value:.2f}" if value not in (0.0, 0.5, 1.0) else f"{value:g}"
            draw.text((pad + bar_w + int(6 * unit), ty - small.size // 2 - 1), label, fill=LEGEND_TEXT, font=small)
        y += bar_h + pad + line // 2
    if entries:
        draw.text((pad, y), "Annotations", fill=LEGEND_TEXT, font=font)
        y += line
        radius = max(3, int(round(font_size * 0.4)))
        for name, count in entries:
            cx, cy = pad + radius + 2, y + line // 2 - 2
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            draw.ellipse((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), outline=MARKER_OUTLINE, width=4)
            draw.ellipse(box, outline=_class_colour(name), width=2)
            draw.text((pad + line, y + (line - font_size) // 2 - 2), f"{_class_label(name)} ({count})", fill=LEGEND_TEXT, font=font)
            y += line
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# The exporter
# ---------------------------------------------------------------------------------------------


def compose(
    image: np.ndarray,
    heatmap: np.ndarray | None = None,
    annotations: Any = None,
    style: OverlayStyle = OverlayStyle(),
) -> np.ndarray:
    """The overlay as a new (H, W, 3) uint8 array at the image's full resolution.

    Layers, bottom to top: the image; the heatmap (if ``style.show_heatmap`` and ``heatmap`` is
    given; float ``(rows, cols)`` of :func:`viewer.heatmap.heatmap_shape` at ``style.stride``,
    NaN = not computed = transparent) blended with ``style.opacity``; annotation rings (if
    ``style.show_annotations``; an :class:`~viewer.annotations.Annotations` or a mapping
    ``{class: (N, 2) pixel x, y}``, filtered by ``style.visible_classes``).

    With ``style.legend`` a white legend panel is appended on the **right**, so the result is
    **wider** than the image (``W + panel``) and, for images shorter than the panel, **taller**
    (the image sits at the top-left; the extra area is white). The image area is unchanged.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    out = np.array(image, dtype=np.uint8, copy=True, order="C")
    height, width = out.shape[:2]
    heatmap_shown = bool(style.show_heatmap and heatmap is not None)
    if heatmap_shown:
        blend_heatmap(out, np.asarray(heatmap), style)
    points: dict[str, np.ndarray] = {}
    if style.show_annotations and annotations is not None:
        points = annotation_points(annotations, width, height, style.visible_classes)
        draw_markers(out, points, style.marker_radius)
    if not style.legend:
        return out
    panel = legend_panel(
        height,
        style=style,
        heatmap_shown=heatmap_shown,
        classes={name: len(pts) for name, pts in points.items()},
        scale=max(1.0, min(height, width) / 768),
    )
    canvas = np.full((max(height, panel.shape[0]), width + panel.shape[1], 3), LEGEND_BACKGROUND, dtype=np.uint8)
    canvas[:height, :width] = out
    canvas[: panel.shape[0], width:] = panel
    return canvas


def save_overlay(array: np.ndarray, path: str | Path, force: bool = False) -> Path:
    """Write an RGB overlay as PNG, TIFF (deflate) or JPEG (by suffix), atomically.

    Refuses to overwrite an existing file unless ``force``; raises :class:`OutputError` with a
    one-line message naming the file.
    """
    from viewer.atomic import atomic_output, check_writable

    path = Path(path)
    kind = overlay_format(path)
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"overlay must be an (H, W, 3) uint8 array, got {array.dtype} {array.shape}")
    check_writable(path, force=force)
    with atomic_output(path, force=force) as tmp:
        if kind == "TIFF":
            import tifffile

            tifffile.imwrite(tmp, np.ascontiguousarray(array), photometric="rgb", compression="zlib")
        else:
            from PIL import Image

            options = {"compress_level": 6} if kind == "PNG" else {"quality": 95}
            Image.fromarray(np.ascontiguousarray(array)).save(tmp, format=kind, **options)
    return path


def overlay_format(path: str | Path) -> str:
    """``"PNG"``, ``"TIFF"`` or ``"JPEG"`` for an output file name; raises :class:`OutputError` otherwise."""
    path = Path(path)
    kind = OVERLAY_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise OutputError("unsupported overlay file type; use .png, .tif/.tiff or .jpg", path)
    return kind
