"""Benchmark the Siamese distance learning of ``cryoem.siamese`` (Phase 1).

It measures three things, on projections of the default protein
(``cryoem.volumes.resolve("4ake", L)``): ``N`` uniformly random orientations
(default 5,000) split like the paper (2,512 train / 838 validation / 1,650
test), once noiseless and once at SNR 1/16.  Both datasets come from the same
seed, so they share orientations and splits; they are written under
``--work-dir`` and reused when a later run asks for the same parameters.

1. **Pair-gradients per second** (run ``pairs``).  The same architecture is
   trained two ways on batches of ``B`` images of the training split:
   ``InBatchModel`` (each image embedded once, all ``B(B−1)/2`` pairs scored
   against the target matrix) and ``per_pair_model`` (two images in, one
   distance out, mean squared error: ``B`` pairs per step), both with Adam
   and ``train_on_batch``.  After ``--warmup-steps`` steps, ``--pair-steps``
   steps are timed; pairs/s and the ratio in-batch / per-pair are reported.
2. **Training within a wall-clock budget** (runs ``clean-fixed``,
   ``clean-rendered``, ``noisy-fixed``, ``noisy-rendered``).  ``training.train``
   with ``TrainingConfig(max_seconds=--budget-seconds)``, on the paper's fixed
   training images (``mode="fixed"``, the paper's protocol: labelled projections)
   or on images rendered on the fly from the dataset's true volume at the
   dataset's SNR (``mode="rendered"``: supervised on the true map, an upper bound).  Training stops
   at the end of the epoch that crosses the budget (or earlier, by early
   stopping).  The best model (by validation loss) is then scored with
   ``LearnedDistance`` against ``ExactDistance``: ``distance.l_de`` on the
   validation and test splits and ``distance.binned_error`` on the test split.
   ``best val loss`` is Keras' validation loss, the same squared error but
   weighted so that the true distances are uniform on ``[0, π]`` (and averaged
   over validation batches); ``val L_DE`` / ``test L_DE`` are plain means over
   all pairs ``i < j`` of the split.
3. **Euclidean baseline** (runs ``euclidean-clean``, ``euclidean-noisy``).
   ``EuclideanDistance`` fitted on the training split (isotonic map from pixel
   distance to angle), scored like the learned runs.

Usage (from the repository root)::

    .venv/bin/python benchmarks/distance_learning.py            # everything, L=64, 600 s per run
    .venv/bin/python benchmarks/distance_learning.py --runs pairs clean-fixed --budget-seconds 120
    .venv/bin/python benchmarks/distance_learning.py --size 32 --n-projections 300 \\
        --budget-seconds 10 --steps-per-epoch 5 --pair-steps 3 --batch-size 32   # quick check

It prints a table and writes ``benchmarks/results/distance_learning.json``
(``--out``), rewritten after each run so that an interrupted benchmark keeps
what it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from _common import machine_info, positive_snr, snr_tag, write_report  # noqa: E402
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cryoem.datasets import Dataset

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "distance_learning.json"
DEFAULT_WORK_DIR = Path("data/benchmarks/distance_learning")
PROTEIN = "4ake"
TRAINING_RUNS = ("clean-fixed", "clean-rendered", "noisy-fixed", "noisy-rendered")
EUCLIDEAN_RUNS = ("euclidean-clean", "euclidean-noisy")
ALL_RUNS = ("pairs",) + TRAINING_RUNS + EUCLIDEAN_RUNS
MAX_EPOCHS = 100_000  # the time budget (or early stopping) ends training, not the epoch count
TABLE_BINS = 6  # more bins than this: the table shows the first, middle and last


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", choices=ALL_RUNS, default=list(ALL_RUNS),
                   help="what to run (default: all)")
    p.add_argument("--protein", default=PROTEIN, help="volume for cryoem.volumes.resolve")
    p.add_argument("--size", type=int, default=64, help="image edge L (default: 64)")
    p.add_argument("--n-projections", type=int, default=5000,
                   help="projections per dataset, split 50.24/16.76/33 %% (default: 5000)")
    p.add_argument("--snr", type=positive_snr, default=1 / 16,
                   help="SNR of the noisy dataset, e.g. 1/16 (default)")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                   help="datasets and trained models (datasets reused if the parameters match)")
    p.add_argument("--budget-seconds", type=float, default=600.0,
                   help="wall-clock budget per training run (default: 600)")
    p.add_argument("--arch", choices=("paper", "light"), default="light")
    p.add_argument("--width", type=float, default=1.0, help="filter-count multiplier")
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--input-size", type=int, default=None,
                   help="downsample images to this edge inside the model")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per batch, for training and pair throughput (default: 128)")
    p.add_argument("--steps-per-epoch", type=int, default=100,
                   help="batches per epoch in rendered mode (default: 100)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience (epochs)")
    p.add_argument("--pair-steps", type=int, default=20,
                   help="timed train_on_batch steps per model for pair throughput")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before those")
    p.add_argument("--bins", type=int, default=6, help="bins of binned_error on [0, π]")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow intra-op threads and finufft/BLAS threads (default: all)")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras verbosity")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.pair_steps < 1 or args.n_projections < 10:
        p.error("need --batch-size ≥ 2, --pair-steps ≥ 1 and --n-projections ≥ 10")
    return args


def dataset_path(args: argparse.Namespace, snr: float) -> Path:
    """Where the dataset with these parameters lives."""
    protein = "".join(c if c.isalnum() else "_" for c in Path(args.protein).name)
    name = f"{protein}_L{args.size}_N{args.n_projections}_snr{snr_tag(snr)}_seed{args.seed}.h5"
    return args.work_dir / name


def matches(path: Path, args: argparse.Namespace, snr: float) -> bool:
    """Whether the file at ``path`` is a dataset made with these parameters."""
    from cryoem import datasets

    try:
        data = datasets.load(path, images=False)
    except (FileNotFoundError, ValueError):
        return False
    attrs = data.attrs
    stored_snr = float(attrs.get("snr", math.nan))
    same_snr = (math.isinf(stored_snr) if math.isinf(snr)
                else math.isclose(stored_snr, snr, rel_tol=1e-9))
    return (same_snr and len(data) == args.n_projections and data.size == args.size
            and attrs.get("seed") == args.seed and attrs.get("max_shift") == 0.0
            and not attrs.get("ctf") and attrs.get("sampling") == "uniform")


def ensure_dataset(args: argparse.Namespace, snr: float) -> tuple[Dataset, dict[str, Any]]:
    """Load the dataset for ``snr``, generating it first if missing or made differently."""
    from cryoem import datasets, volumes

    path = dataset_path(args, snr)
    start = time.perf_counter()
    reused = matches(path, args, snr)
    if not reused:
        volume = volumes.resolve(args.protein, args.size)
        datasets.generate(volume, args.n_projections, path, snr=snr, seed=args.seed,
                          overwrite=True)
    data = datasets.load(path)
    info = {"path": str(path), "snr": snr, "reused": reused,
            "seconds": time.perf_counter() - start,
            "split_sizes": {name: len(index) for name, index in data.split.items()},
            "volume_name": data.attrs.get("volume_name"),
            "pixel_size": data.pixel_size}
    print(f"dataset SNR {snr:g}: {'reused' if reused else 'generated'} {path} "
          f"({info['split_sizes']})", file=sys.stderr)
    return data, info


def new_embedding(args: argparse.Namespace) -> Any:
    """A freshly initialised embedding with the benchmark's architecture."""
    import keras

    from cryoem import siamese

    keras.utils.set_random_seed(args.seed)
    return siamese.build_embedding(args.size, args.input_size, args.arch, args.feature_dim,
                                   args.width)


def time_steps(step: Any, batches: list[Any], warmup: int) -> list[float]:
    """Seconds of each call ``step(*batch)`` after ``warmup`` untimed calls."""
    for k in range(warmup):
        step(*batches[k % len(batches)])
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        step(*batch)
        times.append(time.perf_counter() - t0)
    return times


def in_batch_batches(data: Dataset, args: argparse.Namespace,
                     rng: np.random.Generator) -> list[tuple[NDArray, NDArray]]:
    """``--pair-steps`` batches ``(images (B, L, L), targets (B, B))`` from the training split."""
    from cryoem import rotations, training_data

    group = rotations.point_group(data.attrs.get("symmetry", "C1"))
    train = data.split["train"]
    batches = []
    for _ in range(args.pair_steps):
        chosen = np.sort(rng.choice(train, min(args.batch_size, len(train)), replace=False))
        batches.append((data.projections[chosen],
                        training_data.target_matrix(data.orientations[chosen], group)))
    return batches


def per_pair_batches(data: Dataset, args: argparse.Namespace,
                     rng: np.random.Generator) -> list[tuple[list[NDArray], NDArray]]:
    """``--pair-steps`` batches ``([a, b], d)`` of ``B`` random training pairs."""
    from cryoem import distance

    train = data.split["train"]
    batches = []
    for _ in range(args.pair_steps):
        i = rng.integers(0, len(train), args.batch_size)
        j = (i + rng.integers(1, len(train), args.batch_size)) % len(train)  # j ≠ i
        d = distance.ExactDistance().pairs(data, i, j, train).astype(np.float32)
        batches.append(([data.projections[train[i]], data.projections[train[j]]], d))
    return batches


def rate(pairs_per_step: int, times: list[float]) -> dict[str, Any]:
    """Pairs per second from step times (median step, robust to a slow outlier)."""
    step = float(np.median(times))
    return {"pairs_per_step": pairs_per_step, "seconds_per_step": step,
            "seconds_all": times, "pairs_per_second": pairs_per_step / step}


def pair_throughput(data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Pair-gradients per second of in-batch and per-pair training, same architecture."""
    import keras

    from cryoem import siamese

    rng = np.random.default_rng(args.seed)
    batch = min(args.batch_size, len(data.split["train"]))
    in_batch = siamese.InBatchModel(new_embedding(args))
    in_batch.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    in_times = time_steps(in_batch.train_on_batch, in_batch_batches(data, args, rng),
                          args.warmup_steps)
    per_pair = siamese.per_pair_model(new_embedding(args))
    per_pair.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="mse")
    pair_times = time_steps(per_pair.train_on_batch, per_pair_batches(data, args, rng),
                            args.warmup_steps)
    result = {"batch_size": batch, "parameters": int(in_batch.embedding.count_params()),
              # if an image costs the same in both: 2B images per B pairs vs B per B(B−1)/2
              "ideal_ratio": batch - 1,
              "in_batch": rate(batch * (batch - 1) // 2, in_times),
              "per_pair": rate(args.batch_size, pair_times)}
    result["ratio"] = (result["in_batch"]["pairs_per_second"]
                       / result["per_pair"]["pairs_per_second"])
    return result


def training_config(args: argparse.Namespace, mode: str, snr: float) -> Any:
    """The ``TrainingConfig`` of one budgeted run."""
    from cryoem import training

    return training.TrainingConfig(
        arch=args.arch, width=args.width, feature_dim=args.feature_dim,
        input_size=args.input_size, mode=mode, epochs=MAX_EPOCHS,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate, patience=args.patience,
        snr_range=None if math.isinf(snr) else (snr, snr),
        max_seconds=args.budget_seconds, seed=args.seed)


def score(estimator: Any, data: Dataset, bins: int) -> dict[str, Any]:
    """L_DE on the validation and test splits, binned error on the test split."""
    from cryoem import distance

    exact = distance.ExactDistance()
    result: dict[str, Any] = {}
    for split in ("validation", "test"):
        index = data.split[split]
        estimated, true = estimator.matrix(data, index), exact.matrix(data, index)
        result[f"{split}_l_de"] = distance.l_de(estimated, true)
        if split == "test":
            result["test_binned"] = distance.binned_error(estimated, true, bins)
    return result


def epoch_clock() -> Any:
    """A Keras callback; its ``times``: seconds from the start of ``fit`` to each epoch's end."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            self.start, self.times = time.perf_counter(), []

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.times.append(time.perf_counter() - self.start)

    return EpochClock()


def train_run(name: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """One budgeted training run (``clean-fixed`` …), scored on the validation and test splits."""
    from cryoem import distance, training

    mode = name.split("-")[1]
    config = training_config(args, mode, float(data.attrs["snr"]))
    out_dir = args.work_dir / "runs" / name
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, never a resumed one
    clock = epoch_clock()
    start = time.perf_counter()
    history = training.train([data], out_dir, config, verbose=args.verbose, callbacks=[clock])
    seconds = time.perf_counter() - start
    val_loss = history.get("val_loss", [math.nan])
    best = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else None
    row = {"run": name, "kind": "learned", "mode": mode, "snr": float(data.attrs["snr"]),
           "epochs": len(clock.times), "seconds": seconds, "fit_seconds": clock.times[-1],
           "epoch_end_seconds": clock.times, "model_dir": str(out_dir),
           "stopped_by": stop_reason(clock.times[-1], len(clock.times), config),
           "best_val_loss": val_loss[best] if best is not None else math.nan,
           "best_epoch": best + 1 if best is not None else None,
           "best_epoch_seconds": clock.times[best] if best is not None else None,
           "history": history, "config": json.loads(config.to_json())}
    row.update(score(distance.LearnedDistance(out_dir), data, args.bins))
    return row


def stop_reason(seconds: float, epochs: int, config: Any) -> str:
    """Why ``fit`` ended (``seconds`` to its last epoch's end): budget, epochs or early stop."""
    if config.max_seconds is not None and seconds > config.max_seconds:
        return "budget"
    return "epochs" if epochs >= config.epochs else "early-stop"


def euclidean_run(name: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """The Euclidean baseline fitted on the training split and scored like the learned runs."""
    from cryoem import distance

    start = time.perf_counter()
    estimator = distance.EuclideanDistance(seed=args.seed).fit(data)
    row = {"run": name, "kind": "euclidean", "snr": float(data.attrs["snr"]),
           "epochs": None, "fit_pairs": estimator.n_pairs}
    row.update(score(estimator, data, args.bins))
    row["seconds"] = time.perf_counter() - start
    return row




def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def shown_bins(bins: int) -> list[int]:
    """Bins the table shows: all of them, or the first, middle and last."""
    return list(range(bins)) if bins <= TABLE_BINS else [0, bins // 2, bins - 1]


def print_pairs(result: dict[str, Any]) -> None:
    """The pair-throughput lines."""
    b = result["batch_size"]
    labels = {"in_batch": f"in-batch  ({b}·{b - 1}/2 pairs/step)",
              "per_pair": f"per-pair  ({result['per_pair']['pairs_per_step']} pairs/step)"}
    for key, label in labels.items():
        r = result[key]
        print(f"{label:<36} {r['seconds_per_step'] * 1e3:9.1f} ms/step "
              f"{r['pairs_per_second']:12.0f} pairs/s")
    print(f"ratio in-batch / per-pair: {result['ratio']:.0f}× (goal ≥ 100×; "
          f"{result['ideal_ratio']}× if an image costs the same in both)")


def print_table(rows: list[dict[str, Any]], bins: int) -> None:
    """The human-readable summary of the training and baseline runs."""
    edges = np.degrees(np.linspace(0, np.pi, bins + 1))
    chosen = shown_bins(bins)
    bin_names = [f"{edges[k]:.0f}-{edges[k + 1]:.0f}°" for k in chosen]
    header = (f"{'run':<16} {'epochs':>6} {'seconds':>8} {'stop':>10} {'best val':>9} "
              f"{'val L_DE':>9} {'test L_DE':>9}  " + " ".join(f"{n:>8}" for n in bin_names))
    print(header)
    print("-" * len(header))
    for r in rows:
        mae = r["test_binned"]["mean_absolute_error"]
        print(f"{r['run']:<16} {r['epochs'] if r['epochs'] is not None else '—':>6} "
              f"{r['seconds']:>8.1f} {r.get('stopped_by', '—'):>10} "
              f"{_fmt(r.get('best_val_loss'), '.4f'):>9} {_fmt(r['validation_l_de'], '.4f'):>9} "
              f"{_fmt(r['test_l_de'], '.4f'):>9}  "
              + " ".join(f"{_fmt(float(mae[k]), '.3f'):>8}" for k in chosen))
    print("L_DE in rad² (mean over pairs i < j); best val = best Keras validation loss "
          "(uniform-weighted L_DE); last columns: test mean absolute error (rad) by true distance.")


def needed_snrs(runs: list[str], snr: float) -> dict[str, float]:
    """The datasets the selected runs need: ``clean`` and/or ``noisy``."""
    wanted = {"clean": math.inf, "noisy": snr}
    used = {part for run in runs for part in run.split("-") if part in wanted}
    if "pairs" in runs:
        used.add("clean")
    return {name: wanted[name] for name in ("clean", "noisy") if name in used}


def main(argv: list[str] | None = None) -> None:
    """Run the selected parts, print the tables and write the JSON."""
    args = parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from cryoem import siamese

    siamese.configure_threads(args.threads)
    runs = [run for run in ALL_RUNS if run in args.runs]
    report: dict[str, Any] = {"benchmark": "distance_learning", "protein": args.protein,
                              "config": vars(args), "machine": machine_info(args.threads),
                              "datasets": {}, "pairs": None, "runs": []}
    data: dict[str, Dataset] = {}
    for name, snr in needed_snrs(runs, args.snr).items():
        data[name], report["datasets"][name] = ensure_dataset(args, snr)
    total = time.perf_counter()
    for run in runs:
        print(f"--- {run}", file=sys.stderr)
        if run == "pairs":
            report["pairs"] = pair_throughput(data["clean"], args)
        elif run in TRAINING_RUNS:
            report["runs"].append(train_run(run, data[run.split("-")[0]], args))
        else:
            report["runs"].append(euclidean_run(run, data[run.split("-")[1]], args))
        report["seconds"] = time.perf_counter() - total
        write_report(report, args.out)
    if report["pairs"]:
        print_pairs(report["pairs"])
    if report["runs"]:
        print_table(report["runs"], args.bins)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
