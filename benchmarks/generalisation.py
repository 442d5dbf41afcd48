"""Train one distance model on many proteins and test it on proteins it never saw.

Two stages (``--stages``, default both):

``train``
    One Siamese model (``cryoem.training.train``, rendered mode) on every
    built-in protein except the held-out ones (``--held-out``, default 4ake,
    1hvr, 2zmm: an asymmetric default, a C2 dimer and a third one), with
    augmentation: white noise at an SNR log-uniform in ``--snr-range``
    (default 1/32 … 64, covering noiseless-like and SNR 1/16), shifts up to
    ``--max-shift`` px and a CTF on half of the images.  Symmetric proteins get
    symmetry-aware labels (``min_g d(q_i, q_j g)``).  Each protein is seen as
    a volume at ``L`` with the built-in box-to-particle ratio (1.5): the same
    contract as ``cryoem.volumes.resolve(name, L)``.  The model, its config
    and ``contract.json`` go to ``WORK_DIR/general``; ``--ship`` copies them
    into the package (``cryoem/data/models/pretrained``), which
    ``--model pretrained`` then loads.

``evaluate``
    For every held-out protein and every ``--snrs`` value, the whole pipeline
    (``cryoem.pipeline.run``: the paper's 5,000 projections, 1,650 recovered,
    shifts, frame resolved from the images, refinement, reconstruction) twice:
    with the general model (no training) and with a model trained on that
    protein itself (``--protein-epochs`` epochs, a fixed count so that runs
    sharing the machine stay fair; the pipeline's default ``rendered`` mode:
    supervised on the true map, an upper bound).  The per-protein runs are
    shared with ``paper_table.py`` (same folders); a run produced by another
    commit is not reused unless ``--reuse-stale`` (then labelled stale).
    Metrics, recovery, frame resolution and reconstruction use each protein's
    point group.

Usage (from the repository root)::

    .venv/bin/python benchmarks/generalisation.py                     # hours on 2 cores
    .venv/bin/python benchmarks/generalisation.py --stages train --ship
    .venv/bin/python benchmarks/generalisation.py --quick             # tiny, for CI

It prints a table and writes ``benchmarks/results/generalisation.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import harness  # noqa: E402
from _common import (PROTEIN_TRAINING_EPOCHS, frame_and_refined,  # noqa: E402
                     machine_info, pipeline_row, positive_snr, snr_tag, write_report)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "generalisation.json"
DEFAULT_WORK_DIR = Path("data/benchmarks/generalisation")
HELD_OUT = ("4ake", "1hvr", "2zmm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", nargs="+", choices=("train", "ship", "evaluate"),
                   default=["train", "evaluate"],
                   help="ship: write the contract of the trained model (even an interrupted "
                        "run's best) and copy it into the package, without training")
    p.add_argument("--held-out", nargs="+", default=list(HELD_OUT),
                   help="built-in proteins kept out of training and evaluated")
    p.add_argument("--train-proteins", nargs="+", default=None,
                   help="training proteins (default: every other built-in one)")
    p.add_argument("--size", type=int, default=64, help="image edge L (default: 64)")
    p.add_argument("--snr-range", nargs=2, type=positive_snr, default=[1 / 32, 64.0],
                   metavar=("LOW", "HIGH"), help="training SNR range, log-uniform")
    p.add_argument("--max-shift", type=float, default=2.0, help="shifts (px), training and test")
    p.add_argument("--ctf-fraction", type=float, default=0.5,
                   help="share of training images with a CTF (default: 0.5)")
    p.add_argument("--general-epochs", type=int, default=None,
                   help="train the general model for this many epochs (default: until "
                        "--train-seconds)")
    p.add_argument("--train-seconds", type=float, default=2400.0,
                   help="training budget of the general model (default: 2400)")
    p.add_argument("--width", type=float, default=1.5, help="filter-count multiplier")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--snrs", nargs="+", type=positive_snr, default=[float("inf"), 1 / 16],
                   help="SNRs of the evaluation datasets (default: inf 1/16)")
    p.add_argument("--n-projections", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1650)
    p.add_argument("--protein-epochs", type=int, default=PROTEIN_TRAINING_EPOCHS,
                   help="training epochs of each per-protein model (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow/finufft threads")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    p.add_argument("--runs-dir", type=Path, default=Path("data/benchmarks/runs"),
                   help="pipeline runs, shared with paper_table.py")
    p.add_argument("--reuse-only", action="store_true",
                   help="evaluate: run nothing, tabulate the runs already in --runs-dir")
    p.add_argument("--reuse-stale", action="store_true",
                   help="evaluate: reuse runs produced by another commit (labelled stale)")
    p.add_argument("--ship", action="store_true",
                   help="copy the general model into cryoem/data/models/pretrained")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (CI): L 32, 3+1 proteins, seconds of training")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT.with_name("generalisation_quick.json")
        # Budgets in epochs, not seconds, so that a loaded CI machine trains the same models.
        args.size, args.train_seconds, args.protein_epochs = 32, None, 2
        args.general_epochs = 3
        args.n_projections, args.test_size, args.steps_per_epoch = 300, 100, 5
        args.train_proteins = args.train_proteins or ["5pti", "1ubq", "19hc"]
        args.held_out = args.held_out[:1]
        args.snrs = args.snrs[:1]
        args.width = 0.5
    return args


def _budget(args: argparse.Namespace) -> str:
    """The general model's training budget as options: epochs and/or seconds."""
    parts = []
    if args.general_epochs is not None:
        parts.append(f"--general-epochs {args.general_epochs}")
    if args.train_seconds is not None:
        parts.append(f"--train-seconds {args.train_seconds:g}")
    return " ".join(parts)


def training_proteins(args: argparse.Namespace) -> list[str]:
    """Every built-in protein that is not held out (or the ones asked for)."""
    from cryoem import proteins

    chosen = args.train_proteins or [name for name in proteins.builtin_names()
                                     if name not in args.held_out]
    overlap = sorted(set(chosen) & set(args.held_out))
    if overlap:
        raise SystemExit(f"proteins both trained on and held out: {', '.join(overlap)}")
    return chosen


def train_general(args: argparse.Namespace) -> dict[str, Any]:
    """Train the general model on the training proteins; returns its record."""
    from cryoem import training

    proteins = training_proteins(args)
    sets, validation = training_sets(proteins, args.size, args.work_dir, args.max_shift)
    config = training.TrainingConfig(
        width=args.width, input_size=args.size // 2, epochs=args.general_epochs or 100_000,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, patience=40,
        snr_range=tuple(args.snr_range), max_shift=args.max_shift, ctf=True,
        ctf_fraction=args.ctf_fraction, max_seconds=args.train_seconds, seed=0)
    out = args.work_dir / "general"
    start = time.perf_counter()
    history = training.train(sets, out, config, validation=validation,
                             verbose=2, overwrite=not (out / "backup").exists())
    seconds = time.perf_counter() - start
    record = finish_general(args)
    record.update(seconds=seconds, epochs=len(history.get("loss", [])))
    return record


def training_sets(names: list[str], size: int, work_dir: Path, max_shift: float,
                  validation_snr: float = 0.25) -> tuple[list[Any], Any]:
    """A small dataset per training volume (its map: training renders from it) and the
    validation set, which picks the epoch kept: 600 images of the first one (never a
    held-out protein) at ``validation_snr`` (default 1/4), shifted up to ``max_shift`` px.
    Made once under ``work_dir/volumes_L{size}``."""
    from cryoem import datasets, volumes

    data_dir = work_dir / f"volumes_L{size}"
    data_dir.mkdir(parents=True, exist_ok=True)
    sets = []
    for name in names:
        path = data_dir / f"{name.replace(':', '-')}.h5"
        if not path.exists():  # a few projections: training renders from the volume
            datasets.generate(volumes.resolve(name, size), 64, path, seed=0)
        sets.append(datasets.load(path))
    tag = "" if validation_snr == 0.25 else f"_snr{validation_snr:g}_shift{max_shift:g}"
    validation_path = data_dir / f"validation_{names[0].replace(':', '-')}{tag}.h5"
    if not validation_path.exists():
        datasets.generate(volumes.resolve(names[0], size), 600, validation_path,
                          snr=validation_snr, max_shift=max_shift, seed=1)
    return sets, datasets.load(validation_path)


def finish_general(args: argparse.Namespace) -> dict[str, Any]:
    """Write the general model's contract and, with ``--ship``, copy it into the package."""
    from cryoem import proteins, siamese, volumes

    names = training_proteins(args)
    out = args.work_dir / "general"
    contract = siamese.write_contract(
        out, proteins=names, box_ratio=volumes.DEFAULT_BOX_RATIO,
        symmetries={e["name"]: e.get("symmetry", "C1") for e in proteins.builtin_manifest()
                    if e["name"] in names},
        training_command=(f"python benchmarks/generalisation.py --stages train --ship "
                          f"{_budget(args)} --width {args.width:g} "
                          f"--snr-range {args.snr_range[0]:g} {args.snr_range[1]:g} "
                          f"--max-shift {args.max_shift:g} --ctf-fraction {args.ctf_fraction:g}"))
    if args.ship:
        shipped = siamese.PRETRAINED_DIR
        shipped.mkdir(parents=True, exist_ok=True)
        for name in (siamese.MODEL_FILE, siamese.CONFIG_FILE, siamese.CONTRACT_FILE,
                     "history.csv", "best.json"):
            shutil.copy2(out / name, shipped / name)
    best = json.loads((out / "best.json").read_text())
    return {"proteins": names, "best_val_loss": best["val_loss"], "best_epoch": best["epoch"],
            "epochs_run": harness.history_epochs(out / "history.csv"),
            "contract": contract, "model": str(out), "shipped": args.ship}


def evaluate(args: argparse.Namespace, general_model: Path) -> list[dict[str, Any]]:
    """Pipeline rows for every held-out protein and SNR, general vs per-protein model."""
    rows = []
    for name in args.held_out:
        for snr in args.snrs:
            for kind in ("general", "per-protein"):
                model = str(general_model) if kind == "general" else None
                row = pipeline_row(args.runs_dir, volume=name, snr=snr, estimator="learned",
                                   model=model, model_tag="general" if model else None,
                                   size=args.size, n_projections=args.n_projections,
                                   test_size=args.test_size, max_shift=args.max_shift,
                                   refine=True, reuse_only=args.reuse_only,
                                   reuse_stale=args.reuse_stale,
                                   **({} if model else {"epochs": args.protein_epochs}))
                if row is None:
                    print(f"{name:>6} SNR {snr_tag(snr):>5} {kind:>11}: not run", flush=True)
                    continue
                row["model"] = kind
                row["e_or_frame_rad"], row["e_or_refined_rad"] = frame_and_refined(row["metrics"])
                rows.append(row)
                print_row(row)
    return rows


def print_row(row: dict[str, Any]) -> None:
    """One line per pipeline run."""
    m = row["metrics"]

    def f(key: str, source: dict[str, Any] = m) -> str:
        value = source.get(key)
        return "—" if value is None else f"{value:.3f}"

    def g(key: str) -> str:
        return f(key, row)

    print(f"{row['volume']:>6} SNR {snr_tag(row['snr']):>5} {row['model']:>11}: "
          f"L_DE test {f('l_de_test')}  E_OR o4 {f('e_or_o4_rad')}  physical {g('e_or_frame_rad')}"
          f" → refined {g('e_or_refined_rad')} rad  FSC0.5 {f('resolution_fsc05_angstrom')} Å  "
          f"({row['seconds']:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Train, ship and/or evaluate (``--stages``), print the rows and write the JSON."""
    args = parse_args(argv)
    if args.quick:
        args.work_dir = args.work_dir / "quick"
        args.runs_dir = args.runs_dir / "quick"
    from cryoem import siamese

    siamese.configure_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "generalisation", "machine": machine_info(args.threads),
                              "settings": {k: v for k, v in vars(args).items()}}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        report.update({k: previous[k] for k in ("general", "rows") if k in previous})
    if "train" in args.stages:
        report["general"] = train_general(args)
        write_report(report, args.out)
    elif "ship" in args.stages:
        report["general"] = {**report.get("general", {}), **finish_general(args)}
        write_report(report, args.out)
    if "evaluate" in args.stages:
        report["rows"] = evaluate(args, args.work_dir / "general")
        write_report(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
