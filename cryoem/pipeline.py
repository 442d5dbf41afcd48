"""The whole method in one run: generate → train → distances → recover → resolve → reconstruct.

:func:`run` executes the stages in order into one folder and records, after
each stage, what it finished (``pipeline.json``): a run that fails part-way
keeps its finished stages and says which stage failed and why; running again
with the same folder resumes at the first unfinished stage, and refuses when
the parameters differ from those recorded there.  Ground truth is used only to
score: recovery, frame resolution and reconstruction never read it.

Outputs in the folder: ``data.h5`` (dataset), ``model/`` (trained network),
``distances.h5``, ``orientations_from_distances.h5``, ``orientations.h5``
(frame resolved), ``orientations_refined.h5`` (final, with estimated shifts), ``map.mrc`` (from the final orientations, in the truth's frame only for
scoring), ``map_true_orientations.mrc``, ``map_half1.mrc``/``map_half2.mrc``,
``figures/*.png``, ``relion/`` (particles for RELION), ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__

__all__ = ["PipelineConfig", "run", "STAGES", "METRIC_KEYS"]

#: Keys of ``metrics.json`` (numbers, or null when not applicable).
METRIC_KEYS = (
    "volume", "n_projections", "test_size", "size", "pixel_size_angstrom", "snr", "estimator",
    "l_de_val", "l_or", "e_or_rad", "e_or_median_rad", "e_or_o4_rad", "e_or_before_frame_rad",
    "e_or_unrefined_rad", "resolution_fsc05_angstrom",
    "resolution_fsc05_true_orientations_angstrom", "resolution_halfmap_fsc0143_angstrom",
    "timings_s", "versions", "config_hash",
)


@dataclass
class PipelineConfig:
    """The parameters of a run (their hash guards resumption)."""

    volume: str = "4ake"
    n_projections: int = 5000
    test_size: int = 1650
    size: int = 64
    snr: float = float("inf")
    max_shift: float = 0.0
    estimator: str = "learned"
    model: str | None = None
    epochs: int = 200
    train_seconds: float | None = 300.0  # None: the epochs alone bound training
    input_size: int | None = 32
    sigma2: float = 0.2
    steps: int = 2000
    refine: bool = True
    refine_iterations: int = 6
    seed: int = 0

    def digest(self) -> str:
        """A short hash of the parameters."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Run:
    """State shared by the stages: the folder, the config and the metrics so far."""

    def __init__(self, config: PipelineConfig, folder: Path, progress: bool) -> None:
        self.config = config
        self.folder = folder
        self.progress = progress
        self.record_path = folder / "pipeline.json"
        self.record: dict[str, Any] = {"config": asdict(config), "config_hash": config.digest(),
                                       "finished": [], "timings_s": {}, "metrics": {}}

    def path(self, name: str) -> Path:
        return self.folder / name

    def save(self) -> None:
        _write_json(self.record_path, self.record)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    def data(self, images: bool = True) -> Any:
        from . import datasets

        return datasets.load(self.path("data.h5"), images=images)

    def test_indices(self) -> np.ndarray:
        return self.data(images=False).split["test"]


# ----------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------
def _generate(run: _Run) -> None:
    from . import datasets, plots, volumes

    c = run.config
    volume = volumes.resolve(c.volume, c.size)
    path = datasets.generate(volume, c.n_projections, run.path("data.h5"), snr=c.snr,
                             max_shift=c.max_shift, test_size=c.test_size, seed=c.seed,
                             progress=run.progress, overwrite=True)
    plots.save(plots.projection_gallery(datasets.read_images(path, slice(0, 12))),
               run.path("figures/projections.png"))
    plots.save(plots.volume_slices(volume.data, volume.voxel_size, title=volume.name),
               run.path("figures/volume_truth.png"))
    run.metrics.update(volume=c.volume, n_projections=c.n_projections,
                       test_size=c.test_size, size=c.size,
                       pixel_size_angstrom=float(volume.voxel_size), snr=c.snr)


def _train(run: _Run) -> None:
    c = run.config
    if c.estimator != "learned" or c.model is not None:
        return
    from . import siamese

    data = run.data()
    snr_range = None if not np.isfinite(c.snr) else (c.snr, c.snr)
    config = siamese.TrainingConfig(
        input_size=c.input_size, epochs=c.epochs, max_seconds=c.train_seconds,
        snr_range=snr_range, max_shift=c.max_shift, patience=30, seed=c.seed,
        ctf=bool(data.attrs.get("ctf", False)))
    siamese.train([data], run.path("model"), config, verbose=2 if run.progress else 0,
                  overwrite=not (run.path("model") / "backup").exists())


def _estimator(run: _Run) -> Any:
    from . import distance

    c = run.config
    model = c.model or (str(run.path("model")) if c.estimator == "learned" else None)
    return distance.make_estimator(c.estimator, model_dir=model, sigma2=c.sigma2, seed=c.seed)


def _distances(run: _Run) -> None:
    from . import distance, plots

    data = run.data()
    estimator = _estimator(run).fit(data)
    exact = distance.ExactDistance()
    validation = data.split["validation"]
    if len(validation) >= 2:
        run.metrics["l_de_val"] = distance.l_de(estimator.matrix(data, validation),
                                                exact.matrix(data, validation))
    test = data.split["test"]
    matrix = estimator.matrix(data, test)
    distance.save_matrix(run.path("distances.h5"), matrix, test, estimator=estimator.name)
    plots.save(plots.dp_dq(exact.matrix(data, test), matrix, title=estimator.name),
               run.path("figures/dp_dq.png"))
    run.metrics["estimator"] = estimator.name


def _recover(run: _Run) -> None:
    from . import alignment, distance, recovery

    c = run.config
    data = run.data(images=False)
    matrix, indices, _ = distance.load_matrix(run.path("distances.h5"))
    symmetry = data.attrs.get("symmetry", "C1")
    result = recovery.recover(matrix, steps=c.steps, symmetry=symmetry, seed=c.seed,
                              progress=run.progress)
    truth = data.orientations[indices]  # only to score
    run.metrics.update(
        l_or=result.final_loss,
        e_or_o4_rad=alignment.align_o4(result.quaternions, truth, symmetry).mean,
        e_or_before_frame_rad=alignment.align_physical(result.quaternions, truth, symmetry).mean)
    recovery.save_orientations(run.path("orientations_from_distances.h5"), result.quaternions,
                               indices, result.loss_history, l_or=result.final_loss)


def _resolve(run: _Run) -> None:
    from . import alignment, commonlines, plots, recovery

    data = run.data()
    q, indices, attrs = recovery.load_orientations(run.path("orientations_from_distances.h5"))
    symmetry = data.attrs.get("symmetry", "C1")
    frame = commonlines.resolve_frame(data.projections[indices], q, seed=run.config.seed,
                                      progress=run.progress)
    resolved = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    truth = data.orientations[indices]
    physical = alignment.align_physical(resolved, truth, symmetry)
    run.metrics.update(e_or_rad=physical.mean, e_or_median_rad=physical.median,
                       frame_confidence=frame.confidence, frame_transposed=frame.transposed)
    recovery.save_orientations(run.path("orientations.h5"), resolved, indices,
                               l_or=attrs.get("l_or"), e_or_rad=physical.mean,
                               frame_confidence=frame.confidence,
                               handedness="undetermined (a map and its mirror image project "
                                          "to the same images)")
    plots.save(plots.orientation_coverage(resolved, "recovered viewing directions"),
               run.path("figures/orientations.png"))
    if not frame.distinguishable:
        raise RuntimeError(f"the frame is not distinguishable from the images (confidence "
                           f"{frame.confidence:.1f} < 5 standard errors)")


def _refine(run: _Run) -> None:
    from . import alignment, recovery, refinement

    if not run.config.refine:
        return
    data = run.data()
    q, indices, attrs = recovery.load_orientations(run.path("orientations.h5"))
    result = refinement.refine(
        data.projections[indices], q, ctf=data.ctf[indices] if data.ctf is not None else None,
        pixel_size=data.pixel_size, iterations=run.config.refine_iterations,
        seed=run.config.seed, progress=run.progress)
    symmetry = data.attrs.get("symmetry", "C1")
    truth = data.orientations[indices]  # only to score
    physical = alignment.align_physical(result.quaternions, truth, symmetry)
    # The frame step's score, as it saved it (metrics["e_or_rad"] is the refined one on a rerun).
    run.metrics.update(e_or_unrefined_rad=attrs.get("e_or_rad"), e_or_rad=physical.mean,
                       e_or_median_rad=physical.median,
                       refinement_history=result.history)
    recovery.save_orientations(run.path("orientations_refined.h5"), result.quaternions, indices,
                               shifts=result.shifts, e_or_rad=physical.mean)


def _final(run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The orientations (and estimated shifts) the pipeline outputs: refined when refined."""
    from . import recovery

    refined = run.path("orientations_refined.h5")
    path = refined if run.config.refine and refined.exists() else run.path("orientations.h5")
    q, indices, attrs = recovery.load_orientations(path)
    return q, indices, attrs.get("shifts")


def _reconstruct(run: _Run) -> None:
    from . import alignment, plots, reconstruction, resolution, volumes

    data = run.data()
    q, indices, shifts = _final(run)
    symmetry = data.attrs.get("symmetry", "C1")
    # Put the final orientations in the truth's frame (physical transform only), so the
    # map can be compared with the ground truth; the orientations themselves are unchanged.
    in_frame = alignment.align_physical(q, data.orientations[indices], symmetry).to_truth_frame(q)
    images = data.projections[indices]
    options = dict(ctf=data.ctf[indices] if data.ctf is not None else None,
                   pixel_size=data.pixel_size, symmetry=symmetry, progress=run.progress)
    maps = {
        "map.mrc": reconstruction.reconstruct(images, in_frame, shifts=shifts, **options),
        "map_true_orientations.mrc": reconstruction.reconstruct(
            images, data.orientations[indices], shifts=data.shifts[indices],
            label="true orientations and shifts (oracle)", **options),
    }
    first, second, _ = reconstruction.half_maps(images, in_frame, seed=run.config.seed,
                                                shifts=shifts, **options)
    maps.update({"map_half1.mrc": first, "map_half2.mrc": second})
    for name, result in maps.items():
        volumes.save_map(volumes.Volume(result.data, data.pixel_size, name), run.path(name))
    curves = {
        "final orientations": resolution.fsc(maps["map.mrc"].data, data.volume, data.pixel_size),
        "true orientations": resolution.fsc(maps["map_true_orientations.mrc"].data, data.volume,
                                            data.pixel_size),
    }
    halves = resolution.fsc(first.data, second.data, data.pixel_size, mask=True)
    run.metrics.update(
        resolution_fsc05_angstrom=curves["final orientations"].resolution(0.5),
        resolution_fsc05_true_orientations_angstrom=curves["true orientations"].resolution(0.5),
        resolution_halfmap_fsc0143_angstrom=halves.resolution(0.143))
    plots.save(plots.volume_slices(maps["map.mrc"].data, data.pixel_size,
                                   title="reconstruction from the recovered orientations"),
               run.path("figures/map.png"))
    plots.save(_fsc_figure(curves, halves), run.path("figures/fsc.png"))


def _fsc_figure(curves: dict[str, Any], halves: Any) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(curve.frequencies, curve.values, label=f"{name} vs truth")
    ax.plot(halves.frequencies, halves.values, "--", label="half maps (masked)")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.axhline(0.143, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _export(run: _Run) -> None:
    from . import relion

    q, indices, shifts = _final(run)
    relion.export_relion(run.data(), run.path("relion"), orientations=q, indices=indices,
                         shifts=np.zeros((len(indices), 2)) if shifts is None else shifts,
                         overwrite=True)


#: The stages, in order.
STAGES: tuple[tuple[str, Callable[[_Run], None]], ...] = (
    ("generate", _generate),
    ("train", _train),
    ("distances", _distances),
    ("recover", _recover),
    ("resolve", _resolve),
    ("refine", _refine),
    ("reconstruct", _reconstruct),
    ("export", _export),
)


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"cryoem": __version__, "python": platform.python_version()}
    for package in ("numpy", "scipy", "finufft", "tensorflow", "keras", "gemmi", "mrcfile",
                    "h5py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_metrics(run: _Run) -> Path:
    """``metrics.json`` with every key of :data:`METRIC_KEYS` (null when not applicable)."""
    metrics = {key: _finite_or_none(run.metrics.get(key)) for key in METRIC_KEYS}
    metrics["snr"] = run.config.snr if np.isfinite(run.config.snr) else "inf"
    metrics.update(timings_s=run.record["timings_s"], versions=_versions(),
                   config_hash=run.record["config_hash"])
    metrics.update({k: v for k, v in run.metrics.items() if k not in metrics})
    path = run.path("metrics.json")
    _write_json(path, metrics)
    return path


def _write_json(path: Path, value: Any) -> None:
    from ._files import atomic_path

    with atomic_path(path) as partial:
        partial.write_text(json.dumps(value, indent=2, default=_json_default))


def run(config: PipelineConfig, out_dir: str | os.PathLike, progress: bool = True,
        report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the pipeline in ``out_dir``; returns the metrics.

    Raises
    ------
    ValueError
        If ``out_dir`` holds a run with other parameters.
    RuntimeError
        If a stage fails (the finished stages stay; the message names the stage).
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = _Run(config, folder, progress)
    if state.record_path.exists():
        previous = json.loads(state.record_path.read_text())
        if previous.get("config_hash") != state.record["config_hash"]:
            changed = sorted(k for k, v in asdict(config).items()
                             if previous.get("config", {}).get(k) != v)
            raise ValueError(f"{folder} holds a run with other parameters "
                             f"({', '.join(changed)}); use another --out or delete it")
        state.record = previous
    for name, stage in STAGES:
        if name in state.record["finished"]:
            report(f"[{name}] already done")
            continue
        report(f"[{name}] …")
        start = time.perf_counter()
        try:
            stage(state)
        except Exception as error:  # noqa: BLE001 - reported with the stage's name
            state.record["failed"] = {"stage": name, "error": f"{type(error).__name__}: {error}",
                                      "traceback": traceback.format_exc()}
            state.save()
            write_metrics(state)
            raise RuntimeError(f"stage '{name}' failed: {error} (finished stages are kept in "
                               f"{folder}; rerun the same command to resume)") from error
        state.record["timings_s"][name] = round(time.perf_counter() - start, 2)
        state.record["finished"].append(name)
        state.record.pop("failed", None)
        state.save()
        report(f"[{name}] done in {state.record['timings_s'][name]:.1f} s")
    write_metrics(state)
    return json.loads(state.path("metrics.json").read_text())


def summary(metrics: dict[str, Any]) -> str:
    """A closing table of the main numbers."""
    def fmt(value: Any, unit: str = "") -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3f}{unit}"
        return f"{value}{unit}"

    rows = [
        ("protein", fmt(metrics.get("volume"))),
        ("projections (test)", f"{metrics.get('n_projections')} ({metrics.get('test_size')})"),
        ("image size, pixel", f"{metrics.get('size')} px, {fmt(metrics.get('pixel_size_angstrom'), ' Å')}"),
        ("SNR", fmt(metrics.get("snr"))),
        ("estimator", fmt(metrics.get("estimator"))),
        ("L_DE validation", fmt(metrics.get("l_de_val"), " rad²")),
        ("L_OR", fmt(metrics.get("l_or"), " rad²")),
        ("E_OR, paper's O(4) metric", fmt(metrics.get("e_or_o4_rad"), " rad")),
        ("E_OR physical, from distances", fmt(metrics.get("e_or_before_frame_rad"), " rad")),
        ("E_OR physical, before refinement", fmt(metrics.get("e_or_unrefined_rad"), " rad")),
        ("E_OR physical, final", fmt(metrics.get("e_or_rad"), " rad")),
        ("FSC 0.5, final orientations", fmt(metrics.get("resolution_fsc05_angstrom"), " Å")),
        ("FSC 0.5, true orientations", fmt(metrics.get("resolution_fsc05_true_orientations_angstrom"), " Å")),
        ("half maps FSC 0.143", fmt(metrics.get("resolution_halfmap_fsc0143_angstrom"), " Å")),
        ("total time", fmt(sum((metrics.get("timings_s") or {}).values()), " s")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
