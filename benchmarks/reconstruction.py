"""Benchmark ``cryoem.reconstruction``: resolution and time of a map from known orientations.

For each box size ``L`` (``--sizes``) and SNR (``--snrs``), a dataset of
``--n`` projections of the default protein (``cryoem.volumes.resolve("4ake",
L)``, uniform orientations, no shifts, no CTF, ``seed``) is generated in a
temporary folder, and ``reconstruct_dataset`` rebuilds the map from the
**true** orientations (an oracle: this measures the reconstruction, not the
recovery).  The map is scored by its FSC against the ground-truth map at the
same size (threshold 0.5, ``cryoem.resolution``), in Å and in pixels
(Nyquist is 2 pixels).  The time is the wall clock of the
``reconstruct_dataset`` call (back-projection, kernel and conjugate gradients),
after one untimed warm-up on a few images.

Goal (L = 64, noiseless, N = 1,650): resolution within 2.3 pixels and under
60 s.  The other rows are reported without a goal.

Usage::

    python benchmarks/reconstruction.py [--sizes 64 128] [--snrs inf 0.0625] [--n 1650] \\
        [--iterations 30] [--regularization 1e-3] [--half-maps] [--threads T] \\
        [--out benchmarks/results/reconstruction.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, write_report  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "reconstruction.json"
PROTEIN = "4ake"
GOAL_SIZE, GOAL_N, GOAL_PIXELS, GOAL_SECONDS = 64, 1650, 2.3, 60.0
WARMUP_IMAGES = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="box sizes L")
    p.add_argument("--snrs", type=float, nargs="+", default=[math.inf, 0.0625],
                   help="signal-to-noise ratios (inf: noiseless; default: inf 0.0625)")
    p.add_argument("--n", type=int, default=GOAL_N, help="projections per dataset (default: 1650)")
    p.add_argument("--iterations", type=int, default=30,
                   help="conjugate-gradient budget (reconstruct's default: 30)")
    p.add_argument("--regularization", type=float, default=1e-3,
                   help="Tikhonov weight relative to the mean diagonal (default: 1e-3)")
    p.add_argument("--half-maps", action="store_true",
                   help="also reconstruct two random halves and report their masked FSC at 0.143")
    p.add_argument("--threads", type=int, help="OMP threads for finufft (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    return p.parse_args(argv)


def goal_applies(size: int, snr: float, n: int) -> bool:
    """Whether the row is the one with a stated goal."""
    return size == GOAL_SIZE and math.isinf(snr) and n == GOAL_N


def benchmark_case(size: int, snr: float, args: argparse.Namespace,
                   work: Path) -> dict[str, Any]:
    """Generate one dataset, reconstruct it from its true orientations, score and time it."""
    from cryoem import datasets, reconstruction, resolution, volumes

    volume = volumes.resolve(PROTEIN, size)
    start = time.perf_counter()
    path = datasets.generate(volume, args.n, work / f"{PROTEIN}-L{size}-snr{snr:g}.h5", snr=snr,
                             seed=args.seed, overwrite=True)
    generate_seconds = time.perf_counter() - start
    data = datasets.load(path)
    options = dict(iterations=args.iterations, regularization=args.regularization)
    reconstruction.reconstruct_dataset(data, indices=np.arange(min(WARMUP_IMAGES, args.n)),
                                       **options)
    start = time.perf_counter()
    result = reconstruction.reconstruct_dataset(data, **options)
    seconds = time.perf_counter() - start
    pixel = data.pixel_size
    curve = resolution.fsc(result.data, data.volume, pixel)
    angstrom = curve.resolution(resolution.THRESHOLD_TRUTH)
    pixels = angstrom / pixel
    row: dict[str, Any] = {
        "size": size, "snr": snr if math.isfinite(snr) else "inf", "n": args.n,
        "iterations": result.iterations, "seconds": seconds, "resolution_angstrom": angstrom,
        "resolution_pixels": pixels, "pixel_size": pixel, "label": result.label,
        "final_residual": result.residuals[-1] if result.residuals else None,
        "fsc": {"frequencies": curve.frequencies.tolist(), "values": curve.values.tolist()},
        "generate_seconds": generate_seconds, "goal": None,
    }
    if goal_applies(size, snr, args.n):
        row["goal"] = {"max_pixels": GOAL_PIXELS, "max_seconds": GOAL_SECONDS,
                       "met": bool(pixels <= GOAL_PIXELS and seconds < GOAL_SECONDS)}
    if args.half_maps:
        start = time.perf_counter()
        first, second, _ = reconstruction.half_maps(data.projections, data.orientations,
                                                    seed=args.seed, pixel_size=pixel, **options)
        half = resolution.fsc(first.data, second.data, pixel, mask=True)
        row["half_maps"] = {"seconds": time.perf_counter() - start,
                            "resolution_angstrom": half.resolution(resolution.THRESHOLD_HALF_MAPS),
                            "values": half.values.tolist()}
    path.unlink(missing_ok=True)
    return row


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def print_table(rows: list[dict[str, Any]], half_maps: bool) -> None:
    """The human-readable summary."""
    header = (f"{'L':>5} {'SNR':>8} {'N':>6} {'iter.':>6} {'seconds':>8} {'res. (Å)':>9} "
              f"{'res. (px)':>9} {'goal':>7}")
    if half_maps:
        header += f" {'half 0.143 (Å)':>15}"
    print(header)
    print("-" * len(header))
    for r in rows:
        snr = r["snr"] if isinstance(r["snr"], str) else f"{r['snr']:g}"
        goal = "—" if r["goal"] is None else ("met" if r["goal"]["met"] else "missed")
        line = (f"{r['size']:>5} {snr:>8} {r['n']:>6} {r['iterations']:>6} {r['seconds']:>8.2f} "
                f"{r['resolution_angstrom']:>9.2f} {r['resolution_pixels']:>9.2f} {goal:>7}")
        if half_maps:
            line += f" {r['half_maps']['resolution_angstrom']:>15.2f}"
        print(line)
    print(f"FSC 0.5 against the ground-truth map, from the true orientations (oracle). Goal at "
          f"L = {GOAL_SIZE}, noiseless, N = {GOAL_N}: ≤ {GOAL_PIXELS} px (Nyquist 2 px) "
          f"in < {GOAL_SECONDS:g} s.")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table and write the JSON."""
    args = parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_reconstruction_") as tmp:
        for size in args.sizes:
            for snr in args.snrs:
                rows.append(benchmark_case(size, snr, args, Path(tmp)))
                r = rows[-1]
                print(f"L={size} SNR={snr:g}: {r['seconds']:.2f} s, "
                      f"{r['resolution_angstrom']:.2f} Å", file=sys.stderr)
    print_table(rows, args.half_maps)
    for r in rows:  # JSON has no infinity
        r["resolution_angstrom"] = _json_number(r["resolution_angstrom"])
        r["resolution_pixels"] = _json_number(r["resolution_pixels"])
        if "half_maps" in r:
            r["half_maps"]["resolution_angstrom"] = _json_number(
                r["half_maps"]["resolution_angstrom"])
    report = {
        "benchmark": "reconstruction",
        "protein": PROTEIN,
        "orientations": "true (oracle)",
        "threshold": 0.5,
        "config": vars(args),  # write_report turns paths and infinities into strings
        "machine": machine_info(args.threads),
        "results": rows,
    }
    write_report(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
