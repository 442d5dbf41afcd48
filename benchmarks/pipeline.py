"""Time the README's main job: ``cryoem pipeline`` with its defaults, stage by stage.

Goal: the whole default run in under 15 minutes on a 2-core CPU.  Prints a
table of stage times and the main metrics and writes them as JSON, with the
machine and the provenance (commit, command) that produced them.  The run
folder is emptied first: nothing is reused.  ``--route ab-initio`` runs the same
configuration (the same simulated particles, the same test split) with the first
guess from the images alone instead of distances learned on the true map: the
like-for-like comparison of the two routes.  ``--snr`` runs the same defaults on noisy
particles (``pipeline_snr1_16.json`` for 1/16), with the training budget the pipeline picks for
that SNR; ``--max-shift`` shifts the particles (``pipeline_snr1_16_shift2.json`` for 2 px at
SNR 1/16).

    python benchmarks/pipeline.py [--route distances|ab-initio] [--snr 1/16] [--max-shift PX]
                                  [--out-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import machine_info, positive_snr, snr_tag, write_report  # noqa: E402

GOAL_SECONDS = 15 * 60


def main(argv: list[str] | None = None) -> None:
    """Run the default pipeline, print its stage times and metrics, write the JSON."""
    from cryoem import pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=pipeline.ROUTES, default=pipeline.PipelineConfig().route,
                        help="first-guess route (default: the pipeline's)")
    parser.add_argument("--snr", type=positive_snr, default=float("inf"),
                        help="the simulated particles' SNR (default: inf, the quick start's)")
    parser.add_argument("--max-shift", type=float, default=0.0,
                        help="the simulated particles' shifts, pixels at most (default: 0)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="run folder, emptied first (default: data/benchmarks/pipeline, "
                             "or pipeline-ab-initio)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: benchmarks/results/pipeline.json (the default route), "
                             "pipeline_ab_initio.json, pipeline_snr1_16.json, …")
    parser.add_argument("--images", type=Path, default=Path("images"),
                        help="where the README's two figures of the default run are copied")
    args = parser.parse_args(argv)
    noiseless = args.snr == float("inf")
    default = args.route == pipeline.PipelineConfig().route and noiseless and not args.max_shift
    parts = ([] if args.route == pipeline.PipelineConfig().route else [args.route]) + (
        [] if noiseless else [f"snr{snr_tag(args.snr)}"]) + (
        [f"shift{args.max_shift:g}"] if args.max_shift else [])
    args.out_dir = args.out_dir or Path("data/benchmarks/" + "-".join(["pipeline", *parts]))
    args.json = args.json or Path("benchmarks/results/"
                                  + "_".join(["pipeline", *parts]).replace("-", "_") + ".json")
    shutil.rmtree(args.out_dir, ignore_errors=True)
    start = time.perf_counter()
    metrics = pipeline.run(pipeline.PipelineConfig(route=args.route, snr=args.snr,
                                                   max_shift=args.max_shift),
                           args.out_dir, progress=False)
    wall = time.perf_counter() - start
    rows = [{"stage": stage, "seconds": seconds} for stage, seconds in metrics["timings_s"].items()]
    rows.append({"stage": "total (wall)", "seconds": round(wall, 1),
                 "goal_met": wall < GOAL_SECONDS})
    print(f"{'stage':<14} {'seconds':>8}")
    for row in rows:
        print(f"{row['stage']:<14} {row['seconds']:>8.1f}")
    print(pipeline.summary(metrics))
    print(f"goal (< {GOAL_SECONDS} s): {'met' if wall < GOAL_SECONDS else 'MISSED'}")
    write_report({"benchmark": "pipeline", "rows": rows, "metrics": metrics,
                  "wall_seconds": wall, "machine": machine_info(None)}, args.json)
    for figure, name in (("dp_dq.png", "pipeline-dp-dq.png"), ("map.png", "pipeline-map.png")):
        if default and (args.out_dir / "figures" / figure).exists():
            args.images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.out_dir / "figures" / figure, args.images / name)


if __name__ == "__main__":
    main()
