"""Row alignment for vertical federated learning: which rows of each party are the same entity.

Each party holds a table whose rows are entities named by ids. The parties
run the multi-party private set intersection of :mod:`fedwarden.secure.psi`,
so each learns the ids that every party holds and nothing about the others'
remaining ids beyond how many there are. Every party then orders the shared
ids the same public way (by their canonical bytes, :func:`aligned_order`) and
picks its rows in that order; row ``k`` of every party's aligned table is then
the same entity.

Two ways to run it, with the same result:

* :func:`align_rows`: every party in one process, through a relay
  (:func:`~fedwarden.secure.psi.intersect_parties`);
* :func:`align_as_leader`: the leader (the label party) in this process, each
  other party an :class:`AlignmentPeer` anywhere: an :class:`AlignmentFollower`
  in its own process, reached over gRPC by
  :class:`~fedwarden.vertical.remote.client.RemoteFeatureParty`. The protocol is that
  of ``intersect_parties``: the leader is first the receiver of one
  intersection with each peer, then the sender, holding only the final
  intersection, of one more with each peer, which so learns it too. In each,
  the sender offers its blinded ids first (:meth:`~fedwarden.secure.psi.PsiSender.offer`).
  Only blinded points cross, plus each peer's receipt (its row count and the
  SHA-256 of its order, which the leader, knowing the intersection, checks).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import DataError
from fedwarden.secure.psi import (
    Identifier,
    PsiOffer,
    PsiReceiver,
    PsiRequest,
    PsiResponse,
    PsiSender,
    RelayCoordinator,
    identifier_bytes,
    intersect_parties,
)

logger = logging.getLogger(__name__)

PSI_REQUEST_FACTOR = 4
"""A follower answers a PSI request of at most this many times its own ids."""
MAX_ALIGNMENTS = 3
"""Alignments a follower runs per session (a restart of the party starts a new one)."""


@dataclass(frozen=True)
class AlignedRows:
    """The shared entities in their agreed order, and where each party holds them.

    ``rows[party][k]`` is the row of ``party``'s own table that holds entity
    ``identifiers[k]``.
    """

    identifiers: tuple[Identifier, ...]
    rows: Mapping[str, npt.NDArray[np.int64]]
    """Every party's rows from :func:`align_rows`; the leader's own from :func:`align_as_leader`."""


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
        rows[party], order = aligned_order(identifiers, shared[party])
        if agreed is not None and order != agreed:
            raise DataError(
                f"party {party!r} learned a different intersection than the others; the PSI "
                "run was inconsistent: rerun the alignment"
            )
        agreed = order
    first = next(iter(party_identifiers))
    first_rows = rows[first]
    identifiers = tuple(party_identifiers[first][row] for row in first_rows)
    logger.info("aligned %d parties on %d shared entities", len(rows), len(identifiers))
    return AlignedRows(identifiers=identifiers, rows=rows)


def aligned_order(
    identifiers: Sequence[Identifier], shared: Iterable[Identifier]
) -> tuple[npt.NDArray[np.int64], tuple[bytes, ...]]:
    """The rows of ``identifiers`` holding the ``shared`` ids in the agreed order, and that order.

    The agreed order is the shared ids' canonical bytes, sorted: public, and
    the same at every party.
    """
    position = {identifier_bytes(item): row for row, item in enumerate(identifiers)}
    order = tuple(sorted(identifier_bytes(item) for item in shared))
    rows = np.fromiter((position[key] for key in order), dtype=np.int64, count=len(order))
    return rows, order


def order_digest(order: Sequence[bytes]) -> bytes:
    """SHA-256 of an agreed order (each id's bytes length-prefixed): equal iff the orders are."""
    digest = hashlib.sha256()
    for key in order:
        digest.update(struct.pack(">I", len(key)) + key)
    return digest.digest()


class AlignmentPeer(Protocol):
    """A non-leader party's side of :func:`align_as_leader`, in this process or over the wire."""

    @property
    def name(self) -> str:
        """The party's name."""

    def offer(self) -> PsiOffer:
        """Phase 1: this party's blinded ids, offered as the PSI sender, before any request."""

    def answer_intersection(self, request: PsiRequest) -> PsiResponse:
        """Phase 1: answer the leader's request as the PSI sender that made the offer."""

    def final_request(self, offer: PsiOffer) -> PsiRequest:
        """Phase 2: accept the leader's offer over the final intersection; this party's request."""

    def finish_final(self, response: PsiResponse) -> tuple[int, bytes]:
        """Phase 2: learn the final intersection; its size and :func:`order_digest`."""


class AlignmentFollower:
    """A non-leader party's half of the alignment: it holds the ids and learns its aligned rows.

    The leader (the label party) learns which ids of its PSI request this party
    holds; a request of every id it can guess would enumerate this party's id
    space. So a request may hold at most ``request_factor`` times this party's
    ids, and a session at most ``max_alignments`` alignments: whatever the
    leader does, it probes at most their product times this party's ids.
    """

    def __init__(
        self,
        name: str,
        identifiers: Sequence[Identifier],
        *,
        request_factor: int = PSI_REQUEST_FACTOR,
        max_alignments: int = MAX_ALIGNMENTS,
    ) -> None:
        _refuse_duplicates(name, identifiers)
        self.name = name
        self._identifiers = list(identifiers)
        self.request_factor = request_factor
        self.max_request = request_factor * len(self._identifiers)
        """The most ids a leader's PSI request may hold."""
        self.max_alignments = max_alignments
        self.alignments = 0
        """Alignments begun this session."""
        self._sender: PsiSender | None = None
        self._receiver: PsiReceiver | None = None
        self.rows: npt.NDArray[np.int64] | None = None
        """This party's rows in the agreed order, once :meth:`finish_final` has run."""

    def offer(self) -> PsiOffer:
        """Phase 1: a fresh PSI sender's offer over this party's ids (one alignment more)."""
        if self.alignments >= self.max_alignments:
            raise DataError(
                f"party {self.name!r} has run its {self.max_alignments} alignments for this "
                "session; each lets the leader probe its ids, so more are refused: restart the "
                "party to align again"
            )
        self.alignments += 1
        self._sender = PsiSender(self._identifiers, "intersection")
        return self._sender.offer()

    def answer_intersection(self, request: PsiRequest) -> PsiResponse:
        """Phase 1: the answer of the PSI sender that offered (the leader learns the overlap)."""
        if self._sender is None:
            raise DataError(
                f"party {self.name!r} got the leader's PSI request before it offered its ids; "
                "the leader must call offer() first"
            )
        sender, self._sender = self._sender, None
        if len(request.points) > self.max_request:
            raise DataError(
                f"party {self.name!r} refuses a PSI request of {len(request.points)} ids, more "
                f"than {self.max_request} ({self.request_factor} times its own): so large a "
                "request would enumerate its id space"
            )
        return sender.respond(request)

    def final_request(self, offer: PsiOffer) -> PsiRequest:
        """Phase 2: a fresh PSI receiver's request over this party's ids; it accepts the offer."""
        self._receiver = None
        receiver = PsiReceiver(self._identifiers, "intersection")
        request = receiver.request()
        receiver.accept(offer)
        self._receiver = receiver
        return request

    def finish_final(self, response: PsiResponse) -> tuple[int, bytes]:
        """Phase 2: the final intersection, as this party's aligned rows; their count and digest."""
        if self._receiver is None:
            raise DataError(
                f"party {self.name!r} got the final PSI answer before sending its request; the "
                "leader must call final_request(offer) first"
            )
        receiver, self._receiver = self._receiver, None
        outcome = receiver.finish(response)
        assert outcome.intersection is not None
        self.rows, order = aligned_order(self._identifiers, outcome.intersection)
        logger.info("party %s aligned on %d shared entities", self.name, len(order))
        return len(order), order_digest(order)


def align_as_leader(
    leader: str, identifiers: Sequence[Identifier], peers: Sequence[AlignmentPeer]
) -> AlignedRows:
    """Align the leader's table with each peer's by two-phase PSI; the leader's rows.

    The protocol of :func:`~fedwarden.secure.psi.intersect_parties` with the
    leader in this process: each peer ends with the same ordered intersection,
    which the leader checks against each peer's receipt.
    """
    _refuse_duplicates(leader, identifiers)
    final = frozenset(identifiers)
    for peer in peers:
        offer = peer.offer()
        receiver = PsiReceiver(identifiers, "intersection")
        request = receiver.request()
        receiver.accept(offer)
        outcome = receiver.finish(peer.answer_intersection(request))
        assert outcome.intersection is not None
        final &= outcome.intersection
    rows, order = aligned_order(identifiers, final)
    shared = [identifiers[row] for row in rows]
    expected = (len(order), order_digest(order))
    for peer in peers:
        sender = PsiSender(shared, "intersection")
        request = peer.final_request(sender.offer())
        receipt = peer.finish_final(sender.respond(request))
        if receipt != expected:
            raise DataError(
                f"party {peer.name!r} aligned {receipt[0]} entities in another order than the "
                f"leader's {len(order)}; the PSI run was inconsistent: rerun the alignment"
            )
    logger.info("aligned %d parties on %d shared entities", len(peers) + 1, len(shared))
    return AlignedRows(identifiers=tuple(shared), rows={leader: rows})


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
