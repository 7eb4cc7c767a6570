"""``histoviewer info``: run through the installed ``histoviewer`` entry point on synthetic slides.

Good files: text output (size, pixel size or 'unknown', levels table with 'virtual' marks,
associated images) and ``--json`` (``SlideSource.info()``). Bad files: exit 2, exactly one line
on stderr naming the file, nothing on stdout, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_slide_openslide import smooth, write_vms

from viewer.commands.info import describe

_SCRIPT = Path(sys.executable).with_name("histoviewer")


def histoviewer(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real command line: the console script next to this Python (``-m viewer`` if absent)."""
    command = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "viewer"]
    env = dict(os.environ, PYTHONIOENCODING="utf-8", HISTOVIEWER_DEBUG="")
    return subprocess.run(
        [*command, *(str(a) for a in argv)], capture_output=True, text=True, encoding="utf-8",
        cwd=cwd, env=env, timeout=300,
    )


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("info")
    out = {"vms": write_vms(root / "vms", smooth(128, 512))}
    # Larger than one screen, no pyramid: HistoViewer adds virtual levels; no pixel size.
    out["png"] = root / "big.png"
    Image.fromarray(smooth(1500, 2100)).save(out["png"])
    out["text"] = root / "notes.svs"
    out["text"].write_text("not a slide\n", encoding="utf-8")
    out["zip"] = root / "archive.svs"
    with zipfile.ZipFile(out["zip"], "w") as archive:
        archive.writestr("a.txt", "hello")
    out["empty"] = root / "empty.tif"
    out["empty"].write_bytes(b"")
    broken = write_vms(root / "broken-vms", smooth(128, 512))
    (broken.parent / "slide(0,0).jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    out["broken_vms"] = broken
    out["garbled_tiff"] = root / "garbled.svs"
    out["garbled_tiff"].write_bytes(b"II*\x00" + np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    out["root"] = root
    return out


def test_text_output_of_a_vms_slide(slides):
    result = histoviewer("info", slides["vms"], cwd=slides["root"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines if not line.startswith(" ")}
    assert fields["file"] == str(slides["vms"])
    assert fields["backend"] == "openslide"
    assert fields["vendor"] == "hamamatsu"
    assert fields["size"] == "512 x 128 px"
    assert fields["pixel size"] == "0.25 µm/px"
    assert fields["objective"] == "20x"
    assert fields["associated"] == "macro"
    table = lines[lines.index("levels:") + 1 :]
    assert table[0].split() == ["level", "width", "height", "downsample"]
    assert table[1].split() == ["0", "512", "128", "1"]
    assert table[2].split() == ["1", "256", "64", "2"]
    assert not any("virtual" in row for row in table)


def test_json_output_of_a_vms_slide(slides):
    result = histoviewer("info", slides["vms"], "--json", cwd=slides["root"])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["width"], info["height"]) == (512, 128)
    assert info["mpp"] == pytest.approx([0.25, 0.25])
    assert (info["backend"], info["vendor"]) == ("openslide", "hamamatsu")
    assert info["levels"][0] == {"width": 512, "height": 128, "downsample": 1.0}
    assert all(set(level) >= {"width", "height", "downsample"} for level in info["levels"])
    assert [level["downsample"] for level in info["levels"]][:4] == [1.0, 2.0, 4.0, 8.0]
    assert info["associated_images"] == ["macro"]


def test_plain_image_has_unknown_pixel_size_and_virtual_levels(slides):
    text = histoviewer("info", slides["png"], cwd=slides["root"])
    assert text.returncode == 0, text.stderr
    assert "pixel size:  unknown" in text.stdout
    rows = [line.split() for line in text.stdout.splitlines()[text.stdout.splitlines().index("levels:") + 2 :]]
    assert rows[0] == ["0", "2100", "1500", "1"]
    assert rows[1] == ["1", "1050", "750", "2", "virtual"]
    as_json = json.loads(histoviewer("info", "--json", slides["png"], cwd=slides["root"]).stdout)
    assert as_json["mpp"] is None
    assert as_json["levels"][1] == {"width": 1050, "height": 750, "downsample": 2.0, "virtual": True}


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "zip", "empty", "broken_vms", "garbled_tiff"])
def test_bad_files_exit_2_with_one_line(slides, kind):
    path = {"missing": slides["root"] / "missing.svs", "folder": slides["root"] / "vms"}.get(kind) or slides[kind]
    for extra in ([], ["--json"]):
        result = histoviewer("info", path, *extra, cwd=slides["root"])
        assert result.returncode == 2, (kind, result.stdout, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("histoviewer: error:") and path.name in lines[0], lines[0]


def test_describe_formats_anisotropic_pixels_notes_and_virtual_levels():
    info = {
        "file": "x.svs", "backend": "tiff", "vendor": "aperio", "width": 3000, "height": 2000,
        "mpp": [0.2525, 0.2601], "tile_size": [240, 240], "associated_images": ["label", "macro"],
        "levels": [{"width": 3000, "height": 2000, "downsample": 1.0},
                   {"width": 750, "height": 500, "downsample": 4.000533},
                   {"width": 375, "height": 250, "downsample": 8.001066, "virtual": True}],
        "notes": ["the first note", "the second note"],
    }
    lines = describe(info)
    assert "pixel size:  0.2525 x 0.2601 µm/px" in lines
    assert "tile size:   240 x 240 px" in lines and "associated:  label, macro" in lines
    assert not any(line.startswith("objective") for line in lines)  # not recorded: not shown
    table = lines[lines.index("levels:") + 1 : lines.index("notes:")]
    assert [row.split() for row in table] == [
        ["level", "width", "height", "downsample"], ["0", "3000", "2000", "1"],
        ["1", "750", "500", "4.00053"], ["2", "375", "250", "8.00107", "virtual"]]
    assert lines[-2:] == ["  - the first note", "  - the second note"]
