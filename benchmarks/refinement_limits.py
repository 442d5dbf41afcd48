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
5. with ``--symmetry``: how symmetric the true map is under the group.

    python benchmarks/refinement_limits.py --run data/benchmarks/particles/1hvr_64_5000_snr1-16 \\
        --symmetry C2 --from-truth
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
    print(json.dumps(row, indent=1))
    write_report({"benchmark": "refinement_limits", "truth_used": "everything: a diagnosis",
                  "rows": [row]}, args.out)


if __name__ == "__main__":
    main()
