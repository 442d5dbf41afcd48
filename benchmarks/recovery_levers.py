"""Recovery levers on finished pipeline runs: the same learned distances, other recoveries.

The first guess's error at low SNR is set by the distances the network gives, and by how
recovery weighs them.  This reads finished ``cryoem pipeline`` runs (``distances.h5``: the
learned distances of the test images; ``data.h5``: their images, and their true orientations
read only to score) and recovers orientations from the same distances with each lever, then
resolves the frame as the pipeline does (``commonlines.resolve_frame``), scoring each by the
paper's metric (``e_or_o4``, ``alignment.align_o4_from`` the recovered and the resolved
orientations), ``L_OR`` and the physical error after the frame step:

- ``least-squares``: ``recovery.recover``'s defaults (the pipeline's before ``e715526``);
- ``far-0.3``, ``far-0.1``: the pairs whose *estimated* distance exceeds 1.5 rad (1.0 rad)
  weigh 0.3 (0.1): recovery from the trusted, small distances;
- ``cauchy-0.3``, ``cauchy-0.15``: two more descents, each pair weighed by
  ``1 / (1 + (r / c)²)`` (``recover(robust=c)``): pairs the others contradict count less
  (``cauchy-0.3``: the pipeline's since it was measured here);
- ``cauchy-0.3-far-0.3``: both.

A run's distances were made by its training, supervised on the true map (the paper's
setting, an upper bound) unless its ``metrics.json`` says otherwise; the table names each
run's commit and truth use.

    python benchmarks/recovery_levers.py RUN_DIR [RUN_DIR ...] [--levers ...] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import machine_info, score_recovery, snr_label, write_report

LEVERS: dict[str, dict[str, Any]] = {
    "least-squares": {},
    "far-0.3": {"max_distance": 1.5, "far_weight": 0.3},
    "far-0.1": {"max_distance": 1.0, "far_weight": 0.1},
    "cauchy-0.3": {"robust": 0.3},
    "cauchy-0.15": {"robust": 0.15},
    "cauchy-0.3-far-0.3": {"robust": 0.3, "max_distance": 1.5, "far_weight": 0.3},
}


def run_levers(run: Path, levers: list[str]) -> list[dict[str, Any]]:
    """Every lever on one run's distances, scored against its truth."""
    from cryoem import datasets, distance

    matrix, indices, _ = distance.load_matrix(run / "distances.h5")
    data = datasets.load(run / "data.h5")
    metrics = json.loads((run / "metrics.json").read_text())
    about = {"run": str(run), "run_commit": metrics["provenance"]["git_commit"],
             "snr": metrics["snr"], "max_shift": data.attrs.get("max_shift", 0.0),
             "l_de_test": metrics.get("l_de_test"), "truth_used": metrics["truth_used"],
             "pipeline_e_or_o4_rad": metrics.get("e_or_o4_rad")}
    rows = []
    for name in levers:
        scores = score_recovery(matrix, data.projections[indices], data.orientations[indices],
                                data.attrs.get("symmetry", "C1"), **LEVERS[name])
        rows.append({**about, "lever": name, "options": LEVERS[name],
                     "l_or": scores["l_or"], "e_or_o4_rad": scores["e_or_o4"],
                     "e_or_o4_median_rad": scores["e_or_o4_median"],
                     "e_or_rad": scores["e_or_frame"],
                     "frame_confidence": scores["frame_confidence"],
                     "seconds": scores["recovery_seconds"]})
        print(f"{run.name} {name}: e_or_o4 {scores['e_or_o4']:.4f} rad, physical "
              f"{scores['e_or_frame']:.4f}, L_OR {scores['l_or']:.4f}, "
              f"{scores['recovery_seconds']:.0f} s", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: run × lever → first guess O(4) (and its change), L_OR, seconds."""
    lines = ["| run (commit, SNR, shifts) | L_DE (rad²) | lever | first guess O(4) mean / median "
             "(rad) | change | physical after the frame step (rad) | L_OR (rad²) "
             "| recovery seconds |", "|---|---|---|---|---|---|---|---|"]
    base = {row["run"]: row["e_or_o4_rad"] for row in rows if row["lever"] == "least-squares"}
    for row in rows:
        shift = f"≤ {row['max_shift']:g} px" if row["max_shift"] else "none"
        change = (f"{row['e_or_o4_rad'] - base[row['run']]:+.4f}" if row["run"] in base
                  else "—")
        lines.append(f"| {Path(row['run']).parent.name}/{Path(row['run']).name} "
                     f"(`{row['run_commit'][:7]}`, {snr_label(float(row['snr']))}, {shift}) "
                     f"| {row['l_de_test']:.3f} | {row['lever']} | {row['e_or_o4_rad']:.4f} / "
                     f"{row['e_or_o4_median_rad']:.4f} | {change} | {row['e_or_rad']:.4f} "
                     f"| {row['l_or']:.4f} "
                     f"| {row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished pipeline runs' folders")
    p.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recovery_levers.json"))
    args = p.parse_args(argv)
    rows = [row for run in args.runs for row in run_levers(run, args.levers)]
    print(table(rows))
    write_report({"benchmark": "recovery_levers", "settings": vars(args), "rows": rows,
                  "machine": machine_info(None)}, args.out)


if __name__ == "__main__":
    main()
