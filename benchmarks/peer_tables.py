"""The results tables that compare against the paper and the peers (``results_table.py``).

The paper's table regenerated, our common lines against ASPIRE's, the
general model on unseen proteins, preferred views, and particles from a STAR
without angles: each renders one committed JSON into markdown lines.
"""

from __future__ import annotations

import json
from typing import Any

from _common import row_commit
from table_cells import (SUPERVISED, _l_de, _number, _percent, _snr, _stale_cells, _text,
                         model_origin, supervision_line, truth_text)

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
