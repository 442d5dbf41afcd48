"""Distance estimators of Phase 1: one interface, four estimators.

Every estimator answers two questions about projections of a :class:`~cryoem.datasets.Dataset`
(optionally restricted to ``indices``, e.g. the test split):

* ``estimator.pairs(data, i, j, indices)`` — distances for given pairs (sparse, for large N);
* ``estimator.matrix(data, indices)`` — the full ``N × N`` matrix.

Estimators:

* :class:`ExactDistance` — the oracle from the true orientations, symmetry-aware
  (``min_g d(q_i, q_j·g)``) when the dataset declares a point group;
* :class:`PerturbedDistance` — exact plus Gaussian noise of variance ``sigma2``
  (rad²), clipped to ``[0, π]``;
* :class:`EuclideanDistance` — ``‖p_i − p_j‖`` mapped to ``[0, π]`` by an isotonic
  (monotone) fit on training pairs;
* :class:`LearnedDistance` — the Siamese network (:mod:`cryoem.siamese`): each
  projection is embedded once and the matrix is a matrix product.

:func:`l_de` and :func:`binned_error` score estimated distances against the truth.

Example
-------
>>> from cryoem import datasets, distance
>>> data = datasets.load("data/4ake.h5")                       # doctest: +SKIP
>>> test = data.split["test"]                                   # doctest: +SKIP
>>> d_hat = distance.PerturbedDistance(0.2).matrix(data, test)  # doctest: +SKIP
>>> d_true = distance.ExactDistance().matrix(data, test)        # doctest: +SKIP
>>> distance.l_de(d_hat, d_true)                                # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations
from ._files import open_hdf5
from .datasets import Dataset

__all__ = [
    "Estimator",
    "ExactDistance",
    "PerturbedDistance",
    "EuclideanDistance",
    "LearnedDistance",
    "ESTIMATORS",
    "make_estimator",
    "l_de",
    "binned_error",
    "upper_triangle",
    "save_matrix",
    "load_matrix",
    "check_truth",
]

FloatArray = NDArray[np.float64]


class Estimator(ABC):
    """Estimates ``d_q(q_i, q_j)`` for projections of a dataset."""

    name = "estimator"
    #: Ground-truth fields of the dataset the estimate itself reads (not only to score).
    truth_fields: tuple[str, ...] = ()

    def fit(self, data: Dataset) -> "Estimator":
        """Fit whatever the estimator needs on the dataset's training split (default: nothing)."""
        return self

    @abstractmethod
    def matrix(self, data: Dataset, indices: ArrayLike | None = None) -> FloatArray:
        """All distances ``(N, N)`` between the projections ``indices`` (default: all)."""

    @abstractmethod
    def pairs(self, data: Dataset, i: ArrayLike, j: ArrayLike,
              indices: ArrayLike | None = None) -> FloatArray:
        """Distances between projections ``indices[i]`` and ``indices[j]``, pair by pair."""


def _select(data: Dataset, indices: ArrayLike | None) -> NDArray[np.int64]:
    if indices is None:
        return np.arange(len(data))
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= len(data))):
        raise ValueError(f"indices must be a 1D array within [0, {len(data)})")
    return indices


def _pair_indices(i: ArrayLike, j: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    if i.shape != j.shape or i.ndim != 1:
        raise ValueError("i and j must be 1D arrays of the same length")
    return i, j


# ----------------------------------------------------------------------------
# Exact and perturbed
# ----------------------------------------------------------------------------
class ExactDistance(Estimator):
    """The oracle: symmetry-aware geodesic distances between the true orientations."""

    name = "exact"
    truth_fields = ("orientations",)

    def __init__(self, symmetry: str | None = None) -> None:
        self.symmetry = symmetry

    def _group(self, data: Dataset) -> FloatArray:
        return rotations.point_group(self.symmetry or data.attrs.get("symmetry", "C1"))

    def matrix(self, data: Dataset, indices: ArrayLike | None = None) -> FloatArray:
        q = data.orientations[_select(data, indices)]
        return rotations.symmetric_distance_matrix(q, self._group(data))

    def pairs(self, data: Dataset, i: ArrayLike, j: ArrayLike,
              indices: ArrayLike | None = None) -> FloatArray:
        i, j = _pair_indices(i, j)
        q = data.orientations[_select(data, indices)]
        return rotations.symmetric_distance(q[i], q[j], self._group(data))


class PerturbedDistance(ExactDistance):
    """Exact distances plus Gaussian noise of variance ``sigma2`` (rad²), clipped to ``[0, π]``.

    The noise is symmetric in ``(i, j)`` and deterministic given ``seed`` and
    the pair's dataset indices, so ``pairs`` and ``matrix`` agree.
    """

    name = "perturbed"

    def __init__(self, sigma2: float, symmetry: str | None = None, seed: int = 0) -> None:
        if sigma2 < 0:
            raise ValueError(f"sigma2 must be non-negative, got {sigma2}")
        super().__init__(symmetry)
        self.sigma2 = sigma2
        self.seed = seed

    def _noise(self, a: NDArray[np.int64], b: NDArray[np.int64]) -> FloatArray:
        low, high = np.minimum(a, b), np.maximum(a, b)
        # A counter-based draw per pair: a hash of (seed, low, high) seeds a Gaussian.
        keys = (low.astype(np.uint64) << np.uint64(32)) ^ high.astype(np.uint64)
        keys = keys ^ np.uint64((self.seed * 0x9E3779B97F4A7C15) % 2**64)
        keys = _splitmix64(keys)
        u1 = (_splitmix64(keys) >> np.uint64(11)).astype(np.float64) / 2**53
        u2 = (_splitmix64(keys ^ np.uint64(0xDEADBEEF)) >> np.uint64(11)).astype(np.float64) / 2**53
        gauss = np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)  # Box–Muller
        return np.sqrt(self.sigma2) * gauss

    def matrix(self, data: Dataset, indices: ArrayLike | None = None) -> FloatArray:
        index = _select(data, indices)
        d = super().matrix(data, indices)
        d = np.clip(d + self._noise(index[:, None], index[None, :]), 0.0, np.pi)
        np.fill_diagonal(d, 0.0)
        return d

    def pairs(self, data: Dataset, i: ArrayLike, j: ArrayLike,
              indices: ArrayLike | None = None) -> FloatArray:
        i, j = _pair_indices(i, j)
        index = _select(data, indices)
        d = super().pairs(data, i, j, indices) + self._noise(index[i], index[j])
        return np.where(index[i] == index[j], 0.0, np.clip(d, 0.0, np.pi))


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 mixing (hand-written: NumPy has no counter-based hash for arrays of keys)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


# ----------------------------------------------------------------------------
# Euclidean baseline
# ----------------------------------------------------------------------------
class EuclideanDistance(Estimator):
    """``‖p_i − p_j‖`` mapped to ``[0, π]`` by an isotonic fit on training pairs."""

    name = "euclidean"
    truth_fields = ("orientations",)  # the isotonic map is fitted on training-split labels

    def __init__(self, n_pairs: int = 20000, seed: int = 0) -> None:
        self.n_pairs = n_pairs
        self.seed = seed
        self.knots: tuple[FloatArray, FloatArray] | None = None

    def fit(self, data: Dataset) -> "EuclideanDistance":
        """Fit the monotone map from pixel distance to angle on pairs of the training split."""
        from scipy.optimize import isotonic_regression

        train = data.split["train"] if len(data.split["train"]) >= 2 else np.arange(len(data))
        rng = np.random.default_rng(self.seed)
        i = rng.integers(0, len(train), self.n_pairs)
        j = rng.integers(0, len(train), self.n_pairs)
        keep = i != j
        i, j = i[keep], j[keep]
        x = self._raw_pairs(data.projections[train], i, j)
        y = ExactDistance().pairs(data, i, j, train)
        order = np.argsort(x)
        fitted = isotonic_regression(y[order]).x
        self.knots = (x[order], np.clip(fitted, 0.0, np.pi))
        return self

    @staticmethod
    def _raw_pairs(images: NDArray, i: NDArray, j: NDArray) -> FloatArray:
        flat = images.reshape(len(images), -1).astype(np.float64)
        return np.linalg.norm(flat[i] - flat[j], axis=1)

    def _map(self, raw: FloatArray) -> FloatArray:
        if self.knots is None:
            raise RuntimeError("fit the Euclidean estimator on a training set first")
        x, y = self.knots
        return np.interp(raw, x, y)

    def raw_matrix(self, images: NDArray) -> FloatArray:
        """Pixel-space distances ``‖p_i − p_j‖`` by the Gram-matrix identity."""
        flat = images.reshape(len(images), -1).astype(np.float64)
        norms = np.sum(flat**2, axis=1)
        squared = norms[:, None] + norms[None, :] - 2 * flat @ flat.T
        return np.sqrt(np.clip(squared, 0.0, None))

    def matrix(self, data: Dataset, indices: ArrayLike | None = None) -> FloatArray:
        d = self._map(self.raw_matrix(data.projections[_select(data, indices)]))
        np.fill_diagonal(d, 0.0)
        return d

    def pairs(self, data: Dataset, i: ArrayLike, j: ArrayLike,
              indices: ArrayLike | None = None) -> FloatArray:
        i, j = _pair_indices(i, j)
        raw = self._raw_pairs(data.projections[_select(data, indices)], i, j)
        return np.where(i == j, 0.0, self._map(raw))


# ----------------------------------------------------------------------------
# Learned
# ----------------------------------------------------------------------------
class LearnedDistance(Estimator):
    """The trained Siamese network: embed each projection, then ``2·arccos|cos|``.

    Parameters
    ----------
    turns
        Test-time turns: the distance of a pair is the mean of the network's distances between
        the two images turned together in-plane by each multiple of ``360°/turns`` (1, 2 or 4;
        exact turns, by index: :func:`cryoem.training_data.quarter_turn`).  Turning both images
        by one angle leaves their true distance unchanged (``d_q(R_z·R_i, R_z·R_j) =
        d_q(R_i, R_j)``), so each turn is another estimate of the same distance; with all four
        the matrix no longer depends on how the images are turned.  At SNR 1/16 (4AKE,
        1,650 images, the same model: ``python benchmarks/pipeline.py --snr 1/16`` at
        ``4de31b4`` without turns and at ``0b598d7`` with four) they took ``L_DE`` from 0.191 to
        0.178 rad² and the first guess from 0.394 to 0.355 rad (O(4)), for four times the
        embedding (seconds; ``benchmarks/distance_ablation.py --test-turns`` measures it per
        lever).  The embedding graph for large sets (:mod:`cryoem.embedding_graph`) uses one
        embedding per image, without turns (and an ensemble's first member only).

    ``model_dir`` may hold an ensemble (:mod:`cryoem.ensemble`): the distance of a pair is then
    the mean over every member and every turn.  A model trained with ``confidence`` also
    gives each pair a variance (:meth:`variance_matrix`), which recovery can weigh pairs by.
    """

    name = "learned"

    def __init__(self, model_dir: str | os.PathLike, batch_size: int = 256,
                 turns: int = 4) -> None:
        from . import siamese
        from .ensemble import member_directories

        if turns not in (1, 2, 4):
            raise ValueError(f"turns must be 1, 2 or 4, got {turns}")
        self.model_dir = Path(model_dir)
        loaded = [siamese.load_embedding(d) for d in member_directories(model_dir)]
        self.members = [embedding for embedding, _ in loaded]
        self.config = loaded[0][1]
        sizes = {config["image_size"] for _, config in loaded}
        if len(sizes) != 1:
            raise ValueError(f"{model_dir}: the ensemble's members take images of different "
                             f"sizes {sorted(sizes)}")
        self.batch_size = batch_size
        self.turns = turns

    @property
    def embedding(self) -> Any:
        """The network (an ensemble's first member)."""
        return self.members[0]

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def contract(self) -> dict[str, Any] | None:
        """What images the model expects (general models; ``None`` otherwise)."""
        return self.config.get("contract")

    def fit(self, data: Dataset) -> "LearnedDistance":
        """Check the dataset against the model's contract (warns when the framing differs)."""
        contract = self.contract
        ratio = data.attrs.get("box_ratio")
        if contract and ratio and abs(float(ratio) / contract["box_ratio"] - 1) > 0.1:
            warnings.warn(f"{data.path}: box-to-particle ratio {float(ratio):.2f}, but the model "
                          f"expects {contract['box_ratio']:.2f}; its distances may be poor",
                          stacklevel=2)
        return self

    @property
    def phase_flips(self) -> bool:
        """Whether the model phase-flips images that carry CTF parameters before the network
        (trained on phase-flipped images: ``TrainingConfig.phase_flip``)."""
        return bool(self.config.get("phase_flip", False))

    @property
    def confidence(self) -> bool:
        """Whether the model has the variance head (``TrainingConfig.confidence``)."""
        return bool(self.config.get("confidence", False))

    def embed(self, images: NDArray, member: int = 0) -> FloatArray:
        """Unit feature vectors ``(N, D)`` of images ``(N, L, L)`` by one member of an ensemble
        (:mod:`cryoem.ensemble`; the model itself when it is not one).

        A model with a contract (``--model pretrained``) takes images of any
        square size: they are Fourier-resampled to its ``image_size`` (same
        framing, other pixel size).  Other models need their training size.
        """
        return self._unit_features(self._outputs(images, member))

    def _unit_features(self, outputs: FloatArray) -> FloatArray:
        """The network's outputs less the variance column (if any), scaled to unit length."""
        features = outputs[:, :-1] if self.confidence else outputs
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    def variance_matrix(self, data: Dataset, indices: ArrayLike | None = None) -> FloatArray:
        """The variances ``(N, N)`` (rad²) the model gives the pairs of :meth:`matrix`, the mean
        over its turns and members (:func:`cryoem.siamese.pair_variances`); zero diagonal."""
        from keras import ops

        from .siamese import pair_variances

        if not self.confidence:
            raise ValueError(f"the model in {self.model_dir} has no variance head: train it "
                             "with confidence (TrainingConfig.confidence)")
        outputs = self._turned_outputs(self._images(data, _select(data, indices)))
        v = np.mean([ops.convert_to_numpy(pair_variances(o[:, -1].astype(np.float32)))
                     for o in outputs], axis=0).astype(np.float64)
        np.fill_diagonal(v, 0.0)
        return v

    def _images(self, data: Dataset, index: NDArray) -> NDArray:
        """The images the network takes: phase-flipped with their own CTF when the model
        trained on phase-flipped images (``TrainingConfig.phase_flip``) and the data carry
        CTF parameters (:func:`cryoem.projection.phase_flip`)."""
        images = data.projections[index]
        if self.phase_flips and data.ctf is not None:
            from .projection import phase_flip

            images = phase_flip(images, data.ctf[index], data.pixel_size)
        return images

    def _outputs(self, images: NDArray, member: int = 0) -> FloatArray:
        """The network's raw outputs for ``images`` (resampled to its size under a contract)."""
        images = np.asarray(images, dtype=np.float32)
        size = self.image_size
        if (self.contract is not None and images.ndim == 3 and images.shape[1] == images.shape[2]
                and images.shape[1] != size):
            from .volumes import fourier_resample

            images = fourier_resample(images, size, axes=(-2, -1))
        if images.ndim != 3 or images.shape[1:] != (size, size):
            raise ValueError(
                f"the model in {self.model_dir} takes {size}×{size} images, "
                f"got shape {images.shape[1:]}: generate the data at --size {size} "
                "or train a model at this size")
        outputs = self.members[member].predict(images, batch_size=self.batch_size, verbose=0)
        return np.asarray(outputs, dtype=np.float64)

    @staticmethod
    def _distance(cosine: FloatArray) -> FloatArray:
        from .siamese import EPSILON

        return 2 * np.arccos(np.clip(np.abs(cosine), EPSILON, 1 - EPSILON))

    def turned_features(self, images: NDArray) -> list[FloatArray]:
        """The unit features of the images turned by each of the test-time turns, by each
        member of an ensemble (every member's turns, member after member)."""
        return [self._unit_features(outputs) for outputs in self._turned_outputs(images)]

    def _turned_outputs(self, images: NDArray) -> list[FloatArray]:
        """The raw outputs of the images turned by each test-time turn, by each member (every
        member's turns, member after member): what features and variances are read from."""
        from .training_data import quarter_turn

        images = np.asarray(images, dtype=np.float32)
        return [self._outputs(quarter_turn(images, k * 4 // self.turns), member)
                for member in range(len(self.members)) for k in range(self.turns)]

    def matrix(self, data: Dataset, indices: ArrayLike | None = None) -> FloatArray:
        turned = self.turned_features(self._images(data, _select(data, indices)))
        d = self._distance(turned[0] @ turned[0].T)
        for features in turned[1:]:  # summed in place: one N×N matrix at a time
            d += self._distance(features @ features.T)
        d /= len(turned)
        np.fill_diagonal(d, 0.0)
        return d

    def pairs(self, data: Dataset, i: ArrayLike, j: ArrayLike,
              indices: ArrayLike | None = None) -> FloatArray:
        i, j = _pair_indices(i, j)
        index = _select(data, indices)
        used, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)
        turned = self.turned_features(self._images(data, index[used]))
        d = np.mean([self._distance(np.sum(f[inverse[: len(i)]] * f[inverse[len(i):]], axis=1))
                     for f in turned], axis=0)
        return np.where(i == j, 0.0, d)


#: Names accepted by :func:`make_estimator` and ``cryoem distances --estimator``.
ESTIMATORS = ("learned", "exact", "perturbed", "euclidean")


def check_truth(estimator: Estimator, data: Dataset) -> None:
    """Refuse an estimator that reads ground truth (:attr:`Estimator.truth_fields`) on data
    that have none (imported particles, or a truth-blind copy).

    Raises
    ------
    ValueError
        Naming the estimator and the dataset.
    """
    from .datasets import GROUND_TRUTH

    if estimator.truth_fields and data.source("orientations") != GROUND_TRUTH:
        raise ValueError(f"the {estimator.name} estimator reads the true orientations, which "
                         f"{data.path} does not have: use the learned estimator with a model "
                         "(--model)")


def make_estimator(name: str, *, model_dir: str | os.PathLike | None = None,
                   sigma2: float = 0.2, seed: int = 0, turns: int = 4) -> Estimator:
    """An estimator by name (``learned`` needs ``model_dir``; ``turns``: its test-time
    turns, see :class:`LearnedDistance`)."""
    if name == "exact":
        return ExactDistance()
    if name == "perturbed":
        return PerturbedDistance(sigma2, seed=seed)
    if name == "euclidean":
        return EuclideanDistance(seed=seed)
    if name == "learned":
        if model_dir is None:
            raise ValueError("the learned estimator needs a trained model (--model MODEL_DIR)")
        return LearnedDistance(model_dir, turns=turns)
    raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")


# ----------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------
def upper_triangle(matrix: ArrayLike) -> FloatArray:
    """The entries ``i < j`` of a square matrix, as a flat array."""
    m = np.asarray(matrix)
    return m[np.triu_indices(len(m), k=1)]


def l_de(estimated: ArrayLike, true: ArrayLike) -> float:
    """Mean squared error ``mean (d̂ − d)²`` over pairs, rad² (matrices use ``i < j`` only)."""
    est, ref = np.asarray(estimated, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"shapes differ: {est.shape} vs {ref.shape}")
    if est.ndim == 2:
        est, ref = upper_triangle(est), upper_triangle(ref)
    return float(np.mean((est - ref) ** 2))


def binned_error(estimated: ArrayLike, true: ArrayLike, bins: int = 12) -> dict[str, Any]:
    """Error binned by true distance on ``[0, π]``: the plateau at large distances shows here.

    Returns a dict of arrays: ``center``, ``count``, ``mean_estimate``,
    ``mean_absolute_error``, ``bias`` (NaN for empty bins).
    """
    est, ref = np.asarray(estimated, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if est.ndim == 2:
        est, ref = upper_triangle(est), upper_triangle(ref)
    edges = np.linspace(0, np.pi, bins + 1)
    which = np.clip(np.digitize(ref, edges) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)

    def mean_of(values: FloatArray) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(which, weights=values, minlength=bins) / count

    return {
        "center": 0.5 * (edges[:-1] + edges[1:]),
        "count": count,
        "mean_estimate": mean_of(est),
        "mean_absolute_error": mean_of(np.abs(est - ref)),
        "bias": mean_of(est - ref),
    }


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------
def save_matrix(path: str | os.PathLike, matrix: ArrayLike, indices: ArrayLike,
                **attributes: Any) -> Path:
    """Write a distance matrix and the dataset indices it covers to HDF5 (atomically)."""
    import h5py

    from ._files import atomic_path

    path = Path(path)
    with atomic_path(path) as partial, h5py.File(partial, "w") as f:
        f.create_dataset("distances", data=np.asarray(matrix, dtype=np.float32))
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
        f.attrs["format"] = "cryoem-distances-1"
        f.attrs.update({k: v for k, v in attributes.items() if v is not None})
    return path


def load_matrix(path: str | os.PathLike) -> tuple[FloatArray, NDArray[np.int64], dict[str, Any]]:
    """Read ``(distances, indices, attributes)`` written by :func:`save_matrix`."""
    with open_hdf5(path, "cryoem-distances-1", "distance") as f:
        return f["distances"][()].astype(np.float64), f["indices"][()], dict(f.attrs)
