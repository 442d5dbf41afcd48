"""Resolving the frame that distances cannot see, from the images' common lines."""

import numpy as np
import pytest

from cryoem import alignment, commonlines, projection, recovery, rotations, spectral, volumes


@pytest.fixture(scope="module")
def views():
    """Projections of an asymmetric (chiral) phantom and their true orientations."""
    phantom = volumes.gaussian_phantom(32, n_blobs=8, sigma=1.8, seed=4)
    q = rotations.sample_uniform(250, seed=1)
    return projection.project(phantom.data, q), q


def scrambled(q, seed, transposed):
    """What recovery from distances may return: B·f(R_i)·A with f the identity or transpose."""
    b, a = rotations.sample_uniform(2, seed=seed)
    base = rotations.conjugate(q) if transposed else q
    return rotations.multiply(rotations.multiply(b, base), a)


@pytest.mark.parametrize("seed, transposed", [(3, False), (4, True)])
def test_exact_orientations_up_to_o4_are_resolved(views, seed, transposed):
    images, q = views
    recovered = scrambled(q, seed, transposed)
    assert alignment.align_o4(recovered, q).mean < 1e-6
    assert alignment.align_physical(recovered, q).mean > 0.3  # wrong for reconstruction
    result = commonlines.resolve_frame(images, recovered, seed=seed)
    assert alignment.align_physical(result.quaternions, q).mean < 0.01
    assert result.transposed == transposed
    assert result.distinguishable and result.score > 0.9


def test_low_snr_still_picks_the_right_frame(views):
    images, q = views
    noisy, _ = projection.add_noise(images, 1 / 16, seed=2)
    estimate = spectral.spectral_initialization(rotations.geodesic_distance_matrix(q))[0]
    clean = commonlines.resolve_frame(images, estimate)
    result = commonlines.resolve_frame(noisy, estimate)
    # The right (C, branch): same branch, C within the noise of the clean choice or its twin
    # (a wrong choice is off by a radian or more); precision is limited by 250 noisy images.
    assert result.transposed == clean.transposed
    twin = rotations.multiply(rotations.axis_angle_to_quaternion([0, 0, 1], np.pi),
                              clean.rotation)
    off = min(rotations.geodesic_distance(result.rotation, clean.rotation),
              rotations.geodesic_distance(result.rotation, twin))
    assert off < 0.25
    assert alignment.align_physical(result.quaternions, q).mean < 0.25
    assert result.confidence > 5


def test_the_handedness_twin_scores_the_same(views):
    """R_i -> R_z(π)·R_i is the mirror image up to A: the score cannot tell them apart."""
    images, q = views
    lines = commonlines.fourier_lines(images)
    matrices = rotations.quaternion_to_matrix(q)
    i, j = np.arange(0, 200), np.arange(50, 250)
    identity = np.array([[1.0, 0, 0, 0]])
    twin = rotations.axis_angle_to_quaternion([0, 0, 1], np.pi)[None]
    other = rotations.axis_angle_to_quaternion([1, 0, 0], 0.7)[None]
    scores = [commonlines.score_candidates(lines, matrices, i, j, c, False)[0]
              for c in (identity, twin, other)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and scores[0] > 0.95
    assert scores[2] < scores[0] - 0.1


@pytest.mark.parametrize("transposed", [False, True])
def test_the_coarse_scan_is_every_candidates_mean_line_correlation(transposed, monkeypatch):
    """Each (axis, turn) score is, by its definition, the mean over pairs of the correlation
    between the lines nearest the common line's angles (both shifted by the turn): a direct
    loop over candidates and pairs, with the scan forced into several chunks of pairs."""
    rng = np.random.default_rng(3)
    n, n_angles, n_radii = 12, 10, 4
    lines = rng.standard_normal((n, n_angles, n_radii)) + 1j * rng.standard_normal(
        (n, n_angles, n_radii))
    matrices = rotations.quaternion_to_matrix(rotations.sample_uniform(n, seed=4))
    pairs_i, pairs_j = commonlines._random_pairs(n, 25, rng)
    axes = commonlines._axis_grid(7)
    monkeypatch.setattr(commonlines, "_GATHERED_PER_CHUNK", 7 * n_angles * 6)  # 6 pairs a step
    scores = commonlines._coarse_scan(lines, matrices, pairs_i, pairs_j, axes, transposed, False)
    base = np.swapaxes(matrices, -1, -2) if transposed else matrices
    expected = np.zeros((len(axes), n_angles))
    for a, axis in enumerate(axes):
        c = commonlines._frames(axis[None])[0]
        for s in range(n_angles):
            total = 0.0
            for i, j in zip(pairs_i, pairs_j):
                rot_i, rot_j = c @ base[i], c @ base[j]
                line = np.cross(rot_i[2], rot_j[2])  # the common line, in the volume's frame
                angle_i = np.arctan2(*(rot_i @ line)[1::-1])
                angle_j = np.arctan2(*(rot_j @ line)[1::-1])
                k_i = int(np.rint(np.mod(angle_i, 2 * np.pi) / (2 * np.pi) * n_angles))
                k_j = int(np.rint(np.mod(angle_j, 2 * np.pi) / (2 * np.pi) * n_angles))
                total += np.real(np.vdot(lines[j, (k_j + s) % n_angles],
                                         lines[i, (k_i + s) % n_angles]))
            expected[a, s] = total / len(pairs_i)
    np.testing.assert_allclose(scores, expected, atol=1e-12)


def test_fourier_lines_are_central_sections(views):
    """Line at angle 0 = 1D Fourier transform of the image summed along y (2D slice theorem)."""
    images, _ = views
    radii = np.arange(1, 9)
    lines = commonlines.fourier_lines(images[:3], n_angles=4, radii=radii)
    profile = images[:3].sum(axis=1)  # integrate over y: function of x
    x = np.arange(32) - 16
    expected = np.exp(-2j * np.pi * radii[:, None] * x[None, :] / 32) @ profile.T  # (R, 3)
    expected = (expected / np.linalg.norm(expected, axis=0)).T
    np.testing.assert_allclose(lines[:, 0, :], expected, atol=1e-6)
    # Angle π is the conjugate line (real images).
    np.testing.assert_allclose(lines[:, 2, :], np.conj(lines[:, 0, :]), atol=1e-6)


def test_bad_inputs(views):
    images, q = views
    with pytest.raises(ValueError):
        commonlines.resolve_frame(images[:5], q[:4])
    with pytest.raises(ValueError):
        commonlines.resolve_frame(images[:2], q[:2])


def test_recover_command_resolves_the_frame_by_default(tmp_path, capsys):
    from cryoem import cli, datasets

    data = tmp_path / "d.h5"
    datasets.generate(volumes.gaussian_phantom(24, n_blobs=8, sigma=1.5, seed=2), 300, data,
                      seed=1)
    out = tmp_path / "o.h5"
    assert cli.main(["recover", str(data), "--estimator", "exact", "--out", str(out),
                     "--quiet", "--steps", "50"]) == 0
    text = capsys.readouterr().out
    assert "handedness" in text and "common lines" in text
    q, indices, attrs = recovery.load_orientations(out)
    assert len(q) == len(indices) == len(datasets.load(data, images=False).split["test"])
    assert attrs["e_or_o4_rad"] < 1e-3 and attrs["e_or_rad"] < 0.02
    assert attrs["e_or_before_frame_rad"] > 0.3 and attrs["frame_resolved"]
    plain = tmp_path / "plain.h5"
    assert cli.main(["recover", str(data), "--estimator", "exact", "--out", str(plain),
                     "--quiet", "--steps", "0", "--no-resolve-frame"]) == 0
    assert not recovery.load_orientations(plain)[2]["frame_resolved"]
