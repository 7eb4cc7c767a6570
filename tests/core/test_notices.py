"""Third-party notices from the installed distributions' metadata (About dialog, bundle file)."""

from __future__ import annotations

from viewer import notices


def test_components_are_the_installed_requirements_with_licences():
    items = {notices.canonical(c.name): c for c in notices.components()}
    for name in ("numpy", "tifffile", "zarr", "keras", "pyside6-essentials", "openslide-bin", "openslide-python"):
        assert name in items, name
    assert "LGPL-3.0" in items["pyside6-essentials"].licence
    assert "LGPL-2.1" in items["openslide-bin"].licence
    assert "pytest" not in items and "histoviewer" not in items  # test tools and the program itself are not shipped
    assert all(c.licence for c in items.values())


def test_notices_text_has_the_lgpl_obligations_and_the_licence_texts():
    text = notices.notices_text(extra_texts=[("GNU Lesser General Public License 3.0", "LGPL TEXT HERE")])
    assert "LGPL components: what you may do, and where the source is" in text
    assert "libopenslide" in text and "github.com/openslide/openslide" in text
    assert "download.qt.io" in text and "LGPL TEXT HERE" in text
    # openslide-bin's own licence files (OpenSlide's LGPL 2.1 among them) are copied in full
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in text and "Version 2.1" in text
    assert "BreCaHAD" in text and "CC BY 4.0" in text


def test_licence_files_are_read_from_the_metadata():
    files = dict(notices.licence_files("numpy"))
    assert any(name.endswith("LICENSE.txt") for name in files)


def test_notices_command_writes_the_file(tmp_path):
    extra = tmp_path / "lgpl.txt"
    extra.write_text("the lgpl", encoding="utf-8")
    out = tmp_path / "THIRD_PARTY_NOTICES.txt"
    assert notices.main(["--out", str(out), f"--licence-text=LGPL 3.0={extra}"]) == 0
    assert "the lgpl" in out.read_text(encoding="utf-8")
