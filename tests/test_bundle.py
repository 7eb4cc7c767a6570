"""The PyInstaller bundle's smoke test (packaging/smoke_test.py) as pytest tests.

Opt-in: ``pytest -m packaging`` after ``python packaging/build.py`` (pyproject deselects the
marker by default, so the normal suite never needs a bundle). The Python running pytest is the
reference "pip install" the bundle is compared with.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.packaging


def _smoke():
    spec = importlib.util.spec_from_file_location("histoviewer_smoke_test", REPO / "packaging" / "smoke_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


smoke = _smoke()


@pytest.fixture(scope="module")
def bundle() -> "smoke.Bundle":
    dist = Path(os.environ.get("HISTOVIEWER_DIST", REPO / "dist"))
    if not smoke.executable(dist).is_file():
        # A skip, not a failure: a run with its own -m expression (e.g. -m "not slow") selects these too.
        pytest.skip(f"no bundle at {smoke.executable(dist)}: run python packaging/build.py first")
    return smoke.Bundle(dist)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke")


@pytest.mark.parametrize("name", list(smoke.CHECKS))
def test_bundle(bundle, work, name: str) -> None:
    print(smoke.CHECKS[name](bundle, work))
