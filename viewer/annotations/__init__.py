"""Annotations: the model (points per class, regions), its files, and recovery of unsaved edits.

- :mod:`model`: classes, colours, :class:`Annotations` (normalised points) and :class:`Region`
  (level-0 pixel polygons, including ``ignore`` regions);
- :mod:`brecahad`: BreCaHAD JSON (the dataset's own layout) and its regions sidecar;
- :mod:`geojson`: QuPath GeoJSON, both ways;
- :mod:`files`: reading either format with limits, saving by file name with a one-time backup;
- :mod:`regions`: which positions fall inside regions, and the regions of an image;
- :mod:`recovery`: unsaved edits written aside every few seconds, offered back after a crash.
"""

from viewer.annotations.brecahad import (
    REGIONS_SIDECAR_SUFFIX,
    find_annotations_for,
    load_annotations,
    parse_annotations,
    regions_sidecar_for,
    save_annotations,
)
from viewer.annotations.files import (
    MAX_ANNOTATION_BYTES,
    SaveReport,
    is_dataset_ground_truth,
    load_annotation_file,
    read_regions,
    save_annotation_file,
)
from viewer.annotations.geojson import annotations_to_geojson, parse_geojson, write_geojson
from viewer.annotations.model import (
    CLASS_COLOURS,
    CLASSES,
    IGNORE_CLASS,
    TUMOUR_CLASS,
    Annotations,
    Region,
    class_colour,
    class_label,
)
from viewer.annotations.regions import ignored, image_regions, points_in_regions, points_in_rings

__all__ = [
    "CLASSES", "CLASS_COLOURS", "IGNORE_CLASS", "MAX_ANNOTATION_BYTES", "REGIONS_SIDECAR_SUFFIX", "TUMOUR_CLASS",
    "Annotations", "Region", "SaveReport", "annotations_to_geojson", "class_colour", "class_label",
    "find_annotations_for", "ignored", "image_regions", "is_dataset_ground_truth", "load_annotation_file",
    "load_annotations", "parse_annotations", "parse_geojson", "points_in_regions", "points_in_rings",
    "read_regions", "regions_sidecar_for", "save_annotation_file", "save_annotations", "write_geojson",
]
