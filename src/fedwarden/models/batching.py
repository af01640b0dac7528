"""Minibatch order for local training, shared by every trainer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt


def minibatches(
    num_examples: int, batch_size: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.intp]]:
    """Index arrays of one shuffled epoch, in batches of ``batch_size`` (the last may be short)."""
    order = rng.permutation(num_examples)
    for start in range(0, num_examples, batch_size):
        yield order[start : start + batch_size]


def shuffled_batches(
    x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """One shuffled epoch of ``(x, y)`` batches, in the order :func:`minibatches` gives.

    The data are permuted once per epoch, so every batch is a contiguous view
    rather than a gather.
    """
    order = rng.permutation(len(y))
    x_shuffled, y_shuffled = x[order], y[order]
    for start in range(0, len(y), batch_size):
        yield x_shuffled[start : start + batch_size], y_shuffled[start : start + batch_size]
