"""The Siamese network of Phase 1: learn ``d_p(p_i, p_j) ≈ d_q(q_i, q_j)`` (Keras 3, any backend).

* :func:`build_embedding` — the feature extractor ``G_w``: per-image
  standardisation and optional area downsampling (:class:`AreaResize`; both
  inside the saved model), then fully convolutional blocks (conv + ReLU + max-pool, ``same``
  padding), global average pooling and a linear layer.
* :func:`pairwise_distances` — ``d_p = 2·arccos(|cos_sim(G(p_i), G(p_j))|)``.
  The features after the linear layer can be negative, so the cosine can be
  too: we take ``|cos|``, which matches the double cover ``q ≡ −q`` of the
  quaternions (their distance is ``2·arccos|<q_i, q_j>|``) and keeps a gradient
  for negative cosines, which a clip to ``[ε, 1 − ε]`` alone would kill.
* :class:`InBatchModel` — trains on all ``B(B−1)/2`` pairs of a batch, each
  image embedded once, weighted so that the target distances are uniform on
  ``[0, π]`` (:func:`uniform_pair_weights`); with a ``horizon`` the pairs truly
  beyond it only need to be called far (:func:`horizon_residuals`); with ``confidence`` the
  network also gives each image a variance, and the loss is the pairs' Gaussian negative
  log-likelihood (:func:`pair_variances`, :func:`confidence_loss`).  :func:`per_pair_model` keeps the
  seed's one-forward-pass-per-pair training for comparison.
* :func:`save_model` and :func:`load_embedding` — a trained embedding and its
  training configuration on disk (``model.keras``, ``config.json``); models
  saved before :class:`AreaResize` are made portable to every backend on load.

Training — the data, :class:`~cryoem.training.TrainingConfig` and
:func:`~cryoem.training.train` — lives in :mod:`cryoem.training`, which
builds on this module.

The network and its loss use ``keras.ops`` only, so the same code runs
under the TensorFlow (default), JAX and PyTorch backends (``KERAS_BACKEND``;
``tests/test_backends.py`` runs one training step on each installed one).
Only :func:`configure_threads` touches a backend's own API here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from . import devices  # noqa: E402
from ._models import (CONFIG_FILE, CONTRACT_FILE, MODEL_FILE, PRETRAINED,  # noqa: E402,F401
                      PRETRAINED_DIR, model_directory, read_config, read_contract,
                      write_contract)
from .devices import configure_threads  # noqa: E402,F401
from .polar import CircularPad, PolarResample  # noqa: E402

if TYPE_CHECKING:  # annotations only: training imports this module, never the reverse
    from .training import TrainingConfig

__all__ = [
    "ARCHITECTURES",
    "FRONTS",
    "build_embedding",
    "pairwise_distances",
    "uniform_pair_weights",
    "pair_weight_matrix",
    "horizon_residuals",
    "pair_variances",
    "confidence_loss",
    "InBatchModel",
    "per_pair_model",
    "save_model",
    "load_embedding",
    "model_directory",
    "write_contract",
    "read_contract",
    "configure_threads",
    "CONFIG_FILE",
    "CONTRACT_FILE",
    "MODEL_FILE",
    "PRETRAINED",
    "PRETRAINED_DIR",
]

#: Filters and kernel sizes per block. "paper" is the paper's network.
ARCHITECTURES: dict[str, dict[str, tuple[int, ...]]] = {
    "paper": {"filters": (32, 64, 128, 256, 256, 512, 512), "kernels": (7, 5, 3, 3, 3, 3, 3)},
    "light": {"filters": (16, 32, 64, 128, 128), "kernels": (5, 3, 3, 3, 3)},
}

#: Front ends of :func:`build_embedding` (``front``).
FRONTS = ("cartesian", "polar")

#: Cosines are clipped to [EPSILON, 1 − EPSILON] before arccos (infinite slope at 1).
EPSILON = 1e-6

#: The least variance (rad²) an image contributes to a pair's (:func:`pair_variances`).
VARIANCE_FLOOR = 1e-3

#: The L2 normalisation caps ``1/‖x‖`` at ``1/_NORM_EPSILON``: ``‖x‖²`` floored at 1e-12,
#: as ``tf.math.l2_normalize`` (which the first models were trained with) does.
_NORM_EPSILON = 1e-6


# ----------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="cryoem")
class Standardize(keras.layers.Layer):
    """Per-image zero mean and unit standard deviation."""

    def call(self, images: Any) -> Any:
        mean = keras.ops.mean(images, axis=(1, 2, 3), keepdims=True)
        std = keras.ops.std(images, axis=(1, 2, 3), keepdims=True)
        return (images - mean) / (std + 1e-6)


def _area_weights(n_in: int, n_out: int) -> NDArray[np.float32]:
    """``(n_out, n_in)`` matrix of area resampling along one axis: pixel overlaps over the scale."""
    scale = n_in / n_out
    low = np.arange(n_out)[:, None] * scale
    pixels = np.arange(n_in)[None, :]
    overlap = np.minimum(low + scale, pixels + 1) - np.maximum(low, pixels)
    return (np.maximum(overlap, 0.0) / scale).astype(np.float32)


@keras.saving.register_keras_serializable(package="cryoem")
class AreaResize(keras.layers.Layer):
    """Area resampling of images ``(B, H, W, C)`` to ``(B, size, size, C)``, on any backend.

    Each output pixel is the mean of the input over its footprint (pixels
    weighted by their overlap), as TensorFlow's ``area`` resize, which Keras's
    ``Resizing`` offers under TensorFlow only.  Separable: one matrix per axis.
    """

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, images: Any) -> Any:
        rows = ops.convert_to_tensor(_area_weights(images.shape[1], self.size), images.dtype)
        cols = ops.convert_to_tensor(_area_weights(images.shape[2], self.size), images.dtype)
        return ops.einsum("ij,bjkc,lk->bilc", rows, images, cols)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}


def build_embedding(image_size: int, input_size: int | None = None, arch: str = "light",
                    feature_dim: int = 128, width: float = 1.0,
                    front: str = "cartesian", confidence: bool = False) -> keras.Model:
    """The feature extractor ``G_w``: images ``(B, L, L)`` → features ``(B, feature_dim)``
    (``(B, feature_dim + 1)`` with ``confidence``).

    Parameters
    ----------
    image_size
        Edge ``L`` of the images it accepts (checked by :func:`embed`).
    input_size
        Edge the images are area-downsampled to before the convolutions
        (a low-pass filter: white noise spreads over all frequencies, the
        particle's signal does not); ``None`` keeps ``image_size``.
    arch
        ``"paper"`` (7 blocks, 32–512 filters, kernels 7, 5, 3…) or ``"light"``.
    width
        Multiplies every filter count.
    front
        ``"cartesian"`` (the pixels as they are, global average pooling at the end) or
        ``"polar"`` (:mod:`cryoem.polar`: the image resampled on ``n/2`` rings of ``2n``
        angles, ``n`` the edge after downsampling; convolutions wrap around the angle; the
        last features are kept where they lie along the angle, not averaged).
    confidence
        A second head: one more output per image, its raw variance (the last column; its
        softplus is the image's share of a pair's variance, :func:`pair_variances`), trained
        by :func:`confidence_loss`.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose {', '.join(ARCHITECTURES)}")
    if front not in FRONTS:
        raise ValueError(f"unknown front end {front!r}; choose {', '.join(FRONTS)}")
    spec = ARCHITECTURES[arch]
    inputs = keras.Input((image_size, image_size), name="images")
    x = keras.layers.Reshape((image_size, image_size, 1))(inputs)
    x = Standardize(name="standardize")(x)
    if input_size and input_size != image_size:
        x = AreaResize(input_size, name="downsample")(x)
    polar = front == "polar"
    if polar:
        edge = input_size or image_size
        x = PolarResample(edge // 2, 2 * edge, name="polar")(x)
    for k, (filters, kernel) in enumerate(zip(spec["filters"], spec["kernels"])):
        if polar:
            x = CircularPad(kernel // 2, name=f"wrap{k}")(x)
        x = keras.layers.Conv2D(max(4, int(filters * width)), kernel,
                                padding="valid" if polar else "same", activation="relu",
                                name=f"conv{k}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{k}")(x)
    if polar:
        x = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    outputs = keras.layers.Dense(feature_dim, name="features")(x)
    if confidence:
        variance = keras.layers.Dense(1, name="variance")(x)
        outputs = keras.layers.Concatenate(name="features_and_variance")([outputs, variance])
    return keras.Model(inputs, outputs, name="embedding")


def _arccos_distance(cosine: Any) -> Any:
    """``2·arccos|cos|``, the cosine clipped to ``[EPSILON, 1 − EPSILON]``."""
    return 2.0 * ops.arccos(ops.clip(ops.abs(cosine), EPSILON, 1.0 - EPSILON))


def pairwise_distances(features: Any) -> Any:
    """All distances ``(B, B)`` between the rows of ``features``: ``2·arccos|cos|``."""
    unit = ops.normalize(features, axis=-1, order=2, epsilon=_NORM_EPSILON)
    return _arccos_distance(ops.matmul(unit, ops.transpose(unit)))


def pair_weight_matrix(targets: Any, bins: int = 16, cap: float = 10.0) -> Any:
    """Dense :func:`uniform_pair_weights`: a ``(B, B)`` matrix, zero off the pairs ``i < j``.

    Fixed shapes only (no boolean masking), so it traces under every backend's
    compiler: the count of each pair's bin is a one-hot sum over the strict
    upper triangle.  A negative target (``training_data.UNPAIRED``: two images of
    different volumes in one batch) is no pair: weight zero, left out of the counts.
    Computed in the dtype of ``targets``.
    """
    targets = ops.convert_to_tensor(targets)
    mask = ops.triu(ops.ones_like(targets), k=1) * ops.cast(targets >= 0, targets.dtype)
    index = ops.clip(ops.cast(targets / np.pi * bins, "int32"), 0, bins - 1)
    one_hot = ops.one_hot(index, bins, dtype=targets.dtype) * ops.expand_dims(mask, -1)
    counts = ops.sum(one_hot, axis=(0, 1))
    floor = ops.sum(mask) / (bins * cap)
    weights = mask / ops.maximum(ops.take(counts, index), floor)
    return weights / ops.sum(weights)


def uniform_pair_weights(targets: Any, bins: int = 16, cap: float = 10.0) -> Any:
    """Weights of the pairs ``i < j`` that make the target distances uniform on ``[0, π]``.

    Each pair gets ``1 / (count of its bin)``, so every non-empty bin weighs
    the same; a bin with fewer than ``1/cap`` of the average count per bin is
    weighted as if it had that many (rare small distances would otherwise
    explode).  Returns ``(mask, weights)``: the boolean upper-triangle mask
    ``(B, B)`` and the weights of the masked pairs in row-major order
    (``np.triu_indices(B, 1)``), summing to 1.  ``B`` must be known (eager
    use); the training loss uses the dense :func:`pair_weight_matrix`.
    """
    weights = pair_weight_matrix(targets, bins, cap)
    size = int(ops.shape(weights)[0])
    upper = np.triu(np.ones((size, size), dtype=bool), k=1)
    return ops.convert_to_tensor(upper), ops.take(ops.reshape(weights, (-1,)),
                                                  np.flatnonzero(upper))


def horizon_residuals(targets: Any, distances: Any, horizon: float | None = None) -> Any:
    """The residuals the loss squares: ``d_p − d_q``, or a hinge beyond a ``horizon``.

    With ``horizon`` τ, a pair whose target ``d_q`` is at least τ only has to be
    estimated at τ or more: its residual is ``min(d_p − τ, 0)``.  Pairs within τ
    keep ``d_p − d_q``.  How far apart two distant views are is what a pair of
    images of an unseen protein cannot tell (``benchmarks/distance_horizon.py``);
    recovery from the pairs estimated within τ alone needs no more
    (``recovery.recover(max_distance=τ, far_weight=0)``).  ``None``: ``d_p − d_q``.
    """
    residuals = distances - targets
    if horizon is None:
        return residuals
    return ops.where(targets < horizon, residuals, ops.minimum(distances - horizon, 0.0))


def pair_variances(raw: Any) -> Any:
    """The variances ``(B, B)`` of the pairs of images whose raw variance outputs are ``raw``
    ``(B,)``: ``v_ij = s_i + s_j`` with ``s = softplus(raw) + VARIANCE_FLOOR`` (rad²)."""
    share = ops.softplus(raw) + VARIANCE_FLOOR
    return ops.expand_dims(share, 1) + ops.expand_dims(share, 0)


def confidence_loss(weights: Any, residuals: Any, variances: Any) -> Any:
    """The pairs' weighted Gaussian negative log-likelihood (twice it, less a constant):
    ``Σ w_ij (r_ij² / v_ij + log v_ij)``.  A pair the network calls uncertain costs less per
    squared radian of error and more for the uncertainty itself; the best ``v`` is ``r²``."""
    return ops.sum(weights * (ops.square(residuals) / variances + ops.log(variances)))


class InBatchModel(keras.Model):
    """Embeds a batch once and scores all its pairs against the target matrix ``(B, B)``.

    ``horizon``: see :func:`horizon_residuals` (``None``: every distance is fitted).
    ``confidence``: the embedding has the variance head (:func:`build_embedding`); the model
    then gives ``(2, B, B)``, the distances and the pairs' variances, and the loss is
    :func:`confidence_loss`.
    """

    def __init__(self, embedding: keras.Model, bins: int = 16, cap: float = 10.0,
                 horizon: float | None = None, confidence: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding = embedding
        self.bins = bins
        self.cap = cap
        self.horizon = horizon
        self.confidence = confidence

    def call(self, images: Any, training: bool = False) -> Any:
        outputs = self.embedding(images, training=training)
        if not self.confidence:
            return pairwise_distances(outputs)
        return ops.stack([pairwise_distances(outputs[:, :-1]), pair_variances(outputs[:, -1])])

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None,
                     sample_weight: Any = None, training: bool = True) -> Any:
        """Uniform-weighted mean squared error over the pairs of the batch (L_DE; with a
        horizon, :func:`horizon_residuals`'s; with confidence, :func:`confidence_loss`)."""
        distances = y_pred[0] if self.confidence else y_pred
        y = ops.cast(y, distances.dtype)
        weights = pair_weight_matrix(y, self.bins, self.cap)
        residuals = horizon_residuals(y, distances, self.horizon)
        if self.confidence:
            return devices.scale_loss(confidence_loss(weights, residuals, y_pred[1]))
        return devices.scale_loss(ops.sum(weights * ops.square(residuals)))

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        # Keras 3's TensorFlow trainer peeks at a batch with strategy.reduce, which
        # MultiWorkerMirroredStrategy refuses for (x, y) (keras-team/keras#20585); training.train()
        # builds the model first, so only the optimizer is left to build: skip the peek.
        if (iterator is not None and self.built and keras.backend.backend() == "tensorflow" and
                devices.strategy_name(self.distribute_strategy) == "multiworker"):
            iterator, data_batch = None, ()
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if keras.backend.backend() == "tensorflow" and devices.across_workers(
                self.distribute_strategy):  # Keras averages the logs along axis 0 (#20585)
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs


@keras.saving.register_keras_serializable(package="cryoem")
class CosineDistance(keras.layers.Layer):
    """``2·arccos|cos_sim(a, b)|`` row by row."""

    def call(self, a: Any, b: Any) -> Any:
        a = ops.normalize(a, axis=-1, order=2, epsilon=_NORM_EPSILON)
        b = ops.normalize(b, axis=-1, order=2, epsilon=_NORM_EPSILON)
        return _arccos_distance(ops.sum(a * b, axis=-1))


def per_pair_model(embedding: keras.Model) -> keras.Model:
    """The seed's Siamese model: two images in, one distance out (one pass per pair)."""
    size = embedding.input_shape[1]
    first = keras.Input((size, size), name="first")
    second = keras.Input((size, size), name="second")
    distance = CosineDistance(name="distance")(embedding(first), embedding(second))
    return keras.Model([first, second], distance, name="siamese_per_pair")


# ----------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------
def save_model(embedding: keras.Model, config: TrainingConfig,
               out_dir: str | os.PathLike) -> Path:
    """Save an embedding and its configuration as :func:`load_embedding` reads them.

    ``config`` is a :class:`cryoem.training.TrainingConfig` (written as ``config.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config.record())
    partial = out / ("partial-" + MODEL_FILE)
    embedding.save(partial)
    os.replace(partial, out / MODEL_FILE)
    return out


def load_embedding(model_dir: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """Load a trained embedding (safe mode) and its training configuration.

    ``model_dir`` may be ``"pretrained"`` (see :func:`model_directory`); the
    returned configuration then also holds the input ``contract``
    (:func:`write_contract`).
    """
    directory = model_directory(model_dir)
    config = read_config(directory)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}: train one with `cryoem train`")
    contract = read_contract(directory)
    if contract is not None:
        config["contract"] = contract
    embedding = keras.models.load_model(path, safe_mode=True, compile=False)
    return _portable(embedding), config


def _portable(embedding: keras.Model) -> keras.Model:
    """Swap ``Resizing(interpolation="area")`` (TensorFlow-only) for :class:`AreaResize`.

    Models saved before :class:`AreaResize` (the shipped ``pretrained`` one
    among them) downsample with Keras's ``Resizing``; under TensorFlow they
    are returned as loaded, under another backend cloned with the swap (same
    weights, same numbers).
    """
    area = {layer.name for layer in embedding.layers
            if isinstance(layer, keras.layers.Resizing) and layer.interpolation == "area"}
    if not area or keras.backend.backend() == "tensorflow":
        return embedding

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in area:
            if layer.height != layer.width:
                raise ValueError(f"{layer.name}: area resize to {layer.height}×{layer.width}, "
                                 "only square outputs can be converted")
            return AreaResize(layer.height, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    portable = keras.models.clone_model(embedding, clone_function=clone)
    portable.set_weights(embedding.get_weights())
    return portable
