"""Time ASPIRE's volume projection, for comparison with ``cryoem``'s projector.

This script is run by the Python of a *separate* virtual environment that
has ASPIRE installed (``python -m venv aspire-venv && aspire-venv/bin/pip
install aspire``), never by the core project's environment: ASPIRE pins
``finufft`` to an exact version and pulls in heavy dependencies (cvxpy,
scikit-image, ...) that must not leak into ``cryoem``'s own dependency set.
The caller therefore talks to it only through files: a volume and rotation
matrices in ``.npy`` files, a JSON result (and optionally the images) out.

Usage::

    aspire-venv/bin/python aspire_worker.py --volume VOL.npy \\
        --rotations ROT.npy --out RESULT.json [--images IMAGES.npy] \\
        [--images-first K] [--repeats 1] [--threads T] [--dtype float32]

With ``--images-first K`` only the first ``K`` orientations' images are
saved, projected again after (and outside) the timed calls.

The timed call is ``aspire.volume.Volume(vol).project(rotations)``: one
type-2 NUFFT of the volume on the N central slices, then a centred inverse
2D FFT per image.  ASPIRE's conventions (checked with ASPIRE 0.14.3):

* The volume array is indexed ``[z, y, x]``; images are indexed ``[y, x]``
  (row = y, column = x); the centre of both is at index ``L // 2``.
* A rotation ``R`` maps image-frame coordinates to volume coordinates:
  image pixel (x, y) samples the line ``R @ (x, y, t)``, so a voxel at
  volume position ``p`` (x, y, z, relative to the centre) lands at
  ``(x, y) = (R.T @ p)[:2]`` and the beam direction is ``R[:, 2]``.
  The identity projects along the array's first axis.
* Amplitude: image = line sum of voxel values along the beam / L.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROTATION_CONVENTION = (
    "aspire: vol[z,y,x], image[y,x], centre L//2; R maps image frame -> volume "
    "frame: voxel at p=(x,y,z) lands at image (x,y)=(R.T@p)[:2], beam=R[:,2]; "
    "image = line sum / L"
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volume", required=True, type=Path, help="(L,L,L) .npy")
    p.add_argument("--rotations", required=True, type=Path, help="(N,3,3) .npy")
    p.add_argument("--out", required=True, type=Path, help="result JSON path")
    p.add_argument("--images", type=Path, help="optional (N,L,L) .npy output")
    p.add_argument(
        "--images-first",
        type=int,
        help="save only the first K images (re-projected, untimed)",
    )
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions")
    p.add_argument("--warmup", type=int, default=4, help="rotations in warm-up")
    p.add_argument("--threads", type=int, help="set OMP/BLAS thread counts")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    return p.parse_args()


def set_threads(n: int) -> None:
    """Must run before numpy / finufft are imported."""
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        os.environ[var] = str(n)


def available_threads() -> int:
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        set_threads(args.threads)
    # Resolve paths now: ASPIRE creates a ``logs/`` folder in the working
    # directory on import, so the import happens inside a scratch directory.
    vol_path, rot_path = args.volume.resolve(), args.rotations.resolve()
    out_path = args.out.resolve()
    img_path = args.images.resolve() if args.images else None

    with tempfile.TemporaryDirectory(prefix="aspire_worker_") as scratch:
        os.chdir(scratch)
        import finufft
        import numpy as np

        import aspire
        from aspire.volume import Volume

        dtype = np.dtype(args.dtype)
        vol = np.load(vol_path).astype(dtype, copy=False)
        rots = np.load(rot_path).astype(dtype, copy=False)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise SystemExit(f"volume must be (L,L,L), got {vol.shape}")
        if rots.ndim != 3 or rots.shape[1:] != (3, 3):
            raise SystemExit(f"rotations must be (N,3,3), got {rots.shape}")
        n, L = rots.shape[0], vol.shape[0]

        volume = Volume(vol)
        volume.project(rots[: max(1, min(args.warmup, n))])  # plans, threads

        times: list[float] = []
        images = None
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            images = volume.project(rots)
            times.append(time.perf_counter() - t0)

        if img_path is not None:
            if args.images_first is not None:
                images = volume.project(rots[: max(1, args.images_first)])
            assert images is not None
            np.save(img_path, images.asnumpy().astype(np.float32))

    best = min(times)
    result = {
        "aspire_version": aspire.__version__,
        "finufft_version": finufft.__version__,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "n": int(n),
        "L": int(L),
        "seconds": best,
        "seconds_all": times,
        "images_per_second": n / best,
        "threads": available_threads(),
        "rotation_convention": ROTATION_CONVENTION,
    }
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
