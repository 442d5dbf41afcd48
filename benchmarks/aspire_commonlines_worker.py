"""Run ASPIRE's common-lines orientation estimation (``CLSyncVoting``) on images from a file.

Like ``aspire_worker.py``, this script runs with the Python of ASPIRE's *own*
virtual environment (``/work/aspire-venv``), never the project's, and talks
to the caller only through files: images ``(N, L, L)`` in a ``.npy`` file in,
the estimated rotation matrices (``.npy``) and a JSON result out.

Usage::

    aspire-venv/bin/python aspire_commonlines_worker.py --images IMAGES.npy \\
        --rotations-out ROTATIONS.npy --out RESULT.json [--n-theta 360] \\
        [--pixel-size 1.0] [--dtype float32] [--threads 1] [--class-averages N_NBOR]

What is timed (``seconds``): building ``aspire.source.ArrayImageSource`` and
``aspire.abinitio.CLSyncVoting(src, n_theta=...)``, then
``estimate_rotations()``: the polar Fourier transform of the (masked) images,
the common-lines matrix (every pair, every shift within ``max_shift``), the
voting synchronisation matrix and its leading eigenvectors.

``--downsample L`` and ``--whiten`` apply ASPIRE's downsampling and whitening first, and
``--classes K --averages-out A.npy`` keep ASPIRE's K best classes, writing their averages
and the images they are centred on (the start of an ab-initio map, as ASPIRE's own
pipelines make it).

``--class-averages N_NBOR`` runs ASPIRE's ab-initio route instead: class averages
first (``aspire.denoising.DefaultClassAvgSource(src, n_nbor=N_NBOR)``: rotationally
invariant classification, selection, averaging; at least 300 images with its
defaults), then ``CLSyncVoting`` on the averages.  ASPIRE keeps one class per image,
each centred on its reference image (``class_indices[k, 0] == k``; the averages come
in ``selection_indices`` order), so average ``j`` takes the orientation of image
``selection_indices[j]``: the rotations are written back in the images' order.  Its
``seconds`` include the classification and averaging (``class_average_seconds``).
Checked with ASPIRE 0.14.3.

Conventions (ASPIRE 0.14.3, see ``aspire_worker.py``): images are indexed
``[y, x]`` with the centre at ``L // 2``, as in ``cryoem``; ASPIRE's rotation
``R`` maps the image frame into the volume frame (the beam is ``R[:, 2]``),
so it is the *transpose* of ``cryoem``'s ``R_i`` (volume → microscope).  The
matrices are written as ASPIRE returns them; the caller transposes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROTATION_CONVENTION = ("aspire: R maps the image frame into the volume frame (beam = R[:, 2]); "
                       "cryoem's R_i = R.T")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, type=Path, help="(N, L, L) .npy")
    p.add_argument("--rotations-out", required=True, type=Path,
                   help="(N, 3, 3) .npy: ASPIRE's estimated rotations, ASPIRE's convention")
    p.add_argument("--out", required=True, type=Path, help="result JSON path")
    p.add_argument("--n-theta", type=int, default=360,
                   help="angular resolution of the polar Fourier lines (even; ASPIRE's default)")
    p.add_argument("--pixel-size", type=float, default=1.0,
                   help="Å per pixel (ArrayImageSource needs one; the result ignores it)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="ASPIRE's working precision (the images are stored in float32)")
    p.add_argument("--threads", type=int, default=None,
                   help="set OMP/BLAS thread counts (before NumPy is imported)")
    p.add_argument("--class-averages", type=int, default=0, metavar="N_NBOR",
                   help="class averages of N_NBOR neighbours first (0: none, the default)")
    p.add_argument("--downsample", type=int, default=0, metavar="L",
                   help="ASPIRE's downsample to L px first (0: none)")
    p.add_argument("--whiten", action="store_true",
                   help="ASPIRE's whitening first (AnisotropicNoiseEstimator), as its ab-initio "
                        "pipelines do")
    p.add_argument("--classes", type=int, default=0, metavar="K",
                   help="with --class-averages: keep ASPIRE's K best classes (its selection's "
                        "first K, as its ab-initio pipeline does) and write the rotations in "
                        "their order, not the images' (0: every class)")
    p.add_argument("--averages-out", type=Path, default=None,
                   help="with --classes: (K, L, L) .npy of the averages, and beside it "
                        "*_images.npy: the image each is centred on")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(args.threads)
    images_path = args.images.resolve()
    rotations_path = args.rotations_out.resolve()
    out_path = args.out.resolve()
    averages_path = args.averages_out.resolve() if args.averages_out is not None else None
    # ASPIRE writes a logs/ folder into the working directory on import.
    with tempfile.TemporaryDirectory(prefix="aspire_cl_worker_") as scratch:
        os.chdir(scratch)
        import numpy as np

        import aspire
        from aspire.abinitio import CLSyncVoting
        from aspire.denoising import DefaultClassAvgSource
        from aspire.source import ArrayImageSource

        images = np.load(images_path).astype(args.dtype, copy=False)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise SystemExit(f"images must be (N, L, L), got {images.shape}")
        start = time.perf_counter()
        source = ArrayImageSource(images, pixel_size=args.pixel_size)
        if args.downsample:
            source = source.downsample(args.downsample)
        if args.whiten:
            from aspire.noise import AnisotropicNoiseEstimator

            source = source.whiten(AnisotropicNoiseEstimator(source)).cache()
        order, averaging = None, 0.0
        if args.class_averages:
            source = DefaultClassAvgSource(source, n_nbor=args.class_averages)
            order = np.asarray(source.selection_indices)
            if args.classes:  # the best K: ASPIRE's selection puts them first
                source, order = source[:args.classes], order[:args.classes]
            averages = source.images[:].asnumpy()  # classify, select, average: timed apart
            if not args.classes and len(order) != len(images):
                raise SystemExit(f"class selection kept {len(order)} of {len(images)} classes")
            averaging = time.perf_counter() - start
        orientation = CLSyncVoting(source, n_theta=args.n_theta)
        orientation.estimate_rotations()
        rotations = np.asarray(orientation.rotations, dtype=np.float64)
        if order is not None and not args.classes:  # average j is centred on image order[j]
            rotations = rotations[np.argsort(order)]
        seconds = time.perf_counter() - start
        np.save(rotations_path, rotations)
        if args.classes and averages_path is not None:  # resolved before the chdir
            np.save(averages_path, averages.astype(np.float32))
            np.save(averages_path.with_name(averages_path.stem + "_images.npy"), order)

    result = {
        "aspire_version": aspire.__version__,
        "python": platform.python_version(),
        "method": ("aspire.denoising.DefaultClassAvgSource + " if args.class_averages else "")
                  + "aspire.abinitio.CLSyncVoting",
        "class_averages_n_nbor": args.class_averages or None,
        "class_average_seconds": averaging,
        "classes_kept": int(len(rotations)),
        "n": int(images.shape[0]),
        "L": int(args.downsample or images.shape[-1]),
        "whitened": args.whiten,
        "n_theta": args.n_theta,
        "n_rad": int(orientation.n_rad),
        "max_shift_px": int(orientation.max_shift),
        "dtype": args.dtype,
        "pixel_size": args.pixel_size,
        "seconds": seconds,
        "threads": {variable: os.environ.get(variable) for variable in THREAD_VARIABLES},
        "rotation_convention": ROTATION_CONVENTION,
    }
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
