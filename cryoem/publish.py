"""Publish executed notebooks as a static HTML site that works offline.

:func:`build_site` turns a folder of executed notebooks into static HTML:
``index.html`` (the method, a table of every notebook's metrics, links), one
page per notebook, with a single local copy of ``plotly.min.js``, and
``results.html``: the benchmarks' results, rendered from the markdown that
``benchmarks/results_table.py`` generates (``benchmarks/results.md``, the
README's results section) with ``mistune`` (nbconvert's Markdown library),
its figures copied into ``images/``.  No page loads anything over the network.

The route, and why: nbconvert's ``HTMLExporter`` with its ``lab`` template,
the converter Jupyter itself uses, gives JupyterLab's look with its CSS
inlined, and executed notebooks already carry their matplotlib figures as
base64 PNGs.  Site generators (Jupyter Book, Sphinx, mkdocs, Quarto) would
bring a large toolchain and themes that fetch from CDNs, for four pages.
Three things make the pages offline:

* A small template that extends ``lab`` and empties its blocks that load
  require.js, MathJax, mermaid and the widget manager from CDNs.
* Math in Markdown cells is converted to MathML when the page is built
  (``latex2mathml``), which browsers render natively: no script at all.
  Math that does not convert stays as its TeX source.
* Plotly figures are stored in the notebooks as
  ``application/vnd.plotly.v1+json`` (the kernel's renderer); the builder
  turns each into a ``<div>`` and a ``Plotly.newPlot`` call that uses the
  site's one ``plotly.min.js``, copied from the installed plotly package.
  The notebooks keep calling the cryoem API only, and no page carries its
  own 5 MB copy of plotly.js.

:func:`cryoem.site_pages.external_resources` lists what a page would load from the
network; :func:`build_site` refuses to finish a page that has any.  The index and the
results page are written by :mod:`cryoem.site_pages`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from .site_pages import default_results, external_resources, index_page, navigation, results_page

__all__ = ["build_site", "plotly_js_path", "plotly_html", "convert_plotly_outputs", "PLOTLY_MIME"]

#: How the kernel stores a plotly figure in a notebook.
PLOTLY_MIME = "application/vnd.plotly.v1+json"
def plotly_js_path() -> Path:
    """``plotly.min.js`` shipped inside the installed plotly package.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        When this plotly has none.
    """
    import plotly

    root = Path(plotly.__file__).parent
    for candidate in (root / "package_data" / "plotly.min.js", *root.rglob("plotly.min.js")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"plotly {plotly.__version__} ships no plotly.min.js under {root}")


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element."""
    text = json.dumps(value, separators=(",", ":"))  # NaN and Infinity are JavaScript too
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def plotly_html(figure: Mapping[str, Any], element_id: str) -> str:
    """A ``<div>`` and the script that draws a plotly figure in it with a global ``Plotly``.

    Parameters
    ----------
    figure : mapping
        The ``application/vnd.plotly.v1+json`` content: ``data``, ``layout``,
        optionally ``config``.
    element_id : str
        Unique id of the ``<div>`` in its page.

    Returns
    -------
    str
    """
    config = {"responsive": True, "displaylogo": False, **dict(figure.get("config") or {})}
    config.pop("plotlyServerURL", None)
    config.pop("topojsonURL", None)
    height = (figure.get("layout") or {}).get("height") or 500
    return (f'<div id="{element_id}" class="cryoem-plotly" style="width:100%;height:{int(height)}px">'
            f'</div>\n<script type="text/javascript">Plotly.newPlot("{element_id}", '
            f'{_script_json(figure.get("data", []))}, {_script_json(figure.get("layout", {}))}, '
            f'{_script_json(config)});</script>')


def convert_plotly_outputs(notebook: Any) -> int:
    """Replace every plotly output of a notebook by its HTML (:func:`plotly_html`), in place.

    Parameters
    ----------
    notebook : nbformat.NotebookNode

    Returns
    -------
    int
        The number of figures converted (the page needs plotly.js when > 0).
    """
    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                figure = data[PLOTLY_MIME]
                if isinstance(figure, str):
                    figure = json.loads(figure)
                count += 1
                output["data"] = {"text/html": plotly_html(figure, f"plotly-figure-{count}")}
    return count


_MATH_NS = re.compile(r'\s+xmlns="http://www\.w3\.org/1998/Math/MathML"')


def _mathml(tex: str, display: str) -> str | None:
    """TeX → MathML (``display`` "inline" or "block"), or None when it does not convert."""
    try:
        from latex2mathml.converter import convert
    except ImportError:
        return None
    try:
        return _MATH_NS.sub("", convert(tex, display=display))
    except Exception:  # any TeX the converter does not know
        return None


#: The ``lab`` template without its CDN scripts (require.js, MathJax, mermaid, widgets), plus
#: ``resources["cryoem_head"]`` in the head and ``resources["cryoem_nav"]`` above and below.
_TEMPLATE = """\
{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{{ resources.cryoem_head | default('') }}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block body_header -%}{{ super() }}{{ resources.cryoem_nav | default('') }}{%- endblock body_header -%}
{%- block body_footer -%}{{ resources.cryoem_nav | default('') }}{{ super() }}{%- endblock body_footer -%}
"""


def _exporter() -> Any:
    """An nbconvert ``HTMLExporter`` (lab template) whose pages load nothing from a CDN."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter

    try:
        from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
    except ImportError:  # another nbconvert: keep its Markdown renderer, math stays TeX
        return HTMLExporter(template_name="lab", template_file="cryoem-offline.html.j2",
                            extra_loaders=[DictLoader({"cryoem-offline.html.j2": _TEMPLATE})],
                            exclude_anchor_links=True)

    class MathMLRenderer(IPythonRenderer):
        """nbconvert's Markdown renderer, math as MathML (TeX when it does not convert)."""

        def block_math(self, body: str) -> str:
            return _mathml(body, "block") or super().block_math(body)

        def inline_math(self, body: str) -> str:
            return _mathml(body, "inline") or super().inline_math(body)

        def latex_environment(self, name: str, body: str) -> str:
            tex = f"\\begin{{{name}}}{body}\\end{{{name}}}"
            return _mathml(tex, "block") or super().latex_environment(name, body)

    class OfflineHTMLExporter(HTMLExporter):
        """HTMLExporter whose Markdown filter renders math as MathML."""

        @pass_context
        def markdown2html(self, context: Any, source: str) -> str:
            cell = context.get("cell", {})
            renderer = MathMLRenderer(
                escape=False, attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return OfflineHTMLExporter(template_name="lab", template_file="cryoem-offline.html.j2",
                               extra_loaders=[DictLoader({"cryoem-offline.html.j2": _TEMPLATE})],
                               exclude_anchor_links=True)


def _title(notebook: Any, fallback: str) -> str:
    """The first Markdown heading of a notebook, without its ``#``."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#+\s+(.+)$", cell.source, flags=re.M)
            if match:
                return match.group(1).strip()
    return fallback


def _status(notebook: Any) -> str:
    """``ok``, ``failed`` or ``not executed``, from a notebook's outputs and papermill record."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if any(output.get("output_type") == "error" for cell in code for output in cell.get("outputs", [])) \
            or notebook.metadata.get("papermill", {}).get("exception"):
        return "failed"
    if not any(cell.get("execution_count") for cell in code):
        return "not executed"
    return "ok"


def build_site(notebooks: str | os.PathLike, out: str | os.PathLike,
               title: str = "cryoem: orientations from projections in single-particle cryo-EM",
               results: str | os.PathLike | None = None) -> list[Path]:
    """Build the static site from a folder of executed notebooks.

    Parameters
    ----------
    notebooks : path
        Folder holding ``NAME.ipynb`` (executed) and ``NAME.json`` (metrics),
        as written by :func:`cryoem.notebooks.run_all`; every ``*.ipynb`` in it becomes a page.
    out : path
        Site folder: ``index.html``, ``NAME.html`` per notebook and, when a
        page has a plotly figure, ``plotly.min.js``.
    title : str
        Title of the index page.
    results : path, optional
        The benchmarks' results markdown for ``results.html`` (default:
        ``benchmarks/results.md`` in the current directory; when absent, the
        page says how to generate it).  See :func:`cryoem.site_pages.results_page`.

    Returns
    -------
    list of Path
        The pages written: the index, the notebooks' pages, ``results.html``.

    Raises
    ------
    FileNotFoundError
        When the folder holds no notebook, or ``results`` is given and missing.
    RuntimeError
        When a page would load something over the network.
    """
    import nbformat

    source, out = Path(notebooks), Path(out)
    paths = sorted(source.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {source}; run `cryoem notebooks run` "
                                "first")
    out.mkdir(parents=True, exist_ok=True)
    loaded = [nbformat.read(path, as_version=4) for path in paths]
    pages = [(f"{path.stem}.html", _title(nb, path.stem)) for path, nb in zip(paths, loaded)]
    links = [*pages, ("results.html", "Results")]  # the navigation bar's
    written, entries, need_plotly = [], [], False
    exporter = _exporter()
    for k, (path, notebook) in enumerate(zip(paths, loaded)):
        status = _status(notebook)
        figures = convert_plotly_outputs(notebook)
        need_plotly |= figures > 0
        head = '<script src="plotly.min.js"></script>' if figures else ""
        body, _ = exporter.from_notebook_node(notebook, resources={
            "metadata": {"name": pages[k][1], "path": str(path.parent)},
            "cryoem_head": head, "cryoem_nav": navigation(links, k)})
        external = external_resources(body)
        if external:
            raise RuntimeError(f"{path.name}: the page would load {', '.join(external[:3])} "
                               "from the network")
        page = out / pages[k][0]
        page.write_text(body, encoding="utf-8")
        written.append(page)
        metrics_file = path.with_suffix(".json")
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        entries.append({"href": pages[k][0], "title": pages[k][1], "status": status,
                        "seconds": notebook.metadata.get("papermill", {}).get("duration"),
                        "metrics": metrics})
    if need_plotly:
        shutil.copyfile(plotly_js_path(), out / "plotly.min.js")
    written.append(results_page(results if results is not None else default_results(), out,
                                navigation(links, len(pages))))
    index = out / "index.html"
    index.write_text(index_page(entries, title), encoding="utf-8")
    return [index, *written]
