"""Particle sets from other programs: RELION STAR files (3.0 and ≥ 3.1) into a dataset.

What labs have is a STAR file naming images in ``.mrcs`` stacks, with CTF
parameters and, sometimes, angles and origins from an earlier refinement.
:func:`import_relion` reads it into a :mod:`cryoem.datasets` file:

* images ``index@stack`` (1-based), each stack memory-mapped once; stacks are
  found relative to ``datadir`` (a RELION project folder) or to the STAR file;
* optics per particle: from the particle table's own columns (RELION 3.0,
  cryoDRGN), else from its optics group's row of the ``optics`` table (several
  groups supported), else RELION's defaults for a CTF-less set;
* angles and origins (``rlnOriginX/YAngst``, or ``rlnOriginX/Y`` in pixels as
  RELION 3.0 writes them) kept only as a *reference*, never as a ground truth;
  absent ones are NaN, never zeros;
* every bad input is a one-line :class:`ValueError` (or
  :class:`FileNotFoundError`) naming the file, the row and the column; nothing
  is written on failure (the dataset is written atomically at the end).

Example
-------
>>> from cryoem import particles                      # doctest: +SKIP
>>> particles.import_relion("Extract/job012/particles.star", "data/mine.h5",
...                         size=64, datadir=".")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

from . import projection, rotations

__all__ = ["import_relion", "read_star", "optics_per_particle", "read_images", "write_star"]

_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
#: Optics values a STAR file may give per particle or per optics group, and RELION's defaults
#: (used only when a set has neither, as RELION itself requires them).
_OPTICS = {"voltage": ("rlnVoltage", 300.0), "cs": ("rlnSphericalAberration", 2.7),
           "amplitude_contrast": ("rlnAmplitudeContrast", 0.1)}
_PIXEL_COLUMNS = ("rlnImagePixelSize", "rlnPixelSize")


def read_star(path: str | os.PathLike) -> tuple[Any, Any]:
    """The ``(optics, particles)`` tables of a RELION STAR file (``optics`` may be ``None``).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it is not a STAR file, or has no particle table with ``rlnImageName``.
    """
    import starfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no STAR file at {path}")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:  # noqa: BLE001 - starfile raises several types
        raise ValueError(f"{path} is not a readable STAR file: {error}") from error
    tables = {name: block for name, block in blocks.items() if hasattr(block, "columns")}
    particles = tables.get("particles")
    if particles is None:
        named = [block for block in tables.values() if "rlnImageName" in block.columns]
        particles = named[0] if named else None
    if particles is None or "rlnImageName" not in particles.columns:
        raise ValueError(f"{path}: no particle table with an rlnImageName column (tables: "
                         f"{', '.join(tables) or 'none'})")
    return tables.get("optics"), particles.reset_index(drop=True)


def _numbers(table: Any, column: str, path: Path, what: str = "particle") -> NDArray[np.float64]:
    """A numeric column; a non-numeric or non-finite entry is an error naming its row."""
    values = np.asarray(table[column].to_numpy(), dtype=object)
    numbers = np.full(len(values), np.nan)
    for row, value in enumerate(values):
        try:
            numbers[row] = float(value)
        except (TypeError, ValueError):
            pass
        if not np.isfinite(numbers[row]):
            raise ValueError(f"{path}: row {row + 1} of the {what} table has no finite value in "
                             f"column {column} ({value!r})")
    return numbers


def _group_rows(optics: Any, particles: Any, path: Path) -> NDArray[np.int64] | None:
    """For each particle, the row of its optics group in ``optics`` (``None`` without a table)."""
    if optics is None or len(optics) == 0:
        return None
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) == 1:
            return np.zeros(len(particles), dtype=np.int64)
        raise ValueError(f"{path}: {len(optics)} optics groups but no rlnOpticsGroup column in "
                         "the particle table")
    if "rlnOpticsGroup" not in optics.columns:
        raise ValueError(f"{path}: the optics table has no rlnOpticsGroup column")
    where = {int(group): row for row, group in
             enumerate(_numbers(optics, "rlnOpticsGroup", path, "optics"))}
    groups = _numbers(particles, "rlnOpticsGroup", path)
    rows = np.empty(len(particles), dtype=np.int64)
    for k, group in enumerate(groups.astype(np.int64)):
        if group not in where:
            raise ValueError(f"{path}: row {k + 1}, column rlnOpticsGroup: optics group {group} "
                             f"is not in the optics table (groups {sorted(where)})")
        rows[k] = where[group]
    return rows


def optics_per_particle(optics: Any, particles: Any, path: str | os.PathLike,
                        pixel_size: float | None = None) -> dict[str, NDArray[np.float64]]:
    """Pixel size, voltage, Cs and amplitude contrast of every particle.

    Each value comes from the particle table's own column when it has one, else from the
    particle's optics group, else (not the pixel size) RELION's default. ``pixel_size``
    overrides the file's. RELION 3.0's ``rlnDetectorPixelSize`` and ``rlnMagnification``
    give the pixel size when no pixel-size column exists.
    """
    path = Path(path)
    rows = _group_rows(optics, particles, path)

    def lookup(column: str) -> NDArray[np.float64] | None:
        if column in particles.columns:
            return _numbers(particles, column, path)
        if rows is not None and column in optics.columns:
            return _numbers(optics, column, path, "optics")[rows]
        return None

    values: dict[str, NDArray[np.float64]] = {}
    for name, (column, default) in _OPTICS.items():
        found = lookup(column)
        values[name] = np.full(len(particles), default) if found is None else found
    if pixel_size is not None:
        values["pixel_size"] = np.full(len(particles), float(pixel_size))
        return values
    for column in _PIXEL_COLUMNS:
        found = lookup(column)
        if found is not None:
            values["pixel_size"] = found
            return values
    detector, magnification = lookup("rlnDetectorPixelSize"), lookup("rlnMagnification")
    if detector is not None and magnification is not None:
        values["pixel_size"] = detector * 1e4 / magnification  # µm at the detector → Å
        return values
    raise ValueError(f"{path}: no pixel size (column rlnImagePixelSize in the optics or particle "
                     "table); pass --pixel-size")


def _stack_path(stack: str, path: Path, datadir: Path | None, row: int) -> Path:
    """Where a stack named in the STAR file lies: absolute, under ``datadir``, or beside the STAR."""
    name = Path(stack)
    if name.is_absolute():
        candidates = [name]
    else:
        candidates = ([datadir / name] if datadir is not None else []) + [path.parent / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    hint = "" if datadir is not None else " (pass --datadir for a RELION project folder)"
    raise FileNotFoundError(f"{path}: row {row + 1}, column rlnImageName: image stack {stack} "
                            f"not found at {tried}{hint}")


def _parse_name(name: Any, path: Path, row: int) -> tuple[int, str]:
    text = str(name)
    index, at, stack = text.partition("@")
    if not at or not stack:
        raise ValueError(f"{path}: row {row + 1}, column rlnImageName: {text!r} is not "
                         "INDEX@STACK")
    try:
        number = int(index)
    except ValueError:
        raise ValueError(f"{path}: row {row + 1}, column rlnImageName: {index!r} is not an "
                         "image number") from None
    if number < 1:
        raise ValueError(f"{path}: row {row + 1}, column rlnImageName: image number {number} "
                         "(numbers start at 1)")
    return number, stack


def read_images(names: Any, path: str | os.PathLike,
                datadir: str | os.PathLike | None = None,
                first_row: int = 0) -> NDArray[np.float32]:
    """The images named ``index@stack`` (1-based) in a STAR file's ``rlnImageName`` column.

    Each stack is memory-mapped once. A missing stack, an index past a stack's end, below
    1, or not a number is an error naming the STAR file, the row and the column (``names``
    being the file's rows from ``first_row`` on, 0-based).
    """
    import mrcfile

    path = Path(path)
    folder = None if datadir is None else Path(datadir)
    parsed = [_parse_name(name, path, row) for row, name in enumerate(names, start=first_row)]
    stacks: dict[str, Any] = {}
    images = []
    try:
        for row, (number, stack) in enumerate(parsed, start=first_row):
            if stack not in stacks:
                stacks[stack] = mrcfile.mmap(_stack_path(stack, path, folder, row), mode="r",
                                             permissive=True)
            data = stacks[stack].data
            data = data[None] if data.ndim == 2 else data
            if number > len(data):
                raise ValueError(f"{path}: row {row + 1}, column rlnImageName: image {number} "
                                 f"of {stack}, which holds {len(data)}")
            images.append(np.array(data[number - 1], dtype=np.float32))
    finally:
        for handle in stacks.values():
            handle.close()
    sizes = {image.shape for image in images}
    if len(sizes) != 1 or len(next(iter(sizes))) != 2 or len(set(next(iter(sizes)))) != 1:
        raise ValueError(f"{path}: the particles are not square images of one size "
                         f"({sorted(sizes)})")
    return np.stack(images)


def _reference_angles(particles: Any, path: Path) -> tuple[NDArray[np.float64], str]:
    """Quaternions from the STAR's angles, kept only as a reference (NaN when absent)."""
    present = [name for name in _ANGLES if name in particles.columns]
    if not present:
        return np.full((len(particles), 4), np.nan), "absent"
    if len(present) != len(_ANGLES):
        missing = sorted(set(_ANGLES) - set(present))
        raise ValueError(f"{path}: angle column(s) {', '.join(missing)} missing while "
                         f"{', '.join(present)} are present")
    angles = np.stack([_numbers(particles, name, path) for name in _ANGLES], -1)
    return rotations.euler_to_quaternion(angles), "reference"


def _reference_origins(particles: Any, path: Path, pixel: NDArray[np.float64],
                       scale: float) -> tuple[NDArray[np.float64], str]:
    """Shifts in working pixels from ``rlnOriginX/YAngst`` (RELION ≥ 3.1) or ``rlnOriginX/Y``
    in original pixels (RELION 3.0, cryoDRGN), kept as a reference (NaN when absent).

    ``pixel`` is each particle's working pixel size (Å), ``scale`` the original box over the
    working box.  RELION's origin points to the centre: shift = −origin.
    """
    columns = particles.columns
    if "rlnOriginXAngst" in columns and "rlnOriginYAngst" in columns:
        origin = np.stack([_numbers(particles, name, path) for name in
                           ("rlnOriginXAngst", "rlnOriginYAngst")], -1) / pixel[:, None]
    elif "rlnOriginX" in columns and "rlnOriginY" in columns:
        origin = np.stack([_numbers(particles, name, path) for name in
                           ("rlnOriginX", "rlnOriginY")], -1) / scale
    else:
        return np.full((len(particles), 2), np.nan), "absent"
    return -origin, "reference"


def _ctf(particles: Any, optics: dict[str, NDArray[np.float64]],
         path: Path) -> projection.CTFParameters | None:
    """Each particle's CTF (defocus from its row, the rest from its optics), if it has one."""
    columns = particles.columns
    if "rlnDefocusU" not in columns:
        return None
    defocus_u = _numbers(particles, "rlnDefocusU", path)

    def optional(column: str, default: Any) -> Any:
        return _numbers(particles, column, path) if column in columns else default

    return projection.CTFParameters(
        defocus_u=defocus_u, defocus_v=optional("rlnDefocusV", defocus_u),
        defocus_angle=optional("rlnDefocusAngle", 0.0), voltage=optics["voltage"],
        cs=optics["cs"], amplitude_contrast=optics["amplitude_contrast"],
        phase_shift=optional("rlnPhaseShift", 0.0))


def import_relion(star_path: str | os.PathLike, out: str | os.PathLike, *,
                  size: int | None = None, pixel_size: float | None = None,
                  datadir: str | os.PathLike | None = None, normalize: bool = True,
                  symmetry: str = "C1", overwrite: bool = False) -> Path:
    """Turn a RELION particle set into a cryoem dataset (no ground-truth volume).

    Images are resampled by Fourier cropping/padding to ``size`` pixels (the
    pixel size follows) and, with ``normalize``, scaled to zero mean and unit
    variance over the stack, so that a trained model sees what it expects.  They are
    read, resampled and written :data:`IMPORT_CHUNK` at a time: memory does not grow
    with the number of particles.
    The STAR's angles and origins, if any, are kept only as a *reference*
    (``orientations_source = "reference"``), never as a ground truth: commands
    score against them only when asked (``--reference-poses``).  Missing angles
    or origins are stored as NaN (``"absent"``), never as zeros.  A CTF is kept
    when defocus columns exist, with each particle's own optics.  ``symmetry`` is
    the particle's point group as the user knows it (recorded, used by reconstruction).

    Raises
    ------
    FileNotFoundError, ValueError
        On a missing file or a bad entry, naming the file, the row and the column;
        nothing is written then.
    """
    from .datasets import ImageChunks, save
    from .rotations import point_group

    point_group(symmetry)  # a clear error on an unknown group, before anything is read

    star_path = Path(star_path)
    optics_table, particles = read_star(star_path)
    optics = optics_per_particle(optics_table, particles, star_path, pixel_size)
    if len(np.unique(optics["pixel_size"])) != 1:
        raise ValueError(f"{star_path}: the particles have several pixel sizes "
                         f"({sorted(set(optics['pixel_size']))} Å): import each optics group "
                         "separately")
    orientations, orientations_source = _reference_angles(particles, star_path)
    ctf = _ctf(particles, optics, star_path)
    names = list(particles["rlnImageName"])
    original = read_images(names[:1], star_path, datadir).shape[-1]
    size = size or original
    pixel = float(optics["pixel_size"][0]) * original / size
    shifts, shifts_source = _reference_origins(
        particles, star_path, np.full(len(particles), pixel), original / size)
    images = ImageChunks(len(particles), size,
                         _resampled_chunks(names, star_path, datadir, original, size))
    return save(out, images, orientations, shifts, pixel, ctf=ctf, normalize=normalize,
                overwrite=overwrite, source=str(star_path), volume_name=star_path.stem,
                symmetry=symmetry, snr=float("nan"), noisy=True, max_shift=float("nan"),
                imported=True, orientations_source=orientations_source,
                shifts_source=shifts_source, ctf_source="input" if ctf is not None else "absent",
                original_size=original)


#: Particles read, resampled and written per step of an import (memory: one chunk).
IMPORT_CHUNK = 2048


def _resampled_chunks(names: list[Any], star_path: Path, datadir: str | os.PathLike | None,
                      original: int, size: int) -> Iterator[NDArray[np.float32]]:
    """The particles named in ``names`` (all of ``original`` px), in order, a chunk at a
    time, Fourier-resampled to ``size`` px; an error names the STAR file's row."""
    from .volumes import fourier_resample

    for start in range(0, len(names), IMPORT_CHUNK):
        chunk = read_images(names[start:start + IMPORT_CHUNK], star_path, datadir,
                            first_row=start)
        if chunk.shape[-1] != original:
            raise ValueError(f"{star_path}: the particles are not square images of one size "
                             f"({original} px from row 1, {chunk.shape[-1]} px from row "
                             f"{start + 1} on)")
        if chunk.shape[-1] != size:
            chunk = fourier_resample(chunk, size, axes=(-2, -1))
        yield chunk.astype(np.float32, copy=False)


def _optics_groups(optics: dict[str, NDArray[np.float64]], size: int) -> tuple[Any, NDArray]:
    """An optics table for a set that had none (RELION 3.0): one group per distinct optics."""
    import pandas as pd

    keys = np.stack([optics["pixel_size"], optics["voltage"], optics["cs"],
                     optics["amplitude_contrast"]], -1)
    unique, group = np.unique(keys, axis=0, return_inverse=True)
    table = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, len(unique) + 1),
        "rlnOpticsGroupName": [f"opticsGroup{k + 1}" for k in range(len(unique))],
        "rlnImagePixelSize": unique[:, 0], "rlnImageSize": size, "rlnImageDimensionality": 2,
        "rlnVoltage": unique[:, 1], "rlnSphericalAberration": unique[:, 2],
        "rlnAmplitudeContrast": unique[:, 3]})
    return table, np.ravel(group) + 1


def write_star(source: str | os.PathLike, out: str | os.PathLike, quaternions: NDArray,
               shifts: NDArray, pixel_size: float) -> Path:
    """The input STAR file's particles, in its order, with estimated poses (RELION 3.1).

    Every column of the input is kept (image names as they were, CTF, groups) except the
    angles and origins, which are replaced by ``quaternions`` and ``shifts`` (working pixels
    of ``pixel_size`` Å, so origins in Å do not depend on the working box).  A RELION 3.0
    input gains an optics table.
    """
    import starfile

    from ._files import atomic_path

    source = Path(source)
    optics_table, table = read_star(source)
    if len(quaternions) != len(table) or np.shape(shifts) != (len(table), 2):
        raise ValueError(f"{len(quaternions)} poses for the {len(table)} particles of {source}")
    table = table.drop(columns=[c for c in ("rlnOriginX", "rlnOriginY") if c in table.columns])
    angles = rotations.quaternion_to_euler(quaternions)
    for k, column in enumerate(_ANGLES):
        table[column] = angles[:, k]
    table["rlnOriginXAngst"] = -np.asarray(shifts)[:, 0] * pixel_size
    table["rlnOriginYAngst"] = -np.asarray(shifts)[:, 1] * pixel_size
    if optics_table is None:
        optics = optics_per_particle(None, table, source)
        size = read_images(table["rlnImageName"][:1], source).shape[-1]
        optics_table, table["rlnOpticsGroup"] = _optics_groups(optics, size)
        moved = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                             "rlnDetectorPixelSize", "rlnMagnification", "rlnImagePixelSize")
                 if c in table.columns]
        table = table.drop(columns=moved)
    with atomic_path(out) as partial:
        starfile.write({"optics": optics_table, "particles": table}, partial, overwrite=True)
    return Path(out)
