"""The confidence head: a variance per image, the pairs' Gaussian likelihood, weighted recovery."""

import numpy as np
import pytest

from cryoem import alignment, datasets, distance, recovery, rotations, volumes
from cryoem import siamese, training, training_data  # noqa: E402 - hard dependencies


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_the_variance_head_and_its_loss_match_numpy():
    """Distances from all outputs but the last, variances from the last (softplus + floor, a
    pair's the sum of its images'), and the loss Σ w (r²/v + log v), all by NumPy."""
    embedding = siamese.build_embedding(24, width=0.25, feature_dim=16, confidence=True)
    images = np.random.default_rng(4).standard_normal((8, 24, 24)).astype(np.float32)
    targets = training_data.target_matrix(rotations.sample_uniform(8, seed=5),
                                          rotations.point_group("C1"))
    model = siamese.InBatchModel(embedding, confidence=True)
    estimates, variances = np.asarray(model(images))
    outputs = np.asarray(embedding(images), dtype=np.float64)
    assert outputs.shape == (8, 17)
    unit = outputs[:, :16] / np.linalg.norm(outputs[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(estimates, 2 * np.arccos(np.clip(np.abs(unit @ unit.T), 1e-6,
                                                                1 - 1e-6)), atol=2e-3)
    share = softplus(outputs[:, 16]) + siamese.VARIANCE_FLOOR
    np.testing.assert_allclose(variances, share[:, None] + share[None, :], rtol=1e-5)
    i, j = np.triu_indices(8, k=1)
    _, weights = (np.asarray(w) for w in siamese.uniform_pair_weights(targets))
    r, v = estimates[i, j] - targets[i, j], variances[i, j]
    loss = float(model.compute_loss(y=targets, y_pred=np.stack([estimates, variances])))
    assert loss == pytest.approx(float(np.sum(weights * (r ** 2 / v + np.log(v)))), rel=1e-5)
    # The same residuals at twice the variance: the error costs half, the log more.
    doubled = float(siamese.confidence_loss(weights, r, 2 * v))
    assert doubled == pytest.approx(float(np.sum(weights * (r ** 2 / (2 * v) + np.log(2 * v)))),
                                    rel=1e-5)


def test_a_confidence_model_trains_and_gives_its_pairs_variances(tmp_path):
    data = datasets.load(datasets.generate(volumes.resolve("4ake", 24), 120,
                                           tmp_path / "small.h5", seed=0))
    config = training.TrainingConfig(width=0.25, epochs=2, steps_per_epoch=3, batch_size=16,
                                     feature_dim=8, confidence=True, turns=2)
    history = training.train([data], tmp_path / "model", config, verbose=0)
    assert np.all(np.isfinite(history["loss"]))
    estimator = distance.LearnedDistance(tmp_path / "model", turns=2)
    test = data.split["test"][:10]
    assert estimator.confidence and estimator.embed(data.projections[test]).shape == (10, 8)
    raw = [np.asarray(estimator.embedding.predict(training_data.quarter_turn(
        data.projections[test], k), verbose=0), dtype=np.float64)[:, -1] for k in (0, 2)]
    expected = np.mean([(softplus(r) + siamese.VARIANCE_FLOOR)[:, None]
                        + (softplus(r) + siamese.VARIANCE_FLOOR)[None, :] for r in raw], axis=0)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(estimator.variance_matrix(data, test), expected, rtol=1e-4)
    plain = training.TrainingConfig(width=0.25, epochs=1, steps_per_epoch=2, batch_size=16,
                                    feature_dim=8)
    training.train([data], tmp_path / "plain", plain, verbose=0)
    with pytest.raises(ValueError, match="no variance head"):
        distance.LearnedDistance(tmp_path / "plain").variance_matrix(data, test)


def test_pair_weights_silence_the_pairs_they_zero():
    """A quarter of the pairs replaced by uniform values on [0, π]: weighted 0, recovery ends
    near the truth (a local minimum keeps it from exact), fitting the others; unweighted it
    is lost.  Weights of 1 change nothing."""
    q = rotations.sample_uniform(60, seed=13)
    d = rotations.geodesic_distance_matrix(q)
    rng = np.random.default_rng(3)
    bad = np.triu(rng.random(d.shape) < 0.25, 1)
    bad = bad | bad.T
    corrupted = np.where(bad, rng.uniform(0, np.pi, d.shape), d)
    corrupted = np.triu(corrupted, 1) + np.triu(corrupted, 1).T
    weighted = recovery.recover(corrupted, steps=2000, pair_weights=(~bad).astype(float))
    plain = recovery.recover(corrupted, steps=2000)
    assert alignment.align_o4(weighted.quaternions, q).mean < 0.1
    assert alignment.align_o4(plain.quaternions, q).mean > 0.3
    assert weighted.final_loss == pytest.approx(
        recovery.loss(weighted.quaternions, corrupted, (~bad).astype(float)), rel=1e-4)
    ones = recovery.recover(corrupted, steps=50, pair_weights=np.ones_like(d))
    np.testing.assert_allclose(ones.quaternions, recovery.recover(corrupted, steps=50).quaternions)
    with pytest.raises(ValueError, match="non-negative"):
        recovery.recover(corrupted, steps=5, pair_weights=-np.ones_like(d))
