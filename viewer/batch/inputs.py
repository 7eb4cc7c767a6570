"""Which slides a batch processes, and which output folder each one writes to.

INPUT arguments are slide files, folders (searched recursively for the file endings the viewer
opens) or text files listing one path per line. Output folders are named after the slide's file
name without its ending; cohorts often hold the same name in several case folders
(``case1/slide.svs``, ``case2/slide.svs``), so equal names get the nearest parent folders that
tell them apart (``slide-case1``, ``slide-case2``). A folder already claimed by an input in an
earlier run (its ``slide.json`` record names the input) keeps belonging to that input, so adding
slides to a cohort never renames, or hands over, a finished folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from viewer.errors import InputError

LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv", ".tsv")
"""Endings of files read as lists of slide paths (any other non-image file is refused)."""

_VMS_SUFFIXES = (".vms", ".vmu")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 80


@dataclass(frozen=True)
class SlideInput:
    """One slide to process: its absolute path and, once assigned, its output folder name."""

    path: str
    folder: str = ""


def slide_suffixes() -> tuple[str, ...]:
    from viewer.slide import IMAGE_SUFFIXES

    return tuple(s.lower() for s in IMAGE_SUFFIXES)


def is_slide_name(name: str) -> bool:
    return name.lower().endswith(slide_suffixes())


def expand_inputs(arguments: Sequence[str | os.PathLike], *, exclude: Path | None = None) -> list[str]:
    """Absolute slide paths for the INPUT arguments, in the order given, each once.

    Folders are searched recursively in sorted order (hidden entries, ``.zarr`` stores and the
    ``exclude`` folder, i.e. the batch's own output, are skipped). A listed path that does not
    exist is kept, so the summary reports it as failed; a missing INPUT argument is an error.
    """
    found: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if not path.exists():
            raise InputError("not found (give slide files, folders of slides, or a text file listing slides)", path)
        if path.is_dir():
            found.extend(_search_folder(path, exclude))
        elif is_slide_name(path.name):
            found.append(_absolute(path))
        else:
            found.extend(_read_list(path, exclude))
    unique: list[str] = []
    seen: set[str] = set()
    for entry in found:
        key = os.path.normcase(os.path.realpath(entry))
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def _absolute(path: Path) -> str:
    # abspath, not resolve(): workers on other machines see the path the user gave (a shared
    # mount), not wherever a local symlink points.
    return os.path.abspath(path)


def _search_folder(folder: Path, exclude: Path | None) -> list[str]:
    skip = os.path.realpath(exclude) if exclude is not None else None
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and not d.lower().endswith(".zarr")
            and (skip is None or os.path.realpath(os.path.join(root, d)) != skip)
        )
        names = sorted(f for f in files if not f.startswith(".") and is_slide_name(f))
        if any(f.lower().endswith(_VMS_SUFFIXES) for f in names):
            # A Hamamatsu VMS slide is an index file plus JPEG pieces: the pieces are not slides.
            names = [f for f in names if not f.lower().endswith((".jpg", ".jpeg"))]
        out.extend(_absolute(Path(root) / f) for f in names)
    return out


def _read_list(path: Path, exclude: Path | None) -> list[str]:
    """Paths listed in a text file: one per line, ``#`` comments and blank lines ignored,
    relative paths taken from the list's folder; folders are searched like INPUT folders."""
    if path.suffix.lower() not in LIST_SUFFIXES:
        raise InputError(
            f"is neither a slide ({', '.join(slide_suffixes())}) nor a list of slides ({', '.join(LIST_SUFFIXES)})", path
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("is not a text file (a list of slides must be UTF-8 text, one path per line)", path) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    out: list[str] = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        listed = Path(os.path.expanduser(entry))
        if not listed.is_absolute():
            listed = path.parent / listed
        if listed.is_dir():
            out.extend(_search_folder(listed, exclude))
        else:
            out.append(_absolute(listed))
    return out


# ---------------------------------------------------------------------------------------------
# Output folder names
# ---------------------------------------------------------------------------------------------


def _ending(path: str) -> str:
    """The file's slide ending as written (``.ome.tif``, ``.SVS``), else its last suffix."""
    name = os.path.basename(path)
    for suffix in sorted(slide_suffixes(), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[-len(suffix):]
    return os.path.splitext(name)[1]


def slide_stem(path: str) -> str:
    """The file name without its slide ending (``a.ome.tif`` -> ``a``), safe as a folder name."""
    name = os.path.basename(path)
    ending = _ending(path)
    return _safe(name[: len(name) - len(ending)] or name) or "slide"


def _safe(text: str) -> str:
    return _SAFE.sub("_", text).strip("._")[:_MAX_NAME]


def folder_names(paths: Sequence[str], claimed: dict[str, str] | None = None) -> list[str]:
    """A distinct output folder name for each path (same order), deterministically.

    ``claimed``: folder name -> input path recorded by earlier runs in the output folder; an
    input keeps its claimed folder, and no other input gets it. Otherwise a path is named by its
    stem; paths sharing a stem get ``stem-<parent>`` with as many parent folders as it takes to
    tell them apart (``stem-<hash>`` if nothing does); any name still taken gets ``-2``, ``-3``...
    """
    claimed = claimed or {}
    owner_of = {_key(name): path for name, path in claimed.items()}
    claims_by_path = {os.path.normcase(path): name for name, path in claimed.items()}
    proposed = _proposed_names(paths)
    taken: set[str] = set(owner_of)
    names: list[str] = [""] * len(paths)
    # Inputs with a folder from an earlier run first, so new inputs cannot take it.
    for k, path in enumerate(paths):
        name = claims_by_path.get(os.path.normcase(path))
        if name is not None:
            names[k] = name
    for k, path in enumerate(paths):
        if names[k]:
            continue
        base = proposed[k]
        name, n = base, 1
        while _key(name) in taken:
            n += 1
            name = f"{base}-{n}"
        names[k] = name
        taken.add(_key(name))
    return names


def _key(name: str) -> str:
    return name.casefold()  # case-insensitive file systems (macOS, Windows) see one folder


def _proposed_names(paths: Sequence[str]) -> list[str]:
    stems = [slide_stem(p) for p in paths]
    names = list(stems)
    for members in _collisions(names):
        parents = [Path(paths[k]).parent.parts[::-1] for k in members]  # nearest folder first
        tails_at = [
            [tuple(_safe(part) for part in p[:take][::-1]) for p in parents]
            for take in range(1, max(len(p) for p in parents) + 1)
        ]
        # The fewest parent folders that tell the most names apart (all of them, usually).
        tails = max(tails_at, key=lambda t: len({tuple(map(_key, tail)) for tail in t})) if tails_at else [()] * len(members)
        for k, tail in zip(members, tails):
            names[k] = "-".join([stems[k], *tail])[: 2 * _MAX_NAME]
    for members in _collisions(names):  # same folders too: the file ending (slide.svs, slide.ndpi)
        for k in members:
            ending = _safe(_ending(paths[k]).lstrip("."))
            names[k] = f"{names[k]}-{ending}" if ending else names[k]
    for members in _collisions(names):
        for k in members:
            names[k] = f"{names[k]}-{hashlib.sha256(paths[k].encode()).hexdigest()[:8]}"
    return names


def _collisions(names: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        groups.setdefault(_key(name), []).append(k)
    return [members for members in groups.values() if len(members) > 1]


def assign_folders(paths: Iterable[str], claimed: dict[str, str] | None = None) -> list[SlideInput]:
    """:class:`SlideInput` for each path with its folder name (see :func:`folder_names`)."""
    paths = list(paths)
    return [SlideInput(p, name) for p, name in zip(paths, folder_names(paths, claimed))]
