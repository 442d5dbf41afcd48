"""Regenerate the README's results section from the committed JSON files (no number typed by hand).

Reads what exists of ``benchmarks/results/*.json`` — the default pipeline
(``pipeline.json``), the paper's table (``paper_table.json``), the comparison
with ASPIRE's common lines (``common_lines.json``), the general model
(``generalisation.json``), preferred views (``preferred_views.json``), then
the component benchmarks — writes ``benchmarks/results.md`` and replaces the
block between ``<!-- results:start -->`` and ``<!-- results:end -->`` in
``README.md``.  ``cryoem site build`` turns ``benchmarks/results.md`` into
the site's Results page.

Each section says which commit produced it (``provenance.git_commit``, with
"dirty" when the checkout had uncommitted code), the command and the machine
its JSON recorded; a row produced by another commit than its table's
(``stale_from``, ``produced_at`` or its metrics' provenance) is marked stale,
and a table transcribed from a published one (``"transcribed"``: its JSON was
not kept) is labelled stale with its commit and the command that reruns it.
Tables whose distances come from a model trained on the protein's own true
map say so, with what ``truth_used`` recorded.  A missing file is reported as
not measured; figures the benchmarks draw into ``images/`` are referenced
when they exist.  Nothing here reads the git checkout: the output depends on
the JSON alone, so a test can check that the committed README block is
reproduced.

    python benchmarks/results_table.py [--root REPO] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import row_commit, stale_label  # noqa: E402

ROOT = HERE.parent
RESULTS = Path("benchmarks") / "results"
IMAGES = Path("images")
START, END = "<!-- results:start -->", "<!-- results:end -->"
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
def pipeline_rows(data: dict[str, Any]) -> list[str]:
    """The default ``cryoem pipeline`` run."""
    m = data["metrics"]
    timings = m.get("timings_s") or {}
    per_protein = m.get("estimator") == "learned" and not m.get("model")
    lines = [line for line in [supervision_line(m.get("truth_used"), per_protein)] if line]
    stale = _stale_cells([{"metrics": m}], data)[0] if "provenance" in m else None
    lines += ([""] if lines else []) + [
        "| quantity | value |", "|---|---|",
        f"| protein, projections (recovered) | {m.get('volume')}, "
        f"{m.get('n_projections')} ({m.get('test_size')}) |",
        f"| image size, pixel | {m.get('size')} px, "
        f"{_number(m.get('pixel_size_angstrom'), 3, ' Å')} |",
    ]
    if m.get("route") == "ab-initio":
        lines += [f"| SNR, first guess | {_snr(m.get('snr'))}, ab initio from the images alone "
                  "(no distances, no training) |",
                  f"| E_OR physical: ab initio → refined | "
                  f"{_number(m.get('e_or_unrefined_rad'))} → {_number(m.get('e_or_rad'))} rad |"]
    else:
        lines += [
            f"| SNR, estimator, training | {_snr(m.get('snr'))}, {m.get('estimator')}, "
            f"{m.get('training') or 'not recorded'} |",
            f"| L_DE (test split; “(val)”: validation) | {_l_de(m)} rad² |",
            f"| E_OR, paper's O(4) metric | {_number(m.get('e_or_o4_rad'), 3, ' rad')} |",
            f"| E_OR physical: from distances → frame resolved → refined | "
            f"{_number(m.get('e_or_before_frame_rad'))} → "
            f"{_number(m.get('e_or_unrefined_rad'))} → {_number(m.get('e_or_rad'))} rad |"]
    lines += [
        f"| FSC 0.5 vs truth: final / true orientations | "
        f"{_number(m.get('resolution_fsc05_angstrom'), 2)} / "
        f"{_number(m.get('resolution_fsc05_true_orientations_angstrom'), 2)} Å |",
        f"| half maps FSC 0.143 | {_number(m.get('resolution_halfmap_fsc0143_angstrom'), 2)} Å"
        + (f" ({m['halfmap_independence']})" if m.get("halfmap_independence") else "") + " |",
        f"| total time | {_number(sum(timings.values()), 0, ' s')} "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}) |",
    ]
    return lines + ([f"| produced at | {stale} |"] if stale else [])


def projection_rows(data: dict[str, Any]) -> list[str]:
    """Projector throughput against ASPIRE."""
    repeats = data.get("repeats")
    rows = [f"img/s: the best of {repeats if repeats else 'an unrecorded number of'} timed "
            "calls each (after a warm-up call); ratio = cryoem / ASPIRE.", "",
            "| L | N | cryoem img/s | ASPIRE img/s | ratio |", "|---|---|---|---|---|"]
    for result in data.get("results", []):
        aspire = result.get("aspire") or {}
        rows.append(f"| {result['L']} | {result['n']} | "
                    f"{_number(result['cryoem']['images_per_second'], 0)} | "
                    f"{_number(aspire.get('images_per_second'), 0)} | "
                    f"{_number(result.get('ratio'), 2, '×')} |")
    return rows


def _training_data(run: dict[str, Any]) -> str:
    """What a distance-learning run was fitted on."""
    mode = run.get("mode") or next((m for m in ("fixed", "rendered") if m in run["run"]), None)
    if mode == "rendered":
        return f"renders of the true map: {SUPERVISED}"
    if mode == "fixed":
        return "the training split's labelled projections (the paper's protocol)"
    return "the training split's labelled projections (isotonic fit)"


def distance_rows(data: dict[str, Any]) -> list[str]:
    """Distance learning: throughput and L_DE."""
    pairs = data.get("pairs") or {}
    rows = []
    if pairs:
        ratio = pairs.get("ratio")  # in-batch / per-pair pairs per second
        if ratio is None:
            ratio = pairs["in_batch"]["pairs_per_second"] / pairs["per_pair"]["pairs_per_second"]
        rows.append(f"In-batch training: {_number(pairs['in_batch']['pairs_per_second'], 0)} "
                    f"pair-gradients/s, {_number(ratio, 0)}× the per-pair mode "
                    f"(batch {pairs['batch_size']}).\n")
    rows += ["| run | fitted on | epochs | seconds | validation L_DE | test L_DE |",
             "|---|---|---|---|---|---|"]
    for run in data.get("runs", []):
        rows.append(f"| {run['run']} | {_training_data(run)} | {run.get('epochs') or '—'} | "
                    f"{_number(run.get('seconds'), 0)} | "
                    f"{_number(run.get('validation_l_de'))} | {_number(run.get('test_l_de'))} |")
    return rows


#: Columns shown for row-based benchmarks, in this order, when present.
PREFERRED = ("part", "run", "snr", "size", "L", "n", "N", "method", "options", "distances",
             "images", "e_or_o4", "e_or_before", "e_or", "e_or_after", "e_or_unrefined",
             "confidence", "resolution_angstrom", "resolution_px", "halfmap_fsc0143_angstrom",
             "seconds", "peak_rss_mb", "goal_met")


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "—"
    if isinstance(value, float):
        return _number(value, 4 if abs(value) < 0.1 else 3)
    return "—" if value is None else str(value)


def generic_rows(data: dict[str, Any]) -> list[str]:
    """Any benchmark whose JSON carries a ``rows`` list of flat dicts (options shown)."""
    rows = data.get("rows") or []
    if not rows:
        return ["(no rows recorded)"]
    present = set().union(*(row.keys() for row in rows))
    keys = [k for k in PREFERRED if k in present] or [
        k for k in rows[0] if not isinstance(rows[0][k], (dict, list))][:9]
    lines = []
    if "method" in present and "options" not in present:
        lines += ["The options of each variant (what tells apart rows with the same part and "
                  "method) were not recorded in this JSON.", ""]
    stale = _stale_cells(rows, data) if any(map(row_commit, rows)) else [None] * len(rows)
    keys += ["stale"] if any(stale) else []
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row, label in zip(rows, stale):
        lines.append("| " + " | ".join(_cell(label if k == "stale" else row.get(k))
                                       for k in keys) + " |")
    return lines


def reconstruction_rows(data: dict[str, Any]) -> list[str]:
    """Maps from the true orientations (an oracle): resolution and time."""
    rows = data.get("results") or data.get("rows") or []
    if not rows:
        return ["(no rows recorded)"]
    lines = ["From the true orientations (an oracle: this measures the reconstruction alone); "
             "FSC 0.5 against the ground truth.", "",
             "| L | SNR | N | iterations | seconds | FSC 0.5 Å | FSC 0.5 px | half maps 0.143 Å | "
             "goal |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = r.get("goal") or {}
        lines.append(f"| {r.get('size')} | {_snr(r.get('snr'))} | {r.get('n')} | "
                     f"{r.get('iterations')} | {_number(r.get('seconds'), 1)} | "
                     f"{_number(r.get('resolution_angstrom'), 2)} | "
                     f"{_number(r.get('resolution_pixels'), 2)} | "
                     f"{_number((r.get('half_maps') or {}).get('resolution_angstrom'), 2)} | "
                     f"{'—' if 'met' not in goal else ('met' if goal['met'] else 'missed')} |")
    return lines


REFINEMENT_SECONDS = ("distances", "recovery", "frame", "refinement", "total")


def refinement_rows(data: dict[str, Any]) -> list[str]:
    """Images → orientations → refinement by SNR, with each stage's seconds."""
    rows = data.get("rows") or []
    if not rows:
        return ["(no rows recorded)"]
    lines = ["E_OR in rad (O(4): the paper's metric; frame / refined: physical, after the "
             "frame step / after refinement); seconds by stage, total = images → orientations "
             "(no training, no scoring). Learned first guesses come from "
             "`distance_learning.py`'s models of the same protein (“rendered”: "
             f"{SUPERVISED}).", "",
             "| SNR | N | L | first guess | E_OR O(4) | E_OR frame | E_OR refined | FSC 0.5 Å | "
             + " | ".join(f"{k} s" for k in REFINEMENT_SECONDS) + " | goal |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(REFINEMENT_SECONDS) + "---|"]
    for r in rows:
        seconds = r.get("seconds") if isinstance(r.get("seconds"), dict) else {}
        goal = "—" if r.get("goal_met") is None else ("met" if r["goal_met"] else "missed")
        lines.append(
            f"| {_snr(r.get('snr'))} | {r.get('n')} | {r.get('size')} | "
            f"{_text(r.get('first_guess') or 'not recorded')} | {_cell(r.get('e_or_o4'))} | "
            f"{_cell(r.get('e_or_unrefined'))} | {_cell(r.get('e_or'))} | "
            f"{_number(r.get('resolution_fsc05_angstrom'), 1)} | "
            + " | ".join(_number(seconds.get(k), 1) for k in REFINEMENT_SECONDS)
            + f" | {goal}{' (' + r['goal'] + ')' if r.get('goal') else ''} |")
    return lines


def paper_rows(data: dict[str, Any]) -> list[str]:
    """The paper's table regenerated, beside its own figures (``paper_table.markdown``)."""
    import paper_table

    return paper_table.markdown(data).rstrip("\n").splitlines()


def _part(row: dict[str, Any], part: str, key: str, digits: int = 3, sub: str | None = None
          ) -> str:
    """A number of a common-lines row's part (``ours``, ``aspire``, ``oracle``), or its status."""
    info = row.get(part) or {}
    if info.get("status") != "ok":
        return info.get("status") or "—"
    value = info.get(key)
    return _number(value.get(sub) if isinstance(value, dict) else value, digits)


def _full_split_notes(row: dict[str, Any], snr: str, config: dict[str, Any]) -> list[str]:
    """Notes below the common-lines table: failed parts, the pipeline on the whole test split."""
    notes = [f"SNR {snr}, {part}: {info['status']} ({_text(info.get('reason'))})"
             for part in ("ours", "aspire", "oracle")
             if (info := row.get(part) or {}).get("status") not in (None, "ok")]
    if pipeline := row.get("ours_pipeline_full_test_split"):
        notes.append(
            f"SNR {snr}, the default pipeline on its whole test split "
            f"({config.get('test_size')} images): E_OR {_number(pipeline.get('e_or_rad'))} "
            f"rad refined ({_number(pipeline.get('e_or_unrefined_rad'))} before), FSC 0.5 "
            f"{_number(pipeline.get('resolution_fsc05_angstrom'), 1)} Å"
            + (f", failed: {_text(pipeline['failed'])}" if pipeline.get("failed") else ""))
    return notes


def _like_for_like(rows: list[dict[str, Any]]) -> bool:
    """Whether the rows carry both first guesses (``harness.py``'s common_lines.py)."""
    return any("e_or_unrefined" in (row.get("aspire") or {}) for row in rows)


def describe_model(model: dict[str, Any]) -> tuple[str, bool]:
    """A model (``harness.model_info``): folder, mode, epochs and supervision; and whether it
    was supervised on the test protein's true map."""
    supervision = model.get("supervision") or "supervision not recorded"
    return (f"`{model.get('dir')}` ({model.get('mode') or 'mode not recorded'} mode, "
            f"{model.get('epochs_run') or 'unrecorded'} epochs: {supervision})",
            supervision.startswith("supervised on the true map"))


def _our_models(rows: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """Each model our rows used, with how its training used the truth (``model_info``)."""
    models, supervised = {}, False
    for row in rows:
        model = (row.get("ours") or {}).get("model")
        if isinstance(model, dict) and model.get("dir"):
            models[model["dir"]], seen_truth = describe_model(model)
            supervised |= seen_truth
    return list(models.values()), supervised


def common_lines_rows(data: dict[str, Any]) -> list[str]:
    """Ours against ASPIRE's CLSyncVoting, by SNR: first guesses, then both refined alike."""
    rows = data.get("rows") or []
    if not _like_for_like(rows):
        return _common_lines_legacy(data)
    config, notes = data.get("config") or {}, data.get("notes") or {}
    models, supervised = _our_models(rows)
    lines = [f"The same {config.get('n_subset')} test images of {config.get('volume')} "
             f"(L = {config.get('size')} px, shifts ≤ {_number(config.get('max_shift'), 0)} px) "
             f"for both: {notes.get('like_for_like', 'like for like')}. Our distances: "
             f"{config.get('estimator')}" + (f", {'; '.join(models)}" if models else "")
             + f". E_OR: physical, mean (rad); FSC 0.5 against the ground truth (Å); seconds "
             f"{notes.get('seconds', '')}; goal: {notes.get('goal', '—')}.", ""]
    if supervised:
        lines += [f"Our rows are {SUPERVISED}.", ""]
    stale = _stale_cells(rows, data)
    lines += ["| SNR | N | first guess: ours / ASPIRE | refined: ours / ASPIRE | ratio: first / "
              "refined | ours s (with training) | ASPIRE s | FSC: ours / ASPIRE / true "
              "orientations | goal |" + (" stale |" if any(stale) else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if any(stale) else "")]
    notes_below = []
    for row, label in zip(rows, stale):
        comparison, snr = row.get("comparison") or {}, _snr(row.get("snr_label") or row.get("snr"))
        met = comparison.get("goal_met")
        with_training = _part(row, "ours", "seconds", 0, "total_with_training")
        lines.append(
            f"| {snr} | {row.get('n')} | {_part(row, 'ours', 'e_or_unrefined')} / "
            f"{_part(row, 'aspire', 'e_or_unrefined')} | {_part(row, 'ours', 'e_or')} / "
            f"{_part(row, 'aspire', 'e_or')} | "
            f"{_number(comparison.get('ratio_e_or_first_guess'), 2, '×')} / "
            f"{_number(comparison.get('ratio_e_or'), 2, '×')} | "
            f"{_part(row, 'ours', 'seconds', 1, 'total')} ({with_training}) | "
            f"{_part(row, 'aspire', 'seconds', 1, 'total')} | "
            f"{_part(row, 'ours', 'resolution_fsc05_angstrom', 1)} / "
            f"{_part(row, 'aspire', 'resolution_fsc05_angstrom', 1)} / "
            f"{_part(row, 'oracle', 'resolution_fsc05_angstrom', 1)} | "
            f"{'—' if met is None else ('met' if met else 'missed')} |"
            + (f" {label or '—'} |" if any(stale) else ""))
        notes_below += _full_split_notes(row, snr, config)
    return lines + ([""] + [f"- {note}" for note in notes_below] if notes_below else [])


def _common_lines_legacy(data: dict[str, Any]) -> list[str]:
    """The published comparison before issue 13: ours refined against CLSyncVoting alone."""
    config, notes = data.get("config") or {}, data.get("notes") or {}
    origin, per_protein = model_origin(config.get("model"), config.get("estimator") or "learned")
    lines = [f"The same {config.get('n_subset')} test images of {config.get('volume')} "
             f"(L = {config.get('size')} px, shifts ≤ {_number(config.get('max_shift'), 0)} px) "
             f"for both; ours: {origin}. Not like for like: ASPIRE's CLSyncVoting alone "
             "(unrefined, zero shifts) against ours refined; ours s excludes training. E_OR: "
             "physical, mean (rad); FSC 0.5 against the ground truth (Å); ratio = ours refined / "
             f"ASPIRE unrefined; goal: {notes.get('goal', '—')}.", ""]
    supervised = supervision_line(data.get("truth_used"), per_protein)
    lines += [supervised, ""] if supervised else []
    lines += ["| SNR | N | ours E_OR: frame → refined | ours s | ASPIRE E_OR (unrefined) | "
              "ASPIRE s | ratio | FSC ours | FSC ASPIRE | FSC true orientations | goal |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes_below = []
    for row in data.get("rows") or []:
        comparison, snr = row.get("comparison") or {}, _snr(row.get("snr"))
        met = comparison.get("goal_met")
        lines.append(
            f"| {snr} | {row.get('n')} | {_part(row, 'ours', 'e_or_unrefined')} → "
            f"{_part(row, 'ours', 'e_or')} | {_part(row, 'ours', 'seconds', 1, 'total')} | "
            f"{_part(row, 'aspire', 'e_or')} | {_part(row, 'aspire', 'seconds', 1, 'total')} | "
            f"{_number(comparison.get('ratio_e_or'), 2, '×')} | "
            f"{_part(row, 'ours', 'resolution_fsc05_angstrom', 1)} | "
            f"{_part(row, 'aspire', 'resolution_fsc05_angstrom', 1)} | "
            f"{_part(row, 'oracle', 'resolution_fsc05_angstrom', 1)} | "
            f"{'—' if met is None else ('met' if met else 'missed')} |")
        notes_below += _full_split_notes(row, snr, config)
    return lines + ([""] + [f"- {note}" for note in notes_below] if notes_below else [])


def _pipeline_seconds(row: dict[str, Any]) -> Any:
    """A pipeline run's own stage time (not this call's), or the recorded total."""
    timings = (row.get("metrics") or {}).get("timings_s")
    return sum(timings.values()) if timings else row.get("pipeline_seconds")


def _generalisation_truth(rows: list[dict[str, Any]]) -> str:
    recorded = sorted({f"{row.get('model')}: {truth_text(truth)}" for row in rows
                       if (truth := (row.get("metrics") or {}).get("truth_used"))})
    if recorded:
        return " Truth read other than for scoring (`truth_used`): " + "; ".join(recorded) + "."
    return " The runs did not record which truth they read (`truth_used`)."


def generalisation_rows(data: dict[str, Any]) -> list[str]:
    """One general model, tested on proteins it never saw, against per-protein models."""
    general, settings = data.get("general") or {}, data.get("settings") or {}
    lines = []
    if general:
        proteins = general.get("proteins") or []
        shipped = "shipped (`--model pretrained`)" if general.get("shipped") else "not shipped"
        lines += [f"General model: trained on renders of {len(proteins)} built-in proteins "
                  f"({', '.join(proteins)}); best validation loss "
                  f"{_number(general.get('best_val_loss'))} at epoch {general.get('best_epoch')} "
                  f"of {general.get('epochs_run')}; {shipped}.", ""]
    rows = data.get("rows") or []
    if not rows:
        return lines + ["(no evaluation rows recorded yet)"]
    stale = _stale_cells(rows, data)
    lines += [f"Held-out proteins, whole pipeline with refinement; per-protein: a model trained on "
              f"that protein for {settings.get('protein_epochs') or 'an unrecorded number of'} "
              f"epochs, {SUPERVISED}.{_generalisation_truth(rows)} E_OR in rad, L_DE in rad² "
              "(test split; “(val)”: only the validation split's was recorded), FSC 0.5 against "
              "the ground truth in Å.", "",
              "| protein | SNR | model | L_DE | E_OR O(4) | E_OR physical (frame) | E_OR refined | "
              "FSC 0.5 | pipeline s | failed |" + (" stale |" if any(stale) else ""),
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if any(stale) else "")]
    for row, label in zip(rows, stale):
        m = row.get("metrics") or {}
        lines.append(
            f"| {row.get('volume')} | {_snr(row.get('snr'))} | {row.get('model')} | "
            f"{_l_de(m)} | {_number(m.get('e_or_o4_rad'))} | "
            f"{_number(row.get('e_or_frame_rad'))} | {_number(row.get('e_or_refined_rad'))} | "
            f"{_number(m.get('resolution_fsc05_angstrom'), 1)} | "
            f"{_number(_pipeline_seconds(row), 0)} | "
            f"{_text((row.get('failed') or '').split(' (')[0])} |"
            + (f" {label or '—'} |" if any(stale) else ""))
    return lines


def preferred_views_rows(data: dict[str, Any]) -> list[str]:
    """E_OR against the strength of a preferred view, with the sphere's coverage."""
    s, info = data.get("settings") or {}, data.get("model")
    model = f" (`{s.get('model')}`)" if s.get("estimator") == "learned" else ""
    _, per_protein = model_origin(s.get("model"), s.get("estimator"))
    if isinstance(info, dict) and info.get("dir"):
        text, per_protein = describe_model(info)
        model = f", {text}"
    lines = [f"{s.get('volume')}, L = {s.get('size')} px, {s.get('n_projections')} projections "
             f"({s.get('test_size')} recovered), SNR {_snr(s.get('snr'))}, shifts ≤ "
             f"{_number(s.get('max_shift'), 0)} px; distances: {s.get('estimator')}{model}. "
             "Strength: share of images around one direction at von Mises–Fisher κ; near: "
             "share within the cluster radius; covered: share of the sphere seen (d or −d). "
             "E_OR in rad.", ""]
    supervised = supervision_line(data.get("truth_used"), per_protein)
    lines += [supervised, ""] if supervised else []
    rows = data.get("rows") or []
    stale = _stale_cells(rows, data) if any(map(row_commit, rows)) else [None] * len(rows)
    lines += ["| strength | near | covered | L_DE | E_OR O(4) | E_OR before frame | "
              "E_OR after frame | in / outside cluster | frame confidence |"
              + (" stale |" if any(stale) else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if any(stale) else "")]
    for row, label in zip(rows, stale):
        coverage = row.get("coverage") or {}
        lines.append(
            f"| {(row.get('strength') or {}).get('label')} | "
            f"{_percent(coverage.get('share_near_direction'))} | "
            f"{_percent(coverage.get('covered_fraction_antipodal'))} | "
            f"{_number(row.get('l_de'))} | "
            f"{_number(row.get('e_or_o4_rad'))} | {_number(row.get('e_or_before_frame_rad'))} | "
            f"{_number(row.get('e_or_rad'))} | {_number(row.get('e_or_in_cluster_rad'))} / "
            f"{_number(row.get('e_or_outside_cluster_rad'))} | "
            f"{_number((row.get('frame') or {}).get('confidence'), 1)} |"
            + (f" {label or '—'} |" if any(stale) else ""))
    return lines


def particles_rows(data: dict[str, Any]) -> list[str]:
    """From particles alone: the table ``benchmarks/particles.py`` prints, with its setting."""
    from particles import table

    rows = data.get("rows") or []
    settings = data.get("settings") or {}
    truth = sorted({json.dumps(row.get("truth_used")) for row in rows if "truth_used" in row})
    return [f"N simulated particles of {settings.get('size')} px per set (CTF, "
            "shifts ≤ 2 px), given to `cryoem pipeline --particles` as a RELION STAR with no "
            "angle or origin columns; scored only after the run. Ground truth read by the runs: "
            f"{', '.join(truth) or '—'}. Half maps independent from a 30 Å start.", "",
            table(rows)]


def ablation_rows(data: dict[str, Any]) -> list[str]:
    """The learned distance at low SNR: what each lever gave (``benchmarks/distance_ablation.py``)."""
    from distance_ablation import markdown

    return markdown(data)


def scale_rows(data: dict[str, Any]) -> list[str]:
    """Beyond one machine: the table and projection ``benchmarks/scale.py`` writes."""
    from scale import markdown

    return markdown(data)


class Section(NamedTuple):
    """A section: its title, the script that writes its JSON, how to show it, its figure."""

    title: str
    script: str
    json: str
    rows: Callable[[dict[str, Any]], list[str]]
    figure: str | None = None


SECTIONS: list[Section] = [
    Section("Default pipeline (`cryoem pipeline`)", "pipeline.py", "pipeline.json", pipeline_rows),
    Section("The same particles, ab-initio route (`cryoem pipeline --route ab-initio`)",
            "pipeline.py --route ab-initio", "pipeline_ab_initio.json", pipeline_rows),
    Section("From particles alone: a STAR without angles", "particles.py", "particles.json",
            particles_rows),
    Section("The paper's table, regenerated", "paper_table.py", "paper_table.json", paper_rows),
    Section("Common lines: ours against ASPIRE, by SNR", "common_lines.py", "common_lines.json",
            common_lines_rows, "common-lines-snr.png"),
    Section("Generalisation: one model, unseen proteins", "generalisation.py",
            "generalisation.json", generalisation_rows),
    Section("Preferred views", "preferred_views.py", "preferred_views.json",
            preferred_views_rows, "preferred-views-coverage.png"),
    Section("The learned distance at low SNR: levers", "distance_ablation.py",
            "distance_ablation.json", ablation_rows),
    Section("Projection", "projection.py", "projection.json", projection_rows),
    Section("Distance learning", "distance_learning.py", "distance_learning.json", distance_rows),
    Section("Orientation recovery", "orientation_recovery.py", "orientation_recovery.json",
            generic_rows),
    Section("Reconstruction", "reconstruction.py", "reconstruction.json", reconstruction_rows),
    Section("Refinement", "refinement.py", "refinement.json", refinement_rows),
    Section("Scale: streamed stages, in-process and on Dask", "scale.py", "scale.json",
            scale_rows),
]


def section(root: Path, entry: Section, images: str) -> list[str]:
    """One section's markdown; ``images`` is the ``images/`` folder as the document links it."""
    relative = (RESULTS / entry.json).as_posix()
    data = _load(root / relative)
    lines = [f"### {entry.title}", ""]
    if data is None:
        return lines + [f"Not measured yet: `python benchmarks/{entry.script}` writes "
                        f"`{relative}`.", ""]
    lines += [*provenance_lines(data, entry.script, relative), "", machine_line(data), "",
              *entry.rows(data), ""]
    if entry.figure and (root / IMAGES / entry.figure).is_file():
        lines += [f"![{entry.title}]({images}/{entry.figure})", ""]
    return lines


def render(root: Path = ROOT, images: str = "images") -> str:
    """The markdown of every section, from ``root/benchmarks/results/*.json``.

    Parameters
    ----------
    root : Path
        The repository whose ``benchmarks/results/`` and ``images/`` are read.
    images : str
        The path of ``root/images`` relative to the document the markdown goes into
        (``images`` for the README, ``../images`` for ``benchmarks/results.md``).

    Returns
    -------
    str
        The markdown, without a final newline.
    """
    parts = ["## Results", "",
             "Regenerated by `python benchmarks/results_table.py` from the JSON the scripts write "
             "(committed under `benchmarks/results/`). Each section names the commit, command "
             "and machine that produced it; tables transcribed from earlier results, and rows "
             "produced by another commit than their table's, are marked stale.", ""]
    for entry in SECTIONS:
        parts += section(Path(root), entry, images)
    return "\n".join(parts).rstrip("\n")


def _images_from(document: Path, root: Path) -> str:
    return Path(os.path.relpath(root / IMAGES, document.resolve().parent)).as_posix()


def main(argv: list[str] | None = None) -> None:
    """Write ``benchmarks/results.md`` and the README's results block from the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="repository whose benchmarks/results/ and images/ are read, and "
                             "whose benchmarks/results.md is written (default: this one)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README whose results block is replaced (default: ROOT/README.md)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    readme_path = args.readme or root / "README.md"
    results_md = root / "benchmarks" / "results.md"
    readme = readme_path.read_text()
    block = f"{START}\n{render(root, _images_from(readme_path, root))}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), flags=re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{readme_path} has no {START} … {END} block")
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(render(root, _images_from(results_md, root)) + "\n")
    readme_path.write_text(pattern.sub(lambda _: block, readme))
    print(f"updated {readme_path} and {results_md}")


if __name__ == "__main__":
    main()
