"""The stages that claim not to read the ground truth give identical outputs without it.

A small dataset is copied twice: one copy intact, one whose true orientations,
shifts and map are overwritten with NaN (its attributes still claim a ground
truth, so nothing is skipped on purpose).  Every stage that claims not to read
them — distances from a given model, recovery, the frame step, refinement,
reconstruction, the RELION export, and the pipeline started from the particles
— must write the same arrays from both copies.  A NaN that leaked into an
estimate would make them differ; the last test shows that the comparison does
catch a stage that reads the truth (the exact estimator, an oracle).
"""

import shutil

import h5py
import mrcfile
import numpy as np
import pytest
import starfile

from cryoem import cli, datasets, distance, pipeline, recovery, volumes

TRUTH = ("orientations", "shifts", "volume")


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """(intact, blind) copies of one small dataset with shifts and noise."""
    folder = tmp_path_factory.mktemp("truth_blind")
    intact = datasets.generate(volumes.resolve("phantom", 32), 90, folder / "intact.h5",
                               snr=4.0, max_shift=1.5, test_size=48, seed=3)
    blind = folder / "blind.h5"
    shutil.copyfile(intact, blind)
    with h5py.File(blind, "r+") as f:
        for name in TRUTH:
            f[name][...] = np.nan
    return intact, blind


def _run(argv):
    """Run a command; the frame step may refuse an indistinguishable frame (status 2)."""
    status = cli.main([*argv, "--quiet"] if argv[0] != "export-relion" else argv)
    assert status in (0, 2)
    return status


@pytest.fixture(scope="module")
def stage_outputs(copies, tmp_path_factory):
    """Each stage run on both copies: {copy: {file: path}}."""
    outputs = {}
    for data in copies:
        folder = tmp_path_factory.mktemp(data.stem)
        files = {name: folder / f"{name}.h5" for name in ("distances", "orientations", "refined")}
        assert cli.main(["distances", str(data), "--model", "pretrained",
                         "--out", str(files["distances"])]) == 0
        _run(["recover", str(data), "--distances", str(files["distances"]), "--steps", "150",
              "--out", str(files["orientations"])])
        _run(["refine", str(data), "--orientations", str(files["orientations"]),
              "--iterations", "2", "--global-iterations", "1", "--out", str(files["refined"])])
        files["map"] = folder / "map.mrc"
        _run(["reconstruct", str(data), "--orientations", str(files["refined"]), "--half-maps",
              "--iterations", "10", "--out", str(files["map"])])
        files["relion"] = folder / "relion"
        _run(["export-relion", str(data), "--orientations", str(files["refined"]),
              "--out", str(files["relion"])])
        outputs[data.stem] = files
    return outputs


def test_the_blind_copy_has_no_usable_truth(copies):
    _, blind = copies
    data = datasets.load(blind)
    assert all(np.isnan(getattr(data, name)).all() for name in TRUTH)
    assert datasets.poses_for_scoring(data) is None  # NaN poses are never scored against


def test_distances_recovery_and_refinement_ignore_the_truth(stage_outputs):
    intact, blind = stage_outputs["intact"], stage_outputs["blind"]
    d_intact, i_intact, _ = distance.load_matrix(intact["distances"])
    d_blind, i_blind, _ = distance.load_matrix(blind["distances"])
    np.testing.assert_array_equal(i_intact, i_blind)
    np.testing.assert_array_equal(d_intact, d_blind)
    for name in ("orientations", "refined"):
        q_intact, _, a_intact = recovery.load_orientations(intact[name])
        q_blind, _, a_blind = recovery.load_orientations(blind[name])
        assert np.isfinite(q_blind).all()
        np.testing.assert_allclose(q_blind, q_intact, rtol=0, atol=1e-6, err_msg=name)
        if name == "refined":
            np.testing.assert_allclose(a_blind["shifts"], a_intact["shifts"], atol=1e-6)
    # Only the intact copy was scored, and it says against what.
    assert "e_or_rad" in recovery.load_orientations(intact["refined"])[2]
    assert "e_or_rad" not in recovery.load_orientations(blind["refined"])[2]


def test_reconstruction_and_export_ignore_the_truth(stage_outputs):
    intact, blind = stage_outputs["intact"], stage_outputs["blind"]
    for suffix in ("", "_half1", "_half2"):
        with mrcfile.open(intact["map"].with_name(f"map{suffix}.mrc")) as a, \
                mrcfile.open(blind["map"].with_name(f"map{suffix}.mrc")) as b:
            assert np.isfinite(b.data).all()
            np.testing.assert_allclose(b.data, a.data, rtol=0, atol=1e-5 * np.abs(a.data).max())
    # Scoring copies exist only where there is a truth to score against.
    assert intact["map"].with_name("map_aligned_to_truth.mrc").exists()
    assert not blind["map"].with_name("map_aligned_to_truth.mrc").exists()
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    a = starfile.read(intact["relion"] / "particles.star")["particles"][columns].to_numpy()
    b = starfile.read(blind["relion"] / "particles.star")["particles"][columns].to_numpy()
    np.testing.assert_allclose(b, a, atol=1e-4)


@pytest.mark.parametrize("route", ["distances", "ab-initio", "initial-map"])
def test_the_pipeline_from_particles_ignores_the_truth(copies, tmp_path, route):
    """The whole pipeline started from each copy (distances: with the shipped model;
    initial-map: from a map given on another grid): same outputs."""
    given = None
    if route == "initial-map":
        given = str(volumes.save_map(volumes.resolve("phantom", 24), tmp_path / "given.mrc"))
    results = {}
    for data in copies:
        config = pipeline.PipelineConfig(particles=str(data), route=route, model="pretrained",
                                         initial_map=given, steps=150, refine_iterations=2)
        folder = tmp_path / data.stem
        try:
            metrics = pipeline.run(config, folder, progress=False, report=lambda _: None)
        except RuntimeError:  # e.g. an indistinguishable frame: compare what finished
            metrics = None
        results[data.stem] = (folder, metrics)
    (intact, m_intact), (blind, m_blind) = results["intact"], results["blind"]
    assert (m_intact is None) == (m_blind is None)
    for name in ("orientations_from_distances.h5", "orientations.h5",
                 "orientations_refined.h5"):
        if (intact / name).exists() or (blind / name).exists():
            q_a, _, _ = recovery.load_orientations(intact / name)
            q_b, _, _ = recovery.load_orientations(blind / name)
            np.testing.assert_allclose(q_b, q_a, rtol=0, atol=1e-6, err_msg=name)
    if m_blind is not None:
        assert m_blind["truth_used"] == {} and m_intact["truth_used"] == {}
        assert m_blind["scored_against"] is None and m_blind["e_or_rad"] is None
        assert m_intact["scored_against"] == "the ground truth"
        with mrcfile.open(intact / "map.mrc") as a, mrcfile.open(blind / "map.mrc") as b:
            np.testing.assert_allclose(b.data, a.data, rtol=0, atol=1e-5 * np.abs(a.data).max())


def test_self_training_ignores_the_truth(copies, tmp_path):
    """Self-training's map (ab initio), measured SNR and shift range are the same from both
    copies: it renders its training images from its own estimate, not from the true map."""
    from cryoem import self_training, training

    measured = {}
    for data in copies:
        loaded = datasets.load(data)
        config = training.TrainingConfig(epochs=1, steps_per_epoch=2, batch_size=16, width=0.25)
        record = self_training.train_on_estimate(
            loaded, np.arange(len(loaded)), tmp_path / data.stem / "model",
            tmp_path / data.stem / "estimate.h5", config, n_render=60)
        estimate = datasets.load(tmp_path / data.stem / "estimate.h5", images=False).volume
        assert np.isfinite(estimate).all()
        assert (tmp_path / data.stem / "model" / "model.keras").exists()
        measured[data.stem] = (estimate, record["snr_estimate"], record["max_shift_px"])
    np.testing.assert_array_equal(measured["blind"][0], measured["intact"][0])
    assert measured["blind"][1:] == measured["intact"][1:]


def test_the_comparison_catches_a_stage_that_reads_the_truth(copies, tmp_path):
    """The exact estimator reads the true orientations: its outputs differ between copies."""
    matrices = []
    for data in copies:
        out = tmp_path / f"{data.stem}.h5"
        assert cli.main(["distances", str(data), "--estimator", "exact", "--out", str(out)]) == 0
        matrices.append(distance.load_matrix(out)[0])
    assert not np.array_equal(matrices[0], matrices[1])
