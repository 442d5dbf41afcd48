"""One progress bar for every long loop (tqdm, silent when disabled)."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress_bar(items: Iterable[T], total: int | None = None, enable: bool = True,
                 desc: str = "") -> Iterator[T]:
    """Iterate over ``items``, showing a tqdm bar on stderr when ``enable``."""
    if not enable:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="batch", leave=False)
