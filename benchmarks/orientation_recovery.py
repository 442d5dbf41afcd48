"""Benchmark orientation recovery (``cryoem.recovery``) and its scoring (``cryoem.alignment``).

Every recovered set is scored with both metrics (mean geodesic errors, rad): ``e_or_o4``
(``align_o4``, the paper's eq. 5) and ``e_or`` (``align_physical``: what a reconstruction
sees); ``L_OR`` = mean ``(d̂ − d_q)²`` over the pairs (rad²).  Parts (``--parts``), each a
cached scenario of ``harness.py``: ``exact-1650``, ``exact-large`` (``recover_sampled``),
``perturbed-0.8``, ``learned`` (distance_learning.py's best models; skipped with a note when
absent), ``frame`` (``e_or`` before and after ``commonlines.resolve_frame``) and
``align-large``.  Seconds: the call (distances apart); memory: its peak RSS
(``harness.measure``).  What each part runs, and its goal: benchmarks/README.md.

    .venv/bin/python benchmarks/orientation_recovery.py                # everything
    .venv/bin/python benchmarks/orientation_recovery.py --parts exact-1650 perturbed-0.8
    .venv/bin/python benchmarks/orientation_recovery.py --quick        # tiny check
"""

# ruff: noqa: E402 - the thread count is pinned before NumPy loads (BLAS reads it once)
from __future__ import annotations

import harness

if __name__ == "__main__":
    harness.pin_threads()

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from harness import Column, Harness, Scenario, measure
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cryoem.datasets import Dataset

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "orientation_recovery.json"
DL_WORK_DIR = Path("data/benchmarks/distance_learning")  # benchmarks/distance_learning.py
QUICK_DIR = Path("data/benchmarks/orientation_recovery/quick")
DL_DATASETS = {"clean": "4ake_L64_N5000_snrinf_seed0.h5",  # its default parameters
               "noisy": "4ake_L64_N5000_snr1-16_seed0.h5"}
PARTS = ("exact-1650", "exact-large", "perturbed-0.8", "learned", "frame", "align-large")
#: The options each part depends on (with --threads and --no-tracemalloc).
PART_OPTIONS = {
    "exact-1650": ("n", "seed", "steps", "o4_restarts"),
    "exact-large": ("n_large", "seed", "landmarks", "random_per_point", "neighbours", "chunk",
                    "steps_large", "o4_restarts"),
    "perturbed-0.8": ("n", "seed", "steps", "sigma2", "max_distance", "far_weight",
                      "restarts", "o4_restarts"),
    "learned": ("n_learned", "seed", "steps", "max_distance", "far_weight", "o4_restarts"),
    "frame": ("n", "seed", "steps", "protein", "size", "snr", "n_learned", "o4_restarts"),
    "align-large": ("n_align", "align_noise", "seed", "o4_restarts"),
}
GOAL_1650 = (0.005, 60.0)  # e_or_o4 (rad), seconds
GOAL_LARGE_SECONDS, GOAL_PERTURBED, GOAL_ALIGN_SECONDS, GOAL_FRAME_SECONDS = 900.0, 0.07, 1.0, 60.0
TRUTH_STREAM, NOISE_STREAM = 7, 8  # default_rng([seed, stream]): true orientations, noise
HIDDEN_OPTIONS = ("landmarks", "random_per_point", "neighbours", "chunk", "align_noise")

FloatArray = NDArray[np.float64]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    for name, kind, default, text in (
            ("n", int, 1650, "orientations of parts 1, 3 and 5"),
            ("seed", int, 0, "orientations, noise and recovery seed"),
            ("steps", int, 2000, "Adam steps at most"),
            ("sigma2", float, 0.8, "PerturbedDistance variance, rad²"),
            ("max-distance", float, 2.0, "the down-weighting rows: distances above this (rad)"),
            ("far-weight", float, 0.1, "… weigh this much"),
            ("restarts", int, 3, "the restarts row"),
            ("n-large", int, 100_000, "orientations of part 2"),
            ("landmarks", int, 1000, "recover_sampled landmarks"),
            ("random-per-point", int, 20, "random pairs per point"),
            ("neighbours", int, 10, "nearest-neighbour pairs per point"),
            ("chunk", int, 20_000, "points placed at a time"),
            ("steps-large", int, 2000, "Adam steps at most, part 2"),
            ("protein", str, None, "part 5: volume (default: the built-in 4ake)"),
            ("size", int, 64, "part 5: image edge L"),
            ("snr", float, 1 / 16, "part 5: SNR of the noisy images"),
            ("n-align", int, 100_000, "orientations of part 6"),
            ("align-noise", float, 0.1, "part 6: scale (rad) of each orientation's turn"),
            ("o4-restarts", int, 8, "align_o4's random starts"),
            ("n-learned", int, None, "parts 4 and 5: only the first K test images")):
        p.add_argument(f"--{name}", type=kind, default=default, help=text)
    p.add_argument("--work-dir", type=Path, default=DL_WORK_DIR,
                   help="distance-learning benchmark's folder (models under runs/)")
    for kind in ("clean", "noisy"):
        p.add_argument(f"--model-{kind}", type=Path, default=None,
                       help=f"model folder (default: best of WORK_DIR/runs/{kind}-*)")
        p.add_argument(f"--data-{kind}", type=Path, default=None,
                       help="its dataset (default: the model's first training source)")
    p.add_argument("--no-tracemalloc", action="store_true",
                   help="do not trace Python/NumPy allocations")
    harness.add_options(p, DEFAULT_OUT)
    args = p.parse_args(argv)
    harness.quick_defaults(args, p, {"n": 300, "n_large": 3000, "n_align": 3000,
                                     "landmarks": 200, "n_learned": 200, "size": 32,
                                     "out": QUICK_DIR / "orientation_recovery.json"})
    if (min(args.n, args.landmarks, args.n_learned or 10) < 10 or args.n_large < args.landmarks
            or min(args.n_align, args.restarts) < 1 or min(args.steps, args.steps_large) < 0
            or args.size < 8 or not args.snr > 0):
        p.error("need --n, --landmarks, --n-learned ≥ 10, --n-large ≥ --landmarks, --n-align, "
                "--restarts ≥ 1, steps ≥ 0, --size ≥ 8 and --snr > 0")
    return args


def described(method: str, options: dict[str, Any]) -> str:
    """``method`` with its options (those that tell variants apart) for tables."""
    shown = ", ".join(f"{k}={v}" for k, v in options.items() if k not in HIDDEN_OPTIONS)
    return method + (f" ({shown})" if shown else "")


def recovery_row(part: str, method: str, options: dict[str, Any], measured: tuple,
                 true: FloatArray, l_or: float, o4_restarts: int) -> dict[str, Any]:
    """One row from a measured recovery call (``method`` names its options too)."""
    result, seconds, memory = measured
    numbers, _ = harness.score(result.quaternions, true, options.get("symmetry", "C1"),
                               o4_restarts=o4_restarts)
    return {"part": part, "n": len(true), "method": described(method, options),
            "options": options, "seconds": seconds, **memory, "l_or": l_or,
            "objective_initial": result.initial_loss, "objective_final": result.final_loss,
            "descent_steps": result.steps, "init_residual": result.init_residual,
            "loss_history": result.loss_history, **numbers}


def set_goal(row: dict[str, Any], text: str, met: bool) -> dict[str, Any]:
    row["goal"], row["goal_met"] = text, bool(met)
    return row


def dense_rows(part: str, d_hat: FloatArray, true: FloatArray,
               variants: list[tuple[str, dict[str, Any]]],
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """``recovery.recover(d_hat, **options)`` for each variant, scored against ``true``."""
    from cryoem import recovery

    rows = []
    for method, options in variants:
        kwargs = {"steps": args.steps, "seed": args.seed, "progress": args.progress, **options}
        print(f"  {part}: {method} {options}", file=sys.stderr)
        measured = measure(lambda: recovery.recover(d_hat, **kwargs), not args.no_tracemalloc)
        l_or = recovery.loss(measured[0].quaternions, d_hat,
                             symmetry=options.get("symmetry", "C1"))
        rows.append(recovery_row(part, method, options, measured, true, l_or, args.o4_restarts))
    return rows


def true_orientations(n: int, seed: int) -> FloatArray:
    """``n`` Haar-uniform orientations from their own stream (not ``recover``'s random start)."""
    from cryoem import rotations

    return rotations.sample_uniform(n, seed=np.random.default_rng([seed, TRUTH_STREAM]))


def in_memory_dataset(orientations: FloatArray) -> Dataset:
    """A ``Dataset`` holding only orientations (all of them in the test split)."""
    from cryoem import datasets

    n, none = len(orientations), np.arange(0)
    return datasets.Dataset(None, orientations, np.zeros((n, 2)), np.zeros((4, 4, 4), np.float32),
                            {"train": none, "validation": none, "test": np.arange(n)},
                            attrs={"symmetry": "C1"})


def exact_1650(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 1: exact distances, full batch, spectral + descent and spectral alone."""
    from cryoem import distance

    true = true_orientations(args.n, args.seed)
    d = distance.ExactDistance().matrix(in_memory_dataset(true))
    error, seconds = GOAL_1650
    return [set_goal(row, f"e_or_o4<{error:g}, <{seconds:g}s",
                     row["e_or_o4"] < error and row["seconds"] < seconds)
            for row in dense_rows("exact-1650", d, true, [("spectral+descent", {}),
                                                          ("spectral only", {"steps": 0})], args)]


def perturbed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 3: PerturbedDistance(σ²), full batch, with what each option buys."""
    from cryoem import distance, rotations

    true = true_orientations(args.n, args.seed)
    d_hat, d_seconds = harness.timed(lambda: distance.PerturbedDistance(
        args.sigma2, seed=args.seed).matrix(in_memory_dataset(true)))
    far = {"max_distance": args.max_distance, "far_weight": args.far_weight}
    variants = [("spectral+descent", {}), ("spectral only", {"steps": 0}),
                ("random+descent", {"init": "random"}), ("spectral+descent", far),
                ("spectral+descent", {"restarts": args.restarts})]
    l_de = distance.l_de(d_hat, rotations.geodesic_distance_matrix(true))
    return [set_goal({**row, "sigma2": args.sigma2, "distance_seconds": d_seconds,
                      "l_de": l_de}, f"e_or_o4≤{GOAL_PERTURBED:g}",
                     row["e_or_o4"] <= GOAL_PERTURBED)
            for row in dense_rows(f"perturbed-{args.sigma2:g}", d_hat, true, variants, args)]


def exact_large(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 2: ``recover_sampled`` with exact pair distances, and its placement alone."""
    from cryoem import recovery, rotations

    true = true_orientations(args.n_large, args.seed)
    options = {"landmarks": args.landmarks, "random_per_point": args.random_per_point,
               "neighbours": args.neighbours, "chunk": args.chunk}
    rows = []
    for method, steps in (("sampled: placement only", 0), ("sampled+descent", args.steps_large)):
        counts = {"pairs": 0, "seconds": 0.0}

        def pairs(i: NDArray[np.int64], j: NDArray[np.int64]) -> FloatArray:
            d, seconds = harness.timed(lambda: rotations.geodesic_distance(true[i], true[j]))
            counts["pairs"] += len(i)
            counts["seconds"] += seconds
            return d

        print(f"  exact-large: {method} (N={args.n_large})", file=sys.stderr)
        measured = measure(lambda: recovery.recover_sampled(
            args.n_large, pairs, seed=args.seed, progress=args.progress, steps=steps,
            **options), not args.no_tracemalloc)
        row = recovery_row("exact-large", method, {**options, "steps": steps}, measured, true,
                           measured[0].final_loss, args.o4_restarts)  # L_OR: sampled pairs
        row.update(pairs_evaluated=counts["pairs"], pair_fn_seconds=counts["seconds"])
        rows.append(set_goal(row, f"<{GOAL_LARGE_SECONDS / 60:g} min",
                             row["seconds"] < GOAL_LARGE_SECONDS))
    return rows


def learned_inputs(args: argparse.Namespace, kind: str) -> tuple[Path, Path] | str:
    """``(model, dataset)`` for ``kind`` (clean/noisy), or why the variant is skipped.

    The default model is the ``runs/{kind}-*`` folder of distance_learning.py with the
    lowest ``best.json`` validation loss; its dataset the model's first training source.
    """
    model = getattr(args, f"model_{kind}") or harness.best_distance_model(args.work_dir, kind)
    if model is None:
        return f"no trained model under {args.work_dir / 'runs'}/{kind}-* (give --model-{kind})"
    if not (Path(model) / "model.keras").is_file():
        return f"no model.keras in {model}"
    sources = harness.read_json(Path(model) / "config.json").get("sources") or []
    data = (getattr(args, f"data_{kind}") or (sources and Path(sources[0]).is_file()
                                               and Path(sources[0]))
            or args.work_dir / DL_DATASETS[kind])
    if not Path(data).is_file():
        return f"no dataset at {data} (give --data-{kind})"
    return Path(model), Path(data)


def learned_sets(args: argparse.Namespace, part: str, rows: list[dict[str, Any]]) -> Iterator:
    """``(kind, data, test, d̂, info, symmetry)``: each learned model's distances on its
    dataset's test split (timed); a missing one adds a skipped row to ``rows`` instead."""
    from cryoem import datasets, distance

    for kind in ("clean", "noisy"):
        found = learned_inputs(args, kind)
        if isinstance(found, str):
            print(f"  {part}-{kind}: skipped: {found}", file=sys.stderr)
            rows.append({"status": "skipped", "part": f"{part}-{kind}", "reason": found})
            continue
        data = datasets.load(found[1])
        test = data.split["test"][: args.n_learned]
        d_hat, seconds = harness.timed(lambda: distance.LearnedDistance(found[0]).matrix(
            data, test))
        yield kind, data, test, d_hat, {"model": str(found[0]), "dataset": str(found[1]),
                                        "snr": data.attrs.get("snr"),
                                        "distance_seconds": seconds}, \
            str(data.attrs.get("symmetry", "C1"))


def learned(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 4: noiseless and noisy learned distances, recovered three ways."""
    from cryoem import distance

    rows: list[dict[str, Any]] = []
    for kind, data, test, d_hat, info, symmetry in learned_sets(args, "learned", rows):
        group = {} if symmetry == "C1" else {"symmetry": symmetry}  # then a random start
        far = {"max_distance": args.max_distance, "far_weight": args.far_weight}
        variants = [("spectral+descent", group), ("random+descent", {"init": "random", **group}),
                    ("spectral+descent", {**far, **group})]
        l_de = distance.l_de(d_hat, distance.ExactDistance().matrix(data, test))
        rows += [{**row, **info, "l_de": l_de} for row in
                 dense_rows(f"learned-{kind}", d_hat, data.orientations[test], variants, args)]
    return rows


def frame_row(distances: str, images_kind: str, images: NDArray, recovered: Any,
              true: FloatArray, args: argparse.Namespace, symmetry: str = "C1",
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``resolve_frame`` on recovered orientations: e_or before and after, branch, confidence."""
    from cryoem import commonlines, recovery

    print(f"  frame: {distances} distances, {images_kind} images (N={len(true)})",
          file=sys.stderr)
    before, _ = harness.score(recovered.quaternions, true, symmetry, "e_or_before_frame",
                              o4_restarts=args.o4_restarts)
    frame, seconds, memory = measure(lambda: commonlines.resolve_frame(
        images, recovered.quaternions, seed=args.seed, progress=args.progress),
        not args.no_tracemalloc)
    after, _ = harness.score(recovery.to_asymmetric_unit(frame.quaternions, symmetry), true,
                             symmetry)
    row = {"part": "frame", "n": len(true),
           "method": f"{distances} distances, {images_kind} images",
           "options": {"images": images_kind}, "seconds": seconds, **memory,
           "size": int(images.shape[-1]), **before, **after,
           "branch": "transposed" if frame.transposed else "plain",
           "transposed": frame.transposed, "frame_rotation": frame.rotation,
           "confidence": frame.confidence, "distinguishable": frame.distinguishable,
           "score": frame.score, "runner_up": frame.runner_up, "score_noise": frame.noise,
           "recovery_seconds": recovered.seconds, "objective_final": recovered.final_loss,
           "init_residual": recovered.init_residual, **(extra or {})}
    return set_goal(row, f"frame step <{GOAL_FRAME_SECONDS:g}s", seconds < GOAL_FRAME_SECONDS)


def frame(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 5: e_or before and after ``resolve_frame``: exact distances between ``--n``
    projections (noiseless and at ``--snr``), then each learned model's test split."""
    from cryoem import distance, projection, recovery, volumes

    volume = volumes.resolve(args.protein or volumes.DEFAULT_PROTEIN, args.size)
    true = true_orientations(args.n, args.seed)
    clean, image_seconds = harness.timed(lambda: projection.project(volume.data, true))
    noisy, _ = projection.add_noise(clean, args.snr,
                                    seed=np.random.default_rng([args.seed, NOISE_STREAM]))
    d = distance.ExactDistance().matrix(in_memory_dataset(true))
    recovered = recovery.recover(d, steps=args.steps, seed=args.seed, progress=args.progress)
    extra = {"protein": volume.name, "image_seconds": image_seconds,
             "l_or": recovery.loss(recovered.quaternions, d)}
    rows = [frame_row("exact", "noiseless", clean, recovered, true, args,
                      extra={**extra, "snr": None}),
            frame_row("exact", f"SNR {args.snr:g}", noisy, recovered, true, args,
                      extra={**extra, "snr": args.snr})]
    for kind, data, test, d_hat, info, symmetry in learned_sets(args, "frame-learned", rows):
        recovered = recovery.recover(d_hat, steps=args.steps, seed=args.seed,
                                     progress=args.progress,
                                     **({} if symmetry == "C1" else {"symmetry": symmetry}))
        snr = info["snr"]
        images = ("noiseless" if snr is None or not math.isfinite(float(snr))
                  else f"SNR {float(snr):g}")
        rows.append(frame_row(f"learned-{kind}", images, data.projections[test], recovered,
                              data.orientations[test], args, symmetry, extra={
                                  **info, "l_or": recovery.loss(recovered.quaternions, d_hat,
                                                                symmetry=symmetry)}))
    return rows


def align_large(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 6: ``align_physical`` and ``align_o4`` on the truth mirrored, rotated and each
    orientation turned by ``|N(0, --align-noise²)|`` rad."""
    from cryoem import alignment, rotations

    rng = np.random.default_rng(args.seed)
    true = rotations.sample_uniform(args.n_align, seed=rng)
    angles = np.abs(rng.normal(0.0, args.align_noise, len(true)))
    noise = rotations.axis_angle_to_quaternion(rng.standard_normal((len(true), 3)), angles)
    moved = rotations.multiply(alignment.flip_handedness(true), rotations.sample_uniform(1, rng))
    estimate = rotations.canonical(rotations.multiply(noise, moved))
    rows = []
    for name, align, kwargs in (("align_physical", alignment.align_physical, {}),
                                ("align_o4", alignment.align_o4,
                                 {"restarts": args.o4_restarts})):
        fit, seconds, memory = measure(lambda: align(estimate, true, **kwargs),
                                       not args.no_tracemalloc)
        key = "e_or" if name == "align_physical" else "e_or_o4"
        row = {"part": "align-large", "n": args.n_align, "method": name,
               "options": {"align_noise": args.align_noise}, "seconds": seconds, **memory,
               key: fit.mean, f"{key}_median": fit.median,
               "perturbation_mean": float(np.mean(angles))}
        rows.append(set_goal(row, f"<{GOAL_ALIGN_SECONDS:g}s", seconds < GOAL_ALIGN_SECONDS)
                    if name == "align_physical" else row)
    return rows


RUNNERS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "exact-1650": exact_1650, "exact-large": exact_large, "perturbed-0.8": perturbed,
    "learned": learned, "frame": frame, "align-large": align_large}


def part_settings(args: argparse.Namespace, part: str) -> dict[str, Any]:
    """What a part's rows depend on: its options, threads, and the learned models' files."""
    settings = {name: getattr(args, name) for name in PART_OPTIONS[part]}
    settings.update(threads=args.threads, tracemalloc=not args.no_tracemalloc)
    if part in ("learned", "frame"):
        for kind in ("clean", "noisy"):
            found = learned_inputs(args, kind)
            settings[kind] = found if isinstance(found, str) else {
                "dataset": str(found[1]), "model": harness.model_info(str(found[0]))["sha256"]}
    return settings


def goal(row: dict[str, Any]) -> str:
    return "" if "goal" not in row else f"{'met' if row['goal_met'] else 'MISSED'} ({row['goal']})"


COLUMNS = [Column("part", lambda r: r["part"]), Column("N", lambda r: r["n"], "d"),
           Column("method / options", lambda r: r["method"]),
           Column("e_or_o4", lambda r: r.get("e_or_o4")),
           Column("e_or before frame", lambda r: r.get("e_or_before_frame")),
           Column("e_or", lambda r: r.get("e_or")), Column("L_OR", lambda r: r.get("l_or"), ".3e"),
           Column("frame conf.", lambda r: r.get("confidence"), ".1f"),
           Column("seconds", lambda r: r["seconds"], ".2f"),
           Column("memory MB", lambda r: r.get("peak_rss_mb"), ".0f"), Column("goal", goal)]


def print_tables(rows: list[dict[str, Any]], skipped: list[dict[str, Any]]) -> None:
    print(harness.table(rows, COLUMNS))
    print("e_or_o4 = align_o4 mean, e_or = align_physical mean (rad); L_OR = mean (d̂ − d_q)² "
          "(rad²); seconds = the call (distances apart); memory = peak RSS during the call.\n"
          "Distances fix orientations only up to O(4): e_or is large whenever the recovered "
          "frame differs by a left rotation, however good e_or_o4 is.  Frame rows: e_or before "
          "and after commonlines.resolve_frame, its confidence (margin over the runner-up in "
          "standard errors; > 5: distinguishable) and its seconds.")
    missed = [f"{r['part']} {r['method']}" for r in rows if r.get("o4_missed_minimum")]
    if missed:
        print("align_o4 missed its minimum (try --o4-restarts 32) in: " + "; ".join(missed))
    for s in skipped:
        print(f"{s['status']} {s.get('part') or s['scenario']['name']}: {s['reason']}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts, print the tables and write the JSON."""
    args = parse_args(argv)
    threads = harness.apply_threads(args.threads)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    part_seconds: dict[str, float] = {}
    start = time.perf_counter()
    with Harness("orientation_recovery", args.out, config=vars(args), threads=threads,
                 fresh=args.fresh, reuse_stale=args.reuse_stale) as bench:
        for part in [part for part in PARTS if part in args.parts]:
            print(f"--- {part}", file=sys.stderr)
            begin = time.perf_counter()
            got = bench.run_rows(Scenario(part, part_settings(args, part),
                                          lambda part=part: RUNNERS[part](args)))
            rows += [r for r in got if r.get("status") not in ("skipped", "failed")]
            skipped += [r for r in got if r.get("status") in ("skipped", "failed")]
            part_seconds[part] = time.perf_counter() - begin
            bench.write({"rows": rows, "skipped": skipped, "part_seconds": part_seconds,
                         "seconds": time.perf_counter() - start})
        print_tables(rows, skipped)
        print(f"wrote {args.out}")
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
