"""Our files: written atomically (a crash never leaves a half-written file under the final
name) and opened with a check of their format."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The folder is created if needed; on any exception the temporary file is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial")
    try:
        yield partial
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def open_hdf5(path: str | os.PathLike, file_format: str, noun: str) -> Any:
    """An HDF5 file of ``file_format`` (its ``format`` attribute) opened for reading.

    Raises
    ------
    FileNotFoundError
        ``no {noun} file at PATH``.
    ValueError
        When the file is not HDF5, or not of ``file_format``, naming it.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {noun} file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 {noun} file ({error})") from error
    if f.attrs.get("format") != file_format:
        f.close()
        raise ValueError(f"{path} is not a cryoem {noun} file (format attribute missing or "
                         "unknown)")
    return f
