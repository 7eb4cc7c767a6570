"""The core (everything in viewer/ except viewer/gui/) never imports Qt.

Checked two ways: by importing every core module in a fresh interpreter and looking at
sys.modules, and statically with import-linter using the contract in pyproject.toml.
"""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import viewer
import viewer.commands

REPO = Path(__file__).resolve().parents[2]
QT_MODULES = ("PySide6", "PyQt5", "PyQt6", "PySide2", "shiboken6", "pyqtgraph", "superqt", "qtpy")


def core_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(viewer.__path__, "viewer.")]
    return sorted(n for n in names if n != "viewer.__main__" and not n.startswith("viewer.gui"))


def imported_after(code: str) -> set[str]:
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_core_module_list_is_complete():
    names = core_modules()
    for expected in ("viewer.slide", "viewer.annotations", "viewer.model", "viewer.cli", "viewer.errors", "viewer.atomic"):
        assert expected in names
    assert not [n for n in names if n.startswith("viewer.gui")]


def test_importing_every_core_module_imports_no_qt():
    imports = "\n".join(f"import {name}" for name in core_modules())
    # Building the CLI parser imports every subcommand and runs its register(): still no Qt.
    loaded = imported_after(imports + "\nfrom viewer.cli import build_parser\nbuild_parser()")
    assert not (top_level(loaded) & set(QT_MODULES)), sorted(top_level(loaded) & set(QT_MODULES))
    assert not [m for m in loaded if m.startswith("viewer.gui")]


def test_importing_the_core_does_not_import_tensorflow():
    """TF takes seconds to import; the GUI must paint first, so the core imports it lazily."""
    imports = "\n".join(f"import {name}" for name in core_modules())
    loaded = imported_after(imports + "\nfrom viewer.cli import build_parser\nbuild_parser()")
    heavy = top_level(loaded) & {"tensorflow", "keras", "torch", "jax"}
    assert not heavy, f"imported at module level: {sorted(heavy)}"


def _import_linter_config(tmp_path: Path) -> Path:
    """The pyproject contract, with include_external_packages (required for external forbidden modules)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    section = data.get("tool", {}).get("importlinter")
    if not section:
        pytest.fail("pyproject.toml has no [tool.importlinter] contract")
    lines = ["[tool.importlinter]"]
    lines.append(f"root_packages = {json.dumps(section.get('root_packages', ['viewer']))}")
    lines.append("include_external_packages = true")
    for contract in section.get("contracts", []):
        lines.append("")
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "importlinter.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_linter_contract(tmp_path):
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (pip install import-linter)")
    config = _import_linter_config(tmp_path)
    result = subprocess.run(
        [exe, str(config), "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_the_contract_covers_the_core_modules():
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = data["tool"]["importlinter"]["contracts"]
    sources = {m for c in contracts if c.get("type") == "forbidden" for m in c.get("source_modules", [])}
    forbidden = {m for c in contracts if c.get("type") == "forbidden" for m in c.get("forbidden_modules", [])}
    assert {"PySide6", "pyqtgraph", "superqt", "viewer.gui"} <= forbidden
    for name in ("viewer.slide", "viewer.annotations", "viewer.model", "viewer.cli", "viewer.errors", "viewer.atomic"):
        assert name in sources


def test_import_linter_runs_with_pyproject_as_is():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed")
    result = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_core_module_is_in_the_contract_except_the_launcher():
    """A new core module must be added to the contract; only viewer.launcher stays outside it
    (the one module outside viewer.gui that imports the GUI) and has a contract of its own."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = data["tool"]["importlinter"]["contracts"]
    core = next(c for c in contracts if "viewer.gui" in c.get("forbidden_modules", []))
    top = {f"viewer.{m.name}" for m in pkgutil.iter_modules(viewer.__path__)} - {"viewer.gui", "viewer.__main__"}
    assert sorted(top - set(core["source_modules"])) == ["viewer.launcher"]
    launcher = next(c for c in contracts if c.get("source_modules") == ["viewer.launcher"])
    assert "PySide6" in launcher["forbidden_modules"]


def test_commands_through_the_launcher_import_no_qt(tmp_path):
    """The console script is viewer.launcher:main: a subcommand run through it never loads Qt."""
    import numpy as np
    import tifffile

    image = tmp_path / "x.tif"
    tifffile.imwrite(image, np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    loaded = imported_after(f"from viewer.launcher import main\nassert main(['info', {str(image)!r}]) == 0")
    assert not (top_level(loaded) & set(QT_MODULES)) and not [m for m in loaded if m.startswith("viewer.gui")]
