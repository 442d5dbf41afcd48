"""Which lever makes the learned distance work where it is hard: an ablation at low SNR.

One protein (``--protein``, default 4ake), one dataset (``--n-projections``
uniform orientations at ``--snr``, default 1/16, shifts up to ``--max-shift``
px, split like the paper), and for each lever (``--levers``) one model trained
for ``--budget-seconds`` (default 300 s, the pipeline's budget) in the rendered
mode: images drawn from the TRUE map at the data's SNR, labelled with their
true orientations (supervised on the true map, the paper's setting: an upper
bound).  Each model is then scored on the test split as the pipeline's first
guess uses it:

* ``l_de`` (rad², test pairs ``i < j``);
* ``e_or_o4`` (the paper's O(4)-aligned E_OR after ``recovery.recover``) and
  ``e_or_frame`` (physical E_OR after ``commonlines.resolve_frame``), with the
  frame's confidence;
* the training's epochs and seconds, and the scoring's seconds.

``--test-turns T`` (default 4, the estimator's default) averages each pair's distance over the
two images turned together by multiples of 360°/T (:class:`cryoem.distance.LearnedDistance`);
a row is kept per lever, budget and T, so ``--test-turns 1`` measures the lever without them
(a finished model is scored again, not retrained).

The Euclidean baseline (``euclidean``: pixel distances, isotonic fit on the
training split's true orientations) goes through the same recovery and frame
step.  A lever is a set of ``TrainingConfig`` settings (``LEVERS``); each is a
cached scenario of ``harness.py`` (same settings and commit: reused).  Training
runs for a wall-clock budget, so keep the machine otherwise idle.

    .venv/bin/python benchmarks/distance_ablation.py                  # every lever, ~50 min
    .venv/bin/python benchmarks/distance_ablation.py --levers in32 curriculum --budget-seconds 900
    .venv/bin/python benchmarks/distance_ablation.py --quick          # tiny check
"""

# ruff: noqa: E402 - the thread count is pinned before NumPy loads (BLAS reads it once)
from __future__ import annotations

import harness

if __name__ == "__main__":
    harness.pin_threads()

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from _common import positive_snr, score_first_guess, snr_label, trained_once
from harness import Column, Harness, Scenario

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "distance_ablation.json"
DEFAULT_WORK_DIR = Path("data/benchmarks/distance_ablation")
MAX_EPOCHS = 100_000  # the budget (or early stopping) ends training
#: Beside each finished model: its training's epochs, seconds and best validation loss.  A
#: scenario rerun (another commit: new scoring) scores that model again instead of training
#: anew; the model folder is named by the lever's settings, so only the same training is reused.
TRAINING_RECORD = "ablation_training.json"

_TURNS = {"input_size": 32, "snr_start": 16.0, "curriculum_epochs": 8, "turns": 4}
_COSINE = {**_TURNS, "schedule": "cosine"}
#: Lever → (what it changes, the TrainingConfig settings).  ``snr_high``: the training
#: SNR is drawn log-uniformly in [SNR, snr_high] instead of at the data's SNR alone.
LEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "in64": ("no downsampling (64 px in)", {"input_size": None}),
    "in32": ("downsampled to 32 px (the pipeline's default)", {"input_size": 32}),
    "in16": ("downsampled to 16 px", {"input_size": 16}),
    "mixture": ("32 px; training SNR log-uniform from the data's up to 16",
                {"input_size": 32, "snr_high": 16.0}),
    "curriculum": ("32 px; training SNR falls from 16 to the data's over 8 epochs",
                   {"input_size": 32, "snr_start": 16.0, "curriculum_epochs": 8}),
    "wide": ("32 px, twice the filters", {"input_size": 32, "width": 2.0}),
    "turns": ("the curriculum; each render also served turned by 90°, 180°, 270° (exact "
              "labels, a quarter of the renders)", _TURNS),
    "cosine": ("turns; the learning rate falls along a half cosine over the budget (not halved "
               "when the validation loss stalls)", _COSINE),
    "cosine_batch128": ("cosine, 128 images a step (4 times the pairs, twice the images)",
                        {**_COSINE, "batch_size": 128}),
    "cosine_wide": ("cosine, 1.5 times the filters", {**_COSINE, "width": 1.5}),
    "cosine_wide2": ("cosine, twice the filters", {**_COSINE, "width": 2.0}),
    "cosine_wide_batch128": ("cosine_wide, 128 images a step (4 times the pairs, twice the "
                             "images)", {**_COSINE, "width": 1.5, "batch_size": 128}),
    "cosine_wide_batch256": ("cosine_wide, 256 images a step (16 times the pairs, 4 times the "
                             "images)", {**_COSINE, "width": 1.5, "batch_size": 256}),
    "cosine_wide_batch128_lr2": ("cosine_wide_batch128, twice the learning rate (2e-3: the "
                                 "rate scaled with the batch)",
                                 {**_COSINE, "width": 1.5, "batch_size": 128,
                                  "learning_rate": 2e-3}),
    "cosine_wide_batch128_lr2_dim32": ("cosine_wide_batch128_lr2 with 32 features instead of "
                                       "128 (the embedding's size)",
                                       {**_COSINE, "width": 1.5, "batch_size": 128,
                                        "learning_rate": 2e-3, "feature_dim": 32}),
    "cosine_wide_batch128_lr2_dim512": ("cosine_wide_batch128_lr2 with 512 features instead "
                                        "of 128 (the embedding's size)",
                                        {**_COSINE, "width": 1.5, "batch_size": 128,
                                         "learning_rate": 2e-3, "feature_dim": 512}),
    "cosine_wide_batch128_lr2_polar": ("cosine_wide_batch128_lr2 on the polar front end "
                                       "(cryoem.polar: 16 rings of 64 angles, convolutions "
                                       "wrapped around the angle)",
                                       {**_COSINE, "width": 1.5, "batch_size": 128,
                                        "learning_rate": 2e-3, "front": "polar"}),
    "cosine_wide_batch128_lr2_confidence": ("cosine_wide_batch128_lr2 with a confidence head "
                                            "(a variance per image, the pairs' Gaussian "
                                            "likelihood); recovery weighs each pair by the "
                                            "inverse of its variance",
                                            {**_COSINE, "width": 1.5, "batch_size": 128,
                                             "learning_rate": 2e-3, "confidence": True}),
    "cosine_wide_batch128_seed1": ("cosine_wide_batch128, training seed 1 instead of 0 (its "
                                   "weights and renders; the same test data): the spread "
                                   "between trainings",
                                   {**_COSINE, "width": 1.5, "batch_size": 128, "seed": 1}),
    "cosine_wide_x2": ("two cosine_wide networks (seeds s, s+1), each trained for half the "
                       "budget; their distances averaged (cryoem.ensemble)",
                       {**_COSINE, "width": 1.5, "members": 2}),
    "cosine_wide_in24": ("cosine_wide downsampled to 24 px (about half the convolutions' cost)",
                         {**_COSINE, "width": 1.5, "input_size": 24}),
    "cosine_wide2_in24": ("cosine_wide2 downsampled to 24 px (about cosine_wide's cost)",
                          {**_COSINE, "width": 2.0, "input_size": 24}),
}
BASELINES = ("euclidean",)
SUPERVISION = ("rendered: images of the TRUE map at the data's SNR, with their true "
               "orientations (supervised on the true map, the paper's setting: an upper bound)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levers", nargs="+", choices=(*LEVERS, *BASELINES),
                   default=[*LEVERS, *BASELINES])
    p.add_argument("--protein", default="4ake")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-projections", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1650)
    p.add_argument("--snr", type=positive_snr, default=1 / 16)
    p.add_argument("--max-shift", type=float, default=0.0)
    p.add_argument("--budget-seconds", type=float, default=300.0)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--recovery-steps", type=int, default=2000)
    p.add_argument("--test-turns", type=int, choices=(1, 2, 4), default=4,
                   help="test-time turns of the learned distance (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    harness.add_options(p, DEFAULT_OUT)
    args = p.parse_args(argv)
    harness.quick_defaults(args, p, {
        "size": 32, "n_projections": 240, "test_size": 80, "budget_seconds": 4.0,
        "steps_per_epoch": 3, "batch_size": 16, "recovery_steps": 50,
        "levers": ["curriculum", "euclidean"],
        "out": DEFAULT_OUT.with_name("distance_ablation_quick.json"),
        "work_dir": DEFAULT_WORK_DIR.with_name("distance_ablation_quick")})
    return args


def training_config(args: argparse.Namespace, lever: str) -> Any:
    """The lever's ``TrainingConfig``: the data's SNR and shifts, the lever's settings."""
    from cryoem import training

    settings = dict(LEVERS[lever][1])
    settings.pop("members", None)  # run_lever splits the budget among an ensemble's members
    high = settings.pop("snr_high", args.snr)
    snr_range = None if math.isinf(args.snr) else (args.snr, max(high, args.snr))
    if snr_range is None:  # noiseless data: no curriculum to fall along
        settings.pop("snr_start", None)
        settings.pop("curriculum_epochs", None)
    common = dict(mode="rendered", epochs=MAX_EPOCHS, max_seconds=args.budget_seconds,
                  steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, patience=30,
                  snr_range=snr_range, max_shift=args.max_shift, seed=args.seed)
    return training.TrainingConfig(**{**common, **settings})  # a lever may set the batch size


def run_lever(args: argparse.Namespace, data_path: Path, lever: str, model_dir: Path
              ) -> dict[str, Any]:
    """Train the lever's model (fresh, or reuse a finished one: ``TRAINING_RECORD``), then
    score its first guess."""
    from cryoem import datasets, distance, ensemble

    data = datasets.load(data_path)
    members = LEVERS[lever][1].get("members", 1)

    def train() -> tuple[dict[str, list[float]], dict[str, Any]]:
        histories = ensemble.train_ensemble([data], model_dir, training_config(args, lever),
                                            members, verbose=0)
        joined = {key: [v for h in histories for v in h.get(key, [])]  # epochs of all members
                  for key in ("loss", "val_loss")}
        return joined, {"members": members,
                        "member_epochs": [len(h.get("loss", [])) for h in histories]}

    trained = trained_once(model_dir, TRAINING_RECORD, train)
    estimator = distance.LearnedDistance(model_dir, turns=args.test_turns).fit(data)
    return {"lever": lever, "what": LEVERS[lever][0], "training": SUPERVISION,
            "budget_seconds": args.budget_seconds, "test_turns": args.test_turns, **trained,
            **score_first_guess(data, estimator, recovery_steps=args.recovery_steps,
                                seed=args.seed)}


def run_baseline(args: argparse.Namespace, data_path: Path) -> dict[str, Any]:
    """The Euclidean baseline through the same first guess."""
    from cryoem import datasets, distance

    data = datasets.load(data_path)
    start = time.perf_counter()
    estimator = distance.EuclideanDistance(seed=args.seed).fit(data)
    return {"lever": "euclidean", "what": "pixel distance, isotonic fit (no network)",
            "training": "fitted on the training split's true orientations",
            "epochs": None, "budget_seconds": None, "train_seconds": time.perf_counter() - start,
            **score_first_guess(data, estimator, recovery_steps=args.recovery_steps,
                                seed=args.seed)}


COLUMNS = [
    Column("lever", lambda r: r.get("lever") or (r.get("scenario") or {}).get("name"), ""),
    Column("epochs", lambda r: r.get("epochs"), ""),
    Column("train s", lambda r: r.get("train_seconds"), ".0f"),
    Column("L_DE", lambda r: r.get("l_de"), ".3f"),
    Column("E_OR O(4)", lambda r: r.get("e_or_o4"), ".3f"),
    Column("E_OR frame", lambda r: r.get("e_or_frame"), ".3f"),
    Column("confidence", lambda r: r.get("frame_confidence"), ".1f"),
]


def markdown(data: dict[str, Any]) -> list[str]:
    """The README's table of this JSON."""
    config = data.get("config") or {}
    rows = data.get("rows") or []
    shift = config.get("max_shift", 0)
    lines = [f"{config.get('protein', '?')}, L = {config.get('size')} px, SNR "
             f"{snr_label(float(config.get('snr', math.inf)))}, shifts ≤ {shift:g} px, "
             f"{config.get('test_size')} test images; every model trained for its budget "
             f"(wall clock, this machine), {SUPERVISION}. E_OR in rad: "
             "O(4) after recovery (the paper's metric), physical after the frame step.", "",
             "| lever | what | budget s | epochs | train s | test turns | L_DE (rad²) | E_OR O(4) | "
             "E_OR after frame (median) | frame confidence | stale |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") == "failed":
            lines.append(f"| {r.get('lever')} | failed: {r.get('reason')} |||||||||")
            continue
        lines.append(
            f"| {r['lever']} | {r['what']} | {harness.cell(r.get('budget_seconds'), '.0f')} | "
            f"{r.get('epochs') or '—'} | "
            f"{harness.cell(r.get('train_seconds'), '.0f')} | {_turns_cell(r)} | "
            f"{harness.cell(r['l_de'], '.3f')}{_confidence_cell(r)} | "
            f"{harness.cell(r['e_or_o4'], '.3f')} | {harness.cell(r['e_or_frame'], '.3f')} "
            f"({harness.cell(r['e_or_frame_median'], '.3f')}) | "
            f"{harness.cell(r['frame_confidence'], '.1f')} | "
            f"{'stale' if r.get('stale') else ''} |")
    return lines


def _confidence_cell(row: dict[str, Any]) -> str:
    """A confidence head's own scores (``_common.confidence_scores``), in words; else nothing."""
    if "variance_error_spearman" not in row:
        return ""
    return (f" (its variances: rank correlation {row['variance_error_spearman']:.2f} with the "
            f"squared error; L_DE {row['l_de_confident']:.3f} on the tenth it is surest of; "
            f"mean {row['mean_variance']:.3f}"
            + (f"; recovered unweighted, O(4) {row['e_or_o4_unweighted']:.3f}"
               if "e_or_o4_unweighted" in row else "") + ")")


def _turns_cell(row: dict[str, Any]) -> str:
    """The row's test-time turns: — for the baseline, 1 for rows made before they existed."""
    return "—" if row["lever"] in BASELINES else str(row.get("test_turns", 1))


def _key(row: dict[str, Any]) -> tuple:
    """What identifies a row: lever, budget and test-time turns (1 before they existed)."""
    return row["lever"], row.get("budget_seconds"), row.get("test_turns", 1)


def same_data(row: dict[str, Any], common: dict[str, Any]) -> bool:
    """Whether a previous row measured the same data and scoring (any lever, any budget, any
    test-time turns)."""
    settings = (row.get("scenario") or {}).get("settings") or {}
    ignored = ("lever", "budget_seconds", "test_turns")
    return ({k: v for k, v in settings.items() if k not in ignored}
            == {k: v for k, v in common.items() if k not in ignored})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = harness.apply_threads(args.threads)
    data_path, _ = harness.dataset(
        args.work_dir / "data", volume=args.protein, size=args.size,
        n_projections=args.n_projections, test_size=args.test_size, snr=args.snr,
        max_shift=args.max_shift, seed=args.seed)
    common = {k: getattr(args, k) for k in (
        "protein", "size", "n_projections", "test_size", "snr", "max_shift", "budget_seconds",
        "steps_per_epoch", "batch_size", "recovery_steps", "seed", "test_turns")}
    rows: list[dict[str, Any]] = []
    config = {**common, "levers": args.levers}
    with Harness("distance_ablation", args.out, config=config, threads=threads,
                 fresh=args.fresh, reuse_stale=args.reuse_stale) as bench:
        previous = {_key(r): r for r in bench.previous().get("rows", []) if same_data(r, common)}
        for lever in args.levers:
            settings = {**common, "lever": LEVERS.get(lever, (None, {}))[1]}
            if lever in BASELINES:  # no training: neither the budget nor the turns apply
                settings.pop("budget_seconds")
                settings.pop("test_turns")
            trained_by = {k: v for k, v in settings.items() if k != "test_turns"}
            model_dir = args.work_dir / "models" / harness.settings_key(lever, trained_by)
            run = ((lambda: run_baseline(args, data_path)) if lever in BASELINES else
                   (lambda lv=lever, m=model_dir: run_lever(args, data_path, lv, m)))
            rows.append(bench.run(Scenario(lever, settings, run)))
            previous.pop((lever, settings.get("budget_seconds"), settings.get("test_turns", 1)),
                         None)
            bench.write({"rows": rows + list(previous.values())})
        print(harness.table(rows, COLUMNS))
        print(f"wrote {args.out}")
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
