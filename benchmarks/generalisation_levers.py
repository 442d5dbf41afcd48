"""Which lever makes one distance model work on proteins it never saw: an ablation.

For each lever (``--levers``), one general model (``cryoem.training.train``, rendered mode)
trained for ``--budget-seconds`` on volumes that never include the held-out proteins
(``--held-out``, default 4ake, 1hvr, 2zmm), with one recipe for all (``RECIPE``: 1.5 times
the filters, 32 px in, the cosine schedule, quarter turns; training SNR log-uniform in
``--snr-range``, shifts up to ``--max-shift`` px, a CTF on half of the images).  The levers
change the training volumes, and one the loss:

* ``builtin``: every built-in protein that is not held out (19; the shipped model's set);
* ``pseudo``: the same plus ``--pseudo`` pseudo-proteins (``pseudo:0`` …,
  :mod:`cryoem.pseudo_proteins`: random compact chains, C1 to D3);
* ``pseudo_only``: the pseudo-proteins alone;
* ``pseudo_no_ctf``: ``pseudo`` with no CTF on any training image: whether variety stops the
  overfitting ``builtin_no_ctf`` shows when trained longer (it fits its 19 proteins, not
  held-out ones);
* ``builtin_polar``: ``builtin`` on the polar front end (``TrainingConfig.front``);
* ``builtin_no_ctf``, ``one_protein_4ake_no_ctf``: ``builtin`` and ``one_protein_4ake`` with no
  CTF on any training image (the recipe's CTF on half of them slows the fit: on 4AKE a training
  loss of 0.15 against 0.06 after 8 epochs; after 54-62 both fit);
* ``builtin_phase_flip``, ``one_protein_4ake_phase_flip``: the same with the CTF'd training
  images phase-flipped (``TrainingConfig.phase_flip``: rendered with ``|CTF|``; the model then
  phase-flips data that carry CTF parameters, :func:`cryoem.projection.phase_flip`);
* ``builtin_no_ctf_mix4``: ``builtin_no_ctf`` with each step's images drawn from 4 proteins
  (``TrainingConfig.mix``) instead of one: whether proteins taken one a step undo each
  other's progress;
* ``one_protein``, ``two_proteins``: one (1ubq) or two (1ubq, 6msm) built-in proteins alone:
  how many proteins the network fits at once, the question the 19-protein levers raise by not
  fitting even their own training proteins;
* ``builtin_horizon``: ``builtin`` with the horizon loss (``TrainingConfig.horizon`` = 1 rad:
  pairs truly farther need only be estimated farther, ``siamese.horizon_residuals``), scored
  by recovery from the pairs it estimates within 1 rad only (the horizon benchmark's finding:
  exact distances within 1 rad are enough, and no more is knowable on an unseen protein).

Each model is then scored as the pipeline's first guess uses it (``_common.score_first_guess``:
L_DE, the paper's O(4) E_OR after recovery, the physical E_OR after the frame step) on
the test split (``--test-size`` of ``--n-projections``, shifts up to ``--max-shift`` px, no
CTF) of each held-out protein at each ``--snrs``, with 4 test-time turns.  The truth is read
by the scoring only; the held-out proteins never reach training.  The Euclidean baseline
(``euclidean``: pixel distances, isotonic fit on the training split's TRUE orientations of
the held-out protein itself) and the shipped general model (``shipped``, as it is) go
through the same scoring.  Each model's noiseless ``L_DE`` is also scored on ``--seen``
proteins it trained on (default 1ubq, 6msm, 1bvy): whether it learned even those.  A lever
is a cached scenario of ``harness.py``; a finished model is scored again, not retrained
(``lever_training.json`` beside it); training runs against the clock, so keep the machine
otherwise idle.

    .venv/bin/python benchmarks/generalisation_levers.py                  # ~70 min on 2 cores
    .venv/bin/python benchmarks/generalisation_levers.py --quick          # tiny check
"""

# ruff: noqa: E402 - the thread count is pinned before NumPy loads (BLAS reads it once)
from __future__ import annotations

import harness

if __name__ == "__main__":
    harness.pin_threads()

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from _common import positive_snr, score_first_guess, scored_distances, snr_label, trained_once
from harness import Column, Harness, Scenario

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "generalisation_levers.json"
DEFAULT_WORK_DIR = Path("data/benchmarks/generalisation_levers")
HELD_OUT = ("4ake", "1hvr", "2zmm")
TRAINING_RECORD = "lever_training.json"
#: The training settings every lever shares (the one-protein ablation's best at SNR 1/16).
RECIPE: dict[str, Any] = {"width": 1.5, "input_size": 32, "schedule": "cosine", "turns": 4,
                          "ctf": True, "ctf_fraction": 0.5}


class Lever(NamedTuple):
    """What a lever trains on, and what it changes in the recipe (``TrainingConfig`` fields)."""

    what: str
    builtin: bool
    pseudo: bool
    training: dict[str, Any] = {}
    only: tuple[str, ...] = ()  # these built-in proteins alone (when ``builtin``)


LEVERS: dict[str, Lever] = {
    "builtin": Lever("every built-in protein not held out", True, False),
    "pseudo": Lever("the built-in proteins and the pseudo-proteins", True, True),
    "pseudo_only": Lever("the pseudo-proteins alone", False, True),
    "pseudo_no_ctf": Lever("the built-in proteins and the pseudo-proteins, no CTF on any "
                           "training image (builtin_no_ctf with more variety)", True, True,
                           {"ctf": False}),
    "builtin_horizon": Lever(
        "every built-in protein not held out; the horizon loss (τ = 1 rad: pairs truly "
        "farther need only be estimated farther) and recovery from the pairs estimated within "
        "1 rad only", True, False, {"horizon": 1.0}),
    "builtin_no_ctf": Lever("every built-in protein not held out, no CTF on any training "
                            "image (the test images have none)", True, False, {"ctf": False}),
    "builtin_phase_flip": Lever("every built-in protein not held out; the CTF'd training "
                                "images phase-flipped (|CTF|; TrainingConfig.phase_flip)",
                                True, False, {"phase_flip": True}),
    "builtin_no_ctf_mix4": Lever("builtin_no_ctf with each step's images from 4 proteins "
                                 "(TrainingConfig.mix; pairs within each protein's share)",
                                 True, False, {"ctf": False, "mix": 4}),
    "builtin_polar": Lever("every built-in protein not held out, on the polar front end "
                           "(cryoem.polar: in-plane turns become shifts along the angle)",
                           True, False, {"front": "polar"}),
    "one_protein": Lever("one built-in protein (1ubq): the same recipe's fit of a single "
                         "protein, the baseline of two_proteins and builtin", True, False,
                         only=("1ubq",)),
    "one_protein_4ake": Lever("one built-in protein (4ake, which the supervised path fits; "
                              "hold out others to run it)", True, False, only=("4ake",)),
    "one_protein_4ake_no_ctf": Lever("one_protein_4ake without the CTF (on no training image; "
                                     "the test images have none): what the CTF costs the fit",
                                     True, False, {"ctf": False}, only=("4ake",)),
    "one_protein_4ake_phase_flip": Lever("one_protein_4ake with its CTF'd training images "
                                         "phase-flipped (|CTF|; TrainingConfig.phase_flip)",
                                         True, False, {"phase_flip": True}, only=("4ake",)),
    "two_proteins": Lever("two built-in proteins (1ubq, 6msm): whether one network fits even "
                          "two at once (scored on those two; 1bvy unseen)", True, False,
                          only=("1ubq", "6msm")),
}
BASELINES = ("euclidean", "shipped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levers", nargs="+", choices=(*LEVERS, *BASELINES),
                   default=["shipped", "euclidean", "builtin", "pseudo"])
    p.add_argument("--held-out", nargs="+", default=list(HELD_OUT))
    p.add_argument("--pseudo", type=int, default=200, help="pseudo-proteins (default 200)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--budget-seconds", type=float, default=1200.0)
    p.add_argument("--snr-range", nargs=2, type=positive_snr, default=[1 / 32, 64.0],
                   metavar=("LOW", "HIGH"), help="training SNR range, log-uniform")
    p.add_argument("--max-shift", type=float, default=2.0)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Adam's initial learning rate (default: TrainingConfig's, 1e-3)")
    p.add_argument("--workers", type=int, default=1,
                   help="threads preparing the rendered batches ahead of the training step "
                        "(TrainingConfig.workers; default 1: in the training loop)")
    p.add_argument("--train-only", action="store_true",
                   help="train the levers' models (into --work-dir) and stop: score them later, "
                        "with the same options, where the held-out proteins are (e.g. train on "
                        "a lent GPU, score here)")
    p.add_argument("--validation", choices=("recipe", "quarter"), default="recipe",
                   help="the validation images that pick the epoch kept (the first training "
                        "protein's, shifts as --max-shift): recipe = at the geometric mean of "
                        "--snr-range (default); quarter = at SNR 1/4, as before (the rows "
                        "before this option)")
    p.add_argument("--snrs", nargs="+", type=positive_snr, default=[math.inf, 1 / 16])
    p.add_argument("--seen", nargs="*", default=["1ubq", "6msm", "1bvy"],
                   help="training proteins whose noiseless L_DE is also scored (default: 1ubq "
                        "6msm 1bvy; in the built-in levers' training set)")
    p.add_argument("--n-projections", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1650)
    p.add_argument("--recovery-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    harness.add_options(p, DEFAULT_OUT)
    args = p.parse_args(argv)
    harness.quick_defaults(args, p, {
        "size": 32, "n_projections": 240, "test_size": 80, "budget_seconds": 4.0,
        "steps_per_epoch": 3, "batch_size": 16, "recovery_steps": 50, "pseudo": 2,
        "held_out": ["4ake"], "snrs": [math.inf], "levers": ["pseudo", "euclidean"],
        "seen": ["5pti"],
        "out": DEFAULT_OUT.with_name("generalisation_levers_quick.json"),
        "work_dir": DEFAULT_WORK_DIR.with_name("generalisation_levers_quick")})
    return args


def training_volumes(args: argparse.Namespace, lever: str) -> list[str]:
    """The lever's training volumes, by name (never a held-out protein)."""
    from cryoem import proteins

    spec = LEVERS[lever]
    names = ([n for n in spec.only or proteins.builtin_names() if n not in args.held_out]
             if spec.builtin else [])
    if args.quick and spec.builtin:
        names = [n for n in spec.only or ("5pti", "1ubq") if n not in args.held_out]
    return names + ([f"pseudo:{seed}" for seed in range(args.pseudo)] if spec.pseudo else [])


def train_lever(args: argparse.Namespace, lever: str, model_dir: Path) -> dict[str, Any]:
    """Train the lever's model (or reuse a finished one: ``TRAINING_RECORD``); its record."""
    from generalisation import training_sets

    from cryoem import devices, provenance, training

    def train() -> tuple[dict[str, list[float]], dict[str, Any]]:
        names = training_volumes(args, lever)
        start = time.perf_counter()
        sets, validation = training_sets(names, args.size, args.work_dir, args.max_shift,
                                         validation_snr(args.validation, args.snr_range))
        prepare_seconds = time.perf_counter() - start
        config = training.TrainingConfig(
            mode="rendered", epochs=100_000, max_seconds=args.budget_seconds,
            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
            snr_range=tuple(args.snr_range), max_shift=args.max_shift, seed=args.seed,
            **_training_options(args), **(RECIPE | LEVERS[lever].training))
        history = training.train(sets, model_dir, config, validation=validation, verbose=0)
        return history, {"lever": lever, "volumes": len(names), "prepare_seconds": prepare_seconds,
                         "trained_on": devices.accelerator(),
                         "trained_at": provenance.git_state()[0]}

    return trained_once(model_dir, TRAINING_RECORD, train)


def validation_snr(validation: str, snr_range: Any) -> float:
    """The SNR of the validation images that pick the epoch kept: 1/4 (``--validation
    quarter``, the levers' first runs) or the training range's geometric mean (``recipe``:
    in the training's distribution; 1/4 was out of it, and kept early epochs)."""
    if validation == "quarter":
        return 0.25
    return math.sqrt(float(snr_range[0]) * float(snr_range[1]))


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--learning-rate`` and ``--workers`` as ``TrainingConfig`` fields, when not the
    defaults (a scenario's settings, and so its model's folder, then stay as before)."""
    return ({} if args.learning_rate is None else {"learning_rate": args.learning_rate}) | (
        {} if args.workers == 1 else {"workers": args.workers})


def held_out_sets(args: argparse.Namespace) -> list[tuple[str, float, Path]]:
    """Each held-out protein's dataset at each SNR (made once)."""
    return [(name, snr, dataset(args, name, snr)) for name in args.held_out for snr in args.snrs]


def dataset(args: argparse.Namespace, name: str, snr: float) -> Path:
    """A scoring dataset of protein ``name`` at ``snr`` (made once)."""
    path, _ = harness.dataset(
        args.work_dir / "data", volume=name, size=args.size, n_projections=args.n_projections,
        test_size=args.test_size, snr=snr, max_shift=args.max_shift, seed=args.seed)
    return path


def run_lever(args: argparse.Namespace, lever: str, model_dir: Path) -> list[dict[str, Any]]:
    """The lever's model scored on every held-out protein and SNR: one row each."""
    from cryoem import datasets, distance

    trained = train_lever(args, lever, model_dir)
    estimator = distance.LearnedDistance(model_dir, turns=4)
    head = {"lever": lever, "what": LEVERS[lever].what, **trained}
    rows = []
    for name, snr, path in held_out_sets(args):
        data = datasets.load(path)
        rows.append({**head, "protein": name, "snr": snr,
                     **score_first_guess(data, estimator.fit(data),
                                         recovery_steps=args.recovery_steps, seed=args.seed,
                                         horizon=LEVERS[lever].training.get("horizon"))})
        print(harness.table(rows[-1:], COLUMNS), file=sys.stderr)
    return rows + seen_rows(args, estimator, head, set(training_volumes(args, lever)))


def seen_rows(args: argparse.Namespace, estimator: Any, head: dict[str, Any],
              trained: set[str] | None = None) -> list[dict[str, Any]]:
    """``L_DE`` of a model on proteins of ``--seen`` (noiseless test splits, shifts as the
    held-out ones'): whether it learned the proteins it trained on (no recovery).  ``seen``
    says whether the model trained on the protein (``trained``: its training volumes; None:
    every one of ``--seen``)."""
    from cryoem import datasets

    rows = []
    for name in args.seen:
        data = datasets.load(dataset(args, name, math.inf))
        rows.append({**head, "protein": name, "snr": math.inf,
                     "seen": trained is None or name in trained,
                     "l_de": scored_distances(data, estimator.fit(data))[1]})
    return rows


def _protein(row: dict[str, Any]) -> str:
    """The table's protein cell: a held-out protein, or one of ``--seen`` (trained on or not)."""
    if "seen" not in row:
        return row["protein"]
    return f"{row['protein']} ({'trained on' if row['seen'] else 'not trained on, not held out'})"


def run_baseline(args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    """A baseline on every held-out protein and SNR: ``euclidean`` (fitted on each protein's
    true orientations) or ``shipped`` (the general model in the package, as it is)."""
    from cryoem import datasets, distance, siamese

    if kind == "shipped":  # one model for every protein, loaded once
        shipped = distance.LearnedDistance(siamese.PRETRAINED_DIR, turns=4)
        config = json.loads((siamese.PRETRAINED_DIR / siamese.CONFIG_FILE).read_text())
        head = {"lever": kind,
                "what": (f"the shipped model (`--model pretrained`): the 19 built-in proteins, "
                         f"{config['max_seconds']:.0f} s, its own recipe (plateau schedule, no "
                         "turns)"),
                "volumes": len(config["sources"]),
                "epochs": harness.history_epochs(siamese.PRETRAINED_DIR / "history.csv")}
    else:
        head = {"lever": kind, "what": ("pixel distance, isotonic fit on this protein's TRUE "
                                        "orientations (training split)")}
    rows = []
    for name, snr, path in held_out_sets(args):
        data = datasets.load(path)
        start = time.perf_counter()
        if kind == "euclidean":  # fitted on each protein anew
            estimator = distance.EuclideanDistance(seed=args.seed).fit(data)
            fitted = {"train_seconds": time.perf_counter() - start}
        else:
            estimator, fitted = shipped.fit(data), {}
        rows.append({**head, "protein": name, "snr": snr, **fitted,
                     **score_first_guess(data, estimator, recovery_steps=args.recovery_steps,
                                         seed=args.seed)})
    if kind == "shipped":
        rows += seen_rows(args, shipped, head)
    return rows


COLUMNS = [
    Column("lever", lambda r: r["lever"], ""),
    Column("protein", lambda r: r["protein"], ""),
    Column("SNR", lambda r: snr_label(float(r["snr"])), ""),
    Column("epochs", lambda r: r.get("epochs"), ""),
    Column("L_DE", lambda r: r.get("l_de"), ".3f"),
    Column("E_OR O(4)", lambda r: r.get("e_or_o4"), ".3f"),
    Column("E_OR frame", lambda r: r.get("e_or_frame"), ".3f"),
    Column("confidence", lambda r: r.get("frame_confidence"), ".1f"),
]


def _within(row: dict[str, Any]) -> str:
    """A horizon lever's scores on the pairs within τ (``_common.horizon_scores``), in words."""
    if "l_de_within" not in row:
        return ""
    spec = LEVERS.get(row["lever"])
    horizon = f"{spec.training['horizon']:g} rad" if spec and "horizon" in spec.training else "τ"
    text = f" (within {horizon}: {row['l_de_within']:.3f}"
    if "l_de_within_constant" in row:
        text += (f", the best constant {row['l_de_within_constant']:.3f}; called within: "
                 f"{row['called_within']:.1%} of pairs, {row['called_precision']:.0%} of them "
                 f"truly, {row['called_recall']:.0%} of those truly within")
    return text + ")"


def _elsewhere(data: dict[str, Any]) -> str:
    """A sentence for models trained on another machine (their records' ``trained_on``)."""
    if not any(r.get("trained_on") for r in data.get("rows") or []):
        return ""
    return (" A model whose epochs name a machine was trained there with `bash "
            "benchmarks/train_levers_on_gpu.sh OUT` and this table's options (the held-out "
            "proteins never reach it), brought back and scored here.")


def _options(config: dict[str, Any]) -> str:
    """The batch (and learning rate, when set) the levers trained with, for the table's text."""
    text = f", {config.get('batch_size')} images a step"
    rate = (config.get("training_options") or {}).get("learning_rate")
    return text + (f", learning rate {rate:g}" if rate else "")


def _epochs(row: dict[str, Any]) -> str:
    """The epochs a lever's model trained, and where when its record says (``trained_on``)."""
    epochs = row.get("epochs") or "—"
    if not row.get("trained_on"):
        return str(epochs)
    return f"{epochs} in {row.get('train_seconds', 0):.0f} s on {row['trained_on']}"


def _fit(row: dict[str, Any]) -> str:
    """The training loss of the model's last epoch and the epoch kept (best validation, from 1),
    from its learning curve; "—" for a row without one (a baseline, or made before curves were
    recorded)."""
    losses, validation = row.get("loss_by_epoch"), row.get("val_loss_by_epoch") or []
    if not losses:
        return "—"
    scored = [(v, epoch) for epoch, v in enumerate(validation, 1) if v is not None]
    return f"{losses[-1]:.3f}" + (f" ({min(scored)[1]})" if scored else "")


def markdown(data: dict[str, Any]) -> list[str]:
    """The README's table of this JSON."""
    config = data.get("config") or {}
    budget = harness.cell(config.get("budget_seconds"), ".0f")
    lines = [f"One model per lever, trained for {budget} s "
             "(wall clock; on this machine unless the epochs say where) on volumes that never "
             "include the held-out proteins "
             f"({', '.join(config.get('held_out') or [])}); recipe {RECIPE}"
             f"{_options(config)}, training SNR "
             f"log-uniform in {config.get('snr_range')}, shifts ≤ {config.get('max_shift')} px; "
             f"{_kept_epoch(config)}. "
             f"Scored on each held-out protein's {config.get('test_size')} test images (L = "
             f"{config.get('size')} px, shifts ≤ {config.get('max_shift')} px, no CTF), 4 "
             "test-time turns; the truth is read by the scoring only (and by the Euclidean "
             "baseline's fit, on the protein itself). E_OR in rad: O(4) after recovery (the "
             "paper's metric), physical after the frame step (median)." + _elsewhere(data),
             "",
             "| lever | trained on | volumes | epochs | training loss at the end (epoch kept) | "
             "protein | SNR | L_DE (rad²) | E_OR O(4) | E_OR after frame (median) | "
             "frame confidence | stale |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data.get("rows") or []:
        if r.get("status") == "failed":
            reason = harness.cell(r.get("reason"))
            lines.append(f"| {r.get('lever')} | failed: {reason} ||||||||||")
            continue
        lines.append(
            f"| {r['lever']} | {harness.cell(r['what'])} | {r.get('volumes') or '—'} | "
            f"{_epochs(r)} | {_fit(r)} | {_protein(r)}"
            f" | {snr_label(float(r['snr']))} | {harness.cell(r['l_de'], '.3f')}{_within(r)} | "
            f"{harness.cell(r.get('e_or_o4'), '.3f')} | {harness.cell(r.get('e_or_frame'), '.3f')} "
            f"({harness.cell(r.get('e_or_frame_median'), '.3f')}) | "
            f"{harness.cell(r.get('frame_confidence'), '.1f')} | "
            f"{'stale' if r.get('stale') else ''} |")
    return lines


def _kept_epoch(config: dict[str, Any]) -> str:
    """How the table's models were picked among their epochs (``--validation``), in words."""
    if config.get("validation", "quarter") == "quarter":
        return ("the epoch kept is the best on 600 images of the first training protein at SNR "
                "1/4 with shifts, out of the training's distribution (it may keep an early epoch)")
    return ("the epoch kept is the best on 600 images of the first training protein at SNR "
            f"{validation_snr(config['validation'], config['snr_range']):.3g} (the training "
            "range's geometric mean)")


def lever_settings(args: argparse.Namespace, common: dict[str, Any], lever: str
                   ) -> tuple[dict[str, Any], Path]:
    """A lever's scenario settings and its model's folder (keyed by what trains it)."""
    settings = {**common, "recipe": RECIPE, "volumes": training_volumes(args, lever),
                **_training_options(args),  # the rows before --validation: quarter, unnamed
                **({"validation": args.validation} if args.validation != "quarter" else {}),
                **({"training": LEVERS[lever].training} if LEVERS[lever].training else {})}
    trained_by = {k: v for k, v in settings.items()
                  if k not in ("snrs", "n_projections", "test_size", "recovery_steps", "seen")}
    return settings, args.work_dir / "models" / harness.settings_key(lever, trained_by)


def train_only(args: argparse.Namespace, common: dict[str, Any]) -> int:
    """``--train-only``: each lever's model trained (or found) in its folder; no scoring."""
    for lever in args.levers:
        if lever in BASELINES:
            continue
        _, model_dir = lever_settings(args, common, lever)
        record = train_lever(args, lever, model_dir)
        print(f"{lever}: {model_dir} {json.dumps(record)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = harness.apply_threads(args.threads)
    common = {k: getattr(args, k) for k in (
        "held_out", "size", "budget_seconds", "snr_range", "max_shift", "steps_per_epoch",
        "batch_size", "snrs", "n_projections", "test_size", "recovery_steps", "seed", "seen")}
    if args.train_only:
        return train_only(args, common)
    rows: list[dict[str, Any]] = []
    options = _training_options(args)
    with Harness("generalisation_levers", args.out, config={
            **common, "levers": args.levers, "validation": args.validation,
            **({"training_options": options} if options else {})},
                 threads=threads, fresh=args.fresh, reuse_stale=args.reuse_stale) as bench:
        previous = [r for r in bench.previous().get("rows", [])  # a failed row has no lever
                    if (r.get("lever") or r["scenario"]["name"]) not in args.levers]
        for lever in args.levers:
            if lever in BASELINES:
                settings = {k: v for k, v in common.items() if k not in (
                    "budget_seconds", "snr_range", "steps_per_epoch", "batch_size")
                    and not (lever == "euclidean" and k == "seen")}
                rows += bench.run_rows(Scenario(
                    lever, settings, lambda kind=lever: run_baseline(args, kind)))
            else:
                settings, model_dir = lever_settings(args, common, lever)
                rows += bench.run_rows(Scenario(
                    lever, settings, lambda lv=lever, m=model_dir: run_lever(args, lv, m)))
            bench.write({"rows": rows + previous})
        print(harness.table([r for r in rows if r.get("status") != "failed"], COLUMNS))
        print(f"wrote {args.out}")
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
