"""Ensembles of Siamese networks (cryoem.ensemble): one budget split, distances averaged."""

import json
import shutil

import numpy as np
import pytest

from cryoem import datasets, distance, ensemble, volumes

training = pytest.importorskip("cryoem.training")  # the network needs Keras

TINY = dict(width=0.25, epochs=4, steps_per_epoch=2, batch_size=16, patience=10, feature_dim=8,
            max_seconds=600.0, seed=3)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    return datasets.load(datasets.generate(volumes.resolve("4ake", 32), 120, path, seed=0))


@pytest.fixture(scope="module")
def pair(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    histories = ensemble.train_ensemble([tiny_dataset], out, training.TrainingConfig(**TINY), 2,
                                        verbose=0)
    return out, histories


def test_the_members_split_the_budget_and_differ_only_by_their_seeds():
    config = training.TrainingConfig(**{**TINY, "epochs": 5})
    members = [ensemble.member_config(config, k, 2) for k in range(2)]
    assert [m.seed for m in members] == [3, 4]
    assert [m.epochs for m in members] == [3, 3]  # rounded up: the ensemble trains 6, not 5
    assert [m.max_seconds for m in members] == [300.0, 300.0]
    differ = {key for key in config.__dict__ if getattr(members[1], key) != getattr(config, key)}
    assert differ == {"seed", "epochs", "max_seconds"}


def test_an_ensemble_is_two_models_and_its_distance_their_mean(tiny_dataset, pair):
    out, histories = pair
    assert [len(h["loss"]) for h in histories] == [2, 2]
    folders = ensemble.member_directories(out)
    assert folders == [out / "members" / "0", out / "members" / "1"]
    record = json.loads((out / "config.json").read_text())
    assert (record["members"], record["epochs"], record["seed"]) == (2, 4, 3)
    assert [json.loads((f / "config.json").read_text())["seed"] for f in folders] == [3, 4]
    test = tiny_dataset.split["test"][:12]
    one, two = (distance.LearnedDistance(f).matrix(tiny_dataset, test) for f in folders)
    assert np.abs(one - two).max() > 1e-3  # other seeds: other networks
    both = distance.LearnedDistance(out)
    np.testing.assert_allclose(both.matrix(tiny_dataset, test), (one + two) / 2, atol=1e-6)
    i, j = np.array([0, 3, 7]), np.array([5, 3, 2])
    np.testing.assert_allclose(both.pairs(tiny_dataset, i, j, test), ((one + two) / 2)[i, j],
                               atol=1e-5)
    assert ensemble.member_directories(folders[0]) == [folders[0]]  # a single model is itself


def test_a_rerun_keeps_finished_members_and_retrains_changed_ones(tiny_dataset, pair, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(pair[0], out)
    config = training.TrainingConfig(**TINY)
    kept = ensemble.train_ensemble([tiny_dataset], out, config, 2, verbose=0)
    assert kept == [{}, {}]  # both finished with these settings: nothing trained
    (out / "members" / "1" / ensemble.DONE_FILE).unlink()  # as if the second had not finished
    again = ensemble.train_ensemble([tiny_dataset], out, config, 2, verbose=0)
    assert again[0] == {} and len(again[1]["loss"]) == 2
    changed = ensemble.train_ensemble([tiny_dataset], out, training.TrainingConfig(
        **{**TINY, "learning_rate": 5e-4}), 2, verbose=0)
    assert [len(h["loss"]) for h in changed] == [2, 2]


def test_an_ensemble_missing_a_member_fails_naming_it(tiny_dataset, pair, tmp_path):
    out, _ = pair
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "members" / "1" / "model.keras").unlink()
    with pytest.raises(FileNotFoundError, match="members/1"):
        distance.LearnedDistance(broken)
    with pytest.raises(ValueError, match="at least one member"):
        ensemble.train_ensemble([tiny_dataset], tmp_path / "none", training.TrainingConfig(), 0)


def test_the_train_command_trains_an_ensemble_the_distances_command_reads(tiny_dataset, tmp_path,
                                                                          capsys):
    from cryoem import cli

    model = tmp_path / "model"
    assert cli.main(["train", str(tiny_dataset.path), "--out", str(model), "--epochs", "2",
                     "--steps-per-epoch", "2", "--batch-size", "16", "--width", "0.25",
                     "--members", "2"]) == 0
    assert "trained 2 light networks for 2 epochs" in capsys.readouterr().out  # one each
    assert len(ensemble.member_directories(model)) == 2
    out = tmp_path / "d.h5"
    assert cli.main(["distances", str(tiny_dataset.path), "--model", str(model),
                     "--out", str(out)]) == 0
    matrix, indices, _ = distance.load_matrix(out)
    members = [distance.LearnedDistance(f).matrix(tiny_dataset, indices)
               for f in ensemble.member_directories(model)]
    np.testing.assert_allclose(matrix, np.mean(members, axis=0), atol=1e-6)
