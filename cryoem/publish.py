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

:func:`external_resources` lists what a page would load from the network;
:func:`build_site` refuses to finish a page that has any.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["build_site", "external_resources", "plotly_js_path", "plotly_html",
           "convert_plotly_outputs", "METHOD_HTML", "default_results", "results_page",
           "PLOTLY_MIME", "RESULTS_MD"]

#: How the kernel stores a plotly figure in a notebook.
PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: The benchmarks' results page, written by ``benchmarks/results_table.py``.
RESULTS_MD = Path("benchmarks") / "results.md"

_EXTERNAL = [
    # script/link/img/... loading from http(s) or a protocol-relative address
    re.compile(r"<(?:script|link|img|iframe|source|video|audio|embed|object|input)\b[^>]*?"
               r"\b(?:src|href|data|srcset)\s*=\s*[\"']?\s*((?:https?:)?//[^\"'\s>]+)", re.I),
    # CSS url(...) and @import
    re.compile(r"url\(\s*[\"']?\s*((?:https?:)?//[^\"')\s]+)", re.I),
    re.compile(r"@import\s+[\"']((?:https?:)?//[^\"']+)", re.I),
    # JavaScript module imports and require.js configuration
    re.compile(r"\bimport\s*\(?\s*[\"']((?:https?:)?//[^\"']+)", re.I),
    re.compile(r"\b(?:src|href)\s*=\s*[\"']((?:https?:)?//[^\"']+\.(?:js|mjs|css))", re.I),
]


def external_resources(page: str) -> list[str]:
    """Addresses a page would load over the network (scripts, styles, images, imports).

    Links (``<a href>``) are not loads and are not listed.

    Parameters
    ----------
    page : str
        HTML text.

    Returns
    -------
    list of str
        The addresses, without duplicates, in order of appearance.
    """
    found: list[str] = []
    for pattern in _EXTERNAL:
        for match in pattern.finditer(page):
            if match.group(1) not in found:
                found.append(match.group(1))
    return found


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


def _flatten(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and scalar values of a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list) and len(value) > 8:
        yield key, f"[{len(value)} values]"
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{key}[{i}]")
    else:
        yield key, value


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "—"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


METHOD_HTML = """\
<p>This site reproduces <em>Learning to recover orientations from projections in
single-particle cryo-EM</em> (Banjac, Donati, Defferrard, 2021, arXiv:2104.06237) with the
<code>cryoem</code> package.  The method, in four phases, one notebook each:</p>
<ol start="0">
<li><strong>Data</strong>: a density map is rotated and projected along z,
<code>p_i = Proj_z(R_i x)</code>, with shifts, noise and a CTF.</li>
<li><strong>Distance learning</strong>: a Siamese network learns a distance between two
projections that approximates the geodesic distance between their unknown orientations.</li>
<li><strong>Orientation recovery</strong>: orientations whose distances match the estimated ones
(spectral start, then gradient descent); the frame that distances cannot see is chosen from
the images' common lines.</li>
<li><strong>Reconstruction</strong>: the volume is rebuilt by least squares and its resolution
measured by Fourier shell correlation.</li>
</ol>
<p>Two errors are reported: <code>e_or_o4</code>, the paper's metric (after the best O(4)
transform of the quaternions), and <code>e_or</code>, the physical one (after the best global
rotation and handedness only).  Where the ground truth is used for more than scoring, it is
named: by default the distance network is trained on projections rendered from the <em>true</em>
map of the protein it is tested on (the paper's supervised setting, an upper bound on what a lab
without the map gets), and every run records these uses in <code>metrics.json</code>
(<code>truth_used</code>).</p>
"""

_STYLE = """\
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;line-height:1.5;color:#222}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.2rem .8rem;
border-bottom:1px solid #eee;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f4f4f4;padding:0 .2rem}.failed{color:#b00}.muted{color:#777}
.results table{display:block;overflow-x:auto}.results img{max-width:100%}
"""


def _nav(pages: Sequence[tuple[str, str]], current: int | None) -> str:
    """A navigation bar: the index, then one link per page (the current one in bold)."""
    links = ['<a href="index.html">index</a>']
    for k, (href, title) in enumerate(pages):
        label = html.escape(title.split(":")[0])
        links.append(f"<strong>{label}</strong>" if k == current else f'<a href="{href}">{label}</a>')
    return ('<nav class="cryoem-nav" style="font-family:sans-serif;padding:.6rem 1rem;'
            'border-bottom:1px solid #ddd;margin-bottom:1rem">' + " · ".join(links) + "</nav>")


def _index_html(entries: Sequence[Mapping[str, Any]], title: str) -> str:
    """The index page: method, one results table per notebook, links."""
    rows = []
    for entry in entries:
        status = entry["status"]
        css = ' class="failed"' if status == "failed" else ""
        seconds = f'{entry["seconds"]:.0f} s' if entry.get("seconds") is not None else "—"
        rows.append(f'<tr><td><a href="{entry["href"]}">{html.escape(entry["title"])}</a></td>'
                    f'<td{css}>{status}</td><td class="num">{seconds}</td></tr>')
    sections = []
    for entry in entries:
        metrics = entry.get("metrics")
        heading = f'<h3><a href="{entry["href"]}">{html.escape(entry["title"])}</a></h3>'
        if not metrics:
            sections.append(heading + '<p class="muted">no metrics file</p>')
            continue
        body = "".join(f"<tr><td><code>{html.escape(key)}</code></td>"
                       f'<td class="num">{html.escape(_format(value))}</td></tr>'
                       for key, value in _flatten(metrics))
        sections.append(f"{heading}<table><tr><th>metric</th><th>value</th></tr>{body}</table>")
    return _page(title, f"<h1>{html.escape(title)}</h1>\n<h2>Method</h2>\n{METHOD_HTML}"
                 f"<h2>Notebooks</h2>\n<table><tr><th>phase</th><th>run</th><th>time</th></tr>"
                 f'{"".join(rows)}</table>\n<h2>Benchmarks</h2>\n{BENCHMARKS_HTML}'
                 f'<h2>Results</h2>\n<p class="muted">From each notebook\'s metrics file '
                 f"(angles in radians, resolutions in Å).</p>\n{''.join(sections)}")


def _page(title: str, body: str) -> str:
    """A standalone page in the site's style."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


# ----------------------------------------------------------------------------
# The results page
# ----------------------------------------------------------------------------
BENCHMARKS_HTML = """\
<p><a href="results.html">Results</a>: the paper's table regenerated beside the paper's own
figures, our orientations against ASPIRE's common lines by SNR, one distance model on proteins
it never saw, preferred views, and the components' benchmarks, each with the command that
measured it.</p>
"""

_IMG = re.compile(r"<img\b[^>]*>", re.I)
_SRC = re.compile(r'\bsrc="([^"]*)"', re.I)


def default_results() -> Path | None:
    """``benchmarks/results.md`` in the current directory, or None when it is not there."""
    return RESULTS_MD if RESULTS_MD.is_file() else None


def _markdown_html(text: str) -> str:
    """Markdown (with tables) → HTML, by mistune, the Markdown library of nbconvert."""
    import mistune

    return mistune.create_markdown(plugins=["table"])(text)


def _local_images(page: str, source: Path, out: Path) -> str:
    """Copy each image a page references (relative to ``source``) into ``out/images``.

    Addresses with a scheme (``data:``, ``https:``) are left alone; a missing
    file becomes a note, so the page never shows a broken image.
    """
    def copy(match: re.Match[str]) -> str:
        src = _SRC.search(match.group(0))
        address = html.unescape(src.group(1)) if src else ""
        if not address or re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", address, re.I):
            return match.group(0)
        path = source / address
        if not path.is_file():
            return f'<span class="muted">(figure not found: {html.escape(address)})</span>'
        (out / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / "images" / path.name)
        return _SRC.sub(lambda _: f'src="images/{html.escape(path.name)}"', match.group(0), 1)

    return _IMG.sub(copy, page)


def results_page(results: str | os.PathLike | None, out: str | os.PathLike, nav: str = "",
                 title: str = "Results") -> Path:
    """Write ``out/results.html`` from the benchmarks' results markdown.

    Parameters
    ----------
    results : path or None
        The markdown (``benchmarks/results.md``); its images, relative to its
        folder, are copied into ``out/images``.  None: a page saying how to
        generate it.
    out : path
        Site folder.
    nav : str
        Navigation bar HTML, put above the content.
    title : str
        Title when the markdown does not start with a heading.

    Returns
    -------
    Path
        The page.

    Raises
    ------
    FileNotFoundError
        When ``results`` is given but does not exist.
    RuntimeError
        When the page would load something over the network.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if results is None:
        body = (f"<h1>{html.escape(title)}</h1>\n<p>No results yet: run the benchmarks "
                "(<code>python benchmarks/&lt;name&gt;.py</code>), then <code>python "
                "benchmarks/results_table.py</code>, which writes <code>"
                f"{html.escape(RESULTS_MD.as_posix())}</code>, and rebuild the site from the "
                "repository's root (or give <code>--results PATH</code>).</p>")
    else:
        results = Path(results)
        if not results.is_file():
            raise FileNotFoundError(f"no results markdown {results}; generate it with "
                                    "python benchmarks/results_table.py")
        text = results.read_text(encoding="utf-8")
        heading = re.match(r"\s*#+\s+(.+?)\s*\n", text)
        if heading:
            title, text = heading.group(1), text[heading.end():]
        body = (f"<h1>{html.escape(title)}</h1>\n<div class=\"results\">\n"
                f"{_local_images(_markdown_html(text), results.parent, out)}</div>")
        body += (f'<p class="muted">Rendered from <code>{html.escape(results.name)}</code>, '
                 "generated by <code>python benchmarks/results_table.py</code> from the JSON "
                 "the benchmark scripts write.</p>")
    page = _page(title, nav + "\n" + body)
    external = external_resources(page)
    if external:
        raise RuntimeError(f"results page would load {', '.join(external[:3])} from the network")
    path = out / "results.html"
    path.write_text(page, encoding="utf-8")
    return path


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
        page says how to generate it).  See :func:`results_page`.

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
            "cryoem_head": head, "cryoem_nav": _nav(links, k)})
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
                                _nav(links, len(pages))))
    index = out / "index.html"
    index.write_text(_index_html(entries, title), encoding="utf-8")
    return [index, *written]
