"""What runs around each training epoch (Keras callbacks used by :func:`cryoem.training.train`).

* :func:`schedule_callbacks` — the rate halved at each stall and an early stop (``plateau``),
  or the rate lowered along a half cosine over the whole run (``cosine``);
* :class:`TimeBudget` — stop after the epoch that crosses a wall-clock budget;
* :class:`SaveBestEmbedding` — keep the embedding of the best validation loss, across resumes;
* :class:`SyncEpoch` — tell the rendered batches which epoch they serve (data and curriculum
  of a resumed run follow on from where it stopped).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if TYPE_CHECKING:  # annotations only: training imports this module, never the reverse
    from .training import TrainingConfig
    from .training_data import RenderedBatches


class SyncEpoch(keras.callbacks.Callback):
    """Give the rendered batches Keras's epoch number: a resumed run then draws its data, and
    follows its curriculum, from the epoch where it stopped instead of from epoch 0."""

    def __init__(self, batches: RenderedBatches) -> None:
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.batches.epoch = epoch


def schedule_callbacks(config: TrainingConfig) -> list[keras.callbacks.Callback]:
    """The callbacks that set the learning rate by ``config.schedule`` and may end the run early.

    ``plateau``: the rate halves when the validation loss stalls for ``patience // 3``
    epochs, and the run stops after ``patience`` epochs without improvement.  ``cosine``:
    :class:`CosineSchedule`, and no early stop: the schedule is the run's length (a stop
    before the rate has fallen wastes the decay that does the most good).
    """
    if config.schedule == "cosine":
        return [CosineSchedule(config.learning_rate, config.epochs, config.max_seconds)]
    return [keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=max(1, config.patience // 3)),
            keras.callbacks.EarlyStopping(patience=config.patience)]


class CosineSchedule(keras.callbacks.Callback):
    """Set the learning rate at each epoch along a half cosine from ``rate`` to 1 % of it.

    The run's progress is the larger of its share of the epochs done and its share of the
    time budget spent (so a time-bound run still ends its decay); a resumed run continues
    from its epoch (its clock restarts).
    """

    FLOOR = 0.01

    def __init__(self, rate: float, epochs: int, seconds: float | None) -> None:
        super().__init__()
        self.rate, self.epochs, self.seconds = rate, epochs, seconds
        self.start, self.current = 0.0, rate

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.start = time.perf_counter()

    def progress(self, epoch: int) -> float:
        """Share of the run done at the start of ``epoch`` (0-based), in [0, 1]."""
        done = epoch / max(1, self.epochs)
        if self.seconds:
            done = max(done, (time.perf_counter() - self.start) / self.seconds)
        return min(1.0, done)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        cosine = 0.5 * (1.0 + np.cos(np.pi * self.progress(epoch)))
        self.current = self.rate * (self.FLOOR + (1 - self.FLOOR) * cosine)
        self.model.optimizer.learning_rate = self.current

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:  # history.csv's column, as ReduceLROnPlateau writes it
            logs["learning_rate"] = self.current


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the epoch that exceeds ``seconds`` of wall time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.start = 0.0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


class SaveBestEmbedding(keras.callbacks.Callback):
    """Save the embedding (with its preprocessing) whenever the validation loss improves.

    The best loss so far is kept in ``best.json`` beside the model, so a
    resumed run does not overwrite a better model from before the interruption.
    """

    def __init__(self, path: Path, resuming: bool) -> None:
        super().__init__()
        self.path = path
        self.record = path.with_name("best.json")
        self.best = np.inf
        if resuming and self.record.exists() and path.exists():
            self.best = float(json.loads(self.record.read_text())["val_loss"])

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        value = float((logs or {}).get("val_loss", np.inf))
        if value < self.best or not self.path.exists():
            self.best = min(self.best, value)
            partial = self.path.with_name("partial-" + self.path.name)
            self.model.embedding.save(partial)
            os.replace(partial, self.path)
            self.record.write_text(json.dumps({"val_loss": value, "epoch": epoch + 1}))
