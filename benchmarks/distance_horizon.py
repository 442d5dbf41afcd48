"""How far must the learned distance be right? Its horizon, on proteins it never saw.

Two views of a protein nobody has seen share one line of their Fourier transforms (the common
line); elsewhere their central slices meet nowhere, so the pair fixes the angle between their
planes only through the map's smoothness (slices a small angle apart still agree).  So a
distance between two images of an unseen protein can be learned up to some horizon and not
beyond.  This measures what that allows, in two parts:

* ``oracle`` (reads the truth by construction: it *is* the truth up to the horizon): for each
  horizon τ (``--horizons``), the share of pairs of uniform orientations within it, the least
  ``L_DE`` a distance exact within τ and blind beyond can score (``rotations.l_de_floor``), and
  the paper's O(4) E_OR of ``recovery.recover`` given ``--n-oracle`` orientations' exact
  distances within τ and the mean distance beyond, those pairs weighing 0.
* ``shipped`` and ``euclidean`` (the general model in the package, as it is, with 4 test-time
  turns; pixel distances with an isotonic fit on the held-out protein's TRUE orientations):
  on each held-out protein's test split (as ``generalisation_levers.py`` makes them), how
  right they are within the horizon (``L_DE`` over the pairs truly within τ; the median true
  distance of the 10 images each calls nearest, beside the truly nearest 10's) and the O(4)
  E_OR of recovery from their trusted pairs only (estimated within τ; weight 0 beyond;
  ``all``: every pair, weight 1).  The truth is read by the scoring (and the Euclidean fit).

    .venv/bin/python benchmarks/distance_horizon.py                  # ~50 min on 2 cores
    .venv/bin/python benchmarks/distance_horizon.py --quick          # tiny check
"""

# ruff: noqa: E402 - the thread count is pinned before NumPy loads (BLAS reads it once)
from __future__ import annotations

import harness

if __name__ == "__main__":
    harness.pin_threads()

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from _common import positive_snr, snr_label
from harness import Harness, Scenario

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "distance_horizon.json"
DEFAULT_WORK_DIR = Path("data/benchmarks/generalisation_levers")  # its scoring datasets
ESTIMATORS = ("shipped", "euclidean")
NEIGHBOURS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=("oracle", *ESTIMATORS),
                   default=["oracle", *ESTIMATORS])
    p.add_argument("--horizons", nargs="+", type=float, default=[0.5, 0.75, 1.0, 1.25, 1.5],
                   help="horizons τ (rad) of the oracle")
    p.add_argument("--model-horizons", nargs="+", type=float, default=[1.0, 1.5],
                   help="horizons τ (rad) of the models' trusted pairs")
    p.add_argument("--n-oracle", type=int, default=1650)
    p.add_argument("--held-out", nargs="+", default=["4ake", "1hvr", "2zmm"])
    p.add_argument("--snrs", nargs="+", type=positive_snr, default=[math.inf])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--max-shift", type=float, default=2.0)
    p.add_argument("--n-projections", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1650)
    p.add_argument("--recovery-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    harness.add_options(p, DEFAULT_OUT)
    args = p.parse_args(argv)
    harness.quick_defaults(args, p, {
        "size": 32, "n_projections": 240, "test_size": 80, "n_oracle": 120,
        "recovery_steps": 100, "held_out": ["4ake"], "horizons": [1.0, 2.0],
        "model_horizons": [1.5], "parts": ["oracle", "euclidean"],
        "out": DEFAULT_OUT.with_name("distance_horizon_quick.json"),
        "work_dir": DEFAULT_WORK_DIR.with_name("generalisation_levers_quick")})
    return args


def recovered_error(matrix: Any, truth: Any, horizon: float | None, symmetry: str,
                    args: argparse.Namespace) -> dict[str, float]:
    """O(4) E_OR (mean, median) of recovery from the pairs of ``matrix`` within ``horizon``
    (the others weigh 0; ``None``: every pair, weight 1), and its seconds."""
    from cryoem import alignment, recovery

    start = time.perf_counter()
    options = {} if horizon is None else {"max_distance": horizon, "far_weight": 0.0}
    result = recovery.recover(matrix, steps=args.recovery_steps, symmetry=symmetry,
                              seed=args.seed, **options)
    error = alignment.align_o4(result.quaternions, truth, symmetry)
    return {"e_or_o4": error.mean, "e_or_o4_median": float(error.median),
            "seconds": time.perf_counter() - start}


def run_oracle(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exact distances within each horizon, the mean beyond (weight 0): what recovery makes
    of them, beside the share of pairs and the L_DE floor."""
    import numpy as np

    from cryoem import rotations

    truth = rotations.sample_uniform(args.n_oracle, seed=args.seed)
    exact = rotations.geodesic_distance_matrix(truth)
    upper = exact[np.triu_indices(len(exact), 1)]
    rows = []
    for horizon in args.horizons:
        beyond = upper[upper > horizon]
        matrix = np.where(exact <= horizon, exact, beyond.mean() if len(beyond) else 0.0)
        np.fill_diagonal(matrix, 0.0)
        rows.append({"part": "oracle", "horizon": horizon, "n": args.n_oracle,
                     "share": rotations.uniform_distance_share(horizon),
                     "share_sampled": float(np.mean(upper <= horizon)),
                     "l_de_floor": rotations.l_de_floor(horizon),
                     **recovered_error(matrix, truth, horizon, "C1", args)})
        print(f"oracle τ {horizon:.2f}: O(4) {rows[-1]['e_or_o4']:.3f} rad", file=sys.stderr)
    return rows


def neighbour_distances(matrix: Any, exact: Any) -> tuple[float, float]:
    """Median true distance to the ``NEIGHBOURS`` images ``matrix`` calls nearest, and to the
    truly nearest ones."""
    import numpy as np

    def nearest(d: Any) -> Any:
        d = d + np.diag(np.full(len(d), np.inf))
        return np.argpartition(d, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]

    rows = np.arange(len(exact))[:, None]
    return (float(np.median(exact[rows, nearest(matrix)])),
            float(np.median(exact[rows, nearest(exact)])))


def run_estimator(args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    """One estimator on every held-out protein and SNR: within-horizon accuracy and recovery
    from its trusted pairs, one row per horizon (``None``: every pair)."""
    import numpy as np

    from cryoem import datasets, distance, rotations, siamese

    shipped = (distance.LearnedDistance(siamese.PRETRAINED_DIR, turns=4)
               if kind == "shipped" else None)
    rows = []
    for name in args.held_out:
        for snr in args.snrs:
            path, _ = harness.dataset(
                args.work_dir / "data", volume=name, size=args.size,
                n_projections=args.n_projections, test_size=args.test_size, snr=snr,
                max_shift=args.max_shift, seed=args.seed)
            data = datasets.load(path)
            symmetry = data.attrs.get("symmetry", "C1")
            test = data.split["test"]
            estimator = (shipped.fit(data) if shipped is not None
                         else distance.EuclideanDistance(seed=args.seed).fit(data))
            matrix = estimator.matrix(data, test)
            exact = rotations.symmetric_distance_matrix(data.orientations[test],
                                                        rotations.point_group(symmetry))
            pairs = np.triu_indices(len(exact), 1)
            found, best = neighbour_distances(matrix, exact)
            head = {"part": kind, "protein": name, "snr": snr, "symmetry": symmetry,
                    "n": len(test), "l_de": distance.l_de(matrix, exact),
                    "neighbour_distance": found, "true_neighbour_distance": best}
            for horizon in [None, *args.model_horizons]:
                within = (exact[pairs] <= (math.pi if horizon is None else horizon))
                rows.append({**head, "horizon": horizon,
                             "l_de_within": float(np.mean(
                                 (matrix[pairs][within] - exact[pairs][within]) ** 2)),
                             "trusted_share": float(np.mean(
                                 matrix[pairs] <= (math.pi if horizon is None else horizon))),
                             **recovered_error(matrix, data.orientations[test], horizon,
                                               symmetry, args)})
                print(f"{kind} {name} {snr_label(snr)} τ {horizon}: O(4) "
                      f"{rows[-1]['e_or_o4']:.3f} rad", file=sys.stderr)
    return rows


def _tau(value: float | None) -> str:
    return "all pairs" if value is None else f"{value:g}"


def _part(row: dict[str, Any]) -> str:
    """The part a row belongs to (a failed scenario's row names it only in its stamp)."""
    return row.get("part") or (row.get("scenario") or {}).get("name", "?")


def _stale(row: dict[str, Any]) -> str:
    return "stale" if row.get("stale") else ""


def markdown(data: dict[str, Any]) -> list[str]:
    """The two tables: the oracle's, then the models'."""
    every = data.get("rows") or []
    failed = [f"{_part(r)} failed: {r.get('reason', '?')}" for r in every
              if r.get("status") == "failed"]
    rows = [r for r in every if r.get("status") != "failed"]
    oracle = [r for r in rows if _part(r) == "oracle"]
    models = [r for r in rows if _part(r) != "oracle"]
    lines = ["**Oracle** (the truth within the horizon τ, by construction; the mean distance "
             "beyond it, those pairs weighing 0 in recovery): the share of pairs of uniform "
             "orientations within τ, the least `L_DE` a distance right within τ and blind "
             "beyond can score, and the paper's O(4) E_OR of recovery from such distances.", "",
             "| τ (rad) | pairs within τ | least L_DE (rad²) | N | E_OR O(4) mean / median "
             "(rad) | seconds | stale |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['horizon']:g} | {r['share']:.3f} | {r['l_de_floor']:.3f} | {r['n']} | "
              f"{r['e_or_o4']:.3f} / {r['e_or_o4_median']:.3f} | {r['seconds']:.0f} | "
              f"{_stale(r)} |" for r in oracle]
    lines += ["", "**Models on the held-out proteins** (test split; the truth read by the "
              "scoring, and by the Euclidean fit on the protein's own true orientations): "
              "`L_DE` over every pair and over the pairs truly within τ, the median true "
              "distance of the 10 images each calls nearest (the truly nearest 10: beside it), "
              "and the O(4) E_OR of recovery from the pairs it puts within τ only.", "",
              "| estimator | protein | SNR | L_DE (rad²) | τ (rad) | L_DE within τ | pairs "
              "trusted | 10 nearest: true distance (best) | E_OR O(4) mean / median (rad) "
              "| stale |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['protein']} | {snr_label(float(r['snr']))} | "
              f"{r['l_de']:.3f} | {_tau(r['horizon'])} | {r['l_de_within']:.3f} | "
              f"{r['trusted_share']:.3f} | {r['neighbour_distance']:.3f} "
              f"({r['true_neighbour_distance']:.3f}) | {r['e_or_o4']:.3f} / "
              f"{r['e_or_o4_median']:.3f} | {_stale(r)} |" for r in models]
    return lines + ([""] + [f"* {line}" for line in failed] if failed else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = harness.apply_threads(args.threads)
    rows: list[dict[str, Any]] = []
    common = {"recovery_steps": args.recovery_steps, "seed": args.seed}
    with Harness("distance_horizon", args.out, config={**common, "parts": args.parts},
                 threads=threads, fresh=args.fresh, reuse_stale=args.reuse_stale) as bench:
        previous = [r for r in bench.previous().get("rows", []) if _part(r) not in args.parts]
        for part in args.parts:
            if part == "oracle":
                settings = {**common, "horizons": args.horizons, "n": args.n_oracle}
                scenario = Scenario(part, settings, lambda: run_oracle(args))
            else:
                settings = {**common, **{k: getattr(args, k) for k in (
                    "model_horizons", "held_out", "snrs", "size", "max_shift",
                    "n_projections", "test_size")}}
                scenario = Scenario(part, settings, lambda kind=part: run_estimator(args, kind))
            rows += bench.run_rows(scenario)
            bench.write({"rows": rows + previous})
        print("\n".join(markdown({"rows": rows + previous})))
        print(f"wrote {args.out}")
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
