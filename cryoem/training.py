"""Training the Siamese network of :mod:`cryoem.siamese` (Phase 1): settings and loop.

* The data: :mod:`cryoem.training_data` (:class:`~cryoem.training_data.RenderedBatches`,
  fresh images rendered on the fly from the dataset's volume, and
  :class:`~cryoem.training_data.FixedBatches`, a fixed image set).
* :class:`TrainingConfig` — everything that defines a run, saved as
  ``config.json`` beside the model.
* :func:`train` — Keras ``fit`` of :class:`cryoem.siamese.InBatchModel` with
  checkpoints of the best embedding, early stopping, a learning-rate schedule,
  TensorBoard logs, a CSV history and resumption after an interruption
  (``BackupAndRestore``).

Training runs under every Keras backend (``KERAS_BACKEND``), as the network
does; only the TensorBoard logs of :func:`train` (written when TensorFlow is
installed) touch a backend's own API.

On several GPUs or hosts under TensorFlow, pass :func:`train` a
``tf.distribute`` strategy from :func:`cryoem.devices.make_strategy`
(``cryoem train --strategy mirrored|multiworker``): it builds the model and
optimizer in the strategy's scope and gives each replica its own
``batch_size`` images (tested on two logical CPU devices; see
:mod:`cryoem.devices`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from . import devices, projection, provenance, rotations  # noqa: E402
from . import training_callbacks  # noqa: E402
from ._models import CONFIG_FILE, MODEL_FILE  # noqa: E402
from .datasets import Dataset  # noqa: E402
from .siamese import InBatchModel, build_embedding  # noqa: E402
from .training_data import FixedBatches, MixedBatches, RenderedBatches  # noqa: E402

__all__ = ["TrainingConfig", "train"]


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Everything that defines a training run (saved as ``config.json`` with the model)."""

    arch: str = "light"
    width: float = 1.0
    feature_dim: int = 128
    front: str = "cartesian"  # or "polar" (siamese.build_embedding)
    image_size: int = 64
    input_size: int | None = None
    mode: str = "rendered"  # "rendered" (unlimited, on the fly) or "fixed" (the paper's set)
    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 64  # per replica: each step takes batch_size × replicas images
    learning_rate: float = 1e-3
    patience: int = 6
    snr_range: tuple[float, float] | None = None
    snr_start: float | None = None  # a curriculum: the SNR falls from here to snr_range …
    curriculum_epochs: int = 0  # … over these epochs (RenderedBatches.snr_bounds)
    turns: int = 1  # 2 or 4: each render also serves turned in-plane (RenderedBatches)
    max_shift: float = 0.0
    ctf: bool = False
    ctf_fraction: float = 1.0  # with ``ctf``: the share of training images given a CTF
    # with ``ctf``: train on phase-flipped images (|CTF|); LearnedDistance then phase-flips the
    # images of data that carry CTF parameters before the network (projection.phase_flip)
    phase_flip: bool = False
    near_angle: float = 0.5
    bins: int = 16
    cap: float = 10.0
    horizon: float | None = None  # rad: pairs truly beyond it need only be called far (siamese)
    confidence: bool = False  # a variance head and the pairs' Gaussian likelihood (siamese)
    max_seconds: float | None = None  # stop after the epoch that crosses this time budget
    workers: int = 1  # threads preparing rendered batches ahead of the step (RenderedBatches)
    # rendered mode: each step's batch_size images come from this many volumes (MixedBatches;
    # pairs within each volume's share only); 1: one volume a step, round-robin
    mix: int = 1
    # "plateau": the learning rate halves when the validation loss stalls, and the run stops
    # after `patience` epochs without progress; "cosine": it falls along a half cosine to 1 %
    # over the run (epochs or max_seconds, whichever ends first), with no early stop
    schedule: str = "plateau"
    seed: int = 0
    symmetry: str = "C1"
    sources: list[str] = field(default_factory=list)
    pixel_size: float = 1.0
    strategy: str = "none"  # set by train: its tf.distribute strategy (cryoem.devices)
    replicas: int = 1  # set by train: replicas in sync

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def record(self) -> str:
        """``config.json``'s text: the settings and the provenance of the run that trained it."""
        return json.dumps({**asdict(self), "provenance": provenance.collect()}, indent=2)


#: Learning-rate schedules of :class:`TrainingConfig` (``schedule``).
SCHEDULES = ("plateau", "cosine")


def train(datasets: Sequence[Dataset], out_dir: str | os.PathLike,
          config: TrainingConfig | None = None, validation: Dataset | None = None,
          verbose: int | str = "auto",
          callbacks: Sequence[keras.callbacks.Callback] = (),
          overwrite: bool = False, strategy: Any = None) -> dict[str, list[float]]:
    """Train the Siamese network on one or more datasets and save it in ``out_dir``.

    ``out_dir`` receives ``model.keras`` (the best embedding by validation
    loss, preprocessing included), ``config.json``, ``history.csv``,
    TensorBoard ``logs/`` (when TensorFlow is installed) and, while training, ``backup/``: rerunning the same
    call after an interruption resumes from the last finished epoch.  A folder
    holding a finished model is refused unless ``overwrite``, which clears it.

    Returns the Keras history (``loss``, ``val_loss``, ``learning_rate``) of
    this call; ``history.csv`` holds every epoch across resumed calls.
    Extra Keras ``callbacks`` run after the built-in ones.

    ``strategy``: a ``tf.distribute`` strategy (:func:`cryoem.devices.make_strategy`,
    TensorFlow backend) to build and train the model under; each of its
    replicas takes ``config.batch_size`` images per step and pairs them among
    themselves, so a step takes ``batch_size × replicas`` images.
    """
    if not datasets:
        raise ValueError("train needs at least one dataset")
    config = config or TrainingConfig()
    sizes = {d.size for d in datasets}
    if len(sizes) != 1:
        raise ValueError(f"all training datasets must have the same image size, got {sorted(sizes)}")
    config.image_size = sizes.pop()
    groups = {d.attrs.get("symmetry", "C1") for d in datasets}
    config.symmetry = groups.pop() if len(groups) == 1 else "mixed"  # rendered mode: per volume
    config.pixel_size = datasets[0].pixel_size
    config.sources = [str(d.path) for d in datasets]
    if strategy is not None and keras.backend.backend() != "tensorflow":
        raise ValueError("a tf.distribute strategy needs the TensorFlow Keras backend "
                         "(KERAS_BACKEND=tensorflow)")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {config.schedule!r}: "
                         f"{' or '.join(SCHEDULES)}")
    config.strategy = devices.strategy_name(strategy)
    config.replicas = devices.replicas(strategy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resuming = _check_resume(out, config)
    if not resuming and (out / MODEL_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a trained model; pass overwrite=True "
                                  "(--overwrite) or choose another folder")
        _clear_run(out)
    (out / CONFIG_FILE).write_text(config.record())

    train_data = _training_batches(datasets, config)
    validation = validation if validation is not None else datasets[0]
    val_index = validation.split["validation"]
    if len(val_index) < 2:
        raise ValueError("the validation split needs at least two projections")
    val_data = FixedBatches(validation.projections[val_index], validation.orientations[val_index],
                            validation.attrs.get("symmetry", "C1"), config.batch_size,
                            shuffle=False, replicas=config.replicas)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        keras.utils.set_random_seed(config.seed)
        embedding = build_embedding(config.image_size, config.input_size, config.arch,
                                    config.feature_dim, config.width, config.front,
                                    config.confidence)
        model = InBatchModel(embedding, config.bins, config.cap, config.horizon,
                             config.confidence)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
        model.build((None, config.image_size, config.image_size))
    all_callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        training_callbacks.SaveBestEmbedding(out / MODEL_FILE, resuming),
        *training_callbacks.schedule_callbacks(config),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
    ]
    if importlib.util.find_spec("tensorflow") is not None:  # Keras writes the logs with tf.summary
        all_callbacks.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False,
                                                         profile_batch=0))
    if config.max_seconds is not None:
        all_callbacks.append(training_callbacks.TimeBudget(config.max_seconds))
    if isinstance(train_data, (RenderedBatches, MixedBatches)):
        all_callbacks.append(training_callbacks.SyncEpoch(train_data))
    history = model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                        callbacks=[*all_callbacks, *callbacks], verbose=verbose)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def _training_batches(datasets: Sequence[Dataset], config: TrainingConfig) -> keras.utils.PyDataset:
    if config.mode == "fixed":
        if config.turns != 1:
            raise ValueError("turned copies (turns) are rendered: use the rendered mode")
        if config.symmetry == "mixed":
            raise ValueError("fixed mode pools the images under one point group: train on "
                             "datasets of one symmetry, or use the rendered mode")
        images = np.concatenate([d.projections[d.split["train"]] for d in datasets])
        quaternions = np.concatenate([d.orientations[d.split["train"]] for d in datasets])
        return FixedBatches(images, quaternions, config.symmetry, config.batch_size,
                            shuffle=True, seed=config.seed, replicas=config.replicas)
    if config.mode != "rendered":
        raise ValueError(f"unknown training mode {config.mode!r}: rendered or fixed")
    missing = [str(d.path) for d in datasets if d.volume is None]
    if missing:
        raise ValueError(f"rendered mode draws images from the ground-truth volume, which "
                         f"{', '.join(missing)} lacks (imported particles): use --mode fixed")
    if config.batch_size % config.mix:
        raise ValueError(f"mix ({config.mix} volumes a step) must divide the batch size "
                         f"{config.batch_size}")
    rendered = RenderedBatches(
        [d.volume for d in datasets], [d.pixel_size for d in datasets],
        [d.attrs.get("symmetry", "C1") for d in datasets],
        [d.attrs.get("signal_variance") or _signal_variance(d) for d in datasets],
        batch_size=config.batch_size // config.mix, steps=config.steps_per_epoch * config.mix,
        snr_range=config.snr_range, max_shift=config.max_shift, ctf=config.ctf,
        near_angle=config.near_angle, seed=config.seed, ctf_fraction=config.ctf_fraction,
        replicas=config.replicas, snr_start=config.snr_start,
        curriculum_epochs=config.curriculum_epochs, turns=config.turns,
        workers=config.workers if config.mix == 1 else 1, phase_flip=config.phase_flip,
    )
    return rendered if config.mix == 1 else MixedBatches(rendered, config.mix, config.workers)


def _signal_variance(data: Dataset) -> float:
    """Variance of clean projections of the dataset's volume (for datasets without the attribute)."""
    sample = rotations.sample_uniform(64, seed=0)
    return float(np.var(projection.project(data.volume, sample)))


def _check_resume(out: Path, config: TrainingConfig) -> bool:
    """Whether ``out`` holds an interrupted run to resume; refuse one with other settings."""
    previous = out / CONFIG_FILE
    if not (out / "backup").exists() or not previous.exists():
        return False
    old = json.loads(previous.read_text())
    new = json.loads(config.to_json())
    default = json.loads(TrainingConfig().to_json())  # for keys added since the run started
    changed = sorted(key for key in new
                     if old.get(key, default[key]) != new[key] and key != "epochs")
    if changed:
        raise ValueError(f"{out} holds an interrupted run with other settings ({', '.join(changed)});"
                         " use another --out or delete it")
    return True


def _clear_run(out: Path) -> None:
    """Remove a finished run's files before training a new one in the same folder."""
    import shutil

    for name in (MODEL_FILE, "best.json", "history.csv", CONFIG_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
