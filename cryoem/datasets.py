"""Datasets: one HDF5 file of projections with everything needed to score them.

Layout of a dataset file (all arrays chunked for streaming)::

    /projections    (N, L, L) float32   images indexed [y, x], noisy if snr < ∞
    /orientations   (N, 4)    float64   true quaternions (w, x, y, z), see cryoem.rotations
    /shifts         (N, 2)    float64   true in-plane shifts (dx, dy) in pixels
    /ctf            (N, 7)    float64   CTF parameters (attribute "fields"), only with a CTF
    /volume         (L, L, L) float32   the ground-truth map at the same L and pixel size
                                        (absent for imported particles)
    /split/train, /split/validation, /split/test   int64 indices (disjoint)

and attributes on the root: ``format``, ``version`` (of cryoem), ``source``,
``volume_name``, ``pixel_size`` (Å), ``symmetry``, ``snr``, ``noise_variance``,
``noisy``, ``max_shift``, ``ctf``, ``sampling``, ``seed``, ``box_ratio``,
``particle_diameter``, ``convention``, ``quaternion_order``, ``created``, and
``orientations_source``, ``shifts_source``, ``ctf_source``: where those arrays come from
(:data:`GROUND_TRUTH` for simulations, :data:`REFERENCE` for poses another program
estimated, e.g. a RELION refinement, :data:`ABSENT` when there are none: the array then
holds NaN; ``"input"`` for a CTF estimated by the user's CTF program).  Scores are only
ever computed against ground truth, or against a reference when the user asks for it
(:func:`poses_for_scoring`).

Files are written under a temporary name and renamed when complete, so a crash
never leaves a half file under the final name.  Reading needs only h5py and
NumPy (no TensorFlow).

Example
-------
>>> from cryoem import datasets, volumes
>>> vol = volumes.resolve("phantom", size=32)
>>> path = datasets.generate(vol, 20, "/tmp/example.h5", snr=1.0, seed=0)
>>> data = datasets.load(path)
>>> data.projections.shape, data.attrs["snr"]
((20, 32, 32), 1.0)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from numpy.typing import NDArray

from . import __version__, projection, rotations
from ._files import atomic_path, open_hdf5
from ._progress import progress_bar
from .sampling import sample as sample_orientations
from .volumes import Volume

__all__ = ["Dataset", "ImageChunks", "generate", "save", "load", "read_images", "split_indices", "FORMAT",
           "DEFAULT_SPLIT", "GROUND_TRUTH", "REFERENCE", "ABSENT", "poses_for_scoring",
           "Reference"]

#: Identifies a cryoem dataset file.
FORMAT = "cryoem-dataset-1"

#: Default train/validation/test fractions (the paper's 2,512 / 838 / 1,650 of 5,000).
DEFAULT_SPLIT = (0.5024, 0.1676, 0.33)

CONVENTION = ("p_i = Proj_z(R_i x); R_i takes volume coordinates to the microscope frame; "
              "RELION (rot, tilt, psi) matrix A = R_i; volume [z, y, x], image [y, x], "
              "origin at index L // 2")

_CHUNK_IMAGES = 256

#: Values of the ``orientations_source`` / ``shifts_source`` attributes.
GROUND_TRUTH, REFERENCE, ABSENT = "ground_truth", "reference", "absent"


@dataclass
class Dataset:
    """A dataset read into memory (see the module docstring for the fields)."""

    projections: NDArray[np.float32] | None
    orientations: NDArray[np.float64]
    shifts: NDArray[np.float64]
    volume: NDArray[np.float32] | None
    split: dict[str, NDArray[np.int64]]
    attrs: dict[str, Any]
    ctf: projection.CTFParameters | None = None
    path: Path | None = field(default=None)

    def __len__(self) -> int:
        return len(self.orientations)

    @property
    def size(self) -> int:
        """Image edge ``L`` in pixels."""
        if "size" in self.attrs:
            return int(self.attrs["size"])
        source = self.projections if self.projections is not None else self.volume
        if source is None:
            raise ValueError("this dataset holds neither images nor a volume")
        return int(source.shape[-1])

    @property
    def pixel_size(self) -> float:
        """Pixel (and voxel) size in Å."""
        return float(self.attrs["pixel_size"])

    def source(self, name: str) -> str:
        """Where the ``orientations``, ``shifts`` or ``ctf`` come from (see the module docstring).

        Files written before these attributes existed: imported particles hold a reference
        (or zeros: :data:`REFERENCE` never scores without ``--reference-poses``), simulations
        the ground truth.
        """
        if name == "ctf" and self.ctf is None:
            return ABSENT
        recorded = self.attrs.get(f"{name}_source")
        if recorded:
            return str(recorded)
        if self.attrs.get("imported"):
            return "input" if name == "ctf" else REFERENCE
        return GROUND_TRUTH

    @property
    def simulated_ctf(self) -> bool:
        """Whether the CTF parameters are a simulation's exact ones (a ground-truth field)."""
        return self.source("ctf") == GROUND_TRUTH


@dataclass
class Reference:
    """Poses to score against, and what they are (for every printed score)."""

    orientations: NDArray[np.float64]
    shifts: NDArray[np.float64] | None
    label: str


def poses_for_scoring(data: Dataset, indices: NDArray[np.int64] | None = None,
                      use_reference: bool = False) -> Reference | None:
    """The poses a command may score ``indices`` against, or ``None`` when it must not score.

    Ground truth always qualifies; a reference (poses another program estimated) only
    with ``use_reference`` (``--reference-poses``); absent or non-finite poses never do.
    """
    index = np.arange(len(data)) if indices is None else np.asarray(indices)
    kind = data.source("orientations")
    if kind == GROUND_TRUTH:
        label = "the ground truth"
    elif kind == REFERENCE and use_reference:
        label = f"the reference poses of {data.attrs.get('source', 'the input')} (not a ground truth)"
    else:
        return None
    orientations = data.orientations[index]
    if not np.all(np.isfinite(orientations)):
        return None
    shifts = data.shifts[index] if data.source("shifts") == kind else None
    if shifts is not None and not np.all(np.isfinite(shifts)):
        shifts = None
    return Reference(orientations, shifts, label)


def split_indices(n: int, fractions: tuple[float, float, float] = DEFAULT_SPLIT,
                  seed: int | np.random.Generator | None = 0,
                  test_size: int | None = None) -> dict[str, NDArray[np.int64]]:
    """Disjoint random train/validation/test indices covering ``range(n)``.

    ``fractions`` are normalised; ``test_size`` overrides the test count and
    the rest is shared between train and validation in their ratio.
    """
    fractions_arr = np.asarray(fractions, dtype=np.float64)
    if fractions_arr.shape != (3,) or np.any(fractions_arr < 0) or fractions_arr.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    fractions_arr = fractions_arr / fractions_arr.sum()
    if test_size is None:
        n_test = int(round(fractions_arr[2] * n))
    elif 0 <= test_size <= n:
        n_test = test_size
    else:
        raise ValueError(f"test_size must be between 0 and {n}, got {test_size}")
    rest = n - n_test
    share = fractions_arr[0] / max(fractions_arr[0] + fractions_arr[1], 1e-12)
    n_train = int(round(share * rest))
    order = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train:rest]),
        "test": np.sort(order[rest:]),
    }


def generate(
    volume: Volume,
    n_projections: int,
    out: str | os.PathLike,
    *,
    snr: float = np.inf,
    max_shift: float = 0.0,
    ctf: bool = False,
    sampling: str = "uniform",
    sampling_options: dict[str, Any] | None = None,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    test_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Simulate a dataset of projections of ``volume`` and write it to ``out``.

    Orientations are drawn with :func:`cryoem.sampling.sample` (``sampling``
    mode), shifts from a triangular distribution within ``±max_shift`` pixels,
    CTF parameters from :func:`cryoem.projection.sample_ctf` when ``ctf``;
    then white noise at ``snr`` (variance of all clean pixels over noise
    variance).  Images are projected and written in chunks, so memory stays
    bounded for large ``n_projections``.  Every random draw derives from
    ``seed``: the same arguments give the same file contents.

    Returns
    -------
    Path
        The written file.
    """
    import h5py

    out = Path(out)
    if n_projections < 1:
        raise ValueError(f"n_projections must be at least 1, got {n_projections}")
    if not snr > 0:
        raise ValueError(f"snr must be positive (use inf for noiseless), got {snr}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    streams = np.random.SeedSequence(seed).spawn(5)
    rng_orient, rng_shift, rng_ctf, rng_noise, rng_split = map(np.random.default_rng, streams)
    orientations = sample_orientations(n_projections, sampling, seed=rng_orient,
                                       **(sampling_options or {}))
    shifts = projection.sample_shifts(n_projections, max_shift, seed=rng_shift)
    ctf_params = projection.sample_ctf(n_projections, seed=rng_ctf) if ctf else None
    splits = split_indices(n_projections, split, seed=rng_split, test_size=test_size)
    size = volume.size

    with atomic_path(out) as partial, h5py.File(partial, "w") as f:
        images = f.create_dataset(
            "projections", (n_projections, size, size), dtype="float32",
            chunks=_image_chunks(n_projections, size))
        total, total_sq = 0.0, 0.0
        chunks = range(0, n_projections, _CHUNK_IMAGES)
        for start in progress_bar(chunks, total=len(chunks), enable=progress,
                                  desc="projecting"):
            stop = min(start + _CHUNK_IMAGES, n_projections)
            clean = projection.project(
                volume.data, orientations[start:stop],
                shifts=shifts[start:stop] if max_shift > 0 else None,
                ctf=ctf_params[start:stop] if ctf_params is not None else None,
                pixel_size=volume.voxel_size,
            )
            images[start:stop] = clean
            total += float(np.sum(clean, dtype=np.float64))
            total_sq += float(np.sum(np.square(clean, dtype=np.float64)))
        count = n_projections * size * size
        signal_variance = total_sq / count - (total / count) ** 2
        noise_var = 0.0 if np.isinf(snr) else signal_variance / snr
        if noise_var > 0:
            sigma = np.float32(np.sqrt(noise_var))
            for start in progress_bar(chunks, total=len(chunks), enable=progress,
                                      desc="adding noise"):
                stop = min(start + _CHUNK_IMAGES, n_projections)
                block = images[start:stop]
                images[start:stop] = block + sigma * rng_noise.standard_normal(
                    block.shape, dtype=np.float32)
        _write_truth(f, orientations, shifts, ctf_params, volume.data, splits)
        f.attrs.update(_attributes(volume, snr, noise_var, signal_variance, max_shift,
                                   ctf, sampling, seed))
    return out


@dataclass
class ImageChunks:
    """Images to :func:`save` that arrive in chunks (e.g. read and resampled from a particle
    stack): ``n`` images of ``size`` px in all, in order; ``chunks`` is iterated once."""

    n: int
    size: int
    chunks: Iterable[NDArray]


def save(path: str | os.PathLike, projections: "NDArray | ImageChunks", orientations: NDArray,
         shifts: NDArray, pixel_size: float, *, ctf: projection.CTFParameters | None = None,
         volume: NDArray | None = None, split: dict[str, NDArray] | None = None,
         normalize: bool = False, overwrite: bool = False, **attributes: Any) -> Path:
    """Write a dataset from arrays in memory, or images in chunks (:class:`ImageChunks`),
    atomically (nothing is left behind on failure).

    ``split`` defaults to :func:`split_indices` with seed 0; ``attributes`` are
    stored on the root next to the format, version, pixel size and convention.
    ``normalize`` scales the stack to zero mean and unit variance (a second pass over the
    written chunks: memory stays that of one chunk).
    """
    import h5py

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not isinstance(projections, ImageChunks):
        array = np.asarray(projections, dtype=np.float32)
        projections = ImageChunks(len(array), array.shape[-1], [array])
        if array.shape != (projections.n, projections.size, projections.size):
            raise ValueError(f"projections must be (N, L, L), got {array.shape}")
    n, size = projections.n, projections.size
    if np.shape(orientations) != (n, 4) or np.shape(shifts) != (n, 2):
        raise ValueError("projections (N, L, L), orientations (N, 4) and shifts (N, 2) must agree")
    split = split or split_indices(n)
    with atomic_path(path) as partial, h5py.File(partial, "w") as f:
        images = f.create_dataset("projections", (n, size, size), dtype="float32",
                                  chunks=_image_chunks(n, size))
        _write_chunks(images, projections, normalize)
        _write_truth(f, orientations, shifts, ctf, volume, split)
        f.attrs.update({"format": FORMAT, "version": __version__,
                        "pixel_size": float(pixel_size), "convention": CONVENTION,
                        "quaternion_order": "".join(rotations.QUATERNION_ORDER),
                        "ctf": ctf is not None, "created": _now()})
        f.attrs.update({k: v for k, v in attributes.items() if v is not None})
    return path


def _write_chunks(images: Any, source: ImageChunks, normalize: bool) -> None:
    """Fill the HDF5 dataset ``images`` from ``source``'s chunks; then, with ``normalize``,
    scale it to zero mean and unit variance over the stack (statistics in float64)."""
    start, total, total_sq = 0, 0.0, 0.0
    for chunk in source.chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        stop = start + len(chunk)
        if stop > source.n or chunk.shape[1:] != (source.size, source.size):
            raise ValueError(f"expected {source.n} images of {source.size} px in all, got a "
                             f"chunk of shape {chunk.shape} at image {start}")
        images[start:stop] = chunk
        total += float(np.sum(chunk, dtype=np.float64))
        total_sq += float(np.sum(np.square(chunk, dtype=np.float64)))
        start = stop
    if start != source.n:
        raise ValueError(f"expected {source.n} images, got {start}")
    if not normalize:
        return
    count = source.n * source.size * source.size
    mean = total / count
    std = max(np.sqrt(max(total_sq / count - mean**2, 0.0)), 1e-12)
    step = images.chunks[0]  # about 1 MB
    for begin in range(0, source.n, step):
        end = min(begin + step, source.n)
        images[begin:end] = (images[begin:end] - np.float32(mean)) / np.float32(std)


def _image_chunks(n: int, size: int) -> tuple[int, int, int]:
    """About 1 MB of images per HDF5 chunk."""
    return (max(1, min(n, 2**18 // (size * size))), size, size)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_truth(f: Any, orientations: NDArray, shifts: NDArray,
                 ctf: projection.CTFParameters | None, volume: NDArray | None,
                 split: dict[str, NDArray]) -> None:
    """Everything but the images and attributes: orientations, shifts, CTF, volume, split."""
    f.create_dataset("orientations", data=rotations.normalize(orientations))
    f.create_dataset("shifts", data=np.asarray(shifts, dtype=np.float64))
    if ctf is not None:
        f.create_dataset("ctf", data=ctf.as_array())
        f["ctf"].attrs["fields"] = list(projection.CTFParameters.FIELDS)
    if volume is not None:
        size = volume.shape[0]
        f.create_dataset("volume", data=np.asarray(volume, dtype=np.float32),
                         chunks=(1, size, size))
    for name, indices in split.items():
        f.create_dataset(f"split/{name}", data=np.asarray(indices, dtype=np.int64))


def _attributes(volume: Volume, snr: float, noise_var: float, signal_variance: float,
                max_shift: float, ctf: bool, sampling: str, seed: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": __version__,
        "source": volume.source,
        "volume_name": volume.name,
        "pixel_size": float(volume.voxel_size),
        "symmetry": volume.symmetry,
        "snr": float(snr),
        "noise_variance": float(noise_var),
        "signal_variance": float(signal_variance),
        "noisy": bool(noise_var > 0),
        "max_shift": float(max_shift),
        "ctf": bool(ctf),
        "sampling": sampling,
        "seed": int(seed),
        "box_ratio": float(volume.box_ratio) if volume.box_ratio else float("nan"),
        "particle_diameter": float(volume.particle_diameter or float("nan")),
        "convention": CONVENTION,
        "quaternion_order": "".join(rotations.QUATERNION_ORDER),
        "created": _now(),
        "orientations_source": GROUND_TRUTH,
        "shifts_source": GROUND_TRUTH,
        "ctf_source": GROUND_TRUTH if ctf else ABSENT,
    }


def _open(path: str | os.PathLike) -> Any:
    return open_hdf5(path, FORMAT, "dataset")


def load(path: str | os.PathLike, images: bool = True) -> Dataset:
    """Read a dataset file (``images=False`` skips the projections).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it is not a cryoem dataset or its arrays have inconsistent shapes.
    """
    with _open(path) as f:
        try:
            orientations = f["orientations"][()]
            shifts = f["shifts"][()]
            volume = f["volume"][()] if "volume" in f else None
            split = {name: f[f"split/{name}"][()] for name in ("train", "validation", "test")}
            ctf = projection.CTFParameters.from_array(f["ctf"][()]) if "ctf" in f else None
            shape = f["projections"].shape
            projections = f["projections"][()] if images else None
        except KeyError as error:
            raise ValueError(f"{path} is missing an array: {error}") from error
        attrs = {key: _plain(value) for key, value in f.attrs.items()}
    n = len(orientations)
    size = shape[-1]
    attrs["size"] = int(size)
    expected = {"projections": (n, size, size), "orientations": (n, 4), "shifts": (n, 2),
                "volume": (size, size, size)}
    actual = {"projections": shape, "orientations": orientations.shape, "shifts": shifts.shape,
              "volume": (size,) * 3 if volume is None else volume.shape}
    for name, want in expected.items():
        if tuple(actual[name]) != want:
            raise ValueError(f"{path}: {name} has shape {tuple(actual[name])}, expected {want}")
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{path}: {len(ctf)} CTF parameter sets for {n} projections")
    return Dataset(projections, orientations, shifts, volume, split, attrs, ctf, Path(path))


def read_images(path: str | os.PathLike, indices: NDArray[np.int64] | slice) -> NDArray:
    """Read some projections without loading the whole stack (sorted indices or a slice)."""
    with _open(path) as f:
        return f["projections"][indices]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
