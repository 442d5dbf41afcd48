"""Where a result came from: the commit, the command and the machine that made it.

Every run record (``metrics.json``, ``pipeline.json``), trained model
(``config.json``) and benchmark JSON carries :func:`collect`'s dictionary, so
that a number can be traced to the code that produced it and rerun.

Example
-------
>>> from cryoem import provenance
>>> record = provenance.collect(command="cryoem pipeline")
>>> sorted(record)
['command', 'git_commit', 'git_dirty', 'machine', 'package_version']
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__

__all__ = ["collect", "git_state", "machine", "package_versions", "REPOSITORY", "CODE_PATHSPEC",
           "COMMIT_VARIABLE"]

#: The checkout this package was imported from, when it was (an editable install).
REPOSITORY = Path(__file__).resolve().parents[1]

#: What counts as code for the dirty flag: everything tracked except generated results
#: (benchmark JSON and tables, the README's generated block, figures), which a benchmark
#: rewrites while it runs.
CODE_PATHSPEC = (".", ":(exclude)benchmarks/results", ":(exclude)benchmarks/results.md",
                 ":(exclude)README.md", ":(exclude)images")


#: The environment variable that names the commit of a checkout copied without ``.git``.
COMMIT_VARIABLE = "CRYOEM_GIT_COMMIT"


def _git(*args: str, root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout at ``root`` (default: this package's), or ``(None, None)``.

    ``dirty`` is true when tracked code differs from the commit (generated results excluded,
    see :data:`CODE_PATHSPEC`). Outside a git checkout (an installed wheel) both are ``None``,
    unless :data:`COMMIT_VARIABLE` names the commit a copy of a checkout was made from (a
    machine that receives the files without ``.git``); its dirty flag is then unknown.
    """
    root = Path(root) if root is not None else REPOSITORY
    if not (root / ".git").exists():
        return os.environ.get(COMMIT_VARIABLE) or None, None
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHSPEC,
                  root=root)
    return commit, None if status is None else bool(status)


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """The processor, cores, memory and OS of this machine."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_model": _cpu_model(), "cpu_count": os.cpu_count()}
    try:
        info["available_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        info["available_cores"] = os.cpu_count()
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gb"] = None
    return info


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """The installed version of each package of ``names`` (those not installed are left out)."""
    import importlib.metadata as metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(command: str | Sequence[str] | None = None,
            root: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "package_version", "command", "machine"}`` for a record.

    ``command`` defaults to this process's command line.
    """
    if command is None:
        command = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
                   *sys.argv[1:]]
    if not isinstance(command, str):
        command = shlex.join(command)
    commit, dirty = git_state(root)
    return {"git_commit": commit, "git_dirty": dirty, "package_version": __version__,
            "command": command, "machine": machine()}
