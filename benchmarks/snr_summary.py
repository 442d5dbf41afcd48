"""The learned distance against SNR: one table gathered from several benchmarks' JSON.

The supervised rows (a network trained on renders of the true map of the very protein it is
scored on: the paper's setting, an upper bound) come from ``distance_ablation.py`` at each SNR;
the general models' rows (trained without the held-out proteins) and the Euclidean baseline
from ``generalisation_levers.py``.  Every row keeps the commit that produced it, the hardware
it trained on and for how long, so that rows made on different machines are not mistaken for
a like-for-like comparison.  ``results_table.py`` puts the table in the README.
"""

from __future__ import annotations

import math
from typing import Any

from _common import row_commit
from table_cells import SUPERVISED, _number, _short, _snr

#: The one-protein ablations at each SNR (4ake, no shifts) and the lever they share.
SUPERVISED_SOURCES = ("distance_ablation_snrinf.json", "distance_ablation_snr1.json",
                      "distance_ablation_snr1_4.json", "distance_ablation.json",
                      "distance_ablation_heads.json", "distance_ablation_snr1_32.json")
SUPERVISED_LEVER = "cosine_wide_batch128_lr2"
#: The general-model ablations (held-out proteins, shifts ≤ 2 px) and the models shown.
GENERAL_SOURCES = ("generalisation_levers.json", "generalisation_levers_gpu.json")
GENERAL_LEVERS = {"shipped": "general: the shipped model (`--model pretrained`)",
                  "builtin": "general: the built-in lever"}
SOURCES = SUPERVISED_SOURCES + GENERAL_SOURCES


def _hardware(row: dict[str, Any], data: dict[str, Any]) -> str:
    """Where the row's model trained: its record's accelerator, else the table's machine when
    the table's run trained it (not the shipped model, not a row kept from an older run)."""
    if row.get("trained_on"):
        return str(row["trained_on"])
    machine = (data.get("provenance") or {}).get("machine") or {}
    if not machine or row.get("stale") or row.get("lever") == "shipped":
        return "hardware not recorded"
    return f"{machine.get('cpu_model', 'CPU')}, {machine.get('available_cores', '?')} cores"


def _training(row: dict[str, Any], data: dict[str, Any]) -> str:
    """The training's epochs and seconds and where it ran; ``—`` for a fit without training."""
    seconds = row.get("train_seconds")
    if row.get("epochs") is None:
        return "no training" + (f" (fit {seconds:.0f} s)" if seconds is not None else "")
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    return f"{row['epochs']} epochs{took}, {_hardware(row, data)}"


def _commit(row: dict[str, Any], data: dict[str, Any]) -> str:
    """The commit that produced the row (its own record, else its table's)."""
    commit = row_commit(row) or (data.get("provenance") or {}).get("git_commit")
    return _short(commit) + (" (stale)" if row.get("stale") else "")


def supervised_rows(sources: dict[str, dict[str, Any] | None]) -> list[tuple[Any, ...]]:
    """``(model, protein, snr, row, data)`` of the supervised lever and the Euclidean baseline."""
    rows = []
    for name in SUPERVISED_SOURCES:
        data = sources.get(name)
        if not data:
            continue
        config = data.get("config") or {}
        for row in data.get("rows") or []:
            model = _model(row, {SUPERVISED_LEVER: f"supervised ({SUPERVISED_LEVER})"})
            if model:
                rows.append((model, config.get("protein"), float(config.get("snr", math.nan)),
                             row, data))
    return rows


def general_rows(sources: dict[str, dict[str, Any] | None]) -> list[tuple[Any, ...]]:
    """``(model, protein, snr, row, data)`` of the general models on the held-out proteins."""
    rows = []
    for name in GENERAL_SOURCES:
        data = sources.get(name)
        for row in (data or {}).get("rows") or []:
            if "seen" in row or row.get("status") == "failed":
                continue  # a protein the model trained on, or no score
            model = _model(row, GENERAL_LEVERS)
            if model:
                rows.append((model, row.get("protein"), float(row.get("snr", math.nan)), row,
                             data))
    return rows


def _model(row: dict[str, Any], names: dict[str, str]) -> str | None:
    """The row's model as the table names it (with its training volumes, when counted):
    one of ``names`` by lever, the Euclidean baseline, or None for a lever not shown."""
    lever = row.get("lever")
    if lever == "euclidean":
        return "Euclidean"
    if lever not in names:
        return None
    return names[lever] + (f", {row['volumes']} proteins" if row.get("volumes") else "")


def markdown(sources: dict[str, dict[str, Any] | None]) -> list[str]:
    """The table: supervised rows first, then the general models', by protein and falling SNR.

    Parameters
    ----------
    sources : dict
        Each name of :data:`SOURCES` to its loaded JSON (None when absent).

    Returns
    -------
    list of str
        The markdown lines.
    """
    lines = ["Supervised: one network per SNR trained on renders of 4ake itself — "
             f"{SUPERVISED} — and scored on 4ake's 1,650 test images without shifts. General: "
             "trained without the held-out proteins, scored on their test images with shifts "
             "≤ 2 px. The Euclidean baseline (an isotonic fit on each protein's true "
             "orientations) is scored beside them. The rows come from the sections below; each "
             "names the commit that made it and what its model trained on for how long. Machines "
             "with the same CPU name made some rows at very different speeds (the two "
             "supervised rows at SNR 1/16): compare rows by their epochs, not their seconds. "
             "E_OR in rad: O(4) after recovery (the paper's metric), physical "
             "after the frame step.",
             "",
             "| model | protein | SNR | L_DE (rad²) | E_OR O(4) | E_OR after frame | training "
             "| commit |",
             "|---|---|---|---|---|---|---|---|"]
    rows = supervised_rows(sources)
    general = general_rows(sources)
    order = {model: i for i, model in enumerate(dict.fromkeys(r[0] for r in general))}
    rows += sorted(general, key=lambda r: (order[r[0]], str(r[1]), -r[2]))
    for model, protein, snr, row, data in rows:
        lines.append(
            f"| {model} | {protein} | {_snr(snr)} | {_number(row.get('l_de'))} | "
            f"{_number(row.get('e_or_o4'))} | {_number(row.get('e_or_frame'))} | "
            f"{_training(row, data)} | {_commit(row, data)} |")
    return lines
