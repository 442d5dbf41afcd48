"""The notebooks run end to end (with small CI parameters) and are stored clean.

Each ``notebooks/[0-9]*.ipynb`` is executed with papermill in ``notebooks/`` with
the parameters of ``notebooks/ci-parameters.yml`` plus ``out_dir`` and
``metrics_path`` in a temporary folder; it must run without error (its own
asserts included) and write a JSON of finite numbers to ``metrics_path``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
yaml = pytest.importorskip("yaml")

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))
CI_PARAMETERS = NOTEBOOKS_DIR / "ci-parameters.yml"
KERNEL = "python3"


def _ci_parameters(name: str) -> dict:
    parameters = yaml.safe_load(CI_PARAMETERS.read_text()) or {}
    return dict(parameters.get(name) or {})


def _numbers(value, key=""):
    """Every number in a JSON value, with its dotted key."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{key}.{k}" if key else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def _parameters_cells(notebook) -> list[int]:
    return [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.get("metadata", {}).get("tags", [])]


def test_ci_parameters_name_existing_notebooks():
    names = {path.name for path in NOTEBOOKS}
    parameters = yaml.safe_load(CI_PARAMETERS.read_text()) or {}
    assert isinstance(parameters, dict)
    assert set(parameters) <= names, f"ci-parameters.yml names missing notebooks: {set(parameters) - names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stored_clean(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.get("kernelspec", {}).get("name") == KERNEL
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    with_outputs = [i for i, cell in enumerate(code) if cell.outputs]
    counted = [i for i, cell in enumerate(code) if cell.execution_count is not None]
    assert not with_outputs, f"{path.name}: code cells {with_outputs} have outputs; clear them"
    assert not counted, f"{path.name}: code cells {counted} have an execution_count; clear it"
    tagged = _parameters_cells(notebook)
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', need one"
    first_code = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code")
    assert tagged[0] == first_code, f"{path.name}: the 'parameters' cell is not the first code cell"


def test_kernel_is_this_python():
    """papermill's kernel must run the interpreter (and packages) under test."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    executable = spec.argv[0]
    # jupyter_client replaces a bare "python"/"python3" with sys.executable.
    assert executable in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}") \
        or Path(executable).resolve() == Path(sys.executable).resolve(), (
            f"kernel {KERNEL!r} ({spec.resource_dir}) runs {executable}, not {sys.executable}; "
            f"run `{sys.executable} -m ipykernel install --sys-prefix`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("MPLBACKEND", "agg")
    metrics_path = tmp_path / "metrics.json"
    parameters = _ci_parameters(path.name)
    parameters.update(out_dir=str(tmp_path / "out"), metrics_path=str(metrics_path))

    papermill.execute_notebook(  # raises PapermillExecutionError if a cell fails
        str(path), str(tmp_path / path.name), parameters=parameters, cwd=str(NOTEBOOKS_DIR),
        kernel_name=KERNEL, progress_bar=False,
    )

    assert metrics_path.is_file(), f"{path.name} wrote no metrics to metrics_path"
    metrics = json.loads(metrics_path.read_text())
    numbers = dict(_numbers(metrics))
    assert numbers, f"{path.name}: metrics hold no numbers"
    bad = {key: value for key, value in numbers.items() if not math.isfinite(value)}
    assert not bad, f"{path.name}: non-finite metrics {bad}"
    for key in ("n_projections", "size"):  # settings a notebook reports back must be the ones given
        if key in metrics and key in parameters:
            assert metrics[key] == parameters[key], (key, metrics[key], parameters[key])


def test_data_preparation_metrics(tmp_path, monkeypatch):
    """Phase 0's numbers: the dataset has the requested size and noise, the projector is right."""
    path = NOTEBOOKS_DIR / "0-data-preparation.ipynb"
    if not path.is_file():
        pytest.skip("no phase-0 notebook")
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("MPLBACKEND", "agg")
    metrics_path = tmp_path / "metrics.json"
    parameters = _ci_parameters(path.name)
    parameters.update(protein="phantom:D2", out_dir=str(tmp_path / "out"),
                      metrics_path=str(metrics_path))
    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters=parameters,
                               cwd=str(NOTEBOOKS_DIR), kernel_name=KERNEL, progress_bar=False)
    metrics = json.loads(metrics_path.read_text())
    assert metrics["n_projections"] == parameters["n_projections"]
    assert metrics["size"] == parameters["size"]
    assert metrics["voxel_size"] > 0
    assert metrics["noise_variance"] > 0
    assert metrics["signal_variance"] / metrics["noise_variance"] == pytest.approx(parameters["snr"])
    assert sum(metrics["split_sizes"].values()) == parameters["n_projections"]
    # The phantom is band-limited: the Fourier-slice projector equals the line integral.
    assert metrics["identity_projection_relative_error"] < 1e-3
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").glob("*.h5"))
