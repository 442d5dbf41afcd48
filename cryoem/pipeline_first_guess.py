"""The pipeline's first-guess stages: train → distances → recover → resolve, or ab initio.

Each stage takes the run's state (``cryoem.pipeline._Run``: its folder, config and
metrics) and returns when its route is not the run's; :mod:`cryoem.pipeline`
orders them in ``STAGES``.  Whatever they read of a ground truth beyond scoring
is recorded with ``run.use_truth``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The given map (``PipelineConfig.initial_map``) on the images' grid, as the refinement
#: starts from it (the ``initial-map`` route).
INITIAL_MAP = "initial_map.mrc"
#: What the training modes read of the ground truth (recorded under ``truth_used["train"]``).
TRAINING_TRUTH = {
    "rendered": ["volume", "orientations", "snr", "max_shift", "signal_variance"],
    "fixed": ["orientations"],
    "self": [],  # renderings of the pipeline's own ab initio map (cryoem.self_training)
}
#: Below this SNR the rendered training starts at SNR ``CURRICULUM[0]`` and lowers it to the
#: data's over ``CURRICULUM[1]`` epochs: at SNR 1/16 the best L_DE of the levers measured by
#: ``benchmarks/distance_ablation.py`` (0.40 rad² against 0.46 without, in 300 s, at 8b624d7).
CURRICULUM_BELOW = 1.0
CURRICULUM = (16.0, 8)
#: Below ``CURRICULUM_BELOW`` each render also serves turned in-plane by multiples of
#: 360°/``TURNS`` (exact labels ``R_z(α)·R``): with the curriculum at SNR 1/16, 300 s, the first
#: guess 0.716 rad (O(4)) against 0.862 without (``distance_ablation.py``, ef005c2).
TURNS = 4
#: The training budget (s) of ``train_seconds="auto"``: ``TRAIN_SECONDS[0]`` at SNR ≥
#: ``CURRICULUM_BELOW``, ``TRAIN_SECONDS[1]`` below.  At SNR 1/16 the validation loss still
#: falls after 30 minutes (``distance_ablation.py``: L_DE 0.40 rad² in 300 s, 0.24 in 1800 s);
#: the whole pipeline with 1800 s took 39 minutes and ended 0.26 rad off (0.47 before refinement);
#: with quarter turns (``TURNS``, 4de31b4) training reaches its 200 epochs in 867 s: 22 minutes,
#: 0.25 rad (0.39 before refinement, ``benchmarks/pipeline.py --snr 1/16``).
TRAIN_SECONDS = (300.0, 1800.0)
#: Below ``CURRICULUM_BELOW`` the network is wider and its learning rate falls along a half
#: cosine over the run instead of halving at each stall: at SNR 1/16, 900 s each
#: (``distance_ablation.py --levers turns cosine cosine_wide --budget-seconds 900``, 4cf9c0b),
#: the first guess 0.343 rad (O(4)) with turns, 0.324 with the cosine, 0.292 with it and
#: 1.5 times the filters; the pipeline with it (44306e0, ``benchmarks/pipeline.py --snr 1/16``):
#: 360 epochs in 1,644 s, first guess 0.264 rad (0.355 before), 0.238 after refinement.
#: And 128 images a step (four times the pairs): 900 s each on another 2-core CPU
#: (``distance_ablation.py --levers cosine_wide cosine_wide_batch128 cosine_wide_batch256``,
#: at 486299d, 31bc439 and ac7f5ca), the first guess 0.342 rad with 64 images (139 epochs),
#: 0.295 with 128 (94), 0.299 with 256 (51); the pipeline with it (be1892d,
#: ``benchmarks/pipeline.py --snr 1/16``): 180 epochs in 1,708 s, first guess 0.250 rad (0.264
#: before), 0.238 after refinement.
#: Twice the learning rate (2e-3) won at 900 s (c4a5f24: L_DE 0.140 rad², 0.287 rad against
#: 0.149 and 0.295; another training seed at 1e-3: 0.147 and 0.2945) but lost at the pipeline's
#: 180 epochs (bb9832a: L_DE 0.128, first guess 0.261 rad against 0.123 and 0.250): kept at 1e-3.
LOW_SNR_NETWORK = {"width": 1.5, "schedule": "cosine", "batch_size": 128}
#: Recovery's Cauchy rounds (``recovery.recover(robust=...)``, residual scale in rad): on the
#: learned distances of three finished SNR 1/16 runs (``benchmarks/recovery_levers.py``, the
#: distances of be1892d, bb9832a and 9810c85) the first guess went 0.2502 -> 0.2458,
#: 0.2611 -> 0.2567 and, with shifts, 0.3199 -> 0.3076 rad (O(4)), for about 25 s more;
#: scale 0.15 gained half as much, the far pairs down-weighted less.
RECOVERY_ROBUST = 0.3
#: The training's epochs at most when ``epochs`` is None: ``EPOCHS[0]`` at SNR ≥
#: ``CURRICULUM_BELOW``, ``EPOCHS[1]`` below (180 epochs of 128 images, the images of 360 of 64:
#: 1,708 s of the wider network on the slower of two 2-core CPUs measured, inside
#: ``TRAIN_SECONDS[1]``: the count, not the clock, ends the run, so a rerun trains the same model).
EPOCHS = (200, 180)


def training_budget(train_seconds: float | str | None, snr: float) -> float | None:
    """The training's wall-clock budget in seconds: ``train_seconds``, or by SNR when ``"auto"``.

    Parameters
    ----------
    train_seconds : float, "auto" or None
        A budget in seconds; ``"auto"``: :data:`TRAIN_SECONDS` by ``snr`` (longer
        below :data:`CURRICULUM_BELOW`); None: no budget (the epochs alone bound training).
    snr : float
        The data's signal-to-noise ratio (``inf`` when noiseless).

    Returns
    -------
    float or None
    """
    if train_seconds == "auto":
        return TRAIN_SECONDS[0] if snr >= CURRICULUM_BELOW else TRAIN_SECONDS[1]
    if train_seconds is None:
        return None
    if isinstance(train_seconds, str) or not train_seconds > 0:
        raise ValueError(f"train_seconds must be positive seconds, 'auto' or None, got "
                         f"{train_seconds!r}")
    return float(train_seconds)


def training_epochs(epochs: int | None, snr: float) -> int:
    """The training's epochs at most: ``epochs``, or :data:`EPOCHS` by ``snr`` when None."""
    if epochs is None:
        return EPOCHS[0] if snr >= CURRICULUM_BELOW else EPOCHS[1]
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    return int(epochs)


def _train(run: Any) -> None:
    c = run.config
    if c.route != "distances" or c.estimator != "learned" or c.model is not None:
        return
    from . import datasets, training

    data = run.data()
    if c.training == "self":
        _self_train(run, data)
        return
    if data.source("orientations") != datasets.GROUND_TRUTH:
        raise ValueError(f"training needs ground-truth labels, which {c.particles} does not have: "
                         "pass --model pretrained (or a trained model)")
    snr_range = None if not np.isfinite(c.snr) else (c.snr, c.snr)
    curriculum = c.training == "rendered" and c.snr < CURRICULUM_BELOW
    budget = training_budget(c.train_seconds, c.snr)
    run.metrics["train_budget_s"] = budget
    config = training.TrainingConfig(
        mode=c.training, input_size=c.input_size, epochs=training_epochs(c.epochs, c.snr),
        max_seconds=budget, snr_range=snr_range, max_shift=c.max_shift, patience=30,
        seed=c.seed, ctf=bool(data.attrs.get("ctf", False)),
        snr_start=CURRICULUM[0] if curriculum else None,
        curriculum_epochs=CURRICULUM[1] if curriculum else 0, turns=TURNS if curriculum else 1,
        **(LOW_SNR_NETWORK if c.snr < CURRICULUM_BELOW else {}))
    run.use_truth("train", TRAINING_TRUTH[c.training])
    run.metrics["training"] = c.training
    training.train([data], run.path("model"), config, verbose=2 if run.progress else 0,
                   overwrite=not (run.path("model") / "backup").exists())


def _self_train(run: Any, data: Any) -> None:
    """Train on renderings of the pipeline's own ab initio map (no truth read)."""
    from . import self_training, training

    c = run.config
    # "auto" does not read the simulation's SNR here (no truth): the shorter budget.
    budget = training_budget(c.train_seconds, float("inf"))
    run.metrics["train_budget_s"] = budget
    config = training.TrainingConfig(mode="rendered", input_size=c.input_size,
                                     epochs=training_epochs(c.epochs, float("inf")),
                                     max_seconds=budget, patience=30, seed=c.seed)
    indices = run.working_indices(data)
    run.metrics["training"] = "self"
    run.metrics["self_training"] = self_training.train_on_estimate(
        data, indices, run.path("model"), run.path("estimate.h5"), config, seed=c.seed,
        progress=run.progress)
    if data.simulated_ctf:
        run.use_truth("train", ["ctf"])


def _estimator(run: Any) -> Any:
    from . import distance

    c = run.config
    model = c.model or (str(run.path("model")) if c.estimator == "learned" else None)
    return distance.make_estimator(c.estimator, model_dir=model, sigma2=c.sigma2, seed=c.seed)


def _distances(run: Any) -> None:
    from . import distance, plots, rotations

    if run.config.route != "distances":
        return
    data = run.data()
    estimator = _estimator(run)
    distance.check_truth(estimator, data)
    run.use_truth("distances", estimator.truth_fields)
    estimator.fit(data)
    test = run.working_indices(data)
    if getattr(estimator, "phase_flips", False):  # reads the CTF: a truth use if simulated
        run.ctf(data, test, "distances")
    matrix = estimator.matrix(data, test)
    distance.save_matrix(run.path("distances.h5"), matrix, test, estimator=estimator.name)
    run.metrics["estimator"] = estimator.name
    if isinstance(estimator, distance.LearnedDistance):
        run.metrics["test_turns"] = estimator.turns
    group = rotations.point_group(data.attrs.get("symmetry", "C1"))
    scored = [(test, "l_de_test")]
    if run.config.particles is None:
        scored.append((data.split["validation"], "l_de_val"))
    for split, key in scored:
        reference = run.reference(data, split) if len(split) >= 2 else None
        if reference is None:
            continue
        truth = rotations.symmetric_distance_matrix(reference.orientations, group)
        estimate = matrix if split is test else estimator.matrix(data, split)
        run.metrics[key] = distance.l_de(estimate, truth)
        if split is test:
            plots.save(plots.dp_dq(truth, matrix, title=estimator.name),
                       run.path("figures/dp_dq.png"))


def _recover(run: Any) -> None:
    from . import alignment, distance, recovery

    c = run.config
    if c.route != "distances":
        return
    data = run.data(images=False)
    matrix, indices, _ = distance.load_matrix(run.path("distances.h5"))
    symmetry = data.attrs.get("symmetry", "C1")
    result = recovery.recover(matrix, steps=c.steps, symmetry=symmetry, seed=c.seed,
                              robust=RECOVERY_ROBUST, progress=run.progress)
    run.metrics["l_or"] = result.final_loss
    reference = run.reference(data, indices)
    if reference is not None:  # only to score
        run.metrics.update(
            e_or_o4_rad=alignment.align_o4(result.quaternions, reference.orientations,
                                           symmetry).mean,
            e_or_before_frame_rad=alignment.align_physical(result.quaternions,
                                                           reference.orientations, symmetry).mean)
    recovery.save_orientations(run.path("orientations_from_distances.h5"), result.quaternions,
                               indices, result.loss_history, l_or=result.final_loss)


def _resolve(run: Any) -> None:
    from . import alignment, commonlines, plots, recovery

    if run.config.route != "distances":
        return
    data = run.data()
    q, indices, attrs = recovery.load_orientations(run.path("orientations_from_distances.h5"))
    symmetry = data.attrs.get("symmetry", "C1")
    frame = commonlines.resolve_frame(data.projections[indices], q, seed=run.config.seed,
                                      progress=run.progress)
    resolved = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    run.metrics.update(frame_confidence=frame.confidence, frame_transposed=frame.transposed)
    reference = run.reference(data, indices)
    score = None
    if reference is not None:  # only to score
        physical = alignment.align_physical(resolved, reference.orientations, symmetry)
        score = physical.mean
        o4 = alignment.align_o4_from([q, resolved], reference.orientations, symmetry)
        run.metrics.update(e_or_rad=physical.mean, e_or_median_rad=physical.median,
                           e_or_o4_rad=o4.mean)
    recovery.save_orientations(run.path("orientations.h5"), resolved, indices,
                               l_or=attrs.get("l_or"), e_or_rad=score,
                               frame_confidence=frame.confidence,
                               handedness="undetermined (a map and its mirror image project "
                                          "to the same images)")
    plots.save(plots.orientation_coverage(resolved, "recovered viewing directions"),
               run.path("figures/orientations.png"))
    if not frame.distinguishable:
        raise RuntimeError(f"the frame is not distinguishable from the images (confidence "
                           f"{frame.confidence:.1f} < 5 standard errors)")


def _ab_initio(run: Any) -> None:
    """The first guess from the images alone (:func:`cryoem.ab_initio.ab_initio`)."""
    from . import ab_initio, plots, recovery

    if run.config.route != "ab-initio":
        return
    data = run.data()
    indices = run.working_indices(data)
    result = ab_initio.ab_initio(
        data.projections[indices], ctf=run.ctf(data, indices, "ab_initio"),
        pixel_size=data.pixel_size, seed=run.config.seed, progress=run.progress)
    run.metrics["ab_initio_history"] = result.history
    physical = _physical_error(run, data, indices, result.quaternions)
    score = None
    if physical is not None:  # only to score
        score = physical.mean
        run.metrics.update(e_or_rad=physical.mean, e_or_median_rad=physical.median)
    recovery.save_orientations(run.path("orientations.h5"), result.quaternions, indices,
                               shifts=result.shifts, e_or_rad=score,
                               handedness="undetermined (a map and its mirror image project "
                                          "to the same images)")
    plots.save(plots.orientation_coverage(result.quaternions, "ab initio viewing directions"),
               run.path("figures/orientations.png"))


def _initial_map(run: Any) -> None:
    """The ``initial-map`` route: the user's map put on the images' grid (its pixel size and
    box, :func:`cryoem.volumes.fit_to_box`), for the refinement to start from; the images get
    no first guess of their own (the refinement's start searches all orientations)."""
    from . import plots, volumes

    if run.config.route != "initial-map":
        return
    data = run.data(images=False)
    given = volumes.load_map(run.config.initial_map)
    fitted = volumes.fit_to_box(given, data.size, data.pixel_size)
    if not np.any(fitted):
        raise ValueError(f"{run.config.initial_map}: the map is empty inside the images' box "
                         f"({data.size} px of {data.pixel_size:g} Å)")
    volumes.save_map(volumes.Volume(fitted, data.pixel_size, "initial map",
                                    source=str(run.config.initial_map)), run.path(INITIAL_MAP))
    run.metrics["initial_map"] = {"path": str(run.config.initial_map),
                                  "voxel_size_angstrom": given.voxel_size,
                                  "size": list(given.data.shape)}
    plots.save(plots.volume_slices(fitted, data.pixel_size,
                                   title="initial map (before the start's low-pass)"),
               run.path("figures/initial_map.png"))


def _physical_error(run: Any, data: Any, indices: np.ndarray, q: np.ndarray) -> Any:
    """The physical error of ``q`` against the poses to score against, or None (none)."""
    from . import alignment

    reference = run.reference(data, indices)
    if reference is None:
        return None
    return alignment.align_physical(q, reference.orientations, data.attrs.get("symmetry", "C1"))
