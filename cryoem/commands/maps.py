"""Commands that work with maps: refine (orientations matched against each half's map) and
reconstruct.

Like :mod:`cryoem.commands.method`, each scores its output only against a ground truth, or
against reference poses when asked (``--reference-poses``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .method import add_dask_arg, add_reference_arg, lazy_images, scoring_reference

if TYPE_CHECKING:
    from ..datasets import Dataset
    from ..stacks import ImageStack


# ----------------------------------------------------------------------------
# cryoem reconstruct
# ----------------------------------------------------------------------------
def add_reconstruct_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    parser.add_argument("--orientations", type=Path, default=None, metavar="ORIENT.h5",
                        help="recovered orientations (default: the dataset's own poses: the "
                             "truth of a simulation, an oracle)")
    parser.add_argument("--out", type=Path, required=True, metavar="MAP.mrc",
                        help="the map, in the orientations' own frame; with a ground truth "
                             "(or --reference-poses) also MAP_aligned_to_truth.mrc, for scoring")
    parser.add_argument("--reference", type=Path, default=None, metavar="TRUE.mrc",
                        help="map to score against (default: the dataset's ground-truth map)")
    parser.add_argument("--half-maps", action="store_true",
                        help="also reconstruct two random halves and report their FSC at 0.143")
    parser.add_argument("--oracle-shifts", action="store_true",
                        help="use the true shifts (an oracle reconstruction, labelled as such)")
    parser.add_argument("--iterations", type=int, default=30, help="conjugate-gradient steps")
    parser.add_argument("--regularization", type=float, default=1e-3,
                        help="Tikhonov weight relative to the data term's mean diagonal")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dask_arg(parser)
    add_reference_arg(parser)


def run_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct a map from projections and orientations; report its FSC resolution."""
    from .. import datasets, distributed, reconstruction, recovery, volumes

    data = datasets.load(args.data, images=False)
    notes: list[str] = []
    if args.orientations is None:
        kind = data.source("orientations")
        if kind == datasets.ABSENT:
            raise ValueError(f"{args.data} holds no orientations: pass --orientations ORIENT.h5")
        indices = np.arange(len(data))
        orientations = data.orientations
        notes.append("true orientations (oracle)" if kind == datasets.GROUND_TRUTH
                     else "the dataset's reference poses")
        estimated_shifts = None
    else:
        orientations, indices, attrs = recovery.load_orientations(args.orientations)
        estimated_shifts = attrs.get("shifts")
    shifts = _reconstruction_shifts(data, indices, estimated_shifts, args.oracle_shifts, notes)
    with distributed.connect(args.dask_scheduler) as client:
        options = dict(shifts=shifts, ctf=data.ctf[indices] if data.ctf is not None else None,
                       pixel_size=data.pixel_size, iterations=args.iterations,
                       regularization=args.regularization, client=client,
                       progress=not args.quiet)
        images = lazy_images(data, indices)
        result = reconstruction.reconstruct(images, orientations, **options)
        volumes.save_map(volumes.Volume(result.data, data.pixel_size, args.out.stem), args.out)
        line = f"wrote {args.out}: {len(indices)} images, {result.iterations} CG iterations"
        line += _score_map(args, data, images, indices, orientations, options, notes)
        if args.half_maps:
            line += _half_maps(args, data, images, orientations, options)
    print(line + (f" [{'; '.join(notes)}]" if notes else ""))
    return 0


def _half_maps(args: argparse.Namespace, data: Dataset, images: ImageStack,
               orientations: np.ndarray, options: dict) -> str:
    """Write the two half maps beside ``--out``; their FSC, said not independent."""
    from .. import reconstruction, resolution, volumes

    first, second, _ = reconstruction.half_maps(images, orientations, **options)
    for k, half in enumerate((first, second), start=1):
        volumes.save_map(volumes.Volume(half.data, data.pixel_size),
                         args.out.with_name(f"{args.out.stem}_half{k}.mrc"))
    curve = resolution.fsc(first.data, second.data, data.pixel_size, mask=True)
    return (f"; half maps FSC 0.143: {curve.resolution(0.143):.2f} Å (halves split after "
            "the orientations were estimated from all images: not independent)")


def _reconstruction_shifts(data: Dataset, indices: np.ndarray, estimated: np.ndarray | None,
                           oracle: bool, notes: list[str]) -> np.ndarray | None:
    """The shifts to reconstruct with: estimated ones, or the true ones when asked (an oracle)."""
    from .. import datasets

    if oracle:
        if data.source("shifts") != datasets.GROUND_TRUTH:
            raise ValueError(f"--oracle-shifts: {data.path} has no ground-truth shifts")
        notes.append("true shifts (oracle)")
        return data.shifts[indices]
    if estimated is not None:
        notes.append("estimated shifts")
    else:
        notes.append("no shifts estimated: any shifts of the images are ignored (run cryoem "
                     "refine)")
    return estimated


def _score_map(args: argparse.Namespace, data: Dataset, images: ImageStack,
               indices: np.ndarray, orientations: np.ndarray, options: dict,
               notes: list[str]) -> str:
    """FSC against the reference map, after putting a copy in the reference poses' frame.

    The map written to ``--out`` stays in the orientations' own frame (what a user without
    a truth gets); the aligned copy ``MAP_aligned_to_truth.mrc`` exists only to score.
    """
    from .. import alignment, reconstruction, resolution, volumes

    reference_map = (volumes.load_map(args.reference).data if args.reference is not None
                     else data.volume)
    if reference_map is None:
        return "; not scored (no reference map: pass --reference TRUE.mrc)"
    reference = scoring_reference(data, indices, args)
    if reference is None:
        return "; not scored against a map (no poses to align the map's frame with)"
    fit = alignment.align_physical(orientations, reference.orientations,
                                   data.attrs.get("symmetry", "C1"))
    aligned = reconstruction.reconstruct(images, fit.to_truth_frame(orientations),
                                         **{**options, "progress": False})
    path = args.out.with_name(f"{args.out.stem}_aligned_to_truth.mrc")
    volumes.save_map(volumes.Volume(aligned.data, data.pixel_size, path.stem), path)
    notes.append(f"scored after a copy was put in the frame of {reference.label} "
                 f"(global rotation{', mirrored' if fit.flipped else ''}): {path.name}")
    curve = resolution.fsc(aligned.data, reference_map, data.pixel_size)
    return f"; FSC 0.5 against the reference map: {curve.resolution(0.5):.2f} Å"


# ----------------------------------------------------------------------------
# cryoem refine
# ----------------------------------------------------------------------------
def add_refine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    parser.add_argument("--orientations", type=Path, required=True, metavar="ORIENT.h5",
                        help="first guess (e.g. from cryoem recover)")
    parser.add_argument("--out", type=Path, required=True, metavar="REFINED.h5")
    parser.add_argument("--iterations", type=int, default=6, help="local iterations at most")
    parser.add_argument("--global-iterations", type=int, default=2,
                        help="global searches over all orientations first (default: 2; 0: "
                             "local only)")
    parser.add_argument("--step", type=float, default=0.3,
                        help="radius of the first local search, rad (default: 0.3)")
    parser.add_argument("--max-shift", type=float, default=8.0,
                        help="largest shift estimated, pixels (default: 8)")
    parser.add_argument("--initial-resolution", type=float, default=30.0, metavar="ANGSTROM",
                        help="the halves start apart from the first guess's map low-passed to "
                             "this (default: 30 Å, finer in a small box), so that their FSC is "
                             "evidence; 0: both start from the given orientations (the half-map "
                             "FSC may then be inflated)")
    parser.add_argument("--start-iterations", type=int, default=12,
                        help="expectation-maximisation iterations per half from the low-passed "
                             "start (default: 12; 0: one hard match)")
    parser.add_argument("--mask-references", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="mask each half's references around the particle, from its own map "
                             "(default: on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dask_arg(parser)
    add_reference_arg(parser)


def run_refine(args: argparse.Namespace) -> int:
    """Refine orientations and estimate shifts by gold-standard projection matching."""
    from .. import alignment, datasets, distributed, gold_standard, recovery, refinement

    if args.initial_resolution < 0:
        raise ValueError(f"--initial-resolution must be >= 0 Å, got {args.initial_resolution}")
    if args.initial_resolution > 0 and args.global_iterations < 1:
        raise ValueError("a start low-passed to --initial-resolution needs --global-iterations "
                         ">= 1; pass --initial-resolution 0 to refine locally from the given "
                         "orientations")
    data = datasets.load(args.data, images=False)
    q, indices, attrs = recovery.load_orientations(args.orientations)
    images = lazy_images(data, indices)
    ctf = data.ctf[indices] if data.ctf is not None else None
    with distributed.connect(args.dask_scheduler) as client:
        start = None
        if args.initial_resolution > 0:
            start = gold_standard.start_map(images, q, attrs.get("shifts"), ctf,
                                            data.pixel_size, client)
        result = refinement.refine(
            images, q, shifts=attrs.get("shifts"), ctf=ctf,
            pixel_size=data.pixel_size, iterations=args.iterations,
            global_iterations=args.global_iterations, step=args.step,
            max_shift_total=args.max_shift, initial_map=start,
            initial_resolution=args.initial_resolution or 30.0,
            start_iterations=args.start_iterations, mask_references=args.mask_references,
            seed=args.seed, client=client, progress=not args.quiet)
    independence = gold_standard.independence(start is not None, gold_standard.start_resolution(
        args.initial_resolution or 30.0, data.size, data.pixel_size))
    last = result.history[-1]
    reference = scoring_reference(data, indices, args)
    scores: dict[str, object] = {}
    if reference is not None:
        symmetry = data.attrs.get("symmetry", "C1")
        after = alignment.align_physical(result.quaternions, reference.orientations, symmetry)
        scores = {"e_or_unrefined_rad": alignment.align_physical(
                      q, reference.orientations, symmetry).mean,
                  "e_or_rad": after.mean, "e_or_median_rad": after.median,
                  "scored_against": reference.label}
    recovery.save_orientations(args.out, result.quaternions, indices, shifts=result.shifts,
                               halfmap_fsc0143_angstrom=last["halfmap_fsc0143_angstrom"],
                               halfmap_independence=independence, source=str(args.data),
                               **scores)
    line = (f"wrote {args.out}: {len(indices)} orientations and shifts refined in "
            f"{len(result.history)} iterations; half maps FSC 0.143 "
            f"{last['halfmap_fsc0143_angstrom']:.2f} Å ({independence})")
    if reference is not None:
        line += (f"; physical E_OR against {reference.label} (used only to score) "
                 f"{scores['e_or_unrefined_rad']:.3f} → {scores['e_or_rad']:.3f} rad")
    print(line)
    return 0
