"""``benchmarks/results_table.py`` and the provenance rules of ``benchmarks/_common.py``.

Nothing here runs a benchmark: the JSON files are written by the tests into a
temporary repository root (``--root``), so the real README and
``benchmarks/results.md`` are never touched; one test checks that the committed
JSON regenerates the committed README block and ``benchmarks/results.md`` byte
for byte.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "results_table.py"
NEW, OLD = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def results_table():
    spec = importlib.util.spec_from_file_location("results_table_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common(results_table):
    return sys.modules["_common"]  # imported by results_table from benchmarks/


MACHINE = {"platform": "Linux", "python": "3.12", "cpu_model": "Test CPU 9000", "cpu_count": 8,
           "available_cores": 2, "memory_gb": 15.5}
PROVENANCE = {"git_commit": NEW, "git_dirty": False, "package_version": "0.1.0",
              "command": "paper_table.py --quick", "machine": MACHINE}

PAPER = {
    "provenance": PROVENANCE, "machine": {"threads": 2},
    "settings": {"size": 32, "n_projections": 300, "test_size": 100, "max_shift": 2.0,
                 "train_epochs": 2},
    "rows": [{"protein": "4ake", "symmetry": "C1", "snr": "inf", "estimator": "learned",
              "l_de_test": 0.1, "l_de_val": 0.2, "l_or": 0.05, "e_or_o4_rad": 0.123,
              "e_or_rad": 0.2, "e_or_refined_rad": 0.01, "refine_requested": True,
              "refined": True, "resolution_true_angstrom": 3.4,
              "resolution_recovered_angstrom": 4.56, "seconds": 12.0, "failed": None,
              "produced_at": NEW,
              "truth_used": {"train": ["volume", "orientations"]}},
             {"protein": "4ake", "symmetry": "C1", "snr": "inf", "estimator": "exact",
              "l_de_val": 0.0, "l_or": 0.0, "e_or_o4_rad": 0.0, "e_or_rad": 0.004,
              "e_or_refined_rad": None, "refine_requested": False, "refined": False,
              "resolution_true_angstrom": 3.4, "resolution_recovered_angstrom": 4.5,
              "seconds": 5.0, "failed": None, "produced_at": OLD}],
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
    "provenance": PROVENANCE,
    "general": {"proteins": ["5pti", "1ubq"], "best_val_loss": 0.68, "best_epoch": 10,
                "epochs_run": 18, "shipped": True},
    "settings": {"protein_epochs": 68},
    "rows": [
        {"run": "4ake_snrinf_learned_general_refined", "volume": "4ake", "snr": "inf",
         "model": "general", "seconds": 100.0, "failed": None, "produced_at": NEW,
         "e_or_frame_rad": 0.33, "e_or_refined_rad": 0.044,
         "metrics": {"l_de_test": 0.11, "e_or_o4_rad": 0.22, "e_or_unrefined_rad": 0.33,
                     "e_or_rad": 0.044, "resolution_fsc05_angstrom": 5.56,
                     "timings_s": {"recover": 10.0, "refine": 20.0}}},
        {"run": "1hvr_snr1-16_learned_refined", "volume": "1hvr", "snr": 0.0625,
         "model": "per-protein", "seconds": 5.0, "stale_from": OLD,
         "failed": "stage refine failed (traceback | details)",
         "metrics": {"l_de_val": 0.3, "truth_used": {"train": ["volume"]}}},
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

SCRIPTS = {"paper_table": PAPER, "common_lines": COMMON_LINES, "generalisation": GENERALISATION,
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


def _table_row(text: str, first_cells: str) -> str:
    """The table line that starts with ``first_cells``."""
    return next(line for line in text.splitlines() if line.startswith(first_cells))


# ----------------------------------------------------------------------------
# The committed JSON regenerates the committed tables
# ----------------------------------------------------------------------------
def test_committed_json_reproduces_readme_block_and_results_md(results_table, tmp_path):
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "benchmarks" / "results",
                    ignore=shutil.ignore_patterns("*_quick.json", "*.md", ".*"))
    shutil.copytree(REPO / "images", tmp_path / "images")
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    results_table.main(["--root", str(tmp_path)])
    assert (tmp_path / "README.md").read_bytes() == (REPO / "README.md").read_bytes(), \
        "README's results block is not what benchmarks/results_table.py makes of the JSON"
    assert ((tmp_path / "benchmarks" / "results.md").read_bytes()
            == (REPO / "benchmarks" / "results.md").read_bytes())


def test_committed_transcribed_tables_are_labelled_stale(results_table):
    text = results_table.render(REPO)
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if not data.get("transcribed"):
            continue
        title = next(e.title for e in results_table.SECTIONS if e.json == path.name)
        section = _section(text, title)
        commit = data["transcribed"]["commit"][:7]
        assert f"**Stale**: transcribed from the README's results block at commit `{commit}`" \
            in section
        assert f"Rerun: `python benchmarks/{path.stem}.py`" in section
        assert "Machine: not recorded." in section
    assert "2-core" not in text and "idle machine" not in text  # no typed machine claims


# ----------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------
def test_absent_json_says_not_measured_with_the_command(results_table, tmp_path):
    text = results_table.render(_root(tmp_path, {}))
    for name in SCRIPTS:
        assert (f"Not measured yet: `python benchmarks/{name}.py` writes "
                f"`benchmarks/results/{name}.json`.") in text
    assert text.count("Not measured yet") == len(results_table.SECTIONS)


def test_new_sections_come_first_after_the_pipeline(results_table):
    scripts = [entry.script for entry in results_table.SECTIONS]
    assert [script.split(" --levers")[0] for script in scripts[:21]] == [
        "pipeline.py", "pipeline.py --route ab-initio", "pipeline.py --snr 1/16",
        "pipeline.py --snr 1/16 --max-shift 2", "pipeline.py --route ab-initio --snr 1/16",
        "particles.py", "paper_table.py", "common_lines.py", "generalisation.py",
        *["generalisation_levers.py"] * 10,
        "distance_horizon.py",
        "preferred_views.py"]
    assert {"projection.py", "distance_learning.py", "orientation_recovery.py",
            "reconstruction.py", "refinement.py"} <= set(scripts)


def test_section_names_commit_command_and_recorded_machine(results_table, tmp_path):
    dirty = {**PAPER, "provenance": {**PROVENANCE, "git_dirty": True}}
    text = _section(results_table.render(_root(tmp_path, {"paper_table": dirty})), "The paper")
    assert ("Produced at commit `aaaaaaa` (dirty: uncommitted code) by "
            "`python benchmarks/paper_table.py --quick` "
            "→ `benchmarks/results/paper_table.json`.") in text
    assert "Machine: Test CPU 9000, 2 of 8 cores available, 15.5 GB memory, 2 threads." in text


def test_json_without_provenance_is_stale(results_table, tmp_path):
    text = results_table.render(_root(tmp_path, {"preferred_views": PREFERRED}))
    assert "Produced at commit not recorded by `python benchmarks/preferred_views.py`" in text
    assert "predates provenance records: stale" in text


def test_paper_table_stale_row_stages_and_test_split(results_table, tmp_path):
    text = _section(results_table.render(_root(tmp_path, {"paper_table": PAPER})), "The paper")
    learned = _table_row(text, "| 4ake (C1) | ∞ | learned |")
    exact = _table_row(text, "| 4ake (C1) | ∞ | exact |")
    # The newest commit's row is not marked; the other commit's is.
    assert learned == ("| 4ake (C1) | ∞ | learned | refined, shifts estimated | 0.100 | 0.050 | "
                       "0.123 | 0.200 | 0.010 | 3.4 | 4.6 | 40.0 | 12 | — |")
    assert exact.endswith("| unrefined, shifts ignored | 0.000 (val) | 0.000 | 0.000 | 0.004 | "
                          "— | 3.4 | 4.5 | 40.0 | 5 | stale: produced at bbbbbbb |")
    assert "train read volume, orientations" in text
    assert "supervised on the true map (the paper's setting, an upper bound)" in text
    # The paper's own figures come from paper_table.PAPER, cited, not typed here.
    assert "| inf | learned | 0.20 | 12.2 |" in text and "| 1/16 | learned | 0.25 | 15.2 |" in text
    assert "arXiv:2104.06237" in text and "5j0n" in text


def test_common_lines_published_shape_says_it_is_not_like_for_like(results_table, tmp_path):
    root = _root(tmp_path, {"common_lines": COMMON_LINES}, figures=("common-lines-snr.png",))
    text = _section(results_table.render(root, "images"), "Common lines")
    assert "`python benchmarks/common_lines.py`" in text
    assert "Not like for like: ASPIRE's CLSyncVoting alone" in text
    assert "| ∞ | 60 | 0.167 → 0.155 | 6.8 | 0.159 | 1.1 | 0.97× | 10.1 | 13.7 | 6.9 | met |" \
        in text
    assert "| 1/16 | 60 | 0.500 → 0.400 | 5.0 | failed | failed | — | 20.0 | failed | 17.6 | — |" \
        in text
    assert "- SNR 1/16, aspire: failed (ImportError: no aspire \\| here)" in text
    assert "the model the default pipeline trains on each SNR's dataset" in text
    assert "Distances supervised on the true map" in text  # that model saw the true map
    assert "- SNR ∞, the default pipeline on its whole test split (100 images): E_OR 0.004 rad " \
           "refined (0.094 before), FSC 0.5 3.4 Å" in text
    assert "![Common lines: ours against ASPIRE, by SNR](images/common-lines-snr.png)" in text


def _like_for_like_row(snr, commit, aspire=True):
    model = {"dir": "runs/4ake_snrinf_learned_refined/model", "mode": "rendered",
             "epochs_run": 68, "supervision": "supervised on the true map: renders of the test "
                                              "protein's ground-truth volume (an upper bound)"}
    return {"snr": snr, "snr_label": snr, "n": 60, "code": {"git_commit": commit},
            "ours": {"status": "ok", "model": model, "e_or_unrefined": 0.2, "e_or": 0.01,
                     "seconds": {"total": 50.0, "total_with_training": 350.0},
                     "resolution_fsc05_angstrom": 4.0},
            "aspire": ({"status": "ok", "e_or_unrefined": 0.02, "e_or": 0.008,
                        "seconds": {"first_guess": 30.0, "total": 80.0},
                        "resolution_fsc05_angstrom": 3.9} if aspire
                       else {"status": "skipped", "reason": "--no-aspire"}),
            "oracle": {"status": "ok", "resolution_fsc05_angstrom": 3.5},
            "comparison": {"ratio_e_or_first_guess": 10.0, "ratio_e_or": 1.25, "goal_met": True}}


def test_common_lines_like_for_like_and_stale_rows(results_table, tmp_path):
    data = {"config": {"n_subset": 60, "volume": "4ake", "size": 64, "max_shift": 2.0,
                       "estimator": "learned"}, "provenance": PROVENANCE,
            "notes": {"like_for_like": "both first guesses unrefined, then the same refine()",
                      "seconds": "to orientations", "goal": "ours ≤ 1.5× ASPIRE"},
            "rows": [_like_for_like_row("inf", NEW), _like_for_like_row("1/16", OLD, False)]}
    text = _section(results_table.render(_root(tmp_path, {"common_lines": data})), "Common lines")
    assert "both first guesses unrefined, then the same refine()" in text
    assert "`runs/4ake_snrinf_learned_refined/model` (rendered mode, 68 epochs: supervised " \
           "on the true map" in text
    assert "Our rows are supervised on the true map (the paper's setting, an upper bound)." in text
    assert _table_row(text, "| ∞ | 60 |") == (
        "| ∞ | 60 | 0.200 / 0.020 | 0.010 / 0.008 | 10.00× / 1.25× | 50.0 (350) | 80.0 | "
        "4.0 / 3.9 / 3.5 | met | — |")
    assert _table_row(text, "| 1/16 | 60 |").endswith(
        "| 0.200 / skipped | 0.010 / skipped | 10.00× / 1.25× | 50.0 (350) | skipped | "
        "4.0 / skipped / 3.5 | met | stale: produced at bbbbbbb |")
    assert "- SNR 1/16, aspire: skipped (--no-aspire)" in text


def test_generalisation_table(results_table, tmp_path):
    text = _section(results_table.render(_root(tmp_path, {"generalisation": GENERALISATION})),
                    "Generalisation")
    assert "trained on renders of 2 built-in proteins (5pti, 1ubq); best validation loss 0.680 " \
           "at epoch 10 of 18; shipped" in text
    assert "for 68 epochs, supervised on the true map" in text
    assert "per-protein: train read volume" in text
    assert "| 4ake | ∞ | general | 0.110 | 0.220 | 0.330 | 0.044 | 5.6 | 30 | — | — |" in text
    assert ("| 1hvr | 1/16 | per-protein | 0.300 (val) | — | — | — | — | — | stage refine failed "
            "| stale: produced at bbbbbbb |") in text


def test_generalisation_before_evaluation(results_table, tmp_path):
    data = {"general": GENERALISATION["general"]}
    text = _section(results_table.render(_root(tmp_path, {"generalisation": data})),
                    "Generalisation")
    assert "(no evaluation rows recorded yet)" in text and "5pti, 1ubq" in text


def test_distance_horizon_table(results_table, tmp_path):
    oracle = {"part": "oracle", "horizon": 1.0, "share": 0.0504, "l_de_floor": 0.3017, "n": 1650,
              "e_or_o4": 0.71, "e_or_o4_median": 0.52, "seconds": 40.0, "stale": False}
    model = {"part": "shipped", "protein": "1hvr", "snr": "inf", "horizon": None, "l_de": 0.28,
             "l_de_within": 0.28, "trusted_share": 1.0, "neighbour_distance": 0.9,
             "true_neighbour_distance": 0.2, "e_or_o4": 1.2, "e_or_o4_median": 1.1,
             "stale": True}
    failed = {"status": "failed", "reason": "boom", "scenario": {"name": "euclidean"}}
    data = {"rows": [oracle, model, failed], "provenance": PROVENANCE}
    text = _section(results_table.render(_root(tmp_path, {"distance_horizon": data})),
                    "Generalisation: the horizon")
    assert "| 1 | 0.050 | 0.302 | 1650 | 0.710 / 0.520 | 40 |  |" in text
    assert ("| shipped | 1hvr | inf | 0.280 | all pairs | 0.280 | 1.000 | 0.900 (0.200) "
            "| 1.200 / 1.100 | stale |") in text
    assert "* euclidean failed: boom" in text


def test_generalisation_levers_table(results_table, tmp_path):
    row = {"lever": "pseudo", "what": "the built-in proteins and the pseudo-proteins",
           "volumes": 219, "epochs": 250, "protein": "4ake", "snr": 0.0625, "l_de": 0.31,
           "e_or_o4": 0.9, "e_or_frame": 1.1, "e_or_frame_median": 0.8,
           "frame_confidence": 3.3, "stale": True,
           "loss_by_epoch": [0.5, 0.3, 0.25], "val_loss_by_epoch": [0.6, 0.4, None]}
    base = {**row, "lever": "euclidean", "what": "pixel distance", "volumes": None,
            "epochs": None, "snr": "inf", "stale": False,
            "loss_by_epoch": None, "val_loss_by_epoch": None}  # as the JSON keeps it
    data = {"config": {"budget_seconds": 1200.0, "held_out": ["4ake", "1hvr"], "size": 64,
                       "test_size": 1650, "max_shift": 2.0, "snr_range": [0.03125, 64.0]},
            "rows": [row, base, {"lever": "builtin", "status": "failed", "reason": "boom"},
                     {"lever": "pseudo", "what": "w", "protein": "1ubq", "snr": "inf",
                      "seen": True, "l_de": 0.5}],
            "provenance": PROVENANCE}
    text = _section(results_table.render(_root(tmp_path, {"generalisation_levers": data})),
                    "Generalisation: levers")
    assert "trained for 1200 s" in text and "(4ake, 1hvr)" in text
    # the last training loss, and the epoch with the lowest validation loss (epoch 3 has none)
    assert ("| pseudo | the built-in proteins and the pseudo-proteins | 219 | 250 | 0.250 (2) "
            "| 4ake | 1/16 | 0.310 | 0.900 | 1.100 (0.800) | 3.3 | stale |") in text
    assert "| euclidean | pixel distance | — | — | — | 4ake | inf | 0.310 |" in text
    assert "| builtin | failed: boom |" in text
    assert "| 1ubq (trained on) | inf | 0.500 | — | — (—) | — |" in text
    data["rows"][0]["what"] = "rendered with |CTF|"  # a pipe would split the cell in two
    flipped = [line for line in _section(results_table.render(_root(tmp_path / "flip", {
        "generalisation_levers": data})), "Generalisation: levers").splitlines()
        if line.startswith("| pseudo | rendered")]
    assert flipped[0].startswith(r"| pseudo | rendered with \|CTF\| | 219 |")
    assert flipped[0].replace(r"\|", "").count("|") == 13  # 12 columns, as in the header
    data["rows"][-1]["seen"] = False  # scored, but not among the lever's training volumes
    text = results_table.render(_root(tmp_path / "unseen", {"generalisation_levers": data}))
    assert "| 1ubq (not trained on, not held out) | inf | 0.500 |" in text


def test_snr_summary_gathers_rows_with_their_commit_and_hardware(results_table, tmp_path):
    def ablation(snr, commit, epochs):
        scores = {"what": "w", "e_or_frame_median": 0.1, "frame_confidence": 9.0,
                  "code": {"git_commit": commit}}
        return {"config": {"protein": "4ake", "snr": snr},
                "provenance": {**PROVENANCE, "git_commit": commit},
                "rows": [{**scores, "lever": "cosine_wide_batch128_lr2", "epochs": epochs,
                          "train_seconds": 900.4, "l_de": 0.1, "e_or_o4": 0.2,
                          "e_or_frame": 0.3},
                         {**scores, "lever": "euclidean", "train_seconds": 2.2, "l_de": 0.4,
                          "e_or_o4": 1.9, "e_or_frame": 2.0},
                         {**scores, "lever": "turns", "l_de": 9.0, "e_or_o4": 9.0,
                          "e_or_frame": 9.0}]}  # another lever: not gathered
    held = {"lever": "builtin", "what": "w", "volumes": 19, "protein": "1hvr", "snr": 0.0625,
            "epochs": 99,
            "train_seconds": 388.0, "trained_on": "jax: GPU 1", "l_de": 0.34, "e_or_o4": 1.3,
            "e_or_frame": 1.5, "code": {"git_commit": NEW}}
    gpu = {"provenance": PROVENANCE,
           "rows": [held, {**held, "snr": "inf", "l_de": 0.26},
                    {**held, "protein": "1ubq", "seen": True},  # a training protein: left out
                    {**held, "lever": "shipped", "trained_on": None, "stale": True,
                     "code": {"git_commit": OLD}}]}
    root = _root(tmp_path, {"distance_ablation_snrinf": ablation("inf", NEW, 30),
                            "distance_ablation_snr1_32": ablation(0.03125, OLD, 20),
                            "generalisation_levers_gpu": gpu})
    text = _section(results_table.render(root), "The learned distance against SNR")
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[1:] == [
        "| supervised (cosine_wide_batch128_lr2) | 4ake | ∞ | 0.100 | 0.200 | 0.300 "
        "| 30 epochs in 900 s, Test CPU 9000, 2 cores | `aaaaaaa` |",
        "| Euclidean | 4ake | ∞ | 0.400 | 1.900 | 2.000 | no training (fit 2 s) | `aaaaaaa` |",
        "| supervised (cosine_wide_batch128_lr2) | 4ake | 1/32 | 0.100 | 0.200 | 0.300 "
        "| 20 epochs in 900 s, Test CPU 9000, 2 cores | `bbbbbbb` |",
        "| Euclidean | 4ake | 1/32 | 0.400 | 1.900 | 2.000 | no training (fit 2 s) | `bbbbbbb` |",
        "| general: the built-in lever, 19 proteins | 1hvr | ∞ | 0.260 | 1.300 | 1.500 "
        "| 99 epochs in 388 s, jax: GPU 1 | `aaaaaaa` |",
        "| general: the built-in lever, 19 proteins | 1hvr | 1/16 | 0.340 | 1.300 | 1.500 "
        "| 99 epochs in 388 s, jax: GPU 1 | `aaaaaaa` |",
        "| general: the shipped model (`--model pretrained`), 19 proteins | 1hvr | 1/16 "
        "| 0.340 | 1.300 | 1.500 | 99 epochs in 388 s, hardware not recorded | `bbbbbbb` (stale) |"]
    assert "Not measured yet" not in text


def test_preferred_views_table_and_figure(results_table, tmp_path):
    root = _root(tmp_path, {"preferred_views": PREFERRED},
                 figures=("preferred-views-coverage.png",))
    text = _section(results_table.render(root, "../images"), "Preferred views")
    assert "4ake, L = 64 px, 5000 projections (1650 recovered), SNR ∞, shifts ≤ 2 px; " \
           "distances: learned (`pretrained`)" in text
    assert "supervised on the true map" not in text  # the general model saw other proteins
    assert "| 0.9 at κ=10 | 80 % | 50 % | 0.100 | 0.210 | 1.500 | 0.310 | 0.200 / 0.600 | 12.3 |" \
        in text
    assert "(../images/preferred-views-coverage.png)" in text


def test_pipeline_section_truth_and_own_commit(results_table, tmp_path):
    metrics = {"volume": "4ake", "snr": "inf", "estimator": "learned", "training": "rendered",
               "l_de_test": 0.05, "l_de_val": 0.06, "timings_s": {"train": 300.4, "refine": 9.0},
               "truth_used": {"train": ["volume", "orientations"]},
               "provenance": {**PROVENANCE, "git_commit": OLD}}
    text = _section(results_table.render(_root(tmp_path, {"pipeline": {
        "provenance": PROVENANCE, "metrics": metrics}})), "Default pipeline")
    assert "Distances supervised on the true map (the paper's setting, an upper bound): " \
           "train read volume, orientations (`truth_used`)." in text
    assert "| SNR, estimator, training | ∞, learned, rendered |" in text
    assert "| 0.050 rad² |" in text and "| total time | 309 s (train 300 s, refine 9 s) |" in text
    assert "| produced at | stale: produced at bbbbbbb |" in text


def test_pipeline_section_of_the_ab_initio_route(results_table, tmp_path):
    """The same particles from the images alone: no distances, no L_DE, no truth."""
    metrics = {"volume": "4ake", "snr": "inf", "route": "ab-initio", "estimator": "learned",
               "e_or_unrefined_rad": 0.2, "e_or_rad": 0.004, "truth_used": {},
               "timings_s": {"ab_initio": 60.0, "refine": 300.0}, "provenance": PROVENANCE}
    empty = _section(results_table.render(_root(tmp_path / "empty", {})), "The same particles")
    assert "Not measured yet: `python benchmarks/pipeline.py --route ab-initio` writes " \
           "`benchmarks/results/pipeline_ab_initio.json`." in empty
    text = _section(results_table.render(_root(tmp_path, {"pipeline_ab_initio": {
        "provenance": PROVENANCE, "metrics": metrics}})), "The same particles")
    assert "No stage read the truth other than for scoring (`truth_used` is empty)." in text
    assert "| SNR, first guess | ∞, ab initio from the images alone (no distances, no " \
           "training) |" in text
    assert "| E_OR physical: ab initio → refined | 0.200 → 0.004 rad |" in text
    assert "L_DE" not in text and "O(4)" not in text


def test_component_tables_format_what_the_scripts_write(results_table, tmp_path):
    files = {
        "projection": {"repeats": 3, "results": [
            {"L": 64, "n": 10, "cryoem": {"images_per_second": 100.0}, "aspire": None}]},
        "reconstruction": {"results": [  # the key reconstruction.py writes
            {"size": 64, "snr": "inf", "n": 1650, "iterations": 30, "seconds": 12.3,
             "resolution_angstrom": 3.456, "resolution_pixels": 2.05, "goal": {"met": True}}]},
        "refinement": {"rows": [
            {"snr": 1.0, "n": 100, "size": 64, "first_guess": "learned noisy (noisy-rendered)",
             "e_or_o4": 0.2771, "e_or_unrefined": 0.05, "e_or": 0.01, "goal_met": False,
             "goal": "e_or≤0.1", "seconds": {"distances": 0.25, "recovery": 10.0, "frame": 5.0,
                                             "refinement": 20.0, "total": 35.25}}]},
        "orientation_recovery": {"rows": [
            {"part": "p", "n": 10, "method": "spectral+descent", "options": {"restarts": 4},
             "e_or_o4": 0.01, "seconds": 1.0},
            {"part": "p", "n": 10, "method": "spectral+descent", "options": {}, "seconds": 2.0}]},
    }
    text = results_table.render(_root(tmp_path, files))
    assert "the best of 3 timed calls" in _section(text, "Projection")
    assert "| 64 | ∞ | 1650 | 30 | 12.3 | 3.46 | 2.05 | — | met |" in text
    refinement = _section(text, "Refinement")
    assert "{" not in refinement
    assert ("| 1 | 100 | 64 | learned noisy (noisy-rendered) | 0.277 | 0.0500 | 0.0100 | — | "
            "0.2 | 10.0 | 5.0 | 20.0 | 35.2 | missed (e_or≤0.1) |") in refinement
    recovery = _section(text, "Orientation recovery")
    assert "| p | 10 | spectral+descent | restarts=4 |" in recovery
    assert "| p | 10 | spectral+descent | — |" in recovery


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


# ----------------------------------------------------------------------------
# Provenance in reports and the reuse of pipeline runs across commits
# ----------------------------------------------------------------------------
def test_write_report_records_provenance(common, tmp_path):
    out = tmp_path / "report.json"
    common.write_report({"benchmark": "x", "rows": [float("nan")]}, out)
    report = json.loads(out.read_text())
    assert set(report["provenance"]) >= {"git_commit", "git_dirty", "command", "machine"}
    assert report["rows"] == [None]
    common.write_report({"provenance": {"git_commit": OLD}}, out)  # a given one is kept
    assert json.loads(out.read_text())["provenance"] == {"git_commit": OLD}


def _finished(folder: Path, commit: str | None) -> Path:
    folder.mkdir(parents=True)
    provenance = {} if commit is None else {"provenance": {"git_commit": commit}}
    (folder / "pipeline.json").write_text(json.dumps({"finished": ["export"], **provenance}))
    (folder / "metrics.json").write_text(json.dumps({"timings_s": {"a": 1.0, "b": 2.0},
                                                     **provenance}))
    return folder


def test_runs_of_another_commit_are_reused_only_when_asked(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "current_commit", lambda: NEW)
    row = {"run": "r"}
    same = common._finished_run(_finished(tmp_path / "same", NEW), row)
    assert same["seconds"] == 3.0 and "stale_from" not in same and same["produced_at"] == NEW
    assert common.stale_label(same, NEW) is None

    other = _finished(tmp_path / "other", OLD)
    assert common._finished_run(other, row) is None
    stale = common._finished_run(other, row, reuse_stale=True)
    assert stale["stale_from"] == OLD
    assert common.stale_label(stale, NEW) == "stale: produced at bbbbbbb"

    unrecorded = _finished(tmp_path / "unrecorded", None)
    assert common._finished_run(unrecorded, row) is None
    assert common._finished_run(unrecorded, row, reuse_stale=True)["stale_from"] == "unknown"
    assert common.stale_commit(tmp_path / "absent") is None


def test_a_stale_run_is_set_aside_not_overwritten(common, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "current_commit", lambda: NEW)
    folder = _finished(tmp_path / "4ake_snrinf_exact", OLD)
    moved = common._set_aside(folder, common.stale_commit(folder))
    assert not folder.exists() and moved.name == "4ake_snrinf_exact.stale-bbbbbbb"
    assert re.search(r"set aside .* computed again", capsys.readouterr().out)
