"""Proteins: atomic models turned into density maps, the built-in set, entries fetched by id.

* Atomic models, PDB or mmCIF (:func:`from_atomic_model`), turned into a
  density with gemmi's electron scattering factors.
* Built-in proteins shipped with the package (:func:`builtin_names`,
  :func:`load_builtin`): genuine PDB entries, listed with their symmetry and
  checksum in ``cryoem/data/proteins/manifest.json``.
* PDB/EMDB entries by id (:func:`fetch`), cached on disk, only when online.

:func:`cryoem.volumes.resolve` turns any of these, named by a string, into a
:class:`cryoem.volumes.Volume`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import rotations
from .volumes import DEFAULT_BOX_RATIO, DEFAULT_PROTEIN, Volume, lowpass_nyquist

__all__ = ["from_atomic_model", "builtin_names", "builtin_manifest", "builtin_path",
           "load_builtin", "cache_dir", "fetch", "PDB_URL", "EMDB_URL"]


# ----------------------------------------------------------------------------
# Atomic models
# ----------------------------------------------------------------------------
def from_atomic_model(
    model: str | os.PathLike,
    size: int,
    voxel_size: float | None = None,
    resolution: float | None = None,
    box_ratio: float = DEFAULT_BOX_RATIO,
    symmetry: str = "C1",
    symmetry_axis: ArrayLike | None = None,
    symmetry_center: ArrayLike | None = None,
    name: str | None = None,
) -> Volume:
    """Density of a PDB/mmCIF model (optionally gzipped) in an ``L³`` box, via gemmi.

    Hydrogens, waters and ligands are removed; atoms get B = 0 and the map is
    blurred to ``resolution`` (a Gaussian of σ = 0.225·resolution per atom, as
    Chimera's ``molmap``) with electron scattering factors, then band-limited
    to the Nyquist sphere (:func:`lowpass_nyquist`) so that the projector
    represents it exactly.  The particle is
    centred on its centroid, or on ``symmetry_center`` with ``symmetry_axis``
    turned onto z so that the point group's operators (about z) apply.

    Parameters
    ----------
    size
        Box edge ``L`` in voxels.
    voxel_size
        Å per voxel; by default the particle's diameter times ``box_ratio``
        fills the box.
    resolution
        Å; by default twice the voxel size (Nyquist).
    """
    import gemmi

    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"no atomic model at {path}")
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as error:  # noqa: BLE001 - gemmi raises several types
        raise ValueError(f"{path} is not a readable PDB/mmCIF model: {error}") from error
    structure.setup_entities()
    structure.remove_hydrogens()
    structure.remove_ligands_and_waters()
    structure.remove_empty_chains()
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise ValueError(f"{path} has no protein or nucleic-acid atoms")
    first = structure[0]
    positions = np.array([atom.pos.tolist() for _, atom in _atoms(first)])

    if symmetry_axis is not None:
        origin = np.asarray(symmetry_center if symmetry_center is not None else positions.mean(0))
        turn = _rotation_onto_z(np.asarray(symmetry_axis, dtype=np.float64))
    else:
        origin = positions.mean(axis=0)
        turn = np.eye(3)
    radius = float(np.max(np.linalg.norm((positions - origin) @ turn.T, axis=1)))
    diameter = 2 * radius
    if voxel_size is None:
        voxel_size = box_ratio * diameter / size
    if resolution is None:
        resolution = 2 * voxel_size
    box = size * voxel_size
    if diameter + 2 * resolution > box:
        warnings.warn(
            f"{path.name}: particle ({diameter:.0f} Å) does not fit the {box:.0f} Å box with room "
            "for its blur; projections will wrap around", stacklevel=2)

    # Move the centre to the box origin (index L // 2) and zero the B-factors.
    shift = np.full(3, (size // 2) * voxel_size) - turn @ origin
    first.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(turn.tolist()), gemmi.Vec3(*shift)))
    for _, atom in _atoms(first):
        atom.b_iso = 0.0
    structure.cell = gemmi.UnitCell(box, box, box, 90, 90, 90)
    structure.spacegroup_hm = "P 1"

    calculator = gemmi.DensityCalculatorE()
    calculator.d_min = resolution
    calculator.blur = 8 * np.pi**2 * (0.225 * resolution) ** 2
    calculator.set_grid_cell_and_spacegroup(structure)
    calculator.grid.set_size(size, size, size)
    calculator.add_model_density_to_grid(first)
    calculator.grid.symmetrize_sum()
    data = np.array(calculator.grid.array, dtype=np.float32).transpose(2, 1, 0)
    return Volume(
        lowpass_nyquist(data), float(voxel_size), name or path.name.split(".")[0],
        symmetry=symmetry, source=str(path), particle_diameter=diameter,
        metadata={"resolution_angstrom": float(resolution)},
    )


def _atoms(model: Any) -> Any:
    for chain in model:
        for residue in chain:
            for atom in residue:
                yield residue, atom


def _rotation_onto_z(axis: NDArray[np.float64]) -> NDArray[np.float64]:
    """A rotation matrix taking the unit vector ``axis`` onto +z."""
    axis = axis / np.linalg.norm(axis)
    z = np.array([0.0, 0.0, 1.0])
    cross = np.cross(axis, z)
    sin, cos = np.linalg.norm(cross), float(axis @ z)
    if sin < 1e-12:
        return np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
    q = rotations.axis_angle_to_quaternion(cross / sin, np.arctan2(sin, cos))
    return rotations.quaternion_to_matrix(q)


# ----------------------------------------------------------------------------
# Built-in proteins
# ----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def builtin_manifest() -> tuple[dict[str, Any], ...]:
    """The manifest of shipped proteins (name, PDB id, title, symmetry, sha256, ...)."""
    text = resources.files("cryoem").joinpath("data/proteins/manifest.json").read_text()
    return tuple(json.loads(text))


def builtin_names() -> list[str]:
    """Names of the built-in proteins, sorted."""
    return sorted(entry["name"] for entry in builtin_manifest())


def _builtin_entry(name: str) -> dict[str, Any]:
    for entry in builtin_manifest():
        if entry["name"] == name.lower():
            return entry
    raise KeyError(f"no built-in protein {name!r}; `cryoem volumes` lists them: "
                   + ", ".join(builtin_names()))


def builtin_path(name: str) -> Path:
    """Path of a built-in protein's model file, after checking its sha256."""
    entry = _builtin_entry(name)
    path = Path(str(resources.files("cryoem").joinpath("data/proteins", entry["file"])))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(f"built-in {name}: {path} is corrupt (sha256 {digest} does not match)")
    return path


def load_builtin(name: str = DEFAULT_PROTEIN, size: int = 64, **options: Any) -> Volume:
    """Density map of a built-in protein in an ``size³`` box (see :func:`from_atomic_model`)."""
    entry = _builtin_entry(name)
    options.setdefault("symmetry", entry["symmetry"])
    if entry.get("symmetry_axis") is not None:
        options.setdefault("symmetry_axis", entry["symmetry_axis"])
        options.setdefault("symmetry_center", entry.get("symmetry_center"))
    volume = from_atomic_model(builtin_path(name), size, name=entry["name"], **options)
    volume.source = f"built-in {entry['pdb_id']} ({entry['title']})"
    volume.metadata["pdb_id"] = entry["pdb_id"]
    return volume


# ----------------------------------------------------------------------------
# Downloads (online only)
# ----------------------------------------------------------------------------
#: URL templates; the environment variables CRYOEM_PDB_URL and CRYOEM_EMDB_URL override them.
PDB_URL = "https://files.rcsb.org/download/{id}.cif.gz"
EMDB_URL = "https://files.wwpdb.org/pub/emdb/structures/EMD-{id}/map/emd_{id}.map.gz"


def cache_dir() -> Path:
    """Download cache: ``$CRYOEM_CACHE`` or ``~/.cache/cryoem``."""
    return Path(os.environ.get("CRYOEM_CACHE", Path.home() / ".cache" / "cryoem"))


def fetch(entry: str, cache: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download ``pdb:XXXX`` or ``emd:NNNN`` once and return the cached file.

    Works offline for anything already in the cache; otherwise a clear
    ``ConnectionError`` says what failed.  Downloads go to a temporary file
    that is renamed when complete.
    """
    kind, _, ident = entry.partition(":")
    kind = kind.lower()
    if kind == "pdb" and len(ident) == 4 and ident.isalnum():
        ident = ident.upper()
        url = os.environ.get("CRYOEM_PDB_URL", PDB_URL).format(id=ident)
        filename = f"{ident}.cif.gz"
    elif kind in ("emd", "emdb") and ident.isdigit():
        url = os.environ.get("CRYOEM_EMDB_URL", EMDB_URL).format(id=ident)
        filename = f"emd_{ident}.map.gz"
    else:
        raise ValueError(f"cannot fetch {entry!r}: use pdb:XXXX (4 characters) or emd:NNNN")
    target = Path(cache or cache_dir()) / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s)
            with open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        with gzip.open(partial) as stream:  # a truncated or HTML answer fails here
            while stream.read(1 << 20):
                pass
    except (urllib.error.URLError, OSError, EOFError) as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, (gzip.BadGzipFile, EOFError)):
            raise ConnectionError(f"{url} did not return a complete gzip file ({error})") from error
        raise ConnectionError(
            f"could not download {entry} from {url} ({error}); offline, use a local file or a "
            "built-in protein (`cryoem volumes`)") from error
    os.replace(partial, target)
    return target
