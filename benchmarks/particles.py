"""From particles alone: `cryoem pipeline --particles` on a RELION STAR without angles.

For each protein and SNR: simulate particles (CTF with defocus 1–2.5 µm, shifts ≤ 2 px),
write them as a RELION STAR with no angle and no origin columns, run the pipeline on
that STAR with each first-guess route, then — only then — score its ``particles.star``
against the simulation's truth (``cryoem score``, under the protein's point group: an image
matched to a symmetry mate of its orientation is right) and its map against the true map
(FSC 0.5 after the alignment the orientations imply), beside the map the true
orientations give.  The routes:

- ``ab-initio-masked``: from the images alone (:mod:`cryoem.ab_initio`), no distances, the
  refinement's references masked around the particle (each half's mask from its own map):
  the pipeline's default;
- ``ab-initio``: the same without the mask (``--no-mask-references``; the ablation, and what
  every ``ab-initio`` row before the mask was);
- ``ab-initio-declared``: ``ab-initio`` with the protein's point group declared
  (``--symmetry``, as a user who knows it would: imposed on refinement's references and on
  the map); the map of the true orientations then imposes it too, like for like;
- ``pretrained``: the distances route with the shipped general model (no training on
  the protein);
- ``self-trained``: the distances route with a network trained on renderings of the
  pipeline's own ab initio map at the SNR measured on the images
  (:mod:`cryoem.self_training`; the training time is in the row's time);
- ``aspire``: ASPIRE's ab initio (the peer, in its own environment, ``--aspire-python``) on
  the same particles as the pipeline imports them, phase-flipped with their CTFs, then as
  ASPIRE's simulated-data pipeline runs it (:data:`ASPIRE`: downsampled, whitened, class
  averages, the best classes kept, ``CLSyncVoting``); the map of those averages at ASPIRE's
  orientations is the pipeline's start (``--initial-map``: the initial-map route), refined
  like every other.  Its first guess is scored on the images the kept classes are centred
  on; its time includes ASPIRE's.

Every route is then refined the same way (gold standard from a 30 Å start).  The run's
``truth_used`` must be empty.  Prints a table, writes JSON.

    python benchmarks/particles.py [--volumes 4ake 1hvr 2zmm] [--snr inf 1 0.0625] [--n 1000] \\
        [--dask-scheduler local:N|ADDRESS]

With ``--dask-scheduler`` each protein × SNR (its simulation and all its routes) is one
task on a Dask cluster; the rows are those of the sequential run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import harness  # noqa: E402
from _common import (carry_over_rows, machine_info, positive_snr, snr_label, snr_tag,  # noqa: E402
                     sweep_client, write_report)
from cryoem.distributed import map_chunks
from harness import DEFAULT_ASPIRE_PYTHON  # noqa: E402

ROUTES = {"ab-initio": dict(route="ab-initio", mask_references=False),
          "ab-initio-declared": dict(route="ab-initio", declare_symmetry=True,
                                     mask_references=False),
          "ab-initio-masked": dict(route="ab-initio", mask_references=True),
          "pretrained": dict(route="distances", model="pretrained"),
          "self-trained": dict(route="distances", training="self"),
          "aspire": dict(aspire=True)}
#: ASPIRE's ab initio as its simulated-data example runs it (ASPIRE-Python's
#: gallery/experiments/simulated_abinitio_pipeline.py: 10,000 images downsampled to 32 px,
#: phase-flipped, whitened, 1,000 classes of 10 neighbours, CLSyncVoting with n_theta 180),
#: with the same share of the images kept as classes (a tenth).
ASPIRE = {"size": 32, "n_nbor": 10, "class_share": 0.1, "n_theta": 180}


def simulate(folder: Path, volume: str, size: int, n: int, snr: float, seed: int) -> Path:
    """A simulated particle set as a lab has it: a STAR with CTFs, no angles, no origins."""
    from cryoem import datasets, relion, volumes

    truth = folder / "truth.h5"
    if not truth.exists():
        datasets.generate(volumes.resolve(volume, size), n, truth, snr=snr, max_shift=2.0,
                          ctf=True, test_size=n, seed=seed)
    star = folder / "star" / relion.STAR_NAME
    if not star.exists():
        relion.export_relion(datasets.load(truth), star.parent, poses=False, overwrite=True)
    return truth


def run_route(folder: Path, truth: Path, route: str, size: int, seed: int,
              aspire_python: Path | None = None) -> dict[str, Any]:
    """The pipeline on the STAR, then its outputs scored against the truth."""
    from cryoem import alignment, datasets, pipeline, recovery, relion

    out = folder / route
    options = dict(ROUTES[route])
    star = folder / "star" / relion.STAR_NAME
    # The user's prior, not a measurement: the group the built-in protein is known to have.
    declared = (datasets.load(truth, images=False).attrs.get("symmetry", "C1")
                if options.pop("declare_symmetry", False) else None)
    began = time.perf_counter()
    peer: dict[str, Any] = {}
    if options.pop("aspire", False):
        peer = aspire_start(star, out / "aspire", size, aspire_python or DEFAULT_ASPIRE_PYTHON)
        if "initial_map" not in peer:  # ASPIRE was not run, or failed: say why
            return {"route": route, "failed": f"ASPIRE {peer['status']}: {peer['reason']}",
                    "seconds": time.perf_counter() - began, "aspire": peer}
        options["initial_map"] = peer["initial_map"]
    config = pipeline.PipelineConfig(particles=str(star), size=size, seed=seed,
                                     symmetry=declared, **options)
    try:
        metrics = pipeline.run(config, out, progress=False, report=lambda _: None)
    except RuntimeError as error:  # a route may stop (e.g. an undecidable frame): report it
        return {"route": route, "failed": str(error),
                "seconds": time.perf_counter() - began}
    seconds = time.perf_counter() - began
    data = datasets.load(truth)
    symmetry = data.attrs.get("symmetry", "C1")
    if peer:  # ASPIRE's orientations of the images its kept classes are centred on
        first, scored = peer.pop("orientations"), peer["centred_on"]
    else:
        first, scored, _ = recovery.load_orientations(out / "orientations.h5")
    scores = _score(out, truth, data, declared or "C1")
    timings = {**({"aspire": peer["seconds"]} if peer else {}), **metrics["timings_s"]}
    return {"route": route, "truth_used": metrics["truth_used"], "symmetry": symmetry,
            "declared_symmetry": declared,
            "first_guess_e_or_rad": alignment.align_physical(first, data.orientations[scored],
                                                             symmetry).mean,
            "first_guess_scored_on": len(scored),
            **scores, "halfmap_fsc0143_angstrom": metrics["resolution_halfmap_fsc0143_angstrom"],
            "halfmap_independence": metrics["halfmap_independence"],
            "timings_s": timings, "seconds": seconds,
            **({"aspire": {k: v for k, v in peer.items() if k != "centred_on"}} if peer else {})}


def aspire_start(star: Path, work: Path, size: int, python: Path) -> dict[str, Any]:
    """ASPIRE's ab-initio map of the particles (:data:`ASPIRE`), saved as the pipeline's start.

    Returns the map's path (``initial_map``), ASPIRE's orientations (ours: the transpose of
    its matrices) of the images its kept classes are centred on (``centred_on``), the
    worker's record and the seconds, import and map included; or why it did not run.
    """
    import numpy as np

    from cryoem import datasets, particles, projection, reconstruction, rotations, volumes

    began = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    imported = work / "particles.h5"  # as the pipeline imports them: the same images
    particles.import_relion(star, imported, size=size, overwrite=True)
    data = datasets.load(imported)
    np.save(work / "images.npy", projection.phase_flip(data.projections, data.ctf,
                                                        data.pixel_size))
    classes = max(1, round(ASPIRE["class_share"] * len(data)))
    outcome = harness.run_worker(
        python, Path(__file__).with_name("aspire_commonlines_worker.py"),
        ["--images", str(work / "images.npy"), "--rotations-out", str(work / "rotations.npy"),
         "--pixel-size", str(data.pixel_size), "--downsample", str(ASPIRE["size"]), "--whiten",
         "--class-averages", str(ASPIRE["n_nbor"]), "--classes", str(classes),
         "--averages-out", str(work / "averages.npy"), "--n-theta", str(ASPIRE["n_theta"])],
        work / "aspire.json", None, 3 * 3600.0)
    if isinstance(outcome, dict):
        return outcome
    record, _ = outcome
    averages = np.load(work / "averages.npy")
    centred_on = np.load(work / "averages_images.npy")
    # ASPIRE's R maps the image frame into the volume: ours is its transpose.
    q = rotations.matrix_to_quaternion(np.swapaxes(np.load(work / "rotations.npy"), -1, -2))
    pixel = data.pixel_size * size / averages.shape[-1]
    start = reconstruction.reconstruct(averages, q, pixel_size=pixel).data
    path = volumes.save_map(volumes.Volume(start, pixel, "ASPIRE ab initio"),
                            work / "initial_map.mrc")
    return {"initial_map": str(path), "orientations": q, "centred_on": centred_on,
            "classes": classes, "settings": ASPIRE, "worker": record,
            "seconds": time.perf_counter() - began}


def _score(out: Path, truth: Path, data: Any, declared: str) -> dict[str, Any]:
    """``cryoem score`` of the run's STAR and map against the truth (after the run); the map
    of the true orientations imposes the group the run was given (``declared``)."""
    from cryoem import reconstruction, resolution, scoring, volumes

    reference_map = out / "truth_map.mrc"
    volumes.save_map(volumes.Volume(data.volume, data.pixel_size, "truth"), reference_map)
    symmetry = data.attrs.get("symmetry", "C1")  # a symmetry mate is the same image
    result = scoring.score(out / "particles.star", truth, symmetry=symmetry,
                           estimate_map=out / "map.mrc", reference_map=reference_map)
    oracle = reconstruction.reconstruct(data.projections, data.orientations, shifts=data.shifts,
                                        ctf=data.ctf, pixel_size=data.pixel_size,
                                        symmetry=declared)
    true_fsc = resolution.fsc(oracle.data, data.volume, data.pixel_size).resolution(0.5)
    return {"e_or_rad": result["e_or_rad"], "e_or_median_rad": result["e_or_median_rad"],
            "within_0.1_rad": result["within_0.1_rad"],
            "fsc05_angstrom": result["fsc05_angstrom"],
            "fsc05_true_orientations_angstrom": true_fsc}


def run_case(case: tuple[str, float], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One protein at one SNR: simulate once, then every route on the same particles."""
    volume, snr = case
    name = f"{volume}_{settings['size']}_{settings['n']}_snr{snr_tag(snr)}"
    folder = settings["work_dir"] / name
    truth = simulate(folder, volume, settings["size"], settings["n"], snr, settings["seed"])
    rows = []
    for route in settings["routes"]:
        row = {"volume": volume, "snr": snr, "n": settings["n"],
               **run_route(folder, truth, route, settings["size"], settings["seed"],
                           settings.get("aspire_python"))}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "timings_s"}, default=str),
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run every protein × SNR × route, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", nargs="+", default=["4ake", "1hvr", "2zmm"])
    p.add_argument("--snr", nargs="+", type=positive_snr, default=[float("inf"), 1.0, 0.0625])
    p.add_argument("--routes", nargs="+", choices=sorted(ROUTES),
                   default=["ab-initio-masked", "pretrained"])
    p.add_argument("--n", type=int, default=1000, help="particles per set (the issue: 5,000)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=Path("data/benchmarks/particles"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/particles.json"))
    p.add_argument("--aspire-python", type=Path, default=DEFAULT_ASPIRE_PYTHON,
                   help="the Python of ASPIRE's own environment (the aspire route)")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS|local[:N]",
                   help="run each protein × SNR as a task on Dask (default: one after another)")
    args = p.parse_args(argv)

    cases = [(volume, snr) for volume in args.volumes for snr in args.snr]
    settings = {key: getattr(args, key)
                for key in ("routes", "n", "size", "seed", "work_dir", "aspire_python")}
    with sweep_client(args.dask_scheduler) as client:  # one task per protein and SNR
        results = map_chunks(run_case, cases, client=client, shared={"settings": settings},
                             desc="protein × SNR", progress=client is not None)
    rows = [row for case_rows in results for row in case_rows]
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    rows += carry_over_rows(previous, rows,
                            lambda r: (r["volume"], float(r["snr"]), r.get("n"), r["route"]))
    print(table(rows))
    write_report({"benchmark": "particles", "settings": vars(args), "rows": rows,
                  "machine": machine_info(None)}, args.out)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: route × protein × SNR → first guess and final E_OR, FSCs, time."""
    lines = ["| protein | SNR | N | route | first guess E_OR (rad) | final E_OR mean / median (rad) "
             "| FSC 0.5 vs truth (Å) | with true poses (Å) | half maps FSC 0.143 (Å) | pipeline time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        origin = f" (from {row['produced_at'][:7]})" if row.get("carried_over") else ""
        declared = f" ({row['declared_symmetry']})" if row.get("declared_symmetry") else ""
        head = (f"| {row['volume']} | {snr_label(float(row['snr']))} | {row.get('n', '—')} "
                f"| {row['route']}{declared}{origin} ")
        if "failed" in row:
            reason = row["failed"].split(" (finished stages")[0]  # the stage and its error
            lines.append(head + f"| stopped: {reason} | | | | | {row['seconds']:.0f} |")
            continue
        first = f"{row['first_guess_e_or_rad']:.3f}" + (
            f" (its {row['first_guess_scored_on']} classes' images)" if "aspire" in row else "")
        lines.append(head + f"| {first} | {row['e_or_rad']:.3f} / "
                            f"{row['e_or_median_rad']:.3f} | {row['fsc05_angstrom']:.2f} | "
                            f"{row['fsc05_true_orientations_angstrom']:.2f} | "
                            f"{row['halfmap_fsc0143_angstrom']:.2f} | {_seconds(row):.0f} |")
    return "\n".join(lines)


def _seconds(row: dict[str, Any]) -> float:
    """The pipeline's own stage times (a resumed run keeps them), else the wall time."""
    return sum(row["timings_s"].values()) if row.get("timings_s") else row["seconds"]


if __name__ == "__main__":
    main()
