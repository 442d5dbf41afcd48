"""Commands of the method's phases: train, distances, recover, refine, reconstruct.

Each scores its output only against a ground truth, or against reference poses when
asked (``--reference-poses``), and names any ground truth it reads for more than scoring.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..datasets import Dataset, Reference
    from ..distance import Estimator
    from ..stacks import ImageStack


# ----------------------------------------------------------------------------
# Scoring: only against ground truth, or a reference when asked
# ----------------------------------------------------------------------------
def add_reference_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-poses", action="store_true",
                        help="score against the dataset's reference poses (e.g. the angles of "
                             "an imported RELION refinement) when it has no ground truth")


def scoring_reference(data: Dataset, indices: np.ndarray,
                      args: argparse.Namespace) -> Reference | None:
    """The poses to score against (a :class:`cryoem.datasets.Reference`), or ``None``, said aloud."""
    from .. import datasets

    reference = datasets.poses_for_scoring(data, indices, getattr(args, "reference_poses", False))
    if reference is None:
        kind = data.source("orientations")
        hint = (" (its reference poses are used only with --reference-poses)"
                if kind == datasets.REFERENCE else "")
        print(f"not scored: {data.path} has no ground-truth orientations{hint}")
    return reference


def add_dask_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dask-scheduler", default=None, metavar="ADDRESS|local[:N]",
                        help="run the data-parallel work on Dask: local:N starts N worker "
                             "processes here, an address (tcp://host:8786) joins a running "
                             "scheduler, e.g. on a SLURM cluster (default: in-process)")


def lazy_images(data: Dataset, indices: np.ndarray) -> "ImageStack":
    """The dataset's images at ``indices``, read from its file a chunk at a time."""
    from ..stacks import ImageStack

    return ImageStack(data.path, indices)


def require_truth(estimator: Estimator, data: Dataset) -> None:
    """Refuse an estimator that reads ground truth on data that have none; name its use."""
    from .. import distance

    distance.check_truth(estimator, data)
    fields = estimator.truth_fields
    if fields:
        print(f"ground truth used: the {estimator.name} estimator reads the true "
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
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per batch, and per replica with --strategy: each replica "
                             "pairs its own batch, so a step takes batch × replicas images "
                             "(default: 64)")
    parser.add_argument("--strategy", choices=("none", "mirrored", "multiworker"), default="none",
                        help="tf.distribute (TensorFlow backend): mirrored = the GPUs of this "
                             "host; multiworker = several hosts, from TF_CONFIG (see "
                             "cryoem.devices) (default: none, one device)")
    parser.add_argument("--logical-cpus", type=int, default=None, metavar="N",
                        help="with --strategy mirrored: split the CPU into N logical devices "
                             "and mirror over them (tests and demonstrations, not faster)")
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
    from .. import datasets, devices, siamese, training

    siamese.configure_threads(args.threads)
    strategy = devices.make_strategy(args.strategy, args.logical_cpus)  # before TF starts
    if strategy is not None:
        print(f"{devices.describe(strategy)}; each step takes {devices.replicas(strategy)} "
              f"× {args.batch_size} images, pairs formed within each replica's {args.batch_size}")
    data = [datasets.load(path) for path in args.data]
    _check_labels(data, args)
    first = data[0].attrs
    snr = first.get("snr", float("inf"))
    snr_range = tuple(args.snr_range) if args.snr_range else (
        None if not np.isfinite(snr) else (snr, snr))
    config = training.TrainingConfig(
        arch=args.arch, width=args.width, input_size=args.input_size, mode=args.mode,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate, patience=args.patience, snr_range=snr_range,
        max_shift=args.max_shift if args.max_shift is not None else first.get("max_shift", 0.0),
        ctf=bool(first.get("ctf", False)), seed=args.seed,
    )
    start = time.perf_counter()
    history = training.train(data, args.out, config, overwrite=args.overwrite, strategy=strategy)
    best = min(history.get("val_loss", [float("nan")]))
    print(f"trained {args.arch} network for {len(history['loss'])} epochs in "
          f"{time.perf_counter() - start:.0f} s: best validation L_DE {best:.4f} rad²; "
          f"model in {args.out}")
    return 0


def _check_labels(data: list[Dataset], args: argparse.Namespace) -> None:
    """Training labels must be a ground truth, unless the user accepts a reference; say which."""
    from .. import datasets

    truth = []
    for item in data:
        kind = item.source("orientations")
        if kind == datasets.GROUND_TRUTH:
            truth.append(item)
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
    if truth:
        read = ("map (volume), orientations, SNR and shift range: supervised on the true map"
                if args.mode == "rendered" else
                "orientations of the training and validation splits")
        print(f"ground truth used: training reads the true {read} "
              f"({', '.join(str(item.path) for item in truth)})")


# ----------------------------------------------------------------------------
# cryoem distances
# ----------------------------------------------------------------------------
def add_distances_args(parser: argparse.ArgumentParser) -> None:
    from ..distance import ESTIMATORS

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
    parser.add_argument("--neighbours", type=int, default=None, metavar="K",
                        help="learned estimator, for large N: write the embeddings and each "
                             "projection's K nearest neighbours instead of the N×N matrix "
                             "(`cryoem recover` then runs in bounded memory)")
    add_dask_arg(parser)
    add_reference_arg(parser)


def run_distances(args: argparse.Namespace) -> int:
    """Estimate the distance matrix between projections of a dataset."""
    from .. import datasets, distance, rotations

    if args.dask_scheduler is not None and args.neighbours is None:
        raise ValueError("--dask-scheduler embeds the images on Dask workers with --neighbours; "
                         "the dense N×N matrix (small N) is computed in-process")
    data = datasets.load(args.data, images=args.neighbours is None)
    indices = np.arange(len(data)) if args.split == "all" else data.split[args.split]
    estimator = distance.make_estimator(args.estimator, model_dir=args.model, sigma2=args.sigma2,
                                        seed=args.seed)
    require_truth(estimator, data)
    estimator.fit(data)
    if args.neighbours is not None:
        return _write_embeddings(args, data, indices, estimator)
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


def _write_embeddings(args: argparse.Namespace, data: Dataset, indices: np.ndarray,
                      estimator: Estimator) -> int:
    """``cryoem distances --neighbours K``: embeddings and their k-NN graph, no N×N matrix;
    the images read a chunk at a time (embedded on Dask workers with --dask-scheduler)."""
    from .. import distance, distributed, embedding_graph, rotations

    if not isinstance(estimator, distance.LearnedDistance):
        raise ValueError(f"--neighbours needs an embedding, which the {args.estimator} "
                         "estimator has not: drop --neighbours for its dense matrix")
    start = time.perf_counter()
    with distributed.connect(args.dask_scheduler) as client:
        features = embedding_graph.embed(estimator.model_dir, lazy_images(data, indices),
                                         client=client)
    rows, cols, d = embedding_graph.neighbour_graph(features, args.neighbours)
    elapsed = time.perf_counter() - start
    reference = scoring_reference(data, indices, args)
    score = None
    if reference is not None:
        q, group = reference.orientations, data.attrs.get("symmetry", "C1")
        score = distance.l_de(d, rotations.symmetric_distance(q[rows], q[cols], group))
    embedding_graph.save_embeddings(args.out, features, indices, rows, cols, d,
                                    estimator=args.estimator, source=str(args.data),
                                    neighbours=args.neighbours, l_de_neighbours=score)
    line = (f"wrote {args.out}: {len(indices)} embeddings ({features.shape[1]} dimensions) and "
            f"their {args.neighbours}-nearest-neighbour graph ({args.split} split) in "
            f"{elapsed:.1f} s")
    if reference is not None:
        line += f"; L_DE of the neighbour pairs against {reference.label} {score:.4f} rad²"
    print(line)
    return 0


# ----------------------------------------------------------------------------
# cryoem recover
# ----------------------------------------------------------------------------
def add_recover_args(parser: argparse.ArgumentParser) -> None:
    from ..distance import ESTIMATORS

    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--distances", type=Path, metavar="D.h5",
                        help="distance matrix from `cryoem distances`, or its embeddings and "
                             "neighbour graph (--neighbours): then recovered in bounded memory")
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
    parser.add_argument("--landmarks", type=int, default=1000,
                        help="embeddings file: points recovered densely first (default: 1000)")
    parser.add_argument("--random-per-point", type=int, default=20,
                        help="embeddings file: random pairs per point besides the neighbours "
                             "(default: 20)")
    parser.add_argument("--no-resolve-frame", action="store_true",
                        help="skip choosing, from the images' common lines, the frame that "
                             "distances cannot see (the output is then right only up to O(4))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, metavar="ORIENT.h5")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reference_arg(parser)


def run_recover(args: argparse.Namespace) -> int:
    """Recover orientations from distances; score them when a ground truth exists."""
    from .. import commonlines, datasets, distance, embedding_graph, recovery

    data = datasets.load(args.data)
    sparse = args.distances is not None and embedding_graph.is_embeddings_file(args.distances)
    if sparse:
        embeddings = embedding_graph.load_embeddings(args.distances)
        indices = embeddings.indices
    elif args.distances is not None:
        matrix, indices, _ = distance.load_matrix(args.distances)
    else:
        indices = np.arange(len(data)) if args.split == "all" else data.split["test"]
        estimator = distance.make_estimator(args.estimator, model_dir=args.model,
                                            sigma2=args.sigma2, seed=args.seed)
        require_truth(estimator, data)
        matrix = estimator.fit(data).matrix(data, indices)
    symmetry = data.attrs.get("symmetry", "C1")
    if sparse:
        if args.init != "spectral" or args.restarts != 1:
            raise ValueError("an embeddings file starts from its landmarks' spectral recovery: "
                             "--init and --restarts apply to a distance matrix only")
        result = embedding_graph.recover_from_embeddings(
            embeddings.features, random_per_point=args.random_per_point,
            landmarks=args.landmarks, seed=args.seed, graph=embeddings.graph, steps=args.steps,
            learning_rate=args.learning_rate, max_distance=args.max_distance,
            symmetry=symmetry, progress=not args.quiet)
    else:
        result = recovery.recover(matrix, init=args.init, steps=args.steps,
                                  learning_rate=args.learning_rate,
                                  max_distance=args.max_distance, restarts=args.restarts,
                                  symmetry=symmetry, seed=args.seed, progress=not args.quiet)
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


def _recovery_scores(from_distances: np.ndarray, final: np.ndarray, reference: Reference,
                     symmetry: str) -> dict[str, float]:
    """Both metrics of recovered orientations against reference poses."""
    from .. import alignment

    truth = reference.orientations
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
            start_iterations=args.start_iterations, seed=args.seed, client=client,
            progress=not args.quiet)
    independence = gold_standard.independence(
        start is not None, round(gold_standard.start_resolution(
            args.initial_resolution or 30.0, data.size, data.pixel_size), 1))
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
