"""Regenerate the README's results section from the measured JSON files (no number typed by hand).

Reads what exists of ``benchmarks/results/*.json`` — the default pipeline
(``pipeline.json``), the paper's table (``paper_table.json``), the comparison
with ASPIRE's common lines (``common_lines.json``), the general model
(``generalisation.json``), preferred views (``preferred_views.json``), then
the component benchmarks — writes ``benchmarks/results.md`` and replaces the
block between ``<!-- results:start -->`` and ``<!-- results:end -->`` in
``README.md``.  Each section names the command that wrote its JSON; a missing
file is reported as not measured.  Figures the benchmarks draw into
``images/`` are referenced when they exist.  ``cryoem site build`` turns
``benchmarks/results.md`` into the site's Results page.

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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"
IMAGES = Path("images")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _number(value: Any, digits: int = 3, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, float)):
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


def pipeline_rows(data: dict[str, Any]) -> list[str]:
    """The default ``cryoem pipeline`` run."""
    metrics = data["metrics"]
    total = sum((metrics.get("timings_s") or {}).values())
    return [
        "| quantity | value |", "|---|---|",
        f"| protein, projections (recovered) | {metrics.get('volume')}, "
        f"{metrics.get('n_projections')} ({metrics.get('test_size')}) |",
        f"| image size, pixel | {metrics.get('size')} px, "
        f"{_number(metrics.get('pixel_size_angstrom'), 3, ' Å')} |",
        f"| SNR, estimator | {metrics.get('snr')}, {metrics.get('estimator')} |",
        f"| L_DE (validation) | {_number(metrics.get('l_de_val'), 3, ' rad²')} |",
        f"| E_OR, paper's O(4) metric | {_number(metrics.get('e_or_o4_rad'), 3, ' rad')} |",
        f"| E_OR physical: from distances → frame resolved → refined | "
        f"{_number(metrics.get('e_or_before_frame_rad'))} → "
        f"{_number(metrics.get('e_or_unrefined_rad'))} → {_number(metrics.get('e_or_rad'))} rad |",
        f"| FSC 0.5 vs truth: final / true orientations | "
        f"{_number(metrics.get('resolution_fsc05_angstrom'), 2)} / "
        f"{_number(metrics.get('resolution_fsc05_true_orientations_angstrom'), 2)} Å |",
        f"| half maps FSC 0.143 | {_number(metrics.get('resolution_halfmap_fsc0143_angstrom'), 2)} Å |",
        f"| total time (2-core CPU) | {_number(total, 0, ' s')} "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in metrics.get('timings_s', {}).items())}) |",
    ]


def projection_rows(data: dict[str, Any]) -> list[str]:
    """Projector throughput against ASPIRE."""
    rows = ["| L | N | cryoem img/s | ASPIRE img/s | ratio |", "|---|---|---|---|---|"]
    for result in data.get("results", []):
        aspire = result.get("aspire") or {}
        rows.append(f"| {result['L']} | {result['n']} | "
                    f"{_number(result['cryoem']['images_per_second'], 0)} | "
                    f"{_number(aspire.get('images_per_second'), 0)} | "
                    f"{_number(result.get('ratio'), 2, '×')} |")
    return rows


def distance_rows(data: dict[str, Any]) -> list[str]:
    """Distance learning: throughput and L_DE."""
    pairs = data.get("pairs") or {}
    rows = []
    if pairs:
        ratio = pairs["in_batch"]["pairs_per_second"] / pairs["per_pair"]["pairs_per_second"]
        rows.append(f"In-batch training: {_number(pairs['in_batch']['pairs_per_second'], 0)} "
                    f"pair-gradients/s, {_number(ratio, 0)}× the per-pair mode "
                    f"(batch {pairs['batch_size']}).\n")
    rows += ["| run | epochs | seconds | validation L_DE | test L_DE |", "|---|---|---|---|---|"]
    for run in data.get("runs", []):
        rows.append(f"| {run['run']} | {run.get('epochs') or '—'} | "
                    f"{_number(run.get('seconds'), 0)} | "
                    f"{_number(run.get('validation_l_de'))} | {_number(run.get('test_l_de'))} |")
    return rows


#: Columns shown for row-based benchmarks, in this order, when present.
PREFERRED = ("part", "run", "snr", "size", "L", "n", "N", "method", "distances", "images",
             "e_or_o4", "e_or_before", "e_or", "e_or_after", "e_or_unrefined", "confidence",
             "resolution_angstrom", "resolution_px", "halfmap_fsc0143_angstrom", "seconds",
             "peak_rss_mb", "goal_met")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return _number(value, 4 if abs(value) < 0.1 else 3)
    return "—" if value is None else str(value)


def generic_rows(data: dict[str, Any]) -> list[str]:
    """Any benchmark whose JSON carries a ``rows`` list of flat dicts."""
    rows = data.get("rows") or []
    if not rows:
        return ["(no rows recorded)"]
    present = set().union(*(row.keys() for row in rows))
    keys = [k for k in PREFERRED if k in present] or [
        k for k in rows[0] if not isinstance(rows[0][k], (dict, list))][:9]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return lines


def paper_rows(data: dict[str, Any]) -> list[str]:
    """The paper's table regenerated, beside its own figures (``paper_table.markdown``)."""
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    import paper_table

    return paper_table.markdown(data).rstrip("\n").splitlines()


def _part(row: dict[str, Any], part: str, key: str, digits: int = 3, sub: str | None = None
          ) -> str:
    """A number of a common-lines row's part (``ours``, ``aspire``, ``oracle``), or its status."""
    info = row.get(part) or {}
    if info.get("status") != "ok":
        return info.get("status") or "—"
    value = info.get(key)
    return _number(value.get(sub) if sub and isinstance(value, dict) else value, digits)


def _our_distances(config: dict[str, Any]) -> str:
    """How the common-lines benchmark computed our distances, from its options."""
    estimator, model = config.get("estimator") or "learned", config.get("model")
    if estimator != "learned":
        return f"{estimator} distances"
    if model == "auto":
        return "learned distances, the model the default pipeline trains on each SNR's dataset"
    if model == "pretrained":
        return "learned distances, the shipped general model (`pretrained`)"
    return f"learned distances, the model `{model}`"


def common_lines_rows(data: dict[str, Any]) -> list[str]:
    """Ours (distances → recovery → frame → refinement) against ASPIRE's CLSyncVoting, by SNR."""
    config, notes = data.get("config") or {}, data.get("notes") or {}
    lines = [f"The same {config.get('n_subset')} test images of {config.get('volume')} "
             f"(L = {config.get('size')} px, shifts ≤ {_number(config.get('max_shift'), 0)} px) "
             f"for both; ours: {_our_distances(config)}. E_OR: physical, mean (rad); FSC 0.5 "
             "against the ground truth (Å); ratio = ours refined / ASPIRE; "
             f"goal: {notes.get('goal', '—')}.", "",
             "| SNR | N | ours E_OR: frame → refined | ours s | ASPIRE E_OR | ASPIRE s | ratio | "
             "FSC ours | FSC ASPIRE | FSC true orientations | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes_below = []
    for row in data.get("rows", []):
        comparison, snr = row.get("comparison") or {}, _snr(row.get("snr"))
        met = comparison.get("goal_met")
        lines.append(
            f"| {snr} | {row.get('n')} | {_part(row, 'ours', 'e_or_unrefined')} → "
            f"{_part(row, 'ours', 'e_or')} | {_part(row, 'ours', 'seconds', 1, 'total')} | "
            f"{_part(row, 'aspire', 'e_or')} | {_part(row, 'aspire', 'seconds', 1)} | "
            f"{_number(comparison.get('ratio_e_or'), 2, '×')} | "
            f"{_part(row, 'ours', 'resolution_fsc05_angstrom', 1)} | "
            f"{_part(row, 'aspire', 'resolution_fsc05_angstrom', 1)} | "
            f"{_part(row, 'oracle', 'resolution_fsc05_angstrom', 1)} | "
            f"{'—' if met is None else ('met' if met else 'missed')} |")
        notes_below += [f"SNR {snr}, {part}: {info['status']} ({_text(info.get('reason'))})"
                        for part in ("ours", "aspire", "oracle")
                        if (info := row.get(part) or {}).get("status") not in (None, "ok")]
        if pipeline := row.get("ours_pipeline_full_test_split"):
            notes_below.append(
                f"SNR {snr}, the default pipeline on its whole test split "
                f"({config.get('test_size')} images): E_OR {_number(pipeline.get('e_or_rad'))} "
                f"rad refined ({_number(pipeline.get('e_or_unrefined_rad'))} before), FSC 0.5 "
                f"{_number(pipeline.get('resolution_fsc05_angstrom'), 1)} Å"
                + (f", failed: {_text(pipeline['failed'])}" if pipeline.get("failed") else ""))
    return lines + ([""] + [f"- {note}" for note in notes_below] if notes_below else [])


def generalisation_rows(data: dict[str, Any]) -> list[str]:
    """One general model, tested on proteins it never saw, against per-protein models."""
    general, settings = data.get("general") or {}, data.get("settings") or {}
    lines = []
    if general:
        proteins = general.get("proteins") or []
        shipped = "shipped (`--model pretrained`)" if general.get("shipped") else "not shipped"
        lines += [f"General model: trained on {len(proteins)} built-in proteins "
                  f"({', '.join(proteins)}); best validation loss "
                  f"{_number(general.get('best_val_loss'))} at epoch {general.get('best_epoch')} "
                  f"of {general.get('epochs_run')}; {shipped}.", ""]
    rows = data.get("rows") or []
    if not rows:
        return lines + ["(no evaluation rows recorded yet)"]
    lines += [f"Held-out proteins, whole pipeline with refinement; per-protein: a model trained on "
              f"that protein for {settings.get('protein_epochs')} epochs (the pipeline's 300 s on "
              "an idle machine). "
              "E_OR in rad, L_DE in rad², FSC 0.5 against the ground truth in Å.", "",
              "| protein | SNR | model | L_DE | E_OR O(4) | E_OR physical (frame) | E_OR refined | "
              "FSC 0.5 | pipeline s | failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row.get("metrics") or {}
        total = sum((m.get("timings_s") or {}).values()) if m.get("timings_s") else None
        lines.append(
            f"| {row.get('volume')} | {_snr(row.get('snr'))} | {row.get('model')} | "
            f"{_number(m.get('l_de_val'))} | {_number(m.get('e_or_o4_rad'))} | "
            f"{_number(row.get('e_or_frame_rad'))} | {_number(row.get('e_or_refined_rad'))} | "
            f"{_number(m.get('resolution_fsc05_angstrom'), 1)} | {_number(total, 0)} | "
            f"{_text((row.get('failed') or '').split(' (')[0])} |")
    return lines


def preferred_views_rows(data: dict[str, Any]) -> list[str]:
    """E_OR against the strength of a preferred view, with the sphere's coverage."""
    s = data.get("settings") or {}
    model = f" (`{s.get('model')}`)" if s.get("estimator") == "learned" else ""
    lines = [f"{s.get('volume')}, L = {s.get('size')} px, {s.get('n_projections')} projections "
             f"({s.get('test_size')} recovered), SNR {_snr(s.get('snr'))}, shifts ≤ "
             f"{_number(s.get('max_shift'), 0)} px; distances: {s.get('estimator')}{model}. "
             "Strength: share of images around one direction at von Mises–Fisher κ; near: "
             "share within the cluster radius; covered: share of the sphere seen (d or −d). "
             "E_OR in rad.", "",
             "| strength | near | covered | L_DE | E_OR O(4) | E_OR before frame | "
             "E_OR after frame | in / outside cluster | frame confidence |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in data.get("rows", []):
        coverage = row.get("coverage") or {}
        lines.append(
            f"| {(row.get('strength') or {}).get('label')} | "
            f"{_percent(coverage.get('share_near_direction'))} | "
            f"{_percent(coverage.get('covered_fraction_antipodal'))} | "
            f"{_number(row.get('l_de'))} | "
            f"{_number(row.get('e_or_o4_rad'))} | {_number(row.get('e_or_before_frame_rad'))} | "
            f"{_number(row.get('e_or_rad'))} | {_number(row.get('e_or_in_cluster_rad'))} / "
            f"{_number(row.get('e_or_outside_cluster_rad'))} | "
            f"{_number((row.get('frame') or {}).get('confidence'), 1)} |")
    return lines


class Section(NamedTuple):
    """A section: its title, the script that writes its JSON, how to show it, its figure."""

    title: str
    script: str
    json: str
    rows: Callable[[dict[str, Any]], list[str]]
    figure: str | None = None


SECTIONS: list[Section] = [
    Section("Default pipeline (`cryoem pipeline`)", "pipeline.py", "pipeline.json", pipeline_rows),
    Section("The paper's table, regenerated", "paper_table.py", "paper_table.json", paper_rows),
    Section("Common lines: ours against ASPIRE, by SNR", "common_lines.py", "common_lines.json",
            common_lines_rows, "common-lines-snr.png"),
    Section("Generalisation: one model, unseen proteins", "generalisation.py",
            "generalisation.json", generalisation_rows),
    Section("Preferred views", "preferred_views.py", "preferred_views.json",
            preferred_views_rows, "preferred-views-coverage.png"),
    Section("Projection", "projection.py", "projection.json", projection_rows),
    Section("Distance learning", "distance_learning.py", "distance_learning.json", distance_rows),
    Section("Orientation recovery", "orientation_recovery.py", "orientation_recovery.json",
            generic_rows),
    Section("Reconstruction", "reconstruction.py", "reconstruction.json", generic_rows),
    Section("Refinement", "refinement.py", "refinement.json", generic_rows),
]


def section(root: Path, entry: Section, images: str) -> list[str]:
    """One section's markdown; ``images`` is the ``images/`` folder as the document links it."""
    relative = (RESULTS / entry.json).as_posix()
    command = f"`python benchmarks/{entry.script}`"
    data = _load(root / relative)
    lines = [f"### {entry.title}", ""]
    if data is None:
        return lines + [f"Not measured yet: {command} writes `{relative}`.", ""]
    lines += [f"Command: {command} → `{relative}`.", "", *entry.rows(data), ""]
    if entry.figure and (root / IMAGES / entry.figure).is_file():
        lines += [f"![{entry.title}]({images}/{entry.figure})", ""]
    return lines


def render(root: Path = ROOT, images: str = "images") -> str:
    """The markdown of every section, from ``root/benchmarks/results/*.json``.

    ``images`` is the path of ``root/images`` relative to the document the
    markdown goes into (``images`` for the README, ``../images`` for
    ``benchmarks/results.md``).
    """
    parts = ["## Results", "",
             "Measured on a 2-core CPU; regenerated by `python benchmarks/results_table.py` "
             "from the JSON the scripts write.", ""]
    for entry in SECTIONS:
        parts += section(Path(root), entry, images)
    return "\n".join(parts).rstrip("\n")


def _images_from(document: Path, root: Path) -> str:
    return Path(os.path.relpath(root / IMAGES, document.resolve().parent)).as_posix()


def main(argv: list[str] | None = None) -> None:
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
    results_md.write_text(render(root, _images_from(results_md, root)) + "\n")
    readme = readme_path.read_text()
    block = f"{START}\n{render(root, _images_from(readme_path, root))}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), flags=re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{readme_path} has no {START} … {END} block")
    readme_path.write_text(pattern.sub(lambda _: block, readme))
    print(f"updated {readme_path} and {results_md}")


if __name__ == "__main__":
    main()
