"""RELION files: export particles for RELION/cryoSPARC, import them back as a dataset.

A particle set is an ``.mrcs`` stack and a ``.star`` file (RELION ≥ 3.1) with
an ``optics`` table (pixel size, image size, voltage, Cs, amplitude contrast)
and a ``particles`` table (``rlnImageName``, ``rlnAngleRot/Tilt/Psi``,
``rlnOriginXAngst/YAngst``, defocus when there is a CTF), read and written
with ``starfile``.

Conventions, tested on hand-worked cases:

* angles: RELION's matrix of ``(rot, tilt, psi)`` *is* ``R_i``
  (:mod:`cryoem.rotations`);
* images: the ``.mrcs`` stores ``img[y, x]`` as in the datasets (no flip);
* shifts: RELION's origin points *to* the centre: a particle drawn at
  ``+dx`` pixels has ``rlnOriginXAngst = −dx · pixel size``;
* defocus in Å and the astigmatism angle in degrees, as in the datasets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import projection, rotations
from ._files import atomic_path
from .datasets import Dataset

__all__ = ["export_relion", "import_relion", "read_star"]

STACK_NAME = "particles.mrcs"
STAR_NAME = "particles.star"

_CTF_COLUMNS = {"defocus_u": "rlnDefocusU", "defocus_v": "rlnDefocusV",
                "defocus_angle": "rlnDefocusAngle", "phase_shift": "rlnPhaseShift"}
_OPTICS_COLUMNS = {"voltage": "rlnVoltage", "cs": "rlnSphericalAberration",
                   "amplitude_contrast": "rlnAmplitudeContrast"}


def export_relion(data: Dataset, out_dir: str | os.PathLike, *,
                  orientations: ArrayLike | None = None, shifts: ArrayLike | None = None,
                  indices: ArrayLike | None = None, overwrite: bool = False) -> Path:
    """Write ``particles.mrcs`` and ``particles.star`` for the projections ``indices``.

    ``orientations`` (quaternions) and ``shifts`` (pixels) default to the
    dataset's own (the ground truth of a simulation).  Returns the STAR path.
    """
    import mrcfile
    import pandas as pd
    import starfile

    out = Path(out_dir)
    star_path, stack_path = out / STAR_NAME, out / STACK_NAME
    if star_path.exists() and not overwrite:
        raise FileExistsError(f"{star_path} exists; pass overwrite=True (--overwrite)")
    index = np.arange(len(data)) if indices is None else np.asarray(indices)
    q = data.orientations[index] if orientations is None else rotations.normalize(orientations)
    s = data.shifts[index] if shifts is None else np.asarray(shifts, dtype=np.float64)
    if len(q) != len(index) or s.shape != (len(index), 2):
        raise ValueError("orientations and shifts must match the exported projections")
    images = np.asarray(data.projections[index], dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    pixel = data.pixel_size

    with atomic_path(stack_path) as partial, mrcfile.new(partial, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = pixel
    angles = rotations.quaternion_to_euler(q)
    particles: dict[str, Any] = {
        "rlnImageName": [f"{k + 1:06d}@{STACK_NAME}" for k in range(len(index))],
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": -s[:, 0] * pixel, "rlnOriginYAngst": -s[:, 1] * pixel,
        "rlnOpticsGroup": np.ones(len(index), dtype=int),
    }
    ctf = data.ctf[index] if data.ctf is not None else None
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
              "rlnImagePixelSize": [pixel], "rlnImageSize": [images.shape[-1]],
              "rlnImageDimensionality": [2]}
    if ctf is not None:
        for name, column in _CTF_COLUMNS.items():
            particles[column] = getattr(ctf, name)
        for name, column in _OPTICS_COLUMNS.items():
            values = np.unique(getattr(ctf, name))
            if len(values) != 1:
                raise ValueError(f"{name} varies between particles: one optics group needs one")
            optics[column] = [float(values[0])]
    else:  # RELION requires these even without a CTF to correct
        optics.update({"rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                       "rlnAmplitudeContrast": [0.1]})
    with atomic_path(star_path) as partial:
        starfile.write({"optics": pd.DataFrame(optics), "particles": pd.DataFrame(particles)},
                       partial, overwrite=True)
    return star_path


def read_star(path: str | os.PathLike) -> tuple[Any, Any]:
    """The ``(optics, particles)`` tables of a RELION ≥ 3.1 STAR file (optics may be ``None``)."""
    import starfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no STAR file at {path}")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:  # noqa: BLE001 - starfile raises several types
        raise ValueError(f"{path} is not a readable STAR file: {error}") from error
    particles = blocks.get("particles")
    if particles is None:
        tables = [block for block in blocks.values() if "rlnImageName" in getattr(block, "columns", [])]
        if not tables:
            raise ValueError(f"{path} has no particle table (no rlnImageName column)")
        particles = tables[0]
    return blocks.get("optics"), particles


def _read_images(names: list[str], folder: Path) -> NDArray[np.float32]:
    """Images named ``index@stack.mrcs`` (1-based), each stack opened once, memory-mapped."""
    import mrcfile

    parsed = [name.split("@", 1) for name in names]
    images = []
    stacks: dict[str, Any] = {}
    try:
        for index, stack in parsed:
            if stack not in stacks:
                path = Path(stack) if Path(stack).is_absolute() else folder / stack
                if not path.is_file():
                    raise FileNotFoundError(f"image stack {path} named in the STAR file is missing")
                stacks[stack] = mrcfile.mmap(path, mode="r", permissive=True)
            data = stacks[stack].data
            data = data[None] if data.ndim == 2 else data
            images.append(np.array(data[int(index) - 1], dtype=np.float32))
    finally:
        for handle in stacks.values():
            handle.close()
    return np.stack(images)


def import_relion(star_path: str | os.PathLike, out: str | os.PathLike, *,
                  size: int | None = None, pixel_size: float | None = None,
                  normalize: bool = True, overwrite: bool = False) -> Path:
    """Turn a RELION particle set into a cryoem dataset (no ground-truth volume).

    Images are resampled by Fourier cropping/padding to ``size`` pixels (the
    pixel size follows) and, with ``normalize``, scaled to zero mean and unit
    variance over the stack, so that a trained model sees what it expects.
    The STAR's angles and origins, if any, are kept only as a *reference*
    (``orientations_source = "reference"``), never as a ground truth: commands
    score against them only when asked (``--reference-poses``).  Missing angles
    or origins are stored as NaN (``"absent"``), never as zeros.  A CTF is kept
    when defocus columns exist.
    """
    from .datasets import save
    from .volumes import fourier_resample

    star_path = Path(star_path)
    optics, particles = read_star(star_path)
    images = _read_images(list(particles["rlnImageName"]), star_path.parent)
    group = _optics_for(optics, particles)
    pixel = pixel_size or float(group.get("rlnImagePixelSize", group.get("rlnPixelSize", 0)) or 0)
    if not pixel > 0:
        raise ValueError(f"{star_path}: no pixel size (rlnImagePixelSize); pass --pixel-size")
    original = images.shape[-1]
    if size is not None and size != original:
        images = fourier_resample(images, size, axes=(-2, -1))
        pixel *= original / size
    if normalize:
        images = (images - images.mean()) / max(float(images.std()), 1e-12)

    def column(name: str) -> NDArray[np.float64]:
        return np.asarray(particles[name], dtype=np.float64) if name in particles \
            else np.zeros(len(particles))

    orientations, orientations_source = _reference_angles(particles, star_path)
    shifts, shifts_source = _reference_origins(particles, star_path, pixel, original / images.shape[-1])
    ctf = None
    if "rlnDefocusU" in particles:
        ctf = projection.CTFParameters(
            defocus_u=column("rlnDefocusU"),
            defocus_v=column("rlnDefocusV") if "rlnDefocusV" in particles else column("rlnDefocusU"),
            defocus_angle=column("rlnDefocusAngle"),
            voltage=float(group.get("rlnVoltage", 300.0)),
            cs=float(group.get("rlnSphericalAberration", 2.7)),
            amplitude_contrast=float(group.get("rlnAmplitudeContrast", 0.1)),
            phase_shift=column("rlnPhaseShift"))
    return save(out, images, orientations, shifts, pixel, ctf=ctf,
                overwrite=overwrite, source=str(star_path), volume_name=star_path.stem,
                symmetry="C1", snr=float("nan"), noisy=True, max_shift=float("nan"),
                imported=True, orientations_source=orientations_source,
                shifts_source=shifts_source, ctf_source="input" if ctf is not None else "absent")


_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def _finite_column(particles: Any, name: str, star_path: Path) -> NDArray[np.float64]:
    """A numeric column, or a one-line error naming the file, the first bad row and the column."""
    values = np.asarray(particles[name], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{star_path}: row {bad[0] + 1} of the particle table has no finite "
                         f"value in column {name} ({len(bad)} such rows)")
    return values


def _reference_angles(particles: Any, star_path: Path) -> tuple[NDArray[np.float64], str]:
    """Quaternions from the STAR's angles, kept only as a reference (never as a truth).

    Without angle columns the orientations are absent (NaN), never zeros.
    """
    present = [name for name in _ANGLES if name in particles]
    if not present:
        return np.full((len(particles), 4), np.nan), "absent"
    if len(present) != len(_ANGLES):
        missing = sorted(set(_ANGLES) - set(present))
        raise ValueError(f"{star_path}: angle columns {', '.join(missing)} are missing while "
                         f"{', '.join(present)} are present")
    angles = np.stack([_finite_column(particles, name, star_path) for name in _ANGLES], -1)
    return rotations.euler_to_quaternion(angles), "reference"


def _reference_origins(particles: Any, star_path: Path, pixel: float,
                       scale: float) -> tuple[NDArray[np.float64], str]:
    """Shifts in (resampled) pixels from ``rlnOriginX/YAngst`` (RELION ≥ 3.1) or
    ``rlnOriginX/Y`` in original pixels (RELION 3.0, cryoDRGN), kept as a reference.

    ``scale`` is the original box over the resampled one. Without origins: absent (NaN).
    """
    if "rlnOriginXAngst" in particles and "rlnOriginYAngst" in particles:
        origin = np.stack([_finite_column(particles, name, star_path)
                           for name in ("rlnOriginXAngst", "rlnOriginYAngst")], -1) / pixel
    elif "rlnOriginX" in particles and "rlnOriginY" in particles:
        origin = np.stack([_finite_column(particles, name, star_path)
                           for name in ("rlnOriginX", "rlnOriginY")], -1) / scale
    else:
        return np.full((len(particles), 2), np.nan), "absent"
    return -origin, "reference"


def _optics_for(optics: Any, particles: Any) -> dict[str, Any]:
    """The optics group of the particles (one group supported), as a plain dict."""
    if optics is None or len(optics) == 0:
        return {}
    if "rlnOpticsGroup" in particles and particles["rlnOpticsGroup"].nunique() > 1:
        raise ValueError("several optics groups: import each group separately")
    return dict(optics.iloc[0])
