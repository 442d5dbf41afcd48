"""What every benchmark script shares: machine information and the JSON report."""

from __future__ import annotations

import datetime
import importlib.metadata as metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Sequence

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
