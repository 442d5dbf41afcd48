"""Pseudo-proteins: chain geometry by hand, the protein radius-of-gyration law, symmetry by
index, files gemmi reads back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from cryoem import pseudo_proteins as pp
from cryoem import rotations, volumes


def test_chain_keeps_bond_length_angles_and_contacts():
    chain = pp.random_chain(300, np.random.default_rng(1), domains=2)
    bonds = np.diff(chain.ca, axis=0)
    np.testing.assert_allclose(np.linalg.norm(bonds, axis=1), pp.CA_STEP, rtol=1e-9)
    cosines = -np.sum(bonds[1:] * bonds[:-1], axis=1) / pp.CA_STEP**2  # the virtual angle's
    angles = np.degrees(np.arccos(np.clip(cosines, -1, 1)))
    assert angles.min() >= pp.VIRTUAL_ANGLE[0] - 1e-6
    assert angles.max() <= pp.VIRTUAL_ANGLE[1] + 1e-6
    distances = cdist(chain.ca, chain.ca)
    crowded = [i for i in range(3, len(chain.ca))
               if distances[i, : i - 2].min() < pp.MIN_CONTACT - 1e-9]
    assert len(crowded) <= chain.forced <= 0.05 * len(chain.ca)
    assert np.array_equal(np.bincount(chain.domain), [150, 150])


@pytest.mark.parametrize("n", [100, 300, 800])
def test_radius_of_gyration_follows_the_protein_law(n):
    # compact globular proteins: Rg ≈ 2.2 N^0.38 Å (Skolnick et al., PNAS 1997)
    ca = pp.random_chain(n, np.random.default_rng(n)).ca
    rg = np.sqrt(np.mean(np.sum((ca - ca.mean(axis=0)) ** 2, axis=1)))
    assert 0.75 < rg / (2.2 * n**0.38) < 1.25


def test_symmetric_assembly_is_invariant_under_its_group():
    drawn = pp.draw(5, symmetry="D3", n_residues=240)
    positions = drawn["positions"]
    assert len(drawn["chains"]) == 6
    tree = cKDTree(positions)
    for matrix in rotations.quaternion_to_matrix(rotations.point_group("D3")):
        gap, _ = tree.query(positions @ matrix.T)
        assert gap.max() < 1e-6
    # and not under a turn outside the group
    gap, _ = tree.query(positions @ rotations.quaternion_to_matrix(
        rotations.axis_angle_to_quaternion([0, 0, 1], np.pi / 2)).T)
    assert gap.max() > 1.0


def _turned_by_index(data, quarters):
    """The map turned by ``quarters`` × 90° about z (axis 0) about the centre index L/2."""
    turned = data
    for _ in range(quarters):  # rot90 turns about (L-1)/2; a roll moves the centre to L/2
        turned = np.roll(np.rot90(turned, 1, axes=(1, 2)), 1, axis=1)
    return turned


def test_map_has_the_drawn_symmetry_by_index():
    c4 = pp.pseudo_protein(3, 32, symmetry="C4", n_residues=200).data
    c1 = pp.pseudo_protein(3, 32, symmetry="C1", n_residues=200).data
    scale = np.abs(c4).max()
    for quarters in (1, 2, 3):
        assert np.abs(_turned_by_index(c4, quarters) - c4).max() < 1e-3 * scale
    assert np.abs(_turned_by_index(c1, 1) - c1).max() > 0.1 * np.abs(c1).max()


def test_resolve_names_a_pseudo_protein_by_seed():
    a, again, other = (volumes.resolve(spec, 32) for spec in ("pseudo:7", "pseudo:7", "pseudo:8"))
    np.testing.assert_array_equal(a.data, again.data)
    assert np.abs(a.data - other.data).max() > 0.1
    assert a.symmetry == pp.draw(7)["symmetry"] and a.name == "pseudo-7"
    assert abs(float(a.data.max()) - 1) < 1e-6  # normalised like the built-in proteins
    with pytest.raises(ValueError, match="pseudo:x"):
        volumes.resolve("pseudo:x", 32)


def test_pdb_file_reads_back_with_gemmi(tmp_path):
    gemmi = pytest.importorskip("gemmi")
    drawn = pp.draw(2, n_residues=120)
    structure = gemmi.read_structure(str(pp.write_pdb(drawn, tmp_path / "p.pdb")))
    atoms = [atom for chain in structure[0] for residue in chain for atom in residue]
    assert len(atoms) == len(drawn["positions"])
    read = np.array([atom.pos.tolist() for atom in atoms])
    np.testing.assert_allclose(read, drawn["positions"], atol=1e-3)  # PDB keeps 3 decimals
    assert {atom.element.name for atom in atoms} <= {"C", "N", "O"}
