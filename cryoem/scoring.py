"""Score estimated poses against a reference: ``cryoem score``.

For users who have a reference — a simulation's ground truth, or a RELION or
cryoSPARC refinement of their own data — to rate orientations from any
source.  Each side is a STAR file, a ``cryoem`` dataset (its orientations) or
a ``cryoem`` orientation file (from ``recover`` or ``refine``); particles are
matched by image name when both sides have names (STAR files), otherwise by
index (a dataset's row, an orientation file's dataset indices, a STAR file's
row).  The errors are the physical E_OR (after the best global rotation and
handedness) and the paper's O(4) E_OR, both from :mod:`cryoem.alignment`.
With maps, the estimate's map is turned into the reference's frame by the
rotation (and mirror) that the orientations imply, then compared by FSC.

Example
-------
>>> from cryoem import scoring                                  # doctest: +SKIP
>>> result = scoring.score("run/relion/particles.star", "refine/run_data.star")
>>> result["e_or_rad"], result["handedness"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import alignment, rotations

__all__ = ["Poses", "read_poses", "match", "score", "rotate_map"]


@dataclass
class Poses:
    """Orientations keyed by image name or index, and what they were read from."""

    quaternions: NDArray[np.float64]
    keys: list[Any]
    names: bool
    path: Path


def read_poses(path: str | os.PathLike) -> Poses:
    """Poses from a STAR file, a ``cryoem`` dataset or a ``cryoem`` orientation file."""
    import h5py

    from . import datasets, particles, recovery

    path = Path(path)
    if path.suffix == ".star":
        _, table = particles.read_star(path)
        columns = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: no angles to score (column {missing[0]} is missing)")
        angles = np.stack([particles._numbers(table, c, path) for c in columns], -1)
        return Poses(rotations.euler_to_quaternion(angles), [str(n) for n in table["rlnImageName"]],
                     True, path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    with h5py.File(path, "r") as f:
        kind = f.attrs.get("format")
    if kind == datasets.FORMAT:
        data = datasets.load(path, images=False)
        if data.source("orientations") == datasets.ABSENT:
            raise ValueError(f"{path} holds no orientations to score with")
        return Poses(data.orientations, list(range(len(data))), False, path)
    q, indices, _ = recovery.load_orientations(path)
    return Poses(q, [int(i) for i in indices], False, path)


def match(estimate: Poses, reference: Poses) -> tuple[NDArray[np.int64], NDArray[np.int64], str]:
    """Rows of each side that hold the same particles, and how they were matched."""
    by = "image name" if estimate.names and reference.names else "index"
    est_keys = estimate.keys if by == "image name" else (
        estimate.keys if not estimate.names else list(range(len(estimate.keys))))
    ref_keys = reference.keys if by == "image name" else (
        reference.keys if not reference.names else list(range(len(reference.keys))))
    where = {key: row for row, key in enumerate(ref_keys)}
    pairs = [(row, where[key]) for row, key in enumerate(est_keys) if key in where]
    if len(pairs) < 3:
        raise ValueError(f"only {len(pairs)} particles of {estimate.path} match {reference.path} "
                         f"by {by}: at least 3 are needed")
    rows = np.array(pairs, dtype=np.int64)
    return rows[:, 0], rows[:, 1], by


def score(estimate: str | os.PathLike, reference: str | os.PathLike, *, symmetry: str = "C1",
          estimate_map: str | os.PathLike | None = None,
          reference_map: str | os.PathLike | None = None) -> dict[str, Any]:
    """Both E_OR metrics of ``estimate`` against ``reference`` (and the maps' FSC, given both).

    Returns a JSON-ready dictionary: counts, how particles were matched, physical E_OR
    (mean, median, share within 0.1 rad), the paper's O(4) E_OR, the handedness found, and
    with maps the FSC 0.5 and 0.143 resolutions after the alignment the orientations imply.
    """
    est, ref = read_poses(estimate), read_poses(reference)
    rows_est, rows_ref, by = match(est, ref)
    q_est, q_ref = est.quaternions[rows_est], ref.quaternions[rows_ref]
    physical = alignment.align_physical(q_est, q_ref, symmetry)
    result: dict[str, Any] = {
        "estimate": str(est.path), "reference": str(ref.path), "matched": len(rows_est),
        "estimate_count": len(est.keys), "reference_count": len(ref.keys), "matched_by": by,
        "symmetry": symmetry, "e_or_rad": physical.mean, "e_or_median_rad": physical.median,
        "within_0.1_rad": float(np.mean(physical.errors < 0.1)),
        "e_or_o4_rad": alignment.align_o4(q_est, q_ref, symmetry).mean,
        "handedness": "mirrored" if physical.flipped else "same",
    }
    if estimate_map is not None and reference_map is not None:
        result.update(_map_scores(physical, estimate_map, reference_map))
    return result


def _map_scores(fit: alignment.Alignment, estimate_map: str | os.PathLike,
                reference_map: str | os.PathLike) -> dict[str, Any]:
    from . import resolution, volumes

    est, ref = volumes.load_map(estimate_map), volumes.load_map(reference_map)
    if est.data.shape != ref.data.shape:
        raise ValueError(f"{estimate_map} is {est.data.shape[0]} voxels wide, {reference_map} "
                         f"{ref.data.shape[0]}: resample one to the other first")
    moved = rotate_map(est.data, fit)
    curve = resolution.fsc(moved, ref.data, ref.voxel_size)
    return {"fsc05_angstrom": curve.resolution(0.5), "fsc0143_angstrom": curve.resolution(0.143),
            "map_aligned": "the estimate's map turned by the orientations' global rotation"
                           f"{' and mirrored' if fit.flipped else ''}"}


def rotate_map(data: NDArray, fit: alignment.Alignment, order: int = 3) -> NDArray[np.float32]:
    """Turn a map made with the estimated orientations into the reference's frame.

    The inverse of what the orientations saw: the map reconstructed from
    ``fit.to_truth_frame(q)`` and this map agree up to interpolation (cubic splines,
    :func:`scipy.ndimage.affine_transform`, about the voxel ``L // 2``).
    """
    from scipy import ndimage

    if fit.metric != "physical":
        raise ValueError("only a physical alignment turns maps")
    a = rotations.quaternion_to_matrix(fit.transform)
    # x_ref(r) = x_est(A^T r), then the mirror J = diag(1, 1, -1) when the hand was flipped.
    m = a.T @ np.diag([1.0, 1.0, -1.0]) if fit.flipped else a.T
    flip = np.eye(3)[::-1]  # (x, y, z) <-> array axes (z, y, x)
    index_matrix = flip @ m @ flip
    centre = np.full(3, data.shape[0] // 2, dtype=np.float64)
    offset = centre - index_matrix @ centre
    return ndimage.affine_transform(np.asarray(data, dtype=np.float64), index_matrix,
                                    offset=offset, order=order, mode="constant").astype(np.float32)
