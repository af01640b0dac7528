"""Private set intersection: Diffie-Hellman PSI over the prime-order group of Curve25519.

The classic protocol of Meadows (1986) and Huberman, Franklin & Hogg (1999):
both parties hash their identifiers into a group where the decisional
Diffie-Hellman problem is hard, raise the hashes to a secret exponent, swap,
raise what they received to their own exponent, and compare. Because
``(H(x)^a)^b = (H(x)^b)^a``, equal identifiers meet at the same double-blinded
value; under DDH in the random-oracle model nothing else is learned.

One round trip between two parties, :class:`PsiReceiver` and :class:`PsiSender`:

1. the receiver sends :class:`PsiRequest`: ``H(y)^b`` for each of its ids ``y``;
2. the sender answers :class:`PsiResponse`: the receiver's points raised to its
   own secret, ``H(y)^{ab}``, and its own ids blinded once, ``H(x)^a``, shuffled;
3. the receiver raises the sender's points to ``b`` and compares.

Two modes, fixed when both parties are built:

* ``"intersection"``: ``H(y)^{ab}`` come back in the receiver's order, so the
  receiver learns which of its ids are shared (and the sender's set size);
* ``"cardinality"`` (PSI-CA, De Cristofaro, Gasti & Tsudik, CANS 2012): the
  sender shuffles ``H(y)^{ab}`` as well, so the receiver can only count the
  matches; it cannot tell which of its ids they belong to.

The sender learns only the receiver's set size. Security is against
semi-honest parties: a party that deviates from the protocol (say, sends the
same point twice) can learn more, as in every DH-PSI.

The group, and why not ristretto255
-----------------------------------
The issue asked for ristretto255 (``crypto_core_ristretto255_from_hash`` and
``crypto_scalarmult_ristretto255``). The PyNaCl we depend on (1.6) builds
libsodium without ristretto255 and exposes neither function, and its
``crypto_scalarmult_ed25519_noclamp`` costs three times an X25519 on the same
machine (about 110 us against 40 us). So the group is the same one, the
prime-order subgroup (order ``L = 2^252 + ...``) of Curve25519 that ristretto255
encodes, reached through functions PyNaCl does expose:

* **Hash to the group** (:func:`hash_to_group`): ``SHA-512`` of a
  domain-separated identifier; each 32-byte half is mapped by Elligator 2 with
  the cofactor cleared (``crypto_core_ed25519_from_uniform``) and the two points
  are added, the construction of RFC 9380's random-oracle ``hash_to_curve`` and
  of ristretto255's own ``from_hash``. The point is then written as its
  Montgomery ``u``-coordinate, ``u = (1 + y) / (1 - y)`` (RFC 7748 section 4.1),
  with one field inversion for the whole batch (Montgomery's trick).
* **Blinding**: X25519 (``crypto_scalarmult``, RFC 7748) with a secret of 32
  bytes from :mod:`secrets`. X25519 clamps it to ``8 k`` with bit 254 set, so
  the effective exponent is a multiple of the cofactor: it keeps points in the
  prime-order subgroup and is uniform enough there (about ``2^251`` values).
  Exponentiation commutes, so ``X25519(a, X25519(b, P)) = X25519(b, X25519(a, P))``.

A ``u``-coordinate names a point up to sign (``P`` and ``-P``), which changes
nothing here: two different ids collide only if ``H(x) = +-H(y)``, a chance of
about ``2^-251``. Every received point must be a canonical 32-byte
``u < 2^255 - 19``; one that gives the identity when blinded (a low-order
point) is refused.

Speed. Each party hashes its own ids once (two Elligator maps and a point
addition, about half the work) and performs one X25519 per id of each set; the
libsodium calls release the GIL, so a party spreads them over ``workers``
threads. ``benchmarks/psi.py`` with 100,000 ids per side measured about 39 CPU
seconds in all on a shared 2-core AMD EPYC virtual machine (some 20 s of wall
time when both cores are free), so the issue's target of 10 s on 2 cores is
not met there; OpenMined's ``openmined-psi`` (ECDH over P-256 in C++) took
about 47 CPU seconds on the same ids. This module stays the default: it is the
faster of the two, it needs only PyNaCl, and ``openmined-psi`` 2.0.6 pins
``protobuf==6.30.2``, which conflicts with the protobuf our gRPC runtime needs.

Many parties
------------
:func:`intersect_parties` intersects ``k`` parties' sets pairwise through a
:class:`RelayCoordinator` that sees only blinded points: a leader runs the
intersection protocol as receiver with each other party (and so learns its
intersection with each of them, a known leak of pairwise PSI), intersects the
results, then runs it again as *sender* holding only the final intersection
with each other party as receiver, so that every party learns the final
intersection and nothing about the others' sets beyond their sizes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

from nacl import bindings, exceptions

from fedwarden.core.errors import FedwardenError

__all__ = [
    "POINT_BYTES",
    "Identifier",
    "PsiError",
    "PsiMode",
    "PsiOutcome",
    "PsiReceiver",
    "PsiRequest",
    "PsiResponse",
    "PsiSender",
    "RelayCoordinator",
    "RelayedMessage",
    "hash_to_group",
    "identifier_bytes",
    "intersect_parties",
]

logger = logging.getLogger(__name__)

Identifier = str | int | bytes
"""An entity id: a str, an int or raw bytes; see :func:`identifier_bytes`."""

PsiMode = Literal["intersection", "cardinality"]

POINT_BYTES = 32
"""Length of every group element on the wire: a Curve25519 ``u``-coordinate."""

_Item = TypeVar("_Item")
_Message = TypeVar("_Message", "PsiRequest", "PsiResponse")
_Result = TypeVar("_Result")

_FIELD_PRIME = 2**255 - 19
_Y_MASK = (1 << 255) - 1
_DOMAIN = b"fedwarden.psi.v1/hash_to_group/"


class PsiError(FedwardenError):
    """A PSI party was used out of order, got a malformed message, or was asked to leak."""


def identifier_bytes(identifier: Identifier) -> bytes:
    """The canonical bytes of an id: UTF-8 of a str, decimal digits of an int, bytes as is.

    So ``"42"``, ``42`` and ``b"42"`` name the same entity at every party.
    """
    if isinstance(identifier, bytes):
        return identifier
    if isinstance(identifier, str):
        return identifier.encode("utf-8")
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        return str(identifier).encode("ascii")
    raise PsiError(
        f"an entity id must be a str, an int or bytes, got {type(identifier).__name__} "
        f"{identifier!r}; convert ids to one of these before intersecting"
    )


def hash_to_group(identifiers: Sequence[Identifier], workers: int = 1) -> list[bytes]:
    """Each id hashed to the prime-order group of Curve25519, as a 32-byte ``u``-coordinate.

    ``SHA-512(domain || id)``; Elligator 2 on each half with the cofactor
    cleared, the two points added (RFC 9380's random-oracle construction),
    then mapped to Montgomery form. Public: it involves no secret.
    """
    digests = [hashlib.sha512(_DOMAIN + identifier_bytes(item)).digest() for item in identifiers]
    edwards_points = _parallel_map(_edwards_hash, digests, workers)
    return _montgomery_coordinates(edwards_points)


@dataclass(frozen=True)
class PsiRequest:
    """Receiver to sender: the receiver's ids hashed and blinded once, ``H(y)^b``, in its order."""

    mode: PsiMode
    points: tuple[bytes, ...]


@dataclass(frozen=True)
class PsiResponse:
    """Sender to receiver: ``H(y)^{ab}`` for the request's points, and ``H(x)^a`` for its own ids.

    ``double_blinded`` follows the request's order in ``"intersection"`` mode
    and is shuffled in ``"cardinality"`` mode; ``sender_points`` is always shuffled.
    """

    double_blinded: tuple[bytes, ...]
    sender_points: tuple[bytes, ...]


@dataclass(frozen=True)
class PsiOutcome:
    """What the receiver learned: the intersection's size, and in intersection mode its ids."""

    size: int
    intersection: frozenset[Identifier] | None


class _Party:
    """What both sides share: deduplicated ids, a secret exponent that never leaves, blinding."""

    def __init__(
        self, identifiers: Iterable[Identifier], mode: PsiMode, workers: int | None
    ) -> None:
        if mode not in get_args(PsiMode):
            raise PsiError(f"mode must be one of {list(get_args(PsiMode))}, got {mode!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise PsiError(f"workers must be a whole number >= 1 or None, got {workers!r}")
        self._mode: PsiMode = mode
        self._workers = workers or os.cpu_count() or 1
        unique: dict[bytes, Identifier] = {}
        for identifier in identifiers:
            unique.setdefault(identifier_bytes(identifier), identifier)
        self._identifiers: tuple[Identifier, ...] = tuple(unique.values())
        self._secret = secrets.token_bytes(POINT_BYTES)
        self._step = 0

    @property
    def mode(self) -> PsiMode:
        """``"intersection"`` or ``"cardinality"``: what the receiver may learn."""
        return self._mode

    @property
    def set_size(self) -> int:
        """How many distinct ids this party holds (public: the other side learns it)."""
        return len(self._identifiers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ids={self.set_size}, mode={self._mode!r})"

    def __reduce__(self) -> tuple[object, ...]:
        raise PsiError(
            f"a {type(self).__name__} holds its secret exponent and cannot be copied or pickled; "
            "create one party object in the process that owns the ids"
        )

    def _advance(self, expected: int, what: str) -> None:
        """Move the protocol on by one step, refusing steps out of order or repeated."""
        if self._step != expected:
            raise PsiError(
                f"{type(self).__name__}.{what} is step {expected + 1} of the protocol but this "
                f"party has completed {self._step} steps; each step runs once, in order: build a "
                "new party object for a new intersection"
            )
        self._step += 1

    def _blind_own(self) -> list[bytes]:
        """``H(id)^secret`` for each of this party's ids, in the party's order."""
        return self._blind(hash_to_group(self._identifiers, self._workers))

    def _blind(self, points: Sequence[bytes]) -> list[bytes]:
        """Each point raised to this party's secret exponent (X25519)."""
        secret = self._secret

        def blind_one(point: bytes) -> bytes:
            try:
                return bindings.crypto_scalarmult(secret, point)
            except exceptions.RuntimeError as error:
                raise PsiError(
                    "a received point has low order (blinding it gives the identity): the peer "
                    "sent a malformed or malicious message; abort this intersection"
                ) from error

        return _parallel_map(blind_one, points, self._workers)


class PsiReceiver(_Party):
    """The side that learns the result: :meth:`request`, then :meth:`finish` with the response."""

    def __init__(
        self,
        identifiers: Iterable[Identifier],
        mode: PsiMode = "intersection",
        *,
        workers: int | None = None,
    ) -> None:
        super().__init__(identifiers, mode, workers)
        self._sent: tuple[bytes, ...] = ()

    def request(self) -> PsiRequest:
        """Step 1: this party's ids hashed and blinded with its secret, in its own order."""
        self._advance(0, "request")
        self._sent = tuple(self._blind_own())
        logger.debug("PSI receiver blinded %d ids (%s mode)", len(self._sent), self._mode)
        return PsiRequest(mode=self._mode, points=self._sent)

    def finish(self, response: PsiResponse) -> PsiOutcome:
        """Step 2: blind the sender's points again, compare, and return what may be learned."""
        self._advance(1, "finish")
        if len(response.double_blinded) != len(self._sent):
            raise PsiError(
                f"the PSI response holds {len(response.double_blinded)} double-blinded points for "
                f"the {len(self._sent)} sent; the sender answered another request: abort"
            )
        _check_points(response.double_blinded, "response.double_blinded")
        _check_points(response.sender_points, "response.sender_points")
        sender_double_blinded = set(self._blind(response.sender_points))
        if self._mode == "cardinality":
            size = sum(point in sender_double_blinded for point in response.double_blinded)
            return PsiOutcome(size=size, intersection=None)
        shared = frozenset(
            identifier
            for identifier, point in zip(self._identifiers, response.double_blinded, strict=True)
            if point in sender_double_blinded
        )
        return PsiOutcome(size=len(shared), intersection=shared)


class PsiSender(_Party):
    """The side that answers: :meth:`respond` to the receiver's request; it learns a set size."""

    def __init__(
        self,
        identifiers: Iterable[Identifier],
        mode: PsiMode = "intersection",
        *,
        workers: int | None = None,
    ) -> None:
        super().__init__(identifiers, mode, workers)
        self._peer_set_size: int | None = None

    @property
    def peer_set_size(self) -> int | None:
        """The receiver's number of ids, the one thing the sender learns (None before respond)."""
        return self._peer_set_size

    def respond(self, request: PsiRequest) -> PsiResponse:
        """The only step: blind the receiver's points again, and send this party's own, shuffled."""
        self._advance(0, "respond")
        if request.mode != self._mode:
            raise PsiError(
                f"the receiver asked for {request.mode!r} but this sender was built for "
                f"{self._mode!r}; both parties must agree on the mode before they start"
            )
        _check_points(request.points, "request.points")
        self._peer_set_size = len(request.points)
        double_blinded = self._blind(request.points)
        if self._mode == "cardinality":
            _shuffle(double_blinded)
        own = self._blind_own()
        _shuffle(own)
        logger.debug(
            "PSI sender answered %d points with its %d (%s mode)",
            len(double_blinded),
            len(own),
            self._mode,
        )
        return PsiResponse(double_blinded=tuple(double_blinded), sender_points=tuple(own))


@dataclass(frozen=True)
class RelayedMessage:
    """One message a :class:`RelayCoordinator` passed on: who sent it, to whom, and what."""

    sender: str
    recipient: str
    message: PsiRequest | PsiResponse


class RelayCoordinator:
    """Passes PSI messages between parties and keeps a log of them; it holds no secret and no id.

    Everything it sees is blinded group elements, which without a party's
    secret exponent are indistinguishable from random points (DDH).
    """

    def __init__(self) -> None:
        self._log: list[RelayedMessage] = []

    @property
    def log(self) -> tuple[RelayedMessage, ...]:
        """Every message relayed so far, in order."""
        return tuple(self._log)

    def relay(self, sender: str, recipient: str, message: _Message) -> _Message:
        """Pass ``message`` from ``sender`` to ``recipient`` and log it."""
        self._log.append(RelayedMessage(sender, recipient, message))
        return message


def intersect_parties(
    party_identifiers: Mapping[str, Iterable[Identifier]],
    *,
    coordinator: RelayCoordinator | None = None,
    leader: str | None = None,
    workers: int | None = None,
) -> dict[str, frozenset[Identifier]]:
    """The ids every party holds, as each party learns them, computed pairwise through a relay.

    Phase 1: the leader (the first party unless named) is the receiver of one
    intersection with each other party and intersects the answers. Phase 2:
    the leader is the sender, holding only that final intersection, of one
    intersection with each other party, which so learns it too. Every message
    passes through ``coordinator`` (a fresh one if None), which sees only
    blinded points. Returns, per party, the final intersection in that party's
    own id objects. The leader also learns its pairwise intersections.
    """
    names = list(party_identifiers)
    if not names:
        raise PsiError("intersect_parties needs at least one party, got none")
    relay = coordinator if coordinator is not None else RelayCoordinator()
    leader_name = names[0] if leader is None else leader
    if leader_name not in party_identifiers:
        raise PsiError(f"leader {leader_name!r} is not one of the parties {names}")
    identifiers = {name: list(party_identifiers[name]) for name in names}
    others = [name for name in names if name != leader_name]

    final = frozenset(identifiers[leader_name])
    for name in others:
        shared = _run_pair(
            relay, identifiers[leader_name], leader_name, identifiers[name], name, workers
        )
        final &= shared
    results = {leader_name: _own_objects(identifiers[leader_name], final)}
    for name in others:
        results[name] = _run_pair(relay, identifiers[name], name, list(final), leader_name, workers)
    logger.info("PSI over %d parties: %d ids shared by all", len(names), len(final))
    return {name: results[name] for name in names}


def _run_pair(
    relay: RelayCoordinator,
    receiver_ids: Sequence[Identifier],
    receiver_name: str,
    sender_ids: Sequence[Identifier],
    sender_name: str,
    workers: int | None,
) -> frozenset[Identifier]:
    """One intersection-mode run between two parties, every message through the relay."""
    receiver = PsiReceiver(receiver_ids, "intersection", workers=workers)
    sender = PsiSender(sender_ids, "intersection", workers=workers)
    request = relay.relay(receiver_name, sender_name, receiver.request())
    response = relay.relay(sender_name, receiver_name, sender.respond(request))
    outcome = receiver.finish(response)
    assert outcome.intersection is not None
    return outcome.intersection


def _own_objects(
    identifiers: Iterable[Identifier], shared: frozenset[Identifier]
) -> frozenset[Identifier]:
    """The ids of ``identifiers`` whose canonical bytes are among ``shared``'s."""
    wanted = {identifier_bytes(identifier) for identifier in shared}
    return frozenset(item for item in identifiers if identifier_bytes(item) in wanted)


def _edwards_hash(digest: bytes) -> bytes:
    """An Edwards point: the sum of Elligator 2 maps (cofactor cleared) of a digest's halves."""
    first = bindings.crypto_core_ed25519_from_uniform(digest[:32])
    second = bindings.crypto_core_ed25519_from_uniform(digest[32:])
    return bindings.crypto_core_ed25519_add(first, second)


def _montgomery_coordinates(edwards_points: Sequence[bytes]) -> list[bytes]:
    """``u = (1 + y) / (1 - y)`` for each Edwards point (RFC 7748 section 4.1), inverting once."""
    numerators: list[int] = []
    denominators: list[int] = []
    for point in edwards_points:
        y = int.from_bytes(point, "little") & _Y_MASK
        if y == 1:
            raise PsiError("an id hashed to the identity point (chance about 2^-252); rename it")
        numerators.append(1 + y)
        denominators.append((1 - y) % _FIELD_PRIME)
    inverses = _batch_inverse(denominators)
    return [
        (numerator * inverse % _FIELD_PRIME).to_bytes(POINT_BYTES, "little")
        for numerator, inverse in zip(numerators, inverses, strict=True)
    ]


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod the field prime of nonzero ``values`` by one inversion (Montgomery's trick)."""
    if not values:
        return []
    prefix = [1] * len(values)
    running = 1
    for index, value in enumerate(values):
        prefix[index] = running
        running = running * value % _FIELD_PRIME
    inverse = pow(running, -1, _FIELD_PRIME)
    result = [0] * len(values)
    for index in range(len(values) - 1, -1, -1):
        result[index] = inverse * prefix[index] % _FIELD_PRIME
        inverse = inverse * values[index] % _FIELD_PRIME
    return result


def _check_points(points: Sequence[bytes], where: str) -> None:
    """Refuse anything but canonical 32-byte ``u``-coordinates."""
    for index, point in enumerate(points):
        if not (
            isinstance(point, bytes)
            and len(point) == POINT_BYTES
            and int.from_bytes(point, "little") < _FIELD_PRIME
        ):
            raise PsiError(
                f"{where}[{index}] is not a canonical {POINT_BYTES}-byte group element "
                f"(got {point!r:.80}); the peer sent a malformed "
                "message: abort this intersection"
            )


def _shuffle(items: list[bytes]) -> None:
    """Shuffle in place with the operating system's randomness (Fisher-Yates)."""
    secrets.SystemRandom().shuffle(items)


def _parallel_map(
    function: Callable[[_Item], _Result], items: Sequence[_Item], workers: int
) -> list[_Result]:
    """``function`` over ``items`` in order, on up to ``workers`` threads in contiguous chunks.

    The libsodium calls release the GIL, so threads use every core.
    """
    if workers <= 1 or len(items) < 2 * workers:
        return [function(item) for item in items]
    chunk = -(-len(items) // workers)
    chunks = [items[start : start + chunk] for start in range(0, len(items), chunk)]
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        parts = pool.map(lambda part: [function(item) for item in part], chunks)
        return [result for part in parts for result in part]
