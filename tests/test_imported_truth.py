"""Imported particles know they have no ground truth: what is scored, against what, and never zeros."""

import numpy as np

import pytest
import starfile

from cryoem import cli, datasets, recovery, relion, rotations, volumes


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imported")
    path = folder / "sim.h5"
    assert cli.main(["generate", "--volume", "phantom", "--size", "24", "--n-projections", "120",
                     "--max-shift", "2", "--test-size", "40", "--out", str(path), "--no-figure",
                     "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def exported(simulated, tmp_path_factory):
    """The simulation exported as RELION particles (its true poses become a 'reference')."""
    folder = tmp_path_factory.mktemp("relion")
    assert cli.main(["export-relion", str(simulated), "--out", str(folder)]) == 0
    return folder / "particles.star"


def _strip(star, out, columns):
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=columns)
    starfile.write(blocks, out, overwrite=True)
    return out


def test_a_simulation_holds_ground_truth(simulated):
    data = datasets.load(simulated, images=False)
    assert data.source("orientations") == datasets.GROUND_TRUTH
    assert datasets.poses_for_scoring(data).label == "the ground truth"


def test_imported_angles_are_a_reference_scored_only_when_asked(exported, tmp_path, capsys):
    path = relion.import_relion(exported, tmp_path / "imported.h5")
    data = datasets.load(path, images=False)
    assert data.source("orientations") == datasets.REFERENCE
    assert datasets.poses_for_scoring(data) is None
    reference = datasets.poses_for_scoring(data, use_reference=True)
    assert "reference poses" in reference.label and "not a ground truth" in reference.label
    argv = ["distances", str(path), "--estimator", "euclidean", "--out", str(tmp_path / "d.h5")]
    # Estimators that read the truth refuse data without one, naming the file.
    assert cli.main(argv) == 2
    assert "reads the true orientations" in capsys.readouterr().err
    orientations = tmp_path / "o.h5"
    recovery.save_orientations(orientations, rotations.sample_uniform(len(data), seed=1),
                               np.arange(len(data)))
    out = tmp_path / "map.mrc"
    assert cli.main(["reconstruct", str(path), "--orientations", str(orientations), "--out",
                     str(out), "--iterations", "3", "--quiet"]) == 0
    assert "not scored (no reference map" in capsys.readouterr().out
    truth_map = volumes.save_map(volumes.resolve("phantom", 24), tmp_path / "truth.mrc")
    assert cli.main(["reconstruct", str(path), "--orientations", str(orientations), "--out",
                     str(out), "--iterations", "3", "--reference", str(truth_map), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "not scored" in text and "--reference-poses" in text and "FSC" not in text
    assert cli.main(["refine", str(path), "--orientations", str(orientations), "--out",
                     str(tmp_path / "r.h5"), "--iterations", "1", "--global-iterations", "0",
                     "--initial-resolution", "0", "--reference-poses", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "against the reference poses" in text and "not a ground truth" in text


def test_missing_angles_and_origins_are_absent_not_zero(exported, tmp_path, capsys):
    star = _strip(exported, exported.with_name("bare.star"),
                  ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                   "rlnOriginYAngst"])
    path = relion.import_relion(star, tmp_path / "bare.h5")
    data = datasets.load(path, images=False)
    assert data.source("orientations") == datasets.ABSENT == data.source("shifts")
    assert np.isnan(data.orientations).all() and np.isnan(data.shifts).all()
    assert datasets.poses_for_scoring(data, use_reference=True) is None
    assert cli.main(["reconstruct", str(path), "--out", str(tmp_path / "m.mrc")]) == 2
    assert "holds no orientations" in capsys.readouterr().err
    assert not (tmp_path / "m.mrc").exists()


def test_relion_3_0_origins_in_pixels_are_read(exported, simulated, tmp_path):
    blocks = starfile.read(exported, always_dict=True)
    particles = blocks["particles"]
    pixel = float(blocks["optics"]["rlnImagePixelSize"][0])
    particles["rlnOriginX"] = particles.pop("rlnOriginXAngst") / pixel
    particles["rlnOriginY"] = particles.pop("rlnOriginYAngst") / pixel
    star = tmp_path / "v30.star"
    starfile.write(blocks, star, overwrite=True)
    (tmp_path / "particles.mrcs").symlink_to(exported.with_name("particles.mrcs"))
    data = datasets.load(relion.import_relion(star, tmp_path / "v30.h5"), images=False)
    truth = datasets.load(simulated, images=False).shifts
    np.testing.assert_allclose(data.shifts, truth, atol=1e-4)


def test_non_finite_angles_are_refused_naming_row_and_column(exported, tmp_path):
    blocks = starfile.read(exported, always_dict=True)
    blocks["particles"].loc[6, "rlnAngleTilt"] = np.nan
    star = tmp_path / "nan.star"
    starfile.write(blocks, star, overwrite=True)
    (tmp_path / "particles.mrcs").symlink_to(exported.with_name("particles.mrcs"))
    with pytest.raises(ValueError, match=r"nan.star: row 7 .* column rlnAngleTilt"):
        relion.import_relion(star, tmp_path / "nan.h5")
    assert not (tmp_path / "nan.h5").exists()


def test_fixed_training_refuses_labels_that_are_not_ground_truth(exported, tmp_path, capsys):
    path = relion.import_relion(exported, tmp_path / "imported.h5")
    argv = ["train", str(path), "--out", str(tmp_path / "model"), "--mode", "fixed"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no ground-truth orientations (reference)" in err and "--allow-reference-labels" in err
    assert not (tmp_path / "model" / "model.keras").exists()
    assert cli.main(["train", str(path), "--out", str(tmp_path / "model")]) == 2  # rendered
    assert "ground-truth map" in capsys.readouterr().err


def test_export_writes_the_shifts_estimated_with_the_orientations(simulated, tmp_path, capsys):
    """Not the dataset's true shifts: the ones stored beside the refined orientations."""
    data = datasets.load(simulated, images=False)
    indices = data.split["test"][:5]
    q = rotations.sample_uniform(5, seed=2)
    estimated = np.array([[1.5, -0.5], [0.0, 2.0], [-1.0, -1.0], [0.25, 0.0], [3.0, 1.0]])
    refined = tmp_path / "refined.h5"
    recovery.save_orientations(refined, q, indices, shifts=estimated)
    assert cli.main(["export-relion", str(simulated), "--orientations", str(refined),
                     "--out", str(tmp_path / "r")]) == 0
    assert "their estimated shifts" in capsys.readouterr().out
    table = starfile.read(tmp_path / "r" / "particles.star")["particles"]
    pixel = data.pixel_size
    # RELION's origin points to the centre: a particle drawn at +dx has origin −dx·pixel.
    np.testing.assert_allclose(table["rlnOriginXAngst"], -estimated[:, 0] * pixel, atol=1e-6)
    np.testing.assert_allclose(table["rlnOriginYAngst"], -estimated[:, 1] * pixel, atol=1e-6)
    assert not np.allclose(data.shifts[indices], estimated)  # the truth differs: a real check
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    np.testing.assert_allclose(rotations.geodesic_distance(rotations.euler_to_quaternion(angles), q), 0,
                               atol=1e-6)

