"""cryoem.projection against analytic projections, real-space sums and SciPy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cryoem import projection, rotations, volumes


def analytic_blob_images(centers, amplitudes, sigma, matrices, size):
    """A 3D Gaussian of width σ projects to a 2D Gaussian of the same width at (R c)_xy."""
    axis = np.arange(size) - size // 2
    u, v = np.meshgrid(axis, axis)  # u along columns (x), v along rows (y)
    moved = np.einsum("nij,bj->nbi", matrices, centers)
    images = np.zeros((len(matrices), size, size))
    for b, a in enumerate(amplitudes):
        du = u[None] - moved[:, b, 0, None, None]
        dv = v[None] - moved[:, b, 1, None, None]
        images += a * np.sqrt(2 * np.pi) * sigma * np.exp(-(du**2 + dv**2) / (2 * sigma**2))
    return images


@pytest.fixture(scope="module")
def phantom():
    # Blobs within 8 voxels of the centre: their tails (6σ) stay inside the box.
    return volumes.gaussian_phantom(40, n_blobs=5, sigma=2.0, radius=8.0, seed=3)


@pytest.mark.parametrize("precision, tolerance", [("double", 1e-6), ("single", 1e-4)])
def test_gaussian_blobs_match_analytic_projections(phantom, precision, tolerance):
    q = rotations.sample_uniform(25, seed=11)
    images = projection.project(phantom.data.astype(np.float64), q, precision=precision)
    blobs = phantom.metadata["blobs"]
    expected = analytic_blob_images(blobs["centers"], blobs["amplitudes"], blobs["sigma"],
                                    rotations.quaternion_to_matrix(q), phantom.size)
    assert images.dtype == np.float32
    assert np.abs(images - expected).max() < tolerance * np.abs(expected).max()


@settings(max_examples=15, deadline=None)
@given(st.integers(15, 33), st.integers(0, 10_000))
def test_identity_is_the_sum_along_z(size, seed):
    """Odd and even sizes; a smooth random volume inside the inscribed sphere."""
    rng = np.random.default_rng(seed)
    vol = rng.standard_normal((size,) * 3) * volumes.spherical_mask(size)
    # An exact Gaussian filter in Fourier space: smooth and periodic, so band-limited.
    vol = np.real(np.fft.ifftn(ndimage.fourier_gaussian(np.fft.fftn(vol), 2.0)))
    image = projection.project(vol, [[1.0, 0, 0, 0]], precision="double")[0]
    # Only the frequencies outside the Nyquist disk are dropped: tiny for a smooth map.
    np.testing.assert_allclose(image, vol.sum(axis=0), atol=1e-6 * np.abs(vol.sum(0)).max())


def test_tilt_90_is_the_sum_along_x(phantom):
    """rot = 0, tilt = 90°, psi = 0: image x = -volume z, image y = volume y."""
    image = projection.project(phantom.data, rotations.euler_to_quaternion([[0, 90, 0]]),
                               precision="double")[0]
    summed = phantom.data.sum(axis=2)  # indexed [z, y]
    expected = np.roll(summed[::-1], 1, axis=0).T  # z -> -z about index L // 2, then [y, -z]
    np.testing.assert_allclose(image, expected, atol=1e-5 * np.abs(expected).max())


def test_matches_scipy_rotation_loosely():
    """Rotate with scipy.ndimage about the FFT centre, sum along z, compare."""
    vol = volumes.gaussian_phantom(48, n_blobs=8, sigma=2.5, seed=5).data.astype(np.float64)
    q = rotations.sample_uniform(3, seed=6)
    images = projection.project(vol, q, precision="double")
    centre = np.full(3, 48 // 2)
    for matrix, image in zip(rotations.quaternion_to_matrix(q), images):
        # Output voxel r (x, y, z) takes the input at Rᵀ r; ndimage works in (z, y, x).
        flip = np.eye(3)[::-1]
        inverse_zyx = flip @ matrix.T @ flip
        rotated = ndimage.affine_transform(vol, inverse_zyx, offset=centre - inverse_zyx @ centre,
                                           order=3)
        reference = rotated.sum(axis=0)
        correlation = np.corrcoef(image.ravel(), reference.ravel())[0, 1]
        assert correlation > 0.999
        assert np.abs(image - reference).max() < 0.02 * reference.max()


def test_quaternion_and_relion_angles_give_the_same_image(phantom):
    angles = np.array([[30.0, 60.0, -45.0], [170.0, 10.0, 100.0]])
    from_angles = projection.project(phantom.data, rotations.euler_to_matrix(angles))
    from_quaternions = projection.project(phantom.data, rotations.euler_to_quaternion(angles))
    np.testing.assert_allclose(from_angles, from_quaternions, atol=1e-5)


def test_symmetric_phantom_images_are_invariant_under_the_group():
    phantom = volumes.gaussian_phantom(32, symmetry="D3", n_blobs=3, seed=1)
    q = rotations.sample_uniform(4, seed=2)
    group = rotations.point_group("D3")
    reference = projection.project(phantom.data, q)
    for g in group:  # R_i -> R_i g
        moved = projection.project(phantom.data, rotations.multiply(q, g))
        np.testing.assert_allclose(moved, reference, atol=1e-4 * reference.max())


def test_integer_shifts_roll_the_image(phantom):
    q = rotations.sample_uniform(2, seed=8)
    plain = projection.project(phantom.data, q, precision="double")
    shifted = projection.project(phantom.data, q, shifts=[[3, -2], [-5, 4]], precision="double")
    np.testing.assert_allclose(shifted[0], np.roll(plain[0], (-2, 3), axis=(0, 1)), atol=1e-6)
    np.testing.assert_allclose(shifted[1], np.roll(plain[1], (4, -5), axis=(0, 1)), atol=1e-6)


def test_oversampling_removes_wrap_around():
    """A blob near a corner leaves the inscribed sphere: only oversampling keeps it exact."""
    size, sigma = 40, 2.0
    # Inside the cube (tails included) but not the inscribed sphere: turned by 45° about z
    # it lands 14.1 px from the centre and its tail crosses the image edge.
    center = np.array([[10.0, 10.0, 0.0]])
    vol = volumes.gaussian_blobs(size, center, [1.0], sigma).astype(np.float64)
    matrix = rotations.euler_to_matrix([[45.0, 0.0, 0.0]])
    expected = analytic_blob_images(center, [1.0], sigma, matrix, size)
    exact = projection.project(vol, matrix, oversampling=2, precision="double")
    wrapped = projection.project(vol, matrix, precision="double")
    assert np.abs(exact - expected).max() < 1e-3
    assert np.abs(wrapped - expected).max() > 2e-2


def test_batches_do_not_change_the_result(phantom):
    q = rotations.sample_uniform(7, seed=9)
    whole = projection.project(phantom.data, q)
    batched = projection.project(phantom.data, q, batch_size=2)
    np.testing.assert_allclose(batched, whole, atol=1e-6)


def test_central_slices_are_the_image_spectra(phantom):
    q = rotations.sample_uniform(2, seed=10)
    slices = projection.central_slices(phantom.data, q, precision="double")
    images = projection.project(phantom.data, q, precision="double")
    spectra = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    inside = slices != 0
    np.testing.assert_allclose(slices[inside], spectra[inside], atol=1e-3)


# ---------------------------------------------------------------- CTF
def test_electron_wavelength_known_values():
    np.testing.assert_allclose(projection.electron_wavelength([100, 200, 300]),
                               [0.03701, 0.02508, 0.01969], atol=2e-5)


def test_ctf_at_zero_frequency_is_the_amplitude_contrast_and_first_zero():
    params = projection.CTFParameters(defocus_u=[20000.0], defocus_v=[20000.0],
                                      defocus_angle=[0.0], voltage=[300.0], cs=[0.0],
                                      amplitude_contrast=[0.1])
    assert projection.ctf_2d(params, [0.0], [0.0])[0, 0] == pytest.approx(0.1)
    # With Cs = 0 the first zero is at π λ Δf s² = π − arcsin(A).
    lam = projection.electron_wavelength(300.0)
    s0 = np.sqrt((np.pi - np.arcsin(0.1)) / (np.pi * lam * 20000.0))
    values = projection.ctf_2d(params, [0.9 * s0, s0, 1.1 * s0], [0, 0, 0])[0]
    assert values[0] > 0 and abs(values[1]) < 1e-9 and values[2] < 0


def test_ctf_astigmatism_follows_the_angle():
    params = projection.CTFParameters(defocus_u=[25000.0], defocus_v=[15000.0],
                                      defocus_angle=[30.0], voltage=[300.0], cs=[2.7],
                                      amplitude_contrast=[0.07])
    s = 0.05
    along_u = projection.ctf_2d(params, [s * np.cos(np.deg2rad(30))], [s * np.sin(np.deg2rad(30))])
    isotropic = projection.CTFParameters(defocus_u=[25000.0], defocus_v=[25000.0],
                                         defocus_angle=[0.0], voltage=[300.0], cs=[2.7],
                                         amplitude_contrast=[0.07])
    np.testing.assert_allclose(along_u, projection.ctf_2d(isotropic, [s], [0.0]), atol=1e-12)


def test_projection_with_ctf_is_the_filtered_image(phantom):
    q = rotations.sample_uniform(3, seed=12)
    params = projection.sample_ctf(3, seed=1)
    pixel = 2.0
    plain = projection.project(phantom.data, q, precision="double")
    with_ctf = projection.project(phantom.data, q, ctf=params, pixel_size=pixel,
                                  precision="double")
    size = phantom.size
    freq = np.fft.fftfreq(size) / pixel
    sx, sy = np.meshgrid(freq, freq)
    for k in range(3):
        ctf = projection.ctf_2d(params[k:k + 1], sx.ravel(), sy.ravel()).reshape(size, size)
        spectrum = np.fft.fft2(np.fft.ifftshift(plain[k])) * ctf
        expected = np.fft.fftshift(np.real(np.fft.ifft2(spectrum)))
        np.testing.assert_allclose(with_ctf[k], expected, atol=1e-3 * np.abs(plain[k]).max())


ASTIGMATIC = dict(defocus_u=[9000.0, 15000.0, 21000.0, 25000.0],
                  defocus_v=[6000.0, 12000.0, 20000.0, 19000.0],
                  defocus_angle=[30.0, -60.0, 10.0, 100.0], voltage=300.0, cs=2.7,
                  amplitude_contrast=0.1)


def _filtered_by_ctf_modulus(clean, ctf, pixel_size):
    """The clean images filtered by |CTF| with a full complex FFT (the reference)."""
    size = clean.shape[-1]
    f = np.fft.fftfreq(size, d=pixel_size)
    sy, sx = np.meshgrid(f, f, indexing="ij")  # images are [y, x]
    magnitude = np.abs(projection.ctf_2d(ctf, sx.ravel(), sy.ravel())).reshape(len(ctf), size,
                                                                                size)
    return np.real(np.fft.ifft2(np.fft.fft2(clean) * magnitude))


def test_phase_flip_leaves_the_ctfs_modulus():
    """Projections with an astigmatic CTF, phase-flipped: the clean projection filtered by
    |CTF| (an axis swap or a wrong sign would leave negative lobes), in chunks as at once."""
    volume = volumes.resolve("4ake", 32)
    q = rotations.sample_uniform(4, seed=5)
    ctf = projection.CTFParameters(**ASTIGMATIC)
    with_ctf = projection.project(volume.data, q, ctf=ctf, pixel_size=volume.voxel_size)
    expected = _filtered_by_ctf_modulus(projection.project(volume.data, q), ctf,
                                        volume.voxel_size)
    scale = np.abs(expected).max()
    flipped = projection.phase_flip(with_ctf, ctf, volume.voxel_size)
    assert flipped.dtype == np.float32
    assert np.abs(flipped - expected).max() < 1e-3 * scale
    np.testing.assert_allclose(projection.phase_flip(with_ctf, ctf, volume.voxel_size, chunk=3),
                               flipped, atol=1e-6 * scale)
    assert np.abs(with_ctf - expected).max() > 0.1 * scale  # without the flip: far from it
    with pytest.raises(ValueError, match="3 CTF parameter sets for 4 images"):
        projection.phase_flip(with_ctf, ctf[:3], volume.voxel_size)


def test_projection_with_phase_flipped_ctf_multiplies_by_its_modulus():
    volume = volumes.resolve("4ake", 32)
    q = rotations.sample_uniform(4, seed=6)
    ctf = projection.CTFParameters(**ASTIGMATIC)
    rendered = projection.project(volume.data, q, ctf=ctf, phase_flipped=True,
                                  pixel_size=volume.voxel_size)
    expected = _filtered_by_ctf_modulus(projection.project(volume.data, q), ctf,
                                        volume.voxel_size)
    assert np.abs(rendered - expected).max() < 1e-3 * np.abs(expected).max()


def test_ctf_parameters_round_trip_and_validation():
    params = projection.sample_ctf(5, seed=0)
    back = projection.CTFParameters.from_array(params.as_array())
    np.testing.assert_array_equal(back.as_array(), params.as_array())
    assert len(params[1:3]) == 2
    with pytest.raises(ValueError):
        projection.CTFParameters(defocus_u=[1.0], defocus_v=[1.0], defocus_angle=[0.0],
                                 voltage=[300.0], cs=[2.7], amplitude_contrast=[1.5])
    with pytest.raises(ValueError):
        projection.sample_ctf(2, defocus_range=(-1.0, 5.0))


# ---------------------------------------------------------------- shifts and noise
def test_triangular_shifts():
    shifts = projection.sample_shifts(20000, 5.0, seed=0)
    assert shifts.shape == (20000, 2) and np.abs(shifts).max() <= 5.0
    # Triangular on [-5, 5]: variance 25 / 6.
    assert np.var(shifts) == pytest.approx(25 / 6, rel=0.05)
    assert np.all(projection.sample_shifts(3, 0.0) == 0)
    with pytest.raises(ValueError):
        projection.sample_shifts(3, -1.0)


@pytest.mark.parametrize("snr", [16.0, 1.0, 1 / 16])
def test_noise_has_the_requested_snr(phantom, snr):
    clean = projection.project(phantom.data, rotations.sample_uniform(50, seed=1))
    noisy, variance = projection.add_noise(clean, snr, seed=2)
    assert variance == pytest.approx(np.var(clean) / snr)
    assert np.var(noisy - clean) == pytest.approx(variance, rel=0.02)
    same, zero = projection.add_noise(clean, np.inf)
    assert zero == 0 and np.array_equal(same, clean)
    with pytest.raises(ValueError):
        projection.add_noise(clean, 0.0)


# ---------------------------------------------------------------- errors and backends
def test_bad_inputs_raise(phantom):
    q = rotations.sample_uniform(2, seed=0)
    with pytest.raises(ValueError, match="cubic"):
        projection.project(np.zeros((4, 4, 5)), q)
    with pytest.raises(ValueError, match="quaternions"):
        projection.project(phantom.data, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shifts"):
        projection.project(phantom.data, q, shifts=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="backend"):
        projection.project(phantom.data, q, backend="magic")
    with pytest.raises(ValueError, match="finite"):
        projection.project(np.full((4, 4, 4), np.nan), q)


def test_astra_backend_gives_a_clear_error_without_cuda(phantom):
    try:
        import astra
    except ImportError:
        astra = None
    if astra is not None and astra.use_cuda():
        pytest.skip("CUDA is available: the ASTRA backend runs here")
    with pytest.raises(RuntimeError, match="CUDA"):
        projection.project(phantom.data, rotations.sample_uniform(2, seed=0), backend="astra")
