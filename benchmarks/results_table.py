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
reproduced.  The cells and provenance lines are in ``table_cells.py``, the
tables that compare with the paper and the peers in ``peer_tables.py``.

    python benchmarks/results_table.py [--root REPO] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import snr_summary  # noqa: E402
from _common import row_commit  # noqa: E402
from peer_tables import (common_lines_rows, generalisation_rows, paper_rows,  # noqa: E402
                         particles_rows, preferred_views_rows)
from table_cells import (SUPERVISED, _l_de, _load, _number, _snr, _stale_cells,  # noqa: E402
                         _text, machine_line, provenance_lines, supervision_line)

ROOT = HERE.parent
RESULTS = Path("benchmarks") / "results"
IMAGES = Path("images")
START, END = "<!-- results:start -->", "<!-- results:end -->"
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
            f"| E_OR, paper's O(4) metric | {_number(m.get('e_or_o4_rad'), 3, ' rad')}"
            f"{_rescored(m.get('e_or_o4_rescored'))} |",
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


def _rescored(record: dict[str, Any] | None) -> str:
    """How a rescored O(4) E_OR came to replace the run's own (``benchmarks/rescore_o4.py``)."""
    if not record:
        return ""
    return (f" (rescored after the run by `{record['command']}` at "
            f"`{str(record.get('git_commit'))[:7]}`; the run's own {record['was']:.3f} was a local "
            "minimum of the search)")


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


def ablation_rows(data: dict[str, Any]) -> list[str]:
    """The learned distance at low SNR: what each lever gave (``benchmarks/distance_ablation.py``)."""
    from distance_ablation import markdown

    return markdown(data)


def generalisation_lever_rows(data: dict[str, Any]) -> list[str]:
    """One model, unseen proteins: what each lever gave (``benchmarks/generalisation_levers.py``)."""
    from generalisation_levers import markdown

    return markdown(data)


def horizon_rows(data: dict[str, Any]) -> list[str]:
    """How far the learned distance must be right (``benchmarks/distance_horizon.py``)."""
    from distance_horizon import markdown

    return markdown(data)


def recovery_lever_rows(data: dict[str, Any]) -> list[str]:
    """The same learned distances, other recoveries (``benchmarks/recovery_levers.py``)."""
    from recovery_levers import table

    rows = data.get("rows") or []
    truth = sorted({json.dumps(row.get("truth_used")) for row in rows})
    return ["The learned distances of finished `cryoem pipeline` runs (each run's training read "
            f"the truth: {', '.join(truth) or '—'}: {SUPERVISED}), recovered again with each "
            "lever and put through the same frame step; recovery and the frame step read no "
            "truth, the scores do.", "", table(rows)]


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
    #: A table gathered from these JSON files (``rows`` gets each name's data, None when
    #: absent; each row names its own commit) instead of from ``json`` alone.
    sources: tuple[str, ...] = ()


SECTIONS: list[Section] = [
    Section("Default pipeline (`cryoem pipeline`)", "pipeline.py", "pipeline.json", pipeline_rows),
    Section("The same particles, ab-initio route (`cryoem pipeline --route ab-initio`)",
            "pipeline.py --route ab-initio", "pipeline_ab_initio.json", pipeline_rows),
    Section("The default pipeline at SNR 1/16 (`cryoem pipeline --snr 0.0625`)",
            "pipeline.py --snr 1/16", "pipeline_snr1_16.json", pipeline_rows),
    Section("The default pipeline at SNR 1/16 with shifts ≤ 2 px (`cryoem pipeline --snr 0.0625 "
            "--max-shift 2`)", "pipeline.py --snr 1/16 --max-shift 2",
            "pipeline_snr1_16_shift2.json", pipeline_rows),
    Section("The same particles at SNR 1/16, ab-initio route",
            "pipeline.py --route ab-initio --snr 1/16", "pipeline_ab_initio_snr1_16.json",
            pipeline_rows),
    Section("From particles alone: a STAR without angles", "particles.py", "particles.json",
            particles_rows),
    Section("The paper's table, regenerated", "paper_table.py", "paper_table.json", paper_rows),
    Section("Common lines: ours against ASPIRE, by SNR", "common_lines.py", "common_lines.json",
            common_lines_rows, "common-lines-snr.png"),
    Section("Generalisation: one model, unseen proteins", "generalisation.py",
            "generalisation.json", generalisation_rows),
    Section("Generalisation: levers", "generalisation_levers.py", "generalisation_levers.json",
            generalisation_lever_rows),
    Section("Generalisation: the built-in lever trained on a GPU",
            "generalisation_levers.py --levers builtin --budget-seconds 380 --batch-size 256 "
            "--learning-rate 2e-3 --workers 12 --snrs inf 0.0625 "
            "--out benchmarks/results/generalisation_levers_gpu.json",
            "generalisation_levers_gpu.json", generalisation_lever_rows),
    Section("Generalisation: one protein under the levers' recipe",
            "generalisation_levers.py --levers one_protein --budget-seconds 600 --snrs inf "
            "--out benchmarks/results/generalisation_levers_recipe.json",
            "generalisation_levers_recipe.json", generalisation_lever_rows),
    Section("Generalisation: how many proteins one network fits",
            "generalisation_levers.py --levers one_protein two_proteins builtin --held-out 4ake "
            "--budget-seconds 450 --snr-range 64 64 --max-shift 0 --batch-size 128 "
            "--learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_capacity.json",
            "generalisation_levers_capacity.json", generalisation_lever_rows),
    Section("Generalisation: one protein through the general path, with and without the CTF",
            "generalisation_levers.py --levers one_protein_4ake one_protein_4ake_no_ctf "
            "--held-out 1hvr --seen 4ake --budget-seconds 450 --snr-range 64 64 --max-shift 0 "
            "--batch-size 128 --learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_4ake.json",
            "generalisation_levers_4ake.json", generalisation_lever_rows),
    Section("Generalisation: the built-in proteins with and without the CTF",
            "generalisation_levers.py --levers builtin_no_ctf builtin --held-out 4ake 1hvr 2zmm "
            "--budget-seconds 600 --snr-range 64 64 --max-shift 0 --batch-size 128 "
            "--learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_ctf.json",
            "generalisation_levers_ctf.json", generalisation_lever_rows),
    Section("Generalisation: the built-in proteins, one a step or four",
            "generalisation_levers.py --levers builtin_no_ctf builtin_no_ctf_mix4 --held-out "
            "4ake 1hvr 2zmm --budget-seconds 600 --snr-range 64 64 --max-shift 0 --batch-size "
            "128 --learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_mix.json",
            "generalisation_levers_mix.json", generalisation_lever_rows),
    Section("Generalisation: the built-in proteins with the CTF, phase-flipped or not",
            "generalisation_levers.py --levers builtin builtin_phase_flip --held-out 4ake 1hvr "
            "2zmm --budget-seconds 600 --snr-range 64 64 --max-shift 0 --batch-size 128 "
            "--learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_flip.json",
            "generalisation_levers_flip.json", generalisation_lever_rows),
    Section("Generalisation: the built-in proteins trained four times longer",
            "generalisation_levers.py --levers builtin_no_ctf --held-out 4ake 1hvr 2zmm "
            "--budget-seconds 2400 --snr-range 64 64 --max-shift 0 --batch-size 128 "
            "--learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_long.json",
            "generalisation_levers_long.json", generalisation_lever_rows),
    Section("Generalisation: the built-in proteins and 200 pseudo-proteins, trained as long",
            "generalisation_levers.py --levers pseudo_no_ctf --held-out 4ake 1hvr 2zmm "
            "--seen 1ubq 6msm 1bvy pseudo:0 --budget-seconds 2400 --snr-range 64 64 "
            "--max-shift 0 --batch-size 128 --learning-rate 2e-3 --snrs inf "
            "--out benchmarks/results/generalisation_levers_pseudo.json",
            "generalisation_levers_pseudo.json", generalisation_lever_rows),
    Section("Generalisation: the horizon of a distance between two images",
            "distance_horizon.py", "distance_horizon.json", horizon_rows),
    Section("Preferred views", "preferred_views.py", "preferred_views.json",
            preferred_views_rows, "preferred-views-coverage.png"),
    Section("The learned distance against SNR: supervised and general models",
            "distance_ablation.py --snr inf --levers cosine_wide_batch128_lr2 euclidean "
            "--budget-seconds 900 --out benchmarks/results/distance_ablation_snrinf.json",
            "distance_ablation_snrinf.json", snr_summary.markdown,
            sources=snr_summary.SOURCES),
    Section("The learned distance at low SNR: levers", "distance_ablation.py",
            "distance_ablation.json", ablation_rows),
    Section("The learned distance at low SNR, with shifts ≤ 2 px",
            "distance_ablation.py --max-shift 2 --levers turns curriculum --budget-seconds "
            "900 --out benchmarks/results/distance_ablation_shifts.json",
            "distance_ablation_shifts.json", ablation_rows),
    Section("The learned distance noiseless (supervised, same protein)",
            "distance_ablation.py --snr inf --levers cosine_wide_batch128_lr2 euclidean "
            "--budget-seconds 900 --out benchmarks/results/distance_ablation_snrinf.json",
            "distance_ablation_snrinf.json", ablation_rows),
    Section("The learned distance at SNR 1 (supervised, same protein)",
            "distance_ablation.py --snr 1 --levers cosine_wide_batch128_lr2 euclidean "
            "--budget-seconds 900 --out benchmarks/results/distance_ablation_snr1.json",
            "distance_ablation_snr1.json", ablation_rows),
    Section("The learned distance at SNR 1/4 (supervised, same protein)",
            "distance_ablation.py --snr 0.25 --levers cosine_wide_batch128_lr2 euclidean "
            "--budget-seconds 900 --out benchmarks/results/distance_ablation_snr1_4.json",
            "distance_ablation_snr1_4.json", ablation_rows),
    Section("The learned distance at SNR 1/32 (supervised, same protein)",
            "distance_ablation.py --snr 0.03125 --levers cosine_wide_batch128_lr2 euclidean "
            "--budget-seconds 900 --out benchmarks/results/distance_ablation_snr1_32.json",
            "distance_ablation_snr1_32.json", ablation_rows),
    Section("The learned distance at SNR 1/16: polar front end and confidence head (one machine)",
            "distance_ablation.py --levers cosine_wide_batch128_lr2 "
            "cosine_wide_batch128_lr2_polar cosine_wide_batch128_lr2_confidence "
            "--budget-seconds 900 --out benchmarks/results/distance_ablation_heads.json",
            "distance_ablation_heads.json", ablation_rows),
    Section("Recovery levers on the same learned distances", "recovery_levers.py",
            "recovery_levers.json", recovery_lever_rows),
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
    if entry.sources:
        sources = {name: _load(root / RESULTS / name) for name in entry.sources}
        if any(sources.values()):
            return lines + [*entry.rows(sources), ""]
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
