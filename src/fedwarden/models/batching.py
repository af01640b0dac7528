"""The order in which a client visits its examples during local training.

Every trainer without differential privacy draws an epoch's order with
:func:`epoch_order` from the client's seeded generator, so the same seed means
the same order in every adapter. DP-SGD does not: its Poisson batches must
stay secret and come from :mod:`fedwarden.privacy.poisson`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt


def epoch_order(num_examples: int, rng: np.random.Generator) -> npt.NDArray[np.intp]:
    """A uniformly random permutation of ``range(num_examples)`` for one epoch."""
    return rng.permutation(num_examples)


def shuffled_batches(
    x: npt.NDArray[Any], y: npt.NDArray[Any], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """One epoch of ``(x, y)`` batches of ``batch_size`` in :func:`epoch_order`.

    The data are permuted once per epoch, so every batch is a contiguous view
    rather than a gather.
    """
    order = epoch_order(len(y), rng)
    x_shuffled, y_shuffled = x[order], y[order]
    for start in range(0, len(y), batch_size):
        yield x_shuffled[start : start + batch_size], y_shuffled[start : start + batch_size]
