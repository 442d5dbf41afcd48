"""Regenerate the README's results table from the measured JSON files (no number typed by hand).

Reads what exists of ``benchmarks/results/{pipeline,projection,distance_learning,
orientation_recovery,reconstruction,refinement}.json`` (``pipeline.json`` is the
README's main job, run by ``benchmarks/pipeline.py``), writes ``benchmarks/results.md`` and replaces
the block between ``<!-- results:start -->`` and ``<!-- results:end -->`` in
``README.md``.  Missing files are listed as not measured.

    python benchmarks/results_table.py
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _number(value: Any, digits: int = 3, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{unit}"
    return str(value)


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


SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], list[str]]]] = [
    ("Default pipeline (`cryoem pipeline`, `benchmarks/pipeline.py`)",
     "benchmarks/results/pipeline.json", pipeline_rows),
    ("Projection (`benchmarks/projection.py`)", "benchmarks/results/projection.json",
     projection_rows),
    ("Distance learning (`benchmarks/distance_learning.py`)",
     "benchmarks/results/distance_learning.json", distance_rows),
    ("Orientation recovery (`benchmarks/orientation_recovery.py`)",
     "benchmarks/results/orientation_recovery.json", generic_rows),
    ("Reconstruction (`benchmarks/reconstruction.py`)", "benchmarks/results/reconstruction.json",
     generic_rows),
    ("Refinement (`benchmarks/refinement.py`)", "benchmarks/results/refinement.json",
     generic_rows),
]


def render() -> str:
    """The markdown of every section."""
    parts = ["## Results", "",
             "Measured on a 2-core CPU; regenerated by `python benchmarks/results_table.py` "
             "from the JSON the scripts write.", ""]
    for title, relative, rows in SECTIONS:
        data = _load(ROOT / relative)
        parts += [f"### {title}", ""]
        parts += rows(data) if data is not None else [f"Not measured yet (`{relative}` absent)."]
        parts.append("")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    text = render()
    (ROOT / "benchmarks" / "results.md").write_text(text + "\n")
    readme = args.readme.read_text()
    block = f"{START}\n{text}\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), flags=re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{args.readme} has no {START} … {END} block")
    args.readme.write_text(pattern.sub(lambda _: block, readme))
    print(f"updated {args.readme} and benchmarks/results.md")


if __name__ == "__main__":
    main()
