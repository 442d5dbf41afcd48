"""The polar front end: resampling against SciPy, exact quarter turns, wrapped convolutions."""

import numpy as np
import pytest
import keras
from scipy import ndimage

from cryoem import polar, siamese


def test_polar_weights_interpolate_as_scipy_map_coordinates():
    size, radii, angles = 20, 10, 40
    image = np.random.default_rng(0).standard_normal((size, size))
    rows, cols = polar.polar_grid(size, radii, angles)
    expected = ndimage.map_coordinates(image, [rows.ravel(), cols.ravel()], order=1,
                                       mode="nearest")
    np.testing.assert_allclose(polar.polar_weights(size, radii, angles) @ image.ravel(),
                               expected, atol=1e-5)
    # The rings lie inside the box: the outermost reaches the edge pixels' centres.
    assert rows.min() >= -1e-9 and rows.max() <= size - 1 + 1e-9


def test_a_quarter_turn_is_a_circular_shift_of_the_polar_samples():
    size, radii, angles = 16, 8, 32
    images = np.random.default_rng(1).standard_normal((2, size, size, 1)).astype(np.float32)
    layer = polar.PolarResample(radii, angles)
    samples = np.asarray(layer(images))
    turned = np.asarray(layer(np.rot90(images, 1, axes=(1, 2)).copy()))
    assert samples.shape == (2, radii, angles, 1)
    np.testing.assert_allclose(turned, np.roll(samples, -angles // 4, axis=2), atol=1e-5)
    assert not np.allclose(turned, samples, atol=1e-2)


def test_circular_pad_wraps_the_angles_and_zero_pads_the_radii():
    x = np.arange(2 * 3 * 5 * 2, dtype=np.float32).reshape(2, 3, 5, 2)
    padded = np.asarray(polar.CircularPad(2)(x))
    expected = np.pad(np.pad(x, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="wrap"),
                      ((0, 0), (2, 2), (0, 0), (0, 0)))
    np.testing.assert_array_equal(padded, expected)


def test_the_polar_embedding_turns_with_the_image_and_survives_saving(tmp_path):
    size = 16
    embedding = siamese.build_embedding(size, arch="light", width=0.25, feature_dim=8,
                                        front="polar")
    images = np.random.default_rng(2).standard_normal((3, size, size)).astype(np.float32)
    first = keras.Model(embedding.input, embedding.get_layer("conv0").output)
    maps = np.asarray(first(images))
    turned = np.asarray(first(np.rot90(images, 1, axes=(1, 2)).copy()))
    assert maps.shape[1:3] == (size // 2, 2 * size)
    np.testing.assert_allclose(turned, np.roll(maps, -maps.shape[2] // 4, axis=2), atol=1e-4)
    features = np.asarray(embedding(images))
    path = tmp_path / "polar.keras"
    embedding.save(path)
    again = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again(images)), features, atol=1e-6)
    with pytest.raises(ValueError, match="front end"):
        siamese.build_embedding(size, front="spherical")
