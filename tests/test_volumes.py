"""cryoem.volumes: MRC files, atomic models, built-in proteins, downloads and box operations."""

import gzip
import hashlib
import http.server
import json
import threading
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy import ndimage

from cryoem import projection, proteins, rotations, volumes

# ---------------------------------------------------------------- MRC files


def test_save_and_load_map_round_trip(tmp_path):
    data = np.random.default_rng(0).standard_normal((12, 12, 12)).astype(np.float32)
    path = volumes.save_map(volumes.Volume(data, voxel_size=1.7), tmp_path / "map.mrc")
    loaded = volumes.load_map(path)
    np.testing.assert_array_equal(loaded.data, data)
    assert loaded.voxel_size == pytest.approx(1.7)
    assert loaded.name == "map"
    assert not list(tmp_path.glob(".*partial"))


def test_load_gzipped_map(tmp_path):
    data = np.arange(8**3, dtype=np.float32).reshape(8, 8, 8)
    plain = volumes.save_map(volumes.Volume(data, 2.0), tmp_path / "m.map")
    gz = tmp_path / "m.map.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(volumes.load_map(gz).data, data)


def test_axis_order_from_header(tmp_path):
    """A map stored with columns along z (mapc = 3) is put back in [z, y, x] order."""
    data = np.random.default_rng(1).standard_normal((6, 7, 8)).astype(np.float32)  # [z, y, x]
    path = tmp_path / "swapped.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ascontiguousarray(data.transpose(2, 1, 0)))  # stored [x, y, z]
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
        mrc.voxel_size = 1.0
    np.testing.assert_array_equal(volumes.load_map(path).data, data)


def test_broken_header_is_read_permissively_with_a_warning(tmp_path):
    data = np.ones((6, 6, 6), dtype=np.float32)
    path = volumes.save_map(volumes.Volume(data, 1.5), tmp_path / "broken.mrc")
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"XXXX"  # the "MAP " stamp, wrong in many old files
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="permissive"):
        loaded = volumes.load_map(path)
    np.testing.assert_array_equal(loaded.data, data)


def test_corrupt_and_non_3d_files_raise(tmp_path):
    garbage = tmp_path / "garbage.mrc"
    garbage.write_bytes(b"not a map at all" * 3)
    with pytest.raises(ValueError, match="not a readable MRC"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volumes.load_map(garbage)
    flat = tmp_path / "image.mrc"
    with mrcfile.new(flat) as mrc:
        mrc.set_data(np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="not a 3D map"):
        volumes.load_map(flat)
    with pytest.raises(FileNotFoundError):
        volumes.load_map(tmp_path / "missing.mrc")


def test_missing_voxel_size_warns(tmp_path):
    path = tmp_path / "novoxel.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ones((4, 4, 4), dtype=np.float32))
        mrc.voxel_size = 0.0
    with pytest.warns(UserWarning, match="voxel size"):
        assert volumes.load_map(path).voxel_size == 1.0


# ---------------------------------------------------------------- atomic models
def write_pdb(path, atoms):
    """A minimal PDB file: one residue per atom (element, x, y, z)."""
    lines = []
    for k, (element, x, y, z) in enumerate(atoms, start=1):
        lines.append(f"ATOM  {k:5d}  CA  ALA A{k:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"  1.00 20.00          {element:>2s}")
    path.write_text("\n".join(lines + ["END", ""]))
    return path


def test_atomic_model_places_atoms_in_zyx_order(tmp_path):
    """Three carbons at known places: the density peaks land on the predicted voxels."""
    offsets = np.array([[0.0, 0.0, 0.0], [12.0, 0.0, 0.0], [0.0, 0.0, -12.0]])
    path = write_pdb(tmp_path / "three.pdb", [("C", *(o + 50)) for o in offsets])
    vol = proteins.from_atomic_model(path, 48, voxel_size=1.0, resolution=3.0)
    centroid = offsets.mean(axis=0)
    for x, y, z in offsets - centroid:  # expected voxel, [z, y, x] from the box origin
        index = (round(z) + 24, round(y) + 24, round(x) + 24)
        window = vol.data[tuple(slice(i - 2, i + 3) for i in index)]
        assert window.max() == pytest.approx(vol.data.max(), rel=0.05)
        peak = np.unravel_index(np.argmax(window), window.shape)
        assert peak == (2, 2, 2)
    assert vol.voxel_size == 1.0
    assert vol.particle_diameter == pytest.approx(2 * np.max(np.linalg.norm(
        offsets - centroid, axis=1)))


def test_atomic_model_default_box_fits_the_particle():
    vol = proteins.load_builtin("4ake", 32)
    com = ndimage.center_of_mass(np.clip(vol.data, 0, None))
    np.testing.assert_allclose(com, [16, 16, 16], atol=1.0)
    assert vol.box_ratio == pytest.approx(volumes.DEFAULT_BOX_RATIO)
    # Nothing outside the inscribed sphere: projections cannot wrap around.
    outside = vol.data * (1 - volumes.spherical_mask(32, radius=15.5, edge=0.5))
    assert np.abs(outside).max() < 1e-2 * vol.data.max()  # only the low-pass ringing


def test_unreadable_model_raises(tmp_path):
    bad = tmp_path / "bad.pdb"
    bad.write_text("HEADER nothing here\nEND\n")
    with pytest.raises(ValueError):
        proteins.from_atomic_model(bad, 16)
    with pytest.raises(FileNotFoundError):
        proteins.from_atomic_model(tmp_path / "missing.pdb", 16)


# ---------------------------------------------------------------- built-in proteins
def test_manifest_lists_at_least_20_verified_proteins():
    manifest = proteins.builtin_manifest()
    names = proteins.builtin_names()
    assert len(names) >= 20 and len(set(names)) == len(names)
    assert len({entry["pdb_id"] for entry in manifest}) == len(manifest)
    defaults = [entry for entry in manifest if entry.get("default")]
    assert [entry["name"] for entry in defaults] == [volumes.DEFAULT_PROTEIN]
    assert defaults[0]["symmetry"] == "C1"
    for entry in manifest:
        path = proteins.builtin_path(entry["name"])  # checks the sha256
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        rotations.point_group(entry["symmetry"])
    total = sum(proteins.builtin_path(name).stat().st_size for name in names)
    assert total < 5e6


@pytest.mark.parametrize("name", proteins.builtin_names())
def test_every_builtin_protein_loads(name):
    vol = volumes.resolve(name, 24)
    assert vol.data.shape == (24, 24, 24)
    assert vol.data.max() == pytest.approx(1.0)
    assert np.isfinite(vol.data).all()


def test_symmetric_builtin_has_its_axis_along_z():
    """HIV-1 protease (C2): turning the map by 180° about z leaves it nearly unchanged."""
    vol = proteins.load_builtin("1hvr", 40)
    assert vol.symmetry == "C2"
    turned = np.roll(vol.data[:, ::-1, ::-1], (1, 1), axis=(1, 2))  # (x, y) -> (-x, -y)
    assert np.corrcoef(turned.ravel(), vol.data.ravel())[0, 1] > 0.95
    quarter = np.rot90(vol.data, axes=(1, 2))
    quarter = np.roll(quarter, 1, axis=1)
    assert np.corrcoef(quarter.ravel(), vol.data.ravel())[0, 1] < 0.9


def test_corrupt_builtin_is_detected(monkeypatch, tmp_path):
    entry = dict(proteins.builtin_manifest()[0])
    entry["sha256"] = "0" * 64
    monkeypatch.setattr(proteins, "builtin_manifest", lambda: (entry,))
    with pytest.raises(ValueError, match="corrupt"):
        proteins.builtin_path(entry["name"])
    with pytest.raises(KeyError):
        proteins.builtin_path("no-such-protein")


# ---------------------------------------------------------------- downloads
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def local_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_once_then_uses_the_cache(local_server, tmp_path, monkeypatch):
    root, url = local_server
    model = proteins.builtin_path("1ubq").read_bytes()
    (root / "1UBQ.cif.gz").write_bytes(model)
    monkeypatch.setenv("CRYOEM_PDB_URL", url + "/{id}.cif.gz")
    cache = tmp_path / "cache"
    path = proteins.fetch("pdb:1ubq", cache=cache)
    assert path.read_bytes() == model
    (root / "1UBQ.cif.gz").unlink()  # offline from now on: the cache answers
    assert proteins.fetch("pdb:1UBQ", cache=cache) == path


def test_fetch_errors(local_server, tmp_path, monkeypatch):
    root, url = local_server
    (root / "2ABC.cif.gz").write_text("<html>not found</html>")
    monkeypatch.setenv("CRYOEM_PDB_URL", url + "/{id}.cif.gz")
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError, match="gzip"):
        proteins.fetch("pdb:2abc", cache=cache)
    with pytest.raises(ConnectionError, match="could not download"):
        proteins.fetch("pdb:9xyz", cache=cache)  # 404
    assert list(cache.iterdir()) == []  # nothing half-written left behind
    with pytest.raises(ValueError):
        proteins.fetch("pdb:toolong", cache=cache)
    monkeypatch.setenv("CRYOEM_EMDB_URL", "http://127.0.0.1:9/emd_{id}.map.gz")
    with pytest.raises(ConnectionError):
        proteins.fetch("emd:1234", cache=cache, timeout=2)


# ---------------------------------------------------------------- phantoms and box operations
@pytest.mark.parametrize("symmetry", ["C1", "C4", "D2", "T"])
def test_phantom_is_symmetric(symmetry):
    phantom = volumes.gaussian_phantom(24, symmetry=symmetry, n_blobs=2, seed=2)
    blobs = phantom.metadata["blobs"]
    order = len(rotations.point_group(symmetry))
    assert len(blobs["centers"]) == 2 * order
    matrices = rotations.quaternion_to_matrix(rotations.point_group(symmetry))
    for g in matrices:  # the blob set is mapped onto itself
        moved = blobs["centers"] @ g.T
        gaps = np.linalg.norm(moved[:, None] - blobs["centers"][None], axis=2).min(axis=1)
        assert gaps.max() < 1e-9


def test_resample_keeps_a_band_limited_blob():
    big = volumes.gaussian_blobs(48, [[3.0, -2.0, 4.0]], [1.0], 4.0)
    small = volumes.resample(big, 24)
    expected = volumes.gaussian_blobs(24, [[1.5, -1.0, 2.0]], [1.0], 2.0)
    np.testing.assert_allclose(small, expected, atol=2e-3)
    np.testing.assert_allclose(volumes.resample(small, 24), small)


def _gaussian(size: int, spacing: float, sigma: float, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A Gaussian of ``sigma`` Å centred on voxel ``size // 2`` (plus ``offset`` Å), sampled
    every ``spacing`` Å: the analytic reference."""
    axis = (np.arange(size) - size // 2) * spacing
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    dz, dy, dx = offset
    return np.exp(-((z - dz) ** 2 + (y - dy) ** 2 + (x - dx) ** 2) / (2 * sigma**2))


def test_fit_to_box_puts_a_map_on_another_grid():
    # A 2 Å map of a 24 Å box, off-centre, onto a 40-voxel grid of 1 Å: the same Gaussian,
    # sampled at 1 Å, centred where it was (band-limited: sigma 4 Å against 2 Å voxels).
    offset = (2.0, -4.0, 6.0)
    given = volumes.Volume(_gaussian(24, 2.0, 4.0, offset).astype(np.float32), voxel_size=2.0)
    fitted = volumes.fit_to_box(given, 40, 1.0)
    assert fitted.shape == (40, 40, 40)
    np.testing.assert_allclose(fitted, _gaussian(40, 1.0, 4.0, offset), atol=2e-3)
    # Coarser, odd and cropped: a 1 Å map of 63 voxels onto 3 Å (21 voxels) and 16 voxels.
    given = volumes.Volume(_gaussian(63, 1.0, 5.0).astype(np.float32), voxel_size=1.0)
    np.testing.assert_allclose(volumes.fit_to_box(given, 16, 3.0), _gaussian(16, 3.0, 5.0),
                               atol=2e-3)
    with pytest.raises(ValueError, match="covers 0 voxel"):
        volumes.fit_to_box(volumes.Volume(np.ones((4, 4, 4), np.float32), 1.0), 8, 20.0)


def test_pad_center_mask_normalize():
    data = np.zeros((10, 14, 12), dtype=np.float32)
    data[2, 3, 4] = 5.0
    cube = volumes.pad_to_cube(data)
    assert cube.shape == (14, 14, 14) and cube.sum() == pytest.approx(5.0)
    blob = volumes.gaussian_blobs(20, [[3.0, 2.0, -4.0]], [1.0], 2.0)
    centred = volumes.center(blob)
    np.testing.assert_allclose(ndimage.center_of_mass(np.clip(centred, 0, None)), [10] * 3,
                               atol=0.05)
    mask = volumes.spherical_mask(20)
    assert mask[10, 10, 10] == 1 and mask[0, 0, 0] == 0
    assert volumes.normalize(blob).max() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        volumes.normalize(np.zeros((3, 3, 3)))


def test_prepare_a_map_from_a_file(tmp_path):
    blob = volumes.gaussian_blobs(40, [[4.0, 0.0, 0.0]], [1.0], 3.0)
    path = volumes.save_map(volumes.Volume(blob, 1.0), tmp_path / "blob.mrc")
    vol = volumes.resolve(path, 20)
    assert vol.data.shape == (20, 20, 20)
    assert vol.voxel_size == pytest.approx(2.0)
    np.testing.assert_allclose(ndimage.center_of_mass(np.clip(vol.data, 0, None)), [10] * 3,
                               atol=0.1)


def test_resolve_errors(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        volumes.resolve("not-a-protein", 16)
    odd = tmp_path / "x.txt"
    odd.write_text("hello")
    with pytest.raises(ValueError, match="unknown file type"):
        volumes.resolve(odd, 16)


def test_resolved_projections_are_consistent_with_the_projector():
    """The C2 axis of the built-in dimer is z: R and R·g(180° about z) give the same image."""
    vol = volumes.resolve("1hvr", 32)
    q = rotations.sample_uniform(3, seed=0)
    g = rotations.point_group("C2")[1]
    a = projection.project(vol.data, q)
    b = projection.project(vol.data, rotations.multiply(q, g))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_manifest_json_is_valid():
    text = (Path(volumes.__file__).parent / "data" / "proteins" / "manifest.json").read_text()
    entries = json.loads(text)
    for key in ("name", "pdb_id", "title", "symmetry", "file", "source", "sha256"):
        assert all(key in entry for entry in entries)
