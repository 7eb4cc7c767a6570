"""Render the real main window offscreen and save docs/screenshot.png for the README.

It opens a BreCaHAD image (its ground truth loads with it), runs the heatmap to the end with
the bundled model, points the status-bar readout at a tumour point, and grabs the window at
1200 px wide. The PNG is kept under 1 MB (see :func:`save_small_png`).

The image is from BreCaHAD (Aksac et al. 2019, CC BY 4.0): the README carries the attribution.

Usage: python scripts/make_screenshot.py [--image IMAGE.tif] [--out docs/screenshot.png] [--model M.keras] [--zoom 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "brecahad-subset" / "images" / "brecahad_10011.tif"
MAX_BYTES = 1_000_000


def save_small_png(qimage, out: Path) -> int:
    """Save as PNG under 1 MB: full colour if it fits, else with the low bits of each channel
    dropped (invisible on screen, and it keeps every UI colour), palette only as a last resort."""
    from PIL import Image, ImageOps
    from PySide6.QtCore import QBuffer, QIODevice

    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    qimage.save(buffer, "PNG")
    image = Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB")
    candidates = [lambda: image, lambda: ImageOps.posterize(image, 6), lambda: ImageOps.posterize(image, 5),
                  lambda: image.quantize(colors=256, method=Image.Quantize.FASTOCTREE)]
    for make in candidates:
        data = io.BytesIO()
        make().save(data, "PNG", optimize=True)
        if data.tell() <= MAX_BYTES:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data.getvalue())
    return data.tell()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    parser.add_argument("--model", help="model file (default: the bundled model)")
    parser.add_argument("--zoom", type=float, help="screen pixels per image pixel (default: fit to window)")
    args = parser.parse_args()
    if not Path(args.image).is_file():
        sys.exit(f"{args.image}: not found (pass --image; the BreCaHAD subset lives in ../shared/data)")

    from PySide6.QtCore import QSettings

    from viewer.gui.app import create_application
    from viewer.gui.wait import wait_for

    app = create_application()
    # Default settings, not the user's: the screenshot shows what a new user sees.
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp())
    from viewer.gui.main_window import MainWindow

    window = MainWindow(model_path=args.model)
    window.resize(1200, 780)
    window.show()
    window.start()
    wait_for(window.model_ready)
    window.open_image(args.image)
    if not wait_for(window.heatmap_finished)[0]:
        sys.exit("the heatmap did not complete")
    app.processEvents()
    slide = window.opened.slide
    points = window.annotations.pixel_points("tumor", slide.width, slide.height)
    x, y = min(points, key=lambda p: abs(p[0] - slide.width / 2) + abs(p[1] - slide.height / 2))
    if args.zoom:
        window.canvas.zoom_to(args.zoom)
    # The canvas reads tiles on worker threads: wait until the view is fully drawn.
    deadline = time.monotonic() + 30
    while not window.canvas.is_drawn() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    window._show_cursor(float(x), float(y))  # what the status bar shows over a tumour point
    app.processEvents()
    size = save_small_png(window.grab().toImage(), Path(args.out))
    print(f"wrote {args.out} ({window.width()}x{window.height()}, {size / 1e3:.0f} kB)")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
