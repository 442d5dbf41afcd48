"""What every benchmark script shares: machine information and the JSON report."""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata as metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Iterator, Sequence

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
    for package in packages:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


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


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write the JSON atomically, so a crash leaves the previous version."""
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


def frame_and_refined(metrics: dict[str, Any]) -> tuple[Any, Any]:
    """A pipeline run's physical E_OR after the frame step and after refinement (or None).

    ``e_or_rad`` is the final error: the refined one once the refine stage ran, else the
    frame step's (also when a later stage failed).
    """
    if metrics.get("e_or_unrefined_rad") is not None:  # the refine stage ran
        return metrics["e_or_unrefined_rad"], metrics.get("e_or_rad")
    return metrics.get("e_or_rad"), None


#: Epochs the default pipeline trains in its 300 s budget on an idle 2-core CPU (68, measured
#: by benchmarks/pipeline.py). Benchmarks train per-protein models for this many epochs rather
#: than for a wall-clock time, so that scripts sharing the machine stay comparable.
PROTEIN_TRAINING_EPOCHS = 68


def pipeline_row(runs_dir: Path, *, volume: str, snr: float, estimator: str,
                 model: str | None = None, model_tag: str | None = None, sigma2: float = 0.2,
                 refine: bool = False, reuse_only: bool = False,
                 **options: Any) -> dict[str, Any] | None:
    """Run (or reuse) one ``cryoem.pipeline`` run and return its metrics and folder.

    With ``reuse_only``, nothing runs: a run that finished (or failed) is read back, any
    other gives ``None``.

    Runs live in ``runs_dir/<volume>_snr<tag>_<estimator>[...]``, so scripts that ask for
    the same run (``paper_table.py``, ``generalisation.py``) share it; the pipeline resumes
    or reuses a finished run and refuses one with other parameters.
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
        return _finished_run(runs_dir / name, row)
    start = time.perf_counter()
    failure = None
    runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(runs_dir / f".{name}.lock"):  # scripts running side by side share runs
            metrics = pipeline.run(config, runs_dir / name, progress=False,
                                   report=lambda _: None)
    except RuntimeError as error:  # a failed stage: keep what it measured, say why
        failure = str(error)
        metrics_path = runs_dir / name / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        print(f"  {name}: {failure}", flush=True)
    return {**row, "seconds": time.perf_counter() - start, "metrics": metrics, "failed": failure}


def _finished_run(folder: Path, row: dict[str, Any]) -> dict[str, Any] | None:
    """A run's record if it finished or failed, without running anything."""
    record_path, metrics_path = folder / "pipeline.json", folder / "metrics.json"
    if not (record_path.exists() and metrics_path.exists()):
        return None
    record = json.loads(record_path.read_text())
    if "failed" not in record and "export" not in record.get("finished", []):
        return None
    failure = record.get("failed")
    metrics = json.loads(metrics_path.read_text())
    return {**row, "seconds": sum((metrics.get("timings_s") or {}).values()),
            "metrics": metrics,
            "failed": f"stage '{failure['stage']}' failed: {failure['error']}" if failure else None}
