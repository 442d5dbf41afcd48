"""How preferred orientations affect orientation recovery: E_OR against a preferred view's strength.

Particles that stick to the grid crowd their viewing directions around a few
directions.  For each strength (``--fractions`` at ``--concentration`` κ, or
``--strengths FRACTION:KAPPA ...``), a dataset whose orientations follow
``sampling.sample_preferred_view`` (a share ``fraction`` around ``--direction``,
von Mises–Fisher κ; the rest uniform; fraction 0 is the paper's uniform case) is
generated once, then the pipeline's first guess runs on its test split: distances
(``--estimator``; ``learned`` with ``--model``, default the shipped ``pretrained``
model) → ``recovery.recover`` → ``commonlines.resolve_frame``.  Each strength is a
cached scenario of ``harness.py``.  The truth is read only to score:

* ``e_or_o4_rad`` (``align_o4``, the paper's metric, searched from the recovered and the
  resolved orientations, the lower kept), ``e_or_before_frame_rad`` and ``e_or_rad``
  (``align_physical``), the latter also inside and outside the preferred cluster
  (``--cluster-radius`` rad of ``--direction``); ``l_de`` and ``l_or``;
* coverage of the true viewing directions on an equal-area grid
  (``--coverage-bands``): ``covered_fraction``, ``covered_fraction_antipodal`` (d or −d:
  what a reconstruction sees), their expectation for as many uniform directions, and
  ``share_near_direction``.

The figure (``--figure``) maps each strength's true viewing directions (Mollweide,
coloured by error) beside E_OR against strength.

    .venv/bin/python benchmarks/preferred_views.py                  # learned, pretrained model
    .venv/bin/python benchmarks/preferred_views.py --strengths 0:10 0.9:10 0.9:50 0.99:50
    .venv/bin/python benchmarks/preferred_views.py --quick          # tiny check
"""

# ruff: noqa: E402 - the thread count is pinned before NumPy loads (BLAS reads it once)
from __future__ import annotations

import harness

if __name__ == "__main__":
    harness.pin_threads()

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import positive_snr, volume_name
from harness import Column, Harness, Scenario
from numpy.typing import NDArray

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "preferred_views.json"
DEFAULT_FIGURE = HERE.parent / "images" / "preferred-views-coverage.png"
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
    p.add_argument("--test-size", type=int, default=1650, help="recovered here (default: 1650)")
    p.add_argument("--snr", type=positive_snr, default=math.inf, help="a number, 1/16 or inf")
    p.add_argument("--max-shift", type=float, default=2.0, help="shifts, pixels (default: 2)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9],
                   help="shares of images in the preferred cluster (default: 0 0.5 0.7 0.9)")
    p.add_argument("--concentration", type=float, default=10.0, help="von Mises–Fisher κ")
    p.add_argument("--strengths", type=parse_strength, nargs="+", default=None,
                   metavar="FRACTION:KAPPA", help="a ladder of pairs (overrides --fractions)")
    p.add_argument("--direction", type=float, nargs=3, default=[1.0, 0.0, 0.0],
                   metavar=("X", "Y", "Z"), help="preferred viewing direction (volume frame)")
    p.add_argument("--cluster-radius", type=float, default=0.5, help="rad (default: 0.5)")
    p.add_argument("--coverage-bands", type=int, default=14,
                   help="z bands of the equal-area grid, 2× as many longitudes (default: 14)")
    p.add_argument("--estimator", choices=("learned", "perturbed", "exact"), default="learned")
    p.add_argument("--model", default="pretrained", help="learned: model folder or pretrained")
    p.add_argument("--sigma2", type=float, default=0.2, help="perturbed: variance, rad²")
    p.add_argument("--steps", type=int, default=2000, help="recovery's Adam steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--figure", type=Path, default=DEFAULT_FIGURE)
    harness.add_options(p, DEFAULT_OUT)
    args = p.parse_args(argv)
    quick_dir = args.work_dir / "quick"  # never the real results; explicit paths stay
    harness.quick_defaults(args, p, {
        "size": 32, "n_projections": 300, "test_size": 100, "fractions": [0.0, 0.9],
        "estimator": "perturbed", "steps": 500, "work_dir": quick_dir,
        "out": quick_dir / "preferred_views.json",
        "figure": quick_dir / "preferred-views-coverage.png"})
    if args.strengths is None:
        args.strengths = [Strength(f, args.concentration) for f in args.fractions]
    elif args.quick:
        args.strengths = args.strengths[:2]
    for strength in args.strengths:
        if not 0.0 <= strength.fraction <= 1.0 or not strength.concentration > 0:
            p.error(f"invalid strength {strength}: need 0 <= fraction <= 1 and κ > 0")
    if args.test_size > args.n_projections:
        p.error("--test-size exceeds --n-projections")
    return args


def unit(vector: Any) -> FloatArray:
    """A vector scaled to unit length."""
    v = np.asarray(vector, dtype=np.float64)
    return v / np.linalg.norm(v)


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
def strength_settings(args: argparse.Namespace, strength: Strength,
                      model: dict[str, Any] | None) -> dict[str, Any]:
    """Everything a strength's result depends on (the learned model by its file's hash)."""
    return {"volume": args.volume, "size": args.size, "n_projections": args.n_projections,
            "test_size": args.test_size, "snr": args.snr, "max_shift": args.max_shift,
            "fraction": strength.fraction, "concentration": strength.concentration,
            "direction": [float(c) for c in unit(args.direction)], "seed": args.seed,
            "estimator": args.estimator, "model": model,
            "sigma2": args.sigma2 if args.estimator == "perturbed" else None,
            "steps": args.steps, "threads": args.threads}


def run_strength(args: argparse.Namespace, strength: Strength, keep: Path) -> dict[str, Any]:
    """Generate (or reuse) the data, then distances → recovery → frame, each timed; scored."""
    from cryoem import alignment, commonlines, datasets, distance, recovery

    uniform = strength.uniform
    path, info = harness.dataset(
        args.work_dir / "datasets", volume=args.volume, size=args.size,
        n_projections=args.n_projections, test_size=args.test_size, snr=args.snr,
        max_shift=args.max_shift, seed=args.seed, progress=args.progress,
        sampling="uniform" if uniform else "preferred",
        sampling_options=None if uniform else {
            "direction": tuple(unit(args.direction)), "fraction": strength.fraction,
            "concentration": strength.concentration})
    data = datasets.load(path)
    symmetry = data.attrs.get("symmetry", "C1")
    test = data.split["test"]
    truth = data.orientations[test]  # only to score
    model = args.model if args.estimator == "learned" else None
    made, _ = harness.estimator(args.estimator, model, args.sigma2, args.seed, args.size)
    matrix, t_distances = harness.timed(lambda: made.fit(data).matrix(data, test))
    result, t_recover = harness.timed(lambda: recovery.recover(
        matrix, steps=args.steps, symmetry=symmetry, seed=args.seed))
    frame, t_frame = harness.timed(lambda: commonlines.resolve_frame(
        data.projections[test], result.quaternions, seed=args.seed))
    resolved = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    o4 = {"recovered": alignment.align_o4(result.quaternions, truth, symmetry).mean,
          "resolved": alignment.align_o4(resolved, truth, symmetry).mean}
    before = alignment.align_physical(result.quaternions, truth, symmetry)
    after = alignment.align_physical(resolved, truth, symmetry)
    keep.parent.mkdir(parents=True, exist_ok=True)
    np.savez(keep, test=test, recovered=result.quaternions, resolved=resolved,
             errors=after.errors)
    return {
        "strength": {"fraction": strength.fraction, "concentration": strength.concentration,
                     "label": strength.label},
        "dataset": {**info, "sampling": data.attrs.get("sampling")}, "orientations": str(keep),
        "n_test": len(test), "l_de": distance.l_de(matrix, distance.ExactDistance().matrix(
            data, test)), "l_or": result.final_loss, "e_or_o4_rad": min(o4.values()),
        "e_or_o4_searches": o4, "e_or_before_frame_rad": before.mean,
        "e_or_rad": after.mean, "e_or_median_rad": after.median,
        "frame": {"confidence": frame.confidence, "transposed": frame.transposed,
                  "distinguishable": frame.distinguishable},
        "recovery_steps": result.steps,
        "seconds": {"generate": info["seconds"], "distances": t_distances,
                    "recover": t_recover, "frame": t_frame,
                    "total": t_distances + t_recover + t_frame}}


def describe(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Coverage and the errors inside and outside the cluster, from the kept orientations.

    Computed at every run, so a reused row follows ``--coverage-bands`` and ``--cluster-radius``.
    """
    from cryoem import datasets

    kept = np.load(row["orientations"])
    truth = datasets.load(row["dataset"]["path"], images=False).orientations[kept["test"]]
    direction = unit(args.direction)
    inside = near_direction(truth, direction, args.cluster_radius)
    errors = kept["errors"]
    return {**row, "coverage": coverage(truth, direction, args.coverage_bands,
                                        args.cluster_radius),
            "cluster_radius_rad": args.cluster_radius, "n_in_cluster": int(inside.sum()),
            "e_or_in_cluster_rad": float(errors[inside].mean()) if inside.any() else None,
            "e_or_outside_cluster_rad": (float(errors[~inside].mean()) if (~inside).any()
                                         else None)}


def files_exist(rows: list[dict[str, Any]]) -> bool:
    """Whether a cached row's orientations and dataset are still on disk."""
    return all(Path(r.get("orientations", "")).is_file()
               and Path((r.get("dataset") or {}).get("path", "")).is_file() for r in rows)


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------
COLUMNS = [
    Column("strength", lambda r: r["strength"]["label"]),
    Column("covered %", lambda r: 100 * r["coverage"]["covered_fraction"], ".1f"),
    Column("near %", lambda r: 100 * r["coverage"]["share_near_direction"], ".1f"),
    Column("L_DE", lambda r: r["l_de"], ".3f"),
    Column("E_OR o4", lambda r: r["e_or_o4_rad"], ".3f"),
    Column("phys.", lambda r: r["e_or_before_frame_rad"], ".3f"),
    Column("frame", lambda r: r["e_or_rad"], ".3f"),
    Column("median", lambda r: r["e_or_median_rad"], ".3f"),
    Column("in", lambda r: r["e_or_in_cluster_rad"], ".3f"),
    Column("out", lambda r: r["e_or_outside_cluster_rad"], ".3f"),
    Column("conf.", lambda r: r["frame"]["confidence"], ".1f"),
    Column("dist s", lambda r: r["seconds"]["distances"], ".1f"),
    Column("rec s", lambda r: r["seconds"]["recover"], ".1f"),
    Column("frame s", lambda r: r["seconds"]["frame"], ".1f"),
    Column("", lambda r: "(reused)" if r.get("reused") else ""),
]


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = harness.apply_threads(args.threads)
    from cryoem import plots

    model = (harness.model_info(args.model, volume_name(args.volume, args.size))
             if args.estimator == "learned" else None)
    settings = {k: v for k, v in vars(args).items() if k != "strengths"}
    settings["strengths"] = [{"fraction": s.fraction, "concentration": s.concentration}
                             for s in args.strengths]
    rows: list[dict[str, Any]] = []
    with Harness("preferred_views", args.out, config=settings, threads=threads,
                 fresh=args.fresh, reuse_stale=args.reuse_stale) as bench:
        for strength in args.strengths:
            name = f"strength {strength.label}"
            scenario_settings = strength_settings(args, strength, model)
            keep = (args.work_dir / "orientations"
                    / f"{harness.settings_key(name, scenario_settings)}.npz")
            row = bench.run(Scenario(name, scenario_settings,
                                     lambda s=strength, k=keep: run_strength(args, s, k),
                                     reusable=files_exist))
            if row.get("status") == "failed":
                print(f"{name}: failed: {row['reason']}", file=sys.stderr)
                continue
            rows.append(describe(row, args))
            bench.write({"settings": settings, "model": model, "figure": str(args.figure),
                         "rows": rows})
        print(harness.table(rows, COLUMNS))
        if rows:
            plots.save(figure(rows, unit(args.direction)), args.figure)
        print(f"wrote {args.out} and {args.figure}")
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
