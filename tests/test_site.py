"""`cryoem notebooks run` and `cryoem site build`: executed notebooks become an offline site.

The site is built once per session from notebook 0 executed with the quick
(CI) parameters, the other numbered notebooks joining it as stored (clean), so
that every notebook's page is built while the run stays short (notebook 0
holds the plotly figure).  Pages are then opened in headless Chromium
(Debian's ``chromium``; the browser tests skip without it): each must load
without a JavaScript error and draw its plotly figures, and the index is
screenshotted.  JavaScript errors are read from Chromium's console log on
stderr (``--enable-logging=stderr``: uncaught exceptions print as
``CONSOLE... "Uncaught ..."``); a deliberately broken page checks that this
detection works with the installed Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("nbconvert")
pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

from cryoem import notebooks  # noqa: E402
from cryoem.cli import main  # noqa: E402

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NUMBERED = sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))
EXECUTED = ["0"]  # notebooks executed for the site (the others are built as stored)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXTERNAL_LOAD = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """Execute notebook 0 (quick parameters), add the others as stored, build the site by CLI."""
    root = tmp_path_factory.mktemp("site")
    runs = notebooks.run_all(root / "executed", "quick", only=EXECUTED, report=None)
    for path in NUMBERED:
        if not (root / "executed" / path.name).exists():
            shutil.copyfile(path, root / "executed" / path.name)
    assert main(["site", "build", "--notebooks", str(root / "executed"),
                 "--out", str(root / "site")]) == 0
    return {"root": root, "site": root / "site", "runs": runs}


def _chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--enable-unsafe-swiftshader",  # software WebGL (plotly 3D)
         f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120)


def _js_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "Uncaught" in line or ":ERROR:CONSOLE" in line]


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                             ".ci/run installs it in CI)")


# ----------------------------------------------------------------------------
# Running the notebooks
# ----------------------------------------------------------------------------
def test_run_writes_executed_copy_metrics_and_data(site):
    (run,) = site["runs"]
    out = site["root"] / "executed"
    assert run.name == NUMBERED[0].name
    assert run.executed == out / NUMBERED[0].name and run.executed.is_file()
    assert run.metrics == out / f"{NUMBERED[0].stem}.json"
    assert run.data_dir == out / f"data-{NUMBERED[0].stem}" and any(run.data_dir.glob("*.h5"))
    metrics = json.loads(run.metrics.read_text())
    quick = notebooks.load_parameters("quick", NOTEBOOKS_DIR, [p.name for p in NUMBERED])
    assert metrics["n_projections"] == quick[NUMBERED[0].name]["n_projections"]
    executed = nbformat.read(run.executed, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "matplotlib figures lost"
    assert any(notebooks.PLOTLY_MIME in o.get("data", {}) for o in outputs)
    assert run.seconds > 0


def test_parameters_quick_full_and_file(tmp_path):
    names = [p.name for p in NUMBERED]
    import yaml

    quick = notebooks.load_parameters("quick", NOTEBOOKS_DIR, names)
    assert quick == yaml.safe_load((NOTEBOOKS_DIR / "ci-parameters.yml").read_text())
    assert notebooks.load_parameters("full", NOTEBOOKS_DIR, names) == {}
    own = tmp_path / "p.yaml"
    own.write_text(f"{names[0]}:\n  size: 16\n")
    assert notebooks.load_parameters(own, NOTEBOOKS_DIR, names) == {names[0]: {"size": 16}}
    own.write_text("9-missing.ipynb:\n  size: 16\n")
    with pytest.raises(ValueError, match="9-missing"):
        notebooks.load_parameters(own, NOTEBOOKS_DIR, names)
    with pytest.raises(FileNotFoundError):
        notebooks.load_parameters(tmp_path / "absent.yaml", NOTEBOOKS_DIR, names)
    assert [p.name for p in notebooks.list_notebooks(NOTEBOOKS_DIR, ["0"])] == [names[0]]


def _notebook(path: Path, source: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    parameters = nbformat.v4.new_code_cell("out_dir = None\nmetrics_path = None")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), parameters,
                nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)


def test_failing_notebook_stops_the_run_and_is_named(tmp_path, capsys):
    source = tmp_path / "notebooks"
    source.mkdir()
    _notebook(source / "0-fine.ipynb",
              "import json, pathlib\npathlib.Path(metrics_path).write_text(json.dumps({'x': 1}))")
    _notebook(source / "1-broken.ipynb", "raise ValueError('deliberate failure')")
    _notebook(source / "2-never.ipynb", "print('should not run')")
    out = tmp_path / "out"

    status = main(["notebooks", "run", "--source", str(source), "--out", str(out)])

    captured = capsys.readouterr()
    assert status == 2
    assert re.search(r"\[1/3\] 0-fine\.ipynb\s+\d+\.\d s", captured.out), captured.out
    assert "1-broken.ipynb" in captured.err and "deliberate failure" in captured.err, captured.err
    assert json.loads((out / "0-fine.json").read_text()) == {"x": 1}
    partial = nbformat.read(out / "1-broken.ipynb", as_version=4)  # the partial copy is kept
    assert any(o.output_type == "error" for c in partial.cells if c.cell_type == "code"
               for o in c.outputs)
    assert not (out / "2-never.ipynb").exists()


# ----------------------------------------------------------------------------
# The site, as files
# ----------------------------------------------------------------------------
def test_every_page_exists_and_loads_nothing_from_the_network(site):
    pages = [site["site"] / "index.html", site["site"] / "results.html"] + [
        site["site"] / f"{p.stem}.html" for p in NUMBERED]
    for page in pages:
        assert page.is_file(), page
        text = page.read_text(encoding="utf-8")
        assert not EXTERNAL_LOAD.search(text), (page.name, EXTERNAL_LOAD.search(text).group(0))
        assert not re.search(r"url\(\s*[\"']?(?:https?:)?//|@import\s+[\"']?(?:https?:)?//",
                             text, re.I), page.name
        assert notebooks.external_resources(text) == [], page.name
        for local in re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", text):
            assert (site["site"] / local).is_file(), (page.name, local)
    assert (site["site"] / "plotly.min.js").is_file()
    assert len(list(site["site"].rglob("plotly*.js"))) == 1  # one copy for the whole site
    assert sorted(p.name for p in site["site"].glob("*.html")) == sorted(p.name for p in pages)


def test_index_has_method_results_and_links(site):
    index = (site["site"] / "index.html").read_text(encoding="utf-8")
    assert "Method" in index and "Orientation recovery" in index
    for path in NUMBERED:
        assert f'href="{path.stem}.html"' in index
    metrics = json.loads(site["runs"][0].metrics.read_text())
    assert "<code>n_projections</code>" in index
    assert f">{metrics['n_projections']}<" in index
    assert "not executed" in index  # the notebooks added as stored say so
    assert 'href="results.html"' in index


def test_notebook_pages_hold_plotly_divs_and_mathml(site):
    page = (site["site"] / f"{NUMBERED[0].stem}.html").read_text(encoding="utf-8")
    assert '<script src="plotly.min.js"></script>' in page
    assert page.count("Plotly.newPlot(") == 1
    assert notebooks.PLOTLY_MIME not in page
    assert "<math" in page  # Markdown math rendered without MathJax
    assert "data:image/png;base64," in page  # matplotlib figures embedded


def test_external_resources_finds_loads_not_links():
    page = ('<script src="https://cdn.example/x.js"></script><link rel="stylesheet" '
            'href="//cdn.example/s.css"><style>@import "https://f.example/a.css"; '
            'b{background:url(http://i.example/i.png)}</style>'
            '<a href="https://arxiv.org/abs/2104.06237">paper</a><script src="plotly.min.js">')
    assert notebooks.external_resources(page) == [
        "https://cdn.example/x.js", "//cdn.example/s.css", "http://i.example/i.png",
        "https://f.example/a.css"]


def test_plotly_outputs_become_local_plotly_calls():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={notebooks.PLOTLY_MIME: {"data": [{"type": "scatter", "y": [1, 2]}],
                                                     "layout": {"title": {"text": "</script>"}}},
                              "text/plain": "Figure"})]
    nb.cells = [cell]
    assert notebooks.convert_plotly_outputs(nb) == 1
    (output,) = cell.outputs
    assert list(output["data"]) == ["text/html"]
    html = output["data"]["text/html"]
    assert 'id="plotly-figure-1"' in html and 'Plotly.newPlot("plotly-figure-1"' in html
    assert "</script>" not in html.split("<script", 1)[1][:-len("</script>")]


# ----------------------------------------------------------------------------
# The results page (fast: one tiny unexecuted notebook, a fake results.md)
# ----------------------------------------------------------------------------
RESULTS_MD = """## Results

Measured on a test machine.

### The paper's table, regenerated

Command: `python benchmarks/paper_table.py` → `benchmarks/results/paper_table.json`.

| protein | SNR | E_OR O(4) |
|---|---|---|
| 4ake (C1) | ∞ | 0.123 |

![E_OR against SNR](../images/fig.png)

![absent](../images/absent.png)
"""


@pytest.fixture
def small_site(tmp_path) -> dict:
    """A site from one unexecuted notebook and a fake ``benchmarks/results.md`` with a figure."""
    (tmp_path / "executed").mkdir()
    _notebook(tmp_path / "executed" / "0-tiny.ipynb", "print(1)")
    results = tmp_path / "repo" / "benchmarks" / "results.md"
    results.parent.mkdir(parents=True)
    results.write_text(RESULTS_MD, encoding="utf-8")
    (tmp_path / "repo" / "images").mkdir()
    (tmp_path / "repo" / "images" / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    pages = notebooks.build_site(tmp_path / "executed", tmp_path / "site", results=results)
    return {"site": tmp_path / "site", "pages": pages}


def test_results_page_renders_the_tables_and_copies_figures(small_site):
    out = small_site["site"]
    assert out / "results.html" in small_site["pages"]
    page = (out / "results.html").read_text(encoding="utf-8")
    assert "<title>Results</title>" in page and "<h1>Results</h1>" in page
    assert re.search(r"<th>protein</th>\s*<th>SNR</th>", page)
    assert re.search(r"<td>4ake \(C1\)</td>\s*<td>∞</td>\s*<td>0.123</td>", page)
    assert "<code>python benchmarks/paper_table.py</code>" in page
    assert 'src="images/fig.png"' in page and 'src="../images' not in page
    assert (out / "images" / "fig.png").read_bytes().endswith(b"fake")  # offline: copied
    assert "figure not found: ../images/absent.png" in page  # no broken image
    assert notebooks.external_resources(page) == []
    assert 'href="index.html"' in page and 'href="0-tiny.html"' in page  # navigation


def test_results_page_is_linked_from_index_and_notebook_pages(small_site):
    out = small_site["site"]
    assert 'href="results.html"' in (out / "index.html").read_text(encoding="utf-8")
    assert 'href="results.html"' in (out / "0-tiny.html").read_text(encoding="utf-8")


def test_results_page_without_results_says_how_to_generate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no benchmarks/results.md here
    assert notebooks.default_results() is None
    page = notebooks.results_page(notebooks.default_results(), tmp_path / "site")
    text = page.read_text(encoding="utf-8")
    assert "No results yet" in text and "python benchmarks/results_table.py" in text
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.md").write_text(RESULTS_MD, encoding="utf-8")
    assert notebooks.default_results() == Path("benchmarks/results.md")
    with pytest.raises(FileNotFoundError, match="results_table.py"):
        notebooks.results_page(tmp_path / "missing.md", tmp_path / "site")


# ----------------------------------------------------------------------------
# The site, in a browser
# ----------------------------------------------------------------------------
@needs_chromium
def test_console_error_detection_works(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p>"
                    "<script>null.deliberate();</script></body></html>")
    result = _chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert _js_errors(result.stderr), result.stderr[-2000:]


@needs_chromium
def test_pages_load_without_errors_and_draw_plotly(site, tmp_path):
    for page in sorted(site["site"].glob("*.html")):
        result = _chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
        assert result.returncode == 0, (page.name, result.stderr[-2000:])
        assert not _js_errors(result.stderr), (page.name, _js_errors(result.stderr))
        dom = result.stdout
        assert "</html>" in dom, page.name
        if "Plotly.newPlot(" in page.read_text(encoding="utf-8"):
            assert "js-plotly-plot" in dom and "plot-container" in dom, \
                f"{page.name}: no plotly figure drawn"
            assert dom.count('class="main-svg"') >= 1, page.name


@needs_chromium
def test_index_screenshot(site, tmp_path):
    shot = tmp_path / "index.png"
    result = _chromium("--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}",
                       (site["site"] / "index.html").as_uri(), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000, shot.stat().st_size  # text and tables, not a blank page
