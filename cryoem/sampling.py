"""Distributions of orientations for simulated data: uniform, Euler ranges, preferred views.

The uniform (Haar) sampler is :func:`cryoem.rotations.sample_uniform`, the
primitive every phase uses; this module adds the non-uniform distributions a
simulation can ask for by name (:data:`SAMPLING_MODES`, :func:`sample`).
Angles follow RELION's convention (:mod:`cryoem.rotations`).

Example
-------
>>> from cryoem import sampling
>>> sampling.sample(4, "preferred", seed=0).shape
(4, 4)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .rotations import euler_to_quaternion, sample_uniform

__all__ = ["SAMPLING_MODES", "sample", "sample_euler_ranges", "sample_uniform_angles",
           "sample_preferred_view"]

FloatArray = NDArray[np.float64]

#: Names accepted by :func:`sample` for the distribution of orientations.
SAMPLING_MODES = ("uniform", "euler-haar", "euler-uniform", "preferred")


def sample_euler_ranges(
    n: int,
    rot: tuple[float, float] = (-180.0, 180.0),
    tilt: tuple[float, float] = (0.0, 180.0),
    psi: tuple[float, float] = (-180.0, 180.0),
    seed: int | np.random.Generator | None = None,
) -> FloatArray:
    """Haar measure restricted to RELION Euler ranges (degrees).

    In ZYZ angles the Haar density is ``∝ sin(tilt)``: ``rot`` and ``psi`` are
    uniform and ``cos(tilt)`` is uniform.  Sampling exactly that way needs no
    rejection, however narrow the ranges.
    """
    rng = np.random.default_rng(seed)
    _check_euler_ranges(rot, tilt, psi)
    cos_tilt = rng.uniform(np.cos(np.deg2rad(tilt[1])), np.cos(np.deg2rad(tilt[0])), n)
    angles = np.stack(
        [
            rng.uniform(*rot, n),
            np.rad2deg(np.arccos(np.clip(cos_tilt, -1, 1))),
            rng.uniform(*psi, n),
        ],
        axis=-1,
    )
    return euler_to_quaternion(angles)


def sample_uniform_angles(
    n: int,
    rot: tuple[float, float] = (-180.0, 180.0),
    tilt: tuple[float, float] = (0.0, 180.0),
    psi: tuple[float, float] = (-180.0, 180.0),
    seed: int | np.random.Generator | None = None,
) -> FloatArray:
    """Uniform in the angles themselves within ranges (degrees).

    This is what the seed repository's "coverage" option did.  It is *not*
    uniform on SO(3): views crowd towards the poles ``tilt = 0, 180°``.
    """
    rng = np.random.default_rng(seed)
    _check_euler_ranges(rot, tilt, psi)
    angles = np.stack([rng.uniform(*rot, n), rng.uniform(*tilt, n), rng.uniform(*psi, n)], -1)
    return euler_to_quaternion(angles)


def sample_preferred_view(
    n: int,
    direction: ArrayLike = (0.0, 0.0, 1.0),
    concentration: float = 10.0,
    fraction: float = 0.7,
    seed: int | np.random.Generator | None = None,
) -> FloatArray:
    """A non-uniform "preferred view" distribution.

    A share ``fraction`` of the images are viewed along directions drawn from
    a von Mises–Fisher distribution on the sphere around ``direction``
    (volume coordinates) with ``concentration`` κ (larger is tighter; the
    angular spread is about ``1/√κ`` rad), with a uniform in-plane angle; the
    rest are uniform on SO(3).  This mimics particles that stick to the grid
    in one orientation.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if concentration <= 0:
        raise ValueError(f"concentration must be positive, got {concentration}")
    rng = np.random.default_rng(seed)
    mu = np.asarray(direction, dtype=np.float64)
    mu = mu / np.linalg.norm(mu)
    n_pref = int(round(fraction * n))
    # vMF on S²: the cosine to mu has an explicit inverse CDF.
    u = rng.uniform(size=n_pref)
    cos_angle = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * concentration)) / concentration
    phi = rng.uniform(0, 2 * np.pi, n_pref)
    e1 = np.cross(mu, [1.0, 0.0, 0.0] if abs(mu[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(mu, e1)
    sin_angle = np.sqrt(np.clip(1.0 - cos_angle**2, 0.0, 1.0))
    d = (
        cos_angle[:, None] * mu
        + sin_angle[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    )
    # The third row of RELION's A is (sin t cos r, sin t sin r, cos t).
    angles = np.stack(
        [
            np.rad2deg(np.arctan2(d[:, 1], d[:, 0])),
            np.rad2deg(np.arccos(np.clip(d[:, 2], -1, 1))),
            rng.uniform(-180, 180, n_pref),
        ],
        axis=-1,
    )
    q = np.concatenate([euler_to_quaternion(angles), sample_uniform(n - n_pref, rng)])
    return q[rng.permutation(n)]


def sample(
    n: int, mode: str = "uniform", seed: int | np.random.Generator | None = None, **options: Any
) -> FloatArray:
    """Dispatch to a sampler by name (one of :data:`SAMPLING_MODES`)."""
    samplers = {
        "uniform": sample_uniform,
        "euler-haar": sample_euler_ranges,
        "euler-uniform": sample_uniform_angles,
        "preferred": sample_preferred_view,
    }
    if mode not in samplers:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(samplers)}")
    return samplers[mode](n, seed=seed, **options)


def _check_euler_ranges(rot: tuple[float, float], tilt: tuple[float, float],
                        psi: tuple[float, float]) -> None:
    for name, bounds, low, high in (("rot", rot, -360, 360), ("tilt", tilt, 0, 180),
                                    ("psi", psi, -360, 360)):
        if not (low <= bounds[0] <= bounds[1] <= high):
            raise ValueError(f"{name} range {bounds} must satisfy {low} <= min <= max <= {high}")
