"""Phase 1: the distance estimators against each other and the Siamese network's training."""

import csv
import json

import numpy as np
import pytest

from cryoem import cli, datasets, distance, projection, rotations, volumes

from cryoem import siamese, training, training_callbacks, training_data  # noqa: E402 - hard dependencies: a broken import must fail

keras = siamese.keras


def scipy_symmetric_distances(q, group=None):
    """Reference: min over g of the angle of R_i⁻¹ R_j R_g, with SciPy's rotations (scalar last)."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_quat(np.asarray(q)[:, [1, 2, 3, 0]])
    group = np.array([[1.0, 0, 0, 0]]) if group is None else np.asarray(group)
    best = np.full((len(q), len(q)), np.inf)
    for g in Rotation.from_quat(group[:, [1, 2, 3, 0]]):
        for i in range(len(q)):
            best[i] = np.minimum(best[i], (r[i].inv() * r * g).magnitude())
    return best


def in_memory_dataset(orientations, symmetry="C1", images=None):
    n = len(orientations)
    return datasets.Dataset(
        projections=images, orientations=np.asarray(orientations), shifts=np.zeros((n, 2)),
        volume=np.zeros((4, 4, 4), dtype=np.float32),
        split={"train": np.arange(n), "validation": np.arange(0), "test": np.arange(n)},
        attrs={"symmetry": symmetry})


# ---------------------------------------------------------------- exact and perturbed
def test_exact_matches_the_geodesic_distance():
    data = in_memory_dataset(rotations.sample_uniform(40, seed=0))
    d = distance.ExactDistance().matrix(data)
    np.testing.assert_allclose(d, scipy_symmetric_distances(data.orientations), atol=1e-6)
    i, j = np.array([0, 3, 5]), np.array([7, 3, 1])
    np.testing.assert_allclose(distance.ExactDistance().pairs(data, i, j), d[i, j], atol=1e-6)


@pytest.mark.parametrize("symmetry", ["C2", "D3", "O"])
def test_symmetry_related_orientations_are_at_distance_zero(symmetry):
    q = rotations.sample_uniform(5, seed=1)
    group = rotations.point_group(symmetry)
    moved = rotations.multiply(q, group[np.arange(5) % len(group)])
    data = in_memory_dataset(np.concatenate([q, moved]), symmetry)
    d = distance.ExactDistance().matrix(data)
    np.testing.assert_allclose(np.diag(d[:5, 5:]), 0, atol=1e-6)
    np.testing.assert_allclose(d, scipy_symmetric_distances(data.orientations, group), atol=1e-6)
    assert np.all(d <= scipy_symmetric_distances(data.orientations) + 1e-9)


def test_perturbed_with_zero_variance_is_exact():
    data = in_memory_dataset(rotations.sample_uniform(30, seed=2))
    np.testing.assert_allclose(distance.PerturbedDistance(0.0).matrix(data),
                               distance.ExactDistance().matrix(data), atol=1e-12)


def test_perturbed_noise_has_the_requested_variance():
    data = in_memory_dataset(rotations.sample_uniform(400, seed=3))
    exact = distance.ExactDistance().matrix(data)
    noisy = distance.PerturbedDistance(0.04, seed=1).matrix(data)
    assert np.allclose(noisy, noisy.T) and np.all(np.diag(noisy) == 0)
    assert noisy.min() >= 0 and noisy.max() <= np.pi
    middle = (exact > 1.0) & (exact < 2.0)  # far from the clipping at 0 and π
    assert np.var((noisy - exact)[middle]) == pytest.approx(0.04, rel=0.05)
    assert abs(np.mean((noisy - exact)[middle])) < 0.01
    i, j = np.array([1, 10, 50]), np.array([2, 10, 7])
    np.testing.assert_allclose(distance.PerturbedDistance(0.04, seed=1).pairs(data, i, j),
                               noisy[i, j], atol=1e-12)
    assert not np.allclose(distance.PerturbedDistance(0.04, seed=2).matrix(data), noisy)
    with pytest.raises(ValueError):
        distance.PerturbedDistance(-1.0)


# ---------------------------------------------------------------- euclidean
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.h5"
    return datasets.load(datasets.generate(volumes.resolve("4ake", 32), 400, path, seed=0))


def test_euclidean_identical_images_are_at_zero_and_the_map_is_monotone(small_dataset):
    estimator = distance.EuclideanDistance(n_pairs=5000).fit(small_dataset)
    x, y = estimator.knots
    assert np.all(np.diff(y) >= 0) and y.min() >= 0 and y.max() <= np.pi
    images = small_dataset.projections[:3]
    twin = datasets.Dataset(np.concatenate([images, images]), np.zeros((6, 4)), np.zeros((6, 2)),
                            small_dataset.volume, small_dataset.split, small_dataset.attrs)
    d = estimator.matrix(twin)
    np.testing.assert_allclose(np.diag(d[:3, 3:]), estimator._map(np.zeros(3)), atol=1e-9)
    assert np.all(np.diag(d) == 0)
    assert np.all(estimator.pairs(twin, [0, 1], [3, 4]) == estimator._map(np.zeros(2)))
    assert estimator._map(np.zeros(1))[0] <= np.median(y)


def test_euclidean_follows_small_distances(small_dataset):
    """A weak baseline, as the paper found: informative for near views, flat beyond."""
    test = small_dataset.split["test"]
    truth = distance.ExactDistance().matrix(small_dataset, test)
    estimate = distance.EuclideanDistance().fit(small_dataset).matrix(small_dataset, test)
    constant = np.full_like(truth, np.mean(distance.upper_triangle(truth)))
    assert distance.l_de(estimate, truth) < distance.l_de(constant, truth)
    binned = distance.binned_error(estimate, truth, bins=6)
    assert binned["mean_estimate"][0] < binned["mean_estimate"][-1] - 0.5
    with pytest.raises(RuntimeError):
        distance.EuclideanDistance().matrix(small_dataset, test)


# ---------------------------------------------------------------- the network's pieces
def test_uniform_pair_weights_equalise_the_bins():
    rng = np.random.default_rng(0)
    targets = np.abs(rng.normal(2.0, 0.6, (40, 40)))
    targets = np.clip((targets + targets.T) / 2, 0, np.pi)
    mask, weights = (np.asarray(t) for t in siamese.uniform_pair_weights(targets, bins=8,
                                                                          cap=1e9))
    values = targets[mask]
    assert mask.sum() == 40 * 39 // 2 and weights.sum() == pytest.approx(1.0)
    which = np.clip((values / np.pi * 8).astype(int), 0, 7)
    per_bin = np.bincount(which, weights=weights, minlength=8)
    occupied = np.bincount(which, minlength=8) > 0
    np.testing.assert_allclose(per_bin[occupied], 1 / occupied.sum(), rtol=1e-5)
    # With a cap, a bin with a single pair cannot dominate.
    _, capped = siamese.uniform_pair_weights(targets, bins=8, cap=2.0)
    assert np.max(np.asarray(capped)) < np.max(weights)


def test_unpaired_targets_get_no_weight_and_leave_the_pairs_weights_as_alone():
    """Two blocks of pairs in one matrix, unpaired between them: zero weight there, and the
    paired ones weighted by their bins as counted by hand over those pairs alone."""
    rng = np.random.default_rng(1)
    blocks = [np.abs(rng.normal(1.5, 0.8, (n, n))) for n in (7, 5)]
    blocks = [np.clip((b + b.T) / 2, 0, np.pi) for b in blocks]
    targets = np.full((12, 12), training_data.UNPAIRED)
    targets[:7, :7], targets[7:, 7:] = blocks
    weights = np.asarray(siamese.pair_weight_matrix(targets.astype(np.float32), bins=4, cap=3.0))
    paired = np.zeros((12, 12), dtype=bool)
    paired[:7, :7] = paired[7:, 7:] = True
    upper = np.triu(paired, k=1)
    assert np.all(weights[~upper] == 0)
    which = np.clip((targets[upper] / np.pi * 4).astype(int), 0, 3)
    counts = np.bincount(which, minlength=4)
    by_hand = 1 / np.maximum(counts[which], upper.sum() / (4 * 3.0))
    np.testing.assert_allclose(weights[upper], by_hand / by_hand.sum(), rtol=1e-5)


def test_horizon_residuals_fit_near_pairs_and_hinge_far_ones():
    targets = np.array([0.5, 0.5, 2.0, 2.0, 1.0], dtype=np.float32)
    estimates = np.array([0.7, 0.2, 0.5, 2.5, 0.9], dtype=np.float32)
    # Hand-worked with τ = 1: near pairs keep d_p − d_q; far ones only pay for falling short
    # of τ (the last pair sits on the horizon, so it counts as far).
    np.testing.assert_allclose(np.asarray(siamese.horizon_residuals(targets, estimates, 1.0)),
                               [0.2, -0.3, -0.5, 0.0, -0.1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(siamese.horizon_residuals(targets, estimates)),
                               estimates - targets, atol=1e-6)


def test_in_batch_loss_with_a_horizon_matches_numpy():
    embedding = siamese.build_embedding(24, arch="light", width=0.25, feature_dim=16)
    images = np.random.default_rng(2).standard_normal((8, 24, 24)).astype(np.float32)
    targets = training_data.target_matrix(rotations.sample_uniform(8, seed=3),
                                          rotations.point_group("C1"))
    model = siamese.InBatchModel(embedding, horizon=1.2)
    estimates = np.asarray(model(images))
    i, j = np.triu_indices(8, k=1)
    _, weights = (np.asarray(w) for w in siamese.uniform_pair_weights(targets))
    t, d = targets[i, j], estimates[i, j]
    residuals = np.where(t < 1.2, d - t, np.minimum(d - 1.2, 0.0))
    assert np.any(t >= 1.2) and np.any(t < 1.2)
    loss = float(model.compute_loss(y=targets, y_pred=estimates))
    assert loss == pytest.approx(float(np.sum(weights * residuals ** 2)), rel=1e-5)
    plain = float(siamese.InBatchModel(embedding).compute_loss(y=targets, y_pred=estimates))
    assert plain == pytest.approx(float(np.sum(weights * (d - t) ** 2)), rel=1e-5)
    assert loss < plain


def test_in_batch_and_per_pair_models_agree():
    embedding = siamese.build_embedding(24, arch="light", width=0.25, feature_dim=16)
    images = np.random.default_rng(1).standard_normal((6, 24, 24)).astype(np.float32)
    matrix = np.asarray(siamese.InBatchModel(embedding)(images))
    i, j = np.triu_indices(6, k=1)
    pairs = siamese.per_pair_model(embedding).predict([images[i], images[j]], verbose=0)
    np.testing.assert_allclose(pairs, matrix[i, j], atol=2e-3)
    assert np.all(matrix >= 0) and np.all(matrix <= np.pi)


def test_target_matrix_is_the_exact_distance():
    q = rotations.sample_uniform(12, seed=4)
    for symmetry in ("C1", "C3"):
        group = rotations.point_group(symmetry)
        np.testing.assert_allclose(training_data.target_matrix(q, group),
                                   scipy_symmetric_distances(q, group), atol=1e-5)


def test_mixed_batches_join_the_volumes_batches_and_pair_within_each(small_dataset, tmp_path):
    other = datasets.load(datasets.generate(volumes.resolve("1ubq", 32), 8, tmp_path / "u.h5"))
    sets = [small_dataset, other]
    inner = training_data.RenderedBatches(
        [d.volume for d in sets], [d.pixel_size for d in sets], ["C1", "C1"],
        [d.attrs["signal_variance"] for d in sets], batch_size=8, steps=4, seed=2)
    mixed = training_data.MixedBatches(inner, 2)
    assert len(mixed) == 2 and mixed.batch_size == 16
    mixed.epoch = 3  # as training_callbacks.SyncEpoch sets it
    assert inner.epoch == 3
    images, targets = mixed[1]
    reference = training_data.RenderedBatches(
        [d.volume for d in sets], [d.pixel_size for d in sets], ["C1", "C1"],
        [d.attrs["signal_variance"] for d in sets], batch_size=8, steps=4, seed=2)
    reference.epoch = 3
    for k, rows in enumerate((slice(0, 8), slice(8, 16))):
        expected_images, expected_targets = reference[2 + k]
        np.testing.assert_allclose(images[rows], expected_images, atol=1e-6)
        np.testing.assert_array_equal(targets[rows, rows], expected_targets)
    assert np.all(targets[:8, 8:] == training_data.UNPAIRED)
    assert np.all(targets[8:, :8] == training_data.UNPAIRED)
    with pytest.raises(ValueError, match="divide"):
        training_data.MixedBatches(inner, 3)
    config = training.TrainingConfig(arch="light", width=0.25, epochs=1, steps_per_epoch=2,
                                     batch_size=16, mix=2, seed=0)
    history = training.train(sets, tmp_path / "model", config, verbose=0)
    assert np.isfinite(history["loss"][0])


def test_rendered_batches_are_reproducible_with_near_pairs_and_fresh_noise(small_dataset):
    volume = small_dataset.volume
    common = dict(volumes=[volume], pixel_sizes=[small_dataset.pixel_size], symmetries=["C1"],
                  signal_variances=[small_dataset.attrs["signal_variance"]], batch_size=16,
                  steps=3, near_angle=0.3, seed=5)
    noisy = training_data.RenderedBatches(snr_range=(0.5, 0.5), **common)
    clean = training_data.RenderedBatches(snr_range=None, **common)
    images, targets = noisy[1]
    again, _ = training_data.RenderedBatches(snr_range=(0.5, 0.5), **common)[1]
    np.testing.assert_array_equal(images, again)
    clean_images, clean_targets = clean[1]
    np.testing.assert_array_equal(targets, clean_targets)
    noise = images - clean_images
    assert np.var(noise) == pytest.approx(small_dataset.attrs["signal_variance"] / 0.5, rel=0.1)
    near = np.diag(targets[:8, 8:])  # the partners q·δ
    assert np.all(near <= 0.3 + 1e-5)
    other, _ = noisy[2]
    assert not np.allclose(other, images)


def test_a_curriculum_lowers_the_noise_geometrically_to_the_data_snr(small_dataset):
    """Noise variance measured on the batches: SNR 16 at epoch 0, 1 half-way, 1/16 after."""
    common = dict(volumes=[small_dataset.volume], pixel_sizes=[small_dataset.pixel_size],
                  symmetries=["C1"], signal_variances=[small_dataset.attrs["signal_variance"]],
                  batch_size=32, steps=2, seed=1)
    batches = training_data.RenderedBatches(snr_range=(1 / 16, 1 / 16), snr_start=16.0,
                                       curriculum_epochs=4, **common)
    clean = training_data.RenderedBatches(snr_range=None, **common)
    signal = small_dataset.attrs["signal_variance"]
    for epoch, snr in ((0, 16.0), (2, 1.0), (4, 1 / 16), (9, 1 / 16)):
        batches.epoch = clean.epoch = epoch
        noise = batches[0][0] - clean[0][0]
        assert np.var(noise) == pytest.approx(signal / snr, rel=0.1), epoch
    with pytest.raises(ValueError, match="snr_start"):
        training_data.RenderedBatches(snr_range=None, snr_start=16.0, curriculum_epochs=4, **common)


def test_batches_rendered_in_blocks_are_those_rendered_one_by_one(small_dataset):
    """Two volumes in turn, half the images with a CTF, shifts, turns, noise: rendering five
    batches' slices in one call per volume and kind gives each batch what one call per batch
    gave, to rounding, in any order of access."""
    volume = small_dataset.volume
    common = dict(volumes=[volume, volume[::-1].copy()],
                  pixel_sizes=[small_dataset.pixel_size] * 2, symmetries=["C1"] * 2,
                  signal_variances=[small_dataset.attrs["signal_variance"]] * 2, batch_size=16,
                  steps=5, snr_range=(1.0, 1.0), max_shift=1.5, ctf=True, ctf_fraction=0.5,
                  turns=2, seed=3)
    alone = training_data.RenderedBatches(render_block=1, **common)
    blocks = training_data.RenderedBatches(render_block=5, **common)
    scale = np.abs(alone[0][0]).max()
    first_epoch = blocks[2][0]
    for index in (3, 0, 4, 1, 2, 3):  # out of order, one of them twice
        images, targets = blocks[index]
        expected_images, expected_targets = alone[index]
        np.testing.assert_allclose(images, expected_images, atol=1e-5 * scale)
        np.testing.assert_array_equal(targets, expected_targets)
    blocks.on_epoch_end()
    alone.on_epoch_end()
    np.testing.assert_allclose(blocks[2][0], alone[2][0], atol=1e-5 * scale)
    assert not np.allclose(blocks[2][0], first_epoch)  # a new epoch draws new data


@pytest.mark.parametrize("quarters", [1, 2, 3])
def test_a_quarter_turn_is_the_projection_of_the_turned_orientation(small_dataset, quarters):
    """The turned image equals the projector's image at R_z(k·90°)·R (labels stay exact)."""
    from cryoem import projection

    q = rotations.sample_uniform(5, seed=3)
    turned = training_data.quarter_turn(projection.project(small_dataset.volume, q), quarters)
    reference = projection.project(small_dataset.volume,
                                   training_data.quarter_turn_orientations(q, quarters))
    scale = np.abs(reference).max()
    np.testing.assert_allclose(turned, reference, atol=1e-4 * scale)
    wrong = projection.project(small_dataset.volume,
                               training_data.quarter_turn_orientations(q, -quarters))
    assert quarters == 2 or np.abs(turned - wrong).max() > 0.1 * scale


def test_turned_batches_serve_each_render_turned_with_exact_targets(small_dataset):
    common = dict(volumes=[small_dataset.volume], pixel_sizes=[small_dataset.pixel_size],
                  symmetries=["C1"], signal_variances=[small_dataset.attrs["signal_variance"]],
                  batch_size=16, steps=2, seed=2, snr_range=None)
    images, targets = training_data.RenderedBatches(turns=4, **common)[0]
    assert images.shape[0] == targets.shape[0] == 16
    base = images[:4]
    for k in (1, 2, 3):  # copy k of image i sits at 4k + i, its orientation turned by k·90°
        np.testing.assert_array_equal(images[4 * k:4 * k + 4], training_data.quarter_turn(base, k))
        np.testing.assert_allclose(np.diag(targets[:4, 4 * k:4 * k + 4]),
                                   min(k, 4 - k) * np.pi / 2, atol=1e-5)
    with pytest.raises(ValueError, match="turns"):
        training_data.RenderedBatches(turns=3, **common)


# ---------------------------------------------------------------- training, saving, loading
def untrained_l_de(data, config, indices):
    keras.utils.set_random_seed(config.seed)
    embedding = siamese.build_embedding(data.size, config.input_size, config.arch,
                                        config.feature_dim, config.width)
    features = np.asarray(embedding.predict(data.projections[indices], verbose=0))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    d = distance.LearnedDistance._distance(features @ features.T)
    return distance.l_de(d, distance.ExactDistance().matrix(data, indices))


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    siamese.configure_threads(2)
    out = tmp_path_factory.mktemp("model")
    config = training.TrainingConfig(arch="light", width=0.5, epochs=8, steps_per_epoch=25,
                                     batch_size=48, patience=20, seed=1)
    history = training.train([small_dataset], out, config, verbose=0)
    return out, config, history


def test_short_training_beats_an_untrained_network(small_dataset, trained):
    out, config, history = trained
    test = small_dataset.split["test"]
    learned = distance.LearnedDistance(out).matrix(small_dataset, test)
    truth = distance.ExactDistance().matrix(small_dataset, test)
    before = untrained_l_de(small_dataset, config, test)
    after = distance.l_de(learned, truth)
    assert after < 0.6 * before, (before, after)
    assert len(history["loss"]) == 8 and history["val_loss"][-1] < history["val_loss"][0]
    for name in ("model.keras", "config.json", "history.csv", "best.json"):
        assert (out / name).exists()
    assert not (out / "backup").exists()  # removed once training finished


def test_save_load_predict_is_identical(small_dataset, trained, tmp_path):
    out, config, _ = trained
    test = small_dataset.split["test"][:20]
    first = distance.LearnedDistance(out).matrix(small_dataset, test)
    second = distance.LearnedDistance(out).matrix(small_dataset, test)
    np.testing.assert_array_equal(first, second)
    model = distance.LearnedDistance(out)
    copy = siamese.save_model(model.embedding, training.TrainingConfig(**{
        **config.__dict__, "image_size": small_dataset.size}), tmp_path / "copy")
    np.testing.assert_allclose(distance.LearnedDistance(copy).matrix(small_dataset, test), first,
                               atol=1e-6)
    i, j = np.array([0, 4, 9]), np.array([5, 4, 1])
    np.testing.assert_allclose(model.pairs(small_dataset, i, j, test), first[i, j], atol=1e-5)


def test_a_phase_flipping_model_flips_the_images_that_carry_a_ctf(small_dataset, trained,
                                                                   tmp_path):
    """A model trained on phase-flipped images (``phase_flip``) gives data with a CTF the
    distances the same network gives those images phase-flipped by hand; data without one
    pass as they are."""
    import dataclasses

    out, config, _ = trained
    test = small_dataset.split["test"][:20]
    flipping = distance.LearnedDistance(siamese.save_model(
        distance.LearnedDistance(out).embedding, training.TrainingConfig(**{
            **config.__dict__, "image_size": small_dataset.size, "phase_flip": True}),
        tmp_path / "flipping"))
    plain = distance.LearnedDistance(out)
    assert flipping.phase_flips and not plain.phase_flips
    ctf = projection.sample_ctf(len(small_dataset), seed=2)
    with_ctf = dataclasses.replace(small_dataset, ctf=ctf)
    by_hand = dataclasses.replace(small_dataset, projections=projection.phase_flip(
        small_dataset.projections, ctf, small_dataset.pixel_size))
    expected = plain.matrix(by_hand, test)
    np.testing.assert_allclose(flipping.matrix(with_ctf, test), expected, atol=1e-5)
    assert np.abs(plain.matrix(with_ctf, test) - expected).max() > 1e-3  # the flip matters
    i, j = np.array([0, 4, 9]), np.array([5, 4, 1])
    np.testing.assert_allclose(flipping.pairs(with_ctf, i, j, test), expected[i, j], atol=1e-5)
    np.testing.assert_allclose(flipping.matrix(small_dataset, test),
                               plain.matrix(small_dataset, test), atol=1e-6)


def test_test_time_turns_average_the_turned_pairs_and_forget_the_images_turn(
        small_dataset, trained):
    out, _, _ = trained
    test = small_dataset.split["test"][:24]
    images = np.asarray(small_dataset.projections[test], dtype=np.float32)
    single = distance.LearnedDistance(out, turns=1)
    by_hand = np.mean([distance.LearnedDistance._distance(f @ f.T) for f in (
        single.embed(training_data.quarter_turn(images, k)) for k in range(4))], axis=0)
    np.fill_diagonal(by_hand, 0.0)
    four = distance.LearnedDistance(out)  # four turns by default
    matrix = four.matrix(small_dataset, test)
    np.testing.assert_allclose(matrix, by_hand, atol=1e-6)
    # The four turns are a group: turning every image by a quarter gives the same matrix,
    # where one turn does not.
    to_distance = distance.LearnedDistance._distance
    each_turn = four.turned_features(training_data.quarter_turn(images, 1))
    after_a_turn = np.mean([to_distance(f @ f.T) for f in each_turn], axis=0)
    np.fill_diagonal(after_a_turn, 0.0)
    np.testing.assert_allclose(after_a_turn, matrix, atol=1e-5)
    one = single.embed(training_data.quarter_turn(images, 1))
    one_turn = to_distance(one @ one.T)
    np.fill_diagonal(one_turn, 0.0)
    assert np.abs(one_turn - single.matrix(small_dataset, test)).max() > 1e-3
    i, j = np.array([0, 4, 9]), np.array([5, 4, 1])
    np.testing.assert_allclose(four.pairs(small_dataset, i, j, test), matrix[i, j], atol=1e-5)
    with pytest.raises(ValueError, match="turns must be 1, 2 or 4"):
        distance.LearnedDistance(out, turns=3)


def test_wrong_image_size_fails_clearly(trained, tmp_path):
    out, _, _ = trained
    other = datasets.load(datasets.generate(volumes.resolve("phantom", 24), 8, tmp_path / "o.h5"))
    with pytest.raises(ValueError, match="takes 32×32 images"):
        distance.LearnedDistance(out).matrix(other)
    with pytest.raises(FileNotFoundError, match="cryoem train"):
        distance.LearnedDistance(tmp_path / "nothing")


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_training_resumes_where_it_stopped(small_dataset, tmp_path):
    config = training.TrainingConfig(width=0.25, epochs=4, steps_per_epoch=3, batch_size=16,
                                     patience=10, feature_dim=8)
    with pytest.raises(KeyboardInterrupt):
        training.train([small_dataset], tmp_path, config, verbose=0, callbacks=[_Interrupt()])
    assert (tmp_path / "backup").exists()
    changed = training.TrainingConfig(**{**config.__dict__, "learning_rate": 0.5})
    with pytest.raises(ValueError, match="learning_rate"):
        training.train([small_dataset], tmp_path, changed, verbose=0)
    history = training.train([small_dataset], tmp_path, config, verbose=0)
    assert len(history["loss"]) == 2  # epochs 3 and 4 only
    with open(tmp_path / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3]


def test_a_finished_model_is_not_replaced_silently(small_dataset, trained, tmp_path):
    out, config, _ = trained
    before = (out / "model.keras").read_bytes()
    with pytest.raises(FileExistsError, match="already holds"):
        training.train([small_dataset], out, config, verbose=0)
    assert (out / "model.keras").read_bytes() == before
    quick = training.TrainingConfig(width=0.25, epochs=1, steps_per_epoch=2, batch_size=16,
                                    feature_dim=8)
    training.train([small_dataset], tmp_path, quick, verbose=0)
    training.train([small_dataset], tmp_path, quick, verbose=0, overwrite=True)
    with open(tmp_path / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # the old run's history went with it


def test_fixed_mode_and_cli(small_dataset, tmp_path, capsys):
    model = tmp_path / "model"
    code = cli.main(["train", str(small_dataset.path), "--out", str(model), "--epochs", "1",
                     "--mode", "fixed", "--batch-size", "32", "--width", "0.25"])
    assert code == 0 and "best validation L_DE" in capsys.readouterr().out
    for estimator in ("learned", "exact", "perturbed", "euclidean"):
        out = tmp_path / f"{estimator}.h5"
        assert cli.main(["distances", str(small_dataset.path), "--estimator", estimator,
                         "--model", str(model), "--out", str(out)]) == 0
        matrix, indices, attrs = distance.load_matrix(out)
        assert matrix.shape == (len(indices),) * 2 and attrs["estimator"] == estimator
    assert distance.load_matrix(tmp_path / "exact.h5")[2]["l_de"] == 0
    assert cli.main(["distances", str(small_dataset.path), "--estimator", "learned",
                     "--out", str(tmp_path / "x.h5")]) == 2
    assert "needs a trained model" in capsys.readouterr().err


def test_a_resumed_training_draws_from_the_epoch_where_it_stopped(small_dataset, tmp_path,
                                                                   monkeypatch):
    """Interrupted after epoch 1, the rerun renders epoch 2's data (and curriculum), not epoch 0's."""
    drawn = []
    bounds = training_data.RenderedBatches.snr_bounds
    monkeypatch.setattr(training_data.RenderedBatches, "snr_bounds",
                        lambda self: drawn.append(self.epoch) or bounds(self))

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    config = training.TrainingConfig(width=0.25, epochs=3, steps_per_epoch=2, batch_size=16,
                                     feature_dim=8, snr_range=(0.5, 0.5), snr_start=8.0,
                                     curriculum_epochs=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        training.train([small_dataset], tmp_path, config, verbose=0, callbacks=[Interrupt()])
    assert drawn.count(1) == 2  # epoch 1's two steps (Keras also peeks at a batch first)
    drawn.clear()
    training.train([small_dataset], tmp_path, config, verbose=0)
    assert drawn.count(2) == 2 and 1 not in drawn, drawn  # epoch 2's steps, nothing else trained


def test_worker_threads_train_on_the_batches_the_training_loop_renders(small_dataset, tmp_path,
                                                                       monkeypatch):
    """``workers`` threads prepare each epoch's batches ahead: the same (epoch, batch, images)
    as rendered in the training loop, none from another epoch, and the same losses."""
    served = []
    getitem = training_data.RenderedBatches.__getitem__

    def recorded(self, index):
        images, targets = getitem(self, index)
        served.append((self.epoch, index, images.tobytes(), targets.tobytes()))
        return images, targets

    monkeypatch.setattr(training_data.RenderedBatches, "__getitem__", recorded)
    runs = {}
    for workers in (1, 3):
        served.clear()
        config = training.TrainingConfig(width=0.25, epochs=3, steps_per_epoch=4, batch_size=16,
                                         feature_dim=8, snr_range=(0.5, 2.0), workers=workers)
        history = training.train([small_dataset], tmp_path / str(workers), config, verbose=0)
        runs[workers] = (sorted(set(served)), history["loss"])
    assert [(e, i) for e, i, *_ in runs[3][0]] == [(e, i) for e in range(3) for i in range(4)]
    assert runs[3][0] == runs[1][0]
    np.testing.assert_allclose(runs[3][1], runs[1][1], rtol=1e-4)


def test_train_command_records_its_curriculum_front_end_and_horizon(small_dataset, tmp_path):
    model = tmp_path / "model"
    assert cli.main(["train", str(small_dataset.path), "--out", str(model), "--epochs", "1",
                     "--steps-per-epoch", "2", "--batch-size", "16", "--width", "0.25",
                     "--snr-range", "0.0625", "0.0625", "--curriculum", "16", "4",
                     "--front", "polar", "--feature-dim", "16", "--horizon", "1.2",
                     "--workers", "2", "--confidence"]) == 0
    config = json.loads((model / "config.json").read_text())
    assert (config["snr_start"], config["curriculum_epochs"]) == (16.0, 4)
    assert config["snr_range"] == [0.0625, 0.0625]
    assert (config["front"], config["feature_dim"], config["horizon"]) == ("polar", 16, 1.2)
    assert config["workers"] == 2 and config["confidence"] is True
    embedding, _ = siamese.load_embedding(model)
    assert embedding.get_layer("polar").angles == 2 * small_dataset.size
    assert embedding.output.shape[-1] == 16 + 1  # the features and the variance


def test_the_cosine_schedule_lowers_the_rate_along_a_half_cosine(small_dataset, tmp_path):
    """history.csv's rates against 1e-3 · (0.01 + 0.99 · (1 + cos(π e / E)) / 2), by hand."""
    model = tmp_path / "model"
    assert cli.main(["train", str(small_dataset.path), "--out", str(model), "--epochs", "4",
                     "--steps-per-epoch", "2", "--batch-size", "16", "--width", "0.25",
                     "--schedule", "cosine", "--patience", "10"]) == 0
    with open(model / "history.csv") as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    expected = [1e-3, 1e-3 * (0.01 + 0.99 * (1 + np.sqrt(0.5)) / 2), 1e-3 * 0.505,
                1e-3 * (0.01 + 0.99 * (1 - np.sqrt(0.5)) / 2)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert json.loads((model / "config.json").read_text())["schedule"] == "cosine"
    kinds = {schedule: [type(c).__name__ for c in training_callbacks.schedule_callbacks(
        training.TrainingConfig(schedule=schedule))] for schedule in training.SCHEDULES}
    assert kinds == {"plateau": ["ReduceLROnPlateau", "EarlyStopping"],
                     "cosine": ["CosineSchedule"]}  # the cosine's run is never cut short
    with pytest.raises(ValueError, match="schedule 'step'"):
        training.train([small_dataset], tmp_path / "other",
                       training.TrainingConfig(epochs=1, schedule="step"), verbose=0)


def test_scores():
    truth = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=float)
    estimate = truth + np.array([[0, 0.5, 0], [0.5, 0, -1], [0, -1, 0]])
    assert distance.l_de(estimate, truth) == pytest.approx((0.25 + 0 + 1) / 3)
    binned = distance.binned_error(estimate, truth, bins=3)
    assert binned["count"].sum() == 3
    assert np.nansum(binned["mean_absolute_error"] * binned["count"]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        distance.l_de(np.zeros(3), np.zeros(4))
