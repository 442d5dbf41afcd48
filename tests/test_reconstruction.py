"""Phase 3: reconstruction, FSC and RELION files."""

import mrcfile
import numpy as np
import pytest
import starfile

from cryoem import (cli, datasets, projection, reconstruction, relion, resolution, rotations,
                    volumes)


@pytest.fixture(scope="module")
def phantom():
    return volumes.resolve("phantom", 32)


# ---------------------------------------------------------------- reconstruction
def test_many_exact_projections_recover_a_band_limited_phantom(phantom):
    q = rotations.sample_uniform(1500, seed=0)
    images = projection.project(phantom.data, q)
    result = reconstruction.reconstruct(images, q, regularization=1e-6, iterations=40)
    curve = resolution.fsc(result.data, phantom.data)
    assert np.all(curve.values[curve.shells <= 0.8 * 16] > 0.9)
    assert np.corrcoef(result.data.ravel(), phantom.data.ravel())[0, 1] > 0.999
    assert result.residuals[-1] < result.residuals[0]


def test_shifts_and_ctf_are_undone(phantom):
    q = rotations.sample_uniform(1500, seed=1)
    shifts = projection.sample_shifts(1500, 3.0, seed=2)
    ctf = projection.sample_ctf(1500, defocus_range=(8000, 15000), seed=3)
    images = projection.project(phantom.data, q, shifts=shifts, ctf=ctf, pixel_size=3.0)
    corrected = reconstruction.reconstruct(images, q, shifts=shifts, ctf=ctf, pixel_size=3.0,
                                           iterations=40, regularization=1e-3)
    ignored = reconstruction.reconstruct(images, q, pixel_size=3.0, iterations=40)
    good = np.corrcoef(corrected.data.ravel(), phantom.data.ravel())[0, 1]
    bad = np.corrcoef(ignored.data.ravel(), phantom.data.ravel())[0, 1]
    assert good > 0.99 and bad < 0.95


def test_symmetric_reconstruction_uses_every_mate_and_comes_out_symmetric():
    """A C2 phantom seen only along directions with d_x·d_z > 0.1: frequencies near (1, 0, 1)
    are never measured, but the two-fold about z turns those views into the missing ones."""
    c2 = volumes.resolve("phantom:C2", 32)
    q = rotations.sample_uniform(3000, seed=8)
    d = rotations.viewing_direction(q)
    q = q[d[:, 0] * d[:, 2] > 0.1]
    images = projection.project(c2.data, q)
    plain = reconstruction.reconstruct(images, q, iterations=40)
    symmetric = reconstruction.reconstruct(images, q, iterations=40, symmetry="C2")
    mates = rotations.multiply(q, rotations.point_group("C2")[1])
    explicit = reconstruction.reconstruct(np.concatenate([images, images]),
                                          np.concatenate([q, mates]), iterations=40)
    np.testing.assert_allclose(symmetric.data, explicit.data, atol=1e-4 * np.abs(explicit.data).max())
    turned = np.rot90(symmetric.data, 2, axes=(1, 2))  # C2 about z on [z, y, x], origin L//2
    turned = np.roll(turned, (1, 1), axis=(1, 2))
    assert np.corrcoef(turned.ravel(), symmetric.data.ravel())[0, 1] > 0.999
    better = resolution.fsc(symmetric.data, c2.data).resolution(0.5)
    worse = resolution.fsc(plain.data, c2.data).resolution(0.5)
    assert better < worse


@pytest.mark.parametrize("size", [5, 6])
def test_the_normal_operator_is_the_kernels_linear_convolution(size):
    """``(AᴴWA + λ) x`` from the kernel on the (2L)³ grid (its centre at index L): the linear
    convolution of the map with the kernel, cropped, by SciPy's fftconvolve."""
    from scipy import fft, signal

    rng = np.random.default_rng(size)
    kernel = rng.standard_normal((2 * size,) * 3)
    x = rng.standard_normal((size,) * 3)
    operator = reconstruction._Normal(fft.rfftn(np.fft.ifftshift(kernel)), size, 0.5)
    full = signal.fftconvolve(kernel, x)  # full[p] = Σ_m kernel[p - m] x[m]
    expected = full[size:2 * size, size:2 * size, size:2 * size] + 0.5 * x
    np.testing.assert_allclose(operator(x), expected, atol=1e-10)


def test_adjoint_matches_a_direct_sum_and_reruns_bit_for_bit():
    """The type-1 NUFFT in chunks (several threads when the machine has them)
    equals the direct sum, and gives the same bits every time (finufft's own
    threads do not: they add in a varying order)."""
    rng = np.random.default_rng(4)
    points = rng.uniform(-np.pi, np.pi, (3 * 2**18, 3))
    values = rng.standard_normal(len(points)) + 1j * rng.standard_normal(len(points))
    grid = np.arange(-2, 2)
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    direct = np.real(np.exp(1j * (np.outer(x.ravel(), points[:, 0])
                                  + np.outer(y.ravel(), points[:, 1])
                                  + np.outer(z.ravel(), points[:, 2]))) @ values)
    first = reconstruction._adjoint(points, values, (4, 4, 4))
    # Within finufft's requested tolerance (relative to the largest value).
    np.testing.assert_allclose(first.ravel(), direct, rtol=0,
                               atol=reconstruction._ADJOINT_EPS * np.abs(direct).max())
    for _ in range(3):
        assert np.array_equal(reconstruction._adjoint(points, values, (4, 4, 4)), first)


def test_random_orientations_give_a_poor_map(phantom):
    q = rotations.sample_uniform(800, seed=4)
    images = projection.project(phantom.data, q)
    random = reconstruction.reconstruct(images, rotations.sample_uniform(800, seed=5))
    curve = resolution.fsc(random.data, phantom.data)
    assert curve.resolution(0.5) > 4 * 2.0  # far from Nyquist (2 px)


def test_maps_leaving_a_group_out_are_the_maps_of_the_other_images(phantom):
    q = rotations.sample_uniform(600, seed=11)
    shifts = projection.sample_shifts(600, 2.0, seed=12)
    ctf = projection.sample_ctf(600, defocus_range=(8000, 15000), seed=13)
    images = projection.project(phantom.data, q, shifts=shifts, ctf=ctf, pixel_size=3.0)
    noisy, _ = projection.add_noise(images, 1.0, seed=14)
    groups = np.arange(600) % 3
    options = dict(pixel_size=3.0, iterations=15)
    whole, without = reconstruction.leave_group_out(noisy, q, groups, shifts=shifts, ctf=ctf,
                                                    **options)
    assert len(without) == 3
    all_images = reconstruction.reconstruct(noisy, q, shifts=shifts, ctf=ctf, **options)
    np.testing.assert_allclose(whole.data, all_images.data, atol=1e-4 * np.abs(whole.data).max())
    for g, left in enumerate(without):
        kept = groups != g
        direct = reconstruction.reconstruct(noisy[kept], q[kept], shifts=shifts[kept],
                                            ctf=ctf[kept], **options)
        np.testing.assert_allclose(left.data, direct.data, atol=1e-4 * np.abs(direct.data).max())
        # Without its own images, a group's noise is not in the map: the map differs from
        # the whole one.
        assert np.abs(left.data - whole.data).max() > 1e-2 * np.abs(whole.data).max()
    with pytest.raises(ValueError, match="group 1 of 3 holds no image"):
        reconstruction.leave_group_out(noisy, q, np.where(groups == 1, 2, groups))
    # Weighted (an image entered once per candidate orientation): the same sums, weighted.
    weights = np.random.default_rng(15).uniform(0.1, 1.0, 600)
    _, weighted = reconstruction.leave_group_out(noisy, q, groups, shifts=shifts, ctf=ctf,
                                                 weights=weights, **options)
    kept = groups != 0
    direct = reconstruction.reconstruct(noisy[kept], q[kept], shifts=shifts[kept],
                                        ctf=ctf[kept], weights=weights[kept], **options)
    np.testing.assert_allclose(weighted[0].data, direct.data,
                               atol=1e-4 * np.abs(direct.data).max())
    assert np.abs(weighted[0].data - without[0].data).max() > 1e-2 * np.abs(direct.data).max()


def test_half_maps_are_disjoint_and_agree(phantom):
    q = rotations.sample_uniform(1200, seed=6)
    images = projection.project(phantom.data, q)
    noisy, _ = projection.add_noise(images, 1.0, seed=7)
    first, second, halves = reconstruction.half_maps(noisy, q, iterations=15)
    assert set(np.unique(halves)) == {0, 1} and abs(np.sum(halves == 0) - 600) <= 1
    curve = resolution.fsc(first.data, second.data, mask=True)
    assert curve.values[0] > 0.9 and curve.values[-1] < curve.values[0]


def test_reconstruction_errors_and_astra(phantom):
    with pytest.raises(ValueError):
        reconstruction.reconstruct(np.zeros((3, 8, 8)), rotations.sample_uniform(2, seed=0))
    with pytest.raises(ValueError):
        reconstruction.reconstruct(np.zeros((3, 8, 9)), rotations.sample_uniform(3, seed=0))
    try:
        import astra
        cuda = astra.use_cuda()
    except ImportError:
        cuda = False
    if not cuda:
        with pytest.raises(RuntimeError, match="CUDA"):
            reconstruction.reconstruct(np.zeros((3, 8, 8)), rotations.sample_uniform(3, seed=0),
                                       backend="astra")


# ---------------------------------------------------------------- FSC
def test_fsc_of_a_map_with_itself_is_one(phantom):
    curve = resolution.fsc(phantom.data, phantom.data, pixel_size=2.0)
    np.testing.assert_allclose(curve.values, 1.0, atol=1e-9)
    assert curve.resolution(0.5) == pytest.approx(4.0)  # Nyquist: 2 × pixel size
    np.testing.assert_allclose(curve.frequencies[-1], 1 / 4.0)


def test_fsc_with_noise_follows_the_snr():
    """Two maps = signal + independent white noise: FSC ≈ S/(S+N) per shell, analytically."""
    rng = np.random.default_rng(0)
    size = 48
    signal = rng.standard_normal((size,) * 3)  # white signal: flat spectrum
    for snr in (4.0, 1.0, 0.25):
        noise = 1 / np.sqrt(snr)
        a = signal + noise * rng.standard_normal(signal.shape)
        b = signal + noise * rng.standard_normal(signal.shape)
        curve = resolution.fsc(a, b)
        expected = snr / (snr + 1)
        assert np.mean(curve.values[5:]) == pytest.approx(expected, abs=0.02)


def test_fsc_resolution_threshold_crossing():
    curve = resolution.FSC(np.arange(1.0, 11.0), np.linspace(1.0, 0.1, 10), pixel_size=1.5,
                           size=20)
    # values: 1.0, 0.9, ..., 0.1 at shells 1..10; 0.5 is crossed at shell 6.
    assert curve.resolution(0.5) == pytest.approx(20 * 1.5 / 6.0)
    flat = resolution.FSC(np.arange(1.0, 11.0), np.full(10, 0.05), 1.0, 20)
    assert flat.resolution(0.143) == np.inf


def test_masked_fsc_removes_the_mask_correlation():
    """Independent noise maps: the mask alone makes them correlate; the correction removes it."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 40, 40, 40))
    smooth = volumes.gaussian_blobs(40, [[0, 0, 0]], [30.0], 6.0)
    corrected = resolution.fsc(a + smooth, b + smooth, mask=True, mask_radius=10)
    assert np.mean(np.abs(corrected.values[8:])) < 0.1
    with pytest.raises(ValueError):
        resolution.fsc(np.zeros((4, 4, 4)), np.zeros((5, 5, 5)))


# ---------------------------------------------------------------- RELION
@pytest.fixture(scope="module")
def chiral_dataset(tmp_path_factory):
    """A chiral phantom dataset with shifts and a CTF."""
    path = tmp_path_factory.mktemp("relion") / "set.h5"
    vol = volumes.gaussian_phantom(24, n_blobs=5, sigma=1.5, seed=9)
    vol.voxel_size = 2.0
    datasets.generate(vol, 12, path, max_shift=2.0, ctf=True, seed=4)
    return datasets.load(path)


def test_relion_round_trip(chiral_dataset, tmp_path):
    star = relion.export_relion(chiral_dataset, tmp_path / "out")
    back = datasets.load(relion.import_relion(star, tmp_path / "back.h5", normalize=False))
    np.testing.assert_allclose(back.projections, chiral_dataset.projections, atol=1e-6)
    np.testing.assert_allclose(rotations.geodesic_distance(back.orientations,
                                                           chiral_dataset.orientations), 0,
                               atol=1e-6)
    np.testing.assert_allclose(back.shifts, chiral_dataset.shifts, atol=1e-5)
    np.testing.assert_allclose(back.ctf.as_array(), chiral_dataset.ctf.as_array(), atol=1e-4)
    assert back.pixel_size == pytest.approx(2.0) and back.volume is None
    with mrcfile.open(tmp_path / "out" / "particles.mrcs") as mrc:
        assert mrc.is_image_stack() and mrc.voxel_size.x == pytest.approx(2.0)


def test_relion_hand_worked_conventions(chiral_dataset, tmp_path):
    """rot=0, tilt=90°, psi=0 views along x; a +dx shift is rlnOriginXAngst = −dx·pixel."""
    vol = chiral_dataset.volume
    q = rotations.euler_to_quaternion([[0.0, 90.0, 0.0]])
    image = projection.project(vol, q, shifts=[[2.0, -1.0]])
    data = datasets.Dataset(image, q, np.array([[2.0, -1.0]]), vol,
                            {"train": np.arange(1), "validation": np.arange(0),
                             "test": np.arange(0)}, {"pixel_size": 2.0, "size": 24})
    star = relion.export_relion(data, tmp_path)
    table = starfile.read(star)["particles"]
    assert table["rlnAngleTilt"][0] == pytest.approx(90.0)
    assert table["rlnAngleRot"][0] == pytest.approx(0.0, abs=1e-9)
    assert table["rlnOriginXAngst"][0] == pytest.approx(-4.0)
    assert table["rlnOriginYAngst"][0] == pytest.approx(2.0)
    # The stored image is the volume summed along x (image x = −z, image y = y), shifted.
    summed = vol.sum(axis=2)
    expected = np.roll(np.roll(summed[::-1], 1, axis=0).T, (-1, 2), axis=(0, 1))
    with mrcfile.open(tmp_path / "particles.mrcs") as mrc:
        np.testing.assert_allclose(mrc.data.reshape(-1, 24, 24)[0], expected,
                                   atol=1e-3 * expected.max())


def test_import_resamples_for_a_model(chiral_dataset, tmp_path):
    star = relion.export_relion(chiral_dataset, tmp_path / "out")
    imported = datasets.load(relion.import_relion(star, tmp_path / "small.h5", size=16))
    assert imported.projections.shape == (12, 16, 16)
    assert imported.pixel_size == pytest.approx(3.0)
    assert abs(imported.projections.mean()) < 1e-5 and imported.projections.std() == \
        pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(imported.shifts, chiral_dataset.shifts * 16 / 24, atol=1e-5)
    # ... or to the size a model expects, read from its configuration.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"image_size": 20}')
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "m.h5"),
                     "--model", str(model)]) == 0
    assert datasets.load(tmp_path / "m.h5").projections.shape == (12, 20, 20)


def test_relion_errors(chiral_dataset, tmp_path):
    with pytest.raises(FileNotFoundError):
        relion.import_relion(tmp_path / "none.star", tmp_path / "x.h5")
    star = relion.export_relion(chiral_dataset, tmp_path / "a")
    with pytest.raises(FileExistsError):
        relion.export_relion(chiral_dataset, tmp_path / "a")
    (tmp_path / "a" / "particles.mrcs").unlink()
    with pytest.raises(FileNotFoundError, match="stack"):
        relion.import_relion(star, tmp_path / "x.h5")


def test_reconstruct_and_relion_commands(tmp_path, capsys):
    data = tmp_path / "d.h5"
    assert cli.main(["generate", "--volume", "phantom", "--size", "24", "--n-projections", "600",
                     "--out", str(data), "--no-figure", "--quiet"]) == 0
    out = tmp_path / "map.mrc"
    assert cli.main(["reconstruct", str(data), "--out", str(out), "--half-maps", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "FSC 0.5" in text and "0.143" in text and "oracle" in text
    assert volumes.load_map(out).data.shape == (24, 24, 24)
    assert (tmp_path / "map_half1.mrc").exists() and (tmp_path / "map_half2.mrc").exists()
    assert cli.main(["export-relion", str(data), "--out", str(tmp_path / "r")]) == 0
    assert cli.main(["import-relion", str(tmp_path / "r" / "particles.star"), "--out",
                     str(tmp_path / "i.h5")]) == 0
    assert len(datasets.load(tmp_path / "i.h5", images=False)) == 600


def test_regularization_tames_noise(phantom):
    """λ is relative to the normal operator's diagonal: order 1 must visibly damp the noise."""
    q = rotations.sample_uniform(800, seed=8)
    noisy, _ = projection.add_noise(projection.project(phantom.data, q), 1 / 16, seed=9)
    weak = reconstruction.reconstruct(noisy, q, regularization=1e-6).data
    strong = reconstruction.reconstruct(noisy, q, regularization=1.0).data
    corr = [np.corrcoef(m.ravel(), phantom.data.ravel())[0, 1] for m in (weak, strong)]
    assert corr[1] > corr[0] + 0.2
