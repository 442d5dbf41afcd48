"""The gold standard: two halves of the images refined apart, and what they may share.

Refinement (:func:`cryoem.refinement.refine`) keeps two random halves of the images apart so
that the FSC between their maps is evidence of resolution rather than of shared noise.  This
module holds what makes that work:

- :func:`start_map`: the shared start, a map from all images at the first guess;
- :func:`start_resolution`: how far the start map is low-passed (30 Å by default);
- :func:`start_half`: each half's own start from that map, by expectation–maximisation
  (:func:`cryoem.ab_initio.ab_initio` on the half's images alone);
- :func:`frame_between`: the rotation that turns one half's map onto the other's, the one
  thing (three numbers) the halves share besides their FSC curve;
- :func:`filter_by_fsc`: each half map weighted, shell by shell, by the halves' agreement;
- :func:`shape_mask`: a soft mask around what one half's own map holds (a dynamic mask), so
  that its references carry no noise from the solvent;
- :func:`half_references`: each iteration's references, each half's map (and its maps
  without each leave-out group) from its own images alone, turned into one frame, filtered;
- :func:`leave_out_groups`, :func:`matched_sets`: the random groups of each half left out of
  its references, and which images match against which reference;
- :func:`independence`: what a user is told about the half maps.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

from . import (alignment, projection, reconstruction, resolution, rotations, scoring, stacks,
               symmetry_frame, volumes)

__all__ = ["start_map", "start_resolution", "start_half", "frame_between", "filter_by_fsc",
           "shape_mask", "half_references", "leave_out_groups", "matched_sets", "independence"]

FloatArray = NDArray[np.float64]


def start_map(images: "NDArray | stacks.ImageStack", orientations: FloatArray,
              shifts: FloatArray | None = None, ctf: "object | None" = None,
              pixel_size: float = 1.0, client: object = None) -> NDArray:
    """The shared start of a gold-standard refinement: the map from all images at their
    first-guess orientations and shifts (15 conjugate-gradient iterations), to be passed
    as ``initial_map`` to :func:`cryoem.refinement.refine`, which low-passes it."""
    from . import reconstruction

    return reconstruction.reconstruct(images, orientations, shifts=shifts, ctf=ctf,
                                      pixel_size=pixel_size, iterations=15, client=client).data


def independence(independent: bool, resolution: float) -> str:
    """What the half maps' FSC is evidence of: halves refined apart from a start low-passed
    to ``resolution`` Å (said to 0.1 Å), or halves that share a first guess all images
    shaped."""
    if independent:
        return (f"independent: each half refined from its own images after a start low-passed "
                f"to {round(resolution, 1):g} Å (the halves share only the rotation between their frames)")
    return ("not independent: not refined from a low-passed start (the halves share a first "
            "guess that all images shaped): the half-map FSC may be inflated")


def start_resolution(resolution: float, size: int, pixel_size: float) -> float:
    """The low-pass of the gold-standard start, Å: ``resolution``, or finer when that
    would leave fewer than three Fourier shells of the box (a small box)."""
    return float(min(resolution, size * pixel_size / 3))


def filter_by_fsc(volume: NDArray, values: FloatArray) -> NDArray:
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


def frame_between(fixed: NDArray, moving: NDArray) -> "alignment.Alignment":
    """The global rotation that turns ``moving`` onto ``fixed`` best, as an alignment
    (``moving`` in the role of the estimate, :func:`cryoem.scoring.rotate_map`).

    It maximises the inner product of the maps inside the sphere, Fourier-cropped to at
    most 48 voxels, by Nelder–Mead from the identity, ``moving`` turned by cubic splines
    (trilinear ones are biased: 0.007 rad on a known 0.08 rad turn, against 0.0008), and
    stops at 0.5 mrad.  The product is divided by the unturned map's norm, not the turned
    one's: interpolation smooths away noise, so the turned map's norm falls as it turns and
    a correlation normalised by it peaks away from the truth (half maps of 500 images each at
    SNR 1/16 from their true poses: 0.042 rad, against 0.002 as here).  What remains is a
    pull towards the identity (0.009 rad short of a known 0.05 rad turn at that SNR), which
    refinement's next iterations take up.
    """
    from scipy import optimize

    small = min(fixed.shape[0], 48)
    mask = volumes.spherical_mask(small)
    target = (volumes.fourier_resample(fixed, small) * mask).ravel()
    target = (target - target.mean()) / (np.linalg.norm(target - target.mean()) or 1.0)
    source = volumes.fourier_resample(moving, small)
    unturned = (source * mask).ravel()
    scale = float(np.linalg.norm(unturned - unturned.mean())) or 1.0

    def fit(vector: FloatArray) -> alignment.Alignment:
        return alignment.Alignment(np.zeros(0), "physical",
                                   rotations.rotation_vector_to_quaternion(vector))

    def loss(vector: FloatArray) -> float:
        turned = (scoring.rotate_map(source, fit(vector), order=3) * mask).ravel()
        return -float(target @ (turned - turned.mean())) / scale

    best = optimize.minimize(loss, np.zeros(3), method="Nelder-Mead",
                             options={"initial_simplex": 0.05 * np.vstack([np.zeros(3),
                                                                           np.eye(3)]),
                                      "xatol": 5e-4, "fatol": 1e-7})
    return fit(best.x)


def start_half(piece: tuple[int, NDArray[np.int64]], images: "NDArray | stacks.ImageStack",
                start_map: NDArray, settings: dict) -> tuple[FloatArray, FloatArray]:
    """Refinement's gold-standard start for one half: expectation–maximisation from the
    low-passed start map on that half's images alone, in a box Fourier-cropped (a chunk at
    a time) to what ``final_resolution`` needs.  Returns their orientations and shifts."""
    from . import ab_initio

    half, chosen = piece
    options = dict(settings)
    ctf, pixel_size = options.pop("ctf"), options.pop("pixel_size")
    size = images.shape[-1]
    work = int(min(size, max(32, 2 * np.ceil(1.25 * size * pixel_size
                                              / options["final_resolution"]))))
    cropped = np.concatenate([
        volumes.fourier_resample(np.asarray(images[part], dtype=np.float32), work, axes=(-2, -1))
        for part in np.array_split(chosen, max(1, -(-len(chosen) // 2048)))])
    scale = size / work
    result = ab_initio.ab_initio(
        cropped, ctf=None if ctf is None else ctf[chosen], pixel_size=pixel_size * scale,
        work_size=work, iterations=options["iterations"],
        start_resolution=options["start_resolution"],
        final_resolution=options["final_resolution"], subset=len(chosen),
        max_shift=options["max_shift"] / scale, initial_volume=start_map,
        seed=2 * options["seed"] + half)
    return result.quaternions, result.shifts * scale


def shape_mask(volume: NDArray, pixel_size: float, lowpass: float = 15.0,
               threshold: float = 0.2, near: float = 6.0, soft: float = 12.0) -> NDArray:
    """A soft mask around a map's particle, made from that map alone (as cryoSPARC's dynamic
    masks): the map low-passed to ``lowpass`` Å, kept where it exceeds ``threshold`` times its
    maximum, widened by ``near`` Å, then a cosine edge ``soft`` Å wide.  1 inside, 0 far
    outside; all ones for an empty map."""
    from scipy import ndimage

    smooth = volumes.lowpass(volume, pixel_size, max(lowpass, 2 * pixel_size))
    peak = float(np.max(smooth))
    if peak <= 0:
        return np.ones_like(volume, dtype=np.float32)
    # Distance (Å) of each voxel from the nearest one above the threshold (EDT: SciPy's).
    distance = ndimage.distance_transform_edt(smooth < threshold * peak) * pixel_size
    return volumes.cosine_edge(distance, near, soft).astype(np.float32)


def half_references(images: "NDArray | stacks.ImageStack", q: FloatArray, shifts: FloatArray,
                     ctf: "projection.CTFParameters | None", halves: NDArray[np.int64],
                     groups: NDArray[np.int64] | None, pixel_size: float,
                     regularization: float, align_halves: bool, client: Any,
                     symmetric: tuple[str, list, int] | None = None,
                     masked: bool = False,
                     ) -> tuple[list[NDArray], list[list[NDArray]], "resolution.FSC", float]:
    """Each half's map from its own images, the second turned onto the first (when
    ``align_halves``), both filtered by their FSC; with ``groups``, also each half's maps
    without each of its groups, turned and filtered alike.  With ``symmetric`` (the group,
    each half's frame found before or ``None``, updated in place, and the search's seed),
    each half's maps are symmetrised about its own map's axes before the FSC.  Returns the
    maps, the maps without each group (empty lists without ``groups``), the FSC and the turn
    (rad).  The second half's orientations ``q`` are turned with its map, in place.  With
    ``masked``, each half's filtered maps are multiplied by the :func:`shape_mask` of its own
    filtered map (the FSC, measured before, is not changed by it)."""
    maps: list[NDArray] = []
    without: list[list[NDArray]] = [[], []]
    for half in (0, 1):
        chosen = np.flatnonzero(halves == half)
        options = {"shifts": shifts[chosen], "ctf": None if ctf is None else ctf[chosen],
                   "pixel_size": pixel_size, "iterations": 15, "regularization": regularization,
                   "client": client}
        if groups is None:
            maps.append(reconstruction.reconstruct(stacks.take(images, chosen), q[chosen],
                                                   **options).data)
        else:
            whole, rest = reconstruction.leave_group_out(stacks.take(images, chosen), q[chosen],
                                                         groups[chosen], **options)
            maps.append(whole.data)
            without[half] = [part.data for part in rest]
    curve = resolution.fsc(maps[0], maps[1], pixel_size, mask=True)
    turned = float("nan")
    if align_halves:  # on the maps weighted by their FSC: what the halves agree on
        turn = frame_between(*(filter_by_fsc(m, curve.values) for m in maps))
        maps[1] = scoring.rotate_map(maps[1], turn)
        without[1] = [scoring.rotate_map(m, turn) for m in without[1]]
        q[halves == 1] = rotations.canonical(turn.to_truth_frame(q[halves == 1]))
        turned = float(rotations.geodesic_distance(turn.transform, [1.0, 0, 0, 0]))
        curve = resolution.fsc(maps[0], maps[1], pixel_size, mask=True)
    if symmetric is not None:
        _symmetrize_halves(maps, without, curve, *symmetric)
        curve = resolution.fsc(maps[0], maps[1], pixel_size, mask=True)
    filtered = [filter_by_fsc(m, curve.values) for m in maps]
    without = [[filter_by_fsc(m, curve.values) for m in half] for half in without]
    if masked:
        for half in (0, 1):
            mask = shape_mask(filtered[half], pixel_size)
            filtered[half] = filtered[half] * mask
            without[half] = [m * mask for m in without[half]]
    return filtered, without, curve, turned


def _symmetrize_halves(maps: list[NDArray], without: list[list[NDArray]],
                       curve: "resolution.FSC", symmetry: str, frames: list, seed: int) -> None:
    """Each half's map and maps without its groups, averaged over the group about the axes
    found in that half's map alone, weighted by the FSC (the noise the halves do not share
    would hide the axes); ``frames`` holds each half's last frame, the start of its next
    search (a polish, not a search)."""
    for half in (0, 1):
        frames[half] = symmetry_frame.find_symmetry_frame(
            filter_by_fsc(maps[half], curve.values), symmetry, seed=seed,
            start=frames[half])
        maps[half] = symmetry_frame.symmetrize(maps[half], symmetry, frames[half])
        without[half] = [symmetry_frame.symmetrize(m, symmetry, frames[half])
                         for m in without[half]]


def leave_out_groups(halves: NDArray[np.int64], count: int, seed: int) -> NDArray[np.int64] | None:
    """Each image's leave-out group within its half (``count`` groups of near-equal size in
    each half, drawn at random by ``seed``), or ``None`` when ``count`` is 0 or a half holds
    fewer than two images per group."""
    if count <= 0 or min(np.sum(halves == 0), np.sum(halves == 1)) < 2 * count:
        return None
    groups = np.empty(len(halves), dtype=np.int64)
    rng = np.random.default_rng([seed, 3])
    for half in (0, 1):
        chosen = np.flatnonzero(halves == half)
        groups[chosen] = rng.permutation(len(chosen)) % count
    return groups


def matched_sets(halves: NDArray[np.int64], groups: NDArray[np.int64] | None,
                 maps: list[NDArray], without: list[list[NDArray]]
                 ) -> Iterator[tuple[int, NDArray[np.int64], NDArray]]:
    """(half, image indices, reference): each half's images against its map, or, with maps
    leaving groups out, each group's images against its half's map without them."""
    for half in (0, 1):
        chosen = np.flatnonzero(halves == half)
        if not without[half]:
            yield half, chosen, maps[half]
            continue
        assert groups is not None
        for group, reference in enumerate(without[half]):
            yield half, chosen[groups[chosen] == group], reference
