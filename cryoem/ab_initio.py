"""Ab initio: orientations and a first map from the images alone, without distances.

The baseline that the learned routes must beat, built as cryoSPARC's and
RELION's initial-model jobs are (expectation–maximisation over a grid of
orientations, at low resolution first):

1. The images are Fourier-cropped to a small working box (``work_size``):
   a first guess needs only low frequencies, and every step costs far less.
2. The first map is a reconstruction from random orientations: a blob that
   carries the images' mean radial profile and nothing else.
3. Each iteration draws a fresh uniform grid of orientations (``grid_size``)
   and scores every image against the map's central slices at every grid
   orientation and integer shift, on frequencies below the current band
   (:func:`cryoem.matching.grid_scores`: two real matrix products per batch).
4. Each image keeps its ``candidates`` best orientations, weighted by their
   posterior probability under Gaussian noise whose variance is the image's
   own residual (a broad posterior while the map is poor, a sharp one later:
   the method anneals itself).
5. The map is reconstructed from every image entered once per candidate,
   weighted by that probability (:func:`cryoem.reconstruction.reconstruct`
   with ``weights``), then masked and centred.
6. The band grows from ``start_resolution`` to ``final_resolution`` Å
   (frequency marching); the early iterations use a random subset of the
   images (``subset``), the last ones all of them.

The result is each image's most probable orientation and shift: a first guess
for :func:`cryoem.refinement.refine`, not a final answer.  The map's hand is
arbitrary (a map and its mirror image project to the same images).  Nothing
here reads a ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import projection, reconstruction, rotations, volumes
from ._progress import progress_bar
from .matching import Band, GridSlices, grid_scores, integer_moves

__all__ = ["AbInitioResult", "ab_initio", "posterior_weights"]

FloatArray = NDArray[np.float64]


@dataclass
class AbInitioResult:
    """Most probable orientations and shifts (pixels of the input images), and the map."""

    quaternions: FloatArray
    shifts: FloatArray
    volume: NDArray[np.float32]  # at the working size
    pixel_size: float  # of ``volume``
    history: list[dict[str, float]] = field(default_factory=list)


def posterior_weights(best: FloatArray, energy: FloatArray, dof: float,
                      temperature: float = 1.0) -> FloatArray:
    """Posterior probability of each image's candidates ``(N, C)`` under Gaussian noise.

    With the best scale, an image ``y`` and a unit slice ``s`` scoring ``c = ⟨y, s⟩``
    leave a residual ``‖y‖² − c²``; the noise variance is estimated from the
    best candidate's residual over ``dof`` degrees of freedom, so that
    ``log p ∝ (c² − c_best²)·dof / (2·residual)``; ``temperature`` > 1 flattens it.
    """
    squared = np.maximum(best, 0.0) ** 2
    top = squared.max(axis=1, keepdims=True)
    residual = np.maximum(energy[:, None] - top, 1e-6 * energy[:, None])
    logits = (squared - top) * dof / (2 * residual * temperature)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _crop(data: NDArray, size: int, axes: tuple[int, ...] = (-2, -1)) -> NDArray:
    """Images (or a volume) Fourier-cropped to a ``size`` box along ``axes``."""
    if data.shape[-1] <= size:
        return np.asarray(data, dtype=np.float64)
    return volumes.fourier_resample(data, size, axes=axes).astype(np.float64)


def _radius(resolution: float, size: int, pixel_size: float) -> float:
    """Band radius (pixels of a ``size`` box) of a resolution in Å, at least 3 pixels."""
    return float(np.clip(size * pixel_size / resolution, 3.0, size / 2 - 1))


def _constrain(volume: NDArray, mask: NDArray) -> NDArray:
    """Masked, non-negative below zero clipped, and centred on its centre of mass."""
    masked = volume * mask
    if np.any(masked > 0):
        masked = volumes.center(np.maximum(masked, 0.0)) * mask
    return masked.astype(np.float32)


def ab_initio(
    images: ArrayLike,
    *,
    ctf: "projection.CTFParameters | None" = None,
    pixel_size: float = 1.0,
    work_size: int = 32,
    iterations: int = 24,
    start_resolution: float = 40.0,
    final_resolution: float = 15.0,
    grid_size: int = 3000,
    candidates: int = 5,
    draw: str = "sample",
    subset: int = 1000,
    max_shift: float = 2.0,
    batch: int = 256,
    regularization: float = 1e-2,
    seed: int = 0,
    initial_volume: ArrayLike | None = None,
    progress: bool = False,
    callback: Callable[[int, FloatArray, FloatArray], dict[str, float]] | None = None,
) -> AbInitioResult:
    """Orientations, shifts and a low-resolution map from images alone (see the module).

    Parameters
    ----------
    images
        ``(N, L, L)`` particle images, centred to within ``max_shift`` pixels.
    ctf
        Per-image CTF parameters (for the input's pixel size): they multiply the
        model's slices and are corrected in the reconstruction.
    work_size
        The box the images are Fourier-cropped to (pixels; not larger than ``L``).
    iterations
        Expectation–maximisation iterations.
    start_resolution, final_resolution
        The band's first and last resolution, Å (at least 3 pixels of the working box).
    grid_size
        Uniform orientations drawn afresh each iteration.
    candidates, draw
        Orientations each image enters the reconstruction with: drawn from its
        posterior over the grid (``"sample"``), or its most probable ones
        weighted by their probability (``"top"``).
    subset
        Images drawn (without replacement) for each of the first half of the
        iterations; the second half uses them all.
    max_shift
        Largest shift searched, pixels of the input (integer steps of the working box).
    initial_volume
        A map of the images' box and pixel size to start from (e.g. a first map low-passed
        to ``start_resolution``) instead of the blob that random orientations give.
    callback
        Called after each iteration with ``(iteration, orientations, shifts)``;
        whatever numbers it returns go into that iteration's history entry.
    """
    images = np.asarray(images)
    if draw not in ("sample", "top"):
        raise ValueError(f"draw must be 'sample' or 'top', got {draw!r}")
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected images of shape (N, L, L), got {images.shape}")
    n, size = images.shape[:2]
    work = _crop(images, work_size)
    work_size = work.shape[-1]
    scale = size / work_size  # input pixels per working pixel
    work_pixel = pixel_size * scale
    rng = np.random.default_rng(seed)
    spectra_all = np.fft.rfft2(np.fft.ifftshift(work, axes=(-2, -1)))
    mask = volumes.spherical_mask(work_size)
    q = rotations.sample_uniform(n, seed=rng)
    shifts = np.zeros((n, 2))
    if initial_volume is None:
        volume = _constrain(reconstruction.reconstruct(
            work, q, ctf=ctf, pixel_size=work_pixel, regularization=regularization,
            iterations=10).data, mask)
    else:
        volume = _constrain(_crop(np.asarray(initial_volume), work_size, axes=(-3, -2, -1)),
                            mask)
    moves = integer_moves(max_shift / scale)
    history: list[dict[str, float]] = []
    for iteration in progress_bar(range(iterations), total=iterations, enable=progress,
                                  desc="ab initio"):
        fraction = iteration / max(iterations - 1, 1)
        resolution = start_resolution * (final_resolution / start_resolution) ** fraction
        band = Band(work_size, _radius(resolution, work_size, work_pixel))
        chosen = (np.sort(rng.choice(n, subset, replace=False))
                  if iteration < iterations // 2 and subset < n else np.arange(n))
        grid = rotations.sample_uniform(grid_size, seed=rng)
        slices = GridSlices(volume, band, grid)
        transfer = band.ctf(ctf[chosen], work_pixel) if ctf is not None else None
        mode, mode_moves, mode_probability, picked, weight, picked_moves = _expectation(
            spectra_all[chosen][:, band.mask], band, slices, moves, transfer, candidates, batch,
            draw, rng)
        q[chosen] = grid[mode]
        shifts[chosen] = mode_moves * scale
        repeat = np.repeat(chosen, picked.shape[1])
        volume = _constrain(reconstruction.reconstruct(
            work[repeat], grid[picked.ravel()], shifts=picked_moves.reshape(-1, 2),
            ctf=ctf[repeat] if ctf is not None else None, pixel_size=work_pixel,
            weights=weight.ravel(), regularization=regularization, iterations=10).data,
            mask)
        entry = {"iteration": iteration + 1, "resolution_angstrom": resolution,
                 "band_radius_px": band.radius, "images": float(len(chosen)),
                 "mean_top_probability": float(np.mean(mode_probability))}
        if callback is not None:
            entry.update(callback(iteration + 1, rotations.canonical(q), shifts))
        history.append(entry)
    return AbInitioResult(rotations.canonical(q), shifts, volume, work_pixel, history)


def _expectation(spectra: NDArray, band: Band, grid: GridSlices, moves: FloatArray,
                 ctf: NDArray | None, candidates: int, batch: int, draw: str,
                 rng: np.random.Generator) -> tuple[NDArray, NDArray, FloatArray, NDArray,
                                                    FloatArray, FloatArray]:
    """The E step, by batches of images.

    Returns each image's most probable grid orientation ``(N,)`` and its shift
    (working pixels) and posterior probability; then ``C`` candidates ``(N, C)``
    with their weights and shifts ``(N, C, 2)``: drawn from the posterior over
    the whole grid (``draw="sample"``, weights ``1/C``: an unbiased estimate of
    the marginalisation, however broad the posterior) or the ``C`` most
    probable (``draw="top"``, weighted by their renormalised probability).
    """
    n = len(spectra)
    count = min(candidates, len(grid))
    mode, mode_moves, mode_probability = (np.empty(n, dtype=np.int64), np.empty((n, 2)),
                                          np.empty(n))
    picked, weight, picked_moves = (np.empty((n, count), dtype=np.int64), np.empty((n, count)),
                                    np.empty((n, count, 2)))
    dof = float(np.sum(band.weights))
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        rows = np.arange(stop - start)[:, None]
        scores, _, energy = grid_scores(spectra[start:stop], band, grid, moves,
                                        ctf=None if ctf is None else ctf[start:stop])
        move_of = np.argmax(scores, axis=1)  # (b, G): the best shift of each orientation
        best = np.take_along_axis(scores, move_of[:, None, :], axis=1)[:, 0, :]
        posterior = posterior_weights(best, energy, dof)
        mode[start:stop] = np.argmax(posterior, axis=1)
        mode_probability[start:stop] = posterior[rows[:, 0], mode[start:stop]]
        mode_moves[start:stop] = moves[move_of[rows[:, 0], mode[start:stop]]]
        if draw == "sample":
            cumulative = np.cumsum(posterior, axis=1)
            cumulative /= cumulative[:, -1:]
            u = rng.random((stop - start, count))
            chosen = np.minimum(np.sum(cumulative[:, None, :] < u[:, :, None], axis=-1),
                                len(grid) - 1)
            weight[start:stop] = 1.0 / count
        else:
            chosen = np.argpartition(-best, count - 1, axis=1)[:, :count]
            top = posterior[rows, chosen]
            weight[start:stop] = top / top.sum(axis=1, keepdims=True)
        picked[start:stop] = chosen
        picked_moves[start:stop] = moves[move_of[rows, chosen]]
    return mode, mode_moves, mode_probability, picked, weight, picked_moves
