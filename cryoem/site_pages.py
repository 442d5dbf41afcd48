"""The site's own pages: the index, the results page, their style, and the offline check.

:mod:`cryoem.publish` turns executed notebooks into pages; this module writes
the pages that are not notebooks (``index.html``: the method, a table of
every notebook's metrics, links; ``results.html``: the benchmarks' results,
rendered from the markdown that ``benchmarks/results_table.py`` generates
with ``mistune``, nbconvert's Markdown library, its figures copied into
``images/``) and :func:`external_resources`, which every page is checked with
before it is written: no page loads anything over the network.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["external_resources", "results_page", "default_results", "index_page", "navigation",
           "METHOD_HTML", "BENCHMARKS_HTML", "RESULTS_MD"]

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


def navigation(pages: Sequence[tuple[str, str]], current: int | None) -> str:
    """A navigation bar: the index, then one link per page (the current one in bold)."""
    links = ['<a href="index.html">index</a>']
    for k, (href, title) in enumerate(pages):
        label = html.escape(title.split(":")[0])
        links.append(f"<strong>{label}</strong>" if k == current else f'<a href="{href}">{label}</a>')
    return ('<nav class="cryoem-nav" style="font-family:sans-serif;padding:.6rem 1rem;'
            'border-bottom:1px solid #ddd;margin-bottom:1rem">' + " · ".join(links) + "</nav>")


def index_page(entries: Sequence[Mapping[str, Any]], title: str) -> str:
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
