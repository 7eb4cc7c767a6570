"""The batch's records: ``summary.csv`` + ``summary.json`` for the cohort, ``slide.json`` per slide.

``OUTDIR/summary.csv`` has one row per input, in input order, rewritten (atomically: temporary
file, then rename) as slides finish, so it is complete and readable at any moment, also after
Ctrl+C or a crash. ``summary.json`` holds the same rows plus the run's settings.

``OUTDIR/<folder>/slide.json`` is written when the folder is first used (naming the input it
belongs to: the claim that keeps later runs from giving the folder to another slide) and again
when the slide is finished, with what it was computed from (file size and time, model, analysis
options, threshold, outputs) and its figures. A later run skips the slide while all of that
still matches, without opening the slide.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from viewer import __version__

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
RECORD_NAME = "slide.json"
RECORD_FORMAT = "histoviewer-batch-slide"
SUMMARY_FORMAT = "histoviewer-batch-summary"

DONE, FAILED, SKIPPED, PENDING = "done", "failed", "skipped", "pending"
"""Row states: computed in this run; failed (see ``error``); finished by an earlier run and left
as it was; not finished yet (only seen while a run goes on, or after it was interrupted)."""


@dataclass
class SlideRow:
    """One row of the summary (one input)."""

    slide: str
    """The input's absolute path."""
    output: str
    """Its output folder, relative to OUTDIR."""
    status: str = PENDING
    error: str = ""
    width: int | None = None
    height: int | None = None
    """Level-0 size in pixels."""
    tissue_fraction: float | None = None
    """Share of the slide's area the tissue detector found (blank: no tissue detection)."""
    tumour_fraction: float | None = None
    """Share of the evaluated (tissue) cells with P(tumour) >= the threshold."""
    mean_probability: float | None = None
    """Mean P(tumour) over the evaluated cells."""
    seconds: float | None = None
    """Work spent on the slide in this run, summed over workers (for 'skipped': the run that
    computed it)."""
    model_sha256: str = ""
    version: str = __version__

    def as_dict(self) -> dict:
        return {f.name: _clean(getattr(self, f.name)) for f in fields(self)}


COLUMNS = tuple(f.name for f in fields(SlideRow))


def _clean(value):
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value


def _cell(value) -> str:
    return "" if value is None else str(value)


def write_summary(outdir: Path, rows: Sequence[SlideRow], settings: dict) -> None:
    """Write ``summary.csv`` and ``summary.json`` atomically (each is the old or the new file)."""
    from viewer.atomic import atomic_output

    records = [row.as_dict() for row in rows]
    with atomic_output(outdir / SUMMARY_CSV, force=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for record in records:
            writer.writerow([_cell(record[c]) for c in COLUMNS])
    counts = {state: sum(r.status == state for r in rows) for state in (DONE, SKIPPED, FAILED, PENDING)}
    document = {
        "format": SUMMARY_FORMAT, "format_version": 1, "version": __version__, "settings": settings,
        "counts": counts, "columns": list(COLUMNS), "slides": records,
    }
    with atomic_output(outdir / SUMMARY_JSON, force=True) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1, allow_nan=False)
        fh.write("\n")


def read_summary(outdir: Path) -> list[SlideRow]:
    """The rows of an earlier run's ``summary.json`` (empty if absent or unreadable)."""
    try:
        document = json.loads((outdir / SUMMARY_JSON).read_text(encoding="utf-8"))
        return [SlideRow(**{c: r.get(c) for c in COLUMNS}) for r in document["slides"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


# ---------------------------------------------------------------------------------------------
# Per-slide record
# ---------------------------------------------------------------------------------------------


def read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def write_record(folder: Path, record: dict) -> None:
    from viewer.atomic import atomic_output

    document = {"format": RECORD_FORMAT, "format_version": 1, "version": __version__, **record}
    with atomic_output(folder / RECORD_NAME, force=True) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=1, allow_nan=False)
        fh.write("\n")


def claimed_folders(outdir: Path) -> dict[str, str]:
    """Folder name -> input path, from the ``slide.json`` of every folder in ``outdir``."""
    claims: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(outdir), key=lambda e: e.name)
    except OSError:
        return claims
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            record = read_record(Path(entry.path))
            if record is not None and isinstance(record.get("input"), str):
                claims[entry.name] = record["input"]
    return claims


def file_identity(path: str) -> dict | None:
    """Size and modification time of a slide file: a re-scanned or replaced slide differs."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stats_fields(row: SlideRow) -> dict:
    keep = ("width", "height", "tissue_fraction", "tumour_fraction", "mean_probability", "seconds")
    return {k: v for k, v in asdict(row).items() if k in keep}
