"""Refinement: projection matching from a first guess, global then local (gold standard).

The first iterations (``global_iterations``, default 2) search all of SO(3):
a fixed grid of uniform orientations and integer shifts, on low frequencies,
matched by two matrix products per batch of images (see :func:`refine`).  A
learned first guess 0.3 rad off is often beyond the reach of a local grid and
the images would stay where they are; the global pass moves them into the
basin of the right orientation (an image keeps its own when it scores better).
From a low-passed start map (``initial_map``, the gold standard), the first of them is
instead expectation–maximisation on each half alone (:func:`cryoem.ab_initio.ab_initio`).
Then each local iteration, for each of two fixed random halves of the images:

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

The halves never see each other's images or maps (in the global passes too), except for
the rotation that turns the second half's map onto the first's
(:func:`cryoem.gold_standard.frame_between`).
It stops when the orientations stop moving or after ``iterations`` local
iterations.  Shifts are estimated here:
the true ones are never read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import (distributed, gold_standard, projection, reconstruction, resolution, rotations,
               scoring, stacks, volumes)
from .matching import Band, GridSlices, grid_scores, integer_moves
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
    #: Each image's match score in the last iteration: ``⟨y, c·s⟩ / (‖y‖·‖c·s‖)`` on that
    #: iteration's band, the correlation of the image with its best CTF-multiplied slice.
    scores: FloatArray | None = None


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


def _match(reference: NDArray, images_spectra: NDArray, q: FloatArray, shifts: FloatArray,
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
    keep = np.r_[0:window + 1, fine - window:fine]
    evaluator = projection._SliceEvaluator(reference, precision="single")
    n, k = len(q), len(offsets)
    best_q, best_shift, best_score = np.empty((n, 4)), np.empty((n, 2)), np.empty(n)
    undo = band.shift_phases(shifts)
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


def _global_match(reference: NDArray, images_spectra: NDArray, q: FloatArray,
                  shifts: FloatArray, ctf: NDArray | None, band: Band, grid: FloatArray,
                  offsets: FloatArray, max_shift: float, batch: int,
                  reach: float = np.pi, keep_current: bool = True,
                  grid_slices: GridSlices | None = None,
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Best orientation of a fixed SO(3) grid or of the local grid, and integer shift, per image.

    Each image's band-limited spectrum, moved back by its current shift plus
    every integer offset within ``max_shift`` and multiplied by its CTF, is
    correlated with the reference's central slice at every grid orientation
    (within ``reach`` rad of the image's current one): two real matrix
    products per batch (hand-written because the per-candidate loop of
    :func:`_match` would cost the grid size times more).  The local candidates
    ``δ·q_i`` (``offsets``) compete on the same terms: an image escapes to a far
    grid orientation only when nothing near its own scores as well (unless
    ``keep_current`` is false: then the grid alone decides).
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
        stay = (local_best >= grid_best) & keep_current
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
    return which, offset, flat[images, index] * fine * fine  # undo irfft2's 1/fine²


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
    global_iterations: int = 2,
    global_candidates: int = 10000,
    global_radius: float = 8.0,
    global_reach: float = np.pi,
    initial_map: ArrayLike | None = None,
    initial_resolution: float = 30.0,
    start_iterations: int = 12,
    start_final_resolution: float = 9.0,
    align_halves: bool | None = None,
    angular_band: float | None = 1.5,
    batch: int = 64,
    chunk: int = 1024,
    client: Any = None,
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
    iterations
        Local iterations at most (the global ones come first, on top).
    soft_iterations
        During the first ``soft_iterations`` local iterations (default: a third) each image
        moves to the score-weighted mean of its candidates rather than to the
        best one: far less sensitive to noise while the references are still
        blurred; later iterations take the best candidate.
    regularization
        Tikhonov weight of the half maps' reconstructions (relative to the
        diagonal of the normal operator, see :func:`cryoem.reconstruction.reconstruct`).
    global_iterations, global_candidates, global_radius, global_reach
        ``global_iterations`` iterations first search all of SO(3) (or the part
        within ``global_reach`` rad of each image's orientation) rather
        than around each image: ``global_candidates`` uniform orientations
        (fixed by ``seed``) and integer shifts within ``max_shift``, matched on
        frequencies below ``global_radius`` pixels (or the FSC band if lower);
        the local grid around each image competes too, so an image escapes
        only when nothing near its orientation scores as well.  This reaches
        first guesses that are too far off for the local grid;
        ``global_iterations=0`` turns it off.
    initial_map, initial_resolution
        Gold standard from the start: the first iteration starts both halves from
        ``initial_map`` (the first guess's map, of the images' box and
        pixel size) low-passed to ``initial_resolution`` Å (finer in a small box: see
        :func:`cryoem.gold_standard.start_resolution`), searching all orientations (see
        ``start_iterations``; the first guess's orientations and shifts are not used), so that
        from then on each half's orientations and map depend only on its own
        images and on detail coarser than ``initial_resolution`` (and on the
        FSC between the halves, which sets both halves' band and filter, as in
        RELION): the half-map FSC is not inflated by a shared start.  Without it, the halves start
        from the first guess's orientations, which all images shaped together.
    start_iterations, start_final_resolution
        With ``initial_map``: that first iteration is, for each half on its own,
        ``start_iterations`` iterations of expectation–maximisation from the low-passed
        start (:func:`cryoem.gold_standard.start_half`: each image enters the half's map at
        several orientations drawn from its posterior, the band marching from
        ``initial_resolution`` to ``start_final_resolution`` Å), rather than one hard
        match against the start map: at SNR 1/16 a hard match on a 30 Å band assigns many
        images at random and refinement never recovers them (4AKE, 1,000 images: 0.41 rad
        after refinement against 0.15 with this start).  ``0``: the hard match on the
        global grid alone.
    align_halves
        Turn the second half (its map and orientations) onto the first half's frame each
        time the half maps are reconstructed: independent halves refined from a blurred
        start can settle a few hundredths of a radian apart as a whole (4AKE noiseless,
        from the ``start_iterations`` start: each half 0.005 rad from the truth, both
        together 0.021).  The halves share these three numbers (the rotation) and nothing
        else; the history records the turn (``halves_turn_rad``).  Default: with
        ``initial_map`` (halves from a shared first guess start in one frame).  The turn is
        found by a Nelder–Mead search, which amplifies rounding: reruns on one machine are
        bit-identical, but reconstructions summed in another order (another machine or
        thread count) can end up to ~1e-4 rad apart, not 1e-8.
    angular_band
        The local iterations match on frequencies below ``angular_band / step``
        pixels at most (and below the FSC's band): beyond it, a slice turned by
        the grid's step no longer correlates with the image, and those
        frequencies add noise but no pull toward the right orientation — at low
        SNR the images would not move.  ``None``: the FSC's band alone.
    images
        An array, or a :class:`cryoem.stacks.ImageStack` read a chunk at a time.
    batch, chunk
        Images matched per vectorised batch, and per task (``chunk``: what one Dask task
        or one in-process step reads and matches).
    client
        A ``dask.distributed.Client`` (:func:`cryoem.distributed.connect`): each half's
        chunks are matched as tasks on its workers (the references are sent to each
        worker once per iteration), and the half maps are reconstructed there too; the
        results are those of the in-process run.
    callback
        Called after each iteration with ``(iteration, orientations, shifts)``;
        whatever numbers it returns (e.g. the error against a known truth) go
        into that iteration's history entry.

    Each history entry holds the iteration's band, step, half-map FSC 0.143 (Å), turn
    between the halves, mean orientation change and score, and its wall time
    (``seconds``, the callback's excluded).
    """
    images = stacks.as_images(images)
    q = rotations.canonical(orientations)
    n, size = images.shape[0], images.shape[-1]
    if len(q) != n:
        raise ValueError(f"{n} images but {len(q)} orientations")
    current_shifts = np.zeros((n, 2)) if shifts is None else np.array(shifts, dtype=np.float64)
    halves = reconstruction.split_halves(n, seed)
    soft_iterations = -(-iterations // 3) if soft_iterations is None else soft_iterations
    soft_iterations += global_iterations  # counted from the first iteration
    iterations += global_iterations
    grid = rotations.sample_uniform(global_candidates, seed=np.random.default_rng([seed, 1]))
    start_map = None
    if initial_map is not None:
        if global_iterations < 1:
            raise ValueError("a start from initial_map needs global_iterations >= 1")
        initial_resolution = gold_standard.start_resolution(initial_resolution, size, pixel_size)
        start_map = volumes.lowpass(np.asarray(initial_map), pixel_size, initial_resolution)
        current_shifts = np.zeros((n, 2))  # searched afresh against the start map
    history: list[dict[str, float]] = []
    # Images in memory go to the workers once for all iterations (a stack: its file name).
    to_match = images if client is None or isinstance(images, stacks.ImageStack) \
        else distributed.share(client, images)
    align_halves = initial_map is not None if align_halves is None else align_halves
    first, correlations = 0, np.full(n, np.nan)
    if start_map is not None and start_iterations > 0:
        began = time.perf_counter()
        started = np.empty_like(q)
        results = distributed.map_chunks(
            gold_standard.start_half, [(half, np.flatnonzero(halves == half)) for half in (0, 1)],
            client=client,
            desc="expectation-maximisation from the start",
            shared={"images": to_match, "start_map": start_map,
                    "settings": {"ctf": ctf, "pixel_size": pixel_size,
                                 "iterations": start_iterations, "max_shift": max_shift,
                                 "start_resolution": initial_resolution,
                                 "final_resolution": start_final_resolution, "seed": seed}})
        for half, (found_q, found_shifts) in enumerate(results):
            started[halves == half], current_shifts[halves == half] = found_q, found_shifts
        entry = {"iteration": 1, "step_rad": step, "global": 1.0, "soft": 1.0,
                 "start_lowpass_angstrom": initial_resolution,
                 "start_iterations": float(start_iterations),
                 "halfmap_fsc0143_angstrom": float("nan"),
                 "band_radius_px": size * pixel_size / start_final_resolution,
                 "mean_change_rad": float(np.mean(rotations.geodesic_distance(started, q))),
                 "mean_score": float("nan"), "seconds": time.perf_counter() - began}
        q, first = started, 1
        if callback is not None:
            entry.update(callback(1, q, current_shifts))
        history.append(entry)
    for iteration in progress_bar(range(first, iterations), total=iterations - first,
                                  enable=progress, desc="refining"):
        began = time.perf_counter()
        from_start = start_map is not None and iteration == 0
        turned = float("nan")
        if from_start:
            maps = [start_map, start_map]
            band = Band(size, size * pixel_size / initial_resolution + 0.5)
            curve = None
        else:
            maps = [half.data for half in reconstruction.half_maps(
                images, q, shifts=current_shifts, ctf=ctf, halves=halves, pixel_size=pixel_size,
                iterations=15, regularization=regularization, client=client)[:2]]
            curve = resolution.fsc(maps[0], maps[1], pixel_size, mask=True)
            if align_halves:  # on the maps weighted by their FSC: what the halves agree on
                turn = gold_standard.frame_between(*(gold_standard.filter_by_fsc(m, curve.values)
                                                     for m in maps))
                maps[1] = scoring.rotate_map(maps[1], turn)
                q[halves == 1] = rotations.canonical(turn.to_truth_frame(q[halves == 1]))
                turned = float(rotations.geodesic_distance(turn.transform, [1.0, 0, 0, 0]))
                curve = resolution.fsc(maps[0], maps[1], pixel_size, mask=True)
            maps = [gold_standard.filter_by_fsc(m, curve.values) for m in maps]
            below = np.flatnonzero(curve.values < resolution.THRESHOLD_HALF_MAPS)
            shell = curve.shells[below[0]] if len(below) else curve.shells[-1]
            radius = min(size / 2 - 1, max(6.0, 1.2 * shell + 2))
            if angular_band is not None and iteration >= global_iterations:
                radius = min(radius, max(6.0, angular_band / step))
            band = Band(size, radius)
        searching_globally = iteration < global_iterations
        if searching_globally:
            band = Band(size, min(band.radius, global_radius))
        new_q, new_shifts = q.copy(), current_shifts.copy()
        scores, correlations = np.empty(n), np.empty(n)
        common = {"band": band, "pixel_size": pixel_size, "offsets": candidate_offsets(step),
                  "max_shift": max_shift, "batch": batch}
        for half in (0, 1):
            chosen = np.flatnonzero(halves == half)
            settings = ({**common, "grid": grid, "reach": global_reach,
                         "keep_current": not from_start,
                         "grid_slices": GridSlices(maps[half], band, grid)}
                        if searching_globally else
                        {**common, "soft": iteration < soft_iterations})
            pieces = [(part, q[part], current_shifts[part],
                       None if ctf is None else ctf[part])
                      for part in np.array_split(chosen, max(1, -(-len(chosen) // chunk)))]
            results = distributed.map_chunks(
                _match_piece, pieces, client=client, desc=f"matching half {half + 1}",
                shared={"images": to_match, "reference": maps[half], "settings": settings})
            for (part, *_), result in zip(pieces, results):
                new_q[part], new_shifts[part], scores[part], correlations[part] = result
        new_shifts = np.clip(new_shifts, -max_shift_total, max_shift_total)
        moved = float(np.mean(rotations.geodesic_distance(new_q, q)))
        q, current_shifts = new_q, new_shifts
        entry = {"iteration": iteration + 1, "step_rad": step,
                 "global": float(searching_globally),
                 "soft": float(iteration < soft_iterations),
                 "start_lowpass_angstrom": initial_resolution if from_start else float("nan"),
                 "halfmap_fsc0143_angstrom": (float("nan") if curve is None else
                                              curve.resolution(resolution.THRESHOLD_HALF_MAPS)),
                 "band_radius_px": band.radius, "halves_turn_rad": turned,
                 "mean_change_rad": moved, "mean_score": float(np.mean(scores)),
                 "seconds": time.perf_counter() - began}
        if callback is not None:
            entry.update(callback(iteration + 1, q, current_shifts))
        history.append(entry)
        if not searching_globally:
            step *= shrink
        if moved < tolerance and iteration >= soft_iterations:
            break
    return RefinementResult(q, current_shifts, halves, history, correlations)


def _match_piece(piece: tuple, images: "NDArray | stacks.ImageStack", reference: NDArray,
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
        found = _global_match(*common, options["grid"], options["offsets"],
                              options["max_shift"], options["batch"], options["reach"],
                              options["keep_current"], options["grid_slices"])
    else:
        found = _match(*common, options["offsets"], options["max_shift"], options["batch"],
                       soft=options["soft"])
    energy = np.sqrt(np.sum(band.weights * np.abs(spectra) ** 2, axis=-1))
    return (*found, found[2] / np.maximum(energy, 1e-30))
