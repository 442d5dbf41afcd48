"""What every benchmark script shares: machine information, provenance and the JSON report.

Every report records ``"provenance"`` (:func:`cryoem.provenance.collect`: the commit,
whether the checkout was dirty, the command and the machine), and pipeline runs are
reused only when the commit that produced them is the current one (or when asked,
``reuse_stale=True``, and then the row says ``"stale_from"``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

#: Packages whose versions every report records (those installed).
PACKAGES = ("cryoem", "numpy", "scipy", "finufft", "tensorflow", "keras")


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(threads: int | None, packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """Date, platform, cores, threads and package versions, for the JSON."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "threads": threads if threads is not None else available_cores(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }
    from cryoem import provenance

    return {**info, **provenance.package_versions(packages)}


def jsonable(value: Any) -> Any:
    """Arrays to lists, NumPy scalars to Python, NaN and infinities to ``None``/strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


@functools.lru_cache(maxsize=1)
def run_provenance() -> dict[str, Any]:
    """This process's :func:`cryoem.provenance.collect` (commit, dirty flag, command, machine).

    Computed once, so that every report a script rewrites records the same.
    """
    from cryoem import provenance

    return provenance.collect()


def current_commit() -> str | None:
    """The commit of this checkout (``None`` outside a git checkout)."""
    return run_provenance()["git_commit"]


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write the JSON atomically, so a crash leaves the previous version.

    Parameters
    ----------
    report : dict
        The benchmark's record. A top-level ``"provenance"`` (:func:`run_provenance`) is
        added unless the report already has one.
    out : Path
        The JSON file.
    """
    report = {**report, "provenance": report.get("provenance") or run_provenance()}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")
    os.replace(partial, out)


def positive_snr(text: str) -> float:
    """An SNR from ``0.0625``, ``1/16`` or ``inf`` (for argparse)."""
    import argparse
    from fractions import Fraction

    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as error:
        raise argparse.ArgumentTypeError(f"not an SNR: {text!r}") from error
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the SNR must be positive, got {text!r}")
    return value


def snr_tag(snr: float) -> str:
    """``inf`` or the SNR as a short fraction, for file names and tables (``1-16``)."""
    from fractions import Fraction

    if math.isinf(snr):
        return "inf"
    return str(Fraction(snr).limit_denominator(1000)).replace("/", "-")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waits for another process holding it)."""
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=None)
def volume_name(spec: str, size: int) -> str:
    """The name ``cryoem.volumes.resolve`` gives a volume (what datasets record), computed once."""
    from cryoem import volumes

    return volumes.resolve(spec, size).name


def snr_label(snr: float) -> str:
    """``inf``, or ``1``, ``1/4``, ``1/16`` … for tables."""
    from fractions import Fraction

    return "inf" if math.isinf(snr) else str(Fraction(snr).limit_denominator(1000))


def row_commit(row: dict[str, Any]) -> str | None:
    """The commit that produced a row: ``produced_at``, ``code`` (``harness.py``'s stamp), its
    metrics' provenance, or the one commit its parts (``harness.py`` sub-results) share;
    ``"mixed"`` when those parts come from several commits."""
    metrics = row.get("metrics") or {}
    direct = (row.get("produced_at") or (row.get("code") or {}).get("git_commit")
              or (metrics.get("provenance") or {}).get("git_commit"))
    if direct:
        return direct
    parts = {part["code"].get("git_commit") for part in row.values()
             if isinstance(part, dict) and isinstance(part.get("code"), dict)}
    parts.discard(None)
    if len(parts) > 1:
        return "mixed"
    return parts.pop() if parts else None


def stale_label(row: dict[str, Any], table_commit: str | None,
                transcribed: bool = False) -> str | None:
    """``"stale: produced at abc1234"`` for a row produced by another commit than its table's.

    Parameters
    ----------
    row : dict
        A table row; ``stale_from`` (a stale run reused on request), ``produced_at``,
        ``code.git_commit`` or ``metrics.provenance.git_commit`` say which commit produced it.
    table_commit : str or None
        The commit that wrote the table's JSON (its ``provenance.git_commit``).
    transcribed : bool
        The whole table is stale (transcribed from a published table): no row label.

    Returns
    -------
    str or None
        The label, or ``None`` when the row is as recent as its table.
    """
    if transcribed:
        return None
    if row.get("stale_from"):
        stale = row["stale_from"]
        return "stale: produced at an unrecorded commit" if stale == "unknown" else \
            f"stale: produced at {stale[:7]}"
    commit = row_commit(row)
    if commit is None:
        return None if table_commit is None else "stale: produced at an unrecorded commit"
    if commit == "mixed":
        return "stale: its parts were produced at several commits"
    return None if commit == table_commit else f"stale: produced at {commit[:7]}"


def frame_and_refined(metrics: dict[str, Any]) -> tuple[Any, Any]:
    """A pipeline run's physical E_OR after the frame step and after refinement (or None).

    ``e_or_rad`` is the final error: the refined one once the refine stage ran, else the
    frame step's (also when a later stage failed).
    """
    if metrics.get("e_or_unrefined_rad") is not None:  # the refine stage ran
        return metrics["e_or_unrefined_rad"], metrics.get("e_or_rad")
    return metrics.get("e_or_rad"), None


#: Epochs per-protein models train for in the benchmarks: what the default pipeline's 300 s
#: gave on the idle 2-core CPU of an earlier session (68, benchmarks/pipeline.py; the CPU of
#: 2026-11-30 gives far fewer, see pipeline.json's timings). A number of epochs rather than
#: a wall-clock time, so that scripts sharing the machine stay comparable.
PROTEIN_TRAINING_EPOCHS = 68


def pipeline_row(runs_dir: Path, *, volume: str, snr: float, estimator: str,
                 model: str | None = None, model_tag: str | None = None, sigma2: float = 0.2,
                 refine: bool = False, reuse_only: bool = False, reuse_stale: bool = False,
                 **options: Any) -> dict[str, Any] | None:
    """Run (or reuse) one ``cryoem.pipeline`` run and return its metrics and folder.

    Runs live in ``runs_dir/<volume>_snr<tag>_<estimator>[...]``, so scripts that ask for
    the same run (``paper_table.py``, ``generalisation.py``) share it; the pipeline resumes
    or reuses a finished run and refuses one with other parameters.

    Parameters
    ----------
    runs_dir : Path
        Folder of the runs.
    volume, snr, estimator, model, sigma2, refine, **options
        The run's :class:`cryoem.pipeline.PipelineConfig` (``model_tag`` only names it).
    reuse_only : bool
        Run nothing: a run that finished (or failed) is read back, any other gives ``None``.
    reuse_stale : bool
        Reuse (or resume) a run produced by another commit than the current one, or whose
        commit was not recorded; the row then says ``"stale_from"`` (that commit, or
        ``"unknown"``). Without it such a run is never reused: with ``reuse_only`` it gives
        ``None``, otherwise its folder is set aside (``<name>.stale-<commit>``) and the run
        is computed again.

    Returns
    -------
    dict or None
        ``run``, ``folder``, the configuration, ``seconds`` (this call's), ``metrics``,
        ``failed`` (why a stage failed, or ``None``), ``produced_at`` (the commit that
        produced the run) and, for a stale run reused, ``stale_from``.
    """
    import time

    from cryoem import pipeline

    name = f"{volume}_snr{snr_tag(snr)}_{estimator}"
    if estimator == "perturbed":
        name += f"{sigma2:g}"
    if model_tag:
        name += f"_{model_tag}"
    if refine:
        name += "_refined"
    if estimator == "learned" and model is None:  # trained here: a budget in epochs
        options.setdefault("epochs", PROTEIN_TRAINING_EPOCHS)
        options["train_seconds"] = None
    config = pipeline.PipelineConfig(volume=volume, snr=snr, estimator=estimator, model=model,
                                     sigma2=sigma2, refine=refine, **options)
    row = {"run": name, "folder": str(runs_dir / name), "volume": volume, "snr": snr,
           "estimator": estimator, "sigma2": sigma2 if estimator == "perturbed" else None,
           "refined": refine}
    if reuse_only:
        return _finished_run(runs_dir / name, row, reuse_stale)
    start = time.perf_counter()
    failure = None
    runs_dir.mkdir(parents=True, exist_ok=True)
    with _locked(runs_dir / f".{name}.lock"):  # scripts running side by side share runs
        stale = stale_commit(runs_dir / name)
        if stale is not None and reuse_stale:
            row["stale_from"] = stale
            print(f"  {name}: reusing a run produced at {stale[:7]} (--reuse-stale)", flush=True)
        elif stale is not None:
            _set_aside(runs_dir / name, stale)
        try:
            metrics = pipeline.run(config, runs_dir / name, progress=False,
                                   report=lambda _: None)
        except RuntimeError as error:  # a failed stage: keep what it measured, say why
            failure = str(error)
            metrics_path = runs_dir / name / "metrics.json"
            metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
            print(f"  {name}: {failure}", flush=True)
    produced = row.get("stale_from") or current_commit()
    return {**row, "seconds": time.perf_counter() - start, "metrics": metrics, "failed": failure,
            "produced_at": None if produced == "unknown" else produced}


def _recorded_commits(folder: Path) -> list[str | None]:
    """The commits ``metrics.json`` and ``pipeline.json`` of a run say produced it."""
    commits = []
    for name in ("metrics.json", "pipeline.json"):
        path = folder / name
        if path.is_file():
            record = json.loads(path.read_text())
            commits.append((record.get("provenance") or {}).get("git_commit"))
    return commits


def stale_commit(folder: Path) -> str | None:
    """Why a run in ``folder`` may not be reused: the other commit that produced it.

    Returns
    -------
    str or None
        ``None`` when there is no run there or it was produced by the current commit; else
        the recorded commit that differs, or ``"unknown"`` when none was recorded.
    """
    commits = _recorded_commits(folder)
    if not commits:
        return None
    current = current_commit()
    if current is not None and all(commit == current for commit in commits):
        return None
    return next((c for c in commits if c is not None and c != current), None) or "unknown"


def _set_aside(folder: Path, commit: str) -> Path:
    """Rename a stale run's folder to ``<name>.stale-<commit>`` (never overwriting one)."""
    target = folder.with_name(f"{folder.name}.stale-{commit[:7]}")
    counter = 1
    while target.exists():
        counter += 1
        target = folder.with_name(f"{folder.name}.stale-{commit[:7]}-{counter}")
    folder.rename(target)
    print(f"  {folder.name}: produced at {commit[:7]}, not at the current commit: set aside "
          f"as {target.name} and computed again (--reuse-stale reuses it)", flush=True)
    return target


def _finished_run(folder: Path, row: dict[str, Any], reuse_stale: bool = False
                  ) -> dict[str, Any] | None:
    """A run's record if it finished or failed, without running anything.

    A run produced by another commit (or by an unrecorded one) is returned only with
    ``reuse_stale``, labelled ``"stale_from"``.
    """
    record_path, metrics_path = folder / "pipeline.json", folder / "metrics.json"
    if not (record_path.exists() and metrics_path.exists()):
        return None
    record = json.loads(record_path.read_text())
    if "failed" not in record and "export" not in record.get("finished", []):
        return None
    stale = stale_commit(folder)
    if stale is not None and not reuse_stale:
        print(f"  {folder.name}: produced at {stale[:7]}, not at the current commit: not "
              "reused (--reuse-stale tabulates it, labelled stale)", flush=True)
        return None
    failure = record.get("failed")
    metrics = json.loads(metrics_path.read_text())
    extra = {"stale_from": stale} if stale is not None else {}
    return {**row, **extra, "seconds": sum((metrics.get("timings_s") or {}).values()),
            "metrics": metrics,
            "failed": f"stage '{failure['stage']}' failed: {failure['error']}" if failure else None,
            "produced_at": None if stale == "unknown" else (stale or current_commit())}


def carry_over_rows(previous: dict[str, Any] | None, rows: list[dict[str, Any]],
                    key: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    """The rows of an earlier report that this run did not redo, each labelled with its commit.

    A row that could not be rerun stays in the table, marked stale by the commit that
    produced it (its own ``produced_at``, else the earlier report's, or its transcription's).

    Parameters
    ----------
    previous : dict or None
        The earlier report (its JSON), if any.
    rows : list of dict
        The rows this run produced.
    key : callable
        What identifies a row (e.g. protein, SNR and estimator).
    """
    if not previous:
        return []
    done = {key(row) for row in rows}
    commit = ((previous.get("transcribed") or {}).get("commit")
              or (previous.get("provenance") or {}).get("git_commit") or "unknown")
    kept = []
    for row in previous.get("rows", []):
        if key(row) in done:
            continue
        kept.append({**row, "produced_at": row_commit(row) or commit,
                     "carried_over": "not rerun by this run: kept from the previous report"})
    return kept


# ----------------------------------------------------------------------------
# Sweeps on Dask: one task per run
# ----------------------------------------------------------------------------
@contextlib.contextmanager
def sweep_client(scheduler: str | None) -> Iterator[Any]:
    """A Dask client for a benchmark sweep (``--dask-scheduler``), ``None``: in-process.

    The tasks are the script's own functions: the workers need this folder's modules.  A
    local cluster inherits it through ``PYTHONPATH`` (set before its workers start); an
    existing scheduler's workers get the helper modules uploaded (``Client.upload_file``).
    """
    from cryoem import distributed

    here = str(Path(__file__).resolve().parent)
    if scheduler is not None and scheduler.startswith("local"):
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
    with distributed.connect(scheduler) as client:
        if client is not None and not scheduler.startswith("local"):
            for name in ("_common.py", "harness.py"):
                client.upload_file(str(Path(here) / name))
        yield client


def trained_once(model_dir: Path, record_name: str,
                 train: Callable[[], tuple[dict[str, list[float]], dict[str, Any]]]
                 ) -> dict[str, Any]:
    """A model trained once against the clock, its record kept beside it (``record_name``).

    A finished model (its record there) is reused: its record, with ``model_reused`` true.
    Otherwise the folder is cleared and ``train()`` runs afresh (never resumed: it trains for a
    wall-clock budget); it returns the Keras history and further fields for the record, whose
    ``prepare_seconds`` (data made before the training began) is not counted as training.
    The record: those fields, ``epochs``, ``train_seconds`` and ``best_val_loss``, returned
    with the model's learning curve (:func:`learning_curve`, read from its ``history.csv``
    each time, so that a model trained before curves were recorded gains one when rescored).
    """
    record = model_dir / record_name
    if record.is_file():
        return {**json.loads(record.read_text()), **learning_curve(model_dir),
                "model_reused": True}
    shutil.rmtree(model_dir, ignore_errors=True)
    start = time.perf_counter()
    history, extra = train()
    trained = {**extra, "epochs": len(history.get("loss", [])),
               "train_seconds": time.perf_counter() - start - extra.get("prepare_seconds", 0.0),
               "best_val_loss": float(np.nanmin(history.get("val_loss", [math.nan])))}
    record.write_text(json.dumps(trained))
    return {**trained, **learning_curve(model_dir), "model_reused": False}


def learning_curve(model_dir: Path) -> dict[str, list[float | None]]:
    """The training and validation loss of every epoch (``loss_by_epoch``,
    ``val_loss_by_epoch``; ``None`` where an epoch has none), from the Keras ``history.csv``
    that :func:`cryoem.training.train` writes in ``model_dir``; empty when there is none."""
    path = model_dir / "history.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        epochs = list(csv.DictReader(f))

    def value(text: str | None) -> float | None:  # Keras writes "NA" for a missing one
        try:
            number = float(text or "nan")
        except ValueError:
            return None
        return round(number, 5) if math.isfinite(number) else None

    return {"loss_by_epoch": [value(e.get("loss")) for e in epochs],
            "val_loss_by_epoch": [value(e.get("val_loss")) for e in epochs]}


def scored_distances(data: Any, estimator: Any) -> tuple[Any, float]:
    """The estimator's distance matrix on the test split and its ``L_DE`` (rad²) against the
    true distances under the dataset's point group."""
    from cryoem import distance

    matrix = estimator.matrix(data, data.split["test"])
    return matrix, distance.l_de(matrix, true_test_distances(data))


def true_test_distances(data: Any) -> Any:
    """The true distances between the test split's orientations, under the dataset's point
    group (scoring only)."""
    from cryoem import rotations

    return rotations.symmetric_distance_matrix(
        data.orientations[data.split["test"]],
        rotations.point_group(data.attrs.get("symmetry", "C1")))


def score_first_guess(data: Any, estimator: Any, *, recovery_steps: int = 2000,
                      seed: int = 0, horizon: float | None = None) -> dict[str, Any]:
    """Distances on the test split → recovery → frame; scored against the truth.

    Returns ``l_de`` (rad², test pairs) and :func:`score_recovery`'s scores (its
    ``recovery_seconds`` include the distances).  With a ``horizon`` τ (rad), recovery
    uses the pairs estimated within τ only (the others weigh 0), and :func:`horizon_scores`
    says how well the estimate finds and fits those pairs.  A learned distance with a
    confidence head weighs each pair by the inverse of its variance, and
    :func:`confidence_scores` says whether those variances tell the bad pairs.
    """
    test = data.split["test"]
    start = time.perf_counter()
    matrix, l_de = scored_distances(data, estimator)
    options: dict[str, Any] = {} if horizon is None else {"max_distance": horizon,
                                                          "far_weight": 0.0}
    extra: dict[str, float] = {}
    if getattr(estimator, "confidence", False):
        variances = estimator.variance_matrix(data, test)
        options["pair_weights"] = 1.0 / (variances + np.eye(len(variances)))
        extra = confidence_scores(matrix, true_test_distances(data), variances)
    distance_seconds = time.perf_counter() - start
    scores = score_recovery(matrix, data.projections[test], data.orientations[test],
                            data.attrs.get("symmetry", "C1"), seed=seed, steps=recovery_steps,
                            **options)
    scores["recovery_seconds"] += distance_seconds
    if horizon is not None:
        scores.update(horizon_scores(matrix, true_test_distances(data), horizon))
    if "pair_weights" in options:  # the same distances recovered unweighted: the weights' share
        extra["e_or_o4_unweighted"] = unweighted_o4(matrix, data, seed, recovery_steps, options)
    return {"l_de": l_de, **scores, **extra}


def unweighted_o4(matrix: Any, data: Any, seed: int, steps: int, options: dict[str, Any]
                  ) -> float:
    """The O(4) ``E_OR`` of recovery from ``matrix`` with ``options`` but no pair weights."""
    from cryoem import alignment, recovery

    test = data.split["test"]
    symmetry = data.attrs.get("symmetry", "C1")
    rest = {k: v for k, v in options.items() if k != "pair_weights"}
    recovered = recovery.recover(matrix, symmetry=symmetry, seed=seed, steps=steps, **rest)
    return alignment.align_o4(recovered.quaternions, data.orientations[test], symmetry).mean


def confidence_scores(estimated: Any, exact: Any, variances: Any) -> dict[str, float]:
    """Whether a distance's own variances tell its bad pairs (each pair once):
    ``variance_error_spearman``, the rank correlation of the variance with the squared error,
    ``l_de_confident``, the ``L_DE`` of the tenth of the pairs with the least variance,
    and ``mean_variance`` beside ``l_de`` (a calibrated variance matches it on average)."""
    from scipy.stats import spearmanr

    upper = np.triu_indices(len(exact), 1)
    squared = (np.asarray(estimated)[upper] - np.asarray(exact)[upper]) ** 2
    v = np.asarray(variances)[upper]
    confident = v <= np.quantile(v, 0.1)
    return {"variance_error_spearman": float(spearmanr(v, squared).statistic),
            "l_de_confident": float(np.mean(squared[confident])),
            "mean_variance": float(np.mean(v))}


def horizon_scores(estimated: Any, exact: Any, horizon: float) -> dict[str, float]:
    """How an estimate does on the pairs within ``horizon`` τ (rad), each pair once.

    ``l_de_within``: the ``L_DE`` over the pairs truly within τ, beside
    ``l_de_within_constant``, that of the best constant there (their distances' variance);
    ``called_within``: the share of pairs estimated within τ, ``called_precision``: the
    share of those truly within τ, ``called_recall``: the share of the pairs truly within τ
    estimated within τ (NaN where there are none).
    """
    upper = np.triu_indices(len(exact), 1)
    estimated, exact = np.asarray(estimated)[upper], np.asarray(exact)[upper]
    truly, called = exact < horizon, estimated < horizon
    both = np.count_nonzero(truly & called)
    if not truly.any():
        return {"l_de_within": math.nan, "l_de_within_constant": math.nan,
                "called_within": float(np.mean(called)),
                "called_precision": 0.0 if called.any() else math.nan, "called_recall": math.nan}
    return {"l_de_within": float(np.mean((estimated[truly] - exact[truly]) ** 2)),
            "l_de_within_constant": float(np.var(exact[truly])),
            "called_within": float(np.mean(called)),
            "called_precision": both / np.count_nonzero(called) if called.any() else math.nan,
            "called_recall": both / np.count_nonzero(truly)}


def score_recovery(matrix: Any, images: Any, truth: Any, symmetry: str = "C1", *,
                   seed: int = 0, **recovery_options: Any) -> dict[str, Any]:
    """A distance matrix → ``recovery.recover`` (with ``recovery_options``) → the frame step
    (``commonlines.resolve_frame`` on ``images``); scored against ``truth``.

    Returns ``e_or_o4`` and ``e_or_o4_median`` (the paper's O(4)-aligned E_OR, searched from
    the recovered and the resolved orientations), ``e_or_frame`` and ``e_or_frame_median``
    (physical, after the frame step), ``frame_confidence``, ``l_or`` and the seconds of each
    part.
    """
    from cryoem import alignment, commonlines, recovery

    start = time.perf_counter()
    recovered = recovery.recover(matrix, symmetry=symmetry, seed=seed, **recovery_options)
    recovery_seconds = time.perf_counter() - start
    start = time.perf_counter()
    frame = commonlines.resolve_frame(images, recovered.quaternions, seed=seed)
    resolved = recovery.to_asymmetric_unit(frame.quaternions, symmetry)
    physical = alignment.align_physical(resolved, truth, symmetry)
    o4 = alignment.align_o4_from([recovered.quaternions, resolved], truth, symmetry)
    return {"e_or_o4": o4.mean, "e_or_o4_median": o4.median,
            "e_or_frame": physical.mean, "e_or_frame_median": physical.median,
            "frame_confidence": frame.confidence, "l_or": recovered.final_loss,
            "recovery_seconds": recovery_seconds,
            "frame_seconds": time.perf_counter() - start}
