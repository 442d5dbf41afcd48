"""``benchmarks/results_table.py``: every section rendered from small fake JSON files.

Nothing here runs a benchmark: the JSON files are written by the tests into a
temporary repository root (``--root``), so the real README and
``benchmarks/results.md`` are never touched.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "results_table.py"


@pytest.fixture(scope="module")
def results_table():
    spec = importlib.util.spec_from_file_location("results_table_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAPER = {
    "settings": {"size": 32, "n_projections": 300, "test_size": 100, "max_shift": 2.0},
    "rows": [{"protein": "4ake", "symmetry": "C1", "snr": "inf", "estimator": "learned",
              "l_de_val": 0.1, "l_or": 0.05, "e_or_o4_rad": 0.123, "e_or_rad": 0.2,
              "e_or_refined_rad": 0.01, "resolution_true_angstrom": 3.4,
              "resolution_recovered_angstrom": 4.56, "seconds": 12.0, "failed": None}],
    "random_resolution": {"4ake_inf": 40.0},
}

COMMON_LINES = {
    "config": {"n_subset": 60, "volume": "4ake", "size": 32, "max_shift": 2.0,
               "test_size": 100, "model": "auto", "estimator": "learned"},
    "notes": {"goal": "ours refined ≤ 1.5× ASPIRE where ASPIRE works"},
    "rows": [
        {"snr": "inf", "snr_label": "inf", "n": 60,
         "ours": {"status": "ok", "e_or_unrefined": 0.167, "e_or": 0.155,
                  "seconds": {"total": 6.84}, "resolution_fsc05_angstrom": 10.09},
         "aspire": {"status": "ok", "e_or": 0.159, "seconds": 1.12,
                    "resolution_fsc05_angstrom": 13.66},
         "oracle": {"status": "ok", "resolution_fsc05_angstrom": 6.9},
         "comparison": {"ratio_e_or": 0.973, "goal_met": True},
         "ours_pipeline_full_test_split": {"e_or_rad": 0.0042, "e_or_unrefined_rad": 0.094,
                                           "resolution_fsc05_angstrom": 3.37, "failed": None}},
        {"snr": 0.0625, "snr_label": "1/16", "n": 60,
         "ours": {"status": "ok", "e_or_unrefined": 0.5, "e_or": 0.4,
                  "seconds": {"total": 5.0}, "resolution_fsc05_angstrom": 20.0},
         "aspire": {"status": "failed", "reason": "ImportError: no aspire | here"},
         "oracle": {"status": "ok", "resolution_fsc05_angstrom": 17.6},
         "comparison": {"ratio_e_or": None, "goal_met": None}},
    ],
}

GENERALISATION = {
    "general": {"proteins": ["5pti", "1ubq"], "best_val_loss": 0.68, "best_epoch": 10,
                "epochs_run": 18, "shipped": True},
    "settings": {"protein_epochs": 68},
    "rows": [
        {"run": "4ake_snrinf_learned_general_refined", "volume": "4ake", "snr": "inf",
         "model": "general", "seconds": 100.0, "failed": None,
         "e_or_frame_rad": 0.33, "e_or_refined_rad": 0.044,
         "metrics": {"l_de_val": 0.11, "e_or_o4_rad": 0.22, "e_or_unrefined_rad": 0.33,
                     "e_or_rad": 0.044, "resolution_fsc05_angstrom": 5.56,
                     "timings_s": {"recover": 10.0, "refine": 20.0}}},
        {"run": "1hvr_snr1-16_learned_refined", "volume": "1hvr", "snr": 0.0625,
         "model": "per-protein", "seconds": 5.0,
         "failed": "stage refine failed (traceback | details)", "metrics": {}},
    ],
}

PREFERRED = {
    "settings": {"volume": "4ake", "size": 64, "n_projections": 5000, "test_size": 1650,
                 "snr": "inf", "max_shift": 2.0, "estimator": "learned", "model": "pretrained"},
    "rows": [{"strength": {"fraction": 0.9, "concentration": 10.0, "label": "0.9 at κ=10"},
              "coverage": {"covered_fraction_antipodal": 0.5, "share_near_direction": 0.8},
              "l_de": 0.1, "e_or_o4_rad": 0.21, "e_or_before_frame_rad": 1.5, "e_or_rad": 0.31,
              "e_or_in_cluster_rad": 0.2, "e_or_outside_cluster_rad": 0.6,
              "frame": {"confidence": 12.34}}],
}

NEW = {"paper_table": PAPER, "common_lines": COMMON_LINES, "generalisation": GENERALISATION,
       "preferred_views": PREFERRED}


def _root(tmp_path: Path, files: dict[str, dict], figures: tuple[str, ...] = ()) -> Path:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    for name, content in files.items():
        (results / f"{name}.json").write_text(json.dumps(content))
    (tmp_path / "images").mkdir()
    for figure in figures:
        (tmp_path / "images" / figure).write_bytes(b"\x89PNG\r\n\x1a\n")
    return tmp_path


def _section(text: str, title: str) -> str:
    """The markdown of the section whose heading starts with ``title``."""
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_absent_json_says_not_measured_with_the_command(results_table, tmp_path):
    text = results_table.render(_root(tmp_path, {}))
    for name in NEW:
        assert (f"Not measured yet: `python benchmarks/{name}.py` writes "
                f"`benchmarks/results/{name}.json`.") in text
    assert text.count("Not measured yet") == len(results_table.SECTIONS)


def test_new_sections_come_first_after_the_pipeline(results_table):
    scripts = [entry.script for entry in results_table.SECTIONS]
    assert scripts[:5] == ["pipeline.py", "paper_table.py", "common_lines.py",
                           "generalisation.py", "preferred_views.py"]
    assert {"projection.py", "distance_learning.py", "orientation_recovery.py",
            "reconstruction.py", "refinement.py"} <= set(scripts)


def test_paper_table_beside_the_papers_numbers(results_table, tmp_path):
    text = _section(results_table.render(_root(tmp_path, {"paper_table": PAPER})), "The paper")
    assert "Command: `python benchmarks/paper_table.py` → `benchmarks/results/paper_table.json`" \
        in text
    assert "| 4ake (C1) | ∞ | learned | 0.100 | 0.050 | 0.123 | 0.200 | 0.010 | 3.4 | 4.6 | " \
           "40.0 | 12 |" in text
    # The paper's own figures for 5j0n come from paper_table.PAPER, not typed here.
    assert "| inf | learned | 0.20 | 12.2 |" in text and "| 1/16 | learned | 0.25 | 15.2 |" in text
    assert "5j0n" in text


def test_common_lines_rows_failures_and_figure(results_table, tmp_path):
    root = _root(tmp_path, {"common_lines": COMMON_LINES}, figures=("common-lines-snr.png",))
    text = _section(results_table.render(root, "images"), "Common lines")
    assert "Command: `python benchmarks/common_lines.py`" in text
    assert "| ∞ | 60 | 0.167 → 0.155 | 6.8 | 0.159 | 1.1 | 0.97× | 10.1 | 13.7 | 6.9 | met |" \
        in text
    assert "| 1/16 | 60 | 0.500 → 0.400 | 5.0 | failed | failed | — | 20.0 | failed | 17.6 | — |" \
        in text
    assert "- SNR 1/16, aspire: failed (ImportError: no aspire \\| here)" in text
    assert "the model the default pipeline trains on each SNR's dataset" in text
    assert "- SNR ∞, the default pipeline on its whole test split (100 images): E_OR 0.004 rad " \
           "refined (0.094 before), FSC 0.5 3.4 Å" in text
    assert "![Common lines: ours against ASPIRE, by SNR](images/common-lines-snr.png)" in text


def test_generalisation_table(results_table, tmp_path):
    text = _section(results_table.render(_root(tmp_path, {"generalisation": GENERALISATION})),
                    "Generalisation")
    assert "Command: `python benchmarks/generalisation.py`" in text
    assert "trained on 2 built-in proteins (5pti, 1ubq); best validation loss 0.680 at epoch 10 " \
           "of 18; shipped" in text
    assert "for 68 epochs" in text
    assert "| 4ake | ∞ | general | 0.110 | 0.220 | 0.330 | 0.044 | 5.6 | 30 | — |" in text
    assert "| 1hvr | 1/16 | per-protein | — | — | — | — | — | — | stage refine failed |" in text


def test_generalisation_before_evaluation(results_table, tmp_path):
    data = {"general": GENERALISATION["general"]}
    text = _section(results_table.render(_root(tmp_path, {"generalisation": data})),
                    "Generalisation")
    assert "(no evaluation rows recorded yet)" in text and "5pti, 1ubq" in text


def test_preferred_views_table_and_figure(results_table, tmp_path):
    root = _root(tmp_path, {"preferred_views": PREFERRED},
                 figures=("preferred-views-coverage.png",))
    text = _section(results_table.render(root, "../images"), "Preferred views")
    assert "Command: `python benchmarks/preferred_views.py`" in text
    assert "4ake, L = 64 px, 5000 projections (1650 recovered), SNR ∞, shifts ≤ 2 px; " \
           "distances: learned (`pretrained`)" in text
    assert "| 0.9 at κ=10 | 80 % | 50 % | 0.100 | 0.210 | 1.500 | 0.310 | 0.200 / 0.600 | 12.3 |" \
        in text
    assert "(../images/preferred-views-coverage.png)" in text


def test_no_figure_reference_without_the_file(results_table, tmp_path):
    text = results_table.render(_root(tmp_path, {"common_lines": COMMON_LINES,
                                                 "preferred_views": PREFERRED}))
    assert "![" not in text


def test_infinity_as_string_or_float(results_table):
    assert results_table._snr("inf") == results_table._snr(float("inf")) == "∞"
    assert results_table._snr(0.0625) == "1/16" and results_table._snr(2.0) == "2"
    assert results_table._number(float("inf")) == "—"


def test_main_rewrites_only_the_block_and_writes_results_md(results_table, tmp_path):
    root = _root(tmp_path, {"preferred_views": PREFERRED},
                 figures=("preferred-views-coverage.png",))
    readme = root / "README.md"
    readme.write_text("# Title\n\nbefore\n\n<!-- results:start -->\nold\n<!-- results:end -->\n"
                      "\nafter\n")
    results_table.main(["--root", str(root), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n<!-- results:start -->\n## Results")
    assert text.endswith("<!-- results:end -->\n\nafter\n") and "\nold\n" not in text
    assert "](images/preferred-views-coverage.png)" in text
    markdown = (root / "benchmarks" / "results.md").read_text()
    assert "](../images/preferred-views-coverage.png)" in markdown  # relative to benchmarks/
    assert "| 0.9 at κ=10 |" in markdown

    readme.write_text("no block\n")
    with pytest.raises(SystemExit, match="no <!-- results:start -->"):
        results_table.main(["--root", str(root), "--readme", str(readme)])
