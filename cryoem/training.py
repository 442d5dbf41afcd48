"""Training the Siamese network of :mod:`cryoem.siamese` (Phase 1): data, settings, loop.

* :class:`RenderedBatches` renders fresh training images on the fly from the
  dataset's volume — random orientations plus near partners ``q·δ``, fresh
  noise at a random SNR, shifts and CTF — so data never run out and the net
  cannot memorise noise; :class:`FixedBatches` serves a fixed image set (the
  paper's 2,512 training images, and validation).  Both label each batch with
  its symmetry-aware true distance matrix (:func:`target_matrix`).
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
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from . import devices, projection, provenance, rotations  # noqa: E402
from . import training_callbacks  # noqa: E402
from ._models import CONFIG_FILE, MODEL_FILE  # noqa: E402
from .datasets import Dataset  # noqa: E402
from .siamese import InBatchModel, build_embedding  # noqa: E402

__all__ = [
    "TrainingConfig",
    "FixedBatches",
    "RenderedBatches",
    "target_matrix",
    "train",
]


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
class FixedBatches(keras.utils.PyDataset):
    """Batches ``(images, target distance matrix)`` from a fixed set of images.

    With ``replicas`` (a ``tf.distribute`` strategy's), each batch holds
    ``replicas × batch_size`` images and the targets of each replica's slice
    (:func:`target_matrix`); ``batch_size`` attribute: the global batch.
    """

    def __init__(self, images: NDArray, orientations: NDArray, symmetry: str = "C1",
                 batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 replicas: int = 1) -> None:
        super().__init__()
        if len(images) != len(orientations):
            raise ValueError(f"{len(images)} images but {len(orientations)} orientations")
        if len(images) < 2 * replicas:
            raise ValueError(f"need at least two images per replica to form pairs, got "
                             f"{len(images)} for {replicas}")
        self.images = np.asarray(images, dtype=np.float32)
        self.orientations = np.asarray(orientations)
        self.group = rotations.point_group(symmetry)
        self.replicas = replicas
        self.batch_size = min(batch_size, len(images) // replicas) * replicas
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.order = np.arange(len(images))
        self.on_epoch_end()

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def __getitem__(self, index: int) -> tuple[NDArray, NDArray]:
        chosen = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.images[chosen], target_matrix(self.orientations[chosen], self.group,
                                                  self.replicas)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = np.random.default_rng([self.seed, self.epoch]).permutation(
                len(self.images))
        self.epoch += 1


def target_matrix(quaternions: NDArray, group: NDArray,
                  replicas: int = 1) -> NDArray[np.float32]:
    """Symmetry-aware true distances ``min_g d(q_i, q_j·g)`` as a ``(B, B)`` matrix.

    With ``replicas`` ``R``, the ``R`` consecutive slices of ``B/R`` images are
    a ``tf.distribute`` strategy's replicas, which pair images within their
    slice only: their matrices stacked, ``(B, B/R)``, split by the strategy
    along the first axis as the images are.
    """
    slices = np.split(np.asarray(quaternions), replicas)
    return np.concatenate([rotations.symmetric_distance_matrix(q, group)
                           for q in slices]).astype(np.float32)


class RenderedBatches(keras.utils.PyDataset):
    """Fresh training images rendered on the fly from volumes.

    Each batch comes from one volume (round-robin over several proteins): half
    the orientations are uniform on SO(3), the other half are near partners
    ``q·δ`` with ``δ`` a rotation by an angle uniform in ``[0, near_angle]``,
    so small distances are common.  Each image gets a shift within
    ``±max_shift`` px (triangular), a CTF when ``ctf`` (on a random ``ctf_fraction``
    share of the images), and white noise at an
    SNR drawn log-uniformly in ``snr_range`` (relative to the clean images'
    signal variance, as in the datasets).  With ``snr_start`` (a curriculum),
    the SNR starts there and falls geometrically over ``curriculum_epochs``
    epochs to ``snr_range`` (:meth:`snr_bounds`).  With ``turns`` (2 or 4), each
    rendered image also serves turned in-plane by the multiples of ``360°/turns``
    (:func:`quarter_turn`, exact labels ``R_z(α)·R``), so a batch renders ``turns``
    times fewer orientations; the noise is drawn per image, after the turn.
    Everything derives from ``seed`` and the batch number: the same run draws
    the same data.  The clean images of ``render_block`` batches are rendered in one call
    per volume (a NUFFT call costs its volume's 3-D transform however few slices it
    takes: at 64 px an epoch's rendering, 100 batches of 16 slices, takes 1.5 s rather than
    6.6 s; the training steps, not the rendering, set an epoch's pace); the images are
    those of one call per batch, to rounding.  With
    ``replicas``, a batch is ``replicas`` such batches of ``batch_size`` one
    after the other (each replica's slice, with its own near partners) and
    their targets (:func:`target_matrix`); ``batch_size`` attribute: the global batch.
    """

    def __init__(self, volumes: Sequence[NDArray], pixel_sizes: Sequence[float],
                 symmetries: Sequence[str], signal_variances: Sequence[float],
                 batch_size: int = 64, steps: int = 100,
                 snr_range: tuple[float, float] | None = None, max_shift: float = 0.0,
                 ctf: bool = False, near_angle: float = 0.5, seed: int = 0,
                 ctf_fraction: float = 1.0, replicas: int = 1,
                 snr_start: float | None = None, curriculum_epochs: int = 0,
                 turns: int = 1, render_block: int = 25) -> None:
        super().__init__()
        if turns not in (1, 2, 4) or batch_size % turns:
            raise ValueError(f"turns must be 1, 2 or 4 and divide the batch size {batch_size}, "
                             f"got {turns}")
        if snr_start is not None and (snr_range is None or not snr_start > 0):
            raise ValueError(f"a curriculum (snr_start {snr_start}) needs snr_start > 0 and "
                             "an snr_range to end at")
        if not 0 <= ctf_fraction <= 1:
            raise ValueError(f"ctf_fraction must be in [0, 1], got {ctf_fraction}")
        if snr_range is not None and not (0 < snr_range[0] <= snr_range[1]):
            raise ValueError(f"snr_range must be 0 < low <= high, got {snr_range}")
        self.volumes = [np.asarray(v, dtype=np.float32) for v in volumes]
        self.pixel_sizes = list(pixel_sizes)
        self.groups = [rotations.point_group(s) for s in symmetries]
        self.signal_variances = list(signal_variances)
        self.replicas = replicas
        self.batch_size = batch_size * replicas
        self.steps = steps
        self.snr_range = snr_range
        self.max_shift = max_shift
        self.ctf = ctf
        self.ctf_fraction = ctf_fraction
        self.near_angle = near_angle
        self.seed = seed
        self.snr_start = snr_start
        self.curriculum_epochs = curriculum_epochs
        self.turns = turns
        self.render_block = max(1, int(render_block))
        self.epoch = 0
        self._rendered: dict[int, dict[str, Any]] = {}  # batch → its draws and clean images
        self._rendered_epoch = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.steps

    def snr_bounds(self) -> tuple[float, float] | None:
        """This epoch's SNR range: ``snr_range``, or above it while the curriculum lasts.

        During the first ``curriculum_epochs`` epochs both bounds are at least
        ``snr_start^(1−t) · low^t`` with ``t = epoch / curriculum_epochs``.
        """
        if self.snr_range is None or self.snr_start is None \
                or self.epoch >= self.curriculum_epochs:
            return self.snr_range
        t = self.epoch / self.curriculum_epochs
        low, high = self.snr_range
        floor = float(np.exp((1 - t) * np.log(self.snr_start) + t * np.log(low)))
        return max(low, floor), max(high, floor)

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def _draw(self, index: int) -> dict[str, Any]:
        """Batch ``index``'s volume, orientations, shifts and CTFs (its generator, to draw
        its noise from next)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        which = (self.epoch * self.steps + index) % len(self.volumes)
        size = self.batch_size // self.replicas // self.turns  # orientations rendered per replica
        n_far = size - size // 2
        slices = []
        for _ in range(self.replicas):
            far = rotations.sample_uniform(n_far, rng)
            axes = rng.standard_normal((size - n_far, 3))
            angles = rng.uniform(0, self.near_angle, len(axes))
            slices += [far, rotations.multiply(far[: len(axes)],
                                               rotations.axis_angle_to_quaternion(axes, angles))]
        q = rotations.canonical(np.concatenate(slices))
        shifts = projection.sample_shifts(len(q), self.max_shift, seed=rng)
        with_ctf = (rng.random(len(q)) < self.ctf_fraction if self.ctf
                    else np.zeros(len(q), dtype=bool))
        ctf = projection.sample_ctf(int(with_ctf.sum()), seed=rng) if with_ctf.any() else None
        return {"rng": rng, "which": which, "size": size, "q": q, "shifts": shifts,
                "with_ctf": with_ctf, "ctf": ctf}

    def _render_block(self, indices: range) -> None:
        """The clean images of these batches: one projection call per volume and kind
        (with and without CTF) for all of them."""
        draws = {index: self._draw(index) for index in indices}
        for index, d in draws.items():
            d["images"] = np.empty((len(d["q"]), *self.volumes[d["which"]].shape[1:]),
                                   dtype=np.float32)
        for which in {d["which"] for d in draws.values()}:
            for kind in (False, True):
                parts = [(d, np.flatnonzero(d["with_ctf"] == kind)) for d in draws.values()
                         if d["which"] == which]
                parts = [(d, rows) for d, rows in parts if len(rows)]
                if not parts:
                    continue
                ctf = (projection.CTFParameters.from_array(np.concatenate(
                    [d["ctf"].as_array() for d, _ in parts])) if kind else None)
                rendered = projection.project(
                    self.volumes[which], np.concatenate([d["q"][rows] for d, rows in parts]),
                    shifts=(np.concatenate([d["shifts"][rows] for d, rows in parts])
                            if self.max_shift > 0 else None),
                    ctf=ctf, pixel_size=self.pixel_sizes[which])
                start = 0
                for d, rows in parts:
                    d["images"][rows] = rendered[start:start + len(rows)]
                    start += len(rows)
        self._rendered.update(draws)

    def _clean(self, index: int) -> dict[str, Any]:
        """Batch ``index``'s draws and clean images, its block rendered on first use."""
        with self._lock:
            if self._rendered_epoch != self.epoch:
                self._rendered, self._rendered_epoch = {}, self.epoch
            if index not in self._rendered:
                first = index - index % self.render_block
                self._render_block(range(first, min(first + self.render_block, self.steps)))
            return self._rendered.pop(index)

    def __getitem__(self, index: int) -> tuple[NDArray, NDArray]:
        d = self._clean(index)
        rng, which, size, q, images = d["rng"], d["which"], d["size"], d["q"], d["images"]
        if self.turns > 1:
            images, q = self._turned(images, q, size)
        bounds = self.snr_bounds()
        if bounds is not None:
            log_snr = rng.uniform(*np.log(bounds), len(q))
            sigma = np.sqrt(self.signal_variances[which] / np.exp(log_snr)).astype(np.float32)
            images += sigma[:, None, None] * rng.standard_normal(images.shape, dtype=np.float32)
        return images, target_matrix(q, self.groups[which], self.replicas)

    def _turned(self, images: NDArray, q: NDArray, size: int) -> tuple[NDArray, NDArray]:
        """Each replica's ``size`` images and their turned copies, kept within its slice."""
        quarters = [k * 4 // self.turns for k in range(self.turns)]
        parts = [(quarter_turn(images[r:r + size], k), quarter_turn_orientations(q[r:r + size], k))
                 for r in range(0, len(q), size) for k in quarters]
        return (np.concatenate([p[0] for p in parts]),
                rotations.canonical(np.concatenate([p[1] for p in parts])))


def quarter_turn(images: NDArray, quarters: int) -> NDArray:
    """Images turned in-plane by ``quarters × 90°`` about their origin (pixel ``L // 2``).

    The image of orientation ``R`` turned is, pixel for pixel, the image of
    :func:`quarter_turn_orientations` ``(R, quarters)``; the row and column
    that the turn brings across the box's edge are taken from the opposite edge
    (background, for a particle inside its box).  By index, not interpolation:
    exact.
    """
    size = images.shape[-1]
    centre = size // 2
    y, x = np.indices((size, size)) - centre
    for _ in range(quarters % 4):
        y, x = -x, y
    return images[..., (centre + y) % size, (centre + x) % size]


def quarter_turn_orientations(quaternions: NDArray, quarters: int) -> NDArray:
    """``R_z(quarters × 90°) · R``: the orientations of the images :func:`quarter_turn` makes."""
    turn = rotations.axis_angle_to_quaternion([0.0, 0.0, 1.0], quarters * np.pi / 2)
    return rotations.multiply(turn, quaternions)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """Everything that defines a training run (saved as ``config.json`` with the model)."""

    arch: str = "light"
    width: float = 1.0
    feature_dim: int = 128
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
    near_angle: float = 0.5
    bins: int = 16
    cap: float = 10.0
    max_seconds: float | None = None  # stop after the epoch that crosses this time budget
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
                                    config.feature_dim, config.width)
        model = InBatchModel(embedding, config.bins, config.cap)
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
    if isinstance(train_data, RenderedBatches):
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
    return RenderedBatches(
        [d.volume for d in datasets], [d.pixel_size for d in datasets],
        [d.attrs.get("symmetry", "C1") for d in datasets],
        [d.attrs.get("signal_variance") or _signal_variance(d) for d in datasets],
        batch_size=config.batch_size, steps=config.steps_per_epoch, snr_range=config.snr_range,
        max_shift=config.max_shift, ctf=config.ctf, near_angle=config.near_angle,
        seed=config.seed, ctf_fraction=config.ctf_fraction, replicas=config.replicas,
        snr_start=config.snr_start, curriculum_epochs=config.curriculum_epochs,
        turns=config.turns,
    )


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
