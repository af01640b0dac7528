"""SecAgg+ parameters: the ring, ``k`` and ``t`` a server proposes, and the policy a client holds.

Why ``t`` must be more than half of a client's share holders
-------------------------------------------------------------

Client ``u`` deals Shamir shares of its self-mask seed ``b_u`` and of its
masking key ``s_sk_u`` to its ``k + 1`` share holders (its ``k`` neighbours and
itself); ``t`` shares of either rebuild it, and with both the server removes
every mask from ``u``'s input. An honest holder reveals ``b_u``'s share only if
``u`` is on the survivor list and ``s_sk_u``'s only if it is not, and only
after it has verified ``t`` signatures of that one list from ``u``'s share
holders (Bonawitz et al. 2017, round 3 of the malicious-server protocol). A
server that shows half of ``u``'s holders "``u`` survived" and the other half
"``u`` dropped" needs ``t`` signatures on each list. Honest clients sign one
list; ``c`` corrupted clients may sign both. Two sets of ``t`` signers among
``k + 1`` holders overlap in at least ``2t - (k + 1)`` clients, so the attack
needs ``2t - (k + 1) <= c``. Hence the rule (:func:`secure_threshold`)::

    t > (k + 1 + c) / 2,   the smallest such t being  floor((k + 1 + c) / 2) + 1

which also gives ``t > c``: the corrupted holders' own shares are never
enough. ``c`` counts corrupted clients anywhere in the cohort; the rule
assumes the worst case, all of them among one client's holders, so it does
not rely on the neighbour graph being random.

Default parameters for a cohort of ``n`` (:meth:`SecAggParameters.resolved`)
---------------------------------------------------------------------------

* ``c = floor(n / 10)`` corrupted clients tolerated (set ``corrupted_clients``);
* ``t = floor((k + 1 + c) / 2) + 1``, the smallest secure threshold (the most
  dropouts tolerated);
* ``k``: the smallest ``k`` (``k * n`` even) for which a cohort losing
  :data:`DESIGN_DROPOUT` = 30% of its clients, each independently, aborts a
  round with probability at most :data:`DESIGN_ABORT_PROBABILITY` = 2^-10, by
  the union bound over the cohort: ``n * P[Binomial(k, 0.7) < t] <= 2^-10``.
  When no ``k < n`` meets it, ``k = n - 1`` (classic SecAgg) and the bound is
  not met: small cohorts cannot have both an honest-majority threshold and
  2^-10 aborts at 30% dropout.

Worked values (exact integer arithmetic, ``tests/test_secagg.py``
recomputes them with SciPy): ``n = 5``: ``c = 0, k = 4, t = 3``; ``n = 20``:
``c = 2, k = 19, t = 12``; ``n = 100``: ``c = 10, k = 99, t = 56``;
``n = 1000``: ``c = 100, k = 504, t = 303``. Before the malicious-server rule
the defaults were ``n = 20: k = 19, t = 5`` and ``n = 100: k = 42, t = 16``,
and equivocation on the survivor list recovered a client's input.

A client never takes these numbers from the server: its
:class:`~fedwarden.secure.secagg.policy.SecAggPolicy` is what its own kit or
local settings allow, and a round below it is refused before the client
reveals anything.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from fedwarden.core.errors import ConfigError
from fedwarden.secure.prg import MAX_MODULUS_BITS
from fedwarden.secure.secagg.messages import digest

__all__ = [
    "DESIGN_ABORT_PROBABILITY",
    "DESIGN_DROPOUT",
    "MAX_COHORT",
    "SecAggParameters",
    "neighbour_graph",
    "secure_threshold",
]

DESIGN_DROPOUT = Fraction(3, 10)
"""Fraction of a cohort that default parameters are sized to lose without aborting."""

DESIGN_ABORT_PROBABILITY = Fraction(1, 1024)
"""Bound on the abort probability at :data:`DESIGN_DROPOUT` that default ``k`` meets."""

DEFAULT_CORRUPTED_FRACTION = Fraction(1, 10)
"""Fraction of the cohort (rounded down) that default parameters tolerate as corrupted."""

MAX_COHORT = 65535
"""The largest cohort a round may have (Shamir x-coordinates are 16-bit)."""
_GRAPH = b"fedwarden/secagg/v2/neighbour-graph"


def secure_threshold(num_neighbours: int, corrupted_clients: int) -> int:
    """The smallest ``t`` with ``t > (k + 1 + c) / 2``: no two disjoint lists get ``t`` signers."""
    return (num_neighbours + 1 + corrupted_clients) // 2 + 1


@dataclass(frozen=True)
class SecAggParameters:
    """Ring size, neighbour count ``k``, threshold ``t`` and tolerated corrupted clients ``c``.

    ``None`` means the default for the cohort size ``n`` (module docstring).
    An explicit ``threshold`` below :func:`secure_threshold` is refused.
    """

    modulus_bits: int = 32
    num_neighbours: int | None = None
    threshold: int | None = None
    corrupted_clients: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.modulus_bits) or not 1 <= self.modulus_bits <= MAX_MODULUS_BITS:
            raise ConfigError(
                f"secure aggregation: modulus_bits must be an int in 1..{MAX_MODULUS_BITS}, "
                f"got {self.modulus_bits!r}."
            )
        for name, least in (("num_neighbours", 1), ("threshold", 2), ("corrupted_clients", 0)):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < least):
                raise ConfigError(
                    f"secure aggregation: {name} must be an int of at least {least} or None (the "
                    f"default for the cohort size), got {value!r}."
                )

    def resolved(self, cohort_size: int) -> SecAggParameters:
        """These parameters with ``c``, ``k`` and ``t`` filled in and checked for ``n`` clients."""
        n = cohort_size
        if not _is_int(n) or not 2 <= n <= MAX_COHORT:
            raise ConfigError(
                f"secure aggregation needs a cohort of 2..{MAX_COHORT} clients, got {n!r}."
            )
        c = (
            self.corrupted_clients
            if self.corrupted_clients is not None
            else math.floor(n * DEFAULT_CORRUPTED_FRACTION)
        )
        k = self.num_neighbours if self.num_neighbours is not None else _default_neighbours(n, c)
        if k > n - 1:
            raise ConfigError(
                f"secure aggregation: num_neighbours={k} exceeds n - 1 = {n - 1} for a cohort of "
                f"{n}; use at most {n - 1} (classic SecAgg)."
            )
        if k % 2 == 1 and n % 2 == 1:
            raise ConfigError(
                f"secure aggregation: no graph on {n} clients gives each exactly {k} neighbours "
                f"(k * n = {k * n} is odd); use an even num_neighbours such as {k - 1} or {k + 1}."
            )
        least = secure_threshold(k, c)
        t = self.threshold if self.threshold is not None else least
        if not least <= t <= k + 1:
            raise ConfigError(
                f"secure aggregation: threshold={t} must satisfy (k + 1 + c) / 2 < t <= k + 1, "
                f"that is {least} <= t <= {k + 1} for num_neighbours={k} and "
                f"corrupted_clients={c} (a cohort of {n}); a lower t lets a lying server collect "
                "both secrets of one client. Raise threshold or num_neighbours, or lower "
                "corrupted_clients."
            )
        return SecAggParameters(self.modulus_bits, k, t, c)


@functools.lru_cache(maxsize=256)
def _default_neighbours(cohort_size: int, corrupted_clients: int) -> int:
    """The smallest valid ``k`` whose secure ``t`` meets the design abort bound, else ``n - 1``.

    Exact integer arithmetic: ``n * P[Binomial(k, q) < t] <= 2^-10`` with ``q = 0.7``,
    written as ``n * tail * D <= m^k * N`` for ``q = a / m`` and the bound ``N / D``.
    """
    n, c = cohort_size, corrupted_clients
    stay = 1 - DESIGN_DROPOUT
    a, m = stay.numerator, stay.denominator
    bound = DESIGN_ABORT_PROBABILITY
    for k in range(1, n - 1):
        t = secure_threshold(k, c)
        if (k * n) % 2 or t > k + 1:
            continue
        tail = sum(math.comb(k, i) * a**i * (m - a) ** (k - i) for i in range(t))
        if n * tail * bound.denominator <= m**k * bound.numerator:
            return k
    return n - 1


def neighbour_graph(
    members: Sequence[str], num_neighbours: int, seed: bytes
) -> dict[str, frozenset[str]]:
    """The symmetric SecAgg+ neighbour graph of ``members``, at most ``k`` neighbours each.

    Bell et al. (CCS 2020), Section 3: a random ``k``-regular graph. Here it is
    a circulant (Harary-like) graph over a permutation of the members that
    anyone can recompute from the public ``seed`` (the hash of every key
    advertisement, :func:`~fedwarden.secure.secagg.messages.graph_seed`):
    members are ordered by ``SHA-256(label, seed, id)``, and position ``i``
    links to ``i +- 1 .. i +- floor(k / 2)`` and, for odd ``k`` and an even
    number ``m`` of members, ``i + m / 2``. With ``k >= m - 1`` it is complete.
    """
    order = sorted(members, key=lambda client: (digest(_GRAPH, seed, client), client))
    m = len(order)
    k = min(num_neighbours, m - 1)
    offsets = list(range(1, k // 2 + 1))
    if k % 2 == 1 and m % 2 == 0:
        offsets.append(m // 2)
    graph: dict[str, set[str]] = {client: set() for client in order}
    for position, client in enumerate(order):
        for offset in offsets:
            peer = order[(position + offset) % m]
            graph[client].add(peer)
            graph[peer].add(client)
    return {client: frozenset(peers) for client, peers in graph.items()}


def _is_int(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
