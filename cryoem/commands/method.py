"""Commands of the method's phases: train, distances, recover (refine and reconstruct:
:mod:`cryoem.commands.maps`).

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
    if getattr(estimator, "phase_flips", False) and data.ctf is not None and data.simulated_ctf:
        print("ground truth used: the model phase-flips the images with the simulation's exact "
              "CTF parameters")


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
    parser.add_argument("--front", choices=("cartesian", "polar"), default="cartesian",
                        help="cartesian: the pixels; polar: rings of samples, convolutions "
                             "wrapped around the angle (cryoem.polar) (default: cartesian)")
    parser.add_argument("--feature-dim", type=int, default=128,
                        help="size of each image's embedding (default: 128)")
    parser.add_argument("--horizon", type=float, default=None, metavar="RAD",
                        help="pairs truly farther apart than RAD need only be estimated "
                             "farther (a hinge), pairs within are fitted (default: fit all)")
    parser.add_argument("--confidence", action="store_true",
                        help="a second head: a variance per image, trained with the pairs' "
                             "Gaussian likelihood (LearnedDistance.variance_matrix; "
                             "recovery.recover(pair_weights=1/variance))")
    parser.add_argument("--input-size", type=int, default=None,
                        help="downsample images to this edge inside the model (low-pass)")
    parser.add_argument("--mode", choices=("rendered", "fixed"), default="rendered",
                        help="rendered: fresh images, noise and shifts every batch; fixed: the "
                             "dataset's training split as stored (the paper's protocol)")
    parser.add_argument("--snr-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="rendered mode: SNR drawn log-uniformly in [LO, HI] per image "
                             "(default: the dataset's SNR, noiseless if it has none)")
    parser.add_argument("--curriculum", type=float, nargs=2, default=None,
                        metavar=("SNR_START", "EPOCHS"),
                        help="rendered mode: the SNR starts at SNR_START and falls geometrically "
                             "to --snr-range over EPOCHS epochs (e.g. 16 8 for noisy data)")
    parser.add_argument("--max-shift", type=float, default=None, metavar="PX",
                        help="rendered mode: shifts within ±PX (default: the dataset's)")
    parser.add_argument("--turns", type=int, choices=(1, 2, 4), default=1,
                        help="rendered mode: each rendered image also serves turned in-plane by "
                             "the multiples of 360°/TURNS, with exact labels R_z(α)·R (fewer "
                             "renders per batch)")
    parser.add_argument("--phase-flip", action="store_true",
                        help="rendered mode, data with a CTF: train on phase-flipped images "
                             "(|CTF|); the model then phase-flips the images of data that carry "
                             "CTF parameters before the network (cryoem.projection.phase_flip)")
    parser.add_argument("--mix", type=int, default=1, metavar="K",
                        help="rendered mode, several datasets: each step's images come from K "
                             "of their volumes, pairs within each volume's share (default: 1, "
                             "one volume a step, round-robin)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="rendered mode: N threads prepare batches ahead of the training "
                             "step, for a GPU that would wait on the CPU (default: 1, in the "
                             "training loop)")
    parser.add_argument("--allow-reference-labels", action="store_true",
                        help="fixed mode: accept labels that are not a ground truth (e.g. the "
                             "angles of an imported RELION refinement)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("plateau", "cosine"), default="plateau",
                        help="plateau: halve the learning rate when the validation loss stalls "
                             "(and stop after --patience epochs without progress); cosine: lower "
                             "it along a half cosine to 1 %% over the epochs (no early stop)")
    parser.add_argument("--patience", type=int, default=6, help="early-stopping patience (epochs)")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished model in --out (an interrupted run resumes)")
    parser.add_argument("--members", type=int, default=1, metavar="K",
                        help="train an ensemble of K networks (seeds SEED, SEED+1, ...) that "
                             "share --epochs (and the budget), in --out/members/; their "
                             "distances are averaged (default: 1, one network)")


def run_train(args: argparse.Namespace) -> int:
    """Train the Siamese distance network on projections."""
    from .. import datasets, devices, ensemble, siamese, training

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
        front=args.front, feature_dim=args.feature_dim, horizon=args.horizon,
        confidence=args.confidence,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate, patience=args.patience, snr_range=snr_range,
        max_shift=args.max_shift if args.max_shift is not None else first.get("max_shift", 0.0),
        ctf=bool(first.get("ctf", False)), seed=args.seed,
        snr_start=args.curriculum[0] if args.curriculum else None,
        curriculum_epochs=int(args.curriculum[1]) if args.curriculum else 0,
        turns=args.turns, schedule=args.schedule, workers=args.workers,
        phase_flip=args.phase_flip, mix=args.mix,
    )
    start = time.perf_counter()
    if args.members == 1:
        histories = [training.train(data, args.out, config, overwrite=args.overwrite,
                                    strategy=strategy)]
    elif strategy is not None:
        raise SystemExit("error: --members trains one network after another: use it without "
                         "--strategy")
    else:
        histories = ensemble.train_ensemble(data, args.out, config, args.members,
                                            overwrite=args.overwrite)
    epochs = sum(len(h.get("loss", [])) for h in histories)
    best = min((v for h in histories for v in h.get("val_loss", [])), default=float("nan"))
    what = f"{args.members} {args.arch} networks" if args.members > 1 else f"{args.arch} network"
    print(f"trained {what} for {epochs} epochs in {time.perf_counter() - start:.0f} s: best "
          f"validation L_DE {best:.4f} rad²; model in {args.out}")
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
    parser.add_argument("--test-turns", type=int, choices=(1, 2, 4), default=4,
                        help="learned estimator: average each pair's distance over the images "
                             "turned together by 360°/T (default: 4, exact quarter turns)")
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
                                        seed=args.seed, turns=args.test_turns)
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
    parser.add_argument("--robust", type=float, default=None, metavar="RAD",
                        help="distance matrix: Cauchy rounds after the descent, residual scale "
                             "RAD (pairs the others contradict count less; the pipeline uses "
                             "0.3); default: plain least squares")
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
        if args.init != "spectral" or args.restarts != 1 or args.robust is not None:
            raise ValueError("an embeddings file starts from its landmarks' spectral recovery: "
                             "--init, --restarts and --robust apply to a distance matrix only")
        result = embedding_graph.recover_from_embeddings(
            embeddings.features, random_per_point=args.random_per_point,
            landmarks=args.landmarks, seed=args.seed, graph=embeddings.graph, steps=args.steps,
            learning_rate=args.learning_rate, max_distance=args.max_distance,
            symmetry=symmetry, progress=not args.quiet)
    else:
        result = recovery.recover(matrix, init=args.init, steps=args.steps,
                                  learning_rate=args.learning_rate,
                                  max_distance=args.max_distance, restarts=args.restarts,
                                  robust=args.robust, symmetry=symmetry, seed=args.seed,
                                  progress=not args.quiet)
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
    return {"e_or_o4_rad": alignment.align_o4_from([from_distances, final], truth, symmetry).mean,
            "e_or_before_frame_rad": alignment.align_physical(from_distances, truth, symmetry).mean,
            "e_or_rad": physical.mean, "e_or_median_rad": physical.median}
