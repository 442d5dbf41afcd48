"""Projection: images of a volume at given orientations, with shifts, CTF and noise.

The default projector uses the Fourier-slice theorem: the 2D Fourier transform
of ``p_i = Proj_z(R_i x)`` is the 3D Fourier transform of the volume on the
central plane spanned by the first two rows of ``R_i`` (see
:mod:`cryoem.rotations` for the convention)::

    P̂_i(k_u, k_v) = X̂(k_u · R_i[0] + k_v · R_i[1]).

``finufft`` evaluates ``X̂`` at those off-grid frequencies (a type-2 NUFFT),
batched over many images per call; shifts and the CTF are applied in Fourier
space where they are products; an inverse real FFT gives the images.

Only frequencies inside the disk ``|k| < L/2`` are evaluated: outside it a
component of the rotated frequency exceeds the volume's Nyquist frequency and
the discrete transform would alias.  Images are periodic with period ``L``, so
a volume whose support leaves the inscribed sphere of diameter ``L`` would wrap
around under some rotations: the volumes built by :mod:`cryoem.volumes` fit in
that sphere, and ``oversampling=2`` removes the wrap-around for any volume at
four times the cost.

Example
-------
>>> from cryoem import projection, rotations, volumes
>>> vol = volumes.gaussian_phantom(32, seed=0).data
>>> q = rotations.sample_uniform(10, seed=0)
>>> images = projection.project(vol, q)
>>> images.shape
(10, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations
from ._progress import progress_bar

__all__ = [
    "project",
    "central_slices",
    "CTFParameters",
    "sample_ctf",
    "ctf_2d",
    "phase_flip",
    "electron_wavelength",
    "sample_shifts",
    "add_noise",
    "noise_variance",
    "BACKENDS",
]

#: Projection backends: ``finufft`` (CPU, default) and ``astra`` (CUDA GPU only).
BACKENDS = ("finufft", "astra")

#: Target number of non-uniform points per NUFFT call (bounds memory).
_POINTS_PER_CALL = 2**22


# ----------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------
def project(
    volume: ArrayLike,
    orientations: ArrayLike,
    *,
    shifts: ArrayLike | None = None,
    ctf: "CTFParameters | None" = None,
    phase_flipped: bool = False,
    pixel_size: float = 1.0,
    backend: str = "finufft",
    oversampling: int = 1,
    precision: str = "single",
    eps: float | None = None,
    batch_size: int | None = None,
    nthreads: int | None = None,
    progress: bool = False,
) -> NDArray[np.float32]:
    """Project a volume along many orientations.

    Parameters
    ----------
    volume
        ``(L, L, L)`` real array indexed ``[z, y, x]``, origin at index ``L // 2``.
    orientations
        ``(N, 4)`` quaternions ``(w, x, y, z)`` or ``(N, 3, 3)`` matrices ``R_i``.
    shifts
        ``(N, 2)`` in-plane shifts ``(dx, dy)`` in pixels: the image content
        moves by ``+dx`` along x (columns) and ``+dy`` along y (rows).
    ctf
        Per-image CTF parameters (:class:`CTFParameters`), applied by
        multiplication in Fourier space; needs a true ``pixel_size``.
    phase_flipped
        With ``ctf``: multiply by ``|CTF|`` instead, the image :func:`phase_flip`
        makes of the one with the CTF.
    pixel_size
        Pixel size in Å (only the CTF depends on it).
    backend
        ``"finufft"`` (CPU) or ``"astra"`` (needs ASTRA with CUDA; no CTF or
        shifts there).
    oversampling
        Sample the Fourier plane ``oversampling`` times finer and crop the
        image: removes wrap-around for volumes reaching the box corners.
    precision
        ``"single"`` (complex64, default, ``eps=1e-5``) or ``"double"``
        (``eps=1e-10``).
    batch_size
        Images per NUFFT call; by default about 4 million frequencies a call.
    nthreads
        Threads for finufft (default: all cores).
    progress
        Show a progress bar.

    Returns
    -------
    ndarray
        ``(N, L, L)`` float32 images indexed ``[y, x]``.
    """
    vol = _check_volume(volume)
    matrices = _as_matrices(orientations)
    n, size = len(matrices), vol.shape[0]
    shifts_arr = _check_shifts(shifts, n)
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{len(ctf)} CTF parameter sets for {n} orientations")
    if backend == "astra":
        if shifts_arr is not None or ctf is not None or oversampling != 1:
            raise ValueError("the ASTRA backend projects only: no shifts, CTF or oversampling")
        return _project_astra(vol, matrices)
    if backend != "finufft":
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if oversampling < 1:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling}")

    plane = _FrequencyPlane(size * oversampling)
    batch = batch_size or max(1, _POINTS_PER_CALL // max(plane.count, 1))
    images = np.empty((n, size, size), dtype=np.float32)
    slices = _SliceEvaluator(vol, precision=precision, eps=eps, nthreads=nthreads)
    for start, stop in progress_bar(_batches(n, batch), total=-(-n // batch), enable=progress,
                                    desc="projecting"):
        values = slices(plane.points(matrices[start:stop]))
        if shifts_arr is not None:
            values = values * plane.shift_phases(shifts_arr[start:stop])
        if ctf is not None:
            transfer = plane.ctf(ctf[start:stop], pixel_size)
            values = values * (np.abs(transfer) if phase_flipped else transfer)
        images[start:stop] = plane.to_images(values, size)
    return images


def central_slices(volume: ArrayLike, orientations: ArrayLike, **options: object) -> NDArray:
    """Fourier transforms of the projections on the half plane (``rfft2`` layout).

    Returns ``(N, L, L // 2 + 1)`` complex values (zero outside ``|k| < L/2``),
    centred at the image origin: useful for matching in Fourier space.
    """
    vol = _check_volume(volume)
    matrices = _as_matrices(orientations)
    plane = _FrequencyPlane(vol.shape[0])
    values = _SliceEvaluator(vol, **options)(plane.points(matrices))
    return plane.scatter(values)


class _FrequencyPlane:
    """The half plane of image frequencies inside the Nyquist disk."""

    def __init__(self, size: int) -> None:
        self.size = size
        kv = np.fft.fftfreq(size) * size  # rows: all frequencies
        ku = np.fft.rfftfreq(size) * size  # columns: non-negative half
        ku_grid, kv_grid = np.meshgrid(ku, kv)
        self.mask = ku_grid**2 + kv_grid**2 < (size / 2) ** 2
        self.ku = ku_grid[self.mask]
        self.kv = kv_grid[self.mask]
        self.count = int(self.mask.sum())

    def points(self, matrices: NDArray) -> NDArray:
        """Volume frequencies ``(B, count, 3)`` in radians per voxel, (x, y, z) order."""
        # One matrix product (count, 2) @ (B, 2, 3): ~20x faster than broadcasting the sum.
        frequencies = (2 * np.pi / self.size) * np.stack([self.ku, self.kv], axis=1)
        return frequencies @ np.asarray(matrices)[:, :2, :]

    def shift_phases(self, shifts: NDArray) -> NDArray:
        scale = -2j * np.pi / self.size
        return np.exp(scale * (self.ku * shifts[:, :1] + self.kv * shifts[:, 1:2]))

    def ctf(self, params: "CTFParameters", pixel_size: float) -> NDArray:
        box_angstrom = self.size * pixel_size
        return ctf_2d(params, self.ku / box_angstrom, self.kv / box_angstrom)

    def scatter(self, values: NDArray) -> NDArray:
        full = np.zeros((len(values), self.size, self.size // 2 + 1), dtype=values.dtype)
        full[:, self.mask] = values
        return full

    def to_images(self, values: NDArray, size: int) -> NDArray:
        images = np.fft.irfft2(self.scatter(values), s=(self.size, self.size))
        images = np.fft.fftshift(images, axes=(-2, -1))
        if self.size != size:
            start = self.size // 2 - size // 2
            images = images[:, start : start + size, start : start + size]
        return images


class _SliceEvaluator:
    """Evaluates a volume's Fourier transform at arbitrary frequencies with finufft."""

    def __init__(self, volume: NDArray, precision: str = "single", eps: float | None = None,
                 nthreads: int | None = None) -> None:
        import finufft

        if precision not in ("single", "double"):
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        dtype = np.complex64 if precision == "single" else np.complex128
        self.real = np.float32 if precision == "single" else np.float64
        self.coefficients = np.ascontiguousarray(volume, dtype=dtype)
        options = {} if nthreads is None else {"nthreads": nthreads}
        self.plan = finufft.Plan(
            2, volume.shape, eps=eps or (1e-5 if precision == "single" else 1e-10),
            isign=-1, dtype=dtype, **options,
        )

    def __call__(self, points: NDArray) -> NDArray:
        shape = points.shape[:-1]
        flat = points.reshape(-1, 3).astype(self.real)
        # The volume is indexed [z, y, x]: finufft's first axis pairs with z.
        self.plan.setpts(
            np.ascontiguousarray(flat[:, 2]), np.ascontiguousarray(flat[:, 1]),
            np.ascontiguousarray(flat[:, 0]),
        )
        return self.plan.execute(self.coefficients).reshape(shape)


def _project_astra(volume: NDArray, matrices: NDArray) -> NDArray[np.float32]:
    """Parallel-beam projection with ASTRA's CUDA code (``parallel3d_vec``)."""
    try:
        import astra
    except ImportError as error:
        raise RuntimeError(
            "the 'astra' backend needs the ASTRA toolbox with CUDA: "
            "pip install 'cryoem[gpu]' on a machine with an NVIDIA GPU"
        ) from error
    if not astra.use_cuda():
        raise RuntimeError(
            "the 'astra' backend needs CUDA: ASTRA's 3D projectors run only on an NVIDIA GPU, "
            "and none is available here; use backend='finufft' on the CPU"
        )
    size = volume.shape[0]
    # Rays travel along the viewing direction; detector columns along R[0], rows along R[1].
    # ASTRA's detector centre is the volume centre, offset by half a pixel for even sizes.
    centre = np.zeros(3) if size % 2 else -0.5 * (matrices[:, 0] + matrices[:, 1])
    vectors = np.concatenate([matrices[:, 2], centre, matrices[:, 0], matrices[:, 1]], axis=1)
    geometry = astra.create_proj_geom("parallel3d_vec", size, size, vectors)
    vol_geometry = astra.create_vol_geom(size, size, size)
    sino_id, sino = astra.create_sino3d_gpu(volume.astype(np.float32), geometry, vol_geometry)
    astra.data3d.delete(sino_id)
    return np.ascontiguousarray(np.transpose(sino, (1, 0, 2)), dtype=np.float32)


# ----------------------------------------------------------------------------
# CTF
# ----------------------------------------------------------------------------
@dataclass
class CTFParameters:
    """Per-image contrast transfer function parameters (RELION's names in brackets).

    Attributes
    ----------
    defocus_u, defocus_v
        Defocus along the two principal axes, Å, positive for underfocus
        (``rlnDefocusU``, ``rlnDefocusV``).
    defocus_angle
        Angle of the ``u`` axis from the image x axis, degrees (``rlnDefocusAngle``).
    voltage
        Acceleration voltage, kV (``rlnVoltage``).
    cs
        Spherical aberration, mm (``rlnSphericalAberration``).
    amplitude_contrast
        Fraction of amplitude contrast (``rlnAmplitudeContrast``).
    phase_shift
        Additional phase shift, degrees (``rlnPhaseShift``).
    """

    defocus_u: NDArray[np.float64]
    defocus_v: NDArray[np.float64]
    defocus_angle: NDArray[np.float64]
    voltage: NDArray[np.float64]
    cs: NDArray[np.float64]
    amplitude_contrast: NDArray[np.float64]
    phase_shift: NDArray[np.float64] = field(default=None)  # type: ignore[assignment]

    FIELDS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs",
              "amplitude_contrast", "phase_shift")

    def __post_init__(self) -> None:
        n = len(np.atleast_1d(self.defocus_u))
        if self.phase_shift is None:
            self.phase_shift = np.zeros(n)
        for name in self.FIELDS:
            value = np.broadcast_to(np.asarray(getattr(self, name), dtype=np.float64), (n,))
            setattr(self, name, np.array(value))
        if np.any(self.voltage <= 0):
            raise ValueError("voltage must be positive (kV)")
        if np.any((self.amplitude_contrast < 0) | (self.amplitude_contrast >= 1)):
            raise ValueError("amplitude_contrast must be in [0, 1)")

    def __len__(self) -> int:
        return len(self.defocus_u)

    def __getitem__(self, index: slice | NDArray) -> "CTFParameters":
        return CTFParameters(**{name: getattr(self, name)[index] for name in self.FIELDS})

    def as_array(self) -> NDArray[np.float64]:
        """``(N, 7)`` array in the order of :attr:`FIELDS`."""
        return np.stack([getattr(self, name) for name in self.FIELDS], axis=-1)

    @classmethod
    def from_array(cls, array: ArrayLike) -> "CTFParameters":
        """Inverse of :meth:`as_array`."""
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != len(cls.FIELDS):
            raise ValueError(f"expected (N, {len(cls.FIELDS)}) CTF parameters, got {array.shape}")
        return cls(**{name: array[:, i] for i, name in enumerate(cls.FIELDS)})


def electron_wavelength(voltage_kv: ArrayLike) -> NDArray[np.float64]:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2642598 / np.sqrt(volts * (1 + 0.97846e-6 * volts))


def ctf_2d(params: CTFParameters, sx: ArrayLike, sy: ArrayLike) -> NDArray[np.float64]:
    """CTF values ``(N, M)`` at spatial frequencies ``(sx, sy)`` in 1/Å (RELION's formula).

    ``CTF = -sin(χ)`` with ``χ = −π λ Δf s² + (π/2) Cs λ³ s⁴ − φ_a − φ``, where
    ``Δf`` is the astigmatic defocus along the frequency's direction,
    ``φ_a = arcsin(amplitude_contrast)`` and ``φ`` the phase shift.  It is
    positive at low frequency for underfocus, as in RELION.
    """
    sx = np.asarray(sx, dtype=np.float64)[None, :]
    sy = np.asarray(sy, dtype=np.float64)[None, :]
    lam = electron_wavelength(params.voltage)[:, None]
    cs_angstrom = params.cs[:, None] * 1e7
    s2 = sx**2 + sy**2
    angle = np.arctan2(sy, sx) - np.deg2rad(params.defocus_angle)[:, None]
    mean = 0.5 * (params.defocus_u + params.defocus_v)[:, None]
    half_diff = 0.5 * (params.defocus_u - params.defocus_v)[:, None]
    defocus = mean + half_diff * np.cos(2 * angle)
    amplitude = np.arcsin(params.amplitude_contrast)[:, None]
    chi = (
        -np.pi * lam * defocus * s2
        + 0.5 * np.pi * cs_angstrom * lam**3 * s2**2
        - amplitude
        - np.deg2rad(params.phase_shift)[:, None]
    )
    return -np.sin(chi)


def phase_flip(images: ArrayLike, ctf: CTFParameters, pixel_size: float,
               chunk: int = 1024) -> NDArray[np.float32]:
    """Images with the sign of their CTF undone: each Fourier coefficient times ``sign(CTF)``.

    The usual first CTF correction, as ASPIRE's ``phase_flip`` (white noise stays white; the
    amplitudes stay modulated by ``|CTF|``).  Images ``(N, L, L)``, ``ctf`` one parameter set
    per image.  A real filter: where the origin sits does not matter.  Written here because
    it is a few lines of NumPy and the dependencies offer none outside ASPIRE.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"phase_flip takes square images (N, L, L), got shape {images.shape}")
    if len(ctf) != len(images):
        raise ValueError(f"{len(ctf)} CTF parameter sets for {len(images)} images")
    size = images.shape[-1]
    ku, kv = np.meshgrid(np.fft.rfftfreq(size) * size, np.fft.fftfreq(size) * size)
    box = size * pixel_size
    out = np.empty_like(images)
    for start in range(0, len(images), chunk):
        stop = min(start + chunk, len(images))
        signs = np.sign(ctf_2d(ctf[start:stop], ku.ravel() / box, kv.ravel() / box))
        spectrum = np.fft.rfft2(images[start:stop])
        out[start:stop] = np.fft.irfft2(spectrum * signs.reshape(spectrum.shape), s=(size, size))
    return out


def sample_ctf(
    n: int,
    defocus_range: tuple[float, float] = (10_000.0, 25_000.0),
    astigmatism: float = 500.0,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.1,
    seed: int | np.random.Generator | None = None,
) -> CTFParameters:
    """Random per-image CTF parameters (defoci in Å, uniform in ``defocus_range``).

    ``astigmatism`` is the largest ``|defocus_u − defocus_v|`` in Å; the
    astigmatism angle is uniform.
    """
    if not 0 < defocus_range[0] <= defocus_range[1]:
        raise ValueError(f"defocus_range must be positive and increasing, got {defocus_range}")
    rng = np.random.default_rng(seed)
    mean = rng.uniform(*defocus_range, n)
    delta = rng.uniform(0, astigmatism, n)
    return CTFParameters(
        defocus_u=mean + delta / 2,
        defocus_v=mean - delta / 2,
        defocus_angle=rng.uniform(-180, 180, n),
        voltage=np.full(n, voltage),
        cs=np.full(n, cs),
        amplitude_contrast=np.full(n, amplitude_contrast),
    )


# ----------------------------------------------------------------------------
# Shifts and noise
# ----------------------------------------------------------------------------
def sample_shifts(
    n: int, max_shift: float, distribution: str = "triangular",
    seed: int | np.random.Generator | None = None,
) -> NDArray[np.float64]:
    """In-plane shifts ``(n, 2)`` in pixels, each component within ``±max_shift``.

    ``triangular`` (peaked at 0, the seed repository's choice) or ``uniform``.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be non-negative, got {max_shift}")
    rng = np.random.default_rng(seed)
    if max_shift == 0:
        return np.zeros((n, 2))
    if distribution == "triangular":
        return rng.triangular(-max_shift, 0.0, max_shift, (n, 2))
    if distribution == "uniform":
        return rng.uniform(-max_shift, max_shift, (n, 2))
    raise ValueError(f"unknown shift distribution {distribution!r}: triangular or uniform")


def noise_variance(clean: ArrayLike, snr: float) -> float:
    """Noise variance giving ``snr`` = variance of all clean pixels / noise variance."""
    if not snr > 0:
        raise ValueError(f"SNR must be positive, got {snr}")
    return float(np.var(np.asarray(clean, dtype=np.float64))) / snr


def add_noise(
    clean: ArrayLike, snr: float, seed: int | np.random.Generator | None = None,
    chunk: int = 1024,
) -> tuple[NDArray[np.float32], float]:
    """Add white Gaussian noise at a given SNR; return ``(noisy, noise_variance)``.

    SNR is the variance over all pixels of the clean images (after CTF)
    divided by the noise variance.  Infinite SNR returns a copy.
    """
    clean = np.asarray(clean, dtype=np.float32)
    if np.isinf(snr):
        return clean.copy(), 0.0
    variance = noise_variance(clean, snr)
    rng = np.random.default_rng(seed)
    noisy = np.empty_like(clean)
    sigma = np.float32(np.sqrt(variance))
    for start in range(0, len(clean), chunk):
        block = clean[start : start + chunk]
        noise = rng.standard_normal(block.shape, dtype=np.float32)
        noisy[start : start + chunk] = block + sigma * noise
    return noisy, variance


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def _check_volume(volume: ArrayLike) -> NDArray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"expected a cubic (L, L, L) volume, got shape {vol.shape}")
    if not np.isrealobj(vol) or not np.all(np.isfinite(vol)):
        raise ValueError("the volume must be real and finite")
    return vol


def _as_matrices(orientations: ArrayLike) -> NDArray[np.float64]:
    o = np.asarray(orientations, dtype=np.float64)
    if o.ndim == 2 and o.shape[1] == 4:
        return rotations.quaternion_to_matrix(o)
    if o.ndim == 3 and o.shape[1:] == (3, 3):
        return o
    raise ValueError(f"expected (N, 4) quaternions or (N, 3, 3) matrices, got shape {o.shape}")


def _check_shifts(shifts: ArrayLike | None, n: int) -> NDArray[np.float64] | None:
    if shifts is None:
        return None
    s = np.asarray(shifts, dtype=np.float64)
    if s.shape != (n, 2):
        raise ValueError(f"expected shifts of shape ({n}, 2), got {s.shape}")
    return s


def _batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)
