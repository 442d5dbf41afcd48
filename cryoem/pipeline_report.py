"""What a pipeline run reports: ``metrics.json`` and the closing summary table.

:func:`write_metrics` writes every key of :data:`METRIC_KEYS` (null when not
applicable) with the versions, the config hash, the ground truth each stage
read beyond scoring (``truth_used``) and the run's ``provenance``;
:func:`summary` is the table ``cryoem pipeline`` prints at the end.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, provenance

__all__ = ["METRIC_KEYS", "write_metrics", "write_json", "summary"]

#: Keys of ``metrics.json`` (numbers, or null when not applicable).
METRIC_KEYS = (
    "volume", "n_projections", "test_size", "size", "pixel_size_angstrom", "snr", "route",
    "estimator", "training", "scored_against", "l_de_test", "l_de_val", "l_or", "e_or_rad", "e_or_median_rad", "e_or_o4_rad", "e_or_before_frame_rad",
    "e_or_unrefined_rad", "resolution_fsc05_angstrom",
    "resolution_fsc05_true_orientations_angstrom", "resolution_halfmap_fsc0143_angstrom",
    "halfmap_independence", "timings_s", "versions", "config_hash", "truth_used", "provenance",
)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _versions() -> dict[str, str]:
    return {"cryoem": __version__, "python": platform.python_version(),
            **provenance.package_versions(("numpy", "scipy", "finufft", "tensorflow", "keras",
                                           "gemmi", "mrcfile", "h5py"))}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_metrics(run: Any) -> Path:
    """``metrics.json`` with every key of :data:`METRIC_KEYS` (null when not applicable)."""
    metrics = {key: _finite_or_none(run.metrics.get(key)) for key in METRIC_KEYS}
    if run.config.particles is None:
        metrics["snr"] = run.config.snr if np.isfinite(run.config.snr) else "inf"
    metrics.update(timings_s=run.record["timings_s"], versions=_versions(),
                   config_hash=run.record["config_hash"],
                   truth_used=run.record.get("truth_used", {}),
                   provenance=run.record.get("provenance"))
    commits = set((run.record.get("stage_commits") or {}).values())
    if len(commits) > 1:  # resumed across code changes: say so
        metrics["stage_commits"] = run.record["stage_commits"]
    metrics.update({k: v for k, v in run.metrics.items() if k not in metrics})
    path = run.path("metrics.json")
    write_json(path, metrics)
    return path


def write_json(path: Path, value: Any) -> None:
    from ._files import atomic_path

    with atomic_path(path) as partial:
        partial.write_text(json.dumps(value, indent=2, default=_json_default))


def _truth_text(truth_used: dict[str, list[str]] | None) -> str:
    """``train: volume, orientations; …`` or ``nothing``; training on the true map is flagged."""
    if not truth_used:
        return "nothing"
    text = "; ".join(f"{stage}: {', '.join(fields)}" for stage, fields in truth_used.items())
    if "volume" in truth_used.get("train", []):
        text += " (supervised on the true map: an upper bound)"
    return text


def _independence(metrics: dict[str, Any]) -> str:
    text = metrics.get("halfmap_independence") or ""
    return "independent" if text.startswith("independent") else "not independent"


def summary(metrics: dict[str, Any]) -> str:
    """A closing table of the main numbers."""
    def fmt(value: Any, unit: str = "") -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.3f}{unit}"
        return f"{value}{unit}"

    rows = [
        ("protein", fmt(metrics.get("volume"))),
        ("projections (test)", f"{metrics.get('n_projections')} ({metrics.get('test_size')})"),
        ("image size, pixel", f"{metrics.get('size')} px, {fmt(metrics.get('pixel_size_angstrom'), ' Å')}"),
        ("SNR", fmt(metrics.get("snr"))),
        ("first guess", fmt(metrics.get("route"))),
        ("estimator", fmt(metrics.get("estimator"))),
        ("ground truth read (not to score)", _truth_text(metrics.get("truth_used"))),
        ("scored against", fmt(metrics.get("scored_against")) if metrics.get("scored_against")
         else "nothing (no ground truth)"),
        ("L_DE test", fmt(metrics.get("l_de_test"), " rad²")),
        ("L_OR", fmt(metrics.get("l_or"), " rad²")),
        ("E_OR, paper's O(4) metric", fmt(metrics.get("e_or_o4_rad"), " rad")),
        ("E_OR physical, from distances", fmt(metrics.get("e_or_before_frame_rad"), " rad")),
        ("E_OR physical, before refinement", fmt(metrics.get("e_or_unrefined_rad"), " rad")),
        ("E_OR physical, final", fmt(metrics.get("e_or_rad"), " rad")),
        ("FSC 0.5, final orientations", fmt(metrics.get("resolution_fsc05_angstrom"), " Å")),
        ("FSC 0.5, true orientations", fmt(metrics.get("resolution_fsc05_true_orientations_angstrom"), " Å")),
        (f"half maps FSC 0.143 ({_independence(metrics)})",
         fmt(metrics.get("resolution_halfmap_fsc0143_angstrom"), " Å")),
        ("total time", fmt(sum((metrics.get("timings_s") or {}).values()), " s")),
    ]
    commit = (metrics.get("provenance") or {}).get("git_commit")
    rows.append(("code", f"cryoem {metrics.get('versions', {}).get('cryoem')}, commit "
                         f"{commit[:10] if commit else 'unknown (not a git checkout)'}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
