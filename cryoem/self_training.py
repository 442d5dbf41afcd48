"""Self-trained distances: the paper's training recipe on the pipeline's own map estimate.

The learned distance of the paper is trained on projections of the true map —
which a lab does not have.  Here the map is the pipeline's own estimate,
made from the images alone (:func:`cryoem.ab_initio.ab_initio`), and the
training images are rendered from it as the data look: with CTFs when the
data have them, shifts as large as the estimate's, and white noise at the SNR
measured on the images' background (:func:`estimate_snr`).  The labels are
exact for those renderings, so nothing of a ground truth is read.  The trained
network then estimates the distances between the real images, and the
distances route (recovery, frame step, refinement) takes it from there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import ab_initio, datasets, training, volumes

__all__ = ["estimate_snr", "train_on_estimate"]

#: Above this SNR the images are treated as noiseless.
NOISELESS_SNR = 100.0


def estimate_snr(images: ArrayLike, radius: float = 0.45) -> float:
    """The images' SNR as the datasets define it (clean pixels' variance over the noise's).

    The noise variance is the variance of the pixels outside a circle of
    ``radius`` × the box (the background, where a centred particle puts no
    signal); the clean variance is the whole images' variance minus it.
    Returns ``inf`` above :data:`NOISELESS_SNR`.
    """
    images = np.asarray(images, dtype=np.float64)
    size = images.shape[-1]
    axis = np.arange(size) - size // 2
    outside = np.hypot(axis[:, None], axis[None, :]) > radius * size
    noise = float(np.mean(np.var(images[:, outside], axis=-1)))  # about each background's mean
    total = float(np.mean(np.var(images, axis=(-2, -1))))
    if noise <= 0:
        return float("inf")
    snr = max(total - noise, 0.0) / noise
    return float("inf") if snr > NOISELESS_SNR else max(snr, 1e-3)


def train_on_estimate(data: datasets.Dataset, indices: np.ndarray, model_dir: str | os.PathLike,
                      estimate_path: str | os.PathLike, config: training.TrainingConfig, *,
                      n_render: int = 600, seed: int = 0,
                      progress: bool = False) -> dict[str, Any]:
    """Ab initio on the images ``indices``, then train a network on renderings of that map.

    Writes ``estimate_path`` (the renderings' dataset: the estimate as its
    volume, ``n_render`` labelled projections whose validation split guides
    training) and the model in ``model_dir`` (:func:`cryoem.training.train`,
    rendered mode, at the measured SNR).  Returns what was measured: the SNR,
    the shift range, the ab initio's and the training's time.
    """
    images = data.projections[indices]
    ctf = data.ctf[indices] if data.ctf is not None else None
    began = time.perf_counter()
    first = ab_initio.ab_initio(images, ctf=ctf, pixel_size=data.pixel_size, seed=seed,
                                progress=progress)
    ab_initio_seconds = time.perf_counter() - began
    estimate = volumes.Volume(volumes.resample(first.volume, data.size), data.pixel_size,
                              "ab initio estimate")
    snr = estimate_snr(images)
    max_shift = float(np.ceil(np.quantile(np.abs(first.shifts), 0.99)))
    rendered = datasets.generate(estimate, n_render, Path(estimate_path), snr=snr,
                                 max_shift=max_shift, ctf=ctf is not None, test_size=n_render // 3,
                                 seed=seed, overwrite=True)
    config.snr_range = None if not np.isfinite(snr) else (snr, snr)
    config.max_shift = max_shift
    config.ctf = ctf is not None
    began = time.perf_counter()
    history = training.train([datasets.load(rendered)], model_dir, config,
                             verbose=2 if progress else 0, overwrite=True)
    return {"snr_estimate": snr, "max_shift_px": max_shift,
            "ab_initio_seconds": ab_initio_seconds,
            "training_seconds": time.perf_counter() - began,
            "epochs": len(history.get("loss", [])),
            "map": "ab initio from the images (cryoem.ab_initio), nothing of a truth",
            "ctf_in_renderings": "drawn like the simulations' (projection.sample_ctf)"
                                 if ctf is not None else "none"}
