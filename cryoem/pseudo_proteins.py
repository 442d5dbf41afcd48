"""Pseudo-proteins: random compact chains of atoms, turned into maps like the built-in proteins.

Unlimited training variety for a general distance model (``resolve("pseudo:SEED")``): each
seed draws a point group (mostly C1, else C2–C4, D2, D3), a size (60–900 residues in all)
and one to three domains (ellipsoids, axes in ratios up to 2:1, each touching the last); one
subunit is a self-avoiding random walk of C-alpha atoms 3.8 Å apart with protein-like virtual
bond angles (85°–150°), through the domains in turn, dressed with backbone (N, C, O) and a
side chain of 1–5 atoms pointing away from the bend; the group's copies sit around the
origin so that neighbours touch.  The map is made by
:func:`cryoem.proteins.from_atomic_model` (gemmi's electron scattering factors), the same
way as a built-in protein's.  Written by hand: no library draws protein-like random
chains; the geometry here is the coarse one a 4 Å map can see, not a folded protein.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import rotations
from .volumes import Volume

__all__ = ["PseudoChain", "random_chain", "pseudo_atoms", "pseudo_protein", "GROUPS"]

#: Point groups drawn and their odds.
GROUPS: dict[str, float] = {"C1": 0.4, "C2": 0.2, "C3": 0.1, "C4": 0.1, "D2": 0.1, "D3": 0.1}
CA_STEP = 3.8  # Å between consecutive C-alpha atoms (trans peptide)
MIN_CONTACT = 4.0  # Å: closest approach of C-alpha atoms not bonded in sequence
VIRTUAL_ANGLE = (85.0, 150.0)  # degrees: the CA(i-1)-CA(i)-CA(i+1) angle of real chains
VOLUME_PER_RESIDUE = 160.0  # Å³ of ellipsoid per residue (proteins pack at about 135)
TRIES = 60  # proposals per step before the least crowded one is taken anyway


@dataclass
class PseudoChain:
    """One random chain: C-alpha positions ``(n, 3)`` in Å, centred on the origin."""

    ca: NDArray[np.float64]
    domain: NDArray[np.int64]  # each residue's domain
    centres: NDArray[np.float64]  # the confining ellipsoids' centres (Å, same frame as ca)
    axes: NDArray[np.float64]  # their semi-axes (Å), along the columns of frames
    frames: NDArray[np.float64]  # their orientations (rotation matrices)
    forced: int  # steps that took the least bad proposal (none passed both checks)


def random_chain(n_residues: int, rng: np.random.Generator, domains: int = 1) -> PseudoChain:
    """A self-avoiding C-alpha walk of ``n_residues`` through ``domains`` ellipsoids.

    The residues are shared out between the domains in sequence; each domain is an ellipsoid
    of volume ``residues · VOLUME_PER_RESIDUE``, axes in random ratios up to 2:1, turned at
    random, touching the previous one.  Each step keeps :data:`CA_STEP`, turns by a virtual
    angle in :data:`VIRTUAL_ANGLE` at a uniform dihedral, and is accepted when it lies inside
    its domain and at least :data:`MIN_CONTACT` from every earlier non-neighbour; after
    :data:`TRIES` failures the proposal farthest from the others (inside, if any is) or, when
    none is inside (the walk crossing to the next domain), the nearest to the inside is taken.
    """
    n = int(n_residues)
    if n < 3 or not 1 <= domains <= n // 3:
        raise ValueError(f"a chain needs at least 3 residues per domain, got {n} residues in "
                         f"{domains} domains")
    domain = np.arange(n) * domains // n
    ratios = np.column_stack([np.ones(domains), rng.uniform(0.5, 1.0, (domains, 2))])
    volumes = np.bincount(domain) * VOLUME_PER_RESIDUE
    axes = ratios * ((3 * volumes / (4 * np.pi * ratios.prod(axis=1))) ** (1 / 3))[:, None]
    frames = rotations.quaternion_to_matrix(rotations.sample_uniform(domains, rng))
    centres = np.zeros((domains, 3))
    for k in range(1, domains):  # touching the previous domain, overlapping a little
        reach = 0.8 * (axes[k - 1].mean() + axes[k].mean())
        centres[k] = centres[k - 1] + reach * _unit(rng.standard_normal(3))
    ca = np.zeros((n, 3))
    direction = _unit(rng.standard_normal(3))
    ca[1] = CA_STEP * direction
    forced = 0
    # the turn between successive bonds is 180° minus the virtual angle; its cosine is uniform
    cos_low, cos_high = np.cos(np.radians(180.0 - np.array(VIRTUAL_ANGLE)))
    for i in range(2, n):
        turn = np.arccos(rng.uniform(cos_low, cos_high, TRIES))
        dihedral = rng.uniform(0, 2 * np.pi, TRIES)
        proposals = ca[i - 1] + CA_STEP * _turned(direction, turn, dihedral)
        k = domain[i]
        reach = np.linalg.norm((proposals - centres[k]) @ frames[k] / axes[k], axis=1)
        inside = reach <= 1.0
        if i > 3:
            gaps = np.linalg.norm(proposals[:, None] - ca[None, : i - 2], axis=2).min(axis=1)
        else:
            gaps = np.full(TRIES, np.inf)
        good = np.flatnonzero(inside & (gaps >= MIN_CONTACT))
        if len(good):
            pick = good[0]
        else:
            forced += 1
            pick = int(np.argmax(np.where(inside, gaps, -np.inf)) if inside.any()
                       else np.argmin(reach))
        direction = _unit(proposals[pick] - ca[i - 1])
        ca[i] = proposals[pick]
    middle = ca.mean(axis=0)
    return PseudoChain(ca - middle, domain, centres - middle, axes, frames, forced)


def _unit(v: NDArray) -> NDArray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _turned(direction: NDArray, turn: NDArray, dihedral: NDArray) -> NDArray:
    """Unit vectors at angle ``turn`` from ``direction``, at azimuth ``dihedral`` about it."""
    helper = np.eye(3)[np.argmin(np.abs(direction))]  # never parallel to direction
    e1 = _unit(np.cross(direction, helper))
    e2 = np.cross(direction, e1)
    return (np.cos(turn)[:, None] * direction
            + np.sin(turn)[:, None] * (np.cos(dihedral)[:, None] * e1
                                       + np.sin(dihedral)[:, None] * e2))


def pseudo_atoms(chain: PseudoChain, rng: np.random.Generator) -> tuple[list[list[str]],
                                                                       NDArray[np.float64]]:
    """Heavy atoms of each residue around the C-alpha trace: names per residue and positions.

    N and C lie 1.46 Å and 1.52 Å from CA towards the previous and next CA, O 1.23 Å from C
    off the chain; CB 1.53 Å from CA away from the bend, and 0–4 more side-chain atoms
    1.5 Å apart beyond it (7 heavy atoms a residue on average, as in proteins).
    """
    ca = chain.ca
    before = _unit(np.vstack([ca[1] - ca[0], ca[1:] - ca[:-1]]))   # bond into each residue
    after = _unit(np.vstack([ca[1:] - ca[:-1], ca[-1] - ca[-2]]))  # bond out of it
    outward = _unit(before - after + 1e-6 * rng.standard_normal(ca.shape))
    names, positions = [], []
    for i, (x, b, a, o) in enumerate(zip(ca, before, after, outward)):
        extra = int(rng.integers(0, 5))
        side = [x + 1.53 * o + 1.5 * k * o for k in range(extra + 1)]
        normal = _unit(np.cross(a, o))
        c = x + 1.52 * a
        atoms = [x - 1.46 * b, x, c, c + 1.23 * normal, *side]
        names.append(["N", "CA", "C", "O", *(["CB", "CG", "CD", "CE", "CZ"][: extra + 1])])
        positions.extend(atoms)
    return names, np.asarray(positions)


def _subunit_offset(radius: float, group: NDArray, rng: np.random.Generator) -> NDArray:
    """Where a subunit's centre goes: a random direction, at the distance where its nearest
    copy under the group is ``1.7 × radius`` away (neighbours touch, interfaces overlap)."""
    v = _unit(rng.standard_normal(3))
    matrices = rotations.quaternion_to_matrix(group[1:])
    nearest = np.linalg.norm(matrices @ v - v, axis=1).min()
    return v * 1.7 * radius / max(nearest, 1e-3)


def draw(seed: int, symmetry: str | None = None, n_residues: int | None = None
         ) -> dict[str, Any]:
    """Seed ``seed``'s pseudo-protein: ``symmetry``, ``chains`` (atom names per residue, per
    chain) and ``positions`` ``(atoms, 3)`` in Å, symmetry axes on the group's frame."""
    rng = np.random.default_rng([seed, 20261201])
    if symmetry is None:
        symmetry = str(rng.choice(list(GROUPS), p=list(GROUPS.values())))
    group = rotations.point_group(symmetry)
    total = int(n_residues or round(np.exp(rng.uniform(np.log(60), np.log(900)))))
    per_subunit = max(3, total // len(group))
    domains = int(min(rng.integers(1, 4), max(1, per_subunit // 80)))  # 80+ residues each
    chain = random_chain(per_subunit, rng, domains)
    names, atoms = pseudo_atoms(chain, rng)
    if len(group) > 1:
        radius = float(np.sqrt(np.mean(np.sum(chain.ca ** 2, axis=1))) * np.sqrt(5 / 3))
        atoms = atoms + _subunit_offset(radius, group, rng)
    copies = [atoms @ m.T for m in rotations.quaternion_to_matrix(group)]
    return {"symmetry": symmetry, "chains": [names] * len(group), "domains": domains,
            "positions": np.concatenate(copies), "forced": chain.forced}


def write_pdb(drawn: dict[str, Any], path: str | Path) -> Path:
    """The drawn atoms as a PDB file (residues ``UNK``, one chain per subunit), via gemmi."""
    import gemmi

    structure, model = gemmi.Structure(), gemmi.Model("1")
    positions = iter(drawn["positions"])
    for c, residues in enumerate(drawn["chains"]):
        chain = gemmi.Chain("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[c])
        for number, atom_names in enumerate(residues, start=1):
            residue = gemmi.Residue()
            residue.name, residue.seqid = "UNK", gemmi.SeqId(number, " ")
            for name in atom_names:
                atom = gemmi.Atom()
                atom.name, atom.element = name, gemmi.Element(name[0])
                atom.pos, atom.occ = gemmi.Position(*next(positions)), 1.0
                residue.add_atom(atom)
            chain.add_residue(residue)
        model.add_chain(chain)
    structure.add_model(model)
    structure.setup_entities()
    path = Path(path)
    structure.write_pdb(str(path))
    return path


def pseudo_protein(seed: int, size: int = 64, *, symmetry: str | None = None,
                   n_residues: int | None = None, **model_options: Any) -> Volume:
    """The map of seed ``seed``'s pseudo-protein in a ``size³`` box.

    Parameters
    ----------
    seed
        Draws everything (the same seed, the same map).
    symmetry, n_residues
        Override the drawn point group and total residue count.
    model_options
        ``voxel_size``, ``resolution``, ``box_ratio``: as :func:`cryoem.proteins.from_atomic_model`.
    """
    from .proteins import from_atomic_model

    drawn = draw(seed, symmetry, n_residues)
    frame = ({} if drawn["symmetry"] == "C1" else
             {"symmetry_axis": [0.0, 0.0, 1.0], "symmetry_center": [0.0, 0.0, 0.0]})
    with tempfile.TemporaryDirectory() as folder:
        path = write_pdb(drawn, Path(folder) / f"pseudo-{seed}.pdb")
        volume = from_atomic_model(path, size, symmetry=drawn["symmetry"],
                                   name=f"pseudo-{seed}", **frame, **model_options)
    volume.source = f"pseudo-protein, seed {seed} (cryoem.pseudo_proteins)"
    volume.metadata.update(n_atoms=len(drawn["positions"]), forced_steps=drawn["forced"])
    return volume
