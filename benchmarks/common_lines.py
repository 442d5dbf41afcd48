"""Compare our pipeline with ASPIRE's common-lines synchronisation (``CLSyncVoting``) by SNR.

Both methods get exactly the same images: the first ``--n-subset`` (default
500) projections of the test split of the dataset a ``cryoem.pipeline`` run
would generate (``datasets.generate(volumes.resolve(--volume, --size),
--n-projections, snr=SNR, max_shift=--max-shift, test_size=--test-size,
seed=0)``: 4ake, 64 px, 5,000 projections, 1,650 test, shifts up to 2 px).
One file per SNR (``--snrs``, default ``inf 1 1/4 1/16 1/32``); the same seed
gives every SNR the same orientations, shifts and split, which is checked.
A matching ``data.h5`` of a pipeline run under ``--runs-dir`` is reused;
otherwise the file is generated once into ``--work-dir`` and reused later.

**Ours** (ground truth is read only to score):

1. distances: ``LearnedDistance`` between the subset's images, with the model
   of ``--model``: ``auto`` (default) is the model that the pipeline trains on
   that SNR's dataset in its default 300 s (the run ``<volume>_snr<SNR>_learned_refined``
   under ``--runs-dir``, shared with ``paper_table.py``; run if missing, which
   also records the pipeline's own result on the whole test split), a folder,
   or ``pretrained`` (the general model shipped in the package);
2. recovery: ``recovery.recover`` (spectral initialisation + Adam, as the
   pipeline);
3. frame: ``commonlines.resolve_frame`` on the images, then
   ``recovery.to_asymmetric_unit``;
4. refinement: ``refinement.refine`` (``--iterations``, default 6), which
   also estimates the shifts (the true shifts are never given).

**ASPIRE**: ``aspire_commonlines_worker.py`` in ASPIRE's own environment
(``--aspire-python``, one BLAS/OpenMP thread) on the same images; its
rotations map the image frame into the volume, so they are transposed into
our convention.  ``CLSyncVoting`` returns no shifts: its map uses zero shifts.

**Oracle**: the map from the true orientations and the true shifts.

Scores, the same code for both methods: the physical error ``E_OR``
(``alignment.align_physical``: best global rotation and handedness; mean,
median and the share of images within 10°), and the FSC = 0.5 resolution
against the ground-truth map of the least-squares reconstruction from each
method's orientations (and shifts) after moving them into the truth's frame
(the physical transform only, as ``pipeline._reconstruct`` does; scoring
only).  Seconds: ours = distances + recovery + frame + refinement (model
loading apart); ASPIRE = the worker's ``ArrayImageSource`` + ``CLSyncVoting``
+ ``estimate_rotations`` (process start and imports apart, in
``wall_seconds``).

Goal: where ASPIRE works (its mean ``E_OR`` ≤ ``--works-below`` rad, default
0.5), our refined ``E_OR`` within 1.5× of its; where it fails, ours lower.

Usage (from the repository root)::

    .venv/bin/python benchmarks/common_lines.py                 # the full comparison
    .venv/bin/python benchmarks/common_lines.py --snrs 1/16 --model data/benchmarks/pipeline/model
    .venv/bin/python benchmarks/common_lines.py --quick         # tiny, for CI (< 1 min)

It prints a table, writes ``benchmarks/results/common_lines.json`` (``--out``;
``--quick``: ``common_lines_quick.json``) after each SNR, and draws ``E_OR``
against the SNR for both methods (``--figure``, default
``images/common-lines-snr.png``).  Rerunning resumes: the parts of a row
(ours, ASPIRE, oracle) already in the JSON with the same settings are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from _common import (jsonable, machine_info, pipeline_row, positive_snr,  # noqa: E402
                     snr_label, snr_tag, volume_name, write_report)
from numpy.typing import NDArray
from refinement import ASPIRE_THREAD_ENV, DEFAULT_ASPIRE_PYTHON, WORKER, timed  # noqa: E402

if TYPE_CHECKING:
    from cryoem.alignment import Alignment
    from cryoem.datasets import Dataset
    from cryoem.distance import Estimator

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "common_lines.json"
QUICK_OUT = HERE / "results" / "common_lines_quick.json"
DEFAULT_FIGURE = Path("images/common-lines-snr.png")
WORK_DIR = Path("data/benchmarks/common_lines")
RUNS_DIR = Path("data/benchmarks/runs")
SEED = 0  # the pipeline's: every SNR shares orientations, shifts and split
WITHIN_DEGREES = 10.0
GOAL_FACTOR = 1.5
PARTS = ("ours", "aspire", "oracle")
#: --quick: fewer common-line pairs in the frame step (60 images have only 1,770 pairs).
QUICK_FRAME_OPTIONS = {"n_pairs": 500, "refine_pairs": 2000}
ASPIRE_SHIFTS_NOTE = ("CLSyncVoting estimates no shifts (it searches them only inside the "
                      "common-line match): ASPIRE's map uses zero shifts")

FloatArray = NDArray[np.float64]


# ----------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` replaces the defaults by tiny ones)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", default="4ake", help="volume for cryoem.volumes.resolve")
    p.add_argument("--size", type=int, default=64, help="image edge L (default: 64)")
    p.add_argument("--n-projections", type=int, default=5000,
                   help="projections of each dataset (default: 5000, the pipeline's)")
    p.add_argument("--test-size", type=int, default=1650,
                   help="test split of each dataset (default: 1650, the pipeline's)")
    p.add_argument("--max-shift", type=float, default=2.0,
                   help="largest in-plane shift of the images, pixels (default: 2)")
    p.add_argument("--snrs", type=positive_snr, nargs="+",
                   default=[math.inf, 1.0, 1 / 4, 1 / 16, 1 / 32],
                   help="SNRs: numbers or fractions, 'inf' for noiseless "
                        "(default: inf 1 1/4 1/16 1/32)")
    p.add_argument("--n-subset", type=int, default=500,
                   help="both methods run on the first K test images (default: 500)")
    p.add_argument("--estimator", choices=("learned", "perturbed", "exact"), default=None,
                   help="our distances (default: learned; --quick: perturbed)")
    p.add_argument("--model", default="auto",
                   help="distance model: 'auto' (the default pipeline run's model at each SNR), "
                        "a folder, or 'pretrained' (the shipped general model)")
    p.add_argument("--sigma2", type=float, default=0.2,
                   help="variance (rad²) of the perturbed distances (default: 0.2)")
    p.add_argument("--steps", type=int, default=2000, help="recovery: Adam steps at most")
    p.add_argument("--iterations", type=int, default=6, help="refinement iterations at most")
    p.add_argument("--aspire-python", type=Path, default=DEFAULT_ASPIRE_PYTHON,
                   help="Python of ASPIRE's environment (default: %(default)s)")
    p.add_argument("--aspire-n-theta", type=int, default=360,
                   help="CLSyncVoting n_theta (even; default 360, as refinement.py)")
    p.add_argument("--aspire-dtype", choices=("float32", "float64"), default="float32",
                   help="ASPIRE's precision (default: float32, as refinement.py)")
    p.add_argument("--aspire-timeout", type=float, default=3 * 3600.0,
                   help="seconds before the ASPIRE worker is stopped")
    p.add_argument("--no-aspire", action="store_true", help="skip ASPIRE")
    p.add_argument("--works-below", type=float, default=0.5,
                   help="ASPIRE 'works' at an SNR where its mean E_OR is at most this (rad; "
                        "default 0.5): the goal is then ours ≤ 1.5× its, else ours lower")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR,
                   help="where datasets are generated and reused (default: %(default)s)")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                   help="pipeline runs whose data.h5 may be reused (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra-op threads (NumPy/finufft: set OMP_NUM_THREADS)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    p.add_argument("--figure", type=Path, default=DEFAULT_FIGURE,
                   help="E_OR against SNR, both methods (default: %(default)s)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore the rows already in --out (default: resume from them)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings for CI: L 32, 300 projections, 60 images, SNR inf and "
                        "1/4, 1 iteration, perturbed distances, fewer common-line pairs in the "
                        "frame step; its own JSON, work folder and figure")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    args.frame_options = {}  # commonlines.resolve_frame's defaults, as the pipeline
    if args.quick:
        apply_quick(args, p)
    if args.estimator is None:
        args.estimator = "learned"
    if args.n_subset < 10 or args.n_subset > args.test_size:
        p.error(f"need 10 ≤ --n-subset ≤ --test-size ({args.test_size})")
    if args.test_size > args.n_projections or args.size < 8 or args.iterations < 0:
        p.error("need --test-size ≤ --n-projections, --size ≥ 8 and --iterations ≥ 0")
    if args.aspire_n_theta % 2:
        p.error("--aspire-n-theta must be even")
    return args


def apply_quick(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Tiny settings, for options left at their defaults; separate outputs."""
    quick = {"size": 32, "n_projections": 300, "test_size": 100, "n_subset": 60,
             "snrs": [math.inf, 1 / 4], "iterations": 1, "steps": 300, "estimator": "perturbed",
             "out": QUICK_OUT, "work_dir": WORK_DIR / "quick", "runs_dir": RUNS_DIR / "quick"}
    for name, value in quick.items():
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)
    if args.figure == parser.get_default("figure"):
        args.figure = args.work_dir / "common-lines-snr.png"
    args.frame_options = dict(QUICK_FRAME_OPTIONS)


# ----------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------
def dataset_name(args: argparse.Namespace, snr: float) -> str:
    """The file name of the dataset at ``snr`` in the work folder."""
    volume = "".join(c if c.isalnum() else "_" for c in Path(args.volume).name)
    return (f"{volume}_L{args.size}_N{args.n_projections}_test{args.test_size}"
            f"_shift{args.max_shift:g}_snr{snr_tag(snr)}_seed{SEED}.h5")


def dataset_matches(path: Path, args: argparse.Namespace, snr: float) -> bool:
    """Whether ``path`` is the dataset ``datasets.generate`` makes with these parameters."""
    from cryoem import datasets

    try:
        data = datasets.load(path, images=False)
    except (FileNotFoundError, ValueError, OSError, KeyError):
        return False
    attrs = data.attrs
    stored = float(attrs.get("snr", math.nan))
    same_snr = math.isinf(stored) if math.isinf(snr) else math.isclose(stored, snr, rel_tol=1e-9)
    return (same_snr and len(data) == args.n_projections and data.size == args.size
            and len(data.split["test"]) == args.test_size and attrs.get("seed") == SEED
            and math.isclose(float(attrs.get("max_shift", -1.0)), args.max_shift)
            and not attrs.get("ctf") and attrs.get("sampling") == "uniform"
            and attrs.get("volume_name") == volume_name(args.volume, args.size))


def pipeline_dataset(args: argparse.Namespace, snr: float) -> Path | None:
    """A pipeline run's ``data.h5`` (under ``--runs-dir``) generated with these parameters."""
    if not args.runs_dir.is_dir():
        return None
    for record_path in sorted(args.runs_dir.glob("*/pipeline.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        config = record.get("config", {})
        stored = float(config.get("snr", math.nan))
        same_snr = (math.isinf(stored) if math.isinf(snr)
                    else math.isclose(stored, snr, rel_tol=1e-9))
        if (same_snr and "generate" in record.get("finished", [])
                and config.get("volume") == args.volume and config.get("size") == args.size
                and config.get("n_projections") == args.n_projections
                and config.get("test_size") == args.test_size
                and config.get("seed") == SEED
                and math.isclose(float(config.get("max_shift", -1.0)), args.max_shift)):
            path = record_path.parent / "data.h5"
            if dataset_matches(path, args, snr):
                return path
    return None


def ensure_dataset(args: argparse.Namespace, snr: float) -> tuple[Path, dict[str, Any]]:
    """The dataset at ``snr``: a pipeline run's, else the work folder's, else generated there."""
    from cryoem import datasets, volumes

    start = time.perf_counter()
    found = pipeline_dataset(args, snr)
    if found is not None:
        return found, {"path": str(found), "reused": True, "from": "pipeline run",
                       "seconds": time.perf_counter() - start}
    path = args.work_dir / dataset_name(args, snr)
    if dataset_matches(path, args, snr):
        return path, {"path": str(path), "reused": True, "from": "work folder",
                      "seconds": time.perf_counter() - start}
    print(f"  generating {path}", file=sys.stderr)
    datasets.generate(volumes.resolve(args.volume, args.size), args.n_projections, path,
                      snr=snr, max_shift=args.max_shift, test_size=args.test_size, seed=SEED,
                      progress=args.progress, overwrite=True)
    return path, {"path": str(path), "reused": False, "from": "generated",
                  "seconds": time.perf_counter() - start}


def check_same_truth(reference: Dataset, data: Dataset) -> float:
    """Largest difference of orientations and shifts to the first SNR's dataset; raises if any.

    Raises
    ------
    RuntimeError
        If the datasets do not share orientations, shifts and split.
    """
    from cryoem import rotations

    difference = max(
        float(np.max(np.abs(rotations.canonical(reference.orientations)
                            - rotations.canonical(data.orientations)))),
        float(np.max(np.abs(reference.shifts - data.shifts))))
    same_split = np.array_equal(reference.split["test"], data.split["test"])
    if difference > 1e-9 or not same_split:
        raise RuntimeError(f"{data.path} does not share the first SNR's orientations, shifts "
                           f"and split (difference {difference:.2e}, same split: {same_split})")
    return difference


# ----------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------
def score(q: FloatArray, truth: FloatArray, symmetry: str, prefix: str = "e_or"
          ) -> tuple[dict[str, float | bool], Alignment]:
    """Physical error of ``q`` against ``truth``: mean, median, share within 10°.

    Parameters
    ----------
    q, truth
        ``(N, 4)`` quaternions, estimated and true.
    symmetry
        Point group of the particle.
    prefix
        Prefix of the keys (``e_or`` gives ``e_or``, ``e_or_median``, ...).

    Returns
    -------
    dict, Alignment
        The numbers, and the alignment (its transform puts ``q`` in the truth's frame).
    """
    from cryoem import alignment

    fit = alignment.align_physical(q, truth, symmetry)
    within = float(np.mean(fit.errors <= np.deg2rad(WITHIN_DEGREES)))
    return ({prefix: fit.mean, f"{prefix}_median": fit.median,
             f"{prefix}_within_{WITHIN_DEGREES:g}deg": within,
             f"{prefix}_handedness_flipped": bool(fit.flipped)}, fit)


def in_truth_frame(q: FloatArray, fit: Alignment) -> FloatArray:
    """``q`` moved by the physical transform of ``fit`` into the truth's frame (scoring only)."""
    return fit.to_truth_frame(q)


def map_resolution(data: Dataset, images: NDArray, q: FloatArray,
                   shifts: FloatArray | None, progress: bool = False) -> dict[str, Any]:
    """Least-squares map from ``images`` at ``q`` (and ``shifts``) scored against the truth.

    Returns
    -------
    dict
        ``resolution_fsc05_angstrom`` (and in pixels), the FSC curve and the seconds.
    """
    from cryoem import reconstruction, resolution

    result, seconds = timed(lambda: reconstruction.reconstruct(
        images, q, shifts=shifts, pixel_size=data.pixel_size, progress=progress))
    curve = resolution.fsc(result.data, data.volume, data.pixel_size)
    value = curve.resolution(0.5)
    return {"resolution_fsc05_angstrom": value, "resolution_fsc05_px": value / data.pixel_size,
            "fsc_frequencies": curve.frequencies, "fsc_values": curve.values,
            "reconstruction_seconds": seconds}


# ----------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------
def model_fingerprint(model: str) -> tuple[str, str]:
    """The model's folder and the sha256 of its ``model.keras`` (to tell models apart)."""
    from cryoem import siamese

    folder = siamese.model_directory(model)
    digest = hashlib.sha256((folder / siamese.MODEL_FILE).read_bytes()).hexdigest()
    return str(folder), digest


def ours_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What our part's result depends on, besides the common settings."""
    settings: dict[str, Any] = {"estimator": args.estimator, "steps": args.steps,
                                "iterations": args.iterations,
                                "frame_options": args.frame_options}
    if args.estimator == "learned":
        try:
            settings["model_dir"], settings["model_sha256"] = model_fingerprint(args.model)
        except (FileNotFoundError, OSError) as error:
            settings["model_dir"], settings["model_error"] = args.model, str(error)
    elif args.estimator == "perturbed":
        settings["sigma2"] = args.sigma2
    return settings


class EstimatorCache:
    """Load the distance estimator once, on first use, and remember how long it took."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.estimator: Estimator | None = None
        self.load_seconds = 0.0

    def get(self) -> Estimator:
        """The estimator (raises if the model is missing or takes other images)."""
        from cryoem import distance

        if self.estimator is None:
            a = self.args
            estimator, self.load_seconds = timed(lambda: distance.make_estimator(
                a.estimator, model_dir=a.model if a.estimator == "learned" else None,
                sigma2=a.sigma2, seed=SEED))
            size = getattr(estimator, "image_size", a.size)
            if size != a.size:
                raise ValueError(f"the model {a.model} takes {size}-pixel images, not {a.size}")
            self.estimator = estimator
        return self.estimator


def run_ours(args: argparse.Namespace, data: Dataset, subset: NDArray[np.int64],
             estimators: EstimatorCache, label: str) -> dict[str, Any]:
    """Distances → recover → resolve_frame → refine on the subset, scored and reconstructed."""
    from cryoem import commonlines, distance, recovery, refinement

    images = data.projections[subset]
    truth = data.orientations[subset]  # only to score
    symmetry = str(data.attrs.get("symmetry", "C1"))
    estimator = estimators.get()

    print(f"  SNR {label}: ours: distances ({estimator.name}, N={len(subset)})", file=sys.stderr)
    d_hat, t_distances = timed(lambda: estimator.matrix(data, subset))
    l_de = distance.l_de(d_hat, distance.ExactDistance().matrix(data, subset))
    print(f"  SNR {label}: ours: recovery", file=sys.stderr)
    recovered, t_recovery = timed(lambda: recovery.recover(
        d_hat, steps=args.steps, symmetry=symmetry, seed=SEED, progress=args.progress))
    before_frame, _ = score(recovered.quaternions, truth, symmetry, "e_or_before_frame")
    print(f"  SNR {label}: ours: frame", file=sys.stderr)
    frame, t_frame = timed(lambda: commonlines.resolve_frame(
        images, recovered.quaternions, seed=SEED, progress=args.progress,
        **args.frame_options))
    resolved = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    unrefined, _ = score(resolved, truth, symmetry, "e_or_unrefined")

    scoring = {"seconds": 0.0}

    def callback(iteration: int, q: FloatArray, shifts: FloatArray) -> dict[str, float]:
        start = time.perf_counter()
        numbers, _ = score(q, truth, symmetry)
        print(f"  SNR {label}: ours: refinement iteration {iteration}: "
              f"e_or {numbers['e_or']:.4f}", file=sys.stderr)
        scoring["seconds"] += time.perf_counter() - start
        return {"e_or_rad": float(numbers["e_or"])}

    print(f"  SNR {label}: ours: refinement ({args.iterations} iterations at most)",
          file=sys.stderr)
    refined, t_refine_wall = timed(lambda: refinement.refine(
        images, resolved, pixel_size=data.pixel_size, iterations=args.iterations, seed=SEED,
        progress=args.progress, callback=callback))
    t_refine = t_refine_wall - scoring["seconds"]
    final, fit = score(refined.quaternions, truth, symmetry)
    print(f"  SNR {label}: ours: reconstruction", file=sys.stderr)
    reconstructed = map_resolution(data, images, in_truth_frame(refined.quaternions, fit),
                                   refined.shifts, args.progress)
    shift_error = np.linalg.norm(refined.shifts - data.shifts[subset], axis=1)
    return {
        "status": "ok", "estimator": estimator.name, "l_de": l_de, "l_or": recovered.final_loss,
        **before_frame, **unrefined, **final,
        "e_or_by_iteration": [unrefined["e_or_unrefined"]]
                             + [h["e_or_rad"] for h in refined.history],
        "refinement_iterations": len(refined.history),
        "frame_transposed": frame.transposed, "frame_confidence": frame.confidence,
        "frame_distinguishable": frame.distinguishable,
        "mean_abs_shift_px": float(np.mean(np.abs(refined.shifts))),
        # In the images' own frame: meaningful while refinement keeps the map centred.
        "shift_error_px_median": float(np.median(shift_error)),
        **reconstructed,
        "seconds": {"distances": t_distances, "recovery": t_recovery, "frame": t_frame,
                    "refinement": t_refine,
                    "total": t_distances + t_recovery + t_frame + t_refine,
                    "model_load": estimators.load_seconds,
                    "refinement_scoring_excluded": scoring["seconds"]},
    }


# ----------------------------------------------------------------------------
# ASPIRE
# ----------------------------------------------------------------------------
def aspire_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What ASPIRE's part depends on, besides the common settings."""
    return {"n_theta": args.aspire_n_theta, "dtype": args.aspire_dtype}


def aspire_rotations(args: argparse.Namespace, images: NDArray, pixel_size: float
                     ) -> tuple[FloatArray, dict[str, Any], float] | dict[str, Any]:
    """Run the worker on ``images``: ASPIRE's matrices (its convention), its result, wall seconds.

    Returns the failure record (``status``, ``reason``) instead when it cannot run or fails.
    """
    if not args.aspire_python.exists():
        return {"status": "skipped", "reason": f"no ASPIRE Python at {args.aspire_python}"}
    with tempfile.TemporaryDirectory(prefix="common_lines_aspire_") as scratch:
        folder = Path(scratch)
        np.save(folder / "images.npy", np.asarray(images, dtype=np.float32))
        command = [str(args.aspire_python), str(WORKER), "--images", str(folder / "images.npy"),
                   "--rotations-out", str(folder / "rotations.npy"),
                   "--out", str(folder / "result.json"), "--n-theta", str(args.aspire_n_theta),
                   "--pixel-size", str(pixel_size), "--dtype", args.aspire_dtype,
                   "--threads", "1"]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, env={**os.environ, **ASPIRE_THREAD_ENV},
                                  capture_output=True, text=True, timeout=args.aspire_timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {args.aspire_timeout:g} s"}
        wall = time.perf_counter() - start
        if done.returncode != 0 or not (folder / "result.json").is_file():
            return {"status": "failed", "reason": f"worker exited with {done.returncode}",
                    "stderr_tail": done.stderr[-3000:]}
        result = json.loads((folder / "result.json").read_text())
        return np.load(folder / "rotations.npy"), result, wall


def run_aspire(args: argparse.Namespace, data: Dataset, subset: NDArray[np.int64],
               label: str) -> dict[str, Any]:
    """CLSyncVoting on the subset, scored like ours; its map from its rotations, zero shifts."""
    from cryoem import alignment, rotations

    images = data.projections[subset]
    truth = data.orientations[subset]
    symmetry = str(data.attrs.get("symmetry", "C1"))
    print(f"  SNR {label}: ASPIRE CLSyncVoting on {len(subset)} images", file=sys.stderr)
    outcome = aspire_rotations(args, images, data.pixel_size)
    if isinstance(outcome, dict):
        return {**outcome, "shifts": ASPIRE_SHIFTS_NOTE}
    matrices, result, wall = outcome
    # ASPIRE's R maps the image frame into the volume: ours is its transpose.
    q = rotations.matrix_to_quaternion(np.swapaxes(matrices, -1, -2))
    numbers, fit = score(q, truth, symmetry)
    untransposed = alignment.align_physical(rotations.matrix_to_quaternion(matrices), truth,
                                            symmetry).mean
    print(f"  SNR {label}: ASPIRE: e_or {numbers['e_or']:.4f}; reconstruction", file=sys.stderr)
    reconstructed = map_resolution(data, images, in_truth_frame(q, fit), None, args.progress)
    return {"status": "ok", **numbers,
            "e_or_without_transpose": untransposed,  # convention check: should be large
            **reconstructed, "shifts": ASPIRE_SHIFTS_NOTE,
            "seconds": result["seconds"], "wall_seconds": wall, "worker": result}


def run_oracle(args: argparse.Namespace, data: Dataset, subset: NDArray[np.int64],
               label: str) -> dict[str, Any]:
    """The map from the true orientations and true shifts of the subset."""
    print(f"  SNR {label}: oracle reconstruction", file=sys.stderr)
    return {"status": "ok", **map_resolution(data, data.projections[subset],
                                             data.orientations[subset], data.shifts[subset],
                                             args.progress)}


# ----------------------------------------------------------------------------
# Rows, resumption and the goal
# ----------------------------------------------------------------------------
def common_settings(args: argparse.Namespace, snr: float) -> dict[str, Any]:
    """What every part of a row depends on: the dataset and the subset."""
    return {"volume": args.volume, "size": args.size, "n_projections": args.n_projections,
            "test_size": args.test_size, "max_shift": args.max_shift, "seed": SEED,
            "snr": snr, "n_subset": args.n_subset}


def part_settings(args: argparse.Namespace, part: str, ours: dict[str, Any]) -> dict[str, Any]:
    """The settings a part's result depends on (``ours`` is :func:`ours_settings`)."""
    if part == "ours":
        return ours
    if part == "aspire":
        return aspire_settings(args)
    return {}


def previous_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of an earlier run in ``--out`` (none with ``--fresh`` or no file)."""
    if args.fresh or not args.out.is_file():
        return []
    try:
        return list(json.loads(args.out.read_text()).get("rows", []))
    except (OSError, ValueError):
        return []


def reusable_parts(previous: list[dict[str, Any]], settings: dict[str, Any],
                   wanted: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Parts of an earlier row with the same settings that finished (``status`` ok)."""
    common = jsonable(settings)
    for row in previous:
        if row.get("settings") != common:
            continue
        return {part: row[part] for part in PARTS
                if isinstance(row.get(part), dict) and row[part].get("status") == "ok"
                and row[part].get("settings") == jsonable(wanted[part])}
    return {}


def compare(row: dict[str, Any], works_below: float) -> dict[str, Any]:
    """Ratio of the refined E_OR to ASPIRE's and whether the goal is met."""
    ours, aspire = row.get("ours", {}), row.get("aspire", {})
    if ours.get("status") != "ok" or aspire.get("status") != "ok":
        return {"ratio_e_or": None, "goal": None, "goal_met": None}
    ratio = ours["e_or"] / max(aspire["e_or"], 1e-12)
    works = aspire["e_or"] <= works_below
    goal = (f"ours ≤ {GOAL_FACTOR:g}× ASPIRE (ASPIRE works)" if works
            else "ours < ASPIRE (ASPIRE fails)")
    met = ratio <= GOAL_FACTOR if works else ours["e_or"] < aspire["e_or"]
    return {"ratio_e_or": ratio, "aspire_works": works, "goal": goal, "goal_met": bool(met),
            "ratio_e_or_median": ours["e_or_median"] / max(aspire["e_or_median"], 1e-12)}


def run_part(name: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``call()``, or a failure record: one failed part must not lose the others."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - recorded with its traceback
        print(f"  {name} failed: {error!r}", file=sys.stderr)
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc()[-4000:]}


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "—" if math.isnan(value) else "inf"
    return format(value, spec)


def _get(part: dict[str, Any] | None, key: str, sub: str | None = None) -> Any:
    if not part or part.get("status") != "ok":
        return None
    value = part.get(key)
    return value.get(sub) if sub is not None and isinstance(value, dict) else value


def print_table(report: dict[str, Any]) -> None:
    """The human-readable summary."""
    header = (f"{'SNR':>5} {'N':>4} {'ours frame':>10} {'ours refined':>12} {'ours s':>7} "
              f"{'ASPIRE':>7} {'ASPIRE s':>8} {'ratio':>6} {'FSC ours':>8} {'FSC ASP.':>8} "
              f"{'oracle':>7}  goal")
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        ours, aspire, oracle = row.get("ours"), row.get("aspire"), row.get("oracle")
        c = row.get("comparison", {})
        goal = "—" if c.get("goal") is None else (
            f"{'met' if c['goal_met'] else 'MISSED'} ({c['goal']})")
        print(f"{row['snr_label']:>5} {row['n']:>4} "
              f"{_fmt(_get(ours, 'e_or_unrefined'), '.4f'):>10} "
              f"{_fmt(_get(ours, 'e_or'), '.4f'):>12} "
              f"{_fmt(_get(ours, 'seconds', 'total'), '.1f'):>7} "
              f"{_fmt(_get(aspire, 'e_or'), '.4f'):>7} {_fmt(_get(aspire, 'seconds'), '.1f'):>8} "
              f"{_fmt(c.get('ratio_e_or'), '.2f'):>6} "
              f"{_fmt(_get(ours, 'resolution_fsc05_angstrom'), '.2f'):>8} "
              f"{_fmt(_get(aspire, 'resolution_fsc05_angstrom'), '.2f'):>8} "
              f"{_fmt(_get(oracle, 'resolution_fsc05_angstrom'), '.2f'):>7}  {goal}")
    print("E_OR = align_physical mean (rad) on the same images; ours frame / refined = after "
          "commonlines.resolve_frame / after refinement.refine; ratio = ours refined / ASPIRE; "
          "FSC = 0.5 vs the ground-truth map (Å) from ours (refined, estimated shifts), ASPIRE "
          "(zero shifts) and the true orientations and shifts (oracle); ours s = distances + "
          "recovery + frame + refinement; ASPIRE s = CLSyncVoting, one BLAS thread.")
    for row in report["rows"]:
        for part in PARTS:
            info = row.get(part) or {}
            if info.get("status") not in (None, "ok"):
                print(f"SNR {row['snr_label']}: {part} {info['status']}: {info.get('reason')}")


def _snr_position(snr: float, finite: list[float]) -> float:
    """x of an SNR on a log2 axis; ∞ two octaves right of the largest finite one."""
    if math.isinf(snr):
        return (max(math.log2(s) for s in finite) if finite else 0.0) + 2.0
    return math.log2(snr)


def make_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """E_OR (log scale) against the SNR: ours before and after refinement, and ASPIRE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoem import alignment, plots

    snrs = [positive_snr(row["snr_label"]) for row in rows]
    finite = [s for s in snrs if math.isfinite(s)]
    series = {"ours, refined": ("ours", "e_or", "o", "-"),
              "ours, before refinement": ("ours", "e_or_unrefined", "s", ":"),
              "ASPIRE CLSyncVoting": ("aspire", "e_or", "^", "-")}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = False
    for name, (part, key, marker, line) in series.items():
        points = sorted((_snr_position(s, finite), _get(row.get(part), key), math.isinf(s))
                        for s, row in zip(snrs, rows) if _get(row.get(part), key) is not None)
        if not points:
            continue
        # Finite SNRs joined by a line; ∞ a lone marker of the same colour beyond the gap.
        x = [p[0] for p in points if not p[2]]
        y = np.maximum([p[1] for p in points if not p[2]], 1e-4)
        (handle,) = ax.plot(x, y, marker=marker, ls=line, label=name)
        for position, value, _ in (p for p in points if p[2]):
            ax.plot([position], [max(value, 1e-4)], marker=marker, ls="none",
                    color=handle.get_color())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if finite and len(finite) < len(snrs):
        ax.axvline(max(math.log2(s) for s in finite) + 1.0, color="grey", lw=0.6, ls=":")
    ax.axhline(alignment.RANDOM_MEAN_ERROR, color="grey", lw=0.8, ls="--",
               label="random orientations")
    ticks = sorted(set(snrs), key=lambda s: _snr_position(s, finite))
    ax.set_xticks([_snr_position(s, finite) for s in ticks])
    ax.set_xticklabels(["∞" if math.isinf(s) else snr_label(s) for s in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("SNR")
    ax.set_ylabel("physical E_OR (rad, mean)")
    n = sorted({row["n"] for row in rows})
    ax.set_title(f"orientations from {'/'.join(map(str, n))} images: ours vs ASPIRE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.save(fig, path)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------
def with_pipeline_model(args: argparse.Namespace, snr: float
                        ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Options whose ``--model`` is the default pipeline run's at ``snr`` (run if missing).

    Returns them with the pipeline's own scores on the whole test split.
    """
    run = pipeline_row(args.runs_dir, volume=args.volume, snr=snr, estimator="learned",
                       refine=True, size=args.size, n_projections=args.n_projections,
                       test_size=args.test_size, max_shift=args.max_shift)
    m = run["metrics"]
    keys = ("l_de_val", "e_or_o4_rad", "e_or_unrefined_rad", "e_or_rad",
            "resolution_fsc05_angstrom", "resolution_fsc05_true_orientations_angstrom",
            "timings_s")
    summary = {"run": run["folder"], "failed": run["failed"], **{k: m.get(k) for k in keys}}
    return argparse.Namespace(**{**vars(args), "model": str(Path(run["folder"]) / "model")}), summary


def run_snr(args: argparse.Namespace, snr: float, previous: list[dict[str, Any]],
            estimators: EstimatorCache, ours: dict[str, Any],
            reference: list[Dataset]) -> dict[str, Any]:
    """One row: the dataset, then each part not already in ``previous``."""
    from cryoem import datasets

    label = snr_label(snr)
    settings = common_settings(args, snr)
    wanted = {part: part_settings(args, part, ours) for part in PARTS}
    row: dict[str, Any] = {"snr": snr, "snr_label": label, "settings": settings,
                           "n": args.n_subset}
    reused = reusable_parts(previous, settings, wanted)
    if args.no_aspire and "aspire" not in reused:
        reused["aspire"] = {"status": "skipped", "reason": "--no-aspire"}
    row.update(reused)
    if reused:
        print(f"  SNR {label}: reusing {', '.join(reused)} from {args.out}", file=sys.stderr)
    path, info = ensure_dataset(args, snr)
    data = datasets.load(path, images=any(part not in reused for part in PARTS))
    info["same_truth_as_first_snr"] = True
    if reference:
        info["truth_difference_to_first_snr"] = check_same_truth(reference[0], data)
    else:
        reference.append(data)
    row["dataset"] = info
    row["pixel_size_angstrom"] = data.pixel_size
    subset = data.split["test"][: args.n_subset]
    calls = {"ours": lambda: run_ours(args, data, subset, estimators, label),
             "aspire": lambda: run_aspire(args, data, subset, label),
             "oracle": lambda: run_oracle(args, data, subset, label)}
    for part in PARTS:
        if part not in reused:
            row[part] = {**run_part(f"SNR {label}: {part}", calls[part]),
                         "settings": wanted[part]}
    row["comparison"] = compare(jsonable(row), args.works_below)
    return jsonable(row)


def main(argv: list[str] | None = None) -> int:
    """Run every SNR, print the table, write the JSON and the figure."""
    args = parse_args(argv)
    if args.threads is not None:  # before any TensorFlow work
        from cryoem.siamese import configure_threads

        configure_threads(args.threads)
    start = time.perf_counter()
    previous = previous_rows(args)
    ours = ours_settings(args)
    report: dict[str, Any] = {
        "benchmark": "common_lines", "config": vars(args),
        "machine": machine_info(args.threads),
        "notes": {"e_or": "physical (align_physical): mean, median and share within "
                          f"{WITHIN_DEGREES:g}° (rad), the same code for both methods",
                  "aspire_shifts": ASPIRE_SHIFTS_NOTE,
                  "aspire_threads": "one BLAS/OpenMP thread (ASPIRE_THREAD_ENV); ours uses "
                                    "the machine's defaults unless --threads",
                  "goal": f"where ASPIRE works (mean e_or ≤ {args.works_below:g} rad) ours "
                          f"refined ≤ {GOAL_FACTOR:g}× ASPIRE, elsewhere ours < ASPIRE",
                  "seconds": "ours: distances + recovery + frame + refinement (model loading "
                             "apart); ASPIRE: ArrayImageSource + CLSyncVoting + "
                             "estimate_rotations inside the worker"},
        "rows": [],
    }
    reference: list[Dataset] = []
    estimators = EstimatorCache(args)
    # Rows of other SNRs from an earlier run on the same data and subset stay in the report.
    same_data = jsonable({k: v for k, v in common_settings(args, math.inf).items() if k != "snr"})
    rows = {row["snr_label"]: row for row in previous
            if {k: v for k, v in row.get("settings", {}).items() if k != "snr"} == same_data}
    for label in {snr_label(s) for s in args.snrs}:
        rows.pop(label, None)
    for snr in args.snrs:
        print(f"--- SNR {snr_label(snr)}", file=sys.stderr)
        if args.model == "auto" and args.estimator == "learned":
            snr_args, pipeline = with_pipeline_model(args, snr)
            row = run_snr(snr_args, snr, previous, EstimatorCache(snr_args),
                          ours_settings(snr_args), reference)
            row["ours_pipeline_full_test_split"] = pipeline
        else:
            row = run_snr(args, snr, previous, estimators, ours, reference)
        rows[row["snr_label"]] = row
        report["rows"] = sorted(rows.values(), key=lambda r: -positive_snr(r["snr_label"]))
        write_report(report, args.out)
    report["seconds"] = time.perf_counter() - start
    write_report(report, args.out)
    print_table(report)
    figure = make_figure(report["rows"], args.figure)
    print(f"wrote {args.out}" + (f" and {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
