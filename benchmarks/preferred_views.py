"""How preferred orientations affect orientation recovery: E_OR against the strength of a preferred view.

Real particles often stick to the grid in a few orientations, so their
viewing directions crowd around some directions and leave others nearly
empty.  This benchmark runs the method's recovery on datasets whose
orientations follow ``rotations.sample_preferred_view``: a share ``fraction``
of the images is viewed along directions drawn from a von Mises–Fisher
distribution of concentration κ around ``--direction`` (volume coordinates;
spread about ``1/√κ`` rad, uniform in-plane angle) and the rest is uniform on
SO(3).  ``fraction = 0`` is the uniform distribution of the paper.

The strengths are ``--fractions`` (default ``0 0.5 0.7 0.9``) at one
``--concentration`` (default κ = 10), or any ladder of ``FRACTION:KAPPA``
pairs given with ``--strengths``.  For each strength:

1. **data**: ``datasets.generate`` of ``--volume`` (default 4ake) at
   ``--size`` L (default 64), ``--n-projections`` (5,000) with the paper's
   split (``--test-size`` 1,650), ``--snr`` (default ∞) and shifts up to
   ``--max-shift`` px (default 2), ``sampling="preferred"`` (``"uniform"``
   for fraction 0), seed ``--seed``.  Written once into ``--work-dir`` (the
   file name holds every parameter) and reused afterwards.
2. **distances**: the test split's distance matrix from ``--estimator``:
   ``learned`` (``distance.make_estimator("learned", model_dir=--model)``,
   default ``pretrained``: the general model shipped in the package),
   ``perturbed`` (exact plus Gaussian noise of variance ``--sigma2`` rad²) or
   ``exact`` (the oracle).
3. **recovery**: ``recovery.recover`` (spectral initialisation, then Adam,
   ``--steps``), as ``cryoem.pipeline`` does.
4. **frame**: ``commonlines.resolve_frame`` on the test images, then
   ``recovery.to_asymmetric_unit``.

Each stage is timed; the ground truth is read only to score.  Scores (radians,
geodesic errors over the test images):

* ``e_or_o4_rad``: ``alignment.align_o4``, the paper's metric.  The frame step
  is an O(4) transform, so this is searched from both the recovered and the
  resolved orientations and the lower value is kept (both are in the JSON).
* ``e_or_before_frame_rad``: ``alignment.align_physical`` of the recovered
  orientations (a global rotation of the volume and the handedness only).
* ``e_or_rad``, ``e_or_median_rad``: the same after the frame step; also
  split into the images inside the preferred cluster (within
  ``--cluster-radius``, default 0.5 rad, of ``--direction``) and outside it.
* ``l_de``: ``distance.l_de`` of the estimated distances against the exact
  ones (rad²); ``l_or``: the recovery's final loss.

Coverage (true viewing directions of the test images,
``rotations.viewing_direction``): the sphere is cut into
``--coverage-bands × 2·--coverage-bands`` cells of equal area (uniform in
``z`` and in longitude, Lambert's cylindrical equal-area grid).
``covered_fraction`` is the share of the sphere's area whose cell holds at
least one image; ``covered_fraction_antipodal`` counts a cell as covered
when it or its antipodal cell holds an image (``d`` and ``−d`` sample the
same central slice of the Fourier transform, so this is the coverage a
reconstruction sees); ``uniform_expected`` is ``1 − (1 − 1/M)^N``, the
covered fraction that ``N`` uniform directions give on average over ``M``
cells.  ``share_near_direction`` is the share of images within
``--cluster-radius`` of the preferred direction (uniform:
``(1 − cos r)/2``, 6 % at 0.5 rad).

The figure (``--figure``, default ``images/preferred-views-coverage.png``)
has one Mollweide map per strength (the test images' true viewing
directions, coloured by their error after the frame step, titled with the
strength and E_OR) and a panel of E_OR against strength: the paper's metric
and the physical one before and after the frame step.

Usage (from the repository root)::

    .venv/bin/python benchmarks/preferred_views.py                # learned, pretrained model
    .venv/bin/python benchmarks/preferred_views.py --model data/benchmarks/pipeline/model \\
        --max-shift 0                                             # a model trained on 4ake
    .venv/bin/python benchmarks/preferred_views.py --estimator perturbed --sigma2 0.2
    .venv/bin/python benchmarks/preferred_views.py --strengths 0:10 0.9:10 0.9:50 0.99:50
    .venv/bin/python benchmarks/preferred_views.py --quick        # tiny check (< 1 min)

``--quick`` uses L = 32, 300 projections (100 test), two strengths and
perturbed distances, and writes everything (datasets, JSON, figure) under
``WORK_DIR/quick`` so that it never overwrites real results.

It prints a table and writes ``benchmarks/results/preferred_views.json``
(``--out``), rewritten after each strength.  A rerun reuses the rows computed
with the same settings (dataset, estimator and model file, recovery and frame
options) whose orientations are still in ``WORK_DIR/orientations``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from _common import machine_info, positive_snr, snr_tag, write_report  # noqa: E402
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cryoem.datasets import Dataset
    from cryoem.distance import Estimator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "preferred_views.json"
DEFAULT_FIGURE = ROOT / "images" / "preferred-views-coverage.png"
DEFAULT_WORK_DIR = Path("data/benchmarks/preferred_views")

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Strength:
    """One preferred-view distribution: ``fraction`` of the images around a direction, vMF κ."""

    fraction: float
    concentration: float

    @property
    def uniform(self) -> bool:
        """Whether this is the uniform distribution (no preferred view)."""
        return self.fraction == 0.0

    @property
    def label(self) -> str:
        """Short text for tables and titles."""
        return "uniform" if self.uniform else f"{self.fraction:g} at κ={self.concentration:g}"

    @property
    def tag(self) -> str:
        """For file names."""
        return "uniform" if self.uniform else f"f{self.fraction:g}_k{self.concentration:g}"


# ----------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------
def parse_strength(text: str) -> Strength:
    """A ``FRACTION:KAPPA`` pair (for argparse)."""
    try:
        fraction, kappa = (float(part) for part in text.split(":"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not FRACTION:KAPPA: {text!r}") from error
    if not 0.0 <= fraction <= 1.0 or not kappa > 0:
        raise argparse.ArgumentTypeError(f"need 0 <= FRACTION <= 1 and KAPPA > 0: {text!r}")
    return Strength(fraction, kappa)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", default="4ake", help="protein or map (default: 4ake)")
    p.add_argument("--size", type=int, default=64, help="image edge L (default: 64)")
    p.add_argument("--n-projections", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1650,
                   help="test split, where orientations are recovered (default: 1650)")
    p.add_argument("--snr", type=positive_snr, default=math.inf,
                   help="SNR of the images: a number, a fraction (1/16) or inf (default)")
    p.add_argument("--max-shift", type=float, default=2.0, help="shifts, pixels (default: 2)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9],
                   help="shares of images in the preferred cluster (default: 0 0.5 0.7 0.9)")
    p.add_argument("--concentration", type=float, default=10.0,
                   help="von Mises–Fisher κ of the cluster (default: 10)")
    p.add_argument("--strengths", type=parse_strength, nargs="+", default=None,
                   metavar="FRACTION:KAPPA", help="a ladder of pairs (overrides --fractions)")
    p.add_argument("--direction", type=float, nargs=3, default=[1.0, 0.0, 0.0],
                   metavar=("X", "Y", "Z"),
                   help="preferred viewing direction, volume coordinates (default: 1 0 0, "
                        "the centre of the maps)")
    p.add_argument("--cluster-radius", type=float, default=0.5,
                   help="radius of the preferred cluster for the statistics, rad (default: 0.5)")
    p.add_argument("--coverage-bands", type=int, default=14,
                   help="z bands of the equal-area grid; 2× as many longitudes (default: 14, "
                        "392 cells of 0.032 sr)")
    p.add_argument("--estimator", choices=("learned", "perturbed", "exact"), default="learned")
    p.add_argument("--model", default="pretrained",
                   help="model folder of the learned estimator (default: pretrained, the "
                        "general model shipped in the package)")
    p.add_argument("--sigma2", type=float, default=0.2,
                   help="noise variance of the perturbed estimator, rad² (default: 0.2)")
    p.add_argument("--steps", type=int, default=2000, help="recovery's Adam steps (default: 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra-op threads and OMP_NUM_THREADS (default: all cores)")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--figure", type=Path, default=DEFAULT_FIGURE)
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (L 32, 300 projections, 2 strengths, perturbed), "
                        "written under WORK_DIR/quick unless --out/--figure are given")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.n_projections, args.test_size = 32, 300, 100
        args.fractions, args.strengths = [0.0, 0.9], args.strengths and args.strengths[:2]
        args.estimator, args.steps = "perturbed", 500
        args.work_dir = args.work_dir / "quick"
        if args.out == p.get_default("out"):  # never the real results; an explicit path stays
            args.out = args.work_dir / "preferred_views.json"
        if args.figure == p.get_default("figure"):
            args.figure = args.work_dir / "preferred-views-coverage.png"
    if args.strengths is None:
        args.strengths = [Strength(f, args.concentration) for f in args.fractions]
    for strength in args.strengths:
        if not 0.0 <= strength.fraction <= 1.0 or not strength.concentration > 0:
            p.error(f"invalid strength {strength}: need 0 <= fraction <= 1 and κ > 0")
    if args.test_size > args.n_projections:
        p.error("--test-size exceeds --n-projections")
    return args


# ----------------------------------------------------------------------------
# Data and estimator
# ----------------------------------------------------------------------------
def dataset_path(args: argparse.Namespace, strength: Strength) -> Path:
    """The dataset file of a strength; its name holds every parameter of the data."""
    direction = "_".join(f"{c:g}" for c in unit(args.direction))
    name = (f"{args.volume}_L{args.size}_N{args.n_projections}_T{args.test_size}"
            f"_snr{snr_tag(args.snr)}_shift{args.max_shift:g}_{strength.tag}"
            f"_dir{direction}_seed{args.seed}.h5")
    return args.work_dir / "datasets" / name.replace("/", "-").replace(":", "-")


def unit(vector: Any) -> FloatArray:
    """A vector scaled to unit length."""
    v = np.asarray(vector, dtype=np.float64)
    return v / np.linalg.norm(v)


def ensure_dataset(args: argparse.Namespace, strength: Strength) -> tuple[Path, bool, float]:
    """Generate the dataset of a strength unless it exists; returns (path, reused, seconds)."""
    from cryoem import datasets, volumes

    path = dataset_path(args, strength)
    if path.exists():
        return path, True, 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sampling, options = ("uniform", None) if strength.uniform else (
        "preferred", {"direction": tuple(unit(args.direction)), "fraction": strength.fraction,
                      "concentration": strength.concentration})
    datasets.generate(volumes.resolve(args.volume, args.size), args.n_projections, path,
                      snr=args.snr, max_shift=args.max_shift, sampling=sampling,
                      sampling_options=options, test_size=args.test_size, seed=args.seed)
    return path, False, time.perf_counter() - start


def make_estimator(args: argparse.Namespace) -> "Estimator":
    """The distance estimator; a learned model must take L × L images."""
    from cryoem import distance

    estimator = distance.make_estimator(args.estimator, model_dir=args.model,
                                        sigma2=args.sigma2, seed=args.seed)
    if args.estimator == "learned" and estimator.image_size != args.size:  # type: ignore[attr-defined]
        raise SystemExit(f"the model {args.model} takes {estimator.image_size}-pixel images "
                         f"but --size is {args.size}")
    return estimator


def model_fingerprint(args: argparse.Namespace) -> str | None:
    """A hash of the learned model's file, so that a retrained model is not mistaken for the old."""
    if args.estimator != "learned":
        return None
    from cryoem import siamese

    try:
        path = siamese.model_directory(args.model) / siamese.MODEL_FILE
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from error
    if not path.is_file():
        raise SystemExit(f"no trained model at {path} (--model)")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def row_settings(args: argparse.Namespace, strength: Strength,
                 fingerprint: str | None) -> dict[str, Any]:
    """Everything a row depends on: a row is reused only when these are equal."""
    return {
        "volume": args.volume, "size": args.size, "n_projections": args.n_projections,
        "test_size": args.test_size, "snr": snr_tag(args.snr), "max_shift": args.max_shift,
        "fraction": strength.fraction, "concentration": strength.concentration,
        "direction": [float(c) for c in unit(args.direction)], "seed": args.seed,
        "estimator": args.estimator,
        "model": args.model if args.estimator == "learned" else None,
        "model_sha256": fingerprint,
        "sigma2": args.sigma2 if args.estimator == "perturbed" else None,
        "steps": args.steps,
    }


# ----------------------------------------------------------------------------
# Coverage
# ----------------------------------------------------------------------------
def equal_area_cells(directions: FloatArray, bands: int) -> NDArray[np.int64]:
    """The cell of each unit vector in a ``bands × 2·bands`` equal-area grid (z × longitude)."""
    z = np.clip(directions[:, 2], -1.0, 1.0 - 1e-12)
    band = np.minimum(((z + 1.0) / 2.0 * bands).astype(np.int64), bands - 1)
    longitude = np.mod(np.arctan2(directions[:, 1], directions[:, 0]), 2 * np.pi)
    column = np.minimum((longitude / (2 * np.pi) * 2 * bands).astype(np.int64), 2 * bands - 1)
    return band * 2 * bands + column


def coverage(quaternions: FloatArray, direction: FloatArray, bands: int,
             radius: float) -> dict[str, float]:
    """Coverage statistics of the viewing directions of ``quaternions``.

    Returns
    -------
    dict
        ``covered_fraction`` (share of the sphere's area, in equal-area cells,
        holding at least one direction), ``covered_fraction_antipodal`` (a
        cell or its antipode), ``uniform_expected`` (the same on average for
        as many uniform directions; ``uniform_expected_antipodal`` for the
        antipodal count), ``share_near_direction`` (within
        ``radius`` rad of ``direction``) and its uniform value, and ``cells``.
    """
    from cryoem import rotations

    d = rotations.viewing_direction(quaternions)
    n_cells = 2 * bands * bands
    occupied = np.zeros(n_cells, dtype=bool)
    occupied[equal_area_cells(d, bands)] = True
    grid = occupied.reshape(bands, 2 * bands)
    antipodes = np.roll(grid[::-1, :], bands, axis=1)  # z → −z, longitude → longitude + π
    near = np.arccos(np.clip(d @ direction, -1.0, 1.0)) < radius
    return {
        "cells": n_cells,
        "covered_fraction": float(occupied.mean()),
        "covered_fraction_antipodal": float((grid | antipodes).mean()),
        "uniform_expected": float(1.0 - (1.0 - 1.0 / n_cells) ** len(d)),
        "uniform_expected_antipodal": float(1.0 - (1.0 - 2.0 / n_cells) ** len(d)),
        "share_near_direction": float(near.mean()),
        "share_near_direction_uniform": float((1.0 - np.cos(radius)) / 2.0),
    }


def near_direction(quaternions: FloatArray, direction: FloatArray,
                   radius: float) -> NDArray[np.bool_]:
    """Whether each orientation's viewing direction lies within ``radius`` rad of ``direction``."""
    from cryoem import rotations

    cosines = rotations.viewing_direction(quaternions) @ direction
    return np.arccos(np.clip(cosines, -1.0, 1.0)) < radius


# ----------------------------------------------------------------------------
# One strength
# ----------------------------------------------------------------------------
def orientations_path(args: argparse.Namespace, strength: Strength) -> Path:
    """Where a row's recovered and resolved orientations and errors are kept."""
    name = dataset_path(args, strength).stem + f"_{args.estimator}.npz"
    return args.work_dir / "orientations" / name


def recover_and_score(data: "Dataset", estimator: "Estimator",
                      args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, FloatArray]]:
    """Distances, recovery and frame on the test split, each timed, then scored.

    Returns
    -------
    tuple
        The row's numbers and the arrays to keep (test indices, recovered and
        resolved quaternions, per-image physical errors after the frame step).
    """
    from cryoem import alignment, commonlines, distance, recovery

    symmetry = data.attrs.get("symmetry", "C1")
    test = data.split["test"]
    truth = data.orientations[test]  # only to score
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    matrix = estimator.fit(data).matrix(data, test)
    seconds["distances"] = time.perf_counter() - start

    start = time.perf_counter()
    result = recovery.recover(matrix, steps=args.steps, symmetry=symmetry, seed=args.seed)
    seconds["recover"] = time.perf_counter() - start

    start = time.perf_counter()
    frame = commonlines.resolve_frame(data.projections[test], result.quaternions, seed=args.seed)
    resolved = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    seconds["frame"] = time.perf_counter() - start
    seconds["total"] = seconds["distances"] + seconds["recover"] + seconds["frame"]

    start = time.perf_counter()
    exact = distance.ExactDistance().matrix(data, test)
    o4 = {"recovered": alignment.align_o4(result.quaternions, truth, symmetry).mean,
          "resolved": alignment.align_o4(resolved, truth, symmetry).mean}
    before = alignment.align_physical(result.quaternions, truth, symmetry)
    after = alignment.align_physical(resolved, truth, symmetry)
    seconds["scoring"] = time.perf_counter() - start

    row = {
        "n_test": len(test),
        "l_de": distance.l_de(matrix, exact),
        "l_or": result.final_loss,
        "e_or_o4_rad": min(o4.values()),
        "e_or_o4_searches": o4,
        "e_or_before_frame_rad": before.mean,
        "e_or_rad": after.mean,
        "e_or_median_rad": after.median,
        "frame": {"confidence": frame.confidence, "transposed": frame.transposed,
                  "distinguishable": frame.distinguishable},
        "recovery_steps": result.steps,
        "seconds": seconds,
    }
    arrays = {"test": test, "recovered": result.quaternions, "resolved": resolved,
              "errors": after.errors}
    return row, arrays


def run_strength(args: argparse.Namespace, strength: Strength, estimator: "Estimator",
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Generate (or reuse) the data of one strength, recover, score and keep the orientations."""
    from cryoem import datasets

    path, reused, generate_seconds = ensure_dataset(args, strength)
    data = datasets.load(path)
    row, arrays = recover_and_score(data, estimator, args)
    row["seconds"]["generate"] = generate_seconds
    keep = orientations_path(args, strength)
    keep.parent.mkdir(parents=True, exist_ok=True)
    np.savez(keep, **arrays)
    return {"strength": {"fraction": strength.fraction, "concentration": strength.concentration,
                         "label": strength.label},
            "settings": settings,
            "dataset": {"path": str(path), "reused": reused,
                        "sampling": data.attrs.get("sampling")},
            "orientations": str(keep),
            **row}


def describe(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Add the coverage and the errors inside and outside the preferred cluster to a row.

    Both are computed from the kept orientations and the dataset's truth, so a
    reused row follows the current ``--coverage-bands`` and ``--cluster-radius``.
    """
    from cryoem import datasets

    kept = np.load(row["orientations"])
    truth = datasets.load(row["dataset"]["path"], images=False).orientations[kept["test"]]
    direction = unit(args.direction)
    inside = near_direction(truth, direction, args.cluster_radius)
    errors = kept["errors"]
    row["coverage"] = coverage(truth, direction, args.coverage_bands, args.cluster_radius)
    row.update(
        cluster_radius_rad=args.cluster_radius, n_in_cluster=int(inside.sum()),
        e_or_in_cluster_rad=float(errors[inside].mean()) if inside.any() else None,
        e_or_outside_cluster_rad=float(errors[~inside].mean()) if (~inside).any() else None)
    return row


def reusable(previous: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any] | None:
    """A row of an earlier run with the same settings whose files are still on disk."""
    for row in previous:
        if (row.get("settings") == settings and Path(row.get("orientations", "")).is_file()
                and Path(row.get("dataset", {}).get("path", "")).is_file()):
            return row
    return None


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------
HEADER = (f"{'strength':>14} {'covered':>8} {'near':>6} {'L_DE':>7} {'E_OR o4':>8} "
          f"{'phys.':>7} {'frame':>7} {'median':>7} {'in':>7} {'out':>7} {'conf.':>6} "
          f"{'dist s':>7} {'rec s':>6} {'frame s':>7}")


def format_row(row: dict[str, Any]) -> str:
    """One line of the table."""
    def f(value: Any, width: int = 7, digits: int = 3) -> str:
        return f"{'—':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    s, c = row["seconds"], row["coverage"]
    return (f"{row['strength']['label']:>14} {c['covered_fraction']:>8.1%} "
            f"{c['share_near_direction']:>6.1%} {f(row['l_de'])} {f(row['e_or_o4_rad'], 8)} "
            f"{f(row['e_or_before_frame_rad'])} {f(row['e_or_rad'])} "
            f"{f(row['e_or_median_rad'])} {f(row['e_or_in_cluster_rad'])} "
            f"{f(row['e_or_outside_cluster_rad'])} {f(row['frame']['confidence'], 6, 1)} "
            f"{f(s['distances'], 7, 1)} {f(s['recover'], 6, 1)} {f(s['frame'], 7, 1)}"
            + ("  (reused)" if row.get("reused_row") else ""))


def figure(rows: list[dict[str, Any]], direction: FloatArray) -> Any:
    """Mollweide maps of the test images' true viewing directions, and E_OR against strength."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from cryoem import datasets, rotations

    n = len(rows)
    fig = plt.figure(figsize=(3.6 * n + 4.2, 3.2))
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1.0] * n + [0.9], wspace=0.08)
    maps, points = [], None
    for k, row in enumerate(rows):
        kept = np.load(row["orientations"])
        truth = datasets.load(row["dataset"]["path"], images=False).orientations[kept["test"]]
        d = rotations.viewing_direction(truth)
        ax = fig.add_subplot(grid[0, k], projection="mollweide")
        maps.append(ax)
        points = ax.scatter(np.arctan2(d[:, 1], d[:, 0]), np.arcsin(np.clip(d[:, 2], -1, 1)),
                            c=kept["errors"], s=2, cmap="viridis", vmin=0.0, vmax=0.5,
                            alpha=0.7, linewidths=0)
        ax.plot(np.arctan2(direction[1], direction[0]), np.arcsin(direction[2]), "r+", ms=8)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.grid(True, lw=0.4)
        ax.set_title(f"{row['strength']['label']}\nE_OR {row['e_or_rad']:.3f} rad "
                     f"(O(4) {row['e_or_o4_rad']:.3f})", fontsize=8)
    if points is not None:
        bar = fig.colorbar(points, ax=maps, orientation="horizontal", fraction=0.05,
                           pad=0.04, shrink=0.4)
        bar.set_label("error after the frame step (rad, clipped at 0.5); + preferred direction",
                      fontsize=7)
        bar.ax.tick_params(labelsize=7)
    panel = grid[0, n].subgridspec(1, 2, width_ratios=[0.3, 1.0])
    ax = fig.add_subplot(panel[0, 1])
    x = np.arange(n)
    for key, label, style in (("e_or_o4_rad", "O(4) (paper)", "o-"),
                              ("e_or_before_frame_rad", "physical, before frame", "s--"),
                              ("e_or_rad", "physical, after frame", "^-"),
                              ("e_or_median_rad", "median, after frame", "v:")):
        ax.plot(x, [row[key] for row in rows], style, label=label, ms=4)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(x, [("uniform" if r["strength"]["fraction"] == 0
                       else f"{r['strength']['fraction']:g}\nκ={r['strength']['concentration']:g}")
                      for r in rows], fontsize=7)
    ax.margins(x=0.15)
    ax.set_ylabel("E_OR (rad)", fontsize=8)
    ax.set_xlabel("share in the preferred view", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    return fig


def report_of(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON report."""
    settings = {k: v for k, v in vars(args).items() if k != "strengths"}
    settings["strengths"] = [{"fraction": s.fraction, "concentration": s.concentration}
                             for s in args.strengths]
    return {"benchmark": "preferred_views", "machine": machine_info(args.threads),
            "settings": settings, "figure": str(args.figure), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from cryoem import plots, siamese

    siamese.configure_threads(args.threads)
    previous: list[dict[str, Any]] = []
    if args.out.exists():
        previous = json.loads(args.out.read_text()).get("rows", [])
    fingerprint = model_fingerprint(args)
    estimator = None
    rows: list[dict[str, Any]] = []
    print(HEADER, flush=True)
    for strength in args.strengths:
        settings = row_settings(args, strength, fingerprint)
        row = reusable(previous, settings)
        if row is not None:
            row["reused_row"] = True
        else:  # computed now
            if estimator is None:
                estimator = make_estimator(args)
            row = run_strength(args, strength, estimator, settings)
            row["reused_row"] = False
        rows.append(describe(row, args))
        print(format_row(row), flush=True)
        write_report(report_of(args, rows), args.out)
    plots.save(figure(rows, unit(args.direction)), args.figure)
    print(f"wrote {args.out} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
