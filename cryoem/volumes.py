"""Volumes: where density maps come from, and how they are put in a box.

Sources
-------
* MRC/MAP files (:func:`load_map`), written back with :func:`save_map`.
* Atomic models, built-in proteins and PDB/EMDB entries fetched by id: see
  :mod:`cryoem.proteins`.
* Gaussian-blob phantoms with a chosen point-group symmetry
  (:func:`gaussian_phantom`), whose projections are known analytically.

:func:`resolve` turns any of these, named by a string, into a :class:`Volume`.
Arrays are indexed ``[z, y, x]`` with the origin at index ``L // 2`` (see
:mod:`cryoem.rotations`).

Example
-------
>>> from cryoem import volumes
>>> vol = volumes.resolve("phantom:C4", size=32)
>>> vol.data.shape, vol.symmetry
((32, 32, 32), 'C4')
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations
from ._files import atomic_path

__all__ = [
    "Volume",
    "DEFAULT_PROTEIN",
    "load_map",
    "save_map",
    "gaussian_phantom",
    "resolve",
    "pad_to_cube",
    "center",
    "resample",
    "fourier_resample",
    "fit_to_box",
    "spherical_mask",
    "cosine_edge",
    "lowpass_nyquist",
    "lowpass",
    "normalize",
    "prepare",
]

#: The built-in protein used when none is named (asymmetric).
DEFAULT_PROTEIN = "4ake"

#: Default ratio of the box edge to the particle's diameter for built-in proteins.
DEFAULT_BOX_RATIO = 1.5

_MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs", ".rec")
_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


@dataclass
class Volume:
    """A density map in a cubic box.

    Attributes
    ----------
    data
        ``(L, L, L)`` float32 array indexed ``[z, y, x]``.
    voxel_size
        Edge of a voxel in Å.
    name
        Short name (file stem, built-in name or phantom).
    symmetry
        Point-group symbol, ``"C1"`` when asymmetric.
    source
        Where the map came from (path, PDB id, ...).
    particle_diameter
        Diameter of the particle in Å, when known.
    metadata
        Anything else worth keeping (e.g. the phantom's blobs).
    """

    data: NDArray[np.float32]
    voxel_size: float = 1.0
    name: str = "volume"
    symmetry: str = "C1"
    source: str = ""
    particle_diameter: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Edge of the box in voxels (``L``)."""
        return int(self.data.shape[0])

    @property
    def box_ratio(self) -> float | None:
        """Box edge over particle diameter (larger means less noise per particle at equal SNR)."""
        if not self.particle_diameter:
            return None
        return self.size * self.voxel_size / self.particle_diameter


# ----------------------------------------------------------------------------
# MRC files
# ----------------------------------------------------------------------------
def load_map(path: str | os.PathLike, voxel_size: float | None = None) -> Volume:
    """Read an MRC/MAP file (optionally gzipped) into a :class:`Volume`.

    The voxel size comes from the header unless ``voxel_size`` is given.  A
    file whose header breaks the standard in a common way (e.g. a wrong
    ``MAP`` stamp or ``nversion``) is read in mrcfile's permissive mode with a
    warning; a file that still yields no 3D data is an error.  Axes are put in
    ``[z, y, x]`` order whatever the header's ``mapc/mapr/maps``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a readable 3D map.
    """
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no map file at {path}")
    try:
        with mrcfile.open(path, mode="r") as mrc:
            data, header_voxel, axes = _read_mrc(mrc)
    except ValueError as strict_error:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with mrcfile.open(path, mode="r", permissive=True) as mrc:
                    data, header_voxel, axes = _read_mrc(mrc)
            except Exception as error:  # noqa: BLE001 - any failure here means unreadable
                raise ValueError(f"{path} is not a readable MRC map: {strict_error}") from error
        if data is None:
            raise ValueError(f"{path} is not a readable MRC map: {strict_error}")
        problems = "; ".join(str(w.message) for w in caught) or str(strict_error)
        warnings.warn(f"{path}: read in permissive mode ({problems})", stacklevel=2)
    if data.ndim != 3:
        raise ValueError(f"{path} holds a {data.ndim}D array, not a 3D map (shape {data.shape})")
    data = np.transpose(data, axes)
    if voxel_size is None:
        voxel_size = header_voxel
        if not voxel_size > 0:
            warnings.warn(f"{path}: header has no voxel size; assuming 1 Å", stacklevel=2)
            voxel_size = 1.0
    stem = path.name.split(".")[0]
    return Volume(np.ascontiguousarray(data, dtype=np.float32), float(voxel_size), stem,
                  source=str(path))


def _read_mrc(mrc: Any) -> tuple[NDArray | None, float, tuple[int, int, int]]:
    if mrc.data is None:
        return None, 0.0, (0, 1, 2)
    header = mrc.header
    order = [int(header.maps), int(header.mapr), int(header.mapc)]  # data axes 0, 1, 2
    if sorted(order) != [1, 2, 3]:
        order = [3, 2, 1]  # a broken axis record: assume the standard layout
    axes = (order.index(3), order.index(2), order.index(1))
    return np.asarray(mrc.data), float(mrc.voxel_size.x), axes


def save_map(volume: Volume, path: str | os.PathLike) -> Path:
    """Write a volume as an MRC file with its voxel size and a centred origin.

    The file is written to a temporary name and renamed, so a crash never
    leaves a half-written map under ``path``.
    """
    import mrcfile

    path = Path(path)
    with atomic_path(path) as partial, mrcfile.new(partial, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume.data, dtype=np.float32))
        mrc.voxel_size = volume.voxel_size
        mrc.header.origin = (0.0, 0.0, 0.0)
    return path


# ----------------------------------------------------------------------------
# Phantoms
# ----------------------------------------------------------------------------
def gaussian_phantom(
    size: int,
    symmetry: str = "C1",
    n_blobs: int = 6,
    sigma: float | None = None,
    radius: float | None = None,
    seed: int | np.random.Generator | None = 0,
) -> Volume:
    """A sum of isotropic Gaussian blobs with an exact point-group symmetry.

    ``n_blobs`` random blobs (varied amplitudes, one width ``sigma`` in
    voxels) are placed within ``radius`` voxels of the centre and copied by
    every operator of the group, so ``x(g r) = x(r)`` holds exactly.  Each
    blob projects to a 2D Gaussian at its rotated centre, which makes the
    phantom an analytic reference for the projector.  The blob list
    (centres in voxels, ``(x, y, z)`` order, amplitudes, sigma) is kept in
    ``metadata["blobs"]``.
    """
    rng = np.random.default_rng(seed)
    sigma = sigma or max(1.5, size / 20)
    radius = radius or (size / 2 - 4 * sigma) * 0.8
    if radius <= 0:
        raise ValueError(f"a {size}-voxel box is too small for blobs of sigma {sigma}")
    directions = rng.standard_normal((n_blobs, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    centers = directions * radius * rng.uniform(0.3, 1.0, (n_blobs, 1))
    amplitudes = rng.uniform(0.5, 1.0, n_blobs)
    group = rotations.quaternion_to_matrix(rotations.point_group(symmetry))
    all_centers = np.einsum("gij,bj->gbi", group, centers).reshape(-1, 3)
    all_amplitudes = np.tile(amplitudes, len(group))
    data = gaussian_blobs(size, all_centers, all_amplitudes, sigma)
    name = f"phantom-{symmetry.upper()}"
    return Volume(
        data, 1.0, name, symmetry=symmetry.upper(), source="gaussian phantom",
        particle_diameter=2 * (radius + 3 * sigma),
        metadata={"blobs": {"centers": all_centers, "amplitudes": all_amplitudes,
                            "sigma": sigma}},
    )


def gaussian_blobs(size: int, centers: ArrayLike, amplitudes: ArrayLike,
                   sigma: float) -> NDArray[np.float32]:
    """Sample ``Σ a_b exp(-|r - c_b|² / 2σ²)`` on the ``[z, y, x]`` grid (voxels)."""
    axis = np.arange(size) - size // 2
    volume = np.zeros((size, size, size))
    for (cx, cy, cz), a in zip(np.asarray(centers), np.asarray(amplitudes)):
        gx = np.exp(-((axis - cx) ** 2) / (2 * sigma**2))
        gy = np.exp(-((axis - cy) ** 2) / (2 * sigma**2))
        gz = np.exp(-((axis - cz) ** 2) / (2 * sigma**2))
        volume += a * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return volume.astype(np.float32)


# ----------------------------------------------------------------------------
# Box operations
# ----------------------------------------------------------------------------
def pad_to_cube(data: ArrayLike, size: int | None = None) -> NDArray[np.float32]:
    """Zero-pad (or centre-crop) a 3D array to a cube of edge ``size`` (default: its largest edge)."""
    data = np.asarray(data, dtype=np.float32)
    size = size or max(data.shape)
    out = np.zeros((size,) * 3, dtype=np.float32)
    src, dst = [], []
    for n in data.shape:
        start_out = max(0, size // 2 - n // 2)
        start_in = max(0, n // 2 - size // 2)
        length = min(n, size)
        src.append(slice(start_in, start_in + length))
        dst.append(slice(start_out, start_out + length))
    out[tuple(dst)] = data[tuple(src)]
    return out


def center(data: ArrayLike) -> NDArray[np.float32]:
    """Shift a map (Fourier shift, sub-voxel) so its centre of mass is at index ``L // 2``.

    Negative densities (noise around an EM map) are ignored for the centre.
    """
    from scipy import ndimage

    data = np.asarray(data, dtype=np.float32)
    weights = np.clip(data, 0, None)
    if weights.sum() <= 0:
        raise ValueError("cannot centre a map with no positive density")
    com = np.array(ndimage.center_of_mass(weights))
    offset = np.array(data.shape) // 2 - com
    shifted = ndimage.fourier_shift(np.fft.fftn(data), offset)
    return np.real(np.fft.ifftn(shifted)).astype(np.float32)


def fourier_resample(data: ArrayLike, size: int,
                     axes: tuple[int, ...] = (-3, -2, -1)) -> NDArray[np.float32]:
    """Resample the square/cubic ``axes`` of an array to ``size`` by Fourier cropping or padding.

    Values keep their scale (a constant stays the same constant); the sample
    spacing changes by ``old / size``.  Works on stacks (e.g. images ``(N, L, L)``
    with ``axes=(-2, -1)``).
    """
    data = np.asarray(data, dtype=np.float32)
    old = data.shape[axes[0]]
    if any(data.shape[a] != old for a in axes):
        raise ValueError(f"resampling needs equal edges along {axes}, got shape {data.shape}")
    if old == size:
        return data.copy()
    spectrum = np.fft.fftshift(np.fft.fftn(data, axes=axes), axes=axes)
    common = min(old, size)
    src = slice(old // 2 - common // 2, old // 2 - common // 2 + common)
    dst = slice(size // 2 - common // 2, size // 2 - common // 2 + common)
    shape = list(data.shape)
    for a in axes:
        shape[a] = size
    out = np.zeros(shape, dtype=np.complex128)
    index_out = [slice(None)] * data.ndim
    index_in = [slice(None)] * data.ndim
    for a in axes:
        index_out[a], index_in[a] = dst, src
    out[tuple(index_out)] = spectrum[tuple(index_in)]
    result = np.real(np.fft.ifftn(np.fft.ifftshift(out, axes=axes), axes=axes))
    return (result * (size / old) ** len(axes)).astype(np.float32)


def resample(data: ArrayLike, size: int) -> NDArray[np.float32]:
    """Resample a cubic map to ``size`` voxels by Fourier cropping or zero-padding.

    The voxel size changes by ``old_size / size``; values keep their scale.
    """
    data = np.asarray(data)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"resample needs a cubic map, got shape {data.shape}")
    return fourier_resample(data, size)


def fit_to_box(volume: Volume, size: int, pixel_size: float) -> NDArray[np.float32]:
    """A map put on another grid: resampled to ``pixel_size`` Å, then cropped or zero-padded
    about its centre to ``size``³ voxels (for instance a map from another program, to start
    a refinement of images of that box and pixel size).

    The new edge is rounded to whole voxels, so the pixel size it ends with may differ from
    ``pixel_size`` by up to half a voxel over the box; the returned array is taken to have
    ``pixel_size``.

    Raises
    ------
    ValueError
        If the map would cover fewer than 2 voxels at ``pixel_size``.
    """
    data = pad_to_cube(volume.data)  # a non-cubic map: padded to its longest edge first
    edge = int(round(data.shape[0] * volume.voxel_size / pixel_size))
    if edge < 2:
        raise ValueError(f"{volume.source or volume.name}: a {data.shape[0]}-voxel map of "
                         f"{volume.voxel_size:g} Å covers {edge} voxel(s) of {pixel_size:g} Å")
    # Resampled with the centre voxel (L // 2) at the origin, so it stays the centre.
    centred = np.roll(data, -(data.shape[0] // 2), axis=(0, 1, 2))
    resampled = np.roll(fourier_resample(centred, edge), edge // 2, axis=(0, 1, 2))
    return pad_to_cube(resampled, size)


def spherical_mask(size: int, radius: float | None = None, edge: float = 3.0) -> NDArray[np.float32]:
    """Soft spherical mask: 1 inside ``radius`` voxels, a cosine edge of ``edge`` voxels, 0 outside.

    The default radius keeps the mask (edge included) inside the inscribed sphere.
    """
    radius = radius if radius is not None else size / 2 - edge - 1
    axis = np.arange(size) - size // 2
    r = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    return cosine_edge(r, radius, edge).astype(np.float32)


def cosine_edge(distance: ArrayLike, start: float, width: float) -> NDArray[np.float64]:
    """1 up to ``start``, 0 beyond ``start + width``, a raised cosine between: the soft edge
    of masks and filters, ``distance`` in any unit (voxels, Å, Nyquist)."""
    ramp = np.clip((np.asarray(distance, dtype=np.float64) - start) / width, 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * ramp)


def lowpass_nyquist(data: ArrayLike, start: float = 0.85) -> NDArray[np.float32]:
    """Remove every frequency beyond the Nyquist sphere ``|k| = L/2``, with a cosine roll-off.

    The gain is 1 below ``start`` × Nyquist and falls to 0 at Nyquist.  A map
    limited this way has projections whose spectra lie inside the disk that
    :func:`cryoem.projection.project` evaluates, so the projector is exact.
    """
    return _cosine_lowpass(data, 1.0, start)


def lowpass(data: ArrayLike, pixel_size: float, resolution: float) -> NDArray[np.float32]:
    """Keep a map's detail coarser than ``resolution`` Å: gain 1 up to 0.8/resolution, a
    cosine roll-off to 0 at 1/resolution (e.g. an initial model limited to 30 Å)."""
    cutoff = 2 * pixel_size / resolution  # in units of Nyquist
    return _cosine_lowpass(data, cutoff, 0.8 * cutoff)


def _cosine_lowpass(data: ArrayLike, stop: float, start: float) -> NDArray[np.float32]:
    """Gain 1 below ``start``, 0 beyond ``stop`` (units of Nyquist), a cosine between."""
    data = np.asarray(data, dtype=np.float32)
    size = data.shape[0]
    k = np.fft.fftfreq(size) * 2  # in units of Nyquist
    kr = np.fft.rfftfreq(size) * 2
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
    spectrum = np.fft.rfftn(data) * cosine_edge(radius, start, max(stop - start, 1e-12))
    return np.fft.irfftn(spectrum, s=data.shape, axes=(0, 1, 2)).astype(np.float32)


def normalize(data: ArrayLike) -> NDArray[np.float32]:
    """Scale a map so that its maximum is 1."""
    data = np.asarray(data, dtype=np.float32)
    peak = float(np.max(data))
    if not peak > 0:
        raise ValueError("cannot normalise a map with no positive density")
    return data / peak


def prepare(volume: Volume, size: int | None = None, mask: bool = True,
            recenter: bool = True) -> Volume:
    """Put a map in a cubic box of ``size`` voxels ready for projection.

    Pads to a cube, centres the centre of mass, resamples to ``size`` (the
    voxel size follows), applies a soft spherical mask inside the inscribed
    sphere (so no rotation wraps it around), band-limits it to the Nyquist
    sphere and scales the maximum to 1.
    """
    data = pad_to_cube(volume.data)
    voxel = volume.voxel_size
    if recenter:
        data = center(data)
    if size is not None and size != data.shape[0]:
        voxel = voxel * data.shape[0] / size
        data = resample(data, size)
    if mask:
        data = data * spherical_mask(data.shape[0])
    return replace(volume, data=normalize(lowpass_nyquist(data)), voxel_size=float(voxel))


# ----------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------
def resolve(
    spec: str | os.PathLike = DEFAULT_PROTEIN,
    size: int = 64,
    *,
    voxel_size: float | None = None,
    resolution: float | None = None,
    box_ratio: float = DEFAULT_BOX_RATIO,
) -> Volume:
    """A :class:`Volume` of edge ``size`` from a name.

    ``spec`` is a built-in protein name (``cryoem volumes``), a path to an
    MRC/MAP or PDB/mmCIF file (optionally ``.gz``), ``pdb:XXXX`` or
    ``emd:NNNN`` (downloaded once), ``phantom[:GROUP]`` (e.g.
    ``phantom:D3``) or ``pseudo:SEED`` (a random pseudo-protein,
    :func:`cryoem.pseudo_proteins.pseudo_protein`).  Atomic models use ``voxel_size``,
    ``resolution`` and ``box_ratio`` (see :func:`cryoem.proteins.from_atomic_model`); maps are centred, resampled
    and masked (:func:`prepare`), ``voxel_size`` overriding their header.
    """
    from .proteins import builtin_names, fetch, from_atomic_model, load_builtin

    model_options = {"voxel_size": voxel_size, "resolution": resolution, "box_ratio": box_ratio}
    text = str(spec)
    lower = text.lower()
    if lower.startswith("phantom"):
        _, _, group = text.partition(":")
        phantom = gaussian_phantom(size, symmetry=group or "C1")
        return replace(phantom, data=normalize(phantom.data))
    if lower.startswith("pseudo:"):
        from .pseudo_proteins import pseudo_protein

        seed = text.partition(":")[2]
        if not seed.isdigit():
            raise ValueError(f"{text!r}: a pseudo-protein is named pseudo:SEED, SEED a "
                             "non-negative integer")
        volume = pseudo_protein(int(seed), size, **model_options)
        return replace(volume, data=normalize(volume.data))
    if lower.split(":")[0] in ("pdb", "emd", "emdb") and ":" in text:
        return resolve(fetch(text), size, **model_options)
    path = Path(text)
    if path.exists():
        suffix = Path(path.name.lower().removesuffix(".gz")).suffix
        if suffix in _MAP_SUFFIXES:
            return prepare(load_map(path, voxel_size), size)
        if suffix in _MODEL_SUFFIXES:
            volume = from_atomic_model(path, size, **model_options)
            return replace(volume, data=normalize(volume.data))
        raise ValueError(f"{path}: unknown file type; expected one of "
                         f"{', '.join(_MAP_SUFFIXES + _MODEL_SUFFIXES)} (optionally .gz)")
    if lower in builtin_names():
        volume = load_builtin(lower, size, **model_options)
        return replace(volume, data=normalize(volume.data))
    raise ValueError(f"{text!r} is neither a file, a built-in protein ({', '.join(builtin_names())}),"
                     " pdb:XXXX, emd:NNNN, phantom[:GROUP] nor pseudo:SEED")
