"""Training data for the Siamese network (Phase 1): rendered and fixed batches, exact labels.

* :class:`RenderedBatches` renders fresh training images on the fly from the
  dataset's volume — random orientations plus near partners ``q·δ``, fresh
  noise at a random SNR, shifts and CTF — so data never run out and the net
  cannot memorise noise; :class:`FixedBatches` serves a fixed image set (the
  paper's 2,512 training images, and validation).  Both label each batch with
  its symmetry-aware true distance matrix (:func:`target_matrix`).
* :func:`quarter_turn` and :func:`quarter_turn_orientations`: the exact in-plane
  augmentation (an image turned by 90° is the image of ``R_z(90°)·R``).

:mod:`cryoem.training` runs the loop on them.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import keras
import numpy as np
from numpy.typing import NDArray

from . import projection, rotations

__all__ = ["FixedBatches", "MixedBatches", "RenderedBatches", "UNPAIRED", "quarter_turn",
           "quarter_turn_orientations", "target_matrix"]

#: The target of two images that form no pair (different volumes in one batch of
#: :class:`MixedBatches`): negative, so that the loss gives it no weight.
UNPAIRED = -1.0


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
    share of the images; its modulus ``|CTF|`` with ``phase_flip``, the image
    :func:`cryoem.projection.phase_flip` makes of it), and white noise at an
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
    With ``workers`` > 1, Keras prepares that many batches at once in threads, ahead of the
    training step (the projector and NumPy's noise release the GIL; a block's rendering
    stays one call under a lock); a batch is the same whichever thread makes it.
    """

    def __init__(self, volumes: Sequence[NDArray], pixel_sizes: Sequence[float],
                 symmetries: Sequence[str], signal_variances: Sequence[float],
                 batch_size: int = 64, steps: int = 100,
                 snr_range: tuple[float, float] | None = None, max_shift: float = 0.0,
                 ctf: bool = False, near_angle: float = 0.5, seed: int = 0,
                 ctf_fraction: float = 1.0, replicas: int = 1,
                 snr_start: float | None = None, curriculum_epochs: int = 0,
                 turns: int = 1, render_block: int = 25, workers: int = 1,
                 phase_flip: bool = False) -> None:
        super().__init__(workers=max(1, int(workers)), use_multiprocessing=False,
                         max_queue_size=max(10, 2 * int(workers)))
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
        self.phase_flip = phase_flip
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
        for d in draws.values():
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
                    ctf=ctf, phase_flipped=self.phase_flip, pixel_size=self.pixel_sizes[which])
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


class MixedBatches(keras.utils.PyDataset):
    """Batches of ``mix`` consecutive batches of ``inner`` (so of ``mix`` volumes, which it
    takes round-robin): each step sees several proteins.  Images of different volumes form
    no pair (target :data:`UNPAIRED`); each volume's images pair as in ``inner``."""

    def __init__(self, inner: RenderedBatches, mix: int, workers: int = 1) -> None:
        super().__init__(workers=max(1, int(workers)), use_multiprocessing=False,
                         max_queue_size=max(10, 2 * int(workers)))
        if mix < 1 or len(inner) % mix:
            raise ValueError(f"mix must be at least 1 and divide the {len(inner)} inner "
                             f"batches, got {mix}")
        if inner.replicas != 1:
            raise ValueError("mixed batches pair within each volume's images: one replica only")
        self.inner = inner
        self.mix = mix
        self.batch_size = inner.batch_size * mix

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:  # training_callbacks.SyncEpoch sets it
        self.inner.epoch = value

    def __len__(self) -> int:
        return len(self.inner) // self.mix

    def __getitem__(self, index: int) -> tuple[NDArray, NDArray]:
        parts = [self.inner[index * self.mix + k] for k in range(self.mix)]
        images = np.concatenate([images for images, _ in parts])
        targets = np.full((len(images), len(images)), UNPAIRED, dtype=np.float32)
        start = 0
        for _, block in parts:
            targets[start:start + len(block), start:start + len(block)] = block
            start += len(block)
        return images, targets

    def on_epoch_end(self) -> None:
        self.inner.on_epoch_end()


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
