"""Private set intersection: Diffie-Hellman PSI over the prime-order group of Curve25519.

The classic protocol of Meadows (1986) and Huberman, Franklin & Hogg (1999):
both parties hash their identifiers into a group where the decisional
Diffie-Hellman problem is hard, raise the hashes to a secret exponent, swap,
raise what they received to their own exponent, and compare. Because
``(H(x)^a)^b = (H(x)^b)^a``, equal identifiers meet at the same double-blinded
value; under DDH in the random-oracle model nothing else is learned.

Two parties, :class:`PsiReceiver` (secret ``b``) and :class:`PsiSender` (secret ``a``):

1. the sender sends :class:`PsiOffer`: its own ids blinded once, ``H(x)^a``,
   shuffled. It needs nothing from the receiver, so it travels while
2. the receiver sends :class:`PsiRequest`: ``H(y)^b`` for each of its ids ``y``;
3. the receiver raises the offer to ``b`` (:meth:`PsiReceiver.accept`) while the
   sender answers with :class:`PsiResponse`: the request raised to ``a``, ``H(y)^{ab}``;
4. the receiver compares (:meth:`PsiReceiver.finish`).

Each party's work is so two halves, each running at the same time as the
other party's. This is the only order: each step runs once, and a sender
refuses to :meth:`~PsiSender.respond` before it offered, a receiver to
:meth:`~PsiReceiver.finish` before it accepted an offer, so the sender's
points reach the receiver one way only.

Two modes, fixed when both parties are built:

* ``"intersection"``: ``H(y)^{ab}`` come back in the receiver's order, so the
  receiver learns which of its ids are shared (and the sender's set size);
* ``"cardinality"`` (PSI-CA, De Cristofaro, Gasti & Tsudik, CANS 2012): the
  sender shuffles ``H(y)^{ab}`` as well, so the receiver can only count the
  matches; it cannot tell which of its ids they belong to.

The sender learns only the receiver's set size. Security is against
semi-honest parties: a party that deviates from the protocol (say, sends the
same point twice) can learn more, as in every DH-PSI.

The group
---------
The prime-order subgroup (order ``L = 2^252 + ...``) of Curve25519, the group
ristretto255 encodes. The PyNaCl we depend on (1.6) has no ristretto255, and
its Edwards ``crypto_scalarmult_ed25519_noclamp`` costs 178 us against 44 us
for X25519, so points travel as Montgomery ``u``-coordinates:

* **Blinding**: X25519 (``crypto_scalarmult``, RFC 7748) with a secret of 32
  bytes from :mod:`secrets`. X25519 clamps it to ``8 k`` with bit 254 set: a
  multiple of the cofactor, so the result lies in the prime-order subgroup,
  and about ``2^251`` exponents. Exponentiation commutes. A ``u`` names a point
  up to sign, which changes nothing: ids collide only if ``H(x) = +-H(y)``.
  Every received point must be a canonical 32-byte ``u < 2^255 - 19``; one
  that gives the identity when blinded (a low-order point) is refused.
* **Hash to the group** (:func:`hash_to_group`): the first 32 bytes of
  ``SHA-512`` of a domain-separated id, mapped by libsodium's Elligator 2 map
  with the cofactor cleared (``crypto_core_ed25519_from_uniform``; similar in
  construction to RFC 9380's non-uniform ``encode_to_curve``, but without its
  ``expand_message`` and not checked against its test vectors), then written
  as ``u = (1 + y) / (1 - y)`` (RFC 7748 section 4.1) with one field inversion
  for the whole batch (Montgomery's trick).

Three hashes were weighed (CPU per id on the 2-core AMD EPYC of issue 8,
``benchmarks/psi.py``): two Elligator maps added, RFC 9380's random-oracle
``hash_to_curve``, used before (98 us); one map (41 us, used); the SHA-512
output taken as a ``u`` directly (1.2 us, refused).

*SHA-512 as a u, refused.* X25519 accepts every ``u``; a random one lies on
the curve or on its quadratic twist (order ``4 p'``, ``p'`` a 253-bit prime),
and exponentiation commutes on either, so equal ids would still meet. But the
curve and the twist are two different groups, and which one holds a ``u`` is
public (whether ``u^3 + 486662 u^2 + u`` is a square) and kept by
exponentiation. So every blinded point shows one bit of its id's hash: the
receiver learns how many of the sender's ids outside the intersection hash to
the twist, the sender the same of the receiver's ids. That is a function of
the other set beyond its size, which no simulator holding only the size can
produce: the DDH argument fails, whatever DDH's hardness in the two groups.
Forcing hashes onto the curve needs that square test per id, which PyNaCl
does not expose; in Python (``pow``) it costs some 200 us.

*One Elligator map, used.* Its output is not uniform (Elligator reaches about
half the curve, so after the cofactor is cleared some subgroup points are
reached more often than others), so it is not a random oracle into the group. The DDH argument
survives with the random oracle on the 32-byte string: a reduction that knows
a group element (with a DDH challenge embedded) keeps it with probability
proportional to its number of preimages and programs the oracle with one of
them at random (Elligator 2 is invertible), which gives the oracle exactly
uniform outputs; this is Brier et al.'s "weak encoding" argument (CRYPTO 2010)
at a constant factor in the reduction. Every hash lies on the curve, in the
prime-order subgroup, so points carry no twist bit.

Speed
-----
Per party and per id: one hash into the group and two X25519, one on its
own hash, one on the peer's point. No DH-PSI does with less: moving work
between the parties (an OPRF whose receiver unblinds) leaves two hashes and
four scalar multiplications per pair of ids. So these library calls bound
the cost from below. On the 2-core Intel Xeon of issue 20 (2026-12-06,
loaded by other jobs), in a tight loop of single calls: libsodium's Elligator
23 us, its X25519 36 us, so each party needs at least 9.5 CPU seconds at
100,000 ids, and with both parties on the one 2-core machine the wall time
is at least the busier party's CPU time: issue 8's 10 s leaves 5% for all
else. ``benchmarks/psi.py`` measured 10.5 CPU seconds for the busier party
(20.9 for both; the rest is SHA-512, the Montgomery map in Python and the
protocol's bookkeeping, about 0.5 s a party, plus the load's noise); the wall
time there was the load's. On a quiet 2-core AMD EPYC (issue 8) the same run
took 14.9 s from start to intersection (28.8 CPU seconds).

Two cheaper routes were weighed and refused. OpenSSL's X25519 (through
``cryptography``) is 34 us here, a bound of 9.1 CPU seconds a party (with
the blinding switched to it for one run, 10.1 for the busier party, against
10.5 to 10.9 with libsodium in runs on the same loaded machine): 91% of the
target before any bookkeeping, so it does not reach it either (P-256, 52 us
in OpenSSL, is slower still); it holds the GIL, so a party could no longer spread its blinding
over its cores as it does with libsodium, whose calls release the GIL, on
``workers`` threads; and on the AMD EPYC it was the slower one (61 us against
45). A cheaper hash needs a map straight to a Montgomery ``u``: one Legendre
symbol (X25519's clamped exponent clears the cofactor), where libsodium's map
to a cofactor-cleared, encoded Edwards point takes five field
exponentiations; no maintained library exposes it, and Python's ``pow``
takes 100 us. With 2 cores per party (each phase on 2 threads) the phases
took 5.8 + 3.3 s at the sender and 5.7 + 2.9 s at the receiver on the AMD
EPYC: two parties on two 2-core machines finish in about 9.2 s. OpenMined's
``openmined-psi`` (ECDH over P-256 in C++) took about 47 CPU seconds on the
same ids when last measured; it pins ``protobuf==6.30.2``, which conflicts
with our gRPC runtime's protobuf, so it is not installed.

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
from typing import ClassVar, Literal, TypeVar, get_args

from nacl import bindings, exceptions

from fedwarden.core.errors import FedwardenError

__all__ = [
    "POINT_BYTES",
    "Identifier",
    "PsiError",
    "PsiMode",
    "PsiOffer",
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
_Message = TypeVar("_Message", "PsiRequest", "PsiOffer", "PsiResponse")
_Result = TypeVar("_Result")

_FIELD_PRIME = 2**255 - 19
_Y_MASK = (1 << 255) - 1
_DOMAIN = b"fedwarden.psi.v2/encode_to_group/"


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
    """Each id encoded into the prime-order group of Curve25519, as a 32-byte ``u``-coordinate.

    libsodium's Elligator 2 map to edwards25519 with the cofactor cleared
    (``crypto_core_ed25519_from_uniform``) applied to the first 32 bytes of
    ``SHA-512(domain || id)``, then mapped to Montgomery form. Similar in
    construction to RFC 9380's non-uniform ``encode_to_curve``, but not it: no
    ``expand_message``, and RFC 9380's test vectors do not apply. Public: it
    involves no secret.
    """
    digests = [
        hashlib.sha512(_DOMAIN + identifier_bytes(item)).digest()[:POINT_BYTES]
        for item in identifiers
    ]
    edwards_points = _parallel_map(bindings.crypto_core_ed25519_from_uniform, digests, workers)
    return _montgomery_coordinates(edwards_points)


@dataclass(frozen=True)
class PsiRequest:
    """Receiver to sender: the receiver's ids hashed and blinded once, ``H(y)^b``, in its order."""

    mode: PsiMode
    points: tuple[bytes, ...]


@dataclass(frozen=True)
class PsiOffer:
    """Sender to receiver, before or while the request travels: ``H(x)^a`` for its ids, shuffled."""

    mode: PsiMode
    points: tuple[bytes, ...]


@dataclass(frozen=True)
class PsiResponse:
    """Sender to receiver: ``H(y)^{ab}``, the request's points blinded again by the sender.

    ``double_blinded`` follows the request's order in ``"intersection"`` mode
    and is shuffled in ``"cardinality"`` mode. The sender's own points never
    travel here: they came earlier, as its :class:`PsiOffer`.
    """

    double_blinded: tuple[bytes, ...]


@dataclass(frozen=True)
class PsiOutcome:
    """What the receiver learned: the intersection's size, and in intersection mode its ids."""

    size: int
    intersection: frozenset[Identifier] | None


class _Party:
    """What both sides share: deduplicated ids, a secret exponent that never leaves, blinding."""

    _STEPS: ClassVar[tuple[str, ...]]
    """The party's public methods in the one order the protocol runs them."""

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
        """How many of :attr:`_STEPS` have run."""

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

    def _advance(self, step: str) -> None:
        """Move the protocol on to ``step``, refusing a step out of order or repeated."""
        index = self._STEPS.index(step)
        order = " -> ".join(f"{name}()" for name in self._STEPS)
        where = f"{type(self).__name__}.{step} is step {index + 1} of the protocol ({order})"
        if self._step < index:
            missing = self._STEPS[self._step]
            raise PsiError(
                f"{where} but {missing} (step {self._step + 1}) has not run yet: call "
                f"{missing}() first"
            )
        if self._step > index:
            raise PsiError(
                f"{where} and has already run; each step runs once: build a new party object "
                "for a new intersection"
            )
        self._step += 1

    def _check_mode(self, mode: PsiMode, where: str) -> None:
        """Refuse a message built for the other mode."""
        if mode != self._mode:
            raise PsiError(
                f"the {where} is for {mode!r} but this {type(self).__name__} was built for "
                f"{self._mode!r}; both parties must agree on the mode before they start"
            )

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
    """The side that learns the result: :meth:`request`, :meth:`accept` the offer, :meth:`finish`.

    The sender's points come only in its :class:`PsiOffer`: :meth:`finish`
    refuses to run before :meth:`accept` has taken one.
    """

    _STEPS = ("request", "accept", "finish")

    def __init__(
        self,
        identifiers: Iterable[Identifier],
        mode: PsiMode = "intersection",
        *,
        workers: int | None = None,
    ) -> None:
        super().__init__(identifiers, mode, workers)
        self._sent: tuple[bytes, ...] = ()
        self._sender_double_blinded: frozenset[bytes] = frozenset()

    def request(self) -> PsiRequest:
        """Step 1: this party's ids hashed and blinded with its secret, in its own order."""
        self._advance("request")
        self._sent = tuple(self._blind_own())
        logger.debug("PSI receiver blinded %d ids (%s mode)", len(self._sent), self._mode)
        return PsiRequest(mode=self._mode, points=self._sent)

    def accept(self, offer: PsiOffer) -> None:
        """Step 2: blind the sender's offered points again, ``H(x)^{ab}``, while it answers."""
        self._advance("accept")
        self._check_mode(offer.mode, "sender's offer")
        _check_points(offer.points, "offer.points")
        self._sender_double_blinded = frozenset(self._blind(offer.points))
        logger.debug("PSI receiver blinded the sender's %d offered points", len(offer.points))

    def finish(self, response: PsiResponse) -> PsiOutcome:
        """Step 3: compare ``H(y)^{ab}`` with the sender's ``H(x)^{ab}``; return what is learned."""
        self._advance("finish")
        if len(response.double_blinded) != len(self._sent):
            raise PsiError(
                f"the PSI response holds {len(response.double_blinded)} double-blinded points for "
                f"the {len(self._sent)} sent; the sender answered another request: abort"
            )
        _check_points(response.double_blinded, "response.double_blinded")
        matched = self._sender_double_blinded
        if self._mode == "cardinality":
            size = sum(point in matched for point in response.double_blinded)
            return PsiOutcome(size=size, intersection=None)
        shared = frozenset(
            identifier
            for identifier, point in zip(self._identifiers, response.double_blinded, strict=True)
            if point in matched
        )
        return PsiOutcome(size=len(shared), intersection=shared)


class PsiSender(_Party):
    """The side that answers: :meth:`offer` its blinded ids first, then :meth:`respond`.

    It learns only the receiver's set size.
    """

    _STEPS = ("offer", "respond")

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

    def offer(self) -> PsiOffer:
        """Step 1: this party's ids hashed and blinded, ``H(x)^a``, shuffled; needs no request."""
        self._advance("offer")
        own = self._blind_own()
        _shuffle(own)
        logger.debug("PSI sender offered its %d points (%s mode)", len(own), self._mode)
        return PsiOffer(mode=self._mode, points=tuple(own))

    def respond(self, request: PsiRequest) -> PsiResponse:
        """Step 2: the receiver's points blinded again, ``H(y)^{ab}``; shuffled for cardinality."""
        self._advance("respond")
        self._check_mode(request.mode, "receiver's request")
        _check_points(request.points, "request.points")
        self._peer_set_size = len(request.points)
        double_blinded = self._blind(request.points)
        if self._mode == "cardinality":
            _shuffle(double_blinded)
        logger.debug("PSI sender answered %d points (%s mode)", len(double_blinded), self._mode)
        return PsiResponse(double_blinded=tuple(double_blinded))


@dataclass(frozen=True)
class RelayedMessage:
    """One message a :class:`RelayCoordinator` passed on: who sent it, to whom, and what."""

    sender: str
    recipient: str
    message: PsiRequest | PsiOffer | PsiResponse


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
    offer = relay.relay(sender_name, receiver_name, sender.offer())
    request = relay.relay(receiver_name, sender_name, receiver.request())
    receiver.accept(offer)
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
