"""The science benchmarks run end to end in their --quick mode (tiny settings), as CI runs them.

Each script runs in a subprocess (as a user runs it) with every output redirected
to a temporary folder; the checks are on what the JSON says, against what the tiny
settings must give (exact distances recover exactly, reruns reuse finished work).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryoem.siamese")  # the scripts train or load distance models

ROOT = Path(__file__).resolve().parents[1]


def run_script(name, *args, cwd):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--quick", *args],
                            cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_paper_table_quick(tmp_path):
    out = tmp_path / "paper.json"
    run_script("paper_table.py", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
               "--estimators", "exact", "perturbed0.4", cwd=tmp_path)
    report = json.loads(out.read_text())
    rows = {row["estimator"]: row for row in report["rows"]}
    assert rows["exact"]["e_or_o4_rad"] < 1e-3 and rows["exact"]["l_de_val"] < 1e-9
    assert rows["exact"]["e_or_rad"] < 0.1  # the frame is resolved from the images
    assert 0.01 < rows["perturbed0.4"]["l_de_val"] < 1.0
    random = next(iter(report["random_resolution"].values()))
    assert random > rows["exact"]["resolution_recovered_angstrom"]  # random orientations: worse
    table = out.with_suffix(".md").read_text()
    assert "| 4ake (C1) | ∞ | exact |" in table and "12.2" in table  # ours, then the paper's


def test_generalisation_quick(tmp_path):
    out = tmp_path / "gen.json"
    args = ("--work-dir", str(tmp_path / "work"), "--runs-dir", str(tmp_path / "runs"),
            "--out", str(out))
    run_script("generalisation.py", *args, cwd=tmp_path)
    report = json.loads(out.read_text())
    general = report["general"]
    assert general["proteins"] == ["5pti", "1ubq", "19hc"]
    assert general["contract"]["symmetries"]["19hc"] == "C2"
    assert "4ake" not in general["proteins"]
    kinds = {(row["volume"], row["model"]) for row in report["rows"]}
    assert kinds == {("4ake", "general"), ("4ake", "per-protein")}
    for row in report["rows"]:  # both ran the pipeline (or say which stage failed)
        assert row["failed"] or math.isfinite(row["metrics"]["e_or_o4_rad"])


def test_common_lines_quick(tmp_path):
    out = tmp_path / "cl.json"
    run_script("common_lines.py", "--work-dir", str(tmp_path / "work"), "--runs-dir",
               str(tmp_path / "runs"), "--out", str(out), "--figure", str(tmp_path / "cl.png"),
               "--no-aspire", cwd=tmp_path)
    report = json.loads(out.read_text())
    assert [row["snr_label"] for row in report["rows"]] == ["inf", "1/4"]
    for row in report["rows"]:
        assert row["ours"]["status"] == "ok" and row["aspire"]["status"] == "skipped"
        assert row["ours"]["e_or"] < 0.5  # perturbed distances (σ² = 0.2), then refined
        assert row["oracle"]["resolution_fsc05_angstrom"] > 0
    assert (tmp_path / "cl.png").is_file()


def test_preferred_views_quick(tmp_path):
    out = tmp_path / "pv.json"
    run_script("preferred_views.py", "--work-dir", str(tmp_path / "work"), "--out", str(out),
               "--figure", str(tmp_path / "pv.png"), cwd=tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2
    uniform, preferred = sorted(rows, key=lambda row: row["strength"]["fraction"])
    assert preferred["coverage"]["share_near_direction"] > 2 * uniform["coverage"]["share_near_direction"]
    assert uniform["e_or_o4_rad"] < 0.5
