"""The `cryoem` command line, called in-process and once as an installed script."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryoem import cli, datasets, proteins, volumes


def test_volumes_lists_one_name_per_line(capsys):
    assert cli.main(["volumes"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == proteins.builtin_names() and len(lines) >= 20
    assert cli.main(["volumes", "--long"]) == 0
    assert "(default)" in capsys.readouterr().out


def test_generate_writes_a_dataset_a_figure_and_a_summary(tmp_path, capsys):
    out = tmp_path / "run" / "set.h5"
    argv = ["generate", "--volume", "phantom:C2", "--n-projections", "12", "--size", "24",
            "--snr", "0.5", "--max-shift", "2", "--ctf", "--seed", "4", "--out", str(out),
            "--quiet"]
    assert cli.main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "12 projections" in summary[0] and "C2" in summary[0]
    data = datasets.load(out)
    assert data.attrs["symmetry"] == "C2" and data.attrs["snr"] == 0.5 and data.attrs["ctf"]
    assert data.attrs["seed"] == 4 and data.projections.shape == (12, 24, 24)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert cli.main(argv) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite", "--no-figure", "--n-projections", "5"]) == 0


def test_generate_on_a_builtin_protein(tmp_path):
    out = tmp_path / "hiv.h5"
    assert cli.main(["generate", "--volume", "1hvr", "--n-projections", "4", "--size", "24",
                     "--out", str(out), "--no-figure", "--quiet"]) == 0
    attrs = datasets.load(out, images=False).attrs
    assert attrs["symmetry"] == "C2" and attrs["volume_name"] == "1hvr"


@pytest.mark.parametrize("argv, message", [
    (["--volume", "1hvr", "--symmetry", "C1"], "contradicts"),
    (["--volume", "phantom:C2", "--symmetry", "D7"], "contradicts"),
    (["--symmetry", "Q9"], "unknown point group"),
    (["--volume", "no-such-protein"], "neither"),
    (["--n-projections", "0"], "n-projections"),
])
def test_generate_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    code = cli.main(["generate", "--size", "16", "--n-projections", "2", "--quiet",
                     "--out", str(tmp_path / "e.h5"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.h5").exists()


def test_symmetry_for_a_file_is_taken_from_the_flag(tmp_path):
    blob = volumes.gaussian_blobs(32, [[0.0, 0.0, 0.0]], [1.0], 3.0)
    path = volumes.save_map(volumes.Volume(blob, 1.0), tmp_path / "sphere.mrc")
    out = tmp_path / "s.h5"
    assert cli.main(["generate", "--volume", str(path), "--symmetry", "O", "--size", "16",
                     "--n-projections", "2", "--out", str(out), "--no-figure", "--quiet"]) == 0
    assert datasets.load(out, images=False).attrs["symmetry"] == "O"


def test_installed_script_runs():
    beside = Path(sys.executable).with_name("cryoem")
    script = str(beside) if beside.exists() else shutil.which("cryoem")
    if script is None:
        pytest.skip("the package is not installed as a script in this environment")
    result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("cryoem ")
