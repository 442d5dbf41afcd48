"""Benchmark ``cryoem.projection.project`` against ASPIRE's ``Volume.project``.

For each box size ``L`` the default protein (``cryoem.volumes.resolve("4ake",
L)``) is projected along ``N`` uniformly random orientations, in single
precision, and the best of ``--repeats`` timed calls is kept (after one
warm-up call on a few orientations).  When ASPIRE's separate environment
exists, ``aspire_worker.py`` (next to this file) times ASPIRE on the same
volume and orientations, and the images of the first few orientations are
compared as a convention check.

Conventions (see ``cryoem/rotations.py`` and ``aspire_worker.py``): our
``R_i`` takes volume coordinates to the microscope frame, ASPIRE's rotation
takes the image frame to the volume, so ASPIRE gets ``R_iᵀ``; ASPIRE's images
are line sums divided by ``L``, so they are multiplied by ``L`` before the
comparison.  Our projector keeps only the frequencies inside the disk
``|k| < L/2``; ASPIRE keeps the whole square but zeroes Nyquist for even
``L``.  Both the raw difference and the difference after applying our disk
to ASPIRE's images are reported.

Usage::

    python benchmarks/projection.py [--sizes 64 128] [--n 1000] [--repeats 3] \\
        [--aspire-python /work/aspire-venv/bin/python] [--threads T] \\
        [--out benchmarks/results/projection.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, write_report  # noqa: E402
from numpy.typing import NDArray

HERE = Path(__file__).resolve().parent
WORKER = HERE / "aspire_worker.py"
DEFAULT_ASPIRE_PYTHON = Path("/work/aspire-venv/bin/python")
DEFAULT_OUT = HERE / "results" / "projection.json"
PROTEIN = "4ake"
WARMUP_ORIENTATIONS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="box sizes L")
    p.add_argument("--n", type=int, default=1000, help="orientations per size")
    p.add_argument("--repeats", type=int, default=3, help="timed calls; the best is kept")
    p.add_argument("--aspire-python", type=Path, default=DEFAULT_ASPIRE_PYTHON,
                   help="Python of the environment with ASPIRE installed")
    p.add_argument("--threads", type=int, help="threads for both projectors (default: all cores)")
    p.add_argument("--compare", type=int, default=20,
                   help="orientations whose images are compared with ASPIRE's")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    return p.parse_args(argv)


def time_cryoem(volume: NDArray[np.float32], quaternions: NDArray, repeats: int,
                threads: int | None) -> tuple[dict[str, Any], NDArray[np.float32]]:
    """Best-of-``repeats`` timing of our projector; returns the timings and the images."""
    from cryoem.projection import project

    project(volume, quaternions[:WARMUP_ORIENTATIONS], nthreads=threads)
    times: list[float] = []
    images = None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        images = project(volume, quaternions, precision="single", nthreads=threads)
        times.append(time.perf_counter() - t0)
    assert images is not None
    best = min(times)
    return {"seconds": best, "seconds_all": times,
            "images_per_second": len(quaternions) / best}, images


def run_aspire(python: Path, volume: NDArray[np.float32], aspire_rotations: NDArray,
               repeats: int, threads: int | None,
               compare: int) -> tuple[dict[str, Any] | None, NDArray[np.float32] | None, str]:
    """Run ``aspire_worker.py`` in ASPIRE's environment.

    Returns the worker's JSON (``None`` on failure), the images of the first
    ``compare`` orientations (``None`` on failure) and an error message
    (empty on success).
    """
    with tempfile.TemporaryDirectory(prefix="bench_projection_") as tmp:
        tmpdir = Path(tmp)
        np.save(tmpdir / "volume.npy", volume.astype(np.float32))
        np.save(tmpdir / "rotations.npy", aspire_rotations.astype(np.float32))
        cmd = [str(python), str(WORKER), "--volume", str(tmpdir / "volume.npy"),
               "--rotations", str(tmpdir / "rotations.npy"), "--out", str(tmpdir / "result.json"),
               "--images", str(tmpdir / "images.npy"), "--images-first", str(compare),
               "--repeats", str(repeats), "--warmup", str(WARMUP_ORIENTATIONS),
               "--dtype", "float32"]
        env = dict(os.environ)
        if threads is not None:
            cmd += ["--threads", str(threads)]
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return None, None, f"worker exited with {proc.returncode}: " + " | ".join(tail)
        result = json.loads((tmpdir / "result.json").read_text())
        images = np.load(tmpdir / "images.npy")
    return result, images, ""


def relative_difference(ours: NDArray, theirs: NDArray) -> float:
    """``‖theirs − ours‖ / ‖ours‖`` over all pixels of all images."""
    ours64, theirs64 = ours.astype(np.float64), theirs.astype(np.float64)
    return float(np.linalg.norm(theirs64 - ours64) / np.linalg.norm(ours64))


def disk_filter(images: NDArray) -> NDArray[np.float64]:
    """Keep only the frequencies ``|k| < L/2`` of each image (our projector's band)."""
    size = images.shape[-1]
    k = np.fft.fftfreq(size) * size
    mask = k[:, None] ** 2 + k[None, :] ** 2 < (size / 2) ** 2
    return np.fft.ifft2(np.fft.fft2(images.astype(np.float64)) * mask).real


def benchmark_size(size: int, args: argparse.Namespace, aspire_ok: bool) -> dict[str, Any]:
    """All measurements for one box size."""
    from cryoem import rotations, volumes

    volume = np.ascontiguousarray(volumes.resolve(PROTEIN, size).data, dtype=np.float32)
    quaternions = rotations.sample_uniform(args.n, seed=0)
    ours, images = time_cryoem(volume, quaternions, args.repeats, args.threads)
    row: dict[str, Any] = {"L": size, "n": args.n, "cryoem": ours, "aspire": None,
                           "ratio": None, "image_rel_diff": None,
                           "image_rel_diff_disk": None, "compared_images": 0}
    if not aspire_ok:
        return row
    matrices = rotations.quaternion_to_matrix(quaternions)
    compare = max(1, min(args.compare, args.n))
    result, theirs, error = run_aspire(args.aspire_python, volume,
                                       np.swapaxes(matrices, -1, -2), args.repeats,
                                       args.threads, compare)
    if result is None or theirs is None:
        row["aspire_error"] = error
        print(f"L={size}: ASPIRE failed: {error}", file=sys.stderr)
        return row
    theirs = theirs * size  # ASPIRE divides the line sum by L
    row.update(
        aspire=result,
        ratio=ours["images_per_second"] / result["images_per_second"],
        image_rel_diff=relative_difference(images[:compare], theirs),
        image_rel_diff_disk=relative_difference(images[:compare], disk_filter(theirs)),
        compared_images=compare,
    )
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The human-readable summary."""
    header = f"{'L':>5} {'N':>7} {'cryoem img/s':>13} {'ASPIRE img/s':>13} {'ratio':>7} " \
             f"{'rel.diff':>9} {'rel.diff(disk)':>15}"
    print(header)
    print("-" * len(header))
    for r in rows:
        aspire_rate = r["aspire"]["images_per_second"] if r["aspire"] else None
        print(f"{r['L']:>5} {r['n']:>7} {r['cryoem']['images_per_second']:>13.1f} "
              f"{_fmt(aspire_rate, '.1f'):>13} {_fmt(r['ratio'], '.2f'):>7} "
              f"{_fmt(r['image_rel_diff'], '.2e'):>9} {_fmt(r['image_rel_diff_disk'], '.2e'):>15}")
    print("ratio = cryoem img/s / ASPIRE img/s; rel.diff = ‖L·ASPIRE − cryoem‖/‖cryoem‖ "
          "on the compared images, (disk) after band-limiting ASPIRE's to |k| < L/2.")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the table and write the JSON."""
    args = parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    aspire_ok = args.aspire_python.exists()
    if not aspire_ok:
        print(f"ASPIRE Python not found at {args.aspire_python}: timing cryoem only "
              "(see benchmarks/README.md to set it up).", file=sys.stderr)
    rows = []
    for size in args.sizes:
        rows.append(benchmark_size(size, args, aspire_ok))
        print(f"L={size}: done", file=sys.stderr)
    print_table(rows)
    report = {
        "benchmark": "projection",
        "protein": PROTEIN,
        "precision": "single",
        "repeats": args.repeats,
        "aspire_python": str(args.aspire_python) if aspire_ok else None,
        "machine": machine_info(args.threads),
        "results": rows,
    }
    write_report(report, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
