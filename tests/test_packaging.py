"""The wheel carries the bundled model, so a non-editable ``pip install .`` gets a real heatmap."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_bundled_model_and_card(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = list(tmp_path.glob("histoviewer-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert "viewer/resources/convnet_brecahad.keras" in names
    assert "viewer/resources/MODEL_CARD.md" in names
    for name in ("histoviewer.desktop", "histoviewer.png", "histoviewer-mime.xml",
                 "io.github.histoviewer.HistoViewer.metainfo.xml"):  # --install-desktop needs them
        assert f"viewer/resources/{name}" in names
    assert "viewer/cli.py" in names and "viewer/gui/__init__.py" in names
    # every module of the source tree is in the wheel (pyproject lists packages explicitly)
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "viewer").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(sources - names)
    assert not missing, f"not packaged (add the package to [tool.setuptools] packages): {missing}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheels[0]).read(entry_points).decode()
    assert "histoviewer = viewer.launcher:main" in text
