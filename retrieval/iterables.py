"""Small helpers over iterables: chunks for batched work, first-seen de-duplication."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def dedupe(items: Iterable[T]) -> list[T]:
    """The items in first-seen order, each once."""
    return list(dict.fromkeys(items))
