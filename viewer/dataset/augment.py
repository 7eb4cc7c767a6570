"""Training augmentation: the 8 flips/rotations, colour jitter and HED stain jitter."""

from __future__ import annotations

import numpy as np


def dihedral(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random one of the 8 flips/90-degree rotations per patch (histology has no up or left)."""
    out = np.empty_like(patches)
    k = rng.integers(0, 4, size=len(patches))
    flip = rng.random(len(patches)) < 0.5
    for i in range(len(patches)):
        p = np.rot90(patches[i], k[i])
        out[i] = p[:, ::-1] if flip[i] else p
    return out


def colour_jitter(x: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Mild stain/colour jitter on float patches in [0, 1] (in place-safe, returns a new array).

    Per patch: per-channel gain 1 +- 0.06, per-channel offset +- 0.03, contrast 1 +- 0.1 around
    the patch mean, then clipped to [0, 1]. Mimics stain-intensity and scanner differences.
    """
    n = len(x)
    if n == 0 or strength <= 0:
        return x
    gain = 1.0 + strength * rng.uniform(-0.06, 0.06, size=(n, 1, 1, 3))
    offset = strength * rng.uniform(-0.03, 0.03, size=(n, 1, 1, 3))
    contrast = 1.0 + strength * rng.uniform(-0.10, 0.10, size=(n, 1, 1, 1))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    out = (x - mean) * contrast + mean
    out = out * gain + offset
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston 2001, as in scikit-image).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def stain_jitter(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.1, bias: float = 0.02) -> np.ndarray:
    """HED stain augmentation (Tellez et al. 2018) on float patches in [0, 1].

    Pixels go to optical density, are unmixed into haematoxylin/eosin/DAB concentrations, each
    concentration is scaled by ``1 + U(-sigma, sigma)`` and shifted by ``U(-bias, bias)`` per
    patch, and mixed back. Simulates paler/darker nuclear and cytoplasmic staining.
    """
    n = len(x)
    if n == 0 or sigma <= 0 and bias <= 0:
        return x
    od = -np.log(np.clip(x, 1.0 / 255.0, 1.0))
    conc = od @ _HED_FROM_RGB
    alpha = 1.0 + rng.uniform(-sigma, sigma, size=(n, 1, 1, 3))
    beta = rng.uniform(-bias, bias, size=(n, 1, 1, 3))
    od2 = (conc * alpha + beta) @ _RGB_FROM_HED
    return np.clip(np.exp(-od2), 0.0, 1.0).astype(np.float32)
