"""Row alignment for vertical federated learning: which rows of each party are the same entity.

Each party holds a table whose rows are entities named by ids. The parties
run the multi-party private set intersection of :mod:`fedwarden.secure.psi`
(through a coordinator that sees only blinded points), so each learns the ids
that every party holds and nothing about the others' remaining ids beyond how
many there are. Every party then orders the shared ids the same public way (by
their canonical bytes) and picks its rows in that order; row ``k`` of every
party's aligned table is then the same entity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import DataError
from fedwarden.secure.psi import Identifier, RelayCoordinator, identifier_bytes, intersect_parties

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignedRows:
    """The shared entities in their agreed order, and where each party holds them.

    ``rows[party][k]`` is the row of ``party``'s own table that holds entity
    ``identifiers[k]``.
    """

    identifiers: tuple[Identifier, ...]
    rows: Mapping[str, npt.NDArray[np.int64]]


def align_rows(
    party_identifiers: Mapping[str, Sequence[Identifier]],
    *,
    coordinator: RelayCoordinator | None = None,
    leader: str | None = None,
) -> AlignedRows:
    """Align the parties' tables on the entity ids they all hold, found by multi-party PSI.

    ``party_identifiers[party][row]`` is the id of that row of the party's
    table. An id that appears twice in one party's table is refused: the row
    it names would be ambiguous.
    """
    for party, identifiers in party_identifiers.items():
        _refuse_duplicates(party, identifiers)
    shared = intersect_parties(party_identifiers, coordinator=coordinator, leader=leader)
    rows: dict[str, npt.NDArray[np.int64]] = {}
    agreed: tuple[bytes, ...] | None = None
    for party, identifiers in party_identifiers.items():
        position = {identifier_bytes(item): row for row, item in enumerate(identifiers)}
        order = tuple(sorted(identifier_bytes(item) for item in shared[party]))
        if agreed is not None and order != agreed:
            raise DataError(
                f"party {party!r} learned a different intersection than the others; the PSI "
                "run was inconsistent: rerun the alignment"
            )
        agreed = order
        rows[party] = np.fromiter(
            (position[key] for key in order), dtype=np.int64, count=len(order)
        )
    first = next(iter(party_identifiers))
    first_rows = rows[first]
    identifiers = tuple(party_identifiers[first][row] for row in first_rows)
    logger.info("aligned %d parties on %d shared entities", len(rows), len(identifiers))
    return AlignedRows(identifiers=identifiers, rows=rows)


def _refuse_duplicates(party: str, identifiers: Sequence[Identifier]) -> None:
    """Raise DataError naming the first id that ``party`` holds in two rows."""
    seen: dict[bytes, int] = {}
    for row, identifier in enumerate(identifiers):
        key = identifier_bytes(identifier)
        if key in seen:
            raise DataError(
                f"party {party!r} holds entity id {identifier!r} in rows {seen[key]} and {row}; "
                "vertical learning needs one row per entity: merge or drop the duplicates first"
            )
        seen[key] = row
