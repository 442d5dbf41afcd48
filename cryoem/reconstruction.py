"""Reconstruction: a density map from projections and their orientations (Phase 3).

Least squares through the same Fourier-slice model as :mod:`cryoem.projection`:
the model's image spectra are ``P̂_i(k) = X̂(k_u R_i[0] + k_v R_i[1])``, times a
shift phase and the CTF, on the half plane of frequencies inside the Nyquist
disk.  The map solves the normal equations

    (Re(Aᴴ W A) + λ I) x = Re(Aᴴ W ŷ)

by conjugate gradients, where ``A`` is the projector, ``ŷ`` the images'
spectra and ``W`` counts each half-plane frequency for itself and its mirror.
``Aᴴ W A`` is a convolution (its kernel is one type-1 NUFFT of the weights
onto a grid twice as large), so every iteration is two FFTs (the Toeplitz
embedding); ``Aᴴ W ŷ`` is one type-1 NUFFT of the data, accumulated in
batches so memory stays bounded.  The CTF enters the operator, which makes the
solution a Wiener-style filter controlled by ``λ``.

Shifts are those the caller passes: the estimated ones.  :func:`reconstruct`
never reads a dataset's true shifts; :func:`reconstruct_dataset` does so only
with ``oracle_shifts=True`` and labels the result.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft
from numpy.typing import ArrayLike, NDArray

from . import distributed, projection, rotations, stacks
from ._progress import progress_bar

__all__ = ["Reconstruction", "reconstruct", "reconstruct_dataset", "half_maps", "split_halves",
           "leave_group_out", "BACKENDS"]

BACKENDS = ("finufft", "astra")
_POINTS_PER_CALL = 2**22
#: The fewest points worth a thread of their own in :func:`_adjoint`.
_POINTS_PER_CHUNK = 2**18
#: finufft's relative tolerance for the back-projections: far below any image's noise, and
#: ~2x faster than 1e-9 (its spreading kernel is 7 points wide rather than 10).
_ADJOINT_EPS = 1e-7
#: Threads of the normal operator's FFTs (scipy.fft; NumPy's are single-threaded).
_WORKERS = os.cpu_count() or 1


@dataclass
class Reconstruction:
    """A reconstructed map and how it was made."""

    data: NDArray[np.float32]
    iterations: int = 0
    residuals: list[float] = field(default_factory=list)
    label: str = ""


class _Normal:
    """The operator ``Re(Aᴴ W A) + λ I`` on ``L³`` maps, by FFT convolution on a ``(2L)³`` grid."""

    def __init__(self, kernel_spectrum: NDArray, size: int, regularization: float) -> None:
        self.spectrum = kernel_spectrum
        self.size = size
        self.regularization = regularization

    def __call__(self, x: NDArray) -> NDArray:
        # rfftn/irfftn on the (2L)³ grid, one axis at a time so that no line of zeros (the
        # padding, 7/8 of the grid) is transformed and no line outside the L³ crop is
        # inverted: the same result, ~1.8x faster at L = 64 (by hand: scipy.fft prunes nothing).
        size, n = self.size, 2 * self.size
        f = scipy.fft.rfft(x, n=n, axis=2, workers=_WORKERS)
        f = scipy.fft.fft(f, n=n, axis=1, workers=_WORKERS)
        f = scipy.fft.fft(f, n=n, axis=0, workers=_WORKERS) * self.spectrum
        f = scipy.fft.ifft(f, axis=0, workers=_WORKERS)[:size]
        f = scipy.fft.ifft(f, axis=1, workers=_WORKERS)[:, :size]
        out = scipy.fft.irfft(f, n=n, axis=2, workers=_WORKERS)[..., :size]
        return out + self.regularization * x


def _plane(size: int) -> Any:
    # The projector's frequency plane: the same points, the same Nyquist disk.
    return projection._FrequencyPlane(size)


def _weights(plane: Any) -> NDArray[np.float64]:
    """1 for the column k_u = 0 (its mirror is in the same column), 2 elsewhere (k and −k)."""
    return np.where(plane.ku == 0, 1.0, 2.0)


def reconstruct(
    images: ArrayLike,
    orientations: ArrayLike,
    *,
    shifts: ArrayLike | None = None,
    ctf: "projection.CTFParameters | None" = None,
    pixel_size: float = 1.0,
    regularization: float = 1e-3,
    iterations: int = 30,
    tolerance: float = 1e-4,
    backend: str = "finufft",
    batch_size: int | None = None,
    symmetry: str = "C1",
    weights: ArrayLike | None = None,
    client: Any = None,
    progress: bool = False,
    label: str = "",
) -> Reconstruction:
    """Least-squares map ``(L, L, L)`` from images ``(N, L, L)`` and their orientations.

    Parameters
    ----------
    images
        An array, or a :class:`cryoem.stacks.ImageStack` read a chunk at a time (memory
        then grows with ``batch_size``, not with ``N``).
    orientations
        ``(N, 4)`` quaternions or ``(N, 3, 3)`` matrices ``R_i`` (see :mod:`cryoem.rotations`).
    shifts
        Estimated in-plane shifts ``(N, 2)`` in pixels (``+dx`` moved the content to +x).
    ctf
        Per-image CTF parameters; the solution is then CTF-corrected (Wiener-style).
    regularization
        Tikhonov ``λ`` relative to the mean diagonal of ``Aᴴ W A``.
    iterations, tolerance
        Conjugate-gradient budget and relative-residual stop.
    backend
        ``"finufft"`` (CPU) or ``"astra"`` (CGLS on a CUDA GPU, no CTF or shifts).
    symmetry
        Point group of the particle: each image also counts as a projection at
        ``R_i g`` for every ``g`` of the group (the map comes out symmetric).
    weights
        Non-negative weight of each image ``(N,)`` in the least-squares fit
        (default 1): e.g. the posterior probability of a candidate orientation
        when an image is entered once per candidate (:mod:`cryoem.ab_initio`).
    batch_size
        Images per chunk (default: about 4 million Fourier samples).
    client
        A ``dask.distributed.Client`` (:func:`cryoem.distributed.connect`): the chunks'
        back-projections run as tasks on its workers and are summed here.
    """
    images = stacks.as_images(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected images of shape (N, L, L), got {images.shape}")
    matrices = projection._as_matrices(orientations)
    if len(matrices) != len(images):
        raise ValueError(f"{len(images)} images but {len(matrices)} orientations")
    n, size = images.shape[:2]
    shifts_arr = projection._check_shifts(shifts, n)
    image_weights = _check_weights(weights, n)
    group = rotations.quaternion_to_matrix(rotations.point_group(symmetry))
    if backend == "astra":
        if shifts_arr is not None or ctf is not None or len(group) > 1 or weights is not None:
            raise ValueError("the ASTRA backend reconstructs without shifts, CTF, symmetry "
                             "or weights")
        return _reconstruct_astra(np.asarray(images, dtype=np.float64), matrices, iterations,
                                  label)
    if backend != "finufft":
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")

    rhs, kernel = _normal_equations(images, matrices, shifts_arr, ctf, image_weights, group,
                                    pixel_size, batch_size, client, progress)
    x, residuals = _solve(rhs, kernel, regularization, iterations, tolerance, progress)
    return Reconstruction(x.astype(np.float32), len(residuals), residuals, label)


def leave_group_out(
    images: ArrayLike,
    orientations: ArrayLike,
    groups: ArrayLike,
    *,
    shifts: ArrayLike | None = None,
    ctf: "projection.CTFParameters | None" = None,
    pixel_size: float = 1.0,
    regularization: float = 1e-3,
    iterations: int = 30,
    tolerance: float = 1e-4,
    weights: ArrayLike | None = None,
    client: Any = None,
) -> tuple[Reconstruction, list[Reconstruction]]:
    """The map from all images, and for each group ``g`` the map from every image outside it.

    ``groups`` ``(N,)`` numbers the images' groups ``0 … K−1``.  Each group is back-projected
    once; the map without group ``g`` solves the normal equations of the sum minus ``g``'s
    share, so the ``K + 1`` maps cost one back-projection and ``K + 1`` conjugate-gradient
    solves.  Matching an image against a map that does not hold it keeps the image's own noise
    out of its reference (which otherwise holds it near where it was); the other arguments are
    those of :func:`reconstruct` (``weights``: each image's, e.g. a candidate orientation's
    posterior probability when an image is entered once per candidate).
    """
    images = stacks.as_images(images)
    matrices = projection._as_matrices(orientations)
    labels = np.asarray(groups)
    if labels.shape != (len(images),) or len(matrices) != len(images):
        raise ValueError(f"{len(images)} images but {len(matrices)} orientations and "
                         f"{labels.size} group labels")
    shifts_arr = projection._check_shifts(shifts, len(images))
    image_weights = _check_weights(weights, len(images))
    identity = np.eye(3)[None]
    shares = []
    for g in range(int(labels.max()) + 1):
        chosen = np.flatnonzero(labels == g)
        if len(chosen) == 0:
            raise ValueError(f"group {g} of {labels.max() + 1} holds no image")
        shares.append(_normal_equations(
            stacks.take(images, chosen), matrices[chosen],
            None if shifts_arr is None else shifts_arr[chosen],
            None if ctf is None else ctf[chosen], image_weights[chosen], identity, pixel_size,
            None, client, False))
    rhs, kernel = (sum(share[k] for share in shares) for k in (0, 1))

    def solved(b: NDArray, h: NDArray) -> Reconstruction:
        x, residuals = _solve(b, h, regularization, iterations, tolerance, False)
        return Reconstruction(x.astype(np.float32), len(residuals), residuals)

    return solved(rhs, kernel), [solved(rhs - b, kernel - h) for b, h in shares]


def _normal_equations(images: "NDArray | stacks.ImageStack", matrices: NDArray,
                      shifts: NDArray | None, ctf: "projection.CTFParameters | None",
                      image_weights: NDArray, group: NDArray, pixel_size: float,
                      batch_size: int | None, client: Any,
                      progress: bool) -> tuple[NDArray, NDArray]:
    """``Aᴴ W ŷ`` (on the ``L³`` grid) and the kernel of ``Aᴴ W A`` (on the ``(2L)³`` grid),
    summed over chunks of images (as tasks on ``client``'s workers, if given)."""
    size = images.shape[-1]
    batch = batch_size or max(1, _POINTS_PER_CALL // _plane(size).count)
    pieces = [(chunk, matrices[start:stop],
               None if shifts is None else shifts[start:stop],
               None if ctf is None else ctf[start:stop], image_weights[start:stop])
              for start, stop, chunk in stacks.chunks(images, batch)]
    return distributed.reduce_chunks(
        _back_project, pieces, client=client, desc="back-projecting",
        shared={"group": group, "pixel_size": pixel_size}, progress=progress)


def _solve(rhs: NDArray, kernel: NDArray, regularization: float, iterations: int,
           tolerance: float, progress: bool) -> tuple[NDArray, list[float]]:
    """The normal equations' solution by conjugate gradients, and the relative residuals."""
    size = rhs.shape[0]
    kernel_spectrum = scipy.fft.rfftn(np.fft.ifftshift(kernel), workers=_WORKERS)
    scale = float(kernel[size, size, size])  # the diagonal of AᴴWA (every voxel's is the same)
    lam = regularization * max(scale, 1e-12)
    return _conjugate_gradients(_Normal(kernel_spectrum, size, lam), rhs, iterations, tolerance,
                                progress)


def _back_project(piece: tuple, group: NDArray, pixel_size: float) -> tuple[NDArray, NDArray]:
    """One chunk's share of ``Aᴴ W ŷ`` (on the ``L³`` grid) and of the kernel of ``Aᴴ W A``
    (on the ``(2L)³`` grid): reconstruction's map step, summed over chunks."""
    images, matrices, shifts, ctf, image_weights = piece
    images = np.asarray(images, dtype=np.float64)
    size = images.shape[-1]
    plane = _plane(size)
    spectra = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    values = spectra[:, plane.mask]
    factor = np.ones_like(values)
    if shifts is not None:
        factor = factor * np.conj(plane.shift_phases(shifts))
    square = np.ones(values.shape)
    if ctf is not None:
        transfer = plane.ctf(ctf, pixel_size)
        factor = factor * transfer
        square = transfer**2
    batch_weights = _weights(plane) * image_weights[:, None]
    data_terms = (values * factor * batch_weights).ravel()
    square_terms = (square * batch_weights).ravel().astype(complex)
    rhs = np.zeros((size,) * 3)
    kernel = np.zeros((2 * size,) * 3)
    for g in group:  # the same image seen at R_i g (identity alone without symmetry)
        points = plane.points(matrices @ g).reshape(-1, 3)
        rhs += _adjoint(points, data_terms, (size,) * 3)
        kernel += _adjoint(points, square_terms, (2 * size,) * 3)
    return rhs, kernel


def _check_weights(weights: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """Per-image weights ``(n,)``: ones by default; finite and non-negative."""
    if weights is None:
        return np.ones(n)
    values = np.asarray(weights, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"expected {n} image weights, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("image weights must be finite and non-negative")
    return values


def _adjoint(points: NDArray, values: NDArray, shape: tuple[int, int, int]) -> NDArray:
    """``Re Σ_j v_j e^{+i ω_j · n}`` on a grid of ``shape`` (type-1 NUFFT), axes [z, y, x].

    finufft's own threads add into the grid in a varying order (reruns differ
    by ~1e-8, which iterative searches amplify), so the points go in one chunk
    per core (at least ``_POINTS_PER_CHUNK`` each), one thread per chunk,
    summed in chunk order: reruns on one machine are bit-identical.
    """
    import finufft

    values = values.astype(np.complex128)
    count = max(1, min(os.cpu_count() or 1, len(points) // _POINTS_PER_CHUNK))
    edges = np.linspace(0, len(points), count + 1).astype(int)

    def chunk(k: int) -> NDArray:
        part = points[edges[k]:edges[k + 1]]
        return finufft.nufft3d1(np.ascontiguousarray(part[:, 2]),
                                np.ascontiguousarray(part[:, 1]),
                                np.ascontiguousarray(part[:, 0]),
                                values[edges[k]:edges[k + 1]], shape, eps=_ADJOINT_EPS, isign=1,
                                nthreads=1)

    out = np.zeros(shape)
    with ThreadPoolExecutor(count) as pool:
        for part in pool.map(chunk, range(count)):  # summed in chunk order
            out += np.real(part)
    return out


def _conjugate_gradients(operator: _Normal, rhs: NDArray, iterations: int, tolerance: float,
                         progress: bool) -> tuple[NDArray, list[float]]:
    x = np.zeros_like(rhs)
    r = rhs.copy()
    p = r.copy()
    rr = float(np.vdot(r, r))
    norm = np.sqrt(rr) or 1.0
    residuals: list[float] = []
    for _ in progress_bar(range(iterations), total=iterations, enable=progress,
                          desc="conjugate gradients"):
        ap = operator(p)
        alpha = rr / float(np.vdot(p, ap))
        x += alpha * p
        r -= alpha * ap
        rr_new = float(np.vdot(r, r))
        residuals.append(np.sqrt(rr_new) / norm)
        if residuals[-1] < tolerance:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, residuals


def _reconstruct_astra(images: NDArray, matrices: NDArray, iterations: int,
                       label: str) -> Reconstruction:
    """CGLS with ASTRA's CUDA code (the seed repository's method)."""
    try:
        import astra
    except ImportError as error:
        raise RuntimeError("the 'astra' backend needs the ASTRA toolbox with CUDA: "
                           "pip install 'cryoem[gpu]' on a machine with an NVIDIA GPU") from error
    if not astra.use_cuda():
        raise RuntimeError("the 'astra' backend needs CUDA: ASTRA's 3D algorithms run only on an "
                           "NVIDIA GPU, and none is available here; use backend='finufft'")
    size = images.shape[-1]
    centre = np.zeros(3) if size % 2 else -0.5 * (matrices[:, 0] + matrices[:, 1])
    vectors = np.concatenate([matrices[:, 2], centre, matrices[:, 0], matrices[:, 1]], axis=1)
    proj_geom = astra.create_proj_geom("parallel3d_vec", size, size, vectors)
    vol_geom = astra.create_vol_geom(size, size, size)
    sino_id = astra.data3d.create("-sino", proj_geom, np.transpose(images, (1, 0, 2)))
    vol_id = astra.data3d.create("-vol", vol_geom, 0)
    config = astra.astra_dict("CGLS3D_CUDA")
    config["ProjectionDataId"], config["ReconstructionDataId"] = sino_id, vol_id
    algorithm = astra.algorithm.create(config)
    astra.algorithm.run(algorithm, iterations)
    data = astra.data3d.get(vol_id).astype(np.float32)
    for delete, handle in ((astra.algorithm.delete, algorithm), (astra.data3d.delete, sino_id),
                           (astra.data3d.delete, vol_id)):
        delete(handle)
    return Reconstruction(data, iterations, [], label)


def reconstruct_dataset(data: Any, orientations: ArrayLike | None = None,
                        indices: ArrayLike | None = None, shifts: ArrayLike | None = None,
                        oracle_shifts: bool = False, **options: Any) -> Reconstruction:
    """Reconstruct from a :class:`~cryoem.datasets.Dataset`'s images.

    ``orientations`` default to the dataset's true ones (an oracle, labelled so).
    Shifts are the ``shifts`` given (estimated); with ``oracle_shifts`` the
    dataset's true shifts are used instead and the label says so.  The CTF is
    the dataset's (it is known in practice from CTF estimation).
    """
    index = np.arange(len(data)) if indices is None else np.asarray(indices)
    labels = []
    if orientations is None:
        orientations = data.orientations[index]
        labels.append("true orientations (oracle)")
    if oracle_shifts:
        shifts = data.shifts[index]
        labels.append("true shifts (oracle)")
    ctf = data.ctf[index] if data.ctf is not None else None
    return reconstruct(data.projections[index], orientations, shifts=shifts, ctf=ctf,
                       pixel_size=data.pixel_size, label=", ".join(labels), **options)


def split_halves(n: int, seed: int = 0) -> NDArray[np.int64]:
    """The half (0 or 1) of each of ``n`` images: a random split fixed by ``seed``, the one
    :func:`half_maps` and :func:`cryoem.refinement.refine` share."""
    return np.random.default_rng(seed).permutation(n) % 2


def half_maps(images: ArrayLike, orientations: ArrayLike, seed: int = 0,
              shifts: ArrayLike | None = None, ctf: "projection.CTFParameters | None" = None,
              halves: NDArray[np.int64] | None = None,
              **options: Any) -> tuple[Reconstruction, Reconstruction, NDArray[np.int64]]:
    """Gold-standard half maps from two halves (``halves``, default :func:`split_halves` of
    ``seed``); returns both and the half of each image."""
    images = stacks.as_images(images)
    orientations = rotations.normalize(orientations) if np.shape(orientations)[-1] == 4 \
        else np.asarray(orientations)
    halves = split_halves(len(images), seed) if halves is None else np.asarray(halves)
    maps = []
    for half in (0, 1):
        chosen = np.flatnonzero(halves == half)
        maps.append(reconstruct(
            stacks.take(images, chosen), orientations[chosen],
            shifts=None if shifts is None else np.asarray(shifts)[chosen],
            ctf=None if ctf is None else ctf[chosen], **options))
    return maps[0], maps[1], halves
