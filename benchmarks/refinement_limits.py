"""What limits a blind refinement: its final poses set against references that read the truth.

A diagnosis, not a method: it reads the truth (the true map, poses and shifts) of a finished
``benchmarks/particles.py`` run, to say whether the error left is in the data or in the
reference the run built.  Nothing here feeds the pipeline.  For the run's folder (one with
``truth.h5`` and ``ab-initio/``) it measures:

1. the final error's shape: mean, median, tail, the in-plane and out-of-plane parts, and how
   alike the residual turns of neighbouring views are (a collective distortion or noise);
2. local matching against the **true map**, from the run's final poses (``--n`` images);
3. one half's images matched against that half's final map with and without them (does each
   image's own noise hold it where it is?);
4. with ``--from-truth``: refinement's local loop started at the true poses and shifts (does it
   stay there, and with what half-map resolution and score?);
5. with ``--symmetry``: how symmetric the true map is under the group;
6. with ``--continued``: does the blind state move if refinement goes on?  Its local loop
   continued from the final poses and shifts (every image against its half's map without its
   group, as in the run) in four variants: the grid the run's polish ended on, kept (0.045
   rad, 6 iterations); a wide grid on the whole band (0.15 rad shrinking, no angular band, 3);
   the true shifts held (0.06 rad shrinking, 4: are the shifts what holds it?); and
   references that marginalise over each image's 8 most probable local candidates (posterior
   at temperature 8, 8, 4, 2, 1, 1: RELION's expectation instead of the best pose); with how
   sharp each image's posterior over the local grid is (effective candidates).

    python benchmarks/refinement_limits.py --run data/benchmarks/particles/1hvr_64_5000_snr1-16 \\
        --symmetry C2 --from-truth --continued

Rows are kept by run folder: measuring another run adds a row.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from _common import write_report  # noqa: E402


def error_shape(estimate: np.ndarray, truth: np.ndarray, symmetry: str) -> dict[str, Any]:
    """Mean, median and tail of the physical error, its in-/out-of-plane parts and how alike
    the residual turns of neighbouring views are (cosine; ~0 for independent errors)."""
    from scipy.spatial import cKDTree

    from cryoem import alignment, rotations

    fit = alignment.align_physical(estimate, truth, symmetry)
    moved = rotations.canonical(fit.to_truth_frame(estimate))
    mates = np.stack([rotations.multiply(truth, np.broadcast_to(g, truth.shape))
                      for g in rotations.point_group(symmetry)])  # R·g: the same image
    distances = np.stack([rotations.geodesic_distance(moved, m) for m in mates])
    nearest = mates[np.argmin(distances, axis=0), np.arange(len(truth))]
    in_microscope = _rotation_vectors(rotations.multiply(moved, rotations.conjugate(nearest)))
    in_volume = _rotation_vectors(rotations.multiply(rotations.conjugate(nearest), moved))
    directions = rotations.quaternion_to_matrix(nearest)[:, 2, :]
    _, pairs = cKDTree(directions).query(directions, k=2)
    lengths = np.linalg.norm(in_volume, axis=1) + 1e-12
    cosine = np.sum(in_volume * in_volume[pairs[:, 1]], 1) / (lengths * lengths[pairs[:, 1]])
    return {"e_or_rad": fit.mean, "e_or_median_rad": fit.median,
            "share_beyond_0.3_rad": float(np.mean(fit.errors > 0.3)),
            "in_plane_rad": float(np.mean(np.abs(in_microscope[:, 2]))),
            "out_of_plane_rad": float(np.mean(np.linalg.norm(in_microscope[:, :2], axis=1))),
            "neighbour_residual_cosine": float(np.mean(cosine))}


def _rotation_vectors(q: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_quat(np.c_[q[:, 1:], q[:, :1]]).as_rotvec()


def local_errors(reference: np.ndarray, images: np.ndarray, ctf: Any, pixel_size: float,
                 start: np.ndarray, shifts: np.ndarray, truth: np.ndarray, symmetry: str,
                 iterations: int, radius: float | None = None) -> list[tuple[float, float]]:
    """(mean, median) error after each of ``iterations`` local matches against ``reference``,
    the grid shrinking from 0.15 rad as in refinement."""
    from cryoem import alignment
    from cryoem.matching import Band, candidate_offsets, local_match

    size = images.shape[-1]
    band = Band(size, radius or size / 2 - 1)
    spectra = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))[:, band.mask]
    transfer = band.ctf(ctf, pixel_size) if ctf is not None else None
    q, s, step, found = start.copy(), shifts.copy(), 0.15, []
    for _ in range(iterations):
        q, s, _ = local_match(reference, spectra, q, s, transfer, band, candidate_offsets(step),
                              2.0, 64)
        fit = alignment.align_physical(q, truth, symmetry)
        found.append((fit.mean, fit.median))
        step *= 0.7
    return found


def leave_out(data: Any, estimate: np.ndarray, shifts: np.ndarray, truth: np.ndarray,
              symmetry: str, n: int) -> dict[str, Any]:
    """Half 1's first ``n`` images matched (4 local iterations from 0.06 rad) against half
    1's map with them and without them; both maps weighted by the halves' FSC."""
    from cryoem import gold_standard, reconstruction, resolution

    halves = reconstruction.split_halves(len(estimate), 0)
    half, other = np.flatnonzero(halves == 0), np.flatnonzero(halves == 1)
    images = np.asarray(data.projections, dtype=np.float64)

    def rebuild(rows: np.ndarray) -> np.ndarray:
        return reconstruction.reconstruct(images[rows], estimate[rows], shifts=shifts[rows],
                                          ctf=data.ctf[rows], pixel_size=data.pixel_size,
                                          iterations=15).data.astype(np.float64)

    with_them, without, second = rebuild(half), rebuild(half[n:]), rebuild(other)
    curve = resolution.fsc(with_them, second, data.pixel_size, mask=True)
    shell = curve.shells[np.flatnonzero(curve.values < 0.143)[0]]
    radius = min(images.shape[-1] / 2 - 1, 1.2 * shell + 2)  # refinement's band
    test = half[:n]
    result: dict[str, Any] = {"images": n, "band_radius_px": radius}
    for name, volume in (("with_them", with_them), ("without_them", without)):
        path = local_errors(gold_standard.filter_by_fsc(volume, curve.values), images[test],
                            data.ctf[test], data.pixel_size, estimate[test], shifts[test],
                            truth[test], symmetry, 4, radius)
        result[name] = {"e_or_rad": path[-1][0], "e_or_median_rad": path[-1][1]}
    return result


def from_truth(data: Any, truth: Any, symmetry: str) -> dict[str, Any]:
    """Refinement's local loop (6 iterations from a 0.05 rad grid) started at the truth."""
    from cryoem import alignment, refinement

    result = refinement.refine(np.asarray(data.projections), truth.orientations,
                               shifts=truth.shifts, ctf=data.ctf, pixel_size=data.pixel_size,
                               global_iterations=0, rescue_candidates=0, iterations=6,
                               step=0.05, soft_iterations=0)
    fit = alignment.align_physical(result.quaternions, truth.orientations, symmetry)
    last = result.history[-1]
    return {"e_or_rad": fit.mean, "e_or_median_rad": fit.median,
            "halfmap_fsc0143_angstrom": last["halfmap_fsc0143_angstrom"],
            "mean_score": last["mean_score"], "iterations": len(result.history)}


def continued(data: Any, truth: Any, estimate: np.ndarray, shifts: np.ndarray,
              symmetry: str) -> dict[str, Any]:
    """Refinement's local loop continued from the blind run's final state, in four variants;
    the error (mean, median) after each iteration, and the posterior's sharpness."""
    from cryoem import alignment, refinement

    images = np.asarray(data.projections)  # read once for all the variants
    path: list[tuple[float, float]] = []

    def score(_: int, q: np.ndarray, __: np.ndarray) -> dict[str, float]:
        fit = alignment.align_physical(q, truth.orientations, symmetry)
        path.append((fit.mean, fit.median))
        return {}

    common = dict(ctf=data.ctf, pixel_size=data.pixel_size, global_iterations=0,
                  rescue_candidates=0, soft_iterations=0, tolerance=0.0, callback=score)
    variants = {"same_grid": dict(shifts=shifts, step=0.045, shrink=1.0, iterations=6),
                "wide_full_band": dict(shifts=shifts, step=0.15, iterations=3,
                                       angular_band=None),
                "true_shifts": dict(shifts=truth.shifts, max_shift=0.0, step=0.06, shrink=0.8,
                                    iterations=4)}
    start = alignment.align_physical(estimate, truth.orientations, symmetry)
    result: dict[str, Any] = {"start": [start.mean, start.median]}
    for name, options in variants.items():
        path.clear()
        refinement.refine(images, estimate, **common, **options)
        result[name] = list(path)
    result["marginalised"], result["effective_candidates"] = marginalised(
        data, images, truth, estimate, shifts, symmetry, (8.0, 8.0, 4.0, 2.0, 1.0, 1.0))
    return result


def marginalised(data: Any, images: np.ndarray, truth: Any, estimate: np.ndarray,
                 shifts: np.ndarray, symmetry: str, temperatures: tuple[float, ...],
                 candidates: int = 8, step: float = 0.06) -> tuple[list[tuple[float, float]], float]:
    """Local iterations whose references enter each image at its ``candidates`` most probable
    local orientations, weighted by their posterior (:func:`cryoem.ab_initio.posterior_weights`
    at each iteration's temperature), each group left out of its own reference; every image
    then takes its most probable candidate.  Shifts stay.  Returns the error after each
    iteration and the posterior's mean effective number of candidates in the last one."""
    from cryoem import alignment, gold_standard, projection, reconstruction, resolution, rotations
    from cryoem.ab_initio import posterior_weights
    from cryoem.matching import Band, candidate_offsets, candidate_scores

    images = np.asarray(images, dtype=np.float64)
    n, size = images.shape[:2]
    halves = reconstruction.split_halves(n, 0)
    groups = np.arange(n) % 4
    band, offsets = Band(size, size / 2 - 1), candidate_offsets(step)
    q, chosen, weights = estimate.copy(), estimate[:, None, :].copy(), np.ones((n, 1))
    path, effective = [], float("nan")
    for temperature in temperatures:
        references = []
        for half in (0, 1):
            rows = np.flatnonzero(halves == half)
            copies = np.repeat(rows, chosen.shape[1])
            _, without = reconstruction.leave_group_out(
                images[copies], chosen[rows].reshape(-1, 4), groups[copies],
                shifts=shifts[copies], ctf=data.ctf[copies], pixel_size=data.pixel_size,
                iterations=15, weights=weights[rows].ravel())
            references.append([m.data.astype(np.float64) for m in without])
        curve = resolution.fsc(references[0][0], references[1][0], data.pixel_size, mask=True)
        chosen, weights = np.empty((n, candidates, 4)), np.empty((n, candidates))
        spread = []
        for half in (0, 1):
            for group, reference in enumerate(references[half]):
                rows = np.flatnonzero((halves == half) & (groups == group))
                slices_of = projection._SliceEvaluator(
                    gold_standard.filter_by_fsc(reference, curve.values), precision="single")
                for batch in np.array_split(rows, max(1, len(rows) // 64)):
                    spectra = np.fft.rfft2(np.fft.ifftshift(images[batch], axes=(-2, -1)))[
                        :, band.mask] * band.shift_phases(shifts[batch])
                    turned = rotations.multiply(offsets[None], q[batch, None, :])
                    _, _, scores = candidate_scores(slices_of, band, spectra, turned, band.ctf(
                        data.ctf[batch], data.pixel_size))
                    energy = np.sum(band.weights * np.abs(spectra) ** 2, -1)
                    posterior = posterior_weights(scores, energy, float(np.sum(band.weights)),
                                                  temperature)
                    top = np.argsort(-posterior, axis=1)[:, :candidates]
                    picked = np.take_along_axis(posterior, top, axis=1)
                    chosen[batch] = np.take_along_axis(turned, top[..., None], axis=1)
                    weights[batch] = picked / picked.sum(axis=1, keepdims=True)
                    spread.append(1 / np.sum(posterior ** 2, axis=1))
        q = rotations.canonical(chosen[:, 0])
        effective = float(np.mean(np.concatenate(spread)))
        fit = alignment.align_physical(q, truth.orientations, symmetry)
        path.append((fit.mean, fit.median))
        print(f"marginalised, temperature {temperature}: {fit.mean:.4f} / {fit.median:.4f} rad,"
              f" {effective:.1f} effective candidates", flush=True)
    return path, effective


def main(argv: list[str] | None = None) -> None:
    """Measure, print, write the JSON."""
    import json

    import h5py

    from cryoem import alignment, datasets, rotations, scoring, symmetry_frame

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True,
                   help="a benchmarks/particles.py run folder (truth.h5 and ab-initio/)")
    p.add_argument("--symmetry", default="C1", help="to score (the group the truth has)")
    p.add_argument("--n", type=int, default=1000, help="images for the matching checks")
    p.add_argument("--from-truth", action="store_true", help="also refine from the truth")
    p.add_argument("--continued", action="store_true",
                   help="also continue the blind run's refinement (four variants)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/refinement_limits.json"))
    args = p.parse_args(argv)

    run = args.run / "ab-initio"
    data = datasets.load(run / "data.h5")
    truth = datasets.load(args.run / "truth.h5", images=False)
    estimate = scoring.read_poses(run / "particles.star").quaternions  # the input's order
    with h5py.File(run / "orientations_refined.h5", "r") as handle:
        order = np.argsort(handle["indices"][()])
        shifts = handle["shifts"][()][order]
    metrics = json.loads((run / "metrics.json").read_text())
    n = min(args.n, len(estimate) // 4)
    images = np.asarray(data.projections[:n], dtype=np.float64)
    # The true map lives in the truth's frame: the poses go there to be matched against it.
    in_truth_frame = rotations.canonical(alignment.align_physical(
        estimate, truth.orientations, args.symmetry).to_truth_frame(estimate))
    row: dict[str, Any] = {
        "run": str(args.run), "symmetry": args.symmetry,
        "run_commit": metrics["provenance"]["git_commit"],
        "final": error_shape(estimate, truth.orientations, args.symmetry),
        "true_map_from_final_poses": dict(zip(("e_or_rad", "e_or_median_rad"), local_errors(
            np.asarray(truth.volume, dtype=np.float64), images, data.ctf[np.arange(n)],
            data.pixel_size, in_truth_frame[:n], shifts[:n], truth.orientations[:n], args.symmetry,
            7)[-1])),
        "own_half_map": leave_out(data, estimate, shifts, truth.orientations, args.symmetry, n),
        "blind_last_iteration": {k: metrics["refinement_history"][-1][k]
                                 for k in ("halfmap_fsc0143_angstrom", "mean_score")},
    }
    if args.symmetry != "C1":
        row["true_map_symmetry_score"] = symmetry_frame.symmetry_score(
            np.asarray(truth.volume, dtype=np.float64), args.symmetry)
    if args.from_truth:
        row["refined_from_truth"] = from_truth(data, truth, args.symmetry)
    if args.continued:
        row["continued"] = continued(data, truth, estimate, shifts, args.symmetry)
    print(json.dumps(row, indent=1))
    kept = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    write_report({"benchmark": "refinement_limits", "truth_used": "everything: a diagnosis",
                  "rows": [r for r in kept if r["run"] != row["run"]] + [row]}, args.out)


if __name__ == "__main__":
    main()
