"""Is refinement an ab-initio method?  ``refinement.refine`` from random orientations.

The baseline a route "from particles alone" must beat: no distances, no truth — every
image starts at a random orientation (and zero shift), then the pipeline's refinement
runs its global passes over all of SO(3) and its local iterations.  The truth is read only
to score after each iteration (physical E_OR).  Prints a table, writes JSON.

    python benchmarks/random_start.py [--snr inf] [--n 400] [--global-iterations 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import machine_info, positive_snr, snr_label, write_report  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Refine from random orientations, print the error per iteration, write the JSON."""
    from cryoem import alignment, datasets, refinement, rotations, volumes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", default="4ake")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--snr", type=positive_snr, default=float("inf"))
    p.add_argument("--n", type=int, default=400, help="particles")
    p.add_argument("--max-shift", type=float, default=2.0)
    p.add_argument("--global-iterations", type=int, default=4)
    p.add_argument("--iterations", type=int, default=8, help="local iterations at most")
    p.add_argument("--work-dir", type=Path, default=Path("data/benchmarks/random_start"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/random_start.json"))
    args = p.parse_args(argv)

    path = args.work_dir / f"{args.volume}_{args.size}_{args.n}_snr{snr_label(args.snr)}.h5"
    path = path.with_name(path.name.replace("/", "-"))
    if not path.exists():
        datasets.generate(volumes.resolve(args.volume, args.size), args.n, path, snr=args.snr,
                          max_shift=args.max_shift, test_size=args.n, seed=0)
    data = datasets.load(path)
    start = rotations.sample_uniform(args.n, seed=1)

    def score(_: int, q, __) -> dict[str, float]:  # the truth, only to score
        return {"e_or_rad": alignment.align_physical(q, data.orientations).mean}

    began = time.perf_counter()
    result = refinement.refine(data.projections, start, pixel_size=data.pixel_size,
                               iterations=args.iterations,
                               global_iterations=args.global_iterations, seed=0,
                               callback=score)
    seconds = time.perf_counter() - began
    final = alignment.align_physical(result.quaternions, data.orientations)
    print(f"{'iteration':>9} {'global':>6} {'E_OR rad':>9} {'half-map FSC Å':>15}")
    for row in result.history:
        print(f"{row['iteration']:>9} {int(row['global']):>6} {row['e_or_rad']:>9.3f} "
              f"{row['halfmap_fsc0143_angstrom']:>15.1f}")
    print(f"from random orientations: physical E_OR {final.mean:.3f} rad after "
          f"{len(result.history)} iterations in {seconds:.0f} s")
    write_report({"benchmark": "random_start", "settings": {k: v for k, v in vars(args).items()},
                  "start_e_or_rad": alignment.align_physical(start, data.orientations).mean,
                  "e_or_rad": final.mean, "e_or_median_rad": final.median,
                  "history": result.history, "seconds": seconds,
                  "machine": machine_info(None)}, args.out)


if __name__ == "__main__":
    main()
