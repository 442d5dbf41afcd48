"""From particles alone, end to end: a RELION STAR with no angles in, a scored particles.star out."""

import json
import math

import starfile

from cryoem import cli, datasets, relion, volumes


def _scored(out, truth, tmp_path):
    """``cryoem score`` of a run's particles.star against the truth, as its JSON."""
    scores = tmp_path / "score.json"
    assert cli.main(["score", str(out / "particles.star"), "--truth", str(truth),
                     "--json", str(scores)]) == 0
    return json.loads(scores.read_text())


def test_a_star_without_angles_comes_back_with_poses_that_score_well(tmp_path):
    truth = datasets.generate(volumes.resolve("4ake", 32), 300, tmp_path / "truth.h5", ctf=True,
                              max_shift=1.0, test_size=300, seed=0)
    star = relion.export_relion(datasets.load(truth), tmp_path / "star", poses=False)
    given = starfile.read(star)["particles"]
    assert "rlnAngleRot" not in given and "rlnOriginXAngst" not in given
    out = tmp_path / "run"
    assert cli.main(["pipeline", "--particles", str(star), "--route", "ab-initio", "--size", "32",
                     "--refine-iterations", "3", "--out", str(out), "--quiet"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truth_used"] == {}  # nothing but the images and their CTFs was read
    assert metrics["scored_against"] is None
    assert metrics["route"] == "ab-initio"
    assert metrics["halfmap_independence"].startswith("independent")
    # Noiseless images: each matches its best slice closely (a correlation, at most 1).
    assert 0.8 < metrics["match_score_quantiles"]["50%"] <= 1.0
    for name in ("map.mrc", "map_half1.mrc", "map_half2.mrc", "figures/fsc.png",
                 "figures/orientations.png", "figures/refinement.png"):
        assert (out / name).exists(), name
    written = starfile.read(out / "particles.star")["particles"]
    assert list(written["rlnImageName"]) == list(given["rlnImageName"])  # the input's order
    assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(written)

    score = _scored(out, truth, tmp_path)
    assert score["matched"] == 300
    # Measured 0.05 rad (median 0.035) at this size; random orientations are ~2 rad off.
    assert score["e_or_rad"] < 0.12 and score["within_0.1_rad"] > 0.8


def test_particles_default_to_the_ab_initio_route_and_take_a_known_symmetry(tmp_path):
    import pytest

    from cryoem import particles, pipeline

    assert pipeline.PipelineConfig(particles="p.star").route == "ab-initio"
    assert pipeline.PipelineConfig().route == "distances"
    with pytest.raises(ValueError, match="symmetry is for --particles"):
        pipeline.PipelineConfig(symmetry="C2")
    with pytest.raises(ValueError, match="unknown route"):
        pipeline.PipelineConfig(route="guess")
    truth = datasets.generate(volumes.gaussian_phantom(16), 6, tmp_path / "t.h5", test_size=6)
    star = relion.export_relion(datasets.load(truth), tmp_path / "star", poses=False)
    particles.import_relion(star, tmp_path / "c2.h5", symmetry="C2")
    assert datasets.load(tmp_path / "c2.h5", images=False).attrs["symmetry"] == "C2"
    with pytest.raises(ValueError):
        particles.import_relion(star, tmp_path / "bad.h5", symmetry="Q9")
    assert not (tmp_path / "bad.h5").exists()


def test_the_snr_measured_on_the_background_matches_the_simulation(tmp_path):
    from cryoem import self_training

    protein = volumes.resolve("4ake", 32)
    for snr in (16.0, 1.0, 0.25):  # measured 16.0, 1.00, 0.25
        path = datasets.generate(protein, 200, tmp_path / f"{snr}.h5", snr=snr, test_size=200)
        assert self_training.estimate_snr(datasets.load(path).projections) == \
            __import__("pytest").approx(snr, rel=0.1)
    clean = datasets.generate(protein, 50, tmp_path / "clean.h5", test_size=50)
    assert self_training.estimate_snr(datasets.load(clean).projections) == float("inf")


def test_a_given_map_starts_the_refinement_of_particles_without_angles(tmp_path):
    import pytest

    from cryoem import pipeline

    with pytest.raises(ValueError, match="go together"):
        pipeline.PipelineConfig(particles="p.star", route="initial-map")
    with pytest.raises(ValueError, match="go together"):
        pipeline.PipelineConfig(particles="p.star", route="ab-initio", initial_map="m.mrc")
    with pytest.raises(ValueError, match="needs the refinement"):
        pipeline.PipelineConfig(particles="p.star", initial_map="m.mrc", refine=False)
    assert pipeline.PipelineConfig(particles="p.star", initial_map="m.mrc").route == "initial-map"

    truth = datasets.generate(volumes.resolve("4ake", 32), 200, tmp_path / "truth.h5", ctf=True,
                              max_shift=1.0, test_size=200, seed=1)
    star = relion.export_relion(datasets.load(truth), tmp_path / "star", poses=False)
    # The start: the protein's map on another grid (48 voxels of a smaller pixel size, the
    # same physical box), as another program would write it; the run low-passes it to 30 Å.
    given = volumes.resolve("4ake", 48)
    volumes.save_map(given, tmp_path / "start.mrc")
    out = tmp_path / "run"
    assert cli.main(["pipeline", "--particles", str(star), "--initial-map",
                     str(tmp_path / "start.mrc"), "--size", "32", "--refine-iterations", "2",
                     "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["route"] == "initial-map" and metrics["truth_used"] == {}
    assert metrics["halfmap_independence"].startswith("independent")
    assert volumes.load_map(out / "initial_map.mrc").data.shape == (32, 32, 32)
    assert (out / "figures" / "initial_map.png").exists()
    # No first guess, so no change from one to report for the start.
    assert math.isnan(metrics["refinement_history"][0]["mean_change_rad"])
    score = _scored(out, truth, tmp_path)
    assert score["matched"] == 200
    assert score["e_or_rad"] < 0.12 and score["within_0.1_rad"] > 0.8
