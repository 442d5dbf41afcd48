"""The benchmark scripts' shared harness: a scenario declared once, run, cached, tabulated.

A :class:`Scenario` is a name, the settings its result depends on (data, method,
scoring) and a function that computes the result (one row, or a list of rows).
:class:`Harness` runs scenarios for one benchmark script:

* **cache**: a result is stored in the script's JSON, stamped with the scenario's
  key (a hash of its settings) and the commit of the code that computed it
  (``code``).  A later run reuses it only for the same key *and* the same commit;
  a result from another commit is recomputed, or with ``--reuse-stale`` reused and
  labelled ``stale`` (its ``code.git_commit`` says which commit made it).  A result
  with a failed row, or skipped altogether, is never reused.  ``--fresh`` ignores the cache.
* **lock**: one process at a time writes a given JSON (others wait), so that two
  runs of a script side by side neither duplicate nor clobber each other's work.
* **provenance**: :meth:`Harness.write` writes the report through
  ``_common.write_report`` (which records the provenance), with the machine, the
  threads and the commit.
* **tabulate**: :func:`table` prints rows under :class:`Column` s and marks stale rows.

Example usage::

    with Harness("my_bench", args.out, config=vars(args), fresh=args.fresh,
                 reuse_stale=args.reuse_stale) as bench:
        row = bench.run(Scenario("snr inf", {"snr": "inf", "n": 60}, lambda: compute()))
        bench.write({"rows": [row]})
    print(table([row], [Column("E_OR", lambda r: r["e_or"], ".4f")]))

Threads: :func:`pin_threads` copies ``--threads N`` into the OpenMP/BLAS variables
and must run before NumPy is imported (BLAS reads them once, when it loads);
:func:`apply_threads` then sets TensorFlow's threads and records what applies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import resource
import sys
import time
import traceback
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

#: Variables that set the OpenMP (finufft) and BLAS thread counts, ours and ASPIRE's.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
#: The Python of ASPIRE's own virtual environment (benchmarks/README.md).
DEFAULT_ASPIRE_PYTHON = Path("/work/aspire-venv/bin/python")
WITHIN_DEGREES = 10.0
_PINNED: dict[str, Any] = {"threads": None, "before_numpy": False}


# ----------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------
def pin_threads(argv: Sequence[str] | None = None, default: int | None = None) -> int | None:
    """Copy ``--threads N`` of ``argv`` (default ``sys.argv``) into :data:`THREAD_VARIABLES`.

    Call before NumPy is imported; ``default`` applies when ``--threads`` is absent
    (``None``: the variables are left as they are).  Returns the count pinned.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    value: str | None = None
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
    try:
        n = int(value) if value is not None else default
    except ValueError:
        return None  # argparse reports it
    if n is not None and n > 0:
        os.environ.update({variable: str(n) for variable in THREAD_VARIABLES})
        _PINNED.update(threads=n, before_numpy="numpy" not in sys.modules)
    return n


def apply_threads(n: int | None) -> dict[str, Any]:
    """Use ``n`` threads everywhere that still can change (TensorFlow, OpenMP, subprocesses).

    Returns what applies, for the report: the count, the variables, and whether BLAS
    got them (only when :func:`pin_threads` ran before NumPy was imported).
    """
    if n is not None:
        os.environ.update({variable: str(n) for variable in THREAD_VARIABLES})
        from cryoem.siamese import configure_threads

        configure_threads(n)
    return {"threads": n, "variables": {v: os.environ.get(v) for v in THREAD_VARIABLES},
            "blas_pinned_before_numpy": bool(_PINNED["before_numpy"]
                                             and _PINNED["threads"] == n)}


# ----------------------------------------------------------------------------
# Options every script shares
# ----------------------------------------------------------------------------
def add_options(parser: Any, out: Path, threads: int | None = None) -> None:
    """``--threads``, ``--out``, ``--fresh``, ``--reuse-stale``, ``--progress`` and ``--quick``."""
    parser.add_argument("--threads", type=int, default=threads,
                        help="threads: TensorFlow, BLAS, OpenMP (default: "
                             + ("the machine's" if threads is None else str(threads)) + ")")
    parser.add_argument("--out", type=Path, default=out, help="JSON report (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse results computed by another commit (labelled stale)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for CI, written apart from the real results")


def quick_defaults(args: Any, parser: Any, values: dict[str, Any]) -> None:
    """With ``--quick``: ``values`` for the options left at their defaults."""
    if args.quick:
        for name, value in values.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)


# ----------------------------------------------------------------------------
# Scenarios and the harness
# ----------------------------------------------------------------------------
def settings_key(name: str, settings: dict[str, Any]) -> str:
    """A short hash of a scenario's name and settings (canonical JSON)."""
    from _common import jsonable

    text = json.dumps({"name": name, "settings": jsonable(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Scenario:
    """One measurement: ``run()`` computes it, from ``settings`` alone (data, method, scoring).

    ``reusable(rows)`` may refuse a cached result (e.g. one whose files are gone).
    """

    name: str
    settings: dict[str, Any]
    run: Callable[[], dict[str, Any] | list[dict[str, Any]]]
    reusable: Callable[[list[dict[str, Any]]], bool] | None = None

    @property
    def key(self) -> str:
        return settings_key(self.name, self.settings)


def _stamped(value: Any) -> Iterator[dict[str, Any]]:
    """Every result dict (one with a ``scenario`` key) inside ``value``, in order."""
    if isinstance(value, dict):
        if isinstance(value.get("scenario"), dict) and "key" in value["scenario"]:
            yield value
        for item in value.values():
            yield from _stamped(item)
    elif isinstance(value, list):
        for item in value:
            yield from _stamped(item)


class Harness:
    """Run scenarios of one benchmark with a cache tied to the code's commit; write its JSON."""

    def __init__(self, benchmark: str, out: Path, *, config: dict[str, Any],
                 threads: dict[str, Any] | None = None, fresh: bool = False,
                 reuse_stale: bool = False) -> None:
        from cryoem import provenance

        self.benchmark, self.out, self.config = benchmark, Path(out), config
        self.threads = threads or {"threads": None}
        self.fresh, self.reuse_stale = fresh, reuse_stale
        self.commit, self.dirty = provenance.git_state()
        self.cache: dict[str, list[dict[str, Any]]] = {}
        self.failures: list[str] = []
        self._lock: contextlib.ExitStack | None = None

    def __enter__(self) -> Harness:
        from _common import _locked

        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(_locked(self.out.with_name(f".{self.out.name}.lock")))
        self.cache = {} if self.fresh else self._load_cache()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.close()

    def previous(self) -> dict[str, Any]:
        """The report in ``out`` (empty if none or unreadable)."""
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}

    def _load_cache(self) -> dict[str, list[dict[str, Any]]]:
        cache: dict[str, list[dict[str, Any]]] = {}
        for result in _stamped(self.previous()):
            cache.setdefault(result["scenario"]["key"], []).append(result)
        return cache

    def run_rows(self, scenario: Scenario) -> list[dict[str, Any]]:
        """The scenario's rows: cached ones when allowed, else computed now (failures recorded)."""
        key = scenario.key
        cached = self.cache.get(key) or []
        statuses = [r.get("status") for r in cached]  # rerun failures and whole skips
        usable = bool(cached) and "failed" not in statuses and set(statuses) != {"skipped"}
        if usable and scenario.reusable is not None:
            usable = scenario.reusable(cached)
        if usable:
            commit = (cached[0].get("code") or {}).get("git_commit")
            if commit == self.commit or self.reuse_stale:
                print(f"  {scenario.name}: reusing the result of commit {str(commit)[:10]}"
                      + (" (stale)" if commit != self.commit else ""), file=sys.stderr)
                return [{**row, "reused": True} for row in cached]
            print(f"  {scenario.name}: not reusing the result of commit {str(commit)[:10]} "
                  "(another commit; --reuse-stale reuses it, labelled stale)", file=sys.stderr)
        start = time.perf_counter()
        try:
            result = scenario.run()
        except Exception as error:  # noqa: BLE001 - recorded with its traceback
            print(f"  {scenario.name} failed: {error!r}", file=sys.stderr)
            result = {"status": "failed", "reason": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()[-4000:]}
        rows = result if isinstance(result, list) else [result]
        if any(row.get("status") == "failed" for row in rows):
            self.failures.append(scenario.name)
        stamp = {"scenario": {"name": scenario.name, "key": key, "settings": scenario.settings},
                 "code": {"git_commit": self.commit, "git_dirty": self.dirty},
                 "reused": False, "scenario_seconds": time.perf_counter() - start}
        rows = [{**row, **stamp} for row in rows]
        self.cache[key] = rows
        return rows

    def run(self, scenario: Scenario) -> dict[str, Any]:
        """:meth:`run_rows` for a scenario of one row."""
        return self.run_rows(scenario)[0]

    def write(self, body: dict[str, Any]) -> dict[str, Any]:
        """Write ``body`` with the benchmark's name, config, machine, threads and commit.

        Every result in it is labelled ``stale`` when another commit computed it.
        """
        from _common import machine_info, write_report

        for result in _stamped(body):
            result["stale"] = (result.get("code") or {}).get("git_commit") != self.commit
        report = {"benchmark": self.benchmark, "config": self.config,
                  "machine": machine_info(self.threads.get("threads")),
                  "threads": self.threads,
                  "code": {"git_commit": self.commit, "git_dirty": self.dirty}, **body}
        write_report(report, self.out)
        return report


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------
@dataclass
class Column:
    """A table column: its header, the value of a row, a format spec for numbers."""

    header: str
    value: Callable[[dict[str, Any]], Any]
    spec: str = ".4f"


def cell(value: Any, spec: str = ".4f") -> str:
    """A number formatted, ``—`` for none or NaN, text as it is but for its pipes, escaped so
    that a Markdown table keeps its columns."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "inf" if isinstance(value, float) and math.isinf(value) else format(value, spec)
    return str(value).replace("|", "\\|")


def stale_note(row: dict[str, Any]) -> str:
    """``stale (commit …)`` when a result inside ``row`` comes from another commit, else ``""``."""
    commits = sorted({str((r.get("code") or {}).get("git_commit"))[:10]
                      for r in _stamped(row) if r.get("stale")})
    return f"stale ({', '.join(commits)})" if commits else ""


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Fixed-width text table; a last column marks stale rows."""
    body = [[cell(c.value(row), c.spec) for c in columns] + [stale_note(row)] for row in rows]
    headers = [c.header for c in columns] + [""]
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(headers)]
    lines = [" ".join(h.rjust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("-" * len(lines[0]))
    lines += [" ".join(v.rjust(w) for v, w in zip(line, widths)).rstrip() for line in body]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Measuring and scoring
# ----------------------------------------------------------------------------
def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()`` and its wall-clock seconds."""
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def measure(call: Callable[[], Any], trace: bool = True) -> tuple[Any, float, dict[str, Any]]:
    """``call()``, its seconds and memory: peak RSS during it (``ru_maxrss`` after resetting the
    kernel's high-water mark, Linux; ``rss_reset`` false where refused) and tracemalloc's peak."""
    try:
        rss = next(int(line.split()[1]) / 1024.0 for line in
                   Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        rss = math.nan
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    if trace:
        tracemalloc.start()
    try:
        value, seconds = timed(call)
        traced = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    finally:
        if trace:
            tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    return value, seconds, {"peak_rss_mb": peak, "rss_reset": reset, "rss_before_mb": rss,
                            "tracemalloc_peak_mb": traced}


def score(q: Any, truth: Any, symmetry: str = "C1", prefix: str = "e_or",
          o4_restarts: int | None = None) -> tuple[dict[str, Any], Any]:
    """Physical error of ``q`` against ``truth`` (``alignment.align_physical``), and its fit.

    Keys: ``prefix`` (mean, rad), ``_median``, ``_within_10deg`` (share),
    ``_handedness_flipped``; with ``o4_restarts`` also the paper's ``e_or_o4`` (and
    median) and ``o4_missed_minimum`` (the physical alignment, a subgroup of O(4), did
    better: ``align_o4``'s local search missed its minimum).
    """
    import numpy as np

    from cryoem import alignment

    fit = alignment.align_physical(q, truth, symmetry=symmetry)
    numbers: dict[str, Any] = {
        prefix: fit.mean, f"{prefix}_median": fit.median,
        f"{prefix}_within_{WITHIN_DEGREES:g}deg": float(np.mean(fit.errors
                                                               <= np.deg2rad(WITHIN_DEGREES))),
        f"{prefix}_handedness_flipped": bool(fit.flipped)}
    if o4_restarts is not None:
        o4 = alignment.align_o4(q, truth, symmetry=symmetry, restarts=o4_restarts)
        numbers.update(e_or_o4=o4.mean, e_or_o4_median=o4.median,
                       o4_missed_minimum=bool(fit.mean < o4.mean - 1e-9))
    return numbers, fit


def run_worker(python: Path, script: Path, arguments: Sequence[str], out_json: Path,
               threads: int | None, timeout: float) -> Any:
    """Run ``script`` with another environment's ``python`` (ASPIRE's), ``threads`` threads.

    Returns the JSON it wrote to ``out_json`` (passed as ``--out``) and the wall seconds,
    or a record (``status`` skipped or failed, ``reason``) when it cannot run or fails.
    """
    import subprocess

    if not Path(python).exists():
        return {"status": "skipped", "reason": f"no Python at {python}: the peer was not run"}
    command = [str(python), str(script), *arguments, "--out", str(out_json)]
    env = dict(os.environ)
    if threads is not None:
        command += ["--threads", str(threads)]
        env.update({variable: str(threads) for variable in THREAD_VARIABLES})
    try:
        done, wall = timed(lambda: subprocess.run(command, env=env, capture_output=True,
                                                  text=True, timeout=timeout))
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:g} s"}
    if done.returncode != 0 or not Path(out_json).is_file():
        return {"status": "failed", "reason": f"worker exited with {done.returncode}",
                "stderr_tail": done.stderr[-3000:]}
    return json.loads(Path(out_json).read_text()), wall


def map_fsc(data: Any, images: Any, q: Any, shifts: Any = None,
            progress: bool = False) -> dict[str, Any]:
    """Least-squares map from ``images`` at ``q`` (and ``shifts``), FSC 0.5 against the truth.

    ``q`` must be in the truth's frame (``Alignment.to_truth_frame``: scoring only).
    """
    from cryoem import reconstruction, resolution

    result, seconds = timed(lambda: reconstruction.reconstruct(
        images, q, shifts=shifts, pixel_size=data.pixel_size, progress=progress))
    curve = resolution.fsc(result.data, data.volume, data.pixel_size)
    value = curve.resolution(0.5)
    return {"resolution_fsc05_angstrom": value, "resolution_fsc05_px": value / data.pixel_size,
            "fsc_frequencies": curve.frequencies, "fsc_values": curve.values,
            "reconstruction_seconds": seconds}


def refine_and_score(data: Any, subset: Any, first: Any, options: dict[str, Any],
                     progress: bool, name: str) -> dict[str, Any]:
    """``refinement.refine(images, first, **options)`` on ``data``'s images ``subset``, scored
    against the truth each iteration (untimed), then mapped (:func:`map_fsc`).

    Every method compared gets this one call (shifts estimated from zero).  Seconds:
    ``refinement_seconds`` (the scoring taken out).
    """
    import numpy as np

    from cryoem import refinement

    images, truth = data.projections[subset], data.orientations[subset]  # truth: to score
    symmetry = str(data.attrs.get("symmetry", "C1"))
    scoring = {"seconds": 0.0}

    def callback(iteration: int, q: Any, shifts: Any) -> dict[str, float]:
        numbers, seconds = timed(lambda: score(q, truth, symmetry)[0])
        scoring["seconds"] += seconds
        print(f"  {name}: refinement iteration {iteration}: e_or {numbers['e_or']:.4f}",
              file=sys.stderr)
        return {"e_or_rad": float(numbers["e_or"])}

    refined, wall = timed(lambda: refinement.refine(
        images, first, pixel_size=data.pixel_size, progress=progress, callback=callback,
        **options))
    final, fit = score(refined.quaternions, truth, symmetry)
    shift_error = np.linalg.norm(refined.shifts - data.shifts[subset], axis=1)
    return {**final, "e_or_by_iteration": [h["e_or_rad"] for h in refined.history],
            "refinement_iterations": len(refined.history),
            "mean_abs_shift_px": float(np.mean(np.abs(refined.shifts))),
            "shift_error_px_median": float(np.median(shift_error)),
            **map_fsc(data, images, fit.to_truth_frame(refined.quaternions), refined.shifts,
                      progress),
            "refinement_seconds": wall - scoring["seconds"],
            "refinement_scoring_seconds_excluded": scoring["seconds"]}


def aspire_common_lines(python: Path, images: Any, pixel_size: float, *, n_theta: int = 360,
                        dtype: str = "float32", threads: int | None = None,
                        timeout: float = 3 * 3600.0, n_nbor: int = 0) -> Any:
    """ASPIRE's ``CLSyncVoting`` on ``images`` (``aspire_commonlines_worker.py`` run by
    ASPIRE's ``python``; with ``n_nbor``, on class averages first).

    Returns ASPIRE's rotation matrices (its convention: transpose them for ours; in the
    images' order), the worker's JSON and the wall seconds; or a record (``status``,
    ``reason``) saying why ASPIRE was not run or failed.
    """
    import tempfile

    import numpy as np

    if n_nbor and len(images) < 300:
        return {"status": "skipped", "reason": "ASPIRE's class averaging needs ≥ 300 images "
                                               "(RIRClass2D's 300 bispectrum components)"}
    with tempfile.TemporaryDirectory(prefix="aspire_common_lines_") as scratch:
        folder = Path(scratch)
        np.save(folder / "images.npy", np.asarray(images, dtype=np.float32))
        outcome = run_worker(
            python, Path(__file__).with_name("aspire_commonlines_worker.py"),
            ["--images", str(folder / "images.npy"), "--rotations-out",
             str(folder / "rotations.npy"), "--n-theta", str(n_theta), "--pixel-size",
             str(pixel_size), "--dtype", dtype, "--class-averages", str(n_nbor)],
            folder / "result.json", threads, timeout)
        if isinstance(outcome, dict):
            return {**outcome, "reason": outcome["reason"].replace("the peer", "ASPIRE")}
        return np.load(folder / "rotations.npy"), *outcome


# ----------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------
def dataset(folder: Path, *, volume: str, size: int, n_projections: int, test_size: int,
            snr: float, max_shift: float, seed: int, sampling: str = "uniform",
            sampling_options: dict[str, Any] | None = None,
            progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """A ``datasets.generate`` file in ``folder`` named by every parameter; made once (locked)."""
    from _common import _locked, snr_tag

    from cryoem import datasets, volumes

    options = "".join(f"_{k}{v if not isinstance(v, (list, tuple)) else '-'.join(map(str, v))}"
                      for k, v in sorted((sampling_options or {}).items()))
    name = (f"{Path(volume).name}_L{size}_N{n_projections}_test{test_size}_shift{max_shift:g}"
            f"_snr{snr_tag(snr)}_{sampling}{options}_seed{seed}")
    path = folder / ("".join(c if c.isalnum() or c in "._-" else "_" for c in name) + ".h5")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _locked(path.with_name(f".{path.name}.lock")):
        if path.is_file():
            return path, {"path": str(path), "reused": True, "seconds": 0.0}
        print(f"  generating {path}", file=sys.stderr)
        datasets.generate(volumes.resolve(volume, size), n_projections, path, snr=snr,
                          max_shift=max_shift, sampling=sampling,
                          sampling_options=sampling_options, test_size=test_size, seed=seed,
                          progress=progress, overwrite=True)
    return path, {"path": str(path), "reused": False, "seconds": time.perf_counter() - start}


@functools.lru_cache(maxsize=None)
def estimator(kind: str, model: str | None, sigma2: float, seed: int,
              size: int) -> tuple[Any, float]:
    """A distance estimator (loaded once per process) and its loading seconds.

    Raises if a learned model takes images of another size than ``size``.
    """
    from cryoem import distance

    made, seconds = timed(lambda: distance.make_estimator(
        kind, model_dir=model if kind == "learned" else None, sigma2=sigma2, seed=seed))
    if getattr(made, "image_size", size) != size:
        raise ValueError(f"the model {model} takes {made.image_size}-pixel images, not {size}")
    return made, seconds


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or ``{}`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def best_distance_model(work_dir: Path, kind: str) -> Path | None:
    """The ``runs/{kind}-*`` model of distance_learning.py with the lowest ``best.json``
    validation loss under ``work_dir`` (``None`` if there is none)."""
    found = []
    for folder in sorted((Path(work_dir) / "runs").glob(f"{kind}-*")):
        if (folder / "model.keras").is_file():
            best = read_json(folder / "best.json").get("val_loss")
            found.append((math.inf if best is None else float(best), folder.name, folder))
    return min(found)[2] if found else None


def model_info(model: str, test_volume: str | None = None) -> dict[str, Any]:
    """Which distance model, trained on what and for how long (from its folder).

    ``supervision`` names how the training used ground truth: renders of the test
    protein's true map (``rendered`` mode with ``test_volume`` among the sources: an upper
    bound), renders of other proteins' maps, or labelled projections (``fixed``, the
    paper's protocol).  ``training_seconds`` comes from the pipeline run that trained the
    model (``timings_s.train`` of ``../pipeline.json``) or a ``training_seconds`` record in
    the folder; otherwise it is ``None`` and ``training_seconds_source`` says why.
    """
    from cryoem import datasets, siamese

    folder = siamese.model_directory(model)
    if not (folder / siamese.MODEL_FILE).is_file():
        raise FileNotFoundError(f"no trained model at {folder} ({siamese.MODEL_FILE} missing)")
    config = read_json(folder / siamese.CONFIG_FILE)
    contract = read_json(folder / "contract.json")
    sources = list(config.get("sources") or [])
    proteins = set(contract.get("proteins") or []) | {Path(s).stem for s in sources}
    for source in sources:
        with contextlib.suppress(OSError, ValueError, KeyError):
            proteins.add(str(datasets.load(source, images=False).attrs.get("volume_name")))
    mode = config.get("mode")
    if mode == "fixed":
        supervision = "labelled projections of the training split (the paper's protocol)"
    elif mode == "rendered" and test_volume is not None and test_volume in proteins:
        supervision = ("supervised on the true map: renders of the test protein's ground-truth "
                       "volume (an upper bound)")
    elif mode == "rendered":
        supervision = "renders of other proteins' true maps (the test protein unseen)"
    else:
        supervision = "unknown (no config.json)"
    seconds, source = None, "not recorded in the model's folder"
    record = read_json(folder.parent / "pipeline.json")
    if (record.get("timings_s") or {}).get("train") is not None:
        seconds, source = float(record["timings_s"]["train"]), f"{folder.parent}/pipeline.json"
    for name in ("best.json", siamese.CONFIG_FILE, "contract.json"):
        if seconds is None and read_json(folder / name).get("training_seconds") is not None:
            seconds, source = float(read_json(folder / name)["training_seconds"]), name
    digest = hashlib.sha256((folder / siamese.MODEL_FILE).read_bytes()).hexdigest()
    return {"dir": str(folder), "sha256": digest, "mode": mode, "sources": sources,
            "snr_range": config.get("snr_range"), "max_shift": config.get("max_shift"),
            "ctf": config.get("ctf"), "epochs_run": history_epochs(folder / "history.csv"),
            "training_budget_seconds": config.get("max_seconds"),
            "training_seconds": seconds, "training_seconds_source": source,
            "trained_at_commit": (config.get("provenance") or {}).get("git_commit"),
            "supervision": supervision}


def history_epochs(history: Path) -> int | None:
    """Epochs a Keras ``history.csv`` holds (``None`` when it cannot be read)."""
    try:
        return max(0, len(history.read_text().strip().splitlines()) - 1)
    except OSError:
        return None
