"""A polar front end for the embedding: images resampled on rings, convolved around them.

An in-plane rotation of an image about its centre is a circular shift of its polar
samples along the angle; with convolutions that wrap around the angle
(:class:`CircularPad` before a ``valid`` convolution) the first layers treat every
in-plane angle alike.  The embedding keeps where along the angle its features lie
(it does not average them away): an in-plane turn changes the true distance
(``d_q(R_z(α)·R, R) = α``), so the features must see it.

* :func:`polar_weights` — the bilinear resampling matrix from a square image to
  ``(radii, angles)`` samples; :class:`PolarResample` applies it (``keras.ops`` only).
* :class:`CircularPad` — wraps the angle axis, zero-pads the radius axis.

Written by hand: Keras has no polar resampling nor circular padding, and a fixed matrix
(as :class:`cryoem.siamese.AreaResize`) runs on every backend.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import NDArray

__all__ = ["polar_grid", "polar_weights", "PolarResample", "CircularPad"]


def polar_grid(size: int, radii: int, angles: int) -> tuple[NDArray[np.float64], ...]:
    """Row and column coordinates ``(radii, angles)`` of the polar samples of a ``size``² image.

    Rings at ``(k + ½)·(size/2)/radii`` pixels from the box's centre ``((size − 1)/2,
    (size − 1)/2)``, ``angles`` samples each from angle 0 (along the columns) turning
    towards the rows.
    """
    centre = (size - 1) / 2
    r = (np.arange(radii) + 0.5) * (size / 2) / radii
    theta = 2 * np.pi * np.arange(angles) / angles
    return centre + r[:, None] * np.sin(theta), centre + r[:, None] * np.cos(theta)


def polar_weights(size: int, radii: int, angles: int) -> NDArray[np.float32]:
    """``(radii·angles, size²)`` bilinear interpolation matrix onto :func:`polar_grid`.

    Samples outside the pixel centres' square are interpolated from the nearest edge
    pixels (the outermost ring reaches ``size/2 − size/(4·radii)`` from the centre).
    """
    rows, cols = (np.clip(c.ravel(), 0, size - 1) for c in polar_grid(size, radii, angles))
    r0 = np.minimum(np.floor(rows).astype(int), size - 2)
    c0 = np.minimum(np.floor(cols).astype(int), size - 2)
    fr, fc = rows - r0, cols - c0
    matrix = np.zeros((rows.size, size * size))
    index = np.arange(rows.size)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(matrix, (index, (r0 + dr) * size + c0 + dc), weight)
    return matrix.astype(np.float32)


@keras.saving.register_keras_serializable(package="cryoem")
class PolarResample(keras.layers.Layer):
    """Images ``(B, H, H, C)`` → polar samples ``(B, radii, angles, C)`` (:func:`polar_weights`)."""

    def __init__(self, radii: int, angles: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.radii, self.angles = int(radii), int(angles)

    def call(self, images: Any) -> Any:
        size = images.shape[1]
        weights = ops.convert_to_tensor(polar_weights(size, self.radii, self.angles),
                                        images.dtype)
        flat = ops.reshape(images, (-1, size * size, images.shape[3]))
        samples = ops.einsum("pq,bqc->bpc", weights, flat)
        return ops.reshape(samples, (-1, self.radii, self.angles, images.shape[3]))

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], self.radii, self.angles, input_shape[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "radii": self.radii, "angles": self.angles}


@keras.saving.register_keras_serializable(package="cryoem")
class CircularPad(keras.layers.Layer):
    """Pads ``(B, radii, angles, C)`` by ``pad``: wrapped along the angles, zeros along the radii.

    A ``valid`` convolution of odd kernel ``2·pad + 1`` after it keeps the shape and
    is equivariant to circular shifts along the angles.
    """

    def __init__(self, pad: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pad = int(pad)

    def call(self, x: Any) -> Any:
        p = self.pad
        if p == 0:
            return x
        x = ops.concatenate([x[:, :, -p:], x, x[:, :, :p]], axis=2)
        return ops.pad(x, ((0, 0), (p, p), (0, 0), (0, 0)))

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        batch, radii, angles, channels = input_shape
        grow = (lambda n: None if n is None else n + 2 * self.pad)
        return (batch, grow(radii), grow(angles), channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad}
