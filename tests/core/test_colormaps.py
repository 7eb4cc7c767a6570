"""viewer.colormaps: named 256-entry uint8 tables, no Qt, no matplotlib at import."""

from __future__ import annotations

import numpy as np
import pytest

from viewer.colormaps import COLORMAPS, DEFAULT_COLORMAP, apply_colormap, check_colormap, colormap_lut, colour_index


@pytest.mark.parametrize("name", COLORMAPS)
def test_every_colormap_is_a_256_entry_uint8_table(name):
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert len(np.unique(lut, axis=0)) > 100  # a real ramp, not a few colours
    assert not lut.flags.writeable  # shared: callers must copy
    rgba = colormap_lut(name, alpha=200)
    assert rgba.shape == (256, 4) and (rgba[:, 3] == 200).all()
    np.testing.assert_array_equal(rgba[:, :3], lut)


def test_default_and_names():
    assert DEFAULT_COLORMAP in COLORMAPS
    assert {"inferno", "viridis", "magma", "jet", "turbo", "reds"} <= set(COLORMAPS)
    assert check_colormap("viridis") == "viridis"
    with pytest.raises(ValueError, match="unknown colormap 'nope'; choose one of inferno"):
        colormap_lut("nope")
    with pytest.raises(ValueError):
        colormap_lut("inferno", alpha=300)


@pytest.mark.parametrize("name, mpl_name", [("inferno", "inferno"), ("viridis", "viridis"), ("turbo", "turbo"), ("reds", "Reds"), ("jet", "jet")])
def test_tables_equal_matplotlib_sampling(name, mpl_name):
    matplotlib = pytest.importorskip("matplotlib")
    expected = np.rint(matplotlib.colormaps[mpl_name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    assert np.abs(colormap_lut(name).astype(int) - expected).max() <= 1


def test_colour_index_and_apply():
    values = np.array([0.0, 0.5, 1.0, 1.5, -1.0, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(colour_index(values), [0, 128, 255, 255, 0, 0])
    lut = colormap_lut("viridis")
    np.testing.assert_array_equal(apply_colormap(values[:3], "viridis"), lut[[0, 128, 255]])
    assert apply_colormap(np.zeros((4, 5)), "gray").shape == (4, 5, 3)
