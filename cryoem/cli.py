"""The ``cryoem`` command line: one subcommand per phase, thin wrappers over the API.

Each subcommand is a pair ``add_<name>_args(parser)`` / ``run_<name>(args)``;
:func:`main` assembles them.  Tests call ``main([...])`` in-process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .commands.data import (add_export_relion_args, add_generate_args, add_import_relion_args,
                            add_score_args, add_volumes_args, run_export_relion, run_generate,
                            run_import_relion, run_score, run_volumes)
from .commands.maps import add_reconstruct_args, add_refine_args, run_reconstruct, run_refine
from .commands.method import (add_dask_arg, add_distances_args, add_recover_args, add_train_args,
                              run_distances, run_recover, run_train)

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------
# cryoem pipeline
# ----------------------------------------------------------------------------
def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    from .distance import ESTIMATORS
    from .pipeline import ROUTES, PipelineConfig
    from .pipeline_first_guess import CURRICULUM_BELOW, EPOCHS, TRAIN_SECONDS

    d = PipelineConfig()
    parser.add_argument("--volume", default=d.volume,
                        help=f"built-in protein, map or model file, or phantom (default: {d.volume})")
    parser.add_argument("--n-projections", type=int, default=d.n_projections,
                        help=f"projections generated: train + validation + test (default: "
                             f"{d.n_projections})")
    parser.add_argument("--test-size", type=int, default=d.test_size,
                        help=f"projections recovered and scored (default: {d.test_size})")
    parser.add_argument("--size", type=int, default=d.size, help=f"image edge (default: {d.size})")
    parser.add_argument("--snr", type=float, default=d.snr, help="signal-to-noise ratio (default: inf)")
    parser.add_argument("--max-shift", type=float, default=d.max_shift, metavar="PX")
    parser.add_argument("--route", choices=ROUTES, default=None,
                        help="the first guess: distances (learned or other, then recovery and "
                             "the frame step), ab-initio (from the images alone: no "
                             "distances, no training, no truth) or initial-map (--initial-map) "
                             "(default: initial-map with --initial-map, ab-initio with "
                             "--particles, distances otherwise)")
    parser.add_argument("--initial-map", default=None, metavar="MAP",
                        help="start the refinement from this MRC map (another program's ab "
                             "initio, a homologue; any box and pixel size) instead of a first "
                             "guess: the initial-map route")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=d.estimator)
    parser.add_argument("--model", default=None, metavar="MODEL_DIR",
                        help="trained model (skips training), or `pretrained`: the general "
                             "model shipped with cryoem")
    parser.add_argument("--training", choices=("rendered", "fixed", "self"), default=d.training,
                        help="rendered (default): images drawn from the TRUE map at the data's "
                             "SNR, labelled with their true orientations - supervised on the "
                             "true map, an upper bound; fixed: the training split's labelled "
                             "projections only (the paper's protocol); self: images rendered "
                             "from the pipeline's own ab initio map at the SNR measured on the "
                             "images - no truth read")
    parser.add_argument("--particles", default=None, metavar="PATH",
                        help="start from these particles (RELION STAR or cryoem dataset) "
                             "instead of simulating; with --route distances it needs --model "
                             "(e.g. pretrained) or --training self")
    parser.add_argument("--datadir", default=None, metavar="DIR",
                        help="with a STAR file: the folder its stack paths are relative to")
    parser.add_argument("--symmetry", default=None, metavar="GROUP",
                        help="with --particles: their point group, if known (default: C1)")
    parser.add_argument("--reference-poses", action="store_true",
                        help="with --particles: score against their reference poses (e.g. a "
                             "RELION refinement's angles); they are never used to estimate")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help=f"training epochs at most (default: {EPOCHS[0]}, {EPOCHS[1]} "
                             f"below SNR {CURRICULUM_BELOW:g})")
    parser.add_argument("--train-seconds", type=_seconds_or_auto, default=d.train_seconds,
                        metavar="SECONDS|auto|none",
                        help="training time budget; auto (default): {:.0f} s, {:.0f} s below SNR "
                             "{:g}; none: the epochs alone".format(*TRAIN_SECONDS,
                                                                   CURRICULUM_BELOW))
    parser.add_argument("--sigma2", type=float, default=d.sigma2, help="perturbed estimator's σ²")
    parser.add_argument("--steps", type=int, default=d.steps, help="recovery steps at most")
    parser.add_argument("--no-refine", action="store_true",
                        help="skip the local refinement (which also estimates the shifts)")
    parser.add_argument("--refine-iterations", type=int, default=d.refine_iterations)
    parser.add_argument("--mask-references", action=argparse.BooleanOptionalAction,
                        default=d.mask_references,
                        help="mask the refinement's references around the particle, each half's "
                             "from its own map (a dynamic mask: no solvent noise in them; "
                             "default: on)")
    parser.add_argument("--initial-resolution", type=_angstrom_or_none,
                        default=d.initial_resolution, metavar="ANGSTROM",
                        help="the refinement's start is low-passed to this before the halves "
                             f"split (gold standard; default: {d.initial_resolution:g} Å); "
                             "`none`: the halves start from the first guess (their FSC is then "
                             "not independent)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, default=Path("data/pipeline"), metavar="DIR",
                        help="output folder (default: data/pipeline); rerun to resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dask_arg(parser)


def _seconds_or_auto(text: str) -> float | str | None:
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds, `auto` or `none`, got {text}")
    return value


def _angstrom_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a resolution in Å or `none`, got {text}")
    return value


def run_pipeline(args: argparse.Namespace) -> int:
    """Run the whole method: generate, train, distances, recover, resolve, reconstruct, export."""
    from . import distributed, pipeline

    config = pipeline.PipelineConfig(
        volume=args.volume, n_projections=args.n_projections, test_size=args.test_size,
        size=args.size, snr=args.snr, max_shift=args.max_shift, route=args.route,
        initial_map=args.initial_map, estimator=args.estimator,
        model=args.model, training=args.training, particles=args.particles, datadir=args.datadir,
        reference_poses=args.reference_poses, symmetry=args.symmetry, epochs=args.epochs, train_seconds=args.train_seconds,
        sigma2=args.sigma2, steps=args.steps, refine=not args.no_refine,
        refine_iterations=args.refine_iterations, initial_resolution=args.initial_resolution,
        mask_references=args.mask_references, seed=args.seed)
    with distributed.connect(args.dask_scheduler) as client:
        metrics = pipeline.run(config, args.out, progress=not args.quiet, client=client)
    print(f"\nresults in {args.out} (metrics.json, maps, figures/, relion/)")
    print(pipeline.summary(metrics))
    return 0


# ----------------------------------------------------------------------------
# cryoem notebooks run
# ----------------------------------------------------------------------------
def add_notebooks_args(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run", help="execute every notebook in order with papermill",
        description="Execute notebooks/[0-9]*.ipynb in order, headless, each in a fresh kernel: "
                    "NAME.ipynb writes its executed copy to DIR/NAME.ipynb, its metrics to "
                    "DIR/NAME.json and its data into DIR/data-NAME/.  The first failing "
                    "notebook stops the run.")
    run.add_argument("--params", default="full", metavar="quick|full|FILE.yaml",
                     help="quick: notebooks/ci-parameters.yml (minutes); full: the notebooks' "
                          "own defaults (default); or a YAML file of the same format")
    run.add_argument("--out", type=Path, default=Path("data/notebooks"), metavar="DIR",
                     help="output folder (default: data/notebooks)")
    run.add_argument("--source", type=Path, default=None, metavar="DIR",
                     help="folder of the notebooks (default: the repository's notebooks/)")
    run.add_argument("--only", nargs="+", default=None, metavar="NAME",
                     help="run only these notebooks (file name, stem or leading number)")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel (default: python3)")


def run_notebooks(args: argparse.Namespace) -> int:
    """Rerun all notebooks in order, headless (`cryoem notebooks run --out DIR`)."""
    try:
        from . import notebooks
        import papermill  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{error}; install the notebook tools with "
                           "pip install -e \".[notebooks]\"") from None

    print(f"notebooks with {args.params} parameters into {args.out}", flush=True)
    start = time.perf_counter()
    runs = notebooks.run_all(args.out, args.params, source=args.source, only=args.only,
                             kernel=args.kernel, report=lambda line: print(line, flush=True))
    print(f"{len(runs)} notebooks in {time.perf_counter() - start:.0f} s; "
          f"publish them with: cryoem site build --notebooks {args.out}")
    return 0


# ----------------------------------------------------------------------------
# cryoem site build
# ----------------------------------------------------------------------------
def add_site_args(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="static HTML site from executed notebooks, viewable offline",
        description="Build index.html (method, results table, links) and one page per executed "
                    "notebook; pages load nothing from the network.")
    build.add_argument("--notebooks", type=Path, default=Path("data/notebooks"), metavar="DIR",
                       help="executed notebooks and their metrics JSON, as written by "
                            "`cryoem notebooks run` (default: data/notebooks)")
    build.add_argument("--out", type=Path, default=Path("data/site"), metavar="SITE_DIR",
                       help="site folder (default: data/site)")
    build.add_argument("--results", type=Path, default=None, metavar="PATH",
                       help="benchmark results markdown for results.html (default: "
                            "benchmarks/results.md here, written by benchmarks/results_table.py)")


def run_site(args: argparse.Namespace) -> int:
    """Build a static site of the executed notebooks that works offline (`cryoem site build`)."""
    try:
        from . import publish
        import nbconvert  # noqa: F401
    except ImportError as error:
        raise RuntimeError(f"{error}; install the site tools with pip install -e \".[site]\"") \
            from None

    pages = publish.build_site(args.notebooks, args.out, results=args.results)
    for page in pages:
        print(page)
    print(f"{len(pages) - 2} notebook pages, the results page and the index; open {pages[0]}")
    return 0


# ----------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "pipeline": (add_pipeline_args, run_pipeline),
    "generate": (add_generate_args, run_generate),
    "train": (add_train_args, run_train),
    "distances": (add_distances_args, run_distances),
    "recover": (add_recover_args, run_recover),
    "refine": (add_refine_args, run_refine),
    "reconstruct": (add_reconstruct_args, run_reconstruct),
    "export-relion": (add_export_relion_args, run_export_relion),
    "import-relion": (add_import_relion_args, run_import_relion),
    "score": (add_score_args, run_score),
    "volumes": (add_volumes_args, run_volumes),
    "notebooks": (add_notebooks_args, run_notebooks),
    "site": (add_site_args, run_site),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cryoem`` command."""
    parser = argparse.ArgumentParser(
        prog="cryoem",
        description="Learning to recover orientations from projections in single-particle "
                    "cryo-EM.")
    parser.add_argument("--version", action="version", version=f"cryoem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, run) in COMMANDS.items():
        doc = (run.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=doc, description=doc)
        add_args(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors print one clear line and return status 2 or 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ConnectionError,
            RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cryoem {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryoem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
