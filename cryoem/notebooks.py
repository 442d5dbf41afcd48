"""Rerun the notebooks end to end (and, through :mod:`cryoem.publish`, publish them offline).

Running
-------
:func:`run_all` executes ``notebooks/[0-9]*.ipynb`` in order with papermill,
each in a fresh kernel, headless (matplotlib's Agg-based inline backend, plotly's
``plotly_mimetype`` renderer: figures become outputs, nothing opens a window).  Notebook ``NAME.ipynb`` writes its executed
copy to ``OUT/NAME.ipynb``, its metrics to ``OUT/NAME.json`` and its data
into ``OUT/data-NAME/`` (the ``metrics_path`` and ``out_dir`` parameters).
Phases share nothing but files.  ``quick`` runs the parameters of
``notebooks/ci-parameters.yml``, ``full`` the notebooks' own defaults, and a
YAML file of the same format any others.  The first failing notebook stops
the run with :class:`NotebookFailed`, its partly executed copy kept.

The site builder is :mod:`cryoem.publish` (its names are re-exported here).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = ["NotebookRun", "NotebookFailed", "default_source", "list_notebooks",
           "load_parameters", "run_notebook", "run_all", "build_site", "external_resources",
           "plotly_js_path", "plotly_html", "convert_plotly_outputs", "PLOTLY_MIME",
           "METHOD_HTML", "RESULTS_MD", "default_results", "results_page"]

KERNEL = "python3"
CI_PARAMETERS = "ci-parameters.yml"

#: Environment of the kernels: no display, figures as data.  matplotlib's inline backend
#: draws with Agg, headless, and keeps each figure as a PNG output; plain ``agg`` (as set
#: by CI) would leave the executed notebooks, and so the site, without any figure.
HEADLESS_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "PLOTLY_RENDERER": "plotly_mimetype"}


# ----------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: its name and the files it wrote.

    Attributes
    ----------
    name : str
        File name of the notebook, e.g. ``"0-data-preparation.ipynb"``.
    executed : Path
        The executed copy.
    metrics : Path
        Its metrics JSON (may be missing if the notebook writes none).
    data_dir : Path
        The folder passed as ``out_dir``.
    seconds : float
        Wall-clock execution time.
    """

    name: str
    executed: Path
    metrics: Path
    data_dir: Path
    seconds: float


class NotebookFailed(RuntimeError):
    """A notebook raised; ``executed`` is its partly executed copy."""

    def __init__(self, name: str, executed: Path, reason: str):
        super().__init__(f"notebook {name} failed: {reason} (partly executed copy: {executed})")
        self.name = name
        self.executed = executed
        self.reason = reason


def default_source() -> Path:
    """The folder of the notebooks: the repository's ``notebooks/``, else ``./notebooks``.

    Returns
    -------
    Path
        An existing folder.

    Raises
    ------
    FileNotFoundError
        When neither exists.
    """
    for candidate in (Path(__file__).resolve().parent.parent / "notebooks", Path("notebooks")):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no notebooks/ folder found next to the package or here; "
                            "give the folder explicitly")


def list_notebooks(source: str | os.PathLike, only: Sequence[str] | None = None) -> list[Path]:
    """The numbered notebooks ``[0-9]*.ipynb`` of a folder, in order.

    Parameters
    ----------
    source : path
        Folder holding the notebooks.
    only : sequence of str, optional
        Keep only these: file names, names without ``.ipynb``, or their
        leading number (``"0"``).

    Returns
    -------
    list of Path

    Raises
    ------
    FileNotFoundError
        When there is no notebook, or one in ``only`` is not there.
    """
    paths = sorted(Path(source).glob("[0-9]*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks ([0-9]*.ipynb) in {source}")
    if only is None:
        return paths
    chosen = []
    for wanted in only:
        matches = [p for p in paths if wanted in (p.name, p.stem, p.name.split("-", 1)[0])]
        if not matches:
            raise FileNotFoundError(f"no notebook {wanted!r} in {source} "
                                    f"(have: {', '.join(p.name for p in paths)})")
        chosen += [p for p in matches if p not in chosen]
    return sorted(chosen)


def load_parameters(spec: str | os.PathLike, source: str | os.PathLike,
                    names: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Parameters per notebook name, from ``quick``, ``full`` or a YAML file.

    Parameters
    ----------
    spec : str or path
        ``"full"`` (every notebook's own defaults: no overrides), ``"quick"``
        (``SOURCE/ci-parameters.yml``) or a YAML file of the same format: a
        mapping from notebook file name to a mapping of parameters.
    source : path
        Folder of the notebooks (where ``ci-parameters.yml`` is).
    names : sequence of str
        Notebook file names that exist; the file may name no others.

    Returns
    -------
    dict
        ``{notebook name: {parameter: value}}`` (names absent from the file
        get no entry).

    Raises
    ------
    FileNotFoundError
        When the YAML file does not exist.
    ValueError
        When the file is not such a mapping, or names an unknown notebook.
    """
    if str(spec) == "full":
        return {}
    path = Path(source) / CI_PARAMETERS if str(spec) == "quick" else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no parameter file {path} (use quick, full or a YAML file)")
    import yaml

    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict) or not all(isinstance(v, (dict, type(None)))
                                                for v in content.values()):
        raise ValueError(f"{path}: expected a mapping 'NOTEBOOK.ipynb: {{parameter: value}}'")
    unknown = sorted(set(content) - set(names)) if names else []
    if unknown:
        raise ValueError(f"{path} names notebooks that do not exist: {', '.join(unknown)}")
    return {name: dict(values or {}) for name, values in content.items()}


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by kernels) for the duration of a block."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_notebook(path: str | os.PathLike, out: str | os.PathLike,
                 parameters: Mapping[str, Any] | None = None, kernel: str = KERNEL) -> NotebookRun:
    """Execute one notebook headlessly into ``out``.

    Parameters
    ----------
    path : path
        The notebook; it runs with its own folder as working directory.
    out : path
        Output folder: receives ``NAME.ipynb``, ``NAME.json`` (``metrics_path``)
        and ``data-NAME/`` (``out_dir``), ``NAME`` being the file's stem.
    parameters : mapping, optional
        Overrides of the notebook's ``parameters`` cell (``out_dir`` and
        ``metrics_path`` are always set as above).
    kernel : str
        Jupyter kernel name.

    Returns
    -------
    NotebookRun

    Raises
    ------
    NotebookFailed
        When a cell raises; the executed copy then holds the error.
    """
    import papermill

    path, out = Path(path).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = NotebookRun(name=path.name, executed=out / path.name, metrics=out / f"{path.stem}.json",
                      data_dir=out / f"data-{path.stem}", seconds=0.0)
    values = dict(parameters or {})
    values.update(out_dir=str(run.data_dir), metrics_path=str(run.metrics))
    run.metrics.unlink(missing_ok=True)  # never show a previous run's numbers
    start = time.perf_counter()
    try:
        with _environment(HEADLESS_ENV):
            papermill.execute_notebook(str(path), str(run.executed), parameters=values,
                                       cwd=str(path.parent), kernel_name=kernel,
                                       progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as error:
        where = f"cell In [{error.exec_count}]" if error.exec_count is not None else "a cell"
        raise NotebookFailed(path.name, run.executed,
                             f"{where} raised {error.ename}: {error.evalue}") from None
    except Exception as error:  # kernel died, missing kernel, unreadable notebook...
        raise NotebookFailed(path.name, run.executed,
                             f"{type(error).__name__}: {error}") from error
    return NotebookRun(run.name, run.executed, run.metrics, run.data_dir,
                       time.perf_counter() - start)


def run_all(out: str | os.PathLike, params: str | os.PathLike = "full",
            source: str | os.PathLike | None = None, only: Sequence[str] | None = None,
            kernel: str = KERNEL,
            report: Callable[[str], None] | None = print) -> list[NotebookRun]:
    """Execute every numbered notebook in order into ``out``; the first failure stops.

    Parameters
    ----------
    out : path
        Output folder (see :func:`run_notebook`).
    params : str or path
        ``"full"``, ``"quick"`` or a YAML file (see :func:`load_parameters`).
    source : path, optional
        Folder of the notebooks (default: :func:`default_source`).
    only : sequence of str, optional
        Run only these notebooks (see :func:`list_notebooks`).
    kernel : str
        Jupyter kernel name.
    report : callable, optional
        Receives one line per notebook (name, time), or ``None`` for silence.

    Returns
    -------
    list of NotebookRun

    Raises
    ------
    NotebookFailed
        From the first notebook that fails; the later ones are not run.
    """
    source = Path(source) if source is not None else default_source()
    everything = list_notebooks(source)
    paths = list_notebooks(source, only)
    parameters = load_parameters(params, source, [p.name for p in everything])
    runs = []
    for k, path in enumerate(paths, 1):
        prefix = f"[{k}/{len(paths)}] {path.name}"
        try:
            run = run_notebook(path, out, parameters.get(path.name), kernel)
        except NotebookFailed:
            if report:
                report(f"{prefix}  FAILED")
            raise
        if report:
            report(f"{prefix}  {run.seconds:.1f} s")
        runs.append(run)
    return runs


# ----------------------------------------------------------------------------
# Offline HTML
# ----------------------------------------------------------------------------


# The site builder, re-exported (it lives in cryoem.publish and cryoem.site_pages).
from .publish import (PLOTLY_MIME, build_site, convert_plotly_outputs, plotly_html,  # noqa: E402
                      plotly_js_path)
from .site_pages import (METHOD_HTML, RESULTS_MD, default_results, external_resources,  # noqa: E402
                         results_page)
