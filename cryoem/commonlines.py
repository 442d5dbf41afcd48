"""Common lines: resolve from the images what distances cannot see.

Distances ``d(R_i, R_j) = angle(R_i R_jᵀ)`` are unchanged by ``R_i → B R_i A``
and ``R_i → B R_iᵀ A``.  ``A`` turns the volume as a whole and the handedness
flip ``R_i → J R_i J`` cannot be seen in projections either, but the left
factor ``B`` and the transposed branch change each image's viewing direction:
orientations recovered from distances are wrong for reconstruction until they
are resolved.  Recovered orientations ``R̂_i`` are therefore turned into
``R'_i = C·f(R̂_i)`` with ``f`` the identity or the transpose (the *branch*) and
``C`` a rotation, both chosen by the images:

* every image's central Fourier lines are computed once, at ``K`` in-plane
  angles and a band of low radii (finufft), and normalised;
* for a candidate ``(C, branch)``, each sampled pair ``(i, j)`` has its common
  line ``c ∝ n_i × n_j`` (``n_i`` = viewing direction = third row of ``R'_i``),
  seen at the in-plane angle of ``R'_i c`` in image ``i`` and of ``R'_j c`` in
  image ``j``; the score is the mean correlation of the two lines over the
  pairs (noise averages out);
* the search runs over the viewing axis ``C[2]`` on a sphere grid and, for
  each, over every in-plane turn at once (a turn shifts all angles alike), for
  both branches; the best candidates are refined with interpolated lines.

The score is exactly invariant under ``C → R_z(π)·C`` (all lines turn by π:
conjugate lines), which is the handedness flip up to the free ``A``
(``J R J = R_z(π) R R_z(π)``): every search has two tied maxima, and which one
is returned is arbitrary — the handedness cannot be determined from
projections.  The confidence compares the best score with the best candidate
that is not its twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations
from ._progress import progress_bar

__all__ = ["FrameResolution", "fourier_lines", "resolve_frame", "score_candidates"]

#: Candidate scores gathered per step of the coarse scan (its memory: a few arrays this long).
_GATHERED_PER_CHUNK = 2**22

FloatArray = NDArray[np.float64]


@dataclass
class FrameResolution:
    """The chosen frame and how sure the choice is.

    Attributes
    ----------
    quaternions
        Resolved orientations ``R'_i = C·f(R̂_i)`` (quaternions, canonical).
    rotation
        Quaternion of ``C``.
    transposed
        Whether the transposed branch was chosen.
    score
        Mean common-line correlation of the choice.
    runner_up
        Best score of an alternative: the other branch, or a candidate of this
        branch far (> 0.5 rad) from the choice and its handedness twin.
    noise
        Standard error of the score difference to the runner-up (paired over
        the same image pairs).
    """

    quaternions: FloatArray
    rotation: FloatArray
    transposed: bool
    score: float
    runner_up: float
    noise: float

    @property
    def confidence(self) -> float:
        """Margin of the choice over the runner-up, in standard errors."""
        return (self.score - self.runner_up) / max(self.noise, 1e-12)

    @property
    def distinguishable(self) -> bool:
        """Whether the choice stands clearly (more than 5 standard errors) above the rest."""
        return self.confidence > 5.0


def fourier_lines(images: ArrayLike, n_angles: int = 180, radii: ArrayLike | None = None,
                  eps: float = 1e-6) -> NDArray[np.complex128]:
    """Central lines of the images' Fourier transforms: ``(N, n_angles, len(radii))``, unit norm.

    Angle ``k`` is ``2πk/n_angles`` from the image x axis (towards y); radii
    are in Fourier pixels (default ``2 … L/4``: the low frequencies carry the
    signal at low SNR).  The DC term is left out.
    """
    import finufft

    images = np.asarray(images, dtype=np.float64)
    n, size = images.shape[0], images.shape[-1]
    radii = np.arange(2, max(3, size // 4) + 1) if radii is None else np.asarray(radii, float)
    angles = 2 * np.pi * np.arange(n_angles) / n_angles
    kx = (radii[None, :] * np.cos(angles)[:, None]).ravel() * 2 * np.pi / size
    ky = (radii[None, :] * np.sin(angles)[:, None]).ravel() * 2 * np.pi / size
    plan = finufft.Plan(2, (size, size), n_trans=n, eps=eps, isign=-1, dtype=np.complex128)
    plan.setpts(ky, kx)  # images are indexed [y, x]
    values = plan.execute(images.astype(np.complex128)).reshape(n, n_angles, len(radii))
    norms = np.linalg.norm(values, axis=-1, keepdims=True)
    return values / np.maximum(norms, 1e-300)


def _line_angles(rotated_i: FloatArray, rotated_j: FloatArray) -> tuple[FloatArray, FloatArray]:
    """In-plane angles (radians) of the common line in images i and j for rotations ``R'``."""
    n_i, n_j = rotated_i[..., 2, :], rotated_j[..., 2, :]
    c = np.cross(n_i, n_j)
    c /= np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    in_i = np.einsum("...ab,...b->...a", rotated_i, c)
    in_j = np.einsum("...ab,...b->...a", rotated_j, c)
    return np.arctan2(in_i[..., 1], in_i[..., 0]), np.arctan2(in_j[..., 1], in_j[..., 0])


def _interpolated(lines: NDArray[np.complex128], index: FloatArray,
                  angle: FloatArray) -> NDArray[np.complex128]:
    """Lines of images ``index`` at continuous angles, linear between grid angles."""
    n_angles = lines.shape[1]
    position = np.mod(angle, 2 * np.pi) / (2 * np.pi) * n_angles
    low = np.floor(position).astype(np.int64) % n_angles
    high = (low + 1) % n_angles
    weight = (position - np.floor(position))[..., None]
    return (1 - weight) * lines[index, low] + weight * lines[index, high]


def score_candidates(lines: NDArray[np.complex128], recovered: FloatArray, pairs_i: NDArray,
                     pairs_j: NDArray, candidates: FloatArray, transposed: bool,
                     per_pair: bool = False) -> FloatArray:
    """Mean common-line correlation for each candidate ``C`` (quaternions ``(M, 4)``).

    ``recovered`` are the rotation matrices ``R̂``; ``f`` transposes them when
    ``transposed``.  With ``per_pair`` the ``(M, P)`` correlations are returned.
    """
    base = np.swapaxes(recovered, -1, -2) if transposed else recovered
    c_mats = rotations.quaternion_to_matrix(candidates)  # (M, 3, 3)
    out = []
    for c in c_mats:
        rot_i = c @ base[pairs_i]
        rot_j = c @ base[pairs_j]
        a_i, a_j = _line_angles(rot_i, rot_j)
        li = _interpolated(lines, pairs_i, a_i)
        lj = _interpolated(lines, pairs_j, a_j)
        correlation = np.real(np.sum(li * np.conj(lj), axis=-1))
        out.append(correlation if per_pair else correlation.mean())
    return np.array(out)


def _axis_grid(count: int) -> FloatArray:
    """Nearly uniform unit vectors on the sphere (Fibonacci lattice)."""
    k = np.arange(count) + 0.5
    z = 1 - 2 * k / count
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _frames(axes: FloatArray) -> FloatArray:
    """Rotation matrices ``C0`` ``(A, 3, 3)`` whose third rows are the unit vectors ``axes``."""
    v = axes / np.linalg.norm(axes, axis=-1, keepdims=True)
    helper = np.where(np.abs(v[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    e1 = np.cross(helper, v)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    return np.stack([e1, np.cross(v, e1), v], axis=1)


def _turned(frames: FloatArray, turns: FloatArray) -> FloatArray:
    """Quaternions of ``R_z(turn)·C0`` for every frame and turn: ``(A·T, 4)``."""
    c, s = np.cos(turns), np.sin(turns)
    rz = np.zeros((len(turns), 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, -s, s, c, 1.0
    return rotations.matrix_to_quaternion(np.einsum("tab,fbc->ftac", rz, frames).reshape(-1, 3, 3))


def _coarse_scan(lines: NDArray[np.complex128], recovered: FloatArray, pairs_i: NDArray,
                 pairs_j: NDArray, axes: FloatArray, transposed: bool,
                 progress: bool) -> FloatArray:
    """Scores ``(len(axes), K)``: every viewing axis ``v`` times every in-plane turn on the grid.

    For ``C = R_z(φ)·C0`` all in-plane angles shift by ``φ``, so a turn is a shift of the
    line index.  Each pair's correlations between every line of one image and every line of
    the other (``K × K``) are taken once, by matrix products, for all axes and turns: a
    candidate's score is then a gather from them, not a product over the radii.
    """
    n_angles = lines.shape[1]
    base = np.swapaxes(recovered, -1, -2) if transposed else recovered
    shifts = np.arange(n_angles)
    index_i = np.empty((len(axes), len(pairs_i)), dtype=np.int64)
    index_j = np.empty_like(index_i)
    for a, c0 in enumerate(_frames(axes)):
        a_i, a_j = _line_angles(c0 @ base[pairs_i], c0 @ base[pairs_j])
        index_i[a], index_j[a] = _nearest_line(a_i, n_angles), _nearest_line(a_j, n_angles)
    scores = np.zeros((len(axes), n_angles))
    chunk = max(1, _GATHERED_PER_CHUNK // (len(axes) * n_angles))
    for start in progress_bar(range(0, len(pairs_i), chunk), total=-(-len(pairs_i) // chunk),
                              enable=progress, desc="common lines"):
        part = slice(start, start + chunk)
        products = np.real(lines[pairs_i[part]]
                           @ np.conj(np.swapaxes(lines[pairs_j[part]], -1, -2)))  # (c, K, K)
        # R_z(φ_s) adds φ_s to every angle: line k + s of image i against k' + s of image j.
        rows = (index_i[:, part, None] + shifts) % n_angles  # (A, c, K)
        cols = (index_j[:, part, None] + shifts) % n_angles
        pair = np.arange(len(products))[None, :, None]
        scores += products[pair, rows, cols].sum(axis=1)
    return scores / len(pairs_i)


def _nearest_line(angle: FloatArray, n_angles: int) -> NDArray[np.int64]:
    """The grid line nearest each in-plane angle (``n_angles`` itself stands for line 0)."""
    return np.rint(np.mod(angle, 2 * np.pi) / (2 * np.pi) * n_angles).astype(np.int64)


def _refine(lines: NDArray[np.complex128], recovered: FloatArray, pairs_i: NDArray,
            pairs_j: NDArray, start: FloatArray, transposed: bool, step: float) -> FloatArray:
    """Local maximum of the interpolated score around ``start`` (Nelder–Mead on a rotation vector)."""
    from scipy.optimize import minimize

    def negative(vector: FloatArray) -> float:
        candidate = rotations.multiply(rotations.rotation_vector_to_quaternion(vector),
                                       start)[None]
        return -float(score_candidates(lines, recovered, pairs_i, pairs_j, candidate,
                                       transposed)[0])

    simplex = np.vstack([np.zeros(3), step * np.eye(3)])
    result = minimize(negative, np.zeros(3), method="Nelder-Mead",
                      options={"initial_simplex": simplex, "xatol": 1e-5, "fatol": 1e-9,
                               "maxiter": 400})
    return rotations.canonical(rotations.multiply(
        rotations.rotation_vector_to_quaternion(result.x), start))


def resolve_frame(images: ArrayLike, recovered: ArrayLike, n_pairs: int = 1500,
                  n_axes: int = 300, n_angles: int = 72, radii: ArrayLike | None = None,
                  refine_pairs: int = 20000, seed: int = 0,
                  progress: bool = False) -> FrameResolution:
    """Choose ``C`` and the branch so that ``R'_i = C·f(R̂_i)`` agree with the images' common lines.

    Parameters
    ----------
    images
        ``(N, L, L)`` projections, in the order of ``recovered``.
    recovered
        ``(N, 4)`` quaternions from distances (right up to O(4)).
    n_pairs, n_axes, n_angles
        Pairs, viewing axes and in-plane turns of the coarse search.
    refine_pairs
        Pairs used to refine the best candidate of each branch and to score.

    The handedness stays undetermined (two tied maxima); see the module docstring.
    """
    images = np.asarray(images)
    recovered_q = rotations.normalize(recovered)
    if len(images) != len(recovered_q):
        raise ValueError(f"{len(images)} images but {len(recovered_q)} orientations")
    if len(images) < 3:
        raise ValueError("common lines need at least three images")
    rng = np.random.default_rng(seed)
    matrices = rotations.quaternion_to_matrix(recovered_q)
    lines = fourier_lines(images, n_angles=n_angles, radii=radii)
    coarse_i, coarse_j = _random_pairs(len(images), n_pairs, rng)
    fine_i, fine_j = _random_pairs(len(images), refine_pairs, rng)
    axes = _axis_grid(n_axes)
    step = 2 * np.pi / n_angles

    found = []
    for transposed in (False, True):
        scores = _coarse_scan(lines, matrices, coarse_i, coarse_j, axes, transposed, progress)
        a, k = np.unravel_index(np.argmax(scores), scores.shape)
        start = _turned(_frames(axes[a:a + 1]), np.array([step * k]))[0]
        best = _refine(lines, matrices, fine_i, fine_j, start, transposed, step)
        per_pair = score_candidates(lines, matrices, fine_i, fine_j, best[None], transposed,
                                    per_pair=True)[0]
        found.append((float(per_pair.mean()), transposed, best, per_pair, scores))
    found.sort(key=lambda item: -item[0])
    score, transposed, best, per_pair, scores = found[0]

    # Alternatives, scored on the same pairs: the other branch's best, and the best coarse
    # candidates of this branch away from the choice and its handedness twin.
    alternatives = [found[1][3]]
    far = _far_candidates(scores, axes, best, step)
    if len(far):
        alternatives.extend(score_candidates(lines, matrices, fine_i, fine_j, far, transposed,
                                             per_pair=True))
    runner = max(alternatives, key=lambda values: values.mean())
    difference = per_pair - runner
    noise = float(np.std(difference) / np.sqrt(len(difference)))
    base = rotations.conjugate(recovered_q) if transposed else recovered_q
    resolved = rotations.canonical(rotations.multiply(best, base))
    return FrameResolution(resolved, best, transposed, score, float(runner.mean()), noise)


def _far_candidates(scores: FloatArray, axes: FloatArray, best: FloatArray, step: float,
                    exclusion: float = 0.5, count: int = 5) -> FloatArray:
    """The ``count`` best coarse candidates farther than ``exclusion`` rad from ``C`` and ``R_z(π)·C``."""
    twin = rotations.multiply(rotations.axis_angle_to_quaternion([0, 0, 1], np.pi), best)
    candidates = _turned(_frames(axes), step * np.arange(scores.shape[1]))
    far = ((rotations.geodesic_distance(candidates, best) > exclusion)
           & (rotations.geodesic_distance(candidates, twin) > exclusion))
    order = np.argsort(-np.where(far, scores.ravel(), -np.inf))[:count]
    return candidates[order[far[order]]]


def _random_pairs(n: int, count: int, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
    """``count`` random pairs ``i ≠ j``, or every pair ``i < j`` once when there are fewer."""
    if count >= n * (n - 1) // 2:
        return np.triu_indices(n, 1)
    i = rng.integers(0, n, count)
    j = rng.integers(0, n - 1, count)
    j = j + (j >= i)  # j ≠ i
    return i, j
