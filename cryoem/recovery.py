"""Recovery: orientations whose geodesic distances match estimated ones (Phase 2).

Minimise ``L_OR = Σ w_ij (d̂_ij − d_q(q_i, q_j))² / Σ w_ij`` over all
orientations at once — one ``(N, 4)`` tensor, normalised on use, TensorFlow
gradients, Adam with a decaying learning rate, stopped when the loss stops
improving.

Initialisation decides everything with learned distances, so the default is
spectral (:func:`cryoem.spectral.spectral_initialization`): ``cos²(d_ij/2) = <q_i, q_j>²`` is
the Gram matrix of the 10-dimensional vectors ``vec(q qᵀ)`` (symmetric part,
off-diagonal entries weighted by √2).  Its 10 leading eigenvectors, scaled by
``√λ``, embed those vectors up to an unknown orthogonal ``10 × 10`` transform;
the decoder alternates between reading each point's nearest rank-one unit-trace
matrix ``q qᵀ`` (its top eigenvector) and fitting the transform by Procrustes,
from starts that satisfy the (linear) unit-trace constraint, until one fits;
its residual also flags a failed decode.  From exact distances it returns exact orientations (up to O(4)) with
no gradient step.

Two modes:

* full batch (:func:`recover`) when the ``N × N`` matrix fits in memory;
* pairs (:func:`recover_pairs`), given a list of pairs and their estimated
  distances, for large N: memory grows with the number of pairs only.
  :func:`cryoem.spectral.extend_to_points` places further points from their distances to
  recovered landmarks, in closed form (the sampled analogue of the spectral
  initialisation).

Distances cannot see global transformations: results are right up to O(4) at
best, and :mod:`cryoem.alignment` scores them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations
from ._files import open_hdf5
from ._progress import progress_bar
from .spectral import extend_to_points, spectral_initialization, vec_outer

__all__ = [
    "RecoveryResult",
    "recover",
    "recover_pairs",
    "recover_sampled",
    "sample_pairs",
    "loss",
    "save_orientations",
    "load_orientations",
]

FloatArray = NDArray[np.float64]



@dataclass
class RecoveryResult:
    """Recovered orientations and how they were found."""

    quaternions: FloatArray
    loss_history: list[float] = field(default_factory=list)
    initial_loss: float = float("nan")
    init_residual: float | None = None
    steps: int = 0
    seconds: float = 0.0
    robust_loss: float | None = None  # L_OR after the robust rounds (``recover(robust=...)``)

    @property
    def final_loss(self) -> float:
        """L_OR (rad²) of the returned orientations: the best point the descent visited (or,
        after robust rounds, where they ended: they trade L_OR for fewer outliers)."""
        if self.robust_loss is not None:
            return self.robust_loss
        return min(self.loss_history) if self.loss_history else self.initial_loss


# ----------------------------------------------------------------------------
# Gradient descent
# ----------------------------------------------------------------------------
def loss(quaternions: ArrayLike, distances: ArrayLike, weights: ArrayLike | None = None,
         symmetry: str = "C1") -> float:
    """L_OR of orientations against a dense distance matrix (pairs ``i < j``), rad²."""
    q = rotations.normalize(quaternions)
    d_hat = np.asarray(distances, dtype=np.float64)
    d_q = rotations.symmetric_distance_matrix(q, symmetry)
    rows, cols = np.triu_indices(len(q), k=1)
    w = np.ones(len(rows)) if weights is None else np.asarray(weights)[rows, cols]
    return float(np.sum(w * (d_hat[rows, cols] - d_q[rows, cols]) ** 2) / np.sum(w))


def _initial(n: int, init: str | ArrayLike, distances: FloatArray | None, seed: int
             ) -> tuple[FloatArray, float | None]:
    if isinstance(init, str):
        if init == "random":
            return rotations.sample_uniform(n, seed=seed), None
        if init == "spectral":
            if distances is None:
                raise ValueError("the spectral initialisation needs the dense distance matrix")
            return spectral_initialization(distances, seed=seed)
        raise ValueError(f"unknown initialisation {init!r}: spectral, random or an (N, 4) array")
    q = rotations.normalize(init)
    if q.shape != (n, 4):
        raise ValueError(f"initial orientations must have shape ({n}, 4), got {q.shape}")
    return q, None


def right_multiplication_matrices(group: ArrayLike) -> FloatArray:
    """4×4 matrices ``M_g`` with ``q·g = M_g q`` for each quaternion ``g`` of a group."""
    basis = np.eye(4)
    return np.stack([rotations.multiply(basis, g).T for g in rotations.normalize(group)])


def to_asymmetric_unit(quaternions: ArrayLike, symmetry: str = "C1") -> FloatArray:
    """The representative ``q·g`` of each orientation closest to the identity.

    The orientations of a symmetric particle are defined up to ``q → q·g``;
    the set of rotations nearer the identity than any of their symmetry mates
    (the Dirichlet cell of the group) is an asymmetric unit, so picking the
    mate with the largest ``|w|`` is a canonical choice.
    """
    group = rotations.point_group(symmetry)
    mates = rotations.multiply(rotations.normalize(quaternions)[:, None, :], group)
    best = np.argmax(np.abs(mates[..., 0]), axis=1)
    return rotations.canonical(mates[np.arange(len(mates)), best])


def _descend(q0: FloatArray, rows: NDArray[np.int64], cols: NDArray[np.int64],
             targets: FloatArray, weights: FloatArray, steps: int, learning_rate: float,
             tolerance: float, patience: int, progress: bool,
             symmetry: str = "C1") -> tuple[FloatArray, list[float]]:
    """Adam on the pair loss; stops when the loss improved by < ``tolerance`` (relative) for
    ``patience`` steps.  With a point group the distance is ``min_g d(q_i, q_j·g)``."""
    import tensorflow as tf

    mates = tf.constant(right_multiplication_matrices(rotations.point_group(symmetry)),
                        tf.float32)
    q = tf.Variable(q0.astype(np.float32))
    rows_t, cols_t = tf.constant(rows), tf.constant(cols)
    targets_t = tf.constant(targets, tf.float32)
    weights_t = tf.constant(weights / weights.sum(), tf.float32)
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(learning_rate, max(steps // 4, 1),
                                                              0.5)
    optimizer = tf.keras.optimizers.Adam(schedule)

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            unit = tf.math.l2_normalize(q, axis=1)
            moved = tf.einsum("kab,pb->kpa", mates, tf.gather(unit, cols_t))  # q_j·g
            cosine = tf.reduce_max(tf.abs(tf.reduce_sum(tf.gather(unit, rows_t) * moved, -1)), 0)
            d = 2.0 * tf.acos(tf.clip_by_value(cosine, 0.0, 1.0 - 1e-7))
            value = tf.reduce_sum(weights_t * tf.square(d - targets_t))
        optimizer.apply_gradients([(tape.gradient(value, q), q)])
        return value

    history: list[float] = []
    best, stale = np.inf, 0
    best_q = q0
    for _ in progress_bar(range(steps), total=steps, enable=progress, desc="recovering"):
        before = q.numpy()  # the loss returned by a step belongs to the point before it
        value = float(step())
        history.append(value)
        if value < best:
            best_q = before.astype(np.float64)
        if value < best * (1 - tolerance):
            best, stale = value, 0
        else:
            best = min(best, value)
            stale += 1
            if stale >= patience:
                break
    return to_asymmetric_unit(best_q, symmetry), history


def _pair_weights(targets: FloatArray, max_distance: float | None, far_weight: float) -> FloatArray:
    weights = np.ones_like(targets)
    if max_distance is not None:
        weights[targets > max_distance] = far_weight
    return weights


def recover(
    distances: ArrayLike,
    init: str | ArrayLike = "spectral",
    steps: int = 2000,
    learning_rate: float = 0.01,
    max_distance: float | None = None,
    far_weight: float = 0.1,
    restarts: int = 1,
    tolerance: float = 1e-5,
    patience: int = 100,
    symmetry: str = "C1",
    seed: int = 0,
    progress: bool = False,
    robust: float | None = None,
    robust_rounds: int = 2,
    pair_weights: ArrayLike | None = None,
) -> RecoveryResult:
    """Recover orientations from a dense ``(N, N)`` matrix of estimated distances (full batch).

    Parameters
    ----------
    init
        ``"spectral"`` (default), ``"random"`` or ``(N, 4)`` quaternions.
    max_distance, far_weight
        Pairs whose *estimated* distance exceeds ``max_distance`` weigh
        ``far_weight`` (the learned distance plateaus at large distances).
    restarts
        Runs from different seeds (the spectral decode's random starts and, for
        random initialisations, the orientations); the lowest final loss wins.
    steps, learning_rate, tolerance, patience
        Adam's budget, initial rate (halved every ``steps/4``) and the stopping rule.
    symmetry
        Point group of the particle: the distances are then ``min_g d(q_i, q_j·g)``
        and the loss uses the same; orientations come back in the asymmetric
        unit (:func:`to_asymmetric_unit`).  The spectral decode assumes plain
        distances, so a symmetric group starts from random orientations
        (use ``restarts``).
    robust, robust_rounds
        After the descent, ``robust_rounds`` more descents from where it ended, each pair
        weighed by ``1 / (1 + (r / robust)²)`` (a Cauchy loss, by iteratively reweighted
        least squares) where ``r`` is its residual at the start of the round: pairs the
        other pairs contradict count less.  ``None`` (default): plain least squares.
    pair_weights
        ``(N, N)`` weights of the pairs (upper triangle read; e.g. the inverse of the variances
        a learned distance with a confidence head gives, ``LearnedDistance.variance_matrix``),
        multiplying ``max_distance``'s.  ``None``: all 1.
    """
    import time

    if rotations.point_group(symmetry).shape[0] > 1 and isinstance(init, str) \
            and init == "spectral":
        init = "random"

    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"expected a square distance matrix, got shape {d.shape}")
    rows, cols = np.triu_indices(len(d), k=1)
    targets = np.clip(d[rows, cols], 0, np.pi)
    weights = _pair_weights(targets, max_distance, far_weight)
    if pair_weights is not None:
        given = np.asarray(pair_weights, dtype=np.float64)
        if given.shape != d.shape or not np.all(given[rows, cols] >= 0):
            raise ValueError(f"pair_weights must be a non-negative {d.shape} matrix, got shape "
                             f"{given.shape}")
        weights = weights * given[rows, cols]
    best: RecoveryResult | None = None
    for restart in range(restarts):
        start = time.perf_counter()
        q0, residual = _initial(len(d), init, d, seed + restart)
        dense_weights = _dense(weights, rows, cols, len(d))
        initial_loss = loss(q0, d, dense_weights, symmetry)
        q, history = (_descend(q0, rows, cols, targets, weights, steps, learning_rate, tolerance,
                               patience, progress, symmetry) if steps > 0 else (q0, []))
        robust_loss = None
        if robust is not None and steps > 0:
            q, history = _reweighted(q, rows, cols, targets, weights, history, robust,
                                     robust_rounds, steps, learning_rate / 3, tolerance,
                                     patience, progress, symmetry)
            robust_loss = loss(q, d, dense_weights, symmetry)
        result = RecoveryResult(q, history, initial_loss, residual, len(history),
                                time.perf_counter() - start, robust_loss)
        if best is None or result.final_loss < best.final_loss:
            best = result
    assert best is not None
    return best


def _reweighted(q: FloatArray, rows: NDArray[np.int64], cols: NDArray[np.int64],
                targets: FloatArray, weights: FloatArray, history: list[float], scale: float,
                rounds: int, steps: int, learning_rate: float, tolerance: float, patience: int,
                progress: bool, symmetry: str) -> tuple[FloatArray, list[float]]:
    """:func:`recover`'s ``robust`` rounds (Adam from ``learning_rate``: a third of the first
    descent's, as each round starts at a minimum): the orientations and the history with each
    round's (weighted) losses."""
    if not scale > 0:
        raise ValueError(f"robust must be a positive residual scale (rad), got {scale}")
    group = rotations.point_group(symmetry)
    for _ in range(rounds):
        residual = rotations.symmetric_distance_matrix(q, group)[rows, cols] - targets
        q, steps_taken = _descend(q, rows, cols, targets,
                                  weights / (1.0 + (residual / scale) ** 2), steps,
                                  learning_rate, tolerance, patience, progress, symmetry)
        history = history + steps_taken
    return q, history


def _dense(weights: FloatArray, rows: NDArray, cols: NDArray, n: int) -> FloatArray:
    full = np.zeros((n, n))
    full[rows, cols] = weights
    return full


def recover_pairs(
    n: int,
    rows: ArrayLike,
    cols: ArrayLike,
    distances: ArrayLike,
    init: str | ArrayLike = "random",
    steps: int = 2000,
    learning_rate: float = 0.01,
    max_distance: float | None = None,
    far_weight: float = 0.1,
    tolerance: float = 1e-5,
    patience: int = 100,
    symmetry: str = "C1",
    seed: int = 0,
    progress: bool = False,
) -> RecoveryResult:
    """Recover ``n`` orientations from estimated distances of a list of pairs (sparse mode).

    Memory grows with the number of pairs, not ``n²``: mix random pairs with
    each projection's nearest neighbours.  ``init`` is ``"random"`` or
    ``(n, 4)`` quaternions (e.g. landmarks recovered densely and the rest
    placed by :func:`extend_to_points`).
    """
    import time

    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    targets = np.clip(np.asarray(distances, dtype=np.float64), 0, np.pi)
    if not (rows.shape == cols.shape == targets.shape) or rows.ndim != 1:
        raise ValueError("rows, cols and distances must be 1D arrays of the same length")
    if len(rows) and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
        raise ValueError(f"pair indices must be in [0, {n})")
    if isinstance(init, str) and init == "spectral":
        raise ValueError("pairs mode has no dense matrix: use 'random' or give (n, 4) quaternions")
    start = time.perf_counter()
    q0, _ = _initial(n, init, None, seed)
    weights = _pair_weights(targets, max_distance, far_weight)
    d0 = rotations.symmetric_distance(q0[rows], q0[cols], symmetry)
    initial_loss = float(np.sum(weights * (d0 - targets) ** 2) / np.sum(weights))
    q, history = (_descend(q0, rows, cols, targets, weights, steps, learning_rate, tolerance,
                           patience, progress, symmetry) if steps > 0 else (q0, []))
    return RecoveryResult(q, history, initial_loss, None, len(history),
                          time.perf_counter() - start)


# ----------------------------------------------------------------------------
# Large N: landmarks, extension and sampled pairs
# ----------------------------------------------------------------------------
PairDistances = Callable[[NDArray[np.int64], NDArray[np.int64]], FloatArray]


def sample_pairs(quaternions: ArrayLike, random_per_point: int = 20, neighbours: int = 10,
                 seed: int = 0) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs for sparse recovery: random partners plus each point's nearest neighbours.

    Neighbours are found among the current orientation estimates with a KD-tree
    on ``vec(q qᵀ)``, where ``‖X_i − X_j‖² = 2 − 2<q_i, q_j>²`` is monotone in
    the geodesic distance: O(N log N), no N × N matrix.
    """
    from scipy.spatial import cKDTree

    q = rotations.normalize(quaternions)
    n = len(q)
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), random_per_point)
    cols = rng.integers(0, n, len(rows))
    if neighbours > 0:
        _, near = cKDTree(vec_outer(q)).query(vec_outer(q), k=min(neighbours + 1, n))
        rows = np.concatenate([rows, np.repeat(np.arange(n), near.shape[1] - 1)])
        cols = np.concatenate([cols, near[:, 1:].ravel()])
    keep = rows != cols
    low, high = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    unique = np.unique(low * n + high)
    return unique // n, unique % n


def recover_sampled(
    n: int,
    pair_distances: PairDistances,
    landmarks: int = 1000,
    random_per_point: int = 20,
    neighbours: int = 10,
    chunk: int | None = None,
    seed: int = 0,
    progress: bool = False,
    pairs: tuple[ArrayLike, ArrayLike] | None = None,
    **descent: Any,
) -> RecoveryResult:
    """Recover ``n`` orientations in bounded memory from a function giving pair distances.

    1. Dense spectral recovery of ``landmarks`` random points.
    2. Every point placed from its distances to the landmarks
       (:func:`extend_to_points`, ``chunk`` points at a time: by default as many as make
       about two million distances to the landmarks).
    3. Gradient descent on random pairs plus nearest neighbours
       (:func:`sample_pairs`, :func:`recover_pairs`; ``descent`` holds its options),
       or on the given ``pairs`` ``(rows, cols)`` instead (e.g. nearest neighbours
       in embedding space: :mod:`cryoem.embedding_graph`).

    Memory: O(landmarks² + chunk·landmarks + n·(random_per_point + neighbours)).
    """
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(landmarks, n), replace=False))
    rows, cols = np.triu_indices(len(chosen), k=1)
    dense = np.zeros((len(chosen), len(chosen)))
    dense[rows, cols] = pair_distances(chosen[rows], chosen[cols])
    dense += dense.T
    anchor, residual = spectral_initialization(dense, seed=seed)
    q0 = np.empty((n, 4))
    chunk = chunk or max(1, 2**21 // len(chosen))
    for begin in progress_bar(range(0, n, chunk), total=-(-n // chunk), enable=progress,
                              desc="placing"):
        block = np.arange(begin, min(begin + chunk, n))
        d = pair_distances(np.repeat(block, len(chosen)), np.tile(chosen, len(block)))
        q0[block] = extend_to_points(anchor, d.reshape(len(block), len(chosen)))
    q0[chosen] = anchor
    if pairs is None:
        pairs = sample_pairs(q0, random_per_point, neighbours, seed)
    pair_rows, pair_cols = (np.asarray(p, dtype=np.int64) for p in pairs)
    targets = pair_distances(pair_rows, pair_cols)
    result = recover_pairs(n, pair_rows, pair_cols, targets, init=q0, seed=seed,
                           progress=progress, **descent)
    result.init_residual = residual
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------
ORIENTATIONS_FORMAT = "cryoem-orientations-1"


def save_orientations(path: str | os.PathLike[str], quaternions: ArrayLike,
                      indices: ArrayLike, loss_history: ArrayLike = (),
                      shifts: ArrayLike | None = None, scores: ArrayLike | None = None,
                      **attributes: object) -> Path:
    """Write recovered orientations (with the dataset indices they belong to) atomically.

    ``shifts`` (pixels), when estimated (e.g. by refinement), and each image's
    match ``scores`` are stored beside them.
    """
    import h5py

    from ._files import atomic_path

    path = Path(path)
    with atomic_path(path) as partial, h5py.File(partial, "w") as f:
        f.create_dataset("orientations", data=rotations.normalize(quaternions))
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
        f.create_dataset("loss_history", data=np.asarray(loss_history, dtype=np.float64))
        if shifts is not None:
            f.create_dataset("shifts", data=np.asarray(shifts, dtype=np.float64))
        if scores is not None:
            f.create_dataset("scores", data=np.asarray(scores, dtype=np.float64))
        f.attrs["format"] = ORIENTATIONS_FORMAT
        f.attrs["quaternion_order"] = "".join(rotations.QUATERNION_ORDER)
        f.attrs.update({k: v for k, v in attributes.items() if v is not None})
    return path


def load_orientations(path: str | os.PathLike[str]) -> tuple[FloatArray, NDArray[np.int64],
                                                              dict[str, object]]:
    """Read ``(quaternions, indices, attributes)`` written by :func:`save_orientations`.

    Estimated shifts and match scores, when the file has them, are in
    ``attributes["shifts"]`` and ``attributes["scores"]``.
    """
    with open_hdf5(path, ORIENTATIONS_FORMAT, "orientation") as f:
        attributes = dict(f.attrs)
        for name in ("shifts", "scores"):
            if name in f:
                attributes[name] = f[name][()]
        return f["orientations"][()], f["indices"][()], attributes
