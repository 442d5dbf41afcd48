"""The cells and provenance lines every results table shares (``results_table.py``).

Numbers, SNRs and percentages formatted the same way in every table; each
section's commit, command and machine line; what a model was trained on and
which ground truth it read.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from _common import stale_label

SUPERVISED = "supervised on the true map (the paper's setting, an upper bound)"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _number(value: Any, digits: int = 3, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}{unit}"
    return str(value)


def _snr(value: Any) -> str:
    """``∞``, ``1/16`` or ``2`` for an SNR stored as a number or the string ``"inf"``."""
    try:
        snr = float(value)
    except (TypeError, ValueError):
        return _number(value)
    if math.isinf(snr):
        return "∞"
    return f"1/{1 / snr:g}" if 0 < snr < 1 else f"{snr:g}"


def _percent(value: Any) -> str:
    return _number(None if value is None else 100 * value, 0, " %")


def _text(value: Any) -> str:
    """Free text (a failure message) fit for one table cell."""
    return "—" if not value else " ".join(str(value).split()).replace("|", "\\|")


def _short(commit: str | None) -> str:
    return f"`{commit[:7]}`" if commit else "not recorded"


def _l_de(metrics: dict[str, Any]) -> str:
    """L_DE on the test split, else the validation split's, labelled."""
    if metrics.get("l_de_test") is not None:
        return _number(metrics["l_de_test"])
    value = metrics.get("l_de_val")
    return "—" if value is None else f"{_number(value)} (val)"


# ----------------------------------------------------------------------------
# Provenance, machine and the use of the truth
# ----------------------------------------------------------------------------
def provenance_lines(data: dict[str, Any], script: str, relative: str) -> list[str]:
    """Which commit and command produced a section's JSON, or that it is transcribed."""
    rerun = f"`python benchmarks/{script}`"
    transcribed = data.get("transcribed")
    if transcribed:
        first = transcribed.get("first_published")
        return [f"**Stale**: transcribed from {transcribed.get('from')} at commit "
                f"{_short(transcribed.get('commit'))}"
                + (f" (first published at {_short(first)})"
                   if first and first != transcribed.get("commit") else "")
                + f"; {transcribed.get('note')}. Rerun: {rerun} → `{relative}`."]
    provenance = data.get("provenance") or {}
    commit = provenance.get("git_commit")
    dirty = " (dirty: uncommitted code)" if provenance.get("git_dirty") else ""
    command = _rerunnable(provenance.get("command"), script)
    line = (f"Produced at commit {_short(commit)}{dirty} by `{command}` → `{relative}`.")
    if not provenance:
        line += " Its JSON predates provenance records: stale, commit unknown."
    return [line]


def _rerunnable(command: str | None, script: str) -> str:
    """The recorded command as one reruns it from the repository's root.

    Provenance records the script by name (``paper_table.py --snrs inf``); the table
    prints ``python benchmarks/paper_table.py --snrs inf``.
    """
    if not command:
        return f"python benchmarks/{script}"
    first, _, rest = command.partition(" ")
    if first.endswith(".py") and "/" not in first:
        first = f"python benchmarks/{first}"
    elif first.endswith(".py"):
        first = f"python {first}"
    return f"{first} {rest}".strip()


def machine_line(data: dict[str, Any]) -> str:
    """The machine the JSON recorded (processor, cores, memory, threads), or that it did not."""
    machine = {**(data.get("machine") or {}),
               **((data.get("provenance") or {}).get("machine") or {})}
    if not machine:
        return "Machine: not recorded."
    parts = [str(machine.get("cpu_model") or machine.get("processor") or "CPU not recorded")]
    if machine.get("available_cores") is not None:
        parts.append(f"{machine['available_cores']} of {machine.get('cpu_count')} cores "
                     "available")
    if machine.get("memory_gb") is not None:
        parts.append(f"{machine['memory_gb']:g} GB memory")
    if machine.get("threads") is not None:
        parts.append(f"{machine['threads']} threads")
    return f"Machine: {', '.join(parts)}."


def truth_text(truth_used: Any) -> str:
    """``train read volume, orientations; …`` from a ``truth_used`` map."""
    return "; ".join(f"{stage} read {', '.join(map(str, fields))}"
                     for stage, fields in truth_used.items())


def model_origin(model: Any, estimator: str | None = "learned") -> tuple[str, bool]:
    """Where a distance model came from, and whether it was trained on this protein's map."""
    if estimator not in (None, "learned"):
        return f"{estimator} distances", False
    if model in (None, "auto"):
        return ("learned distances, the model the default pipeline trains on each SNR's "
                "dataset", True)
    if model == "pretrained":
        return ("learned distances, the shipped general model (`pretrained`), trained on "
                "other proteins", False)
    run = re.search(r"runs/([^/]+)/model/?$", str(model))
    per_protein = bool(run and "_learned" in run.group(1) and "_general" not in run.group(1))
    return f"learned distances, the model `{model}`", per_protein


def supervision_line(truth_used: Any, per_protein: bool) -> str | None:
    """The label of a table whose distance model saw the truth (``truth_used`` when recorded)."""
    if truth_used:
        train = truth_used.get("train") or []
        label = ("Distances " + SUPERVISED if "volume" in train else
                 "Distances supervised on labelled training projections" if train else
                 "Reads the truth other than for scoring")
        return f"{label}: {truth_text(truth_used)} (`truth_used`)."
    if truth_used == {}:
        return "No stage read the truth other than for scoring (`truth_used` is empty)."
    if per_protein:
        return (f"Distances {SUPERVISED}: the model was trained on this protein's dataset "
                "(`truth_used` not recorded).")
    return None


def _stale_cells(rows: list[dict[str, Any]], data: dict[str, Any]) -> list[str | None]:
    commit = (data.get("provenance") or {}).get("git_commit")
    return [stale_label(row, commit, bool(data.get("transcribed"))) for row in rows]


# ----------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------
