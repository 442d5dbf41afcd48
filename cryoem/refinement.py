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
   (:func:`cryoem.reconstruction.reconstruct`), and its maps without each of a few random
   groups of its images (``leave_out_groups``), the references of those groups' images;
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
It stops when the orientations stop moving, when the half maps stop gaining resolution
(``plateau``: where their FSC could show a gain, or while the images only jitter), or after
``iterations`` local iterations; then one global
pass on a finer grid, at the resolution the half maps reached, rescues the images left in a
wrong basin, and a few local iterations polish the images it moved (those alone, against its
references).  Shifts are estimated here: the true ones
are never read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import (distributed, gold_standard, projection, reconstruction, resolution, rotations,
               stacks, symmetry_frame, volumes)
from .matching import Band, GridSlices, candidate_offsets, match_piece
from ._progress import progress_bar

__all__ = ["RefinementResult", "refine"]

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


def refine(
    images: ArrayLike,
    orientations: ArrayLike | None,
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
    plateau: int = 2,
    plateau_gain: float = 0.01,
    plateau_jitter: float = 0.45,
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
    rescue_candidates: int = 30000,
    rescue_radius: float = 12.0,
    rescue_iterations: int = 6,
    rescue_step: float = 0.06,
    leave_out_groups: int = 4,
    mask_references: bool = True,
    symmetry: str = "C1",
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
        by :func:`cryoem.commonlines.resolve_frame`); None: no first guess (only with
        ``initial_map``, whose start searches every orientation; the history's first
        ``mean_change_rad`` is then NaN, there being nothing to have changed from).
    shifts
        First guess of the shifts ``(N, 2)`` in pixels (default zero).
    step, shrink
        Angular radius of the first candidate grid (rad) and its factor per iteration.
    max_shift, max_shift_total
        Largest shift correction searched per iteration, and largest shift
        overall, pixels.
    tolerance
        Stop when the mean change of orientation in an iteration falls below it (rad).
    plateau, plateau_gain, plateau_jitter
        Stop the local iterations once the data can tell no more: the half maps' FSC 0.143
        resolution measured in the last ``plateau`` hard local iterations of the phase is no
        finer, by ``plateau_gain`` (a fraction), than the best measured earlier in it, and
        either the FSC falls below 0.143 inside the box (it could show a gain) or the images
        moved on average at least ``plateau_jitter`` times the grid's radius in the last
        iteration (they jitter within the noise).  Where the FSC stays above 0.143 to the
        box's edge (noiseless), it cannot show what a finer grid still gains, and only
        jittering images stop the run.  As RELION's auto-refine stops when its resolution
        and its angles stop improving.  At SNR 1/16 (``benchmarks/particles.py``, 5,000
        images of 4AKE, 2ZMM, 1HVR at ``d56d91f`` and ``cadc686``) the half maps stopped
        gaining after the first full-band local iteration while the images kept moving
        0.55-0.7 times the radius, and each later iteration cost 65-100 s; with the rule
        (``4cce38b``) they stopped after the third, 4-5 minutes sooner, and ended as close
        to the truth (0.085, 0.095, 0.096 rad with C2 declared, against 0.086, 0.095,
        0.096).  At SNR 1 (4AKE, 5,000 images, the error recorded by a callback at
        ``2ebf468``) the half maps stopped at 3.51 Å after the first full-band iteration
        while the images, converging, moved 0.57, 0.44, 0.36 times the radius; the error
        went 0.0172, 0.0128, 0.0114 rad over those three iterations and 0.0107 over the next
        three (250 s), which the FSC inside the box now stops.  ``plateau=0`` turns it off.
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
    rescue_candidates, rescue_radius, rescue_iterations, rescue_step
        After the local iterations, one more global pass (the rescue) on a finer grid of
        ``rescue_candidates`` uniform orientations, matched on frequencies below
        ``rescue_radius`` pixels (or the FSC band if lower), the local grid competing as in
        the first global passes; then up to ``rescue_iterations`` local iterations from a
        grid of radius ``rescue_step`` rad polish the images the rescue took beyond the local
        grid's reach, and only those, against the rescue's own references: no new maps, the
        other images keep the poses the local iterations gave them (not the rescue's small
        moves on its low band: at SNR 1 they took 4AKE's error from 0.0114 to 0.0124 rad), and
        a moved image's own noise sits in those maps at its old, far orientation.  (Polishing
        every image against new maps each time cost three full iterations, 217 of the 1,130 s
        of 4AKE's refinement at SNR 1 with 5,000 images, and restarted the converged images
        from a grid coarser than the one they had ended on: the error went 0.0102 rad after
        the rescue, then 0.0105, 0.0102, 0.0104.)  The first
        global passes match against blurred maps, where some views look like others (a
        pseudo-symmetry): a few per cent of the images end in the wrong basin, too far for
        the local grid (2ZMM at SNR 1/16, 5,000 images: 3.2 % more than 0.5 rad off; one
        such pass against the final half maps left 1.2 %, the mean error 0.167 -> 0.116
        rad: 98 images rescued, 1 sent astray).  It runs only when the half maps resolve
        the rescue's band (FSC 0.143 at ``rescue_radius`` pixels or beyond): against
        blurred maps the best of many orientations wins by chance.  ``0`` turns it off.
    leave_out_groups
        In the local iterations, split each half's images into this many random groups and
        match each group against its half's map made without that group (one
        back-projection and ``leave_out_groups + 1`` conjugate-gradient solves per half): an
        image's own noise, which its half map holds, no longer pulls it toward where it
        already is.  ``0``: every image against its whole half map.  At SNR 1/16 with 5,000
        images (``benchmarks/particles.py``) it took 4AKE, 2ZMM and 1HVR from 0.090, 0.106 and
        0.129 rad to 0.086, 0.095 and 0.119, their maps from 16, 15 and 25 % to 14, 12 and
        23 % coarser than the true poses', for 25-40 % more time.
    mask_references
        Multiply each half's references by a soft mask around its own map's particle
        (:func:`cryoem.gold_standard.shape_mask`): the solvent's noise leaves its
        projections.  At SNR 1/16 with 5,000 images (``benchmarks/particles.py``, route
        ``ab-initio-masked``, ``d063f9d`` and ``ac622f7``) it took 1HVR (C1), 4AKE and 2ZMM
        from 0.124, 0.088 and 0.099 rad to 0.065, 0.046 and 0.048, their maps from 24, 15
        and 13 % to 5.7, 0.3 and 1.2 % coarser than the true poses'; at SNR 1 and noiseless
        (``420b92e``) it harmed none (1HVR 0.012 -> 0.010 rad at SNR 1, 4AKE 0.011 -> 0.008;
        noiseless 0.001-0.003 rad either way, maps as fine) and cost no time.  ``False``: the
        references as reconstructed (the ablation).
    symmetry
        The particle's point group: after the start, each half's references (its map and
        its maps without each group) are averaged over the group about the axes found in
        that half's own map (:func:`cryoem.symmetry_frame.symmetrize`; searched once, then
        polished each iteration), as RELION's ``--sym`` does to each half.  The orientations
        stay in C1 and in their own frame (the pipeline turns them onto the group's axes
        afterwards); the history records how symmetric the halves were about their axes
        (``symmetry_score``, 1: exactly).  ``"C1"``: nothing imposed.
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

    Each history entry holds the iteration's kind (``global``, ``rescue``, ``polish``,
    ``soft``), band, step, half-map FSC 0.143 (Å) of the references it matched against, turn
    between the halves, the number of images matched (``matched``), their mean orientation
    change and score, and its wall time (``seconds``, the callback's excluded).
    """
    images = stacks.as_images(images)
    n, size = images.shape[0], images.shape[-1]
    guessed = orientations is not None
    if not guessed and (initial_map is None or start_iterations < 1):
        raise ValueError("refining without a first guess needs an initial_map and "
                         "start_iterations >= 1")
    q = rotations.canonical(orientations if guessed else np.tile([1.0, 0, 0, 0], (n, 1)))
    if len(q) != n:
        raise ValueError(f"{n} images but {len(q)} orientations")
    current_shifts = np.zeros((n, 2)) if shifts is None else np.array(shifts, dtype=np.float64)
    halves = reconstruction.split_halves(n, seed)
    groups = gold_standard.leave_out_groups(halves, leave_out_groups, seed)
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
                 "mean_change_rad": (float(np.mean(rotations.geodesic_distance(started, q)))
                                     if guessed else float("nan")),
                 "mean_score": float("nan"), "seconds": time.perf_counter() - began}
        q, first = started, 1
        if callback is not None:
            entry.update(callback(1, q, current_shifts))
        history.append(entry)
    rescue_grid = (rotations.sample_uniform(rescue_candidates,
                                            seed=np.random.default_rng([seed, 2]))
                   if rescue_candidates else None)
    converged = [False]
    frames: list[symmetry_frame.SymmetryFrame | None] = [None, None]  # each half's axes
    symmetric = len(rotations.point_group(symmetry)) > 1

    def schedule() -> Iterator[tuple[int, str]]:
        """(iteration, kind): the global passes, the local ones until they stop moving, then
        (with a rescue) one global pass on the finer grid and the local ones that polish the
        images it moved."""
        for iteration in range(first, iterations):
            yield iteration, "global" if iteration < global_iterations else "local"
            if converged[0]:
                break
        # Only from half maps that resolve the rescue's band: blurred ones would send
        # images to wrong basins by chance (300 images at SNR 1/4: 7 of them).
        if rescue_grid is not None and history and \
                history[-1]["halfmap_fsc0143_angstrom"] <= size * pixel_size / rescue_radius:
            converged[0] = False
            for extra in range(rescue_iterations + 1):
                yield iterations + extra, "polish" if extra else "rescue"
                if converged[0]:
                    break

    total = iterations - first + (rescue_iterations + 1 if rescue_candidates else 0)
    polishing = np.arange(n)  # the images the polish matches: set by the rescue
    for iteration, kind in progress_bar(schedule(), total=total, enable=progress,
                                        desc="refining"):
        began = time.perf_counter()
        from_start = start_map is not None and iteration == 0
        searching_globally = kind in ("global", "rescue")
        soft = kind == "local" and iteration < soft_iterations
        turned, symmetry_score = float("nan"), float("nan")
        if from_start:
            maps, without = [start_map, start_map], [[], []]
            band = Band(size, size * pixel_size / initial_resolution + 0.5)
            curve = None
        else:
            if kind != "polish":  # the polish matches against the rescue's references
                maps, without, curve, turned = gold_standard.half_references(
                    images, q, current_shifts, ctf, halves,
                    None if searching_globally else groups, pixel_size, regularization,
                    align_halves, client, (symmetry, frames, seed) if symmetric else None,
                    masked=mask_references)
                if symmetric:
                    symmetry_score = float(np.mean([frame.score for frame in frames if frame]))
            band = _band(curve, size, None if searching_globally else angular_band, step)
        if searching_globally:
            band = Band(size, min(band.radius,
                                  rescue_radius if kind == "rescue" else global_radius))
        pass_grid = rescue_grid if kind == "rescue" else grid
        new_q, new_shifts = q.copy(), current_shifts.copy()
        scores = np.full(n, np.nan)
        previous = correlations.copy() if kind == "rescue" else None  # restored where one stays
        common = {"band": band, "pixel_size": pixel_size, "offsets": candidate_offsets(step),
                  "max_shift": max_shift, "batch": batch}
        for half, chosen, reference in gold_standard.matched_sets(halves, groups, maps, without):
            chosen = np.intersect1d(chosen, polishing) if kind == "polish" else chosen
            settings = ({**common, "grid": pass_grid, "reach": global_reach,
                         "keep_current": not from_start,
                         "grid_slices": GridSlices(reference, band, pass_grid)}
                        if searching_globally else {**common, "soft": soft})
            pieces = [(part, q[part], current_shifts[part],
                       None if ctf is None else ctf[part])
                      for part in np.array_split(chosen, max(1, -(-len(chosen) // chunk)))
                      if len(part)]
            results = distributed.map_chunks(
                match_piece, pieces, client=client, desc=f"matching half {half + 1}",
                shared={"images": to_match, "reference": reference, "settings": settings})
            for (part, *_), result in zip(pieces, results):
                new_q[part], new_shifts[part], scores[part], correlations[part] = result
        new_shifts = np.clip(new_shifts, -max_shift_total, max_shift_total)
        changes = rotations.geodesic_distance(new_q, q)
        if kind == "rescue":
            # An image the rescue left within the local grid's reach keeps the pose the full
            # band gave it (the rescue matches on 12 px: its small moves are noise there); only
            # the images it took further are polished.
            stayed = changes <= step * (1 + 1e-6)
            new_q[stayed], new_shifts[stayed] = q[stayed], current_shifts[stayed]
            correlations[stayed], changes[stayed] = previous[stayed], 0.0
            polishing = np.flatnonzero(~stayed)
        matched = np.flatnonzero(~np.isnan(scores))
        moved = float(np.mean(changes[matched])) if len(matched) else 0.0
        q, current_shifts = new_q, new_shifts
        number = len(history) + 1
        entry = {"iteration": number, "step_rad": step, "global": float(searching_globally),
                 "rescue": float(kind == "rescue"), "polish": float(kind == "polish"),
                 "soft": float(soft), "matched": float(len(matched)),
                 "start_lowpass_angstrom": initial_resolution if from_start else float("nan"),
                 "halfmap_fsc0143_angstrom": (float("nan") if curve is None else
                                              curve.resolution(resolution.THRESHOLD_HALF_MAPS)),
                 "fsc_reaches_edge": float(curve is not None and not np.any(
                     curve.values < resolution.THRESHOLD_HALF_MAPS)),
                 "band_radius_px": band.radius, "halves_turn_rad": turned,
                 "left_out_groups": float(len(without[0])), "symmetry_score": symmetry_score,
                 "mean_change_rad": moved,
                 "mean_score": float(np.mean(scores[matched])) if len(matched) else float("nan"),
                 "seconds": time.perf_counter() - began}
        if callback is not None:
            entry.update(callback(number, q, current_shifts))
        history.append(entry)
        if kind == "rescue":
            step = rescue_step
            converged[0] = len(polishing) == 0
        else:
            if not searching_globally:
                step *= shrink
            converged[0] = not searching_globally and not soft and (
                moved < tolerance or (kind == "local" and _plateaued(history, plateau, plateau_gain)
                                      and (moved >= plateau_jitter * entry["step_rad"]
                                           or not entry["fsc_reaches_edge"])))
    return RefinementResult(q, current_shifts, halves, history, correlations)


def _band(curve: "resolution.FSC", size: int, angular_band: float | None,
          step: float) -> Band:
    """The matching band: a little beyond where the half-map FSC crosses 0.143, and (with
    ``angular_band``) no further than a slice turned by ``step`` still correlates."""
    below = np.flatnonzero(curve.values < resolution.THRESHOLD_HALF_MAPS)
    shell = curve.shells[below[0]] if len(below) else curve.shells[-1]
    radius = min(size / 2 - 1, max(6.0, 1.2 * shell + 2))
    if angular_band is not None:
        radius = min(radius, max(6.0, angular_band / step))
    return Band(size, radius)


def _plateaued(history: list[dict[str, float]], count: int, gain: float) -> bool:
    """Whether the half maps' resolution measured in the last ``count`` hard local iterations
    of the current phase (since the last global pass) is no finer, by the fraction ``gain``,
    than the best measured earlier in the phase."""
    if count < 1:
        return False
    phase: list[float] = []
    for entry in history:
        if entry["global"]:
            phase = []
        elif not entry["soft"]:
            phase.append(entry["halfmap_fsc0143_angstrom"])
    if len(phase) <= count:
        return False
    return min(phase[-count:]) > (1 - gain) * min(phase[:-count])
