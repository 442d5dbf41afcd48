"""Projection matching's shared pieces: a band of image frequencies, and scores on a grid.

Used by :mod:`cryoem.ab_initio` (every image against a grid of orientations)
and :mod:`cryoem.refinement` (its global passes, :func:`global_match`, and its local ones,
:func:`local_match`: each image against small turns of its own orientation; each task,
:func:`match_piece`).  The model of
an image's spectrum ``y`` is ``a·c·s``: a scale, the image's CTF ``c`` and the map's
central slice ``s`` at the candidate orientation, moved by the candidate
shift; candidates are ranked by ``⟨y, c·s⟩ / ‖c·s‖`` over the band's half
plane (each frequency with ``k_u > 0`` counted twice, for its mirror).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from . import projection, rotations

if TYPE_CHECKING:
    from . import stacks

__all__ = ["Band", "GridSlices", "integer_moves", "grid_scores", "slice_norms",
           "candidate_offsets", "candidate_scores", "local_match", "global_match", "match_piece"]

FloatArray = NDArray[np.float64]


class Band:
    """Half-plane image frequencies with ``|k| < radius`` pixels, in the rfft layout."""

    def __init__(self, size: int, radius: float) -> None:
        kv = np.fft.fftfreq(size) * size
        ku = np.fft.rfftfreq(size) * size
        ku_grid, kv_grid = np.meshgrid(ku, kv)
        self.mask = ku_grid**2 + kv_grid**2 < radius**2
        self.ku, self.kv = ku_grid[self.mask], kv_grid[self.mask]
        self.size = size
        # Weight 2 for frequencies standing for their mirror too (k_u > 0).
        self.weights = np.where(self.ku == 0, 1.0, 2.0)

    @property
    def radius(self) -> float:
        """The largest frequency in the band, pixels."""
        return float(np.sqrt((self.ku**2 + self.kv**2).max()))

    def points(self, matrices: FloatArray) -> FloatArray:
        """Volume frequencies ``(B, K, 3)`` (radians per voxel) of the band's central slices."""
        # One matrix product (K, 2) @ (B, 2, 3): ~20x faster than broadcasting the sum.
        frequencies = (2 * np.pi / self.size) * np.stack([self.ku, self.kv], axis=1)
        return frequencies @ np.asarray(matrices)[:, :2, :]

    def ctf(self, params: "projection.CTFParameters", pixel_size: float) -> NDArray:
        """Each image's CTF on the band ``(N, K)``, for pixels of ``pixel_size`` Å."""
        box_angstrom = self.size * pixel_size
        return projection.ctf_2d(params, self.ku / box_angstrom, self.kv / box_angstrom)

    def shift_phases(self, shifts: FloatArray) -> NDArray:
        """Factors ``(…, K)`` that move spectra back by ``shifts`` ``(…, 2)`` pixels."""
        return np.exp(2j * np.pi / self.size * (self.ku * shifts[..., :1]
                                                + self.kv * shifts[..., 1:]))


def integer_moves(max_shift: float) -> FloatArray:
    """All integer shifts ``(T, 2)`` within ``±max_shift`` pixels along each axis."""
    steps = np.arange(-np.floor(max_shift), np.floor(max_shift) + 1)
    return np.stack(np.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)


class GridSlices:
    """A map's central slices on a band at a grid of orientations, laid out for matrix products.

    ``real`` and ``imag`` ``(K, G)`` are the slices' parts and ``power`` ``(K, G)``
    their squared moduli (for each image's CTF-weighted norm).
    """

    def __init__(self, volume: NDArray, band: Band, quaternions: FloatArray) -> None:
        evaluator = projection._SliceEvaluator(volume, precision="single")
        values = evaluator(band.points(rotations.quaternion_to_matrix(quaternions))).T
        self.real = np.ascontiguousarray(values.real, dtype=np.float32)
        self.imag = np.ascontiguousarray(values.imag, dtype=np.float32)
        self.power = np.ascontiguousarray(np.abs(values) ** 2, dtype=np.float32)

    def __len__(self) -> int:
        return self.real.shape[1]


def grid_scores(spectra: NDArray, band: Band, grid: GridSlices, moves: FloatArray,
                shifts: FloatArray | None = None,
                ctf: NDArray | None = None) -> tuple[NDArray, NDArray, FloatArray]:
    """Normalised correlation of every image with every grid slice at every trial shift.

    The model of an image ``y`` is ``a·c·s`` (a scale, its CTF ``c``, a slice ``s``):
    the score is ``⟨y, c·s⟩ / ‖c·s‖`` (weighted over the half plane), and
    ``‖y‖² − score²`` the residual at the best scale.

    Parameters
    ----------
    spectra
        The images' band-limited spectra ``(B, K)``.
    moves
        Trial shifts ``(T, 2)``, added to ``shifts`` ``(B, 2)`` (default zero).
    ctf
        The images' CTF on the band ``(B, K)``.

    Returns
    -------
    scores, weighted, energy
        Scores ``(B, T, G)``; the moved spectra times the CTF and the band's
        weights ``(B, T, K)`` (to score other slices the same way); ``‖y‖²`` ``(B,)``.
        Two real matrix products per call (hand-written: a loop over candidates
        would cost the grid size times more).
    """
    count = len(spectra)
    trial = moves[None, :, :] if shifts is None else shifts[:, None, :] + moves[None, :, :]
    weighted = spectra[:, None, :] * band.shift_phases(trial) * band.weights
    if ctf is not None:
        weighted = weighted * ctf[:, None, :]
    weighted = weighted.astype(np.complex64)
    flat = weighted.reshape(count * len(moves), -1)
    scores = (flat.real @ grid.real + flat.imag @ grid.imag).reshape(count, len(moves), -1)
    scores /= slice_norms(grid.power, band, ctf)[:, None, :]
    energy = np.sum(band.weights * np.abs(spectra) ** 2, axis=-1)
    return scores, weighted, energy


def slice_norms(power: NDArray, band: Band, ctf: NDArray | None) -> NDArray:
    """``‖c_i·s_g‖`` ``(B, G)`` (``(1, G)`` without CTF) from the slices' power ``(K, G)``."""
    if ctf is None:
        norms = (band.weights.astype(np.float32) @ power)[None, :]
    else:
        norms = (band.weights * ctf**2).astype(np.float32) @ power
    return np.sqrt(np.maximum(norms, 1e-30))


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


_OVERSAMPLING = 2  # correlation sampled every half pixel


def candidate_scores(slices_of: "projection._SliceEvaluator", band: Band, centred: NDArray,
                     candidates: FloatArray, ctf: NDArray | None
                     ) -> tuple[NDArray, FloatArray, FloatArray]:
    """Each image's candidate slices ``c·s`` ``(B, K, F)`` (``candidates`` ``(B, K, 4)``, ``ctf``
    ``(B, F)`` or ``None``), their norms and the images' scores ``⟨y, c·s⟩ / ‖c·s‖``
    ``(B, K)`` (``centred``: the spectra moved back by their shifts)."""
    count, k = candidates.shape[:2]
    matrices = rotations.quaternion_to_matrix(candidates.reshape(-1, 4))
    slices = slices_of(band.points(matrices)).reshape(count, k, -1)
    real = slices.real.dtype  # the evaluator's precision (single: float32) throughout
    if ctf is not None:
        slices *= ctf[:, None, :].astype(real)
    # Real matrix products on the (re, im) pairs, Re(y·s̄) = y_re·s_re + y_im·s_im: 4-8x faster
    # than complex broadcasting in a micro-benchmark (by hand: NumPy has no weighted complex
    # inner product).
    pairs = slices.view(real)
    weights = np.repeat(band.weights, 2).astype(real)
    norms = np.maximum(np.sqrt((pairs * pairs) @ weights), 1e-30).astype(np.float64)
    weighted = (centred * band.weights).astype(slices.dtype).view(real)
    scores = np.matmul(pairs, weighted[:, :, None])[..., 0] / norms
    return slices, norms, scores


def local_match(reference: NDArray, images_spectra: NDArray, q: FloatArray, shifts: FloatArray,
           ctf: NDArray | None, band: Band, offsets: FloatArray, max_shift: float,
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
    # In spatial order (-window … window): the parabola needs each sample's true neighbours.
    keep = np.r_[fine - window:fine, 0:window + 1]
    evaluator = projection._SliceEvaluator(reference, precision="single")
    n, k = len(q), len(offsets)
    best_q, best_shift, best_score = np.empty((n, 4)), np.empty((n, 2)), np.empty(n)
    undo = band.shift_phases(shifts)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        images = np.arange(stop - start)
        candidates = rotations.multiply(offsets[None, :, :], q[start:stop, None, :])  # δ·q
        centred = images_spectra[start:stop] * undo[start:stop]
        slices, norms, at_current = candidate_scores(
            evaluator, band, centred, candidates, None if ctf is None else ctf[start:stop])
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


def global_match(reference: NDArray, images_spectra: NDArray, q: FloatArray,
                  shifts: FloatArray, ctf: NDArray | None, band: Band, grid: FloatArray,
                  offsets: FloatArray, max_shift: float, batch: int,
                  reach: float = np.pi, keep_current: bool = True,
                  grid_slices: GridSlices | None = None, margin: float = 0.0,
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Best orientation of a fixed SO(3) grid or of the local grid, and integer shift, per image.

    Each image's band-limited spectrum, moved back by its current shift plus
    every integer offset within ``max_shift`` and multiplied by its CTF, is
    correlated with the reference's central slice at every grid orientation
    (within ``reach`` rad of the image's current one): two real matrix
    products per batch (hand-written because the per-candidate loop of
    :func:`local_match` would cost the grid size times more).  The local candidates
    ``δ·q_i`` (``offsets``) compete on the same terms: an image escapes to a far
    grid orientation only when nothing near its own scores as well (unless
    ``keep_current`` is false: then the grid alone decides), and by more than
    ``margin`` (relative): the best of many grid orientations beats the best of a few
    local ones by chance alone when the images are noisy.
    """
    evaluator = projection._SliceEvaluator(reference, precision="single")
    grid_slices = grid_slices or GridSlices(reference, band, grid)
    moves = integer_moves(max_shift)
    n, k = len(q), len(offsets)
    best_q, best_shift, best_score = np.empty((n, 4)), np.empty((n, 2)), np.empty(n)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        count, rows = stop - start, np.arange(stop - start)
        transfer = ctf[start:stop] if ctf is not None else None
        scores, spectra, _ = grid_scores(images_spectra[start:stop], band, grid_slices, moves,
                                         shifts[start:stop], transfer)
        if reach < np.pi:
            near = np.abs(q[start:stop] @ grid.T) >= np.cos(reach / 2)  # d(q, g) ≤ reach
            scores = np.where(near[:, None, :], scores, -np.inf)
        local = rotations.multiply(offsets[None, :, :], q[start:stop, None, :])  # (b, k, 4)
        local_slices = evaluator(band.points(rotations.quaternion_to_matrix(
            local.reshape(-1, 4)))).reshape(count, k, -1)
        transfer_power = (1.0 if transfer is None else transfer[:, None, :] ** 2)
        local_norms = np.sqrt(np.maximum(np.sum(band.weights * transfer_power
                                                * np.abs(local_slices) ** 2, -1), 1e-30))
        local_scores = np.real(np.einsum("btf,bkf->btk", spectra, np.conj(local_slices))) \
            / local_norms[:, None, :]
        grid_shift, grid_which = np.divmod(np.argmax(scores.reshape(count, -1), 1), len(grid))
        local_shift, local_which = np.divmod(np.argmax(local_scores.reshape(count, -1), 1), k)
        grid_best = scores[rows, grid_shift, grid_which]
        local_best = local_scores[rows, local_shift, local_which]
        stay = (local_best * (1 + margin) >= grid_best) & keep_current
        best_q[start:stop] = np.where(stay[:, None], local[rows, local_which], grid[grid_which])
        best_shift[start:stop] = shifts[start:stop] + moves[np.where(stay, local_shift,
                                                                    grid_shift)]
        best_score[start:stop] = np.maximum(local_best, grid_best)
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
    if side < 3:  # a window of one shift (max_shift 0): no neighbours to refine with
        dy = dx = np.zeros(count)
    else:
        inner_row, inner_col = np.clip(row, 1, side - 2), np.clip(col, 1, side - 2)
        dy = np.where(row == inner_row, _parabola(chosen[images, inner_row - 1, inner_col],
                                                  chosen[images, inner_row, inner_col],
                                                  chosen[images, inner_row + 1, inner_col]),
                      0.0)
        dx = np.where(col == inner_col, _parabola(chosen[images, inner_row, inner_col - 1],
                                                  chosen[images, inner_row, inner_col],
                                                  chosen[images, inner_row, inner_col + 1]),
                      0.0)
    offset_y = keep[row] - np.where(keep[row] > fine // 2, fine, 0) + dy
    offset_x = keep[col] - np.where(keep[col] > fine // 2, fine, 0) + dx
    offset = np.stack([offset_x, offset_y], axis=-1) / _OVERSAMPLING
    return which, offset, flat[images, index] * fine * fine  # undo irfft2's 1/fine²


def _parabola(left: FloatArray, centre: FloatArray, right: FloatArray) -> FloatArray:
    """Offset of the vertex of the parabola through three equally spaced samples."""
    curvature = left - 2 * centre + right
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = 0.5 * (left - right) / curvature
    return np.where(curvature < 0, np.clip(np.nan_to_num(offset), -0.5, 0.5), 0.0)


def match_piece(piece: tuple, images: "NDArray | stacks.ImageStack", reference: NDArray,
                settings: dict) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Refinement's task: match a chunk of one half's images against that half's reference.

    ``piece`` holds the chunk's image indices, orientations, shifts and CTFs; ``settings``
    the band, the candidates and (global search) the grid and its slices.  Returns the
    new orientations, shifts, scores and correlations (score over the image's norm).
    """
    indices, q, shifts, ctf = piece
    options = dict(settings)
    band, pixel_size = options.pop("band"), options.pop("pixel_size")
    chunk_images = np.asarray(images[indices], dtype=np.float64)
    spectra = np.fft.rfft2(np.fft.ifftshift(chunk_images, axes=(-2, -1)))[:, band.mask]
    transfer = band.ctf(ctf, pixel_size) if ctf is not None else None
    common = (reference, spectra, q, shifts, transfer, band)
    if "grid" in options:
        found = global_match(*common, options["grid"], options["offsets"],
                             options["max_shift"], options["batch"], options["reach"],
                             options["keep_current"], options["grid_slices"],
                             options.get("margin", 0.0))
    else:
        found = local_match(*common, options["offsets"], options["max_shift"], options["batch"],
                            soft=options["soft"])
    energy = np.sqrt(np.sum(band.weights * np.abs(spectra) ** 2, axis=-1))
    return (*found, found[2] / np.maximum(energy, 1e-30))
