"""t-of-n Shamir secret sharing of short secrets over the prime field GF(2^521 - 1).

Shamir (1979), "How to Share a Secret", Communications of the ACM 22(11): the
secret is the constant term of a random polynomial of degree ``t - 1``; share
``i`` is the polynomial's value at a public, nonzero x-coordinate; any ``t``
shares give the secret back by Lagrange interpolation at 0, and fewer reveal
nothing about it. Secure aggregation shares each client's self-mask seed and
masking secret key this way (Bonawitz et al., CCS 2017, Section 4, ``SS.share``
and ``SS.recon``).

The field is GF(p) with the Mersenne prime ``p = 2^521 - 1``, larger than any
secret of up to 65 bytes, so a 32-byte seed or X25519 key is one field element.
Coefficients come from :mod:`secrets`. :func:`combine_shares` refuses fewer
than ``t`` shares and duplicate x-coordinates, and checks that every share
beyond the first ``t`` lies on the same polynomial, so a corrupted or forged
share raises instead of silently yielding a wrong secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fedwarden.core.errors import FedwardenError

__all__ = ["PRIME", "SHARE_BYTES", "ShamirError", "Share", "combine_shares", "split_secret"]

PRIME = (1 << 521) - 1
"""The field modulus: the Mersenne prime 2^521 - 1."""

_X_BYTES = 2
_Y_BYTES = (PRIME.bit_length() + 7) // 8
_MAX_X = (1 << (8 * _X_BYTES)) - 1
_MAX_SECRET_BYTES = (PRIME.bit_length() - 1) // 8

SHARE_BYTES = _X_BYTES + _Y_BYTES
"""Length of a serialized :class:`Share`: a 2-byte x-coordinate and a 66-byte value."""


class ShamirError(FedwardenError):
    """A secret cannot be split, or shares cannot be combined, as asked."""


@dataclass(frozen=True)
class Share:
    """One point ``(x, f(x))`` of a sharing polynomial; ``x`` is the holder's public index."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not 1 <= self.x <= _MAX_X:
            raise ShamirError(f"a share's x-coordinate must lie in 1..{_MAX_X}, got {self.x}.")
        if not 0 <= self.y < PRIME:
            raise ShamirError("a share's value must be a field element in [0, 2^521 - 1).")

    def to_bytes(self) -> bytes:
        """The share as ``SHARE_BYTES`` big-endian bytes: x then y."""
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse :meth:`to_bytes` output; any other length or an out-of-field value is refused."""
        if len(data) != SHARE_BYTES:
            raise ShamirError(f"a serialized share is {SHARE_BYTES} bytes, got {len(data)}.")
        return cls(
            x=int.from_bytes(data[:_X_BYTES], "big"), y=int.from_bytes(data[_X_BYTES:], "big")
        )


def split_secret(secret: bytes, threshold: int, holders: Sequence[int]) -> tuple[Share, ...]:
    """Split ``secret`` into one share per x-coordinate in ``holders``; ``threshold`` rebuild it.

    ``holders`` are distinct positive x-coordinates (the holders' public
    indices); the shares come back in the same order.
    """
    if not 1 <= len(secret) <= _MAX_SECRET_BYTES:
        raise ShamirError(
            f"a secret must be 1..{_MAX_SECRET_BYTES} bytes to fit the field, got {len(secret)}."
        )
    _check_coordinates(list(holders), "holders")
    if not 2 <= threshold <= len(holders):
        raise ShamirError(
            f"threshold must lie in 2..{len(holders)} (the number of holders), got {threshold}: "
            "a 1-of-n sharing hands the secret to every holder."
        )
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return tuple(Share(x=x, y=_evaluate(coefficients, x)) for x in holders)


def combine_shares(shares: Sequence[Share], threshold: int, secret_bytes: int) -> bytes:
    """The ``secret_bytes``-long secret that ``shares`` (at least ``threshold``) encode.

    Interpolates at 0 from the first ``threshold`` shares (Lagrange) and checks
    that every further share lies on the same polynomial. Raises
    :class:`ShamirError` for too few shares, duplicate x-coordinates or
    inconsistent shares; never returns a wrong secret silently.
    """
    if threshold < 2:
        raise ShamirError(f"threshold must be at least 2, got {threshold}.")
    if len(shares) < threshold:
        raise ShamirError(
            f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret: at least {threshold} "
            "are needed, and fewer reveal nothing about it."
        )
    _check_coordinates([share.x for share in shares], "shares")
    basis = shares[:threshold]
    inverses = _inverse_denominators(basis)
    for extra in shares[threshold:]:
        if _interpolate(basis, inverses, extra.x) != extra.y:
            raise ShamirError(
                f"share with x={extra.x} does not lie on the polynomial of the other shares: "
                "at least one share is corrupted; the secret is not reconstructed."
            )
    value = _interpolate(basis, inverses, 0)
    if value >= 1 << (8 * secret_bytes):
        raise ShamirError(
            f"the shares encode a value longer than {secret_bytes} bytes: they were corrupted "
            "or belong to different secrets; the secret is not reconstructed."
        )
    return value.to_bytes(secret_bytes, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """The polynomial with ``coefficients`` (constant first) at ``x``, mod p (Horner)."""
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value


def _inverse_denominators(points: Sequence[Share]) -> list[int]:
    """``1 / prod_{j != i} (x_i - x_j)`` mod p for each point: the Lagrange weights' fixed part."""
    inverses = []
    for i, point in enumerate(points):
        denominator = 1
        for j, other in enumerate(points):
            if i != j:
                denominator *= point.x - other.x
        inverses.append(pow(denominator % PRIME, -1, PRIME))
    return inverses


def _interpolate(points: Sequence[Share], inverses: Sequence[int], at: int) -> int:
    """The unique polynomial of degree < len(points) through ``points``, evaluated at ``at``.

    Lagrange form; ``inverses`` come from :func:`_inverse_denominators`, and the
    numerators ``prod_{j != i} (at - x_j)`` from prefix and suffix products.
    """
    count = len(points)
    prefix, suffix = [1] * (count + 1), [1] * (count + 1)
    for i in range(count):
        prefix[i + 1] = prefix[i] * (at - points[i].x) % PRIME
    for i in range(count - 1, -1, -1):
        suffix[i] = suffix[i + 1] * (at - points[i].x) % PRIME
    total = 0
    for i, point in enumerate(points):
        total += point.y * (prefix[i] * suffix[i + 1] % PRIME) * inverses[i]
    return total % PRIME


def _check_coordinates(xs: list[int], what: str) -> None:
    """Refuse x-coordinates that repeat or fall outside ``1..65535``."""
    if len(set(xs)) != len(xs):
        raise ShamirError(f"{what} repeat an x-coordinate ({sorted(xs)}); each must be distinct.")
    for x in xs:
        if not isinstance(x, int) or not 1 <= x <= _MAX_X:
            raise ShamirError(
                f"{what} hold x-coordinate {x!r}; each must be an int in 1..{_MAX_X}."
            )
