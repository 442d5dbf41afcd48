"""The whole method in one run: generate → first guess → refine → reconstruct → export.

Two routes make the first guess (``route``): ``"distances"`` (train, estimate
distances, recover, resolve the frame: the paper's method) and
``"ab-initio"`` (:mod:`cryoem.ab_initio`: from the images alone, no distances,
no training); a third, ``"initial-map"``, takes a map the user gives instead
(``initial_map``: another program's ab initio, a homologue's map).  All then go
through the same gold-standard refinement: a map of the first guess (or the
given map), low-passed to ``initial_resolution`` Å, is the common start; from
there each half of the images is refined against its own map only, so the half
maps are independent.

:func:`run` executes the stages in order into one folder and records, after
each stage, what it finished (``pipeline.json``): a run that fails part-way
keeps its finished stages and says which stage failed and why; running again
with the same folder resumes at the first unfinished stage, and refuses when
the parameters differ from those recorded there.

Where the ground truth goes.  Recovery, the frame step, refinement and
reconstruction never read it (``tests/test_truth_blind.py`` checks this).
Three things can: the default *training* (``training="rendered"``) draws its
images from the true map with the test data's SNR and shift range and labels
them with their true orientations — the paper's supervised setting, an upper
bound, not what a lab without the answer can do; ``training="fixed"`` (the
paper's protocol) trains on the training split's true orientations; the
``exact``, ``perturbed`` and ``euclidean`` estimators read the true
orientations (oracles and baselines); and a simulation's CTF parameters are
exact.  Every such use is recorded in ``metrics.json`` under ``truth_used``
(stage → fields; ``{}`` when nothing read the truth), next to
``provenance`` (commit, command, machine).  All other uses of the truth are
scores, computed only when the data hold a ground truth (or reference poses
with ``reference_poses``).

With ``particles`` (a RELION STAR file or a ``cryoem`` HDF5 dataset) the run
starts from those images instead of simulating them; the distances route's
training then needs a ground truth, so use a given model (``--model
pretrained``) or the ab-initio route.

Outputs in the folder: ``data.h5`` (dataset), ``model/`` (trained network),
``distances.h5``, ``orientations_from_distances.h5``, ``orientations.h5``
(the first guess: frame resolved, or ab initio), ``initial_map.mrc`` (the given map on the
images' grid, the initial-map route), ``orientations_refined.h5`` (final, with estimated shifts),
``map.mrc`` and ``map_half1.mrc``/``map_half2.mrc`` (in the estimate's own
frame, as the RELION export), and for scoring only ``map_aligned_to_truth.mrc``
(the same reconstruction with the orientations put in the truth's frame and
hand) and ``map_true_orientations.mrc`` (an oracle); ``figures/*.png``,
``relion/`` (particles for RELION), ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import provenance
from .pipeline_first_guess import (INITIAL_MAP, TRAINING_TRUTH, _ab_initio,  # noqa: F401
                                   _distances, _initial_map, _physical_error, _recover,
                                   _resolve, _train)
from .pipeline_config import ROUTES, PipelineConfig, changed_parameters, describe_changes
from .pipeline_report import METRIC_KEYS, summary, write_json, write_metrics  # noqa: F401

__all__ = ["PipelineConfig", "run", "changed_parameters", "STAGES", "ROUTES", "METRIC_KEYS"]

class _Run:
    """State shared by the stages: the folder, the config and the metrics so far."""

    def __init__(self, config: PipelineConfig, folder: Path, progress: bool,
                 client: Any = None) -> None:
        self.config = config
        self.folder = folder
        self.progress = progress
        self.client = client  # a dask.distributed.Client, or None: in-process
        self.record_path = folder / "pipeline.json"
        self.record: dict[str, Any] = {"config": asdict(config), "config_hash": config.digest(),
                                       "finished": [], "timings_s": {}, "metrics": {},
                                       "truth_used": {}}

    def path(self, name: str) -> Path:
        return self.folder / name

    def save(self) -> None:
        write_json(self.record_path, self.record)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]

    def data(self, images: bool = True) -> Any:
        from . import datasets

        return datasets.load(self.path("data.h5"), images=images)

    def images(self, indices: np.ndarray) -> Any:
        """The dataset's images at ``indices``, read from ``data.h5`` a chunk at a time."""
        from .stacks import ImageStack

        return ImageStack(self.path("data.h5"), indices)

    def working_indices(self, data: Any) -> np.ndarray:
        """The particles the run estimates: all of the user's particles, or a simulation's test split."""
        if self.config.particles is not None:
            return np.arange(len(data))
        return data.split["test"]

    def use_truth(self, stage: str, fields: Any) -> None:
        """Record that ``stage`` read these ground-truth fields for more than scoring."""
        fields = list(fields)
        if fields:
            self.record.setdefault("truth_used", {})[stage] = fields

    def reference(self, data: Any, indices: np.ndarray) -> Any:
        """The poses to score against (:func:`cryoem.datasets.poses_for_scoring`), or None."""
        from . import datasets

        reference = datasets.poses_for_scoring(data, indices, self.config.reference_poses)
        self.metrics["scored_against"] = None if reference is None else reference.label
        return reference

    def ctf(self, data: Any, indices: np.ndarray, stage: str) -> Any:
        """The images' CTF parameters (recorded as a truth use when a simulation's exact ones)."""
        if data.ctf is None:
            return None
        if data.simulated_ctf:
            self.use_truth(stage, ["ctf"])
        return data.ctf[indices]


# ----------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------
def _generate(run: _Run) -> None:
    from . import datasets, plots, volumes

    c = run.config
    if c.particles is not None:
        _import_particles(run)
        return
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


def _import_particles(run: _Run) -> None:
    """Start from the user's particles: a RELION STAR file (imported) or a dataset (copied)."""
    import shutil

    from . import datasets, particles, rotations

    source = Path(run.config.particles)  # type: ignore[arg-type]
    if source.suffix == ".star":
        particles.import_relion(source, run.path("data.h5"), size=run.config.size,
                                datadir=run.config.datadir, overwrite=True,
                                symmetry=run.config.symmetry or "C1")
    else:
        datasets.load(source, images=False)  # a clear error if it is not a dataset
        shutil.copyfile(source, run.path("data.h5"))
        if run.config.symmetry is not None:
            import h5py

            rotations.point_group(run.config.symmetry)  # a clear error on an unknown group
            with h5py.File(run.path("data.h5"), "a") as handle:
                handle.attrs["symmetry"] = run.config.symmetry
    data = run.data(images=False)
    run.metrics.update(volume=str(source), n_projections=len(data),
                       test_size=len(data), size=data.size,
                       pixel_size_angstrom=data.pixel_size, snr=data.attrs.get("snr"))


def _refine(run: _Run) -> None:
    from . import gold_standard, plots, recovery, refinement, volumes

    if not run.config.refine:
        return
    data = run.data(images=False)
    if run.config.route == "initial-map":  # the given map is the start: no first guess
        indices, q, attrs = run.working_indices(data), None, {}
    else:
        q, indices, attrs = recovery.load_orientations(run.path("orientations.h5"))
    images, ctf = run.images(indices), run.ctf(data, indices, "refine")
    if run.config.route == "initial-map":
        start = volumes.load_map(run.path(INITIAL_MAP)).data
    else:
        start = (None if run.config.initial_resolution is None else gold_standard.start_map(
            images, q, attrs.get("shifts"), ctf, data.pixel_size, run.client))
    result = refinement.refine(
        images, q, ctf=ctf,
        pixel_size=data.pixel_size, iterations=run.config.refine_iterations,
        initial_map=start, initial_resolution=run.config.initial_resolution or 30.0,
        symmetry=data.attrs.get("symmetry", "C1"), mask_references=run.config.mask_references,
        seed=run.config.seed, client=run.client, progress=run.progress)
    run.metrics["refinement_history"] = result.history
    plots.save(plots.refinement_history(result.history), run.path("figures/refinement.png"))
    physical = _physical_error(run, data, indices, result.quaternions)
    score = None
    if physical is not None:  # only to score
        score = physical.mean
        # The frame step's score, as it saved it (metrics["e_or_rad"] is the refined one on a
        # rerun).
        run.metrics.update(e_or_unrefined_rad=attrs.get("e_or_rad"), e_or_rad=physical.mean,
                           e_or_median_rad=physical.median)
    run.metrics["match_score_quantiles"] = dict(zip(
        ("5%", "50%", "95%"), np.quantile(result.scores, [0.05, 0.5, 0.95]).tolist()))
    recovery.save_orientations(run.path("orientations_refined.h5"), result.quaternions, indices,
                               shifts=result.shifts, scores=result.scores, e_or_rad=score)


def _final(run: _Run) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The orientations (and estimated shifts) the pipeline outputs: refined when refined."""
    from . import recovery

    refined = run.path("orientations_refined.h5")
    path = refined if run.config.refine and refined.exists() else run.path("orientations.h5")
    q, indices, attrs = recovery.load_orientations(path)
    return q, indices, attrs.get("shifts")


def _reconstruct(run: _Run) -> None:
    from . import gold_standard, plots, reconstruction, recovery, resolution, volumes

    data = run.data(images=False)
    q, indices, shifts = _final(run)
    symmetry = data.attrs.get("symmetry", "C1")
    images = run.images(indices)
    options = dict(ctf=run.ctf(data, indices, "reconstruct"), pixel_size=data.pixel_size,
                   symmetry=symmetry, client=run.client, progress=run.progress)
    q = _into_symmetry_frame(run, images, q, shifts, options)
    # What the maps are made from, and what the export writes.
    recovery.save_orientations(run.path(_OUTPUT_POSES), q, indices, shifts=shifts)
    # The outputs a user gets: in the estimate's own frame, as the RELION export.
    maps = {"map.mrc": reconstruction.reconstruct(images, q, shifts=shifts, **options)}
    first, second, _ = reconstruction.half_maps(images, q, seed=run.config.seed, shifts=shifts,
                                                **options)
    maps.update({"map_half1.mrc": first, "map_half2.mrc": second})
    maps.update(_scoring_maps(run, data, indices, q, shifts, options))
    for name, result in maps.items():
        volumes.save_map(volumes.Volume(result.data, data.pixel_size, name), run.path(name))
    halves = resolution.fsc(first.data, second.data, data.pixel_size, mask=True)
    independent = (run.config.refine and run.config.initial_resolution is not None
                   and run.path("orientations_refined.h5").exists())
    start = gold_standard.start_resolution(run.config.initial_resolution or 30.0, data.size,
                                           data.pixel_size)
    run.metrics.update(resolution_halfmap_fsc0143_angstrom=halves.resolution(0.143),
                       halfmap_independence=gold_standard.independence(independent, start))
    curves = {}
    if "map_aligned_to_truth.mrc" in maps and data.volume is not None:
        names = {"final orientations": ("map_aligned_to_truth.mrc", "resolution_fsc05_angstrom"),
                 "true orientations": ("map_true_orientations.mrc",
                                       "resolution_fsc05_true_orientations_angstrom")}
        for label, (name, key) in names.items():
            if name in maps:
                curves[label] = resolution.fsc(maps[name].data, data.volume, data.pixel_size)
                run.metrics[key] = curves[label].resolution(0.5)
    plots.save(plots.volume_slices(maps["map.mrc"].data, data.pixel_size,
                                   title="reconstruction from the recovered orientations "
                                         "(own frame)"),
               run.path("figures/map.png"))
    plots.save(_fsc_figure(curves, halves), run.path("figures/fsc.png"))


def _scoring_maps(run: _Run, data: Any, indices: np.ndarray, q: np.ndarray,
                  shifts: np.ndarray | None, options: dict[str, Any]) -> dict[str, Any]:
    """For scoring only: the map with the orientations in the truth's frame, and the oracle's."""
    from . import alignment, reconstruction

    reference = run.reference(data, indices)
    if reference is None:
        return {}
    symmetry = data.attrs.get("symmetry", "C1")
    in_frame = alignment.align_physical(q, reference.orientations, symmetry).to_truth_frame(q)
    maps = {"map_aligned_to_truth.mrc": reconstruction.reconstruct(
        run.images(indices), in_frame, shifts=shifts, **options)}
    if reference.shifts is not None:
        maps["map_true_orientations.mrc"] = reconstruction.reconstruct(
            run.images(indices), reference.orientations, shifts=reference.shifts,
            label="true orientations and shifts (oracle)", **options)
    return maps


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


def _into_symmetry_frame(run: _Run, images: Any, q: np.ndarray, shifts: np.ndarray | None,
                         options: dict[str, Any]) -> np.ndarray:
    """The orientations turned so that the map's symmetry axes lie on the point group's
    (:mod:`cryoem.symmetry_frame`); unchanged for C1.  Imposing a group about axes the
    particle does not have would average the map with turned copies of itself: estimated
    orientations are in a frame of their own."""
    from . import reconstruction, rotations, symmetry_frame

    order = len(rotations.point_group(options["symmetry"]))
    if order == 1:
        return q
    asymmetric = reconstruction.reconstruct(images, q, shifts=shifts,
                                            **{**options, "symmetry": "C1"})
    frame = symmetry_frame.find_symmetry_frame(asymmetric.data, options["symmetry"],
                                               seed=run.config.seed)
    run.metrics["symmetry_frame"] = {
        "symmetry": options["symmetry"], "group_order": order,
        "turn_rad": frame.angle, "symmetry_score": frame.score,
        "symmetry_score_unturned": frame.score_before}
    return symmetry_frame.turn_orientations(q, frame)


_OUTPUT_POSES = "orientations_final.h5"


def _export(run: _Run) -> None:
    """``relion/`` (a stack and STAR of the working images); with a STAR input, also
    ``particles.star``: the input's particles and columns, in its order, with the poses."""
    from . import particles, recovery, relion

    if run.path(_OUTPUT_POSES).exists():  # the poses the map was made from
        q, indices, attrs = recovery.load_orientations(run.path(_OUTPUT_POSES))
        shifts = attrs.get("shifts")
    else:  # a run whose reconstruct stage predates that file
        q, indices, shifts = _final(run)
    shifts = np.zeros((len(indices), 2)) if shifts is None else shifts
    data = run.data()
    relion.export_relion(data, run.path("relion"), orientations=q, indices=indices,
                         shifts=shifts, overwrite=True)
    source = run.config.particles
    if source is not None and Path(source).suffix == ".star":
        order = np.argsort(indices)  # all particles, by their row in the input
        particles.write_star(source, run.path("particles.star"), q[order], shifts[order],
                             data.pixel_size)


#: The stages, in order.
STAGES: tuple[tuple[str, Callable[[_Run], None]], ...] = (
    ("generate", _generate),
    ("train", _train),
    ("distances", _distances),
    ("recover", _recover),
    ("resolve", _resolve),
    ("ab_initio", _ab_initio),
    ("initial_map", _initial_map),
    ("refine", _refine),
    ("reconstruct", _reconstruct),
    ("export", _export),
)


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------
def run(config: PipelineConfig, out_dir: str | os.PathLike, progress: bool = True,
        report: Callable[[str], None] = print, client: Any = None) -> dict[str, Any]:
    """Run (or resume) the pipeline in ``out_dir``; returns the metrics.

    With a ``dask.distributed.Client`` (:func:`cryoem.distributed.connect`), refinement
    and reconstruction run on its workers, with the same results.

    Raises
    ------
    ValueError
        If ``out_dir`` holds a run with other parameters.
    RuntimeError
        If a stage fails (the finished stages stay; the message names the stage).
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = _Run(config, folder, progress, client)
    if state.record_path.exists():
        previous = json.loads(state.record_path.read_text())
        changed = describe_changes(config, previous.get("config", {}))
        if changed:
            raise ValueError(f"{folder} holds a run with other parameters ({changed}); "
                             "ask for its values, use another --out, or delete it")
        # The same run: a record from before a field was added takes today's config and hash.
        previous.update(config=state.record["config"], config_hash=state.record["config_hash"])
        state.record = previous
        state.save()
    state.record["provenance"] = provenance.collect()
    state.metrics["route"] = config.route
    commit = state.record["provenance"]["git_commit"]
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
        state.record.setdefault("stage_commits", {})[name] = commit
        state.record.pop("failed", None)
        state.save()
        report(f"[{name}] done in {state.record['timings_s'][name]:.1f} s")
    write_metrics(state)
    return json.loads(state.path("metrics.json").read_text())
