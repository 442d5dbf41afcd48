"""Learned distances at scale: embeddings plus a nearest-neighbour graph, no ``N × N`` matrix.

The Siamese network embeds each projection once into a unit vector ``f_i``; its
distance is ``d_ij = 2·arccos|<f_i, f_j>|`` (:class:`cryoem.distance.LearnedDistance`).
For 10⁵–10⁶ particles the dense matrix (80 GB at 10⁵ in float64) is replaced by

* the embeddings themselves, ``(N, D)``;
* each point's ``k`` nearest neighbours in the learned distance
  (:func:`neighbour_graph`), found in bounded memory;
* random pairs, drawn when recovering (:func:`candidate_pairs`).

:func:`recover_from_embeddings` then runs the sparse recovery of
:func:`cryoem.recovery.recover_sampled` on those pairs: dense spectral recovery of
``landmarks`` points, every point placed from its distances to them, gradient
descent on the pairs.  :func:`save_embeddings` / :func:`load_embeddings` store
it all in one HDF5 file (``cryoem distances --neighbours K``; ``cryoem recover``
recognises the file by its ``format`` attribute).

The sign.  ``d`` depends on ``|cos|``, so ``f`` and ``−f`` are the same point.  The
search runs on the stacked set ``[F; −F]``: for unit vectors
``‖f_i ∓ f_j‖² = 2 ∓ 2 cos``, so the nearer copy of ``j`` is at ``2 − 2|cos| ≤ 2`` and
the other at ``≥ 2``; the ``k + 1`` nearest of the ``2N`` are ``i`` itself and its ``k``
nearest neighbours in ``d`` (indices taken modulo ``N``).

Library: scikit-learn's exact brute-force ``NearestNeighbors`` (its chunked
``ArgKmin`` kernel: bounded memory, OpenMP threads), already a dependency.  Measured
on 100,000 unit features of 128 dimensions, ``k = 10``, both signs (``[F; −F]``
except for pynndescent and NumPy, which use ``|cos|``), on the 2 cores
of the development machine shared with other jobs (load 1–5: times vary up to
~1.7×); "manifold" features are a smooth random map of ``vec(q qᵀ)`` into 128
dimensions with random signs and 1 % noise, like a trained network's; slow rows
timed on 1,000–20,000 queries and scaled; peak is the process's resident memory
(~180–260 MB of it Python, libraries and the test data); recall is the fraction of
the true 10 nearest found (500 queries):

====================================  ===============  ===============  ===========
method                                random: s, MB    manifold: s, MB  recall
====================================  ===============  ===============  ===========
scikit-learn brute (chosen, exact)    199, 384         207–344, 412     1.00, 1.00
scikit-learn kd_tree (exact)          ~10,800, 550     53, 583          1.00, 1.00
scikit-learn ball_tree (exact)        ~7,900, 543      185, 574         1.00, 1.00
SciPy cKDTree (exact)                 ~12,800, 430     86, 458          1.00, 1.00
NumPy ``|F Fᵀ|``, 2,048 rows a step   ~304, 3,209      —                1.00
faiss-cpu IndexFlatIP (exact)         160, 295         137, 323         1.00, 1.00
faiss-cpu HNSW32, efSearch 64         200, 352         33, 379          0.31, 1.00
pynndescent, numba ``1 − |cos|``      415, 1,236       69, 784          0.22, 0.50
====================================  ===============  ===============  ===========

Why brute force: exact, and its cost does not depend on how the network spreads
its features (trees are up to 4–6× faster (kd_tree) on manifold-like features but
40–60× slower when features fill the 128 dimensions, e.g. from noisy images:
``algorithm=`` selects them); exact faiss is only 1.2–1.5× faster and would be a new dependency.
Brute force is ``O(N² D)``: minutes at 10⁵ on two cores, ~100× that at 10⁶ (hours
on two cores; the query chunks are independent, so many cores divide it).  The
approximate index that held up is faiss HNSW (recall 1.00 on manifold features,
6× faster): the next step at 10⁶, not taken here.

End to end at 10⁵ on the same machine (an exact embedding: quaternions rotated into
128 dimensions, random signs, float32; ``k = 10``, 20 random pairs per point, 1,000
landmarks, 30 descent steps): graph 264 s, recovery 131 s, peak resident memory
1.7 GB (TensorFlow included), O(4) error 3·10⁻⁸ rad.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._files import open_hdf5
from ._progress import progress_bar

if TYPE_CHECKING:
    from .recovery import RecoveryResult

__all__ = [
    "EMBEDDINGS_FORMAT",
    "Embeddings",
    "embed",
    "pair_distances",
    "neighbour_graph",
    "candidate_pairs",
    "embedding_pairs",
    "recover_from_embeddings",
    "save_embeddings",
    "load_embeddings",
    "is_embeddings_file",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: The ``format`` attribute of an embeddings file.
EMBEDDINGS_FORMAT = "cryoem-embeddings-1"


def embed(model_dir: str | os.PathLike, images: Any, *, chunk: int | None = None,
          client: Any = None, progress: bool = False) -> NDArray[np.float32]:
    """Unit features ``(N, D)`` of ``images`` (an array or a :class:`cryoem.stacks.ImageStack`)
    by the model in ``model_dir``, ``chunk`` images at a time (default: 16 million pixels,
    4,096 images of 64 px): in-process, or as tasks on a Dask ``client``'s workers, each of
    which loads the model once."""
    from . import distributed, stacks

    images = stacks.as_images(images)
    chunk = chunk or max(1, 2**24 // (images.shape[-1] ** 2))
    pieces = [piece for _, _, piece in stacks.chunks(images, chunk)]
    parts = distributed.map_chunks(_embed_chunk, pieces, client=client, desc="embedding",
                                   shared={"model_dir": str(model_dir)}, progress=progress)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


@functools.lru_cache(maxsize=2)
def _learned(model_dir: str) -> Any:
    from .distance import LearnedDistance

    return LearnedDistance(model_dir)


def _embed_chunk(images: Any, model_dir: str) -> NDArray[np.float32]:
    """One task of :func:`embed`: a chunk's features, as float32 (half the transfer)."""
    return _learned(model_dir).embed(np.asarray(images, dtype=np.float32)).astype(np.float32)


def _unit(features: ArrayLike) -> NDArray[np.floating]:
    """Rows scaled to unit norm, float32 kept as float32 (1e6 × 128 is 0.5 GB)."""
    f = np.asarray(features)
    if f.ndim != 2 or len(f) == 0:
        raise ValueError(f"expected features of shape (N, D), got {f.shape}")
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12).astype(f.dtype)


def pair_distances(features: ArrayLike, rows: ArrayLike, cols: ArrayLike,
                   chunk: int = 32768) -> FloatArray:
    """Learned distances ``2·arccos|<f_i, f_j>|`` of the pairs ``(rows[p], cols[p])``.

    Parameters
    ----------
    features
        ``(N, D)`` embeddings (normalised here).
    rows, cols
        Pair indices into ``features``.
    chunk
        Pairs per step: memory is ``O(chunk · D)`` besides the output.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` distances in rad, the same numbers as
        :meth:`cryoem.distance.LearnedDistance.matrix` (0 for ``i == j``).
    """
    return _pair_distances(_unit(features), np.asarray(rows, dtype=np.int64),
                           np.asarray(cols, dtype=np.int64), chunk)


def _pair_distances(f: NDArray, rows: IntArray, cols: IntArray, chunk: int) -> FloatArray:
    from .distance import LearnedDistance

    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError("rows and cols must be 1D arrays of the same length")
    out = np.empty(len(rows))
    for begin in range(0, len(rows), chunk):
        i, j = rows[begin:begin + chunk], cols[begin:begin + chunk]
        a, b = (np.asarray(f[x], dtype=np.float64) for x in (i, j))
        cosine = np.einsum("pd,pd->p", a, b)
        out[begin:begin + chunk] = np.where(i == j, 0.0, LearnedDistance._distance(cosine))
    return out


def neighbour_graph(features: ArrayLike, k: int = 10, *, algorithm: str = "brute",
                    chunk: int = 8192, n_jobs: int | None = None,
                    progress: bool = False) -> tuple[IntArray, IntArray, FloatArray]:
    """Each point's ``k`` nearest neighbours in the learned distance ``2·arccos|cos|``.

    Parameters
    ----------
    features
        ``(N, D)`` embeddings (normalised here); ``f`` and ``−f`` are the same point.
    k
        Neighbours per point (at most ``N − 1``).
    algorithm
        scikit-learn's ``NearestNeighbors`` algorithm: ``"brute"`` (exact, the
        fastest in 128 dimensions, see the module's table), ``"ball_tree"``, ``"kd_tree"``
        or ``"auto"``.
    chunk
        Query points per step: memory is ``O(N · D + chunk · k)`` besides the output
        (scikit-learn chunks the brute-force distances itself).
    n_jobs
        scikit-learn's ``n_jobs`` (the brute kernel uses OpenMP threads regardless).
    progress
        Show a progress bar.

    Returns
    -------
    rows, cols, distances
        ``(N·k,)`` arrays: ``rows`` is ``0,…,0,1,…`` (``k`` each), ``cols`` the
        neighbours nearest first, ``distances`` their learned distances (rad, float64).
    """
    from sklearn.neighbors import NearestNeighbors

    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    f = _unit(features)
    n = len(f)
    k = min(int(k), n - 1)
    if k < 1:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0)
    search = f.astype(np.float32)
    index = NearestNeighbors(n_neighbors=k + 1, algorithm=algorithm, n_jobs=n_jobs)
    index.fit(np.concatenate([search, -search]))  # both signs: see the module docstring
    cols = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k))
    for begin in progress_bar(range(0, n, chunk), total=-(-n // chunk), enable=progress,
                              desc="neighbours"):
        ids = np.arange(begin, min(begin + chunk, n))
        found = index.kneighbors(search[ids], return_distance=False) % n
        cols[ids], dist[ids] = _best(f, ids, found, k)
    return np.repeat(np.arange(n, dtype=np.int64), k), cols.ravel(), dist.ravel()


def _best(f: NDArray, ids: IntArray, found: IntArray, k: int) -> tuple[IntArray, FloatArray]:
    """The ``k`` nearest candidates of each row by the float64 distance, self and repeats out.

    A point orthogonal to the query has both copies at ``‖·‖² = 2``, so it can come twice;
    rows left with fewer than ``k`` distinct candidates are searched again by brute force.
    """
    order = np.argsort(found, axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)
    d = _pair_distances(f, np.repeat(ids, found.shape[1]), found.ravel(), 32768)
    d = d.reshape(found.shape)
    d[found == ids[:, None]] = np.inf
    d[:, 1:][found[:, 1:] == found[:, :-1]] = np.inf
    pick = np.argsort(d, axis=1, kind="stable")[:, :k]
    cols, dist = np.take_along_axis(found, pick, axis=1), np.take_along_axis(d, pick, axis=1)
    for r in np.flatnonzero(~np.all(np.isfinite(dist), axis=1)):
        cosine = np.abs(f @ f[ids[r]]).astype(np.float64)
        cosine[ids[r]] = -np.inf
        cols[r] = np.argsort(-cosine, kind="stable")[:k]
        dist[r] = _pair_distances(f, np.full(k, ids[r]), cols[r], k)
    return cols, dist


def candidate_pairs(n: int, rows: ArrayLike, cols: ArrayLike, random_per_point: int = 20,
                    seed: int = 0) -> tuple[IntArray, IntArray]:
    """Graph pairs plus ``random_per_point`` random partners per point, deduplicated.

    Parameters
    ----------
    n
        Number of points.
    rows, cols
        Given pairs, e.g. :func:`neighbour_graph`'s.
    random_per_point
        Random partners drawn per point (uniformly; self-pairs dropped).
    seed
        Seed of the random partners.

    Returns
    -------
    rows, cols
        Unique unordered pairs as ``rows < cols``, sorted.
    """
    rng = np.random.default_rng(seed)
    extra = np.repeat(np.arange(n, dtype=np.int64), random_per_point)
    rows = np.concatenate([np.asarray(rows, dtype=np.int64), extra])
    cols = np.concatenate([np.asarray(cols, dtype=np.int64), rng.integers(0, n, len(extra))])
    if len(rows) and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
        raise ValueError(f"pair indices must be in [0, {n})")
    keep = rows != cols
    low, high = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    unique = np.unique(low * n + high)
    return unique // n, unique % n


def embedding_pairs(features: ArrayLike, k: int = 10, random_per_point: int = 20,
                    seed: int = 0, graph: tuple[ArrayLike, ArrayLike] | None = None,
                    progress: bool = False) -> tuple[IntArray, IntArray, FloatArray]:
    """Pairs for sparse recovery from embeddings: ``k`` nearest neighbours plus random pairs.

    Parameters
    ----------
    features
        ``(N, D)`` embeddings.
    k
        Nearest neighbours per point (ignored when ``graph`` is given).
    random_per_point, seed
        Random partners per point and their seed (:func:`candidate_pairs`).
    graph
        ``(rows, cols)`` of a neighbour graph already computed (e.g. read from a file).
    progress
        Show a progress bar while searching neighbours.

    Returns
    -------
    rows, cols, distances
        Unique pairs ``rows < cols`` and their learned distances (rad).
    """
    f = _unit(features)
    if graph is None:
        graph = neighbour_graph(f, k, progress=progress)[:2]
    rows, cols = candidate_pairs(len(f), graph[0], graph[1], random_per_point, seed)
    return rows, cols, _pair_distances(f, rows, cols, 32768)


def recover_from_embeddings(features: ArrayLike, k: int = 10, random_per_point: int = 20,
                            landmarks: int = 1000, seed: int = 0, *,
                            graph: tuple[ArrayLike, ArrayLike] | None = None,
                            chunk: int | None = None, progress: bool = False,
                            **descent: Any) -> RecoveryResult:
    """Recover orientations from embeddings in bounded memory (no ``N × N`` matrix).

    :func:`cryoem.recovery.recover_sampled` with the learned distance computed
    from the features pair by pair, and with the descent on the pairs of
    :func:`embedding_pairs` (nearest neighbours in embedding space plus random
    pairs) instead of neighbours of the current estimates.

    Parameters
    ----------
    features
        ``(N, D)`` embeddings.
    k, random_per_point, seed
        Pairs of the descent (:func:`embedding_pairs`); ``seed`` also picks the landmarks.
    landmarks
        Points recovered densely (spectral) before the others are placed from them.
    graph
        ``(rows, cols)`` of a precomputed neighbour graph (skips the search).
    chunk
        Points placed per step (default: :func:`~cryoem.recovery.recover_sampled`'s,
        about two million distances to the landmarks per step).
    progress
        Show progress bars.
    **descent
        Options of :func:`cryoem.recovery.recover_pairs` (``steps``,
        ``learning_rate``, ``max_distance``, ``symmetry``, …).

    Returns
    -------
    cryoem.recovery.RecoveryResult
        Orientations (up to O(4)) and the descent's history; ``init_residual`` is
        the landmarks' spectral residual.

    Notes
    -----
    Memory: ``O(N·D + landmarks² + chunk·landmarks + N·(k + random_per_point))``.
    """
    from . import recovery

    f = _unit(features)
    n = len(f)
    rows, cols = graph if graph is not None else neighbour_graph(f, k, progress=progress)[:2]
    rows, cols = candidate_pairs(n, rows, cols, random_per_point, seed)

    def distances(i: IntArray, j: IntArray) -> FloatArray:
        return _pair_distances(f, np.asarray(i, dtype=np.int64),
                               np.asarray(j, dtype=np.int64), 32768)

    return recovery.recover_sampled(n, distances, landmarks=landmarks, chunk=chunk, seed=seed,
                                    progress=progress, pairs=(rows, cols), **descent)


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------
@dataclass
class Embeddings:
    """An embeddings file: features, the dataset indices they belong to, the neighbour graph."""

    features: NDArray[np.float32]
    indices: IntArray
    rows: IntArray
    cols: IntArray
    distances: FloatArray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def graph(self) -> tuple[IntArray, IntArray]:
        """``(rows, cols)`` of the neighbour graph."""
        return self.rows, self.cols


def save_embeddings(path: str | os.PathLike, features: ArrayLike, indices: ArrayLike,
                    rows: ArrayLike, cols: ArrayLike, distances: ArrayLike,
                    **attributes: Any) -> Path:
    """Write embeddings and their neighbour graph to HDF5 (chunked datasets, atomically).

    Parameters
    ----------
    path
        Output file.
    features
        ``(N, D)`` embeddings, stored as float32.
    indices
        ``(N,)`` dataset indices of the embedded projections.
    rows, cols, distances
        The neighbour graph (:func:`neighbour_graph`), indices into ``features``.
    **attributes
        Stored as HDF5 attributes (``None`` values skipped).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import h5py

    from ._files import atomic_path

    f = np.asarray(features, dtype=np.float32)
    indices = np.asarray(indices, dtype=np.int64)
    graph = [np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
             np.asarray(distances, dtype=np.float64)]
    if f.ndim != 2 or indices.shape != (len(f),):
        raise ValueError(f"features (N, D) and indices (N,) must agree: {f.shape}, "
                         f"{indices.shape}")
    if not (graph[0].shape == graph[1].shape == graph[2].shape) or graph[0].ndim != 1:
        raise ValueError("rows, cols and distances must be 1D arrays of the same length")
    path = Path(path)
    with atomic_path(path) as partial, h5py.File(partial, "w") as h:
        h.create_dataset("features", data=f, chunks=(max(1, min(len(f), 4096)), f.shape[1]))
        h.create_dataset("indices", data=indices, chunks=(max(1, min(len(f), 65536)),))
        for name, values in zip(("rows", "cols", "distances"), graph):
            h.create_dataset(f"graph/{name}", data=values,
                             chunks=(max(1, min(len(values), 65536)),) if len(values) else None)
        h.attrs["format"] = EMBEDDINGS_FORMAT
        h.attrs["distance"] = "2*arccos|<f_i, f_j>|"
        h.attrs.update({k: v for k, v in attributes.items() if v is not None})
    return path


def is_embeddings_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file written by :func:`save_embeddings` (by its format)."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            return h.attrs.get("format") == EMBEDDINGS_FORMAT
    except OSError:
        return False


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """Read a file written by :func:`save_embeddings`.

    Raises
    ------
    FileNotFoundError, ValueError
        No such file, or not an embeddings file.
    """
    with open_hdf5(path, EMBEDDINGS_FORMAT, "embeddings") as h:
        return Embeddings(h["features"][()], h["indices"][()], h["graph/rows"][()],
                          h["graph/cols"][()], h["graph/distances"][()], dict(h.attrs))
