"""Commands that make, read and write data: volumes, generate, RELION files, scores."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------
# cryoem volumes
# ----------------------------------------------------------------------------
def add_volumes_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--long", action="store_true",
                        help="also print PDB id, symmetry, size and title")


def run_volumes(args: argparse.Namespace) -> int:
    """List the built-in proteins, one per line."""
    from .. import proteins, volumes

    for entry in sorted(proteins.builtin_manifest(), key=lambda e: e["name"]):
        if args.long:
            default = " (default)" if entry["name"] == volumes.DEFAULT_PROTEIN else ""
            print(f"{entry['name']}\t{entry['pdb_id']}\t{entry['symmetry']}\t"
                  f"{entry['n_residues']} residues\t{entry['title']}{default}")
        else:
            print(entry["name"])
    return 0


# ----------------------------------------------------------------------------
# cryoem generate
# ----------------------------------------------------------------------------
def add_generate_args(parser: argparse.ArgumentParser) -> None:
    from ..volumes import DEFAULT_BOX_RATIO, DEFAULT_PROTEIN

    parser.add_argument("--volume", default=DEFAULT_PROTEIN,
                        help="built-in protein (`cryoem volumes`), MRC/PDB/mmCIF file, pdb:XXXX, "
                             "emd:NNNN, phantom[:GROUP] or pseudo:SEED "
                             f"(default: {DEFAULT_PROTEIN})")
    parser.add_argument("--n-projections", type=int, default=5000, metavar="N",
                        help="number of projections (default: 5000)")
    parser.add_argument("--size", type=int, default=64, metavar="L",
                        help="image and box edge in pixels (default: 64)")
    parser.add_argument("--snr", type=float, default=float("inf"),
                        help="signal-to-noise ratio: variance of clean pixels over noise "
                             "variance (default: inf, noiseless)")
    parser.add_argument("--max-shift", type=float, default=0.0, metavar="PX",
                        help="largest in-plane shift in pixels, triangular distribution "
                             "(default: 0)")
    parser.add_argument("--ctf", action="store_true", help="apply a random per-image CTF")
    parser.add_argument("--symmetry", default=None,
                        help="point group of the volume (default: the protein's manifest entry, "
                             "C1 for files); contradicting the manifest is an error")
    parser.add_argument("--sampling", default="uniform",
                        choices=("uniform", "euler-haar", "euler-uniform", "preferred"),
                        help="orientation distribution (default: uniform on SO(3))")
    parser.add_argument("--test-size", type=int, default=None, metavar="M",
                        help="projections in the test split (default: 33%%)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="Å per voxel (default: from the map header, or so that an atomic "
                             f"model's diameter times {DEFAULT_BOX_RATIO} fills the box)")
    parser.add_argument("--resolution", type=float, default=None,
                        help="Å, for atomic models (default: twice the voxel size)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="output dataset FILE.h5")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of sample projections (default: next to --out, same stem)")
    parser.add_argument("--no-figure", action="store_true", help="do not write the figure")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_generate(args: argparse.Namespace) -> int:
    """Simulate projections of a volume into an HDF5 dataset."""
    from .. import datasets, plots, proteins, rotations, volumes

    if args.n_projections < 1 or args.size < 8:
        raise ValueError("--n-projections must be ≥ 1 and --size ≥ 8")
    start = time.perf_counter()
    volume = volumes.resolve(args.volume, args.size, voxel_size=args.voxel_size,
                             resolution=args.resolution)
    if args.symmetry is not None:
        rotations.point_group(args.symmetry)  # validates the symbol
        requested = args.symmetry.upper()
        known = volume.symmetry.upper()
        has_manifest = volume.name in proteins.builtin_names() or volume.name.startswith("phantom")
        if has_manifest and requested != known:
            raise ValueError(f"--symmetry {requested} contradicts {volume.name}'s symmetry {known}")
        volume.symmetry = requested
    path = datasets.generate(
        volume, args.n_projections, args.out, snr=args.snr, max_shift=args.max_shift,
        ctf=args.ctf, sampling=args.sampling, test_size=args.test_size, seed=args.seed,
        progress=not args.quiet, overwrite=args.overwrite,
    )
    if not args.no_figure:
        figure_path = args.figure or path.with_suffix(".png")
        data = datasets.read_images(path, slice(0, min(12, args.n_projections)))
        plots.save(plots.projection_gallery(data), figure_path)
    elapsed = time.perf_counter() - start
    ratio = f", box/particle {volume.box_ratio:.2f}" if volume.box_ratio else ""
    print(f"wrote {path}: {args.n_projections} projections of {volume.name} "
          f"({volume.symmetry}), {args.size}×{args.size} px at {volume.voxel_size:.3g} Å/px"
          f"{ratio}, SNR {args.snr:g}, shifts ≤ {args.max_shift:g} px, "
          f"CTF {'on' if args.ctf else 'off'}, in {elapsed:.1f} s")
    return 0


# ----------------------------------------------------------------------------
# cryoem export-relion / import-relion
# ----------------------------------------------------------------------------
def add_export_relion_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA.h5", help="dataset")
    parser.add_argument("--orientations", type=Path, default=None, metavar="ORIENT.h5",
                        help="recovered orientations (default: the dataset's own)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--overwrite", action="store_true")


def run_export_relion(args: argparse.Namespace) -> int:
    """Write the particles as an MRCS stack and a RELION STAR file."""
    from .. import datasets, recovery, relion

    data = datasets.load(args.data)
    orientations = indices = shifts = None
    if args.orientations is not None:
        orientations, indices, attrs = recovery.load_orientations(args.orientations)
        # The shifts that belong to these orientations: those estimated with them (cryoem
        # refine), else none (zero); never the dataset's own.
        shifts = attrs.get("shifts")
        if shifts is None:
            shifts = np.zeros((len(indices), 2))
        poses = (f"orientations of {args.orientations}, "
                 f"{'their estimated shifts' if 'shifts' in attrs else 'zero shifts (none estimated)'}")
    else:
        kind = data.source("orientations")
        if kind == datasets.ABSENT:
            raise ValueError(f"{args.data} holds no orientations: pass --orientations ORIENT.h5")
        poses = f"the dataset's own poses ({kind.replace('_', ' ')})"
    star = relion.export_relion(data, args.out, orientations=orientations, indices=indices,
                                shifts=shifts, overwrite=args.overwrite)
    count = len(data) if indices is None else len(indices)
    print(f"wrote {star} and its stack: {count} particles at {data.pixel_size:.3g} Å/px "
          f"with {poses}")
    return 0


def add_import_relion_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("star", type=Path, metavar="PARTICLES.star")
    parser.add_argument("--out", type=Path, required=True, metavar="DATA.h5")
    parser.add_argument("--size", type=int, default=None,
                        help="resample the particles to this box (what a trained model expects)")
    parser.add_argument("--model", default=None, metavar="MODEL_DIR",
                        help="resample to the image size this model expects (`pretrained`: the "
                             "general model shipped with cryoem); overrides --size")
    parser.add_argument("--pixel-size", type=float, default=None,
                        help="Å/px when the STAR file lacks it")
    parser.add_argument("--datadir", type=Path, default=None, metavar="DIR",
                        help="folder the stack paths in the STAR file are relative to (a RELION "
                             "project folder; default: the STAR file's folder)")
    parser.add_argument("--overwrite", action="store_true")


def run_import_relion(args: argparse.Namespace) -> int:
    """Turn a RELION particle set (STAR + MRCS) into a dataset."""
    from .. import datasets, particles

    if args.model is not None:
        args.size = _model_image_size(args.model)
    path = particles.import_relion(args.star, args.out, size=args.size,
                                   pixel_size=args.pixel_size, datadir=args.datadir,
                                   overwrite=args.overwrite)
    data = datasets.load(path, images=False)
    poses = {datasets.REFERENCE: "angles kept as reference poses (scored only with "
                                 "--reference-poses)",
             datasets.ABSENT: "no angles"}[data.source("orientations")]
    print(f"wrote {path}: {len(data)} particles of {data.size} px at {data.pixel_size:.3g} Å/px"
          f"{', with CTF' if data.ctf is not None else ''}; {poses}")
    return 0


def _model_image_size(model: str) -> int:
    """The image edge a model was trained on (its config; no TensorFlow needed)."""
    from .._models import read_config

    return int(read_config(model)["image_size"])


# ----------------------------------------------------------------------------
# cryoem score
# ----------------------------------------------------------------------------
def add_score_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("estimate", type=Path, metavar="ESTIMATE",
                        help="estimated poses: STAR file, cryoem orientation file or dataset")
    parser.add_argument("--truth", type=Path, required=True, metavar="REFERENCE",
                        help="poses to score against (same kinds): a ground truth, or another "
                             "program's refinement")
    parser.add_argument("--map", type=Path, default=None, metavar="MAP.mrc",
                        help="the estimate's map (with --reference-map: FSC after alignment)")
    parser.add_argument("--reference-map", type=Path, default=None, metavar="REF.mrc",
                        help="the reference's map")
    parser.add_argument("--symmetry", default="C1", help="point group (default: C1)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                        help="also write the scores as JSON")


def run_score(args: argparse.Namespace) -> int:
    """Score estimated poses against a reference (ground truth or another program's)."""
    import json

    from .. import scoring

    if (args.map is None) != (args.reference_map is None):
        raise ValueError("--map and --reference-map go together")
    result = scoring.score(args.estimate, args.truth, symmetry=args.symmetry,
                           estimate_map=args.map, reference_map=args.reference_map)
    print(f"{result['matched']} particles matched by {result['matched_by']} "
          f"({result['estimate_count']} estimated, {result['reference_count']} in the reference)")
    print(f"physical E_OR {result['e_or_rad']:.4f} rad (median {result['e_or_median_rad']:.4f}, "
          f"{100 * result['within_0.1_rad']:.1f} % within 0.1 rad); paper's O(4) E_OR "
          f"{result['e_or_o4_rad']:.4f} rad; handedness {result['handedness']}")
    if "fsc05_angstrom" in result:
        print(f"maps: FSC 0.5 {result['fsc05_angstrom']:.2f} Å, FSC 0.143 "
              f"{result['fsc0143_angstrom']:.2f} Å ({result['map_aligned']})")
    if args.json is not None:
        from .._files import atomic_path

        with atomic_path(args.json) as partial:
            partial.write_text(json.dumps(result, indent=2) + "\n")
    return 0
