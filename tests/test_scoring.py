"""`cryoem score`: poses from STAR files, datasets and orientation files, against a reference."""

import json

import numpy as np
import pytest

from cryoem import (alignment, cli, datasets, projection, reconstruction, recovery, rotations,
                    scoring, volumes)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("score")
    path = datasets.generate(volumes.resolve("phantom", 24), 60, folder / "sim.h5", seed=1)
    return path


def test_a_known_rotation_and_perturbation_are_measured(simulated, tmp_path, capsys):
    """Estimate = truth · a (any global rotation) with 0.1 rad of error each, mirrored."""
    data = datasets.load(simulated, images=False)
    a = rotations.sample_uniform(1, seed=4)[0]
    # A 0.1 rad rotation about a random axis for each particle, built by hand.
    axes = np.random.default_rng(5).standard_normal((len(data), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    tilt = np.concatenate([np.full((len(data), 1), np.cos(0.05)), np.sin(0.05) * axes], 1)
    estimate = alignment.flip_handedness(rotations.multiply(rotations.multiply(
        data.orientations, tilt), np.broadcast_to(a, data.orientations.shape)))
    order = np.random.default_rng(0).permutation(len(data))[:40]
    path = tmp_path / "est.h5"
    recovery.save_orientations(path, estimate[order], order)
    out = tmp_path / "score.json"
    assert cli.main(["score", str(path), "--truth", str(simulated), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["matched"] == 40 and result["matched_by"] == "index"
    assert result["e_or_rad"] == pytest.approx(0.1, abs=0.01)
    assert result["e_or_o4_rad"] <= result["e_or_rad"] + 1e-9
    assert result["handedness"] == "mirrored" and "mirrored" in printed
    assert 0 < result["within_0.1_rad"] < 1  # errors scatter around 0.1 after the alignment


def test_star_files_are_matched_by_image_name(simulated, tmp_path):
    """Two STAR exports of the same particles in different orders match by name."""
    import starfile

    assert cli.main(["export-relion", str(simulated), "--out", str(tmp_path / "a")]) == 0
    blocks = starfile.read(tmp_path / "a" / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"].iloc[::-1].reset_index(drop=True)
    starfile.write(blocks, tmp_path / "reversed.star", overwrite=True)
    result = scoring.score(tmp_path / "reversed.star", tmp_path / "a" / "particles.star")
    assert result["matched_by"] == "image name" and result["matched"] == 60
    assert result["e_or_rad"] < 1e-6 and result["handedness"] == "same"


def test_maps_are_compared_after_the_alignment_the_poses_imply(tmp_path):
    vol = volumes.resolve("phantom", 24)
    q = rotations.sample_uniform(900, seed=2)
    images = projection.project(vol.data, q)
    a = rotations.sample_uniform(1, seed=3)[0]
    estimate = rotations.multiply(q, np.broadcast_to(a, q.shape))
    own_frame = reconstruction.reconstruct(images, estimate, iterations=30).data
    est_map = volumes.save_map(volumes.Volume(own_frame, 1.0), tmp_path / "est.mrc")
    ref_map = volumes.save_map(vol, tmp_path / "ref.mrc")
    recovery.save_orientations(tmp_path / "est.h5", estimate, np.arange(900))
    recovery.save_orientations(tmp_path / "ref.h5", q, np.arange(900))
    result = scoring.score(tmp_path / "est.h5", tmp_path / "ref.h5", estimate_map=est_map,
                           reference_map=ref_map)
    assert result["fsc05_angstrom"] < 2.6  # Nyquist is 2 Å at 1 Å/px
    fit = alignment.align_physical(estimate, q)
    unturned = np.corrcoef(own_frame.ravel(), vol.data.ravel())[0, 1]
    turned = np.corrcoef(scoring.rotate_map(own_frame, fit).ravel(), vol.data.ravel())[0, 1]
    assert turned > 0.99 and unturned < 0.9


def test_too_few_matches_is_an_error(simulated, tmp_path, capsys):
    recovery.save_orientations(tmp_path / "far.h5", rotations.sample_uniform(2, seed=0),
                               np.array([1000, 1001]))
    assert cli.main(["score", str(tmp_path / "far.h5"), "--truth", str(simulated)]) == 2
    assert "only 0 particles" in capsys.readouterr().err
