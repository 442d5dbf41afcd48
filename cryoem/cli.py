"""The ``cryoem`` command line: one subcommand per phase, thin wrappers over the API.

Each subcommand is a pair ``add_<name>_args(parser)`` / ``run_<name>(args)``;
:func:`main` assembles them.  Tests call ``main([...])`` in-process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------
# cryoem volumes
# ----------------------------------------------------------------------------
def add_volumes_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--long", action="store_true",
                        help="also print PDB id, symmetry, size and title")


def run_volumes(args: argparse.Namespace) -> int:
    """List the built-in proteins, one per line."""
    from . import volumes

    for entry in sorted(volumes.builtin_manifest(), key=lambda e: e["name"]):
        if args.long:
            default = " (default)" if entry["name"] == volumes.DEFAULT_PROTEIN else ""
            print(f"{entry['name']}\t{entry['pdb_id']}\t{entry['symmetry']}\t"
                  f"{entry['n_residues']} residues\t{entry['title']}{default}")
        else:
            print(entry["name"])
    return 0


# ----------------------------------------------------------------------------
# cryoem generate
# ----------------------------------------------------------------------------
def add_generate_args(parser: argparse.ArgumentParser) -> None:
    from .volumes import DEFAULT_BOX_RATIO, DEFAULT_PROTEIN

    parser.add_argument("--volume", default=DEFAULT_PROTEIN,
                        help="built-in protein (`cryoem volumes`), MRC/PDB/mmCIF file, pdb:XXXX, "
                             f"emd:NNNN or phantom[:GROUP] (default: {DEFAULT_PROTEIN})")
    parser.add_argument("--n-projections", type=int, default=5000, metavar="N",
                        help="number of projections (default: 5000)")
    parser.add_argument("--size", type=int, default=64, metavar="L",
                        help="image and box edge in pixels (default: 64)")
    parser.add_argument("--snr", type=float, default=float("inf"),
                        help="signal-to-noise ratio: variance of clean pixels over noise "
                             "variance (default: inf, noiseless)")
    parser.add_argument("--max-shift", type=float, default=0.0, metavar="PX",
                        help="largest in-plane shift in pixels, triangular distribution "
                             "(default: 0)")
    parser.add_argument("--ctf", action="store_true", help="apply a random per-image CTF")
    parser.add_argument("--symmetry", default=None,
                        help="point group of the volume (default: the protein's manifest entry, "
                             "C1 for files); contradicting the manifest is an error")
    parser.add_argument("--sampling", default="uniform",
                        choices=("uniform", "euler-haar", "euler-uniform", "preferred"),
                        help="orientation distribution (default: uniform on SO(3))")
    parser.add_argument("--test-size", type=int, default=None, metavar="M",
                        help="projections in the test split (default: 33%%)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="Å per voxel (default: from the map header, or so that an atomic "
                             f"model's diameter times {DEFAULT_BOX_RATIO} fills the box)")
    parser.add_argument("--resolution", type=float, default=None,
                        help="Å, for atomic models (default: twice the voxel size)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="output dataset FILE.h5")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of sample projections (default: next to --out, same stem)")
    parser.add_argument("--no-figure", action="store_true", help="do not write the figure")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_generate(args: argparse.Namespace) -> int:
    """Simulate projections of a volume into an HDF5 dataset."""
    from . import datasets, plots, rotations, volumes

    if args.n_projections < 1 or args.size < 8:
        raise ValueError("--n-projections must be ≥ 1 and --size ≥ 8")
    start = time.perf_counter()
    volume = volumes.resolve(args.volume, args.size, voxel_size=args.voxel_size,
                             resolution=args.resolution)
    if args.symmetry is not None:
        rotations.point_group(args.symmetry)  # validates the symbol
        requested = args.symmetry.upper()
        known = volume.symmetry.upper()
        has_manifest = volume.name in volumes.builtin_names() or volume.name.startswith("phantom")
        if has_manifest and requested != known:
            raise ValueError(f"--symmetry {requested} contradicts {volume.name}'s symmetry {known}")
        volume.symmetry = requested
    path = datasets.generate(
        volume, args.n_projections, args.out, snr=args.snr, max_shift=args.max_shift,
        ctf=args.ctf, sampling=args.sampling, test_size=args.test_size, seed=args.seed,
        progress=not args.quiet, overwrite=args.overwrite,
    )
    if not args.no_figure:
        figure_path = args.figure or path.with_suffix(".png")
        data = datasets.read_images(path, slice(0, min(12, args.n_projections)))
        plots.save(plots.projection_gallery(data), figure_path)
    elapsed = time.perf_counter() - start
    ratio = f", box/particle {volume.box_ratio:.2f}" if volume.box_ratio else ""
    print(f"wrote {path}: {args.n_projections} projections of {volume.name} "
          f"({volume.symmetry}), {args.size}×{args.size} px at {volume.voxel_size:.3g} Å/px"
          f"{ratio}, SNR {args.snr:g}, shifts ≤ {args.max_shift:g} px, "
          f"CTF {'on' if args.ctf else 'off'}, in {elapsed:.1f} s")
    return 0


# ----------------------------------------------------------------------------
# Scoring: only against ground truth, or a reference when asked
# ----------------------------------------------------------------------------
def add_reference_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-poses", action="store_true",
                        help="score against the dataset's reference poses (e.g. the angles of "
                             "an imported RELION refinement) when it has no ground truth")


def scoring_reference(data: object, indices: np.ndarray, args: argparse.Namespace) -> object:
    """The poses to score against (a :class:`cryoem.datasets.Reference`), or ``None``, said aloud."""
    from . import datasets

    reference = datasets.poses_for_scoring(data, indices, getattr(args, "reference_poses", False))
    if reference is None:
        kind = data.source("orientations")  # type: ignore[attr-defined]
        hint = (" (its reference poses are used only with --reference-poses)"
                if kind == datasets.REFERENCE else "")
        print(f"not scored: {data.path} has no ground-truth orientations{hint}")  # type: ignore[attr-defined]
    return reference


def require_truth(estimator: object, data: object) -> None:
    """Refuse an estimator that reads ground truth on data that have none; name its use."""
    from . import datasets

    fields = getattr(estimator, "truth_fields", ())
    if not fields:
        return
    if data.source("orientations") != datasets.GROUND_TRUTH:  # type: ignore[attr-defined]
        raise ValueError(f"the {estimator.name} estimator reads the true orientations, which "  # type: ignore[attr-defined]
                         f"{data.path} does not have: use --estimator learned --model MODEL_DIR")  # type: ignore[attr-defined]
    print(f"ground truth used: the {estimator.name} estimator reads the true "  # type: ignore[attr-defined]
          f"{', '.join(fields)} (an oracle, not a method)")


# ----------------------------------------------------------------------------
# cryoem train
# ----------------------------------------------------------------------------
def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, nargs="+", metavar="DATA.h5",
                        help="training dataset(s), e.g. several proteins at the same --size")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR",
                        help="folder for the model, its config, history and logs")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default: 20)")
    parser.add_argument("--steps-per-epoch", type=int, default=100,
                        help="batches per epoch in rendered mode (default: 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--arch", choices=("paper", "light"), default="light",
                        help="network: the paper's 7 blocks or a light one for CPUs "
                             "(default: light)")
    parser.add_argument("--width", type=float, default=1.0, help="filter-count multiplier")
    parser.add_argument("--input-size", type=int, default=None,
                        help="downsample images to this edge inside the model (low-pass)")
    parser.add_argument("--mode", choices=("rendered", "fixed"), default="rendered",
                        help="rendered: fresh images, noise and shifts every batch; fixed: the "
                             "dataset's training split as stored (the paper's protocol)")
    parser.add_argument("--snr-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="rendered mode: SNR drawn log-uniformly in [LO, HI] per image "
                             "(default: the dataset's SNR, noiseless if it has none)")
    parser.add_argument("--max-shift", type=float, default=None, metavar="PX",
                        help="rendered mode: shifts within ±PX (default: the dataset's)")
    parser.add_argument("--allow-reference-labels", action="store_true",
                        help="fixed mode: accept labels that are not a ground truth (e.g. the "
                             "angles of an imported RELION refinement)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=6, help="early-stopping patience (epochs)")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished model in --out (an interrupted run resumes)")


def run_train(args: argparse.Namespace) -> int:
    """Train the Siamese distance network on projections."""
    from . import datasets, siamese

    siamese.configure_threads(args.threads)
    data = [datasets.load(path) for path in args.data]
    _check_labels(data, args)
    first = data[0].attrs
    snr = first.get("snr", float("inf"))
    snr_range = tuple(args.snr_range) if args.snr_range else (
        None if not np.isfinite(snr) else (snr, snr))
    config = siamese.TrainingConfig(
        arch=args.arch, width=args.width, input_size=args.input_size, mode=args.mode,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate, patience=args.patience, snr_range=snr_range,
        max_shift=args.max_shift if args.max_shift is not None else first.get("max_shift", 0.0),
        ctf=bool(first.get("ctf", False)), seed=args.seed,
    )
    start = time.perf_counter()
    history = siamese.train(data, args.out, config, overwrite=args.overwrite)
    best = min(history.get("val_loss", [float("nan")]))
    print(f"trained {args.arch} network for {len(history['loss'])} epochs in "
          f"{time.perf_counter() - start:.0f} s: best validation L_DE {best:.4f} rad²; "
          f"model in {args.out}")
    return 0


def _check_labels(data: list, args: argparse.Namespace) -> None:
    """Training labels must be a ground truth, unless the user accepts a reference."""
    from . import datasets

    for item in data:
        kind = item.source("orientations")
        if kind == datasets.GROUND_TRUTH:
            continue
        if kind == datasets.REFERENCE and args.mode == "fixed" and args.allow_reference_labels:
            print(f"training labels of {item.path}: reference poses, not a ground truth "
                  "(--allow-reference-labels)")
            continue
        need = ("rendered mode draws training images from a ground-truth map" if args.mode ==
                "rendered" else "fixed mode trains on the stored orientations as labels")
        extra = (": pass --allow-reference-labels to train on them anyway"
                 if kind == datasets.REFERENCE and args.mode == "fixed" else "")
        raise ValueError(f"{item.path} has no ground-truth orientations ({kind}); {need}{extra}")
    print("ground truth used: training reads the true " + (
        "map (volume), orientations, SNR and shift range (supervised on the true map)"
        if args.mode == "rendered" else "orientations of the training and validation splits"))


# ----------------------------------------------------------------------------
# cryoem distances
# ----------------------------------------------------------------------------
def add_distances_args(parser: argparse.ArgumentParser) -> None:
    from .distance import ESTIMATORS

    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="learned")
    parser.add_argument("--model", type=Path, default=None, metavar="MODEL_DIR",
                        help="trained model (learned estimator), or `pretrained`: the general "
                             "model shipped with cryoem")
    parser.add_argument("--sigma2", type=float, default=0.2,
                        help="noise variance in rad² (perturbed estimator, default: 0.2)")
    parser.add_argument("--split", choices=("test", "validation", "train", "all"), default="test",
                        help="which projections (default: test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, metavar="D.h5",
                        help="output HDF5 file with the distance matrix")
    add_reference_arg(parser)


def run_distances(args: argparse.Namespace) -> int:
    """Estimate the distance matrix between projections of a dataset."""
    from . import datasets, distance, rotations

    data = datasets.load(args.data)
    indices = np.arange(len(data)) if args.split == "all" else data.split[args.split]
    estimator = distance.make_estimator(args.estimator, model_dir=args.model, sigma2=args.sigma2,
                                        seed=args.seed)
    require_truth(estimator, data)
    estimator.fit(data)
    start = time.perf_counter()
    matrix = estimator.matrix(data, indices)
    elapsed = time.perf_counter() - start
    reference = scoring_reference(data, indices, args)
    score = None
    if reference is not None:
        group = data.attrs.get("symmetry", "C1")
        truth = rotations.symmetric_distance_matrix(reference.orientations,
                                                    rotations.point_group(group))
        score = distance.l_de(matrix, truth)
    distance.save_matrix(args.out, matrix, indices, estimator=args.estimator, source=str(args.data),
                         l_de=score)
    line = (f"wrote {args.out}: {len(indices)}×{len(indices)} {args.estimator} distances "
            f"({args.split} split) in {elapsed:.1f} s")
    if reference is not None:
        line += f"; L_DE against {reference.label} {score:.4f} rad²"
    print(line)
    return 0


# ----------------------------------------------------------------------------
# cryoem recover
# ----------------------------------------------------------------------------
def add_recover_args(parser: argparse.ArgumentParser) -> None:
    from .distance import ESTIMATORS

    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--distances", type=Path, metavar="D.h5",
                        help="distance matrix from `cryoem distances`")
    source.add_argument("--estimator", choices=ESTIMATORS, help="estimate distances here")
    parser.add_argument("--model", type=Path, default=None, metavar="MODEL_DIR",
                        help="trained model, or `pretrained` (the general model shipped with "
                             "cryoem: no training)")
    parser.add_argument("--sigma2", type=float, default=0.2, help="perturbed estimator's σ²")
    parser.add_argument("--split", choices=("test", "all"), default="test",
                        help="which projections (default: test, never seen in training)")
    parser.add_argument("--init", choices=("spectral", "random"), default="spectral")
    parser.add_argument("--steps", type=int, default=2000, help="gradient steps at most")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--max-distance", type=float, default=None,
                        help="down-weight pairs whose estimated distance exceeds this (rad)")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--no-resolve-frame", action="store_true",
                        help="skip choosing, from the images' common lines, the frame that "
                             "distances cannot see (the output is then right only up to O(4))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, metavar="ORIENT.h5")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reference_arg(parser)


def run_recover(args: argparse.Namespace) -> int:
    """Recover orientations from distances; score them when a ground truth exists."""
    from . import commonlines, datasets, distance, recovery

    data = datasets.load(args.data)
    if args.distances is not None:
        matrix, indices, _ = distance.load_matrix(args.distances)
    else:
        indices = np.arange(len(data)) if args.split == "all" else data.split["test"]
        estimator = distance.make_estimator(args.estimator, model_dir=args.model,
                                            sigma2=args.sigma2, seed=args.seed)
        require_truth(estimator, data)
        matrix = estimator.fit(data).matrix(data, indices)
    symmetry = data.attrs.get("symmetry", "C1")
    result = recovery.recover(matrix, init=args.init, steps=args.steps,
                              learning_rate=args.learning_rate, max_distance=args.max_distance,
                              restarts=args.restarts, symmetry=symmetry,
                              seed=args.seed, progress=not args.quiet)
    orientations, frame = result.quaternions, None
    if not args.no_resolve_frame:
        frame = commonlines.resolve_frame(data.projections[indices], result.quaternions,
                                          seed=args.seed, progress=not args.quiet)
        orientations = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    reference = scoring_reference(data, indices, args)
    scores = {} if reference is None else _recovery_scores(result.quaternions, orientations,
                                                           reference, symmetry)
    recovery.save_orientations(
        args.out, orientations, indices, result.loss_history, source=str(args.data),
        l_or=result.final_loss, init_residual=result.init_residual,
        frame_resolved=frame is not None,
        frame_confidence=None if frame is None else frame.confidence,
        scored_against=None if reference is None else reference.label,
        handedness="undetermined (projections cannot tell a map from its mirror image)",
        **scores)
    print(f"wrote {args.out}: {len(indices)} orientations in {result.seconds:.1f} s "
          f"({result.steps} steps), L_OR {result.final_loss:.4f} rad²")
    if frame is not None:
        print(f"frame chosen from common lines: {'transposed' if frame.transposed else 'plain'} "
              f"branch, confidence {frame.confidence:.1f} standard errors; the handedness stays "
              "undetermined (projections cannot tell a map from its mirror image)")
    if reference is not None:
        line = (f"E_OR against {reference.label} (used only to score): paper's O(4) metric "
                f"{scores['e_or_o4_rad']:.3f} rad; physical {scores['e_or_before_frame_rad']:.3f}"
                " rad from distances alone")
        if frame is not None:
            line += (f", {scores['e_or_rad']:.3f} rad (median {scores['e_or_median_rad']:.3f}) "
                     "after choosing the frame")
        print(line)
    if frame is not None and not frame.distinguishable:
        raise RuntimeError(
            f"the common-line score cannot distinguish the frame (confidence "
            f"{frame.confidence:.1f} < 5 standard errors): the orientations in {args.out} may be "
            "wrong for reconstruction; try more projections or a higher SNR")
    return 0


def _recovery_scores(from_distances: np.ndarray, final: np.ndarray, reference: object,
                     symmetry: str) -> dict[str, float]:
    """Both metrics of recovered orientations against reference poses."""
    from . import alignment

    truth = reference.orientations  # type: ignore[attr-defined]
    physical = alignment.align_physical(final, truth, symmetry)
    return {"e_or_o4_rad": alignment.align_o4(from_distances, truth, symmetry).mean,
            "e_or_before_frame_rad": alignment.align_physical(from_distances, truth, symmetry).mean,
            "e_or_rad": physical.mean, "e_or_median_rad": physical.median}


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
    add_reference_arg(parser)


def run_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct a map from projections and orientations; report its FSC resolution."""
    from . import datasets, reconstruction, recovery, resolution, volumes

    data = datasets.load(args.data)
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
    options = dict(shifts=shifts, ctf=data.ctf[indices] if data.ctf is not None else None,
                   pixel_size=data.pixel_size, iterations=args.iterations,
                   regularization=args.regularization, progress=not args.quiet)
    images = data.projections[indices]
    result = reconstruction.reconstruct(images, orientations, **options)
    volumes.save_map(volumes.Volume(result.data, data.pixel_size, args.out.stem), args.out)
    line = f"wrote {args.out}: {len(indices)} images, {result.iterations} CG iterations"
    line += _score_map(args, data, indices, orientations, options, notes)
    if args.half_maps:
        first, second, _ = reconstruction.half_maps(images, orientations, **options)
        for k, half in enumerate((first, second), start=1):
            volumes.save_map(volumes.Volume(half.data, data.pixel_size),
                             args.out.with_name(f"{args.out.stem}_half{k}.mrc"))
        curve = resolution.fsc(first.data, second.data, data.pixel_size, mask=True)
        line += (f"; half maps FSC 0.143: {curve.resolution(0.143):.2f} Å (halves split after "
                 "the orientations were estimated from all images: not independent)")
    print(line + (f" [{'; '.join(notes)}]" if notes else ""))
    return 0


def _reconstruction_shifts(data: object, indices: np.ndarray, estimated: np.ndarray | None,
                           oracle: bool, notes: list[str]) -> np.ndarray | None:
    """The shifts to reconstruct with: estimated ones, or the true ones when asked (an oracle)."""
    from . import datasets

    if oracle:
        if data.source("shifts") != datasets.GROUND_TRUTH:  # type: ignore[attr-defined]
            raise ValueError(f"--oracle-shifts: {data.path} has no ground-truth shifts")  # type: ignore[attr-defined]
        notes.append("true shifts (oracle)")
        return data.shifts[indices]  # type: ignore[attr-defined]
    if estimated is not None:
        notes.append("estimated shifts")
    else:
        notes.append("no shifts estimated: any shifts of the images are ignored (run cryoem "
                     "refine)")
    return estimated


def _score_map(args: argparse.Namespace, data: object, indices: np.ndarray,
               orientations: np.ndarray, options: dict, notes: list[str]) -> str:
    """FSC against the reference map, after putting a copy in the reference poses' frame.

    The map written to ``--out`` stays in the orientations' own frame (what a user without
    a truth gets); the aligned copy ``MAP_aligned_to_truth.mrc`` exists only to score.
    """
    from . import alignment, reconstruction, resolution, volumes

    reference_map = (volumes.load_map(args.reference).data if args.reference is not None
                     else data.volume)  # type: ignore[attr-defined]
    if reference_map is None:
        return "; not scored (no reference map: pass --reference TRUE.mrc)"
    reference = scoring_reference(data, indices, args)
    if reference is None:
        return "; not scored against a map (no poses to align the map's frame with)"
    fit = alignment.align_physical(orientations, reference.orientations,  # type: ignore[attr-defined]
                                   data.attrs.get("symmetry", "C1"))  # type: ignore[attr-defined]
    aligned = reconstruction.reconstruct(data.projections[indices],  # type: ignore[attr-defined]
                                         fit.to_truth_frame(orientations),
                                         **{**options, "progress": False})
    path = args.out.with_name(f"{args.out.stem}_aligned_to_truth.mrc")
    volumes.save_map(volumes.Volume(aligned.data, data.pixel_size, path.stem), path)  # type: ignore[attr-defined]
    notes.append(f"scored after a copy was put in the frame of {reference.label} "  # type: ignore[attr-defined]
                 f"(global rotation{', mirrored' if fit.flipped else ''}): {path.name}")
    curve = resolution.fsc(aligned.data, reference_map, data.pixel_size)  # type: ignore[attr-defined]
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reference_arg(parser)


def run_refine(args: argparse.Namespace) -> int:
    """Refine orientations and estimate shifts by gold-standard local projection matching."""
    from . import alignment, datasets, recovery, refinement

    data = datasets.load(args.data)
    q, indices, attrs = recovery.load_orientations(args.orientations)
    result = refinement.refine(
        data.projections[indices], q, shifts=attrs.get("shifts"),
        ctf=data.ctf[indices] if data.ctf is not None else None, pixel_size=data.pixel_size,
        iterations=args.iterations, global_iterations=args.global_iterations, step=args.step,
        max_shift_total=args.max_shift, seed=args.seed, progress=not args.quiet)
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
                               source=str(args.data), **scores)
    line = (f"wrote {args.out}: {len(indices)} orientations and shifts refined in "
            f"{len(result.history)} iterations; half maps FSC 0.143 "
            f"{last['halfmap_fsc0143_angstrom']:.2f} Å")
    if reference is not None:
        line += (f"; physical E_OR against {reference.label} (used only to score) "
                 f"{scores['e_or_unrefined_rad']:.3f} → {scores['e_or_rad']:.3f} rad")
    print(line)
    return 0


# ----------------------------------------------------------------------------
# cryoem export-relion / import-relion
# ----------------------------------------------------------------------------
def add_export_relion_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    parser.add_argument("--orientations", type=Path, default=None, metavar="ORIENT.h5",
                        help="recovered orientations (default: the dataset's own)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--overwrite", action="store_true")


def run_export_relion(args: argparse.Namespace) -> int:
    """Write the particles as an MRCS stack and a RELION STAR file."""
    from . import datasets, recovery, relion

    data = datasets.load(args.data)
    orientations = indices = shifts = None
    if args.orientations is not None:
        orientations, indices, attrs = recovery.load_orientations(args.orientations)
        # The shifts that belong to these orientations: those estimated with them (cryoem
        # refine), else none (zero); never the dataset's own.
        shifts = attrs.get("shifts")
        if shifts is None:
            shifts = np.zeros((len(indices), 2))
        poses = (f"orientations of {args.orientations}, "
                 f"{'their estimated shifts' if 'shifts' in attrs else 'zero shifts (none estimated)'}")
    else:
        kind = data.source("orientations")
        if kind == datasets.ABSENT:
            raise ValueError(f"{args.data} holds no orientations: pass --orientations ORIENT.h5")
        poses = f"the dataset's own poses ({kind.replace('_', ' ')})"
    star = relion.export_relion(data, args.out, orientations=orientations, indices=indices,
                                shifts=shifts, overwrite=args.overwrite)
    count = len(data) if indices is None else len(indices)
    print(f"wrote {star} and its stack: {count} particles at {data.pixel_size:.3g} Å/px "
          f"with {poses}")
    return 0


def add_import_relion_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--out", type=Path, required=True, metavar="DATA.h5")
    parser.add_argument("--size", type=int, default=None,
                        help="resample the particles to this box (what a trained model expects)")
    parser.add_argument("--model", default=None, metavar="MODEL_DIR",
                        help="resample to the image size this model expects (`pretrained`: the "
                             "general model shipped with cryoem); overrides --size")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="Å/px when the STAR file lacks it")
    parser.add_argument("--datadir", type=Path, default=None, metavar="DIR",
                        help="folder the stack paths in the STAR file are relative to (a RELION "
                             "project folder; default: the STAR file's folder)")
    parser.add_argument("--overwrite", action="store_true")


def run_import_relion(args: argparse.Namespace) -> int:
    """Turn a RELION particle set (STAR + MRCS) into a dataset."""
    from . import datasets, particles

    if args.model is not None:
        args.size = _model_image_size(args.model)
    path = particles.import_relion(args.star, args.out, size=args.size,
                                   pixel_size=args.pixel_size, datadir=args.datadir,
                                   overwrite=args.overwrite)
    data = datasets.load(path, images=False)
    poses = {datasets.REFERENCE: "angles kept as reference poses (scored only with "
                                 "--reference-poses)",
             datasets.ABSENT: "no angles"}[data.source("orientations")]
    print(f"wrote {path}: {len(data)} particles of {data.size} px at {data.pixel_size:.3g} Å/px"
          f"{', with CTF' if data.ctf is not None else ''}; {poses}")
    return 0


def _model_image_size(model: str) -> int:
    """The image edge a model was trained on (its config; no TensorFlow needed)."""
    from ._models import read_config

    return int(read_config(model)["image_size"])


# ----------------------------------------------------------------------------
# cryoem score
# ----------------------------------------------------------------------------
def add_score_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("estimate", type=Path, metavar="ESTIMATE",
                        help="estimated poses: STAR file, cryoem orientation file or dataset")
    parser.add_argument("--truth", type=Path, required=True, metavar="REFERENCE",
                        help="poses to score against (same kinds): a ground truth, or another "
                             "program's refinement")
    parser.add_argument("--map", type=Path, default=None, metavar="MAP.mrc",
                        help="the estimate's map (with --reference-map: FSC after alignment)")
    parser.add_argument("--reference-map", type=Path, default=None, metavar="REF.mrc",
                        help="the reference's map")
    parser.add_argument("--symmetry", default="C1", help="point group (default: C1)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                        help="also write the scores as JSON")


def run_score(args: argparse.Namespace) -> int:
    """Score estimated poses against a reference (ground truth or another program's)."""
    import json

    from . import scoring

    if (args.map is None) != (args.reference_map is None):
        raise ValueError("--map and --reference-map go together")
    result = scoring.score(args.estimate, args.truth, symmetry=args.symmetry,
                           estimate_map=args.map, reference_map=args.reference_map)
    print(f"{result['matched']} particles matched by {result['matched_by']} "
          f"({result['estimate_count']} estimated, {result['reference_count']} in the reference)")
    print(f"physical E_OR {result['e_or_rad']:.4f} rad (median {result['e_or_median_rad']:.4f}, "
          f"{100 * result['within_0.1_rad']:.1f} % within 0.1 rad); paper's O(4) E_OR "
          f"{result['e_or_o4_rad']:.4f} rad; handedness {result['handedness']}")
    if "fsc05_angstrom" in result:
        print(f"maps: FSC 0.5 {result['fsc05_angstrom']:.2f} Å, FSC 0.143 "
              f"{result['fsc0143_angstrom']:.2f} Å ({result['map_aligned']})")
    if args.json is not None:
        from ._files import atomic_path

        with atomic_path(args.json) as partial:
            partial.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------
# cryoem pipeline
# ----------------------------------------------------------------------------
def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    from .distance import ESTIMATORS
    from .pipeline import PipelineConfig

    d = PipelineConfig()
    parser.add_argument("--volume", default=d.volume,
                        help=f"built-in protein, map or model file, or phantom (default: {d.volume})")
    parser.add_argument("--n-projections", type=int, default=d.n_projections,
                        help=f"projections generated: train + validation + test (default: "
                             f"{d.n_projections})")
    parser.add_argument("--test-size", type=int, default=d.test_size,
                        help=f"projections recovered and scored (default: {d.test_size})")
    parser.add_argument("--size", type=int, default=d.size, help=f"image edge (default: {d.size})")
    parser.add_argument("--snr", type=float, default=d.snr, help="signal-to-noise ratio (default: inf)")
    parser.add_argument("--max-shift", type=float, default=d.max_shift, metavar="PX")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=d.estimator)
    parser.add_argument("--model", default=None, metavar="MODEL_DIR",
                        help="trained model (skips training), or `pretrained`: the general "
                             "model shipped with cryoem")
    parser.add_argument("--training", choices=("rendered", "fixed"), default=d.training,
                        help="rendered (default): images drawn from the TRUE map at the data's "
                             "SNR, labelled with their true orientations - supervised on the "
                             "true map, an upper bound; fixed: the training split's labelled "
                             "projections only (the paper's protocol)")
    parser.add_argument("--particles", default=None, metavar="PATH",
                        help="start from these particles (RELION STAR or cryoem dataset) "
                             "instead of simulating; needs --model (e.g. pretrained)")
    parser.add_argument("--datadir", default=None, metavar="DIR",
                        help="with a STAR file: the folder its stack paths are relative to")
    parser.add_argument("--reference-poses", action="store_true",
                        help="with --particles: score against their reference poses (e.g. a "
                             "RELION refinement's angles); they are never used to estimate")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs at most")
    parser.add_argument("--train-seconds", type=float, default=d.train_seconds,
                        help=f"training time budget (default: {d.train_seconds:.0f} s)")
    parser.add_argument("--sigma2", type=float, default=d.sigma2, help="perturbed estimator's σ²")
    parser.add_argument("--steps", type=int, default=d.steps, help="recovery steps at most")
    parser.add_argument("--no-refine", action="store_true",
                        help="skip the local refinement (which also estimates the shifts)")
    parser.add_argument("--refine-iterations", type=int, default=d.refine_iterations)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, default=Path("data/pipeline"), metavar="DIR",
                        help="output folder (default: data/pipeline); rerun to resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_pipeline(args: argparse.Namespace) -> int:
    """Run the whole method: generate, train, distances, recover, resolve, reconstruct, export."""
    from . import pipeline

    config = pipeline.PipelineConfig(
        volume=args.volume, n_projections=args.n_projections, test_size=args.test_size,
        size=args.size, snr=args.snr, max_shift=args.max_shift, estimator=args.estimator,
        model=args.model, training=args.training, particles=args.particles, datadir=args.datadir,
        reference_poses=args.reference_poses, epochs=args.epochs, train_seconds=args.train_seconds,
        sigma2=args.sigma2, steps=args.steps, refine=not args.no_refine,
        refine_iterations=args.refine_iterations, seed=args.seed)
    metrics = pipeline.run(config, args.out, progress=not args.quiet)
    print(f"\nresults in {args.out} (metrics.json, maps, figures/, relion/)")
    print(pipeline.summary(metrics))
    return 0


# ----------------------------------------------------------------------------
# cryoem notebooks run
# ----------------------------------------------------------------------------
def add_notebooks_args(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run", help="execute every notebook in order with papermill",
        description="Execute notebooks/[0-9]*.ipynb in order, headless, each in a fresh kernel: "
                    "NAME.ipynb writes its executed copy to DIR/NAME.ipynb, its metrics to "
                    "DIR/NAME.json and its data into DIR/data-NAME/.  The first failing "
                    "notebook stops the run.")
    run.add_argument("--params", default="full", metavar="quick|full|FILE.yaml",
                     help="quick: notebooks/ci-parameters.yml (minutes); full: the notebooks' "
                          "own defaults (default); or a YAML file of the same format")
    run.add_argument("--out", type=Path, default=Path("data/notebooks"), metavar="DIR",
                     help="output folder (default: data/notebooks)")
    run.add_argument("--source", type=Path, default=None, metavar="DIR",
                     help="folder of the notebooks (default: the repository's notebooks/)")
    run.add_argument("--only", nargs="+", default=None, metavar="NAME",
                     help="run only these notebooks (file name, stem or leading number)")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")


def run_notebooks(args: argparse.Namespace) -> int:
    """Rerun all notebooks in order, headless (`cryoem notebooks run --out DIR`)."""
    try:
        from . import notebooks
        import papermill  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{error}; install the notebook tools with "
                           "pip install -e \".[notebooks]\"") from None

    print(f"notebooks with {args.params} parameters into {args.out}", flush=True)
    start = time.perf_counter()
    runs = notebooks.run_all(args.out, args.params, source=args.source, only=args.only,
                             kernel=args.kernel, report=lambda line: print(line, flush=True))
    print(f"{len(runs)} notebooks in {time.perf_counter() - start:.0f} s; "
          f"publish them with: cryoem site build --notebooks {args.out}")
    return 0


# ----------------------------------------------------------------------------
# cryoem site build
# ----------------------------------------------------------------------------
def add_site_args(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="static HTML site from executed notebooks, viewable offline",
        description="Build index.html (method, results table, links) and one page per executed "
                    "notebook; pages load nothing from the network.")
    build.add_argument("--notebooks", type=Path, default=Path("data/notebooks"), metavar="DIR",
                       help="executed notebooks and their metrics JSON, as written by "
                            "`cryoem notebooks run` (default: data/notebooks)")
    build.add_argument("--out", type=Path, default=Path("data/site"), metavar="SITE_DIR",
                       help="site folder (default: data/site)")
    build.add_argument("--results", type=Path, default=None, metavar="PATH",
                       help="benchmark results markdown for results.html (default: "
                            "benchmarks/results.md here, written by benchmarks/results_table.py)")


def run_site(args: argparse.Namespace) -> int:
    """Build a static site of the executed notebooks that works offline (`cryoem site build`)."""
    try:
        from . import notebooks
        import nbconvert  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{error}; install the site tools with pip install -e \".[site]\"") \
            from None

    pages = notebooks.build_site(args.notebooks, args.out, results=args.results)
    for page in pages:
        print(page)
    print(f"{len(pages) - 2} notebook pages, the results page and the index; open {pages[0]}")
    return 0


# ----------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "pipeline": (add_pipeline_args, run_pipeline),
    "generate": (add_generate_args, run_generate),
    "train": (add_train_args, run_train),
    "distances": (add_distances_args, run_distances),
    "recover": (add_recover_args, run_recover),
    "refine": (add_refine_args, run_refine),
    "reconstruct": (add_reconstruct_args, run_reconstruct),
    "export-relion": (add_export_relion_args, run_export_relion),
    "import-relion": (add_import_relion_args, run_import_relion),
    "score": (add_score_args, run_score),
    "volumes": (add_volumes_args, run_volumes),
    "notebooks": (add_notebooks_args, run_notebooks),
    "site": (add_site_args, run_site),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cryoem`` command."""
    parser = argparse.ArgumentParser(
        prog="cryoem",
        description="Learning to recover orientations from projections in single-particle "
                    "cryo-EM.")
    parser.add_argument("--version", action="version", version=f"cryoem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, run) in COMMANDS.items():
        doc = (run.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=doc, description=doc)
        add_args(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors print one clear line and return status 2 or 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ConnectionError,
            RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cryoem {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryoem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
