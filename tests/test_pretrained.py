"""The general model: its contract, `--model pretrained`, and the training augmentation it used."""

import json
import shutil

import numpy as np
import pytest

from cryoem import _models, datasets, distance, proteins, volumes

from cryoem import siamese, training, training_data  # noqa: E402 - hard dependencies: a broken import must fail


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A seconds-long model with a contract, trained on two proteins at 32 px."""
    siamese.configure_threads(2)
    root = tmp_path_factory.mktemp("general")
    sets = [datasets.load(datasets.generate(volumes.resolve(name, 32), 40, root / f"{name}.h5",
                                            seed=0)) for name in ("5pti", "1hvr")]
    config = training.TrainingConfig(width=0.25, epochs=1, steps_per_epoch=2, batch_size=16,
                                     ctf=True, ctf_fraction=0.5, snr_range=(0.5, 4.0))
    training.train(sets, root / "model", config, verbose=0)
    contract = siamese.write_contract(root / "model", proteins=["5pti", "1hvr"], box_ratio=1.5,
                                      symmetries={"5pti": "C1", "1hvr": "C2"})
    return root / "model", contract


def test_contract_records_the_framing_and_the_training(tiny_model):
    folder, contract = tiny_model
    assert json.loads((folder / "contract.json").read_text()) == contract
    assert contract["image_size"] == 32 and contract["box_ratio"] == 1.5
    assert contract["symmetries"]["1hvr"] == "C2"
    assert contract["ctf_fraction"] == 0.5 and contract["snr_range"] == [0.5, 4.0]
    _, config = siamese.load_embedding(folder)
    assert config["contract"] == contract


def test_a_model_with_a_contract_resamples_other_image_sizes(tiny_model, tmp_path):
    folder, _ = tiny_model
    estimator = distance.LearnedDistance(folder)
    big = datasets.load(datasets.generate(volumes.resolve("4ake", 48), 12, tmp_path / "b.h5"))
    resampled = volumes.fourier_resample(big.projections, 32, axes=(-2, -1))
    np.testing.assert_allclose(estimator.embed(big.projections), estimator.embed(resampled),
                               atol=1e-6)
    d = estimator.matrix(big)
    assert d.shape == (12, 12) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)


def test_a_different_framing_is_warned_about(tiny_model, tmp_path):
    folder, _ = tiny_model
    wide = volumes.resolve("4ake", 32, box_ratio=2.5)
    data = datasets.load(datasets.generate(wide, 8, tmp_path / "w.h5"))
    with pytest.warns(UserWarning, match="box-to-particle ratio 2.50"):
        distance.LearnedDistance(folder).fit(data)


def test_pretrained_names_the_shipped_model_or_fails_clearly(tiny_model, tmp_path, monkeypatch):
    folder, _ = tiny_model
    monkeypatch.setattr(_models, "PRETRAINED_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="generalisation.py"):
        distance.make_estimator("learned", model_dir="pretrained")
    shutil.copytree(folder, tmp_path / "shipped")
    monkeypatch.setattr(_models, "PRETRAINED_DIR", tmp_path / "shipped")
    estimator = distance.make_estimator("learned", model_dir="pretrained")
    assert estimator.contract["proteins"] == ["5pti", "1hvr"]


def test_the_shipped_model_meets_its_contract():
    if not (_models.PRETRAINED_DIR / _models.MODEL_FILE).is_file():
        pytest.skip("no pretrained model in this checkout")
    size = sum(p.stat().st_size for p in _models.PRETRAINED_DIR.iterdir())
    assert size <= 20e6
    contract = _models.read_contract("pretrained")
    builtin = set(proteins.builtin_names())
    assert len(contract["proteins"]) >= 15 and set(contract["proteins"]) <= builtin
    assert volumes.DEFAULT_PROTEIN not in contract["proteins"]  # the default stays unseen
    estimator = distance.make_estimator("learned", model_dir="pretrained")
    images = np.random.default_rng(0).standard_normal((5, 96, 96)).astype(np.float32)
    features = estimator.embed(images)  # any square size is resampled to the contract's
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-6)


def test_ctf_fraction_gives_a_ctf_to_that_share_of_the_images(tmp_path):
    data = datasets.load(datasets.generate(volumes.resolve("phantom", 24), 8, tmp_path / "p.h5"))
    common = dict(volumes=[data.volume], pixel_sizes=[data.pixel_size], symmetries=["C1"],
                  signal_variances=[1.0], batch_size=40, steps=2, seed=3)
    plain, targets = training_data.RenderedBatches(**common)[0]
    none, _ = training_data.RenderedBatches(ctf=True, ctf_fraction=0.0, **common)[0]
    half, half_targets = training_data.RenderedBatches(ctf=True, ctf_fraction=0.5, **common)[0]
    np.testing.assert_array_equal(none, plain)
    np.testing.assert_array_equal(half_targets, targets)  # same orientations
    changed = ~np.all(np.isclose(half, plain, atol=1e-4), axis=(1, 2))
    assert 8 < changed.sum() < 32
    with pytest.raises(ValueError, match="ctf_fraction"):
        training_data.RenderedBatches(ctf=True, ctf_fraction=1.5, **common)


def test_phase_flipped_training_images_carry_the_ctfs_modulus(tmp_path):
    """With ``phase_flip`` every rendered CTF is its modulus: each image's spectrum over the
    clean image's is real and non-negative; with the plain CTF it changes sign."""
    data = datasets.load(datasets.generate(volumes.resolve("4ake", 32), 8, tmp_path / "p.h5"))
    common = dict(volumes=[data.volume], pixel_sizes=[data.pixel_size], symmetries=["C1"],
                  signal_variances=[1.0], batch_size=16, steps=1, seed=4)
    plain, _ = training_data.RenderedBatches(**common)[0]
    spectrum = np.fft.rfft2(plain)
    strong = np.abs(spectrum) > 1e-2 * np.abs(spectrum).max()

    def ratios(phase_flip):
        images, _ = training_data.RenderedBatches(ctf=True, phase_flip=phase_flip, **common)[0]
        return (np.fft.rfft2(images) / np.where(strong, spectrum, 1))[strong]

    flipped = ratios(True)
    assert np.abs(flipped.imag).max() < 1e-2 and flipped.real.min() > -1e-2
    assert ratios(False).real.min() < -0.5  # the plain CTF's negative lobes
