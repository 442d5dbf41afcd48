"""RELION files: export particles for RELION/cryoSPARC (import: :mod:`cryoem.particles`).

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
from numpy.typing import ArrayLike

from . import rotations, stacks
from ._files import atomic_path
from .datasets import Dataset

__all__ = ["export_relion", "import_relion", "read_star"]

# Reading particle sets lives in cryoem.particles; these names stay here for the API.
from .particles import import_relion, read_star  # noqa: E402,F401

STACK_NAME = "particles.mrcs"
STAR_NAME = "particles.star"

_CTF_COLUMNS = {"defocus_u": "rlnDefocusU", "defocus_v": "rlnDefocusV",
                "defocus_angle": "rlnDefocusAngle", "phase_shift": "rlnPhaseShift"}
_OPTICS_COLUMNS = {"voltage": "rlnVoltage", "cs": "rlnSphericalAberration",
                   "amplitude_contrast": "rlnAmplitudeContrast"}


#: Particles copied per step into the exported stack (memory: one chunk).
EXPORT_CHUNK = 4096


def _images(data: Dataset, index: np.ndarray) -> Any:
    """The projections to export: in memory if loaded, else read from the file lazily."""
    if data.projections is not None:
        return np.asarray(data.projections)[index]
    return stacks.ImageStack(data.path, index)


def export_relion(data: Dataset, out_dir: str | os.PathLike, *,
                  orientations: ArrayLike | None = None, shifts: ArrayLike | None = None,
                  indices: ArrayLike | None = None, poses: bool = True,
                  overwrite: bool = False) -> Path:
    """Write ``particles.mrcs`` and ``particles.star`` for the projections ``indices``.

    ``orientations`` (quaternions) and ``shifts`` (pixels) default to the
    dataset's own (the ground truth of a simulation).  With ``poses=False`` the
    STAR has no angle or origin columns: particles as a lab has them before
    any refinement.  The stack is written a chunk at a time; a dataset loaded without
    its images (``datasets.load(path, images=False)``) is read from its file as it goes.
    Returns the STAR path.
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
    out.mkdir(parents=True, exist_ok=True)
    pixel, size = data.pixel_size, data.size
    with atomic_path(stack_path) as partial, \
            mrcfile.new_mmap(partial, (len(index), size, size), mrc_mode=2,
                             overwrite=True) as mrc:
        for start, stop, chunk in stacks.chunks(_images(data, index), EXPORT_CHUNK):
            mrc.data[start:stop] = np.asarray(chunk, dtype=np.float32)
        mrc.set_image_stack()
        mrc.voxel_size = pixel
    angles = rotations.quaternion_to_euler(q)
    particles: dict[str, Any] = {
        "rlnImageName": [f"{k + 1:06d}@{STACK_NAME}" for k in range(len(index))],
        "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": -s[:, 0] * pixel, "rlnOriginYAngst": -s[:, 1] * pixel,
        "rlnOpticsGroup": np.ones(len(index), dtype=int),
    }
    if not poses:
        for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                       "rlnOriginYAngst"):
            del particles[column]
    ctf = data.ctf[index] if data.ctf is not None else None
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
              "rlnImagePixelSize": [pixel], "rlnImageSize": [size],
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
