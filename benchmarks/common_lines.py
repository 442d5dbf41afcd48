"""Like for like: our first guess and ASPIRE's on the same images, then both refined alike.

Images: the first ``--n-subset`` test projections of the dataset a ``cryoem.pipeline``
run makes at each SNR (``--snrs``; every SNR shares orientations, shifts and split,
which is checked).  Per SNR, three parts, each a cached scenario of ``harness.py``:

* **ours**: first guess = distances (``--estimator``, ``--model``: ``auto`` = the model
  the default pipeline trains on that SNR's dataset, a folder, or ``pretrained``) →
  ``recovery.recover`` → ``commonlines.resolve_frame``; then ``refinement.refine``.
* **aspire**: first guess = ``CLSyncVoting`` (``aspire_commonlines_worker.py`` in ASPIRE's
  own environment, ``--aspire-python``; rotations transposed into our convention), then
  the same ``refinement.refine`` call.  Without ASPIRE the part says it was not run.
* **oracle**: the map from the true orientations and shifts.

Both first guesses are scored unrefined, both refined with the same options (shifts
estimated from zero), both with ``--threads`` threads (TensorFlow, BLAS and OpenMP here;
OMP/BLAS variables for the worker).  Our seconds are given without and with the model's
training, and each row names the model, its training data and how it used the truth.
The truth is read only to score (``align_physical``; FSC 0.5 of each map against the true
map).  See benchmarks/README.md.

    .venv/bin/python benchmarks/common_lines.py --aspire-python /work/aspire-venv/bin/python
    .venv/bin/python benchmarks/common_lines.py --quick --no-aspire     # tiny, for CI
"""

# ruff: noqa: E402 - the thread count is pinned before NumPy loads (BLAS reads it once)
from __future__ import annotations

import harness

DEFAULT_THREADS = 1
if __name__ == "__main__":
    harness.pin_threads(default=DEFAULT_THREADS)

import argparse
import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import jsonable, pipeline_row, positive_snr, snr_label, volume_name
from harness import Column, Harness, Scenario, score, timed

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "common_lines.json"
WORK_DIR, RUNS_DIR = Path("data/benchmarks/common_lines"), Path("data/benchmarks/runs")
SEED = 0
GOAL_FACTOR = 1.5
PARTS = ("ours", "aspire", "aspire_class_averages", "oracle")
QUICK = {"size": 32, "n_projections": 300, "test_size": 100, "n_subset": 60,
         "snrs": [math.inf, 1 / 4], "iterations": 1, "steps": 300, "estimator": "perturbed",
         "out": WORK_DIR / "quick" / "common_lines.json", "work_dir": WORK_DIR / "quick",
         "runs_dir": RUNS_DIR / "quick"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` replaces the defaults by tiny ones)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", default="4ake")
    p.add_argument("--size", type=int, default=64, help="image edge L")
    p.add_argument("--n-projections", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1650)
    p.add_argument("--max-shift", type=float, default=2.0, help="in-plane shifts, px")
    p.add_argument("--snrs", type=positive_snr, nargs="+",
                   default=[math.inf, 1.0, 1 / 4, 1 / 16, 1 / 32])
    p.add_argument("--n-subset", type=int, default=500, help="the first K test images")
    p.add_argument("--estimator", choices=("learned", "perturbed", "exact"), default="learned")
    p.add_argument("--model", default="auto", help="'auto', a model folder or 'pretrained'")
    p.add_argument("--sigma2", type=float, default=0.2, help="perturbed distances' variance")
    p.add_argument("--steps", type=int, default=2000, help="recovery: Adam steps at most")
    p.add_argument("--iterations", type=int, default=6,
                   help="refinement iterations at most, both methods")
    p.add_argument("--aspire-python", type=Path, default=harness.DEFAULT_ASPIRE_PYTHON)
    p.add_argument("--aspire-n-theta", type=int, default=360, help="CLSyncVoting n_theta")
    p.add_argument("--aspire-dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--aspire-timeout", type=float, default=3 * 3600.0)
    p.add_argument("--no-aspire", action="store_true", help="skip ASPIRE")
    p.add_argument("--aspire-class-averages", type=int, default=0, metavar="N_NBOR",
                   help="also ASPIRE's class averages (N_NBOR neighbours, e.g. 50) then "
                        "CLSyncVoting, refined alike (default 0: not run)")
    p.add_argument("--works-below", type=float, default=0.5, help="rad; see the goal")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR)
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    p.add_argument("--figure", type=Path, default=Path("images/common-lines-snr.png"))
    harness.add_options(p, DEFAULT_OUT, DEFAULT_THREADS)
    args = p.parse_args(argv)
    harness.quick_defaults(args, p, {**QUICK, "figure": args.work_dir / "quick" / "cl.png"})
    # --quick: 60 images have only 1,770 pairs; fewer in the frame step
    args.frame_options = {"n_pairs": 500, "refine_pairs": 2000} if args.quick else {}
    if not 10 <= args.n_subset <= args.test_size <= args.n_projections or args.threads < 1:
        p.error("need 10 ≤ --n-subset ≤ --test-size ≤ --n-projections and --threads ≥ 1")
    if args.aspire_n_theta % 2 or args.iterations < 0:
        p.error("--aspire-n-theta must be even and --iterations ≥ 0")
    return args


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
def data_settings(args: argparse.Namespace, snr: float) -> dict[str, Any]:
    """What the images depend on."""
    return {"volume": args.volume, "size": args.size, "n_projections": args.n_projections,
            "test_size": args.test_size, "max_shift": args.max_shift, "seed": SEED,
            "snr": snr, "n_subset": args.n_subset}


def ensure_dataset(args: argparse.Namespace, snr: float) -> tuple[Path, dict[str, Any]]:
    """The pipeline run's ``data.h5`` whose model we use (``--model auto``), else generated once."""
    if getattr(args, "pipeline_data", None):
        return Path(args.pipeline_data), {"path": args.pipeline_data, "from": "pipeline run"}
    wanted = {k: v for k, v in data_settings(args, snr).items() if k not in ("n_subset", "snr")}
    return harness.dataset(args.work_dir, snr=snr, progress=args.progress, **wanted)


def check_same_truth(reference: Any, data: Any) -> float:
    """Largest difference of orientations and shifts to the first SNR's dataset; raises if any."""
    from cryoem import rotations

    difference = max(float(np.max(np.abs(rotations.canonical(reference.orientations)
                                         - rotations.canonical(data.orientations)))),
                     float(np.max(np.abs(reference.shifts - data.shifts))))
    if difference > 1e-9 or not np.array_equal(reference.split["test"], data.split["test"]):
        raise RuntimeError(f"{data.path} does not share the first SNR's orientations, shifts "
                           f"and split (difference {difference:.2e})")
    return difference


# ----------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------
def refine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The one ``refinement.refine`` call both methods get (shifts start at zero for both)."""
    return {"iterations": args.iterations, "seed": SEED}


def ours_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What our part depends on besides the data (the model by its file's hash)."""
    settings = {"estimator": args.estimator, "steps": args.steps,
                "frame_options": args.frame_options, "refine": refine_options(args),
                "threads": args.threads}
    if args.estimator == "learned":
        try:
            settings["model"] = harness.model_info(args.model,
                                                   volume_name(args.volume, args.size))
        except (OSError, ValueError) as error:  # no model: run_ours fails and says so
            settings["model"] = {"dir": args.model, "error": str(error)}
    elif args.estimator == "perturbed":
        settings["sigma2"] = args.sigma2
    return settings


def run_ours(args: argparse.Namespace, data: Any, subset: Any, label: str) -> dict[str, Any]:
    """Distances → recovery → frame (first guess), then refinement."""
    from cryoem import commonlines, distance, recovery

    images, truth = data.projections[subset], data.orientations[subset]
    symmetry = str(data.attrs.get("symmetry", "C1"))
    model = args.model if args.estimator == "learned" else None
    made, load_seconds = harness.estimator(args.estimator, model, args.sigma2, SEED,
                                           args.size)
    print(f"  SNR {label}: ours: first guess ({made.name}, N={len(subset)})", file=sys.stderr)
    d_hat, t_distances = timed(lambda: made.matrix(data, subset))
    recovered, t_recovery = timed(lambda: recovery.recover(
        d_hat, steps=args.steps, symmetry=symmetry, seed=SEED, progress=args.progress))
    frame, t_frame = timed(lambda: commonlines.resolve_frame(
        images, recovered.quaternions, seed=SEED, progress=args.progress, **args.frame_options))
    first = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    refined = harness.refine_and_score(data, subset, first, refine_options(args),
                                       args.progress, f"SNR {label}: ours")
    info = ours_settings(args).get("model")
    training = (info or {}).get("training_seconds")
    seconds = {"distances": t_distances, "recovery": t_recovery, "frame": t_frame,
               "first_guess": t_distances + t_recovery + t_frame,
               "refinement": refined.pop("refinement_seconds"), "model_load": load_seconds,
               "training": training}
    seconds["total"] = seconds["first_guess"] + seconds["refinement"]
    seconds["total_with_training"] = None if training is None else seconds["total"] + training
    return {"status": "ok", "estimator": made.name, "model": info,
            "l_de": distance.l_de(d_hat, distance.ExactDistance().matrix(data, subset)),
            "l_or": recovered.final_loss,
            **score(recovered.quaternions, truth, symmetry, "e_or_before_frame")[0],
            **score(first, truth, symmetry, "e_or_unrefined")[0],
            "frame_transposed": frame.transposed, "frame_confidence": frame.confidence,
            **refined, "seconds": seconds}


def aspire_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_theta": args.aspire_n_theta, "dtype": args.aspire_dtype,
            "refine": refine_options(args), "threads": args.threads}


def aspire_worker(args: argparse.Namespace, images: Any, pixel_size: float,
                  n_nbor: int = 0) -> Any:
    """``harness.aspire_common_lines`` with this script's options (or why it did not run)."""
    if args.no_aspire:
        return {"status": "skipped", "reason": "--no-aspire: ASPIRE was not run"}
    return harness.aspire_common_lines(
        args.aspire_python, images, pixel_size, n_theta=args.aspire_n_theta,
        dtype=args.aspire_dtype, threads=args.threads, timeout=args.aspire_timeout,
        n_nbor=n_nbor)


def run_aspire(args: argparse.Namespace, data: Any, subset: Any, label: str,
               n_nbor: int = 0) -> dict[str, Any]:
    """CLSyncVoting (on class averages with ``n_nbor``) first, then the same refinement."""
    from cryoem import alignment, recovery, rotations

    truth, symmetry = data.orientations[subset], str(data.attrs.get("symmetry", "C1"))
    outcome = aspire_worker(args, data.projections[subset], data.pixel_size, n_nbor)
    if isinstance(outcome, dict):
        return outcome
    print(f"  SNR {label}: ASPIRE CLSyncVoting ran on {len(subset)} images", file=sys.stderr)
    matrices, result, wall = outcome
    # ASPIRE's R maps the image frame into the volume: ours is its transpose.
    first = recovery.to_asymmetric_unit(
        rotations.matrix_to_quaternion(np.swapaxes(matrices, -1, -2)), symmetry)
    untransposed = alignment.align_physical(rotations.matrix_to_quaternion(matrices), truth,
                                            symmetry).mean
    refined = harness.refine_and_score(data, subset, first, refine_options(args),
                                       args.progress, f"SNR {label}: ASPIRE{' CA' * bool(n_nbor)}")
    seconds = {"first_guess": result["seconds"], "first_guess_wall": wall,
               "refinement": refined.pop("refinement_seconds")}
    seconds["total"] = seconds["first_guess"] + seconds["refinement"]
    return {"status": "ok", **score(first, truth, symmetry, "e_or_unrefined")[0],
            "e_or_without_transpose": untransposed,  # convention check: should be large
            **refined, "seconds": seconds, "worker": result}


def run_oracle(args: argparse.Namespace, data: Any, subset: Any, label: str) -> dict[str, Any]:
    return {"status": "ok", **harness.map_fsc(data, data.projections[subset],
                                             data.orientations[subset], data.shifts[subset],
                                             args.progress)}


def compare(row: dict[str, Any], works_below: float) -> dict[str, Any]:
    """First guess vs first guess, refined vs refined, and the goal (on the refined errors)."""
    ours, aspire = row.get("ours") or {}, row.get("aspire") or {}
    if ours.get("status") != "ok" or aspire.get("status") != "ok":
        return {"ratio_e_or": None, "ratio_e_or_first_guess": None, "goal": None,
                "goal_met": None}
    works = aspire["e_or_unrefined"] <= works_below
    ratio = ours["e_or"] / max(aspire["e_or"], 1e-12)
    return {"ratio_e_or_first_guess": (ours["e_or_unrefined"]
                                       / max(aspire["e_or_unrefined"], 1e-12)),
            "ratio_e_or": ratio, "ratio_e_or_median": (ours["e_or_median"]
                                                       / max(aspire["e_or_median"], 1e-12)),
            "aspire_works": works,
            "ratio_e_or_vs_class_averages": (
                ours["e_or"] / max(row["aspire_class_averages"]["e_or"], 1e-12)
                if (row.get("aspire_class_averages") or {}).get("status") == "ok" else None),
            "goal": (f"refined: ours ≤ {GOAL_FACTOR:g}× ASPIRE (ASPIRE works)" if works
                     else "refined: ours < ASPIRE (ASPIRE fails)"),
            "goal_met": bool(ratio <= GOAL_FACTOR if works else ours["e_or"] < aspire["e_or"])}


def run_snr(bench: Harness, args: argparse.Namespace, snr: float,
            reference: list[Any]) -> dict[str, Any]:
    """One row: the dataset, then each part (a cached scenario)."""
    from cryoem import datasets

    label = snr_label(snr)
    settings = data_settings(args, snr)
    path, info = ensure_dataset(args, snr)
    data = datasets.load(path)
    if reference:
        info["truth_difference_to_first_snr"] = check_same_truth(reference[0], data)
    else:
        reference.append(data)
    subset = data.split["test"][: args.n_subset]
    parts = {"ours": (ours_settings, run_ours), "aspire": (aspire_settings, run_aspire),
             "oracle": (lambda a: {}, run_oracle)}
    if args.aspire_class_averages:  # ASPIRE's ab-initio route, refined alike
        parts["aspire_class_averages"] = (
            lambda a: {**aspire_settings(a), "n_nbor": a.aspire_class_averages},
            lambda *a: run_aspire(*a, n_nbor=args.aspire_class_averages))
    row: dict[str, Any] = {"snr": snr, "snr_label": label, "n": args.n_subset,
                           "settings": settings, "dataset": info,
                           "pixel_size_angstrom": data.pixel_size}
    for part, (part_settings, run) in parts.items():
        row[part] = bench.run(Scenario(
            f"SNR {label}: {part}", {**settings, part: part_settings(args)},
            lambda run=run: run(args, data, subset, label)))
    row["comparison"] = compare(jsonable(row), args.works_below)
    return row


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def _get(part: dict[str, Any] | None, key: str, sub: str | None = None) -> Any:
    if not part or part.get("status") != "ok":  # a cell saying why, or none
        status = (part or {}).get("status")
        return None if sub or not status else {"skipped": "not run"}.get(status, status)
    value = part.get(key)
    return value.get(sub) if sub is not None and isinstance(value, dict) else value


COLUMNS = [
    Column("SNR", lambda r: r["snr_label"]), Column("N", lambda r: r["n"], "d"),
    Column("ours 1st", lambda r: _get(r.get("ours"), "e_or_unrefined")),
    Column("ASPIRE 1st", lambda r: _get(r.get("aspire"), "e_or_unrefined")),
    Column("ours ref.", lambda r: _get(r.get("ours"), "e_or")),
    Column("ASPIRE ref.", lambda r: _get(r.get("aspire"), "e_or")),
    Column("CA+CL 1st", lambda r: _get(r.get("aspire_class_averages"), "e_or_unrefined")),
    Column("CA+CL ref.", lambda r: _get(r.get("aspire_class_averages"), "e_or")),
    Column("ratio", lambda r: r["comparison"].get("ratio_e_or"), ".2f"),
    Column("ours s", lambda r: _get(r.get("ours"), "seconds", "total"), ".1f"),
    Column("+training", lambda r: _get(r.get("ours"), "seconds", "total_with_training"), ".0f"),
    Column("ASPIRE s", lambda r: _get(r.get("aspire"), "seconds", "total"), ".1f"),
    Column("FSC ours", lambda r: _get(r.get("ours"), "resolution_fsc05_angstrom"), ".2f"),
    Column("FSC ASP.", lambda r: _get(r.get("aspire"), "resolution_fsc05_angstrom"), ".2f"),
    Column("oracle", lambda r: _get(r.get("oracle"), "resolution_fsc05_angstrom"), ".2f"),
    Column("goal", lambda r: "—" if r["comparison"].get("goal_met") is None
           else ("met" if r["comparison"]["goal_met"] else "MISSED")),
]


def print_table(rows: list[dict[str, Any]], threads: int) -> None:
    print(harness.table(rows, COLUMNS))
    print(f"E_OR = align_physical mean (rad), same images; 1st = first guess (ours: distances → "
          f"recovery → frame; ASPIRE: CLSyncVoting), ref. = after the same refinement.refine; "
          f"CA+CL = ASPIRE's class averages then CLSyncVoting (--aspire-class-averages); "
          f"ratio = ours ref. / ASPIRE ref.; seconds to orientations, {threads} thread(s) each; "
          "+training = ours with the model's training; FSC 0.5 vs the true map (Å).")
    for row in rows:
        model = (row["ours"] or {}).get("model")
        if model:
            print(f"SNR {row['snr_label']}: our model {model['dir']} ({model['mode']}, "
                  f"snr_range {model['snr_range']}, sources {', '.join(model['sources'])}): "
                  f"{model['supervision']}")
        for part in PARTS:
            if (row.get(part) or {}).get("status") not in (None, "ok"):
                print(f"SNR {row['snr_label']}: {part} {row[part]['status']}: "
                      f"{row[part].get('reason')}")


def make_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """E_OR (log) against the SNR: each method's first guess and refined; ∞ at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryoem import alignment, plots

    snrs = [positive_snr(row["snr_label"]) for row in rows]
    top = max([math.log2(s) for s in snrs if math.isfinite(s)], default=0.0)
    x = [top + 2.0 if math.isinf(s) else math.log2(s) for s in snrs]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = False
    for name, part, key, style in (("ours, refined", "ours", "e_or", "o-"),
                                   ("ours, first guess", "ours", "e_or_unrefined", "s:"),
                                   ("ASPIRE, refined", "aspire", "e_or", "^-"),
                                   ("ASPIRE CLSyncVoting", "aspire", "e_or_unrefined", "v:"),
                                   ("ASPIRE class averages + CL, refined",
                                    "aspire_class_averages", "e_or", "d-")):
        points = sorted((xi, v) for xi, row in zip(x, rows)
                        if isinstance(v := _get(row.get(part), key), float))
        if points:
            ax.plot(*zip(*points), style, label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(alignment.RANDOM_MEAN_ERROR, color="grey", lw=0.8, ls="--", label="random")
    ax.set_xticks(x, ["∞" if math.isinf(s) else snr_label(s) for s in snrs])
    ax.set(yscale="log", xlabel="SNR", ylabel="physical E_OR (rad, mean)",
           title=f"orientations from {rows[0]['n']} images: ours vs ASPIRE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Run every SNR, print the table, write the JSON and the figure."""
    args = parse_args(argv)
    threads = harness.apply_threads(args.threads)
    start = time.perf_counter()
    notes = {"like_for_like": "both first guesses unrefined, then the same refinement.refine "
                              "(shifts estimated from zero for both), the same thread count",
             "goal": f"where ASPIRE's first guess works (mean e_or ≤ {args.works_below:g} rad) "
                     f"ours refined ≤ {GOAL_FACTOR:g}× ASPIRE refined, elsewhere lower",
             "seconds": "to orientations: ours = distances + recovery + frame (first_guess) + "
                        "refinement, without and with the model's training; ASPIRE = the "
                        "worker's CLSyncVoting (first_guess) + refinement"}
    with Harness("common_lines", args.out, config=vars(args), threads=threads,
                 fresh=args.fresh, reuse_stale=args.reuse_stale) as bench:
        same_data = jsonable({k: v for k, v in data_settings(args, 0.0).items() if k != "snr"})
        kept = {row["snr_label"]: row for row in bench.previous().get("rows", [])
                if {k: v for k, v in row.get("settings", {}).items() if k != "snr"} == same_data
                and row["snr_label"] not in {snr_label(s) for s in args.snrs}}
        reference: list[Any] = []
        report: dict[str, Any] = {}
        # _common.pipeline_row refuses a run of another commit unless told (once it can).
        stale_option = ({"reuse_stale": args.reuse_stale}
                        if "reuse_stale" in inspect.signature(pipeline_row).parameters else {})
        for snr in args.snrs:
            print(f"--- SNR {snr_label(snr)}", file=sys.stderr)
            run_args, pipeline = args, None
            if args.model == "auto" and args.estimator == "learned":  # the pipeline's model
                run = pipeline_row(args.runs_dir, volume=args.volume, snr=snr,
                                   estimator="learned", refine=True, size=args.size,
                                   n_projections=args.n_projections, test_size=args.test_size,
                                   max_shift=args.max_shift, **stale_option)
                m = run["metrics"]
                pipeline = {"run": run["folder"], "failed": run["failed"],
                            **{k: m.get(k) for k in ("l_de_test", "l_de_val", "e_or_o4_rad",
                                                     "e_or_rad", "e_or_unrefined_rad",
                                                     "timings_s", "resolution_fsc05_angstrom")}}
                run_args = argparse.Namespace(**{
                    **vars(args), "model": str(Path(run["folder"]) / "model"),
                    "pipeline_data": str(Path(run["folder"]) / "data.h5")})
            row = run_snr(bench, run_args, snr, reference)
            if pipeline:
                row["ours_pipeline_full_test_split"] = pipeline
            kept[row["snr_label"]] = row
            rows = sorted(kept.values(), key=lambda r: -positive_snr(r["snr_label"]))
            report = bench.write({"notes": notes, "rows": rows,
                                  "seconds": time.perf_counter() - start})
        print_table(report["rows"], args.threads)
        figure = make_figure(report["rows"], args.figure)
        print(f"wrote {args.out}" + (f" and {figure}" if figure else ""))
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
