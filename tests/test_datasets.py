"""cryoem.datasets: contents, determinism, splits, atomic writes and clear errors."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from cryoem import datasets, projection, rotations, volumes


@pytest.fixture(scope="module")
def phantom():
    return volumes.resolve("phantom", 24)


def test_generate_and_load(tmp_path, phantom):
    path = datasets.generate(phantom, 30, tmp_path / "d.h5", snr=2.0, max_shift=2.0, ctf=True,
                             seed=3)
    data = datasets.load(path)
    assert data.projections.shape == (30, 24, 24) and data.projections.dtype == np.float32
    assert data.orientations.shape == (30, 4) and data.shifts.shape == (30, 2)
    np.testing.assert_allclose(np.linalg.norm(data.orientations, axis=1), 1, atol=1e-12)
    assert np.abs(data.shifts).max() <= 2.0
    np.testing.assert_array_equal(data.volume, phantom.data)
    assert len(data.ctf) == 30 and data.size == 24 and len(data) == 30
    attrs = data.attrs
    assert attrs["format"] == datasets.FORMAT and attrs["snr"] == 2.0 and attrs["noisy"]
    assert attrs["quaternion_order"] == "wxyz" and attrs["seed"] == 3 and attrs["ctf"]
    assert attrs["box_ratio"] == pytest.approx(phantom.box_ratio)
    assert "Proj_z" in attrs["convention"]
    # The noise has the recorded variance: SNR = var(clean) / var(noise).
    clean = projection.project(phantom.data, data.orientations, shifts=data.shifts, ctf=data.ctf,
                               pixel_size=data.pixel_size)
    assert attrs["signal_variance"] == pytest.approx(np.var(clean), rel=1e-4)
    assert np.var(data.projections - clean) == pytest.approx(attrs["noise_variance"], rel=0.05)
    assert attrs["signal_variance"] / attrs["noise_variance"] == pytest.approx(2.0)


def test_noiseless_images_are_the_projections(tmp_path, phantom):
    data = datasets.load(datasets.generate(phantom, 5, tmp_path / "c.h5", seed=0))
    assert not data.attrs["noisy"] and data.attrs["noise_variance"] == 0
    np.testing.assert_allclose(data.projections,
                               projection.project(phantom.data, data.orientations), atol=1e-6)
    np.testing.assert_array_equal(data.shifts, 0)
    assert data.ctf is None


def test_same_seed_same_file_contents(tmp_path, phantom):
    a = datasets.load(datasets.generate(phantom, 12, tmp_path / "a.h5", snr=1.0, seed=5,
                                        max_shift=1.0))
    b = datasets.load(datasets.generate(phantom, 12, tmp_path / "b.h5", snr=1.0, seed=5,
                                        max_shift=1.0))
    c = datasets.load(datasets.generate(phantom, 12, tmp_path / "c.h5", snr=1.0, seed=6,
                                        max_shift=1.0))
    for name in ("projections", "orientations", "shifts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name))


def test_chunks_stream_large_sets(tmp_path, phantom, monkeypatch):
    monkeypatch.setattr(datasets, "_CHUNK_IMAGES", 7)
    path = datasets.generate(phantom, 30, tmp_path / "s.h5", snr=4.0, seed=1)
    data = datasets.load(path)
    clean = projection.project(phantom.data, data.orientations)
    assert data.attrs["signal_variance"] == pytest.approx(np.var(clean), rel=1e-4)
    np.testing.assert_array_equal(datasets.read_images(path, slice(3, 9)), data.projections[3:9])
    assert datasets.load(path, images=False).projections is None


def test_split_is_a_disjoint_cover():
    split = datasets.split_indices(5000, seed=0)
    sizes = {name: len(indices) for name, indices in split.items()}
    assert sizes == {"train": 2512, "validation": 838, "test": 1650}  # the paper's split
    everything = np.concatenate(list(split.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(5000))
    custom = datasets.split_indices(100, test_size=10, seed=1)
    assert len(custom["test"]) == 10 and len(custom["train"]) + len(custom["validation"]) == 90
    with pytest.raises(ValueError):
        datasets.split_indices(10, test_size=11)
    with pytest.raises(ValueError):
        datasets.split_indices(10, fractions=(1, -1, 1))


def test_a_crash_leaves_no_file(tmp_path, phantom, monkeypatch):
    calls = []

    def failing_project(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        return projection.project(*args, **kwargs)

    monkeypatch.setattr(datasets, "_CHUNK_IMAGES", 4)
    monkeypatch.setattr(datasets.projection, "project", failing_project)
    with pytest.raises(RuntimeError, match="disk on fire"):
        datasets.generate(phantom, 10, tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_unless_overwrite(tmp_path, phantom):
    path = datasets.generate(phantom, 3, tmp_path / "k.h5")
    with pytest.raises(FileExistsError):
        datasets.generate(phantom, 3, path)
    datasets.generate(phantom, 4, path, overwrite=True)
    assert len(datasets.load(path)) == 4


def test_bad_arguments(tmp_path, phantom):
    with pytest.raises(ValueError):
        datasets.generate(phantom, 0, tmp_path / "z.h5")
    with pytest.raises(ValueError):
        datasets.generate(phantom, 3, tmp_path / "z.h5", snr=-1.0)


def test_load_errors(tmp_path, phantom):
    with pytest.raises(FileNotFoundError):
        datasets.load(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"definitely not HDF5")
    with pytest.raises(ValueError, match="HDF5"):
        datasets.load(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a cryoem dataset"):
        datasets.load(foreign)
    broken = datasets.generate(phantom, 4, tmp_path / "broken.h5")
    with h5py.File(broken, "a") as f:
        del f["shifts"]
        f["shifts"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match="shifts has shape"):
        datasets.load(broken)
    with h5py.File(broken, "a") as f:
        del f["orientations"]
    with pytest.raises(ValueError, match="missing"):
        datasets.load(broken)


def test_preferred_sampling_is_recorded(tmp_path, phantom):
    path = datasets.generate(phantom, 50, tmp_path / "p.h5", sampling="preferred",
                             sampling_options={"concentration": 100.0, "fraction": 1.0})
    data = datasets.load(path, images=False)
    assert data.attrs["sampling"] == "preferred"
    views = rotations.viewing_direction(data.orientations)
    assert np.mean(views[:, 2] > 0.9) > 0.9


def test_reading_needs_no_tensorflow(tmp_path, phantom):
    path = datasets.generate(phantom, 3, tmp_path / "t.h5")
    code = ("import sys; from cryoem import datasets; "
            f"d = datasets.load({str(path)!r}); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print(len(d))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
