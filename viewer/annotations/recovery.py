"""Recovery files: unsaved annotation edits kept on disk so a crash loses (almost) nothing.

While there are unsaved edits, the viewer writes them every few seconds to
``<folder>/<image stem>-<key>.recovery.json`` (atomically: a crash mid-write leaves the previous
copy). Saving, discarding or closing cleanly removes the file; a file that is still there at
the next start means the viewer did not end cleanly, and the user is offered the edits back.

The file holds the model exactly (full float precision, unknown entries included), the image
it belongs to and its size, and the annotation file the edits started from.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from viewer.annotations.model import Annotations, Region
from viewer.errors import AnnotationError

FORMAT = "histoviewer-annotation-recovery"
VERSION = 1
SUFFIX = ".recovery.json"


@dataclass(frozen=True)
class Recovery:
    path: Path
    """The recovery file itself."""
    image: Path
    size: tuple[int, int]
    source: Path | None
    """The annotation file the edits started from (None: new annotations)."""
    written: float
    """When it was written (seconds since the epoch)."""
    annotations: Annotations


def recovery_path(folder: str | Path, image: str | Path) -> Path:
    """One recovery file per image (by its absolute path), with a readable name."""
    image = Path(image).absolute()
    key = hashlib.sha256(str(image).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in image.stem)[:60] or "image"
    return Path(folder) / f"{stem}-{key}{SUFFIX}"


def write_recovery(folder: str | Path, image: str | Path, size: tuple[int, int], annotations: Annotations,
                   source: str | Path | None) -> Path:
    """Write (atomically) the recovery file of ``image``; returns its path."""
    from viewer.atomic import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = recovery_path(folder, image)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "image": str(Path(image).absolute()),
        "size": [int(size[0]), int(size[1])],
        "source": str(Path(source).absolute()) if source is not None else None,
        "written": time.time(),
        # Plain float lists: json writes the shortest repr that reads back to the same double.
        "points": {name: np.asarray(annotations.points[name], dtype=np.float64).tolist() for name in annotations.points},
        "extra": annotations.extra,
        "regions": [{"name": r.name, "rings": [np.asarray(ring).tolist() for ring in r.rings]} for r in annotations.regions],
    }
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(record, allow_nan=False), encoding="utf-8")
    return path


def read_recovery(path: str | Path) -> Recovery:
    """Read a recovery file; AnnotationError (one line, naming it) when it is not one."""
    from viewer.annotations.files import read_json_file

    path = Path(path)
    data = read_json_file(path, "a recovery file")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AnnotationError("is not a HistoViewer recovery file", path)
    try:
        points = {str(name): _array(xy) for name, xy in data["points"].items()}
        regions = tuple(Region(str(r["name"]), tuple(_array(ring, frozen=True) for ring in r["rings"]))
                        for r in data["regions"])
        size = (int(data["size"][0]), int(data["size"][1]))
        source = Path(data["source"]) if data.get("source") else None
        annotations = Annotations(points=points, source=source, extra=dict(data.get("extra") or {}), regions=regions)
        return Recovery(path, Path(data["image"]), size, source, float(data["written"]), annotations)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise AnnotationError(f"is a damaged recovery file ({type(exc).__name__})", path) from None


def _array(value: Any, frozen: bool = False) -> np.ndarray:
    xy = np.asarray(value, dtype=np.float64).reshape(-1, 2)
    if frozen:
        xy.setflags(write=False)
    return xy


def find_recovery(folder: str | Path, image: str | Path) -> Recovery | None:
    """The recovery of ``image`` if there is a readable one."""
    path = recovery_path(folder, image)
    if not path.is_file():
        return None
    try:
        return read_recovery(path)
    except AnnotationError:
        return None


def list_recoveries(folder: str | Path) -> list[Recovery]:
    """Every readable recovery file in ``folder``, newest first (damaged ones are left alone)."""
    folder = Path(folder)
    found = []
    try:
        paths = sorted(folder.glob(f"*{SUFFIX}"))
    except OSError:
        return []
    for path in paths:
        try:
            found.append(read_recovery(path))
        except AnnotationError:
            continue
    return sorted(found, key=lambda r: r.written, reverse=True)


def remove_recovery(folder: str | Path, image: str | Path) -> None:
    """The edits were saved or discarded: the recovery file has done its job."""
    try:
        recovery_path(folder, image).unlink(missing_ok=True)
    except OSError:
        pass
