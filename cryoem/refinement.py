"""Refinement: local projection matching from a first guess (gold standard).

Each iteration, for each of two fixed random halves of the images:

1. reconstruct the half's map from its current orientations and shifts
   (:func:`cryoem.reconstruction.reconstruct`);
2. measure the half-map FSC and band-limit the matching to the shell where it
   crosses 0.143 (a little beyond) — the references are low-passed there;
3. for every image, evaluate the reference's central slices at a local grid of
   candidate orientations ``δ·q_i`` around the current one (Fourier space, only
   the frequencies inside the band), multiply by the image's CTF, and
   cross-correlate with the image's spectrum for every in-plane shift at once
   (one inverse FFT per candidate), keeping the best candidate and its shift
   (refined to a fraction of a pixel by a parabola through the peak);
4. shrink the grid.

The halves never see each other's images or maps.  It stops when the
orientations stop moving or after ``iterations``.  Shifts are estimated here:
the true ones are never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import projection, reconstruction, resolution, rotations
from ._progress import progress_bar

__all__ = ["RefinementResult", "refine", "candidate_offsets"]

FloatArray = NDArray[np.float64]


@dataclass
class RefinementResult:
    """Refined orientations and shifts, and what happened each iteration."""

    quaternions: FloatArray
    shifts: FloatArray
    halves: NDArray[np.int64]
    history: list[dict[str, float]] = field(default_factory=list)


def candidate_offsets(step: float, n_axes: int = 20, n_radii: int = 3) -> FloatArray:
    """Small rotations: the identity and turns by ``step·k/n_radii`` (k = 1…n_radii) about
    ``n_axes`` axes spread over the sphere."""
    k = np.arange(n_axes) + 0.5
    z = 1 - 2 * k / n_axes
    phi = np.pi * (1 + 5**0.5) * k
    axes = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], -1)
    turns = [rotations.axis_angle_to_quaternion(axes, step * (r + 1) / n_radii)
             for r in range(n_radii)]
    return np.concatenate([[[1.0, 0.0, 0.0, 0.0]], *turns])


class _Band:
    """Half-plane frequencies with ``|k| < radius``, and their place in the rfft layout."""

    def __init__(self, size: int, radius: float) -> None:
        kv = np.fft.fftfreq(size) * size
        ku = np.fft.rfftfreq(size) * size
        ku_grid, kv_grid = np.meshgrid(ku, kv)
        self.mask = ku_grid**2 + kv_grid**2 < radius**2
        self.ku, self.kv = ku_grid[self.mask], kv_grid[self.mask]
        self.size = size
        # Weight 2 for frequencies standing for their mirror too (k_u > 0).
        self.weights = np.where(self.ku == 0, 1.0, 2.0)

    def points(self, matrices: FloatArray) -> FloatArray:
        scale = 2 * np.pi / self.size
        return scale * (self.ku[None, :, None] * matrices[:, None, 0, :]
                        + self.kv[None, :, None] * matrices[:, None, 1, :])


_OVERSAMPLING = 2  # correlation sampled every half pixel


def _match(reference: NDArray, images_spectra: NDArray, q: FloatArray, shifts: FloatArray,
           ctf: NDArray | None, band: _Band, offsets: FloatArray, max_shift: float,
           batch: int, soft: bool = False,
           shortlist: int = 4) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Best candidate orientation, shift and score for every image.

    The image spectra are first moved back by the current shifts.  Every
    candidate is scored at that shift (one dot product each); the ``shortlist``
    best then get a full shift search: correlations sampled every half pixel
    (zero-padded inverse FFT) around the current shift, the peak refined by a
    parabola.  In ``soft`` mode the orientation is the score-weighted mean of
    all candidates.
    """
    size = band.size
    fine = _OVERSAMPLING * size
    layout = (np.mod(band.kv, fine).astype(np.int64), band.ku.astype(np.int64))
    window = int(np.ceil(max_shift * _OVERSAMPLING))
    keep = np.r_[0:window + 1, fine - window:fine]
    evaluator = projection._SliceEvaluator(reference, precision="single")
    n, k = len(q), len(offsets)
    best_q, best_shift, best_score = np.empty((n, 4)), np.empty((n, 2)), np.empty(n)
    undo = np.exp(2j * np.pi / size * (band.ku * shifts[:, :1] + band.kv * shifts[:, 1:]))
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        count, images = stop - start, np.arange(stop - start)
        candidates = rotations.multiply(offsets[None, :, :], q[start:stop, None, :])  # δ·q
        matrices = rotations.quaternion_to_matrix(candidates.reshape(-1, 4))
        slices = evaluator(band.points(matrices)).reshape(count, k, -1)
        if ctf is not None:
            slices = slices * ctf[start:stop, None, :]
        norms = np.maximum(np.sqrt(np.sum(band.weights * np.abs(slices) ** 2, axis=-1)), 1e-30)
        centred = images_spectra[start:stop] * undo[start:stop]
        at_current = np.real(np.sum(band.weights * centred[:, None, :] * np.conj(slices),
                                    axis=-1)) / norms
        top = np.argsort(-at_current, axis=1)[:, :min(shortlist, k)]
        which, offset, best_score[start:stop] = _shift_search(
            centred, slices[images[:, None], top], norms[images[:, None], top], layout, keep,
            fine)
        best_shift[start:stop] = shifts[start:stop] + offset
        if soft:
            # Expectation over the candidates: a softmax of their scores at the spread
            # of the scores, averaged as quaternions on q_i's side of the double cover.
            spread = np.maximum(at_current.std(axis=1, keepdims=True), 1e-12)
            weights = np.exp((at_current - at_current.max(axis=1, keepdims=True)) / spread)
            aligned = candidates * np.sign(np.sum(candidates * q[start:stop, None, :], -1,
                                                  keepdims=True))
            best_q[start:stop] = rotations.normalize(np.sum(weights[..., None] * aligned, 1))
        else:
            best_q[start:stop] = candidates[images, top[images, which]]
    return rotations.canonical(best_q), best_shift, best_score


def _shift_search(centred: NDArray, slices: NDArray, norms: FloatArray,
                  layout: tuple[NDArray, NDArray], keep: NDArray,
                  fine: int) -> tuple[NDArray, FloatArray, FloatArray]:
    """For each image, the best of its candidate slices over shifts in the window ``keep``.

    Returns the candidate index, the shift correction ``(dx, dy)`` in pixels
    (half-pixel grid refined by a parabola) and the score.
    """
    count, k = slices.shape[:2]
    grid = np.zeros((count, k, fine, fine // 2 + 1), dtype=np.complex64)
    grid[..., layout[0], layout[1]] = centred[:, None, :] * np.conj(slices)
    correlation = np.fft.irfft2(grid, s=(fine, fine))  # ∝ Σ_k Re(Y S̄ e^{+2πik·t/L})
    correlation = correlation[..., keep[:, None], keep[None, :]] / norms[..., None, None]
    flat = correlation.reshape(count, -1)
    index = np.argmax(flat, axis=1)
    side = len(keep)
    which, rest = np.divmod(index, side * side)
    row, col = np.divmod(rest, side)
    images = np.arange(count)
    chosen = correlation[images, which]
    inner_row, inner_col = np.clip(row, 1, side - 2), np.clip(col, 1, side - 2)
    dy = np.where(row == inner_row, _parabola(chosen[images, inner_row - 1, inner_col],
                                              chosen[images, inner_row, inner_col],
                                              chosen[images, inner_row + 1, inner_col]), 0.0)
    dx = np.where(col == inner_col, _parabola(chosen[images, inner_row, inner_col - 1],
                                              chosen[images, inner_row, inner_col],
                                              chosen[images, inner_row, inner_col + 1]), 0.0)
    offset_y = keep[row] - np.where(keep[row] > fine // 2, fine, 0) + dy
    offset_x = keep[col] - np.where(keep[col] > fine // 2, fine, 0) + dx
    offset = np.stack([offset_x, offset_y], axis=-1) / _OVERSAMPLING
    return which, offset, flat[images, index]


def _filter_by_fsc(volume: NDArray, values: FloatArray) -> NDArray:
    """Weight each Fourier shell of a half map by ``√(2·FSC/(1 + FSC))`` (its reliability)."""
    size = volume.shape[0]
    fsc_full = np.clip(2 * values / (1 + values), 0.0, 1.0)
    gains = np.concatenate([[1.0], np.sqrt(fsc_full), [0.0]])  # shell 0 … L/2, beyond
    k = np.fft.fftfreq(size) * size
    kr = np.fft.rfftfreq(size) * size
    shells = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2
                             + kr[None, None, :] ** 2)).astype(np.int64)
    gain = gains[np.minimum(shells, len(gains) - 1)]
    return np.fft.irfftn(np.fft.rfftn(volume) * gain, s=volume.shape, axes=(0, 1, 2))


def _parabola(left: FloatArray, centre: FloatArray, right: FloatArray) -> FloatArray:
    """Offset of the vertex of the parabola through three equally spaced samples."""
    curvature = left - 2 * centre + right
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = 0.5 * (left - right) / curvature
    return np.where(curvature < 0, np.clip(np.nan_to_num(offset), -0.5, 0.5), 0.0)


def refine(
    images: ArrayLike,
    orientations: ArrayLike,
    *,
    shifts: ArrayLike | None = None,
    ctf: "projection.CTFParameters | None" = None,
    pixel_size: float = 1.0,
    iterations: int = 8,
    step: float = 0.15,
    shrink: float = 0.7,
    max_shift: float = 2.0,
    max_shift_total: float = 8.0,
    tolerance: float = 1e-3,
    soft_iterations: int | None = None,
    regularization: float = 1e-3,
    batch: int = 64,
    seed: int = 0,
    progress: bool = False,
    callback: Callable[[int, FloatArray, FloatArray], dict[str, float]] | None = None,
) -> RefinementResult:
    """Refine orientations (and estimate shifts) by gold-standard local projection matching.

    Parameters
    ----------
    orientations
        First guess ``(N, 4)``, in a frame consistent with the images (e.g. resolved
        by :func:`cryoem.commonlines.resolve_frame`).
    shifts
        First guess of the shifts ``(N, 2)`` in pixels (default zero).
    step, shrink
        Angular radius of the first candidate grid (rad) and its factor per iteration.
    max_shift, max_shift_total
        Largest shift correction searched per iteration, and largest shift
        overall, pixels.
    tolerance
        Stop when the mean change of orientation in an iteration falls below it (rad).
    soft_iterations
        During the first ``soft_iterations`` (default: a third of them) each image
        moves to the score-weighted mean of its candidates rather than to the
        best one: far less sensitive to noise while the references are still
        blurred; later iterations take the best candidate.
    regularization
        Tikhonov weight of the half maps' reconstructions (relative to the
        diagonal of the normal operator, see :func:`cryoem.reconstruction.reconstruct`).
    callback
        Called after each iteration with ``(iteration, orientations, shifts)``;
        whatever numbers it returns (e.g. the error against a known truth) go
        into that iteration's history entry.
    """
    images = np.asarray(images, dtype=np.float64)
    q = rotations.canonical(orientations)
    n, size = images.shape[0], images.shape[-1]
    if len(q) != n:
        raise ValueError(f"{n} images but {len(q)} orientations")
    current_shifts = np.zeros((n, 2)) if shifts is None else np.array(shifts, dtype=np.float64)
    halves = np.random.default_rng(seed).permutation(n) % 2
    soft_iterations = -(-iterations // 3) if soft_iterations is None else soft_iterations
    spectra_all = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    history: list[dict[str, float]] = []
    for iteration in progress_bar(range(iterations), total=iterations, enable=progress,
                                  desc="refining"):
        maps = []
        for half in (0, 1):
            chosen = np.flatnonzero(halves == half)
            maps.append(reconstruction.reconstruct(
                images[chosen], q[chosen], shifts=current_shifts[chosen],
                ctf=ctf[chosen] if ctf is not None else None, pixel_size=pixel_size,
                iterations=15, regularization=regularization).data)
        curve = resolution.fsc(maps[0], maps[1], pixel_size, mask=True)
        maps = [_filter_by_fsc(m, curve.values) for m in maps]
        below = np.flatnonzero(curve.values < resolution.THRESHOLD_HALF_MAPS)
        shell = curve.shells[below[0]] if len(below) else curve.shells[-1]
        band = _Band(size, min(size / 2 - 1, max(6.0, 1.2 * shell + 2)))
        new_q, new_shifts = q.copy(), current_shifts.copy()
        offsets = candidate_offsets(step)
        scores = np.empty(n)
        for half in (0, 1):
            chosen = np.flatnonzero(halves == half)
            transfer = (projection.ctf_2d(ctf[chosen], band.ku / (size * pixel_size),
                                          band.kv / (size * pixel_size))
                        if ctf is not None else None)
            new_q[chosen], new_shifts[chosen], scores[chosen] = _match(
                maps[half], spectra_all[chosen][:, band.mask], q[chosen],
                current_shifts[chosen], transfer, band, offsets, max_shift, batch,
                soft=iteration < soft_iterations)
        new_shifts = np.clip(new_shifts, -max_shift_total, max_shift_total)
        moved = float(np.mean(rotations.geodesic_distance(new_q, q)))
        q, current_shifts = new_q, new_shifts
        entry = {"iteration": iteration + 1, "step_rad": step,
                 "soft": float(iteration < soft_iterations),
                 "halfmap_fsc0143_angstrom": curve.resolution(resolution.THRESHOLD_HALF_MAPS),
                 "band_radius_px": float(np.sqrt((band.ku**2 + band.kv**2).max())),
                 "mean_change_rad": moved, "mean_score": float(np.mean(scores))}
        if callback is not None:
            entry.update(callback(iteration + 1, q, current_shifts))
        history.append(entry)
        step *= shrink
        if moved < tolerance and iteration >= soft_iterations:
            break
    return RefinementResult(q, current_shifts, halves, history)
