"""Particle stacks read lazily, a chunk at a time (streaming input for every stage).

An :class:`ImageStack` stands for the images ``(N, L, L)`` of a ``cryoem``
HDF5 dataset or of an MRC stack (``.mrcs``, through mrcfile's memory mapping)
without reading them: indexing reads only the rows asked for, and the object
is a file name plus a row selection, so it travels to Dask workers for the
price of a few bytes and each worker reads its own chunk.  The stages that
loop over images in chunks (:func:`cryoem.reconstruction.reconstruct`,
:func:`cryoem.refinement.refine`) accept one wherever they accept an array, so
their memory is bounded by the chunk, not by ``N``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ImageStack", "chunks", "take", "as_images"]


class ImageStack:
    """Images of a file, read on demand.

    Parameters
    ----------
    path
        A ``cryoem`` dataset (``.h5``, its ``projections``) or an MRC stack.
    rows
        The stack's rows this view holds, in order (default: all).
    """

    def __init__(self, path: str | os.PathLike, rows: ArrayLike | None = None) -> None:
        self.path = Path(path)
        self._mrc = self.path.suffix.lower() in (".mrcs", ".mrc")
        total, size = self._shape_on_disk()
        self.size = size
        self.rows = np.arange(total) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1 or (len(self.rows) and (self.rows.min() < 0
                                                        or self.rows.max() >= total)):
            raise ValueError(f"{self.path}: rows must index its {total} images")

    def _shape_on_disk(self) -> tuple[int, int]:
        if not self.path.is_file():
            raise FileNotFoundError(f"no image stack at {self.path}")
        if self._mrc:
            import mrcfile

            with mrcfile.mmap(self.path, mode="r", permissive=True) as mrc:
                shape = mrc.data.shape
        else:
            from . import datasets

            with datasets._open(self.path) as f:
                shape = f["projections"].shape
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"{self.path}: expected square images (N, L, L), got {shape}")
        return int(shape[0]), int(shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rows), self.size, self.size)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ImageStack({str(self.path)!r}, {len(self)} images of {self.size}²)"

    def __getitem__(self, key: Any) -> "NDArray[np.float32] | ImageStack":
        """``stack[a:b]`` is a lazy view; an integer or an index array reads the images."""
        if isinstance(key, slice):
            return self._view(self.rows[key])
        selected = self.rows[key]
        if np.ndim(selected) == 0:
            return self._read(np.asarray([selected]))[0]
        return self._read(np.asarray(selected))

    def _view(self, rows: NDArray[np.int64]) -> "ImageStack":
        view = object.__new__(ImageStack)
        view.path, view._mrc, view.size, view.rows = self.path, self._mrc, self.size, rows
        return view

    def read(self) -> NDArray[np.float32]:
        """All the images of this view, in memory."""
        return self._read(self.rows)

    def __array__(self, dtype: Any = None, copy: Any = None) -> NDArray:
        images = self.read()
        return images if dtype is None else images.astype(dtype, copy=False)

    def _read(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Rows in any order: read sorted and unique (what HDF5 needs), then put in order."""
        if len(rows) == 0:
            return np.zeros((0, self.size, self.size), np.float32)
        unique, inverse = np.unique(rows, return_inverse=True)
        span = int(unique[-1] - unique[0]) + 1
        # A span at most 4× the rows asked for (e.g. one half's interleaved images) is read
        # whole and picked in memory: one hyperslab instead of one per row.
        dense = span <= 4 * len(unique)
        selection = slice(int(unique[0]), int(unique[-1]) + 1) if dense else unique
        if self._mrc:
            import mrcfile

            with mrcfile.mmap(self.path, mode="r", permissive=True) as mrc:
                data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
                block = np.array(data[selection], dtype=np.float32)
        else:
            from . import datasets

            with datasets._open(self.path) as f:
                block = np.asarray(f["projections"][selection], dtype=np.float32)
        if dense:
            block = block[unique - unique[0]]
        return block[inverse]


def chunks(images: "NDArray | ImageStack", size: int) -> Iterator[tuple[int, int, Any]]:
    """``(start, stop, images[start:stop])`` for consecutive chunks of ``size`` images: lazy
    views of a stack, NumPy views of an array (nothing is read or copied here)."""
    n = len(images)
    for start in range(0, n, size):
        stop = min(start + size, n)
        yield start, stop, images[start:stop]


def take(images: "NDArray | ImageStack", indices: ArrayLike) -> "NDArray | ImageStack":
    """``images[indices]``: a lazy view of a stack (nothing read), a copy of an array."""
    if isinstance(images, ImageStack):
        return images._view(images.rows[np.asarray(indices, dtype=np.int64)])
    return np.asarray(images)[np.asarray(indices)]


def as_images(images: "ArrayLike | ImageStack") -> "NDArray | ImageStack":
    """A stack as it is (lazy), anything else as a NumPy array (not copied when it is one)."""
    return images if isinstance(images, ImageStack) else np.asarray(images)
