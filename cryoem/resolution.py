"""Resolution: Fourier shell correlation between maps and the resolution it implies.

* :func:`fsc` — correlation of two maps' Fourier coefficients in shells of
  width one Fourier pixel, out to Nyquist; optionally after a soft spherical
  mask, with the phase-randomisation correction of Chen et al. (2013) that
  removes the correlation the mask itself creates.
* :func:`resolution` — where the curve first falls below a threshold, in Å:
  0.5 against a ground-truth map, 0.143 between gold-standard half maps.

Maps compared with the truth must be in the truth's frame: reconstruct from
orientations aligned with the *physical* transform of :mod:`cryoem.alignment`
(a global volume rotation and the handedness), never the O(4) one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .volumes import spherical_mask

__all__ = ["FSC", "fsc", "resolution", "THRESHOLD_TRUTH", "THRESHOLD_HALF_MAPS"]

#: FSC threshold against a ground-truth map.
THRESHOLD_TRUTH = 0.5
#: FSC threshold between gold-standard half maps.
THRESHOLD_HALF_MAPS = 0.143


@dataclass
class FSC:
    """An FSC curve.

    Attributes
    ----------
    shells
        Shell radii in Fourier pixels ``1 … L/2``.
    values
        Correlation per shell.
    pixel_size
        Å per voxel, to turn shells into resolutions.
    size
        Box edge ``L``.
    """

    shells: NDArray[np.float64]
    values: NDArray[np.float64]
    pixel_size: float
    size: int

    @property
    def frequencies(self) -> NDArray[np.float64]:
        """Spatial frequency of each shell, 1/Å."""
        return self.shells / (self.size * self.pixel_size)

    def resolution(self, threshold: float = THRESHOLD_TRUTH) -> float:
        """Resolution in Å where the curve first drops below ``threshold`` (see :func:`resolution`)."""
        return resolution(self, threshold)


def _shell_index(size: int) -> NDArray[np.int64]:
    k = np.fft.fftfreq(size) * size
    kr = np.fft.rfftfreq(size) * size
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
    return np.rint(radius).astype(np.int64)


def _shell_correlation(a: NDArray, b: NDArray, shells: NDArray[np.int64],
                       count: int) -> NDArray[np.float64]:
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    # Every rfft coefficient with 0 < k_x < L/2 stands for itself and its mirror.
    weight = np.full(fa.shape, 2.0)
    weight[..., 0] = 1.0
    if a.shape[0] % 2 == 0:
        weight[..., -1] = 1.0
    flat = shells.ravel()

    def total(values: NDArray) -> NDArray:
        return np.bincount(flat, weights=(weight * values).ravel(), minlength=count + 1)

    cross = total(np.real(fa * np.conj(fb)))
    power = total(np.abs(fa) ** 2) * total(np.abs(fb) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = cross / np.sqrt(power)
    return np.nan_to_num(values[1:count + 1])


def _randomize_phases(volume: NDArray, shells: NDArray[np.int64], beyond: int,
                      rng: np.random.Generator) -> NDArray:
    spectrum = np.fft.rfftn(volume)
    phases = np.exp(2j * np.pi * rng.uniform(size=spectrum.shape))
    spectrum = np.where(shells > beyond, spectrum * phases, spectrum)
    return np.fft.irfftn(spectrum, s=volume.shape, axes=(0, 1, 2))


def fsc(map1: ArrayLike, map2: ArrayLike, pixel_size: float = 1.0, mask: bool = False,
        mask_radius: float | None = None, seed: int = 0) -> FSC:
    """Fourier shell correlation of two ``(L, L, L)`` maps.

    With ``mask``, both maps are multiplied by a soft spherical mask first
    (radius ``mask_radius`` voxels, default inside the box) and the
    correlation the mask induces is removed by phase randomisation: phases
    beyond the shell where the unmasked FSC drops below 0.8 are randomised in
    both maps, and ``FSC = (FSC_masked − FSC_random) / (1 − FSC_random)`` there.
    """
    a = np.asarray(map1, dtype=np.float64)
    b = np.asarray(map2, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs two cubic maps of the same size, got {a.shape} and {b.shape}")
    size = a.shape[0]
    count = size // 2
    shells = _shell_index(size)
    if not mask:
        values = _shell_correlation(a, b, shells, count)
    else:
        soft = spherical_mask(size, mask_radius)
        unmasked = _shell_correlation(a, b, shells, count)
        below = np.flatnonzero(unmasked < 0.8)
        beyond = int(below[0]) + 1 if len(below) else count
        masked = _shell_correlation(a * soft, b * soft, shells, count)
        rng = np.random.default_rng(seed)
        random_a = _randomize_phases(a, shells, beyond, rng)
        random_b = _randomize_phases(b, shells, beyond, rng)
        randomized = _shell_correlation(random_a * soft, random_b * soft, shells, count)
        values = masked.copy()
        outer = np.arange(1, count + 1) > beyond
        with np.errstate(invalid="ignore", divide="ignore"):
            corrected = (masked - randomized) / (1 - randomized)
        values[outer] = np.nan_to_num(corrected[outer])
    return FSC(np.arange(1, count + 1, dtype=np.float64), values, float(pixel_size), size)


def resolution(curve: FSC, threshold: float = THRESHOLD_TRUTH) -> float:
    """Resolution in Å: the first crossing of ``threshold``, linearly interpolated between shells.

    A curve that never drops below the threshold gives the Nyquist resolution
    (``2 × pixel size``); one that starts below it gives ``inf``.
    """
    values, shells = curve.values, curve.shells
    below = np.flatnonzero(values < threshold)
    if len(below) == 0:
        return float(curve.size * curve.pixel_size / shells[-1])
    first = below[0]
    if first == 0:
        return float("inf")
    v0, v1 = values[first - 1], values[first]
    shell = shells[first - 1] + (v0 - threshold) / (v0 - v1) * (shells[first] - shells[first - 1])
    return float(curve.size * curve.pixel_size / shell)
