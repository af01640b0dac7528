"""Partitions: how a centralized data set's examples are dealt out to simulated clients.

Every scheme returns one ascending array of example indices per client, in
client order. Together the arrays are a disjoint cover: each example belongs
to exactly one client. Every draw comes from the ``np.random.Generator``
passed in, so a partition is a pure function of its arguments and the
generator's state.

The schemes are the ones federated-learning papers simulate heterogeneity
with: IID (the control), label skew by a Dirichlet prior (Hsu et al. 2019),
label skew by sorted shards (McMahan et al. 2017) and quantity skew by a
power law.
"""

from __future__ import annotations

import logging
from typing import assert_never

import numpy as np
import numpy.typing as npt

from fedwarden.core.config import PartitionConfig
from fedwarden.core.errors import DataError
from fedwarden.data.dataset import Array

IndexArray = npt.NDArray[np.intp]
"""Example indices of one client, ascending."""

MAX_DIRICHLET_DRAWS = 10_000
"""Redraws :func:`dirichlet` makes before it gives up on ``min_size``."""

logger = logging.getLogger(__name__)


def iid(num_examples: int, num_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    """Shuffle the examples and deal them into ``num_clients`` parts whose sizes differ by <= 1."""
    _check_client_count(num_examples, num_clients, "iid")
    order = rng.permutation(num_examples)
    return _deal(order, np.arange(num_clients), _even_sizes(num_examples, num_clients), num_clients)


def dirichlet(
    labels: Array, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[IndexArray]:
    """Label skew: split each class across clients in proportions drawn from Dir(alpha).

    Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", in the per-class form
    of Yurochkin et al. 2019 and Wang et al. 2020 (FedMA): for every class
    ``c``, draw ``p_c ~ Dir(alpha * 1_K)`` over the ``K`` clients and give
    client ``k`` a ``p_ck`` share of that class's (shuffled) examples. Small
    ``alpha`` concentrates each class on few clients; large ``alpha``
    approaches IID.

    The whole draw is repeated until every client holds at least
    ``min_size`` examples, at most :data:`MAX_DIRICHLET_DRAWS` times.
    """
    class_of_example = _class_codes(labels, "dirichlet")
    _check_client_count(len(class_of_example), num_clients, "dirichlet")
    _check_positive(alpha, "alpha", "dirichlet")
    _check_min_size(len(class_of_example), num_clients, min_size, "dirichlet")
    class_sizes = np.bincount(class_of_example)
    for draw in range(1, MAX_DIRICHLET_DRAWS + 1):
        proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(class_sizes))
        boundaries = np.floor(np.cumsum(proportions, axis=1) * class_sizes[:, None])
        boundaries[:, -1] = class_sizes
        counts = np.diff(boundaries, axis=1, prepend=0).astype(np.intp)
        if counts.sum(axis=0).min() >= min_size:
            logger.debug("dirichlet partition met min_size=%d on draw %d", min_size, draw)
            order = shuffled_by_class(class_of_example, rng)
            owners = np.tile(np.arange(num_clients), len(class_sizes))
            return _deal(order, owners, counts.ravel(), num_clients)
    raise DataError(
        f"dirichlet partition: no draw in {MAX_DIRICHLET_DRAWS} with alpha={alpha} gave all "
        f"{num_clients} clients at least {min_size} examples; lower partition.min_client_size "
        "or raise partition.alpha (less label skew)"
    )


def shards(
    labels: Array, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[IndexArray]:
    """Label skew by shards: sort by label, cut into equal shards, deal each client a few.

    McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
    from Decentralized Data", section 3 (pathological non-IID MNIST): the
    examples sorted by label are cut into ``num_clients * shards_per_client``
    shards of (nearly) equal size, and each client gets ``shards_per_client``
    shards chosen at random. Ties within a label are broken at random.
    """
    class_of_example = _class_codes(labels, "shards")
    _check_client_count(len(class_of_example), num_clients, "shards")
    if shards_per_client < 1:
        raise DataError(
            f"shards partition: shards_per_client is {shards_per_client}; give each client "
            "at least 1 shard"
        )
    num_shards = num_clients * shards_per_client
    if num_shards > len(class_of_example):
        raise DataError(
            f"shards partition: {num_clients} clients x {shards_per_client} shards need "
            f"{num_shards} shards, but there are only {len(class_of_example)} examples; lower "
            "partition.shards_per_client or num_clients"
        )
    order = shuffled_by_class(class_of_example, rng)
    owner_of_shard = np.empty(num_shards, dtype=np.intp)
    owner_of_shard[rng.permutation(num_shards)] = np.repeat(
        np.arange(num_clients), shards_per_client
    )
    return _deal(order, owner_of_shard, _even_sizes(len(order), num_shards), num_clients)


def power_law(
    num_examples: int, num_clients: int, exponent: float, rng: np.random.Generator, min_size: int
) -> list[IndexArray]:
    """Quantity skew: client sizes follow Pareto(exponent) draws; labels stay IID.

    Each client first gets ``min_size`` examples; the rest are shared out in
    proportion to one Pareto draw per client (shape ``exponent``, scale 1;
    small exponents give heavier tails), rounded by the largest-remainder
    method. The examples themselves are dealt at random, so every client's
    label distribution is the population's.
    """
    _check_client_count(num_examples, num_clients, "power_law")
    _check_positive(exponent, "exponent", "power_law")
    _check_min_size(num_examples, num_clients, min_size, "power_law")
    weights = rng.pareto(exponent, num_clients) + 1.0
    spare = num_examples - num_clients * min_size
    shares = spare * weights / weights.sum()
    extra = np.floor(shares).astype(np.intp)
    by_remainder = np.argsort(-(shares - extra), kind="stable")
    extra[by_remainder[: spare - extra.sum()]] += 1
    order = rng.permutation(num_examples)
    return _deal(order, np.arange(num_clients), min_size + extra, num_clients)


def partition(
    labels: Array, config: PartitionConfig, num_clients: int, rng: np.random.Generator
) -> list[IndexArray]:
    """Split examples with the labels ``labels`` by the scheme ``config.scheme`` names."""
    match config.scheme:
        case "iid":
            return iid(len(labels), num_clients, rng)
        case "dirichlet":
            return dirichlet(labels, num_clients, config.alpha, rng, config.min_client_size)
        case "shards":
            return shards(labels, num_clients, config.shards_per_client, rng)
        case "power_law":
            return power_law(
                len(labels), num_clients, config.power_law_exponent, rng, config.min_client_size
            )
        case _:
            assert_never(config.scheme)


def shuffled_by_class(class_of_example: IndexArray, rng: np.random.Generator) -> IndexArray:
    """Example indices sorted by class, in random order within each class."""
    order = rng.permutation(len(class_of_example))
    return order[np.argsort(class_of_example[order], kind="stable")]


def _check_client_count(num_examples: int, num_clients: int, scheme: str) -> None:
    """Refuse a client count that is not positive or exceeds the number of examples."""
    if num_clients < 1:
        raise DataError(f"{scheme} partition: num_clients is {num_clients}; it must be at least 1")
    if num_clients > num_examples:
        raise DataError(
            f"{scheme} partition: {num_clients} clients but only {num_examples} examples; "
            "every client needs at least one example, so lower num_clients"
        )


def _check_positive(value: float, name: str, scheme: str) -> None:
    """Refuse a shape parameter that is not strictly positive."""
    if not value > 0:
        raise DataError(f"{scheme} partition: {name} is {value}; it must be greater than 0")


def _check_min_size(num_examples: int, num_clients: int, min_size: int, scheme: str) -> None:
    """Refuse a negative ``min_size`` or one that the examples cannot cover for every client."""
    if min_size < 0:
        raise DataError(f"{scheme} partition: min_size is {min_size}; it must be at least 0")
    if num_clients * min_size > num_examples:
        raise DataError(
            f"{scheme} partition: {num_clients} clients of at least {min_size} examples need "
            f"{num_clients * min_size}, but there are only {num_examples}; lower "
            "partition.min_client_size or num_clients"
        )


def _class_codes(labels: Array, scheme: str) -> IndexArray:
    """Each example's class as a code in ``0 .. num_present_classes - 1``."""
    if labels.ndim != 1 or labels.dtype.kind not in "biu":
        raise DataError(
            f"{scheme} partition: labels must be a 1-D array of integer classes, got shape "
            f"{labels.shape} and dtype {labels.dtype}; use scheme 'iid' or 'power_law' for "
            "regression targets"
        )
    codes: IndexArray = np.unique(labels, return_inverse=True)[1].astype(np.intp)
    return codes


def _even_sizes(total: int, parts: int) -> IndexArray:
    """``parts`` sizes summing to ``total`` that differ by at most one (larger ones first)."""
    sizes = np.full(parts, total // parts, dtype=np.intp)
    sizes[: total % parts] += 1
    return sizes


def _deal(
    order: IndexArray, owners: IndexArray, counts: IndexArray, num_clients: int
) -> list[IndexArray]:
    """Give the examples listed in ``order`` to ``owners`` in consecutive runs of ``counts``.

    ``order[p]`` is the example at position ``p``; positions are handed out
    in runs: the first ``counts[0]`` to ``owners[0]``, the next ``counts[1]``
    to ``owners[1]``, and so on.
    """
    client_of_example = np.empty(len(order), dtype=np.intp)
    client_of_example[order] = np.repeat(owners, counts)
    by_client = np.argsort(client_of_example, kind="stable")
    boundaries = np.cumsum(np.bincount(client_of_example, minlength=num_clients))[:-1]
    return np.split(by_client, boundaries)
