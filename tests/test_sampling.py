"""Distributions of orientations (rotations.sample_uniform, cryoem.sampling), checked by KS
tests against their analytic laws."""

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from cryoem import rotations as rot
from cryoem import sampling


def haar_angle_cdf(theta):
    """CDF of the rotation angle of a Haar-random rotation: (θ - sin θ)/π."""
    return (theta - np.sin(theta)) / np.pi


def test_uniform_sampling_is_haar():
    q = rot.sample_uniform(20000, seed=0)
    angles = Rotation.from_quat(np.roll(q, -1, axis=1)).magnitude()
    assert stats.kstest(angles, haar_angle_cdf).pvalue > 1e-3
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
    # The mean of Haar-random matrices is zero.
    assert np.abs(rot.quaternion_to_matrix(q).mean(axis=0)).max() < 0.03


def test_sampling_is_deterministic():
    np.testing.assert_array_equal(rot.sample_uniform(10, seed=7), rot.sample_uniform(10, seed=7))
    assert not np.array_equal(rot.sample_uniform(10, seed=7), rot.sample_uniform(10, seed=8))


def test_euler_haar_full_range_is_haar():
    q = sampling.sample_euler_ranges(20000, seed=1)
    angles = Rotation.from_quat(np.roll(q, -1, axis=1)).magnitude()
    assert stats.kstest(angles, haar_angle_cdf).pvalue > 1e-3


def test_euler_ranges_are_respected():
    q = sampling.sample_euler_ranges(2000, rot=(0, 30), tilt=(40, 60), psi=(-10, 10), seed=2)
    angles = rot.quaternion_to_euler(q)
    assert np.all((angles[:, 0] >= -1e-6) & (angles[:, 0] <= 30 + 1e-6))
    assert np.all((angles[:, 1] >= 40 - 1e-6) & (angles[:, 1] <= 60 + 1e-6))
    assert np.all(np.abs(angles[:, 2]) <= 10 + 1e-6)
    # Haar within the range: cos(tilt) is uniform.
    cos_tilt = np.cos(np.deg2rad(angles[:, 1]))
    low, high = np.cos(np.deg2rad(60)), np.cos(np.deg2rad(40))
    assert stats.kstest(cos_tilt, stats.uniform(low, high - low).cdf).pvalue > 1e-3
    for bad in ({"tilt": (0, 200)}, {"rot": (30, 10)}, {"psi": (-400, 0)}):
        with pytest.raises(ValueError, match="range"):
            sampling.sample_euler_ranges(3, **bad)
        with pytest.raises(ValueError, match="range"):
            sampling.sample_uniform_angles(3, **bad)


def test_uniform_angles_are_uniform_in_tilt():
    angles = rot.quaternion_to_euler(sampling.sample_uniform_angles(5000, seed=3))
    assert stats.kstest(angles[:, 1], stats.uniform(0, 180).cdf).pvalue > 1e-3


def test_preferred_view_concentrates():
    direction = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    q = sampling.sample_preferred_view(4000, direction=direction, concentration=50, fraction=0.5,
                                       seed=4)
    cosines = rot.viewing_direction(q) @ direction
    near = np.mean(cosines > np.cos(np.deg2rad(25)))
    # Half are within ~8° (1/sqrt(50) rad); uniform views are within 25° only 4.7% of the time.
    assert 0.5 < near < 0.6
    with pytest.raises(ValueError):
        sampling.sample_preferred_view(3, fraction=2)


def test_sample_dispatch():
    assert sampling.sample(5, "preferred", seed=0).shape == (5, 4)
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sampling.sample(5, "nope")
