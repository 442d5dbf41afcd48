"""The spectral start of orientation recovery: orientations from distances in closed form.

``cos²(d_ij/2) = <q_i, q_j>²`` is the Gram matrix of the 10-dimensional
vectors ``vec(q qᵀ)`` (symmetric part, off-diagonal entries weighted by √2).
:func:`spectral_initialization` embeds them by the Gram matrix's 10 leading
eigenvectors (scaled by ``√λ``), which fixes them up to an orthogonal
``10 × 10`` transform, and decodes each point's nearest rank-one unit-trace
matrix ``q qᵀ``; :func:`extend_to_points` places further points from their
distances to known landmarks.  From exact distances both are exact (up to
O(4)).  :mod:`cryoem.recovery` starts its gradient descent from them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations

__all__ = ["spectral_initialization", "extend_to_points", "vec_outer"]

FloatArray = NDArray[np.float64]

_SQRT2 = np.sqrt(2.0)
_ROWS, _COLS = np.triu_indices(4)
_SCALE = np.where(_ROWS == _COLS, 1.0, _SQRT2)


def vec_outer(q: FloatArray) -> FloatArray:
    """``vec(q qᵀ)`` in the 10-dimensional orthonormal basis of symmetric 4×4 matrices."""
    outer = q[:, :, None] * q[:, None, :]
    return outer[:, _ROWS, _COLS] * _SCALE


def _unvec(x: FloatArray) -> FloatArray:
    m = np.zeros((len(x), 4, 4))
    values = x / _SCALE
    m[:, _ROWS, _COLS] = values
    m[:, _COLS, _ROWS] = values
    return m


def _top_eigenvectors(m: FloatArray) -> FloatArray:
    values, vectors = np.linalg.eigh(m)
    top = vectors[..., -1] * np.sqrt(np.clip(values[..., -1:], 0, None))
    return top / np.maximum(np.linalg.norm(top, axis=-1, keepdims=True), 1e-12)


def _start_transform(embedding: FloatArray, rng: np.random.Generator) -> FloatArray:
    """A random orthogonal ``R`` that already satisfies the unit-trace constraint.

    ``tr(q qᵀ) = 1`` is linear: ``<vec(q qᵀ), t> = 1`` with ``t = vec(I)``, so
    ``Y R t = 1`` and ``R t`` must be the least-squares solution ``u`` of
    ``Y u = 1``.  A reflection turns ``Q t`` onto ``u`` for a random ``Q``.
    """
    t = np.where(_ROWS == _COLS, 1.0, 0.0)  # vec(I)
    u, *_ = np.linalg.lstsq(embedding, np.ones(len(embedding)), rcond=None)
    q = np.linalg.qr(rng.standard_normal((10, 10)))[0]
    a, b = q @ t / np.linalg.norm(t), u / max(np.linalg.norm(u), 1e-12)
    w = a - b
    householder = np.eye(10) - 2 * np.outer(w, w) / max(w @ w, 1e-300)
    return (householder @ q).T


def _decode(embedding: FloatArray, restarts: int, iterations: int,
            rng: np.random.Generator, tolerance: float = 1e-10) -> tuple[FloatArray, float]:
    """Quaternions from points ``Y ≈ vec(q qᵀ) Rᵀ``: alternate top eigenvectors and Procrustes.

    Starts satisfy the trace constraint (:func:`_start_transform`); the
    alternation has a few poor local minima, so up to ``restarts`` starts run
    and the first whose residual is below ``tolerance`` (consistent distances)
    ends the search; otherwise the lowest residual wins.
    """
    best_q, best_residual = None, np.inf
    for _ in range(restarts):
        transform = _start_transform(embedding, rng)
        for _ in range(iterations):
            q = _top_eigenvectors(_unvec(embedding @ transform))
            u, _, vt = np.linalg.svd(embedding.T @ vec_outer(q))
            transform = u @ vt
        q = _top_eigenvectors(_unvec(embedding @ transform))
        residual = float(np.mean(np.sum((embedding @ transform - vec_outer(q)) ** 2, axis=1)))
        if residual < best_residual:
            best_q, best_residual = q, residual
        if best_residual < tolerance:
            break
    assert best_q is not None
    return rotations.canonical(best_q), best_residual


def spectral_initialization(distances: ArrayLike, restarts: int = 40, iterations: int = 60,
                            seed: int = 0) -> tuple[FloatArray, float]:
    """Orientations from a dense distance matrix, up to O(4), and the decoder's residual.

    The residual is the mean squared distance between each embedded point and
    the nearest ``vec(q qᵀ)``: near 0 for consistent distances, large (≳ 0.1)
    when the decode failed.
    """
    from scipy.linalg import eigh

    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"expected a square distance matrix, got shape {d.shape}")
    n = len(d)
    if n < 10:
        raise ValueError("the spectral initialisation needs at least 10 orientations")
    gram = np.cos(np.clip(d, 0, np.pi) / 2) ** 2
    gram = (gram + gram.T) / 2
    np.fill_diagonal(gram, 1.0)
    values, vectors = eigh(gram, subset_by_index=[n - 10, n - 1])
    embedding = vectors * np.sqrt(np.clip(values, 0, None))
    return _decode(embedding, restarts, iterations, np.random.default_rng(seed))


def extend_to_points(landmarks: ArrayLike, distances: ArrayLike) -> FloatArray:
    """Place points from their distances ``(M, K)`` to ``K`` known landmark orientations.

    ``cos²(d/2) = <q, q_k>² = <vec(q qᵀ), vec(q_k q_kᵀ)>`` is linear in
    ``vec(q qᵀ)``: a least-squares solve per point (all points at once), then
    the top eigenvector.  Exact for exact distances when K ≥ 10 landmarks are
    in general position; O(M·K) time and memory.
    """
    basis = vec_outer(rotations.normalize(landmarks))  # (K, 10)
    targets = np.cos(np.clip(np.asarray(distances, dtype=np.float64), 0, np.pi) / 2) ** 2
    if targets.shape[1] != len(basis):
        raise ValueError(f"{targets.shape[1]} distances per point for {len(basis)} landmarks")
    solution, *_ = np.linalg.lstsq(basis, targets.T, rcond=None)  # (10, M)
    return rotations.canonical(_top_eigenvectors(_unvec(solution.T)))
