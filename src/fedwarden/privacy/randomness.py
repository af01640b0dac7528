"""Cryptographically secure randomness for every privacy noise in fedwarden.

Every DP mechanism draws its noise from a :class:`NoiseSource`, never from
``np.random`` or the ``random`` module: Mersenne Twister and PCG are
predictable from their output, so noise drawn from them can be subtracted
again. There are two kinds of source:

* :meth:`NoiseSource.secure` reads the operating system's entropy
  (``os.urandom``, the same pool as ``secrets``) on every call: short requests
  directly, long ones as the AES-256-CTR keystream under a fresh 256-bit key
  read from the OS for that call (the construction of NIST SP 800-90A's
  CTR_DRBG without its state; the kernel's own generator is itself a
  ChaCha20 stream under an entropy key). A million-coordinate update's
  stochastic rounding then costs about 2 ms of keystream instead of 40 ms of
  system calls. It keeps no state, so it is safe to share between threads and
  across ``fork``, and it is never reproducible. It is the default everywhere.
* :meth:`NoiseSource.for_testing` is a ChaCha20 keystream keyed by
  ``SHA-256(seed)``: the same seed gives the same noise, which is what tests
  and debugging need and exactly what a real release must never have. Each
  one logs a WARNING on the ``fedwarden.privacy`` logger when it is created,
  and :attr:`NoiseSource.reproducible` says which kind a source is.

Floating-point noise and the attacks on it
------------------------------------------
Mironov (2012), "On Significance of the Least Significant Bits for
Differential Privacy", showed that textbook floating-point Laplace samplers
leak the private value: the set of doubles that ``value + noise`` can reach
depends on ``value``, so an observer can often tell two neighbouring inputs
apart from one output. Holohan & Braghin (2021), "Secure Random Sampling in
Differential Privacy", showed the same for Gaussian samplers built from
Box-Muller and the polar method: from one output the uniforms that made it can
be recovered. fedwarden answers this in two ways, by what is released.

(a) **Noise on an integer grid, exact samplers** (:mod:`fedwarden.privacy.discrete`).
    Scalar releases (analytics counts and sums, adaptive clipping's count) and
    noise that must be added inside secure aggregation, where values live in a
    finite ring, use the exact discrete Gaussian and discrete Laplace samplers
    of Canonne, Kamath & Steinke (2020). The caller quantizes to a grid step
    and adds integers; every probability is computed with exact rational
    arithmetic, so there is no floating-point gap to attack and the privacy
    guarantee is the one proven for the discrete mechanism.

(b) **Sum of independent Gaussians** (:meth:`NoiseSource.gaussian`). Model
    updates are float vectors of millions of coordinates, aggregated and
    released in floating point anyway; an exact sampler per coordinate would
    cost seconds per round. For them we follow Holohan & Braghin's fix, also
    used by their library diffprivlib: each coordinate is the sum of
    :data:`GAUSSIAN_SUMMANDS` independent standard normals, each from its own
    Box-Muller pair of fresh 53-bit secure uniforms (the cosine branch only,
    so no uniform is shared between summands or between coordinates), scaled
    by ``std / sqrt(GAUSSIAN_SUMMANDS)``. The sum of independent normals is
    exactly normal, so the variance is ``std**2`` and the accounting is
    unchanged, while an output no longer determines the uniforms behind it,
    which is what the reconstruction attack needs. One summand's magnitude is
    at most ``sqrt(2 * 53 * ln 2) ~ 8.57`` (the smallest nonzero 53-bit
    uniform); the tail cut off has probability below ``2**-53`` per summand,
    far below any ``delta`` fedwarden accepts.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import operator
import os
from collections.abc import Callable
from fractions import Fraction
from typing import NoReturn, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedwarden.core.errors import FedwardenError

__all__ = ["GAUSSIAN_SUMMANDS", "NoiseSource", "PrivacyNoiseError"]

logger = logging.getLogger("fedwarden.privacy")

GAUSSIAN_SUMMANDS = 2
"""Independent standard normals summed per coordinate by :meth:`NoiseSource.gaussian`."""

_INT64_LIMIT = 1 << 63
_UNIFORM_BITS = 53


class PrivacyNoiseError(FedwardenError):
    """A noise source or sampler was asked for something it cannot do safely or exactly."""


class _ByteStream(Protocol):
    """Where a :class:`NoiseSource` gets its random bytes."""

    def read(self, count: int) -> bytes:
        """The next ``count`` random bytes."""
        ...


_CHACHA20_BLOCK = 64
"""Bytes of keystream per ChaCha20 block (one step of its 32-bit block counter)."""

_DIRECT_READ_LIMIT = 256
"""Requests up to this many bytes are read straight from ``os.urandom``."""


class _OperatingSystemEntropy:
    """Bytes from the operating system's CSPRNG on every call (no state to leak or copy)."""

    def read(self, count: int) -> bytes:
        """``count`` fresh bytes: OS entropy, or a keystream under a fresh OS-entropy key."""
        if count <= _DIRECT_READ_LIMIT:
            return os.urandom(count)
        key = os.urandom(32)
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        return encryptor.update(bytes(count)) + encryptor.finalize()


class _ChaCha20Keystream:
    """The ChaCha20 keystream under ``SHA-256(seed[, stream])``: deterministic, for tests only.

    It counts the bytes it has given out (:attr:`position`) and can :meth:`seek`
    back to any of them, so a checkpoint can record where the stream stood and
    a resumed run continue it instead of starting it again.
    """

    def __init__(self, seed: int, stream: str = "") -> None:
        seed_bytes = seed.to_bytes(seed.bit_length() // 8 + 1, "big", signed=True)
        self._key = hashlib.sha256(seed_bytes + stream.encode()).digest()
        self.position = 0
        self.seek(0)

    def seek(self, position: int) -> None:
        """Continue the keystream from its ``position``-th byte."""
        block, skip = divmod(position, _CHACHA20_BLOCK)
        counter = block.to_bytes(4, "little") + bytes(12)
        self._encryptor = Cipher(algorithms.ChaCha20(self._key, counter), mode=None).encryptor()
        self._encryptor.update(bytes(skip))
        self.position = position

    def read(self, count: int) -> bytes:
        """The next ``count`` bytes of the keystream (encrypting zeros yields the keystream)."""
        self.position += count
        return self._encryptor.update(bytes(count))

    def __reduce__(self) -> NoReturn:
        raise PrivacyNoiseError(
            "a test-mode NoiseSource cannot be copied to another process: the copies would add "
            "identical noise. Create one in each process with NoiseSource.for_testing(seed), "
            "using a different seed in each."
        )


def _count(size: int | tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The shape ``size`` names and its element count; negative or non-integer sizes are refused."""
    try:
        extents = size if isinstance(size, tuple) else (size,)
        shape = tuple(operator.index(extent) for extent in extents)
    except TypeError:
        shape = (-1,)
    if any(extent < 0 for extent in shape):
        raise PrivacyNoiseError(
            f"size must be a non-negative int or a tuple of them, got {size!r}."
        )
    return shape, math.prod(shape)


class NoiseSource:
    """Cryptographically secure randomness for privacy noise.

    Create one with :meth:`secure` (the default everywhere) or, in tests only,
    :meth:`for_testing`. See the module docstring for why vectors and scalars
    are sampled the way they are (Mironov 2012; Holohan & Braghin 2021).
    """

    def __init__(self, stream: _ByteStream, *, reproducible: bool) -> None:
        self._stream = stream
        self._reproducible = reproducible

    @classmethod
    def secure(cls) -> NoiseSource:
        """A source seeded from OS entropy on every draw: never reproducible, the default."""
        return cls(_OperatingSystemEntropy(), reproducible=False)

    @classmethod
    def for_testing(cls, seed: int, stream: str = "") -> NoiseSource:
        """A deterministic ChaCha20 keystream keyed by ``SHA-256(seed, stream)``; logs a WARNING.

        ``stream`` names what the randomness is for (``"cohort"``, ...), so two
        uses that share a seed never share a keystream.
        """
        source = cls.seeded(seed, stream)
        logger.warning(
            "privacy noise is REPRODUCIBLE (test mode, seed=%d): never use this for a real release",
            seed,
        )
        return source

    @classmethod
    def secure_or_testing(
        cls, reproducible: bool, key: int | Callable[[], int], stream: str = ""
    ) -> NoiseSource:
        """:meth:`secure`, or in test mode (``reproducible``) :meth:`for_testing` under ``key``.

        The one choice between real and test-mode noise. ``key`` may be a function
        that gives the key (a client's draw from its training generator): it is called
        only in test mode, so outside it nothing is drawn.
        """
        if not reproducible:
            return cls.secure()
        return cls.for_testing(key if isinstance(key, int) else key(), stream)

    @classmethod
    def seeded(cls, seed: int, stream: str = "") -> NoiseSource:
        """The same keystream as :meth:`for_testing`, without the warning.

        Only for choices no privacy guarantee relies on: which clients train in
        a run without differential privacy, whose reproducibility from the
        seed is a feature. Anything a DP guarantee rests on draws from
        :meth:`secure`, or in test mode from :meth:`for_testing`.
        """
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise PrivacyNoiseError(f"the test-mode seed must be an int, got {seed!r}.")
        return cls(_ChaCha20Keystream(seed, stream), reproducible=True)

    @property
    def reproducible(self) -> bool:
        """True for a test-mode source, whose noise anyone knowing the seed can recompute."""
        return self._reproducible

    @property
    def position(self) -> int | None:
        """Bytes a reproducible source has given out so far (None for a secure one)."""
        return self._stream.position if isinstance(self._stream, _ChaCha20Keystream) else None

    def seek(self, position: int) -> None:
        """Continue a reproducible source from ``position`` (what :attr:`position` said earlier).

        A resumed run calls it with the position its checkpoint recorded, so
        it draws what the uninterrupted run would have drawn.
        """
        if not isinstance(self._stream, _ChaCha20Keystream):
            raise PrivacyNoiseError(
                "a secure NoiseSource has no position to seek: its bytes are never reproducible."
            )
        if not isinstance(position, int) or position < 0:
            raise PrivacyNoiseError(f"position must be a non-negative int, got {position!r}.")
        self._stream.seek(position)

    def __repr__(self) -> str:
        kind = "for_testing" if self._reproducible else "secure"
        return f"NoiseSource.{kind}()"

    def random_bytes(self, count: int) -> bytes:
        """``count`` uniformly random bytes."""
        if not isinstance(count, int) or count < 0:
            raise PrivacyNoiseError(f"count must be a non-negative int, got {count!r}.")
        return self._stream.read(count)

    def _words(self, count: int, width: int = 8) -> npt.NDArray[np.unsignedinteger]:
        """``count`` uniform unsigned ints of ``width`` bytes, little-endian on every host."""
        return np.frombuffer(self._stream.read(count * width), dtype=f"<u{width}")

    def uniform(self, size: int | tuple[int, ...]) -> npt.NDArray[np.float64]:
        """Uniform floats in ``[0, 1)``: each ``k / 2**53`` for a uniform 53-bit integer ``k``."""
        shape, count = _count(size)
        integers = self._words(count) >> np.uint64(64 - _UNIFORM_BITS)
        return (integers.astype(np.float64) * 2.0**-_UNIFORM_BITS).reshape(shape)

    def gaussian(self, size: int | tuple[int, ...], std: float) -> npt.NDArray[np.float64]:
        """Normal noise N(0, std**2) as a sum of independent Box-Muller normals.

        Holohan & Braghin (2021), "Secure Random Sampling in Differential
        Privacy": each coordinate sums :data:`GAUSSIAN_SUMMANDS` standard
        normals from fresh 53-bit secure uniforms, scaled to variance
        ``std**2``. Use the exact samplers of :mod:`fedwarden.privacy.discrete`
        for scalar releases and noise added inside secure aggregation.
        """
        if not math.isfinite(std) or std < 0:
            raise PrivacyNoiseError(
                f"std must be a finite number >= 0, got {std!r}: pass noise_multiplier * clip_norm."
            )
        shape, count = _count(size)
        total = np.zeros(count, dtype=np.float64)
        if std == 0:
            return total.reshape(shape)
        for _ in range(GAUSSIAN_SUMMANDS):
            radius = self.uniform(count)
            np.subtract(1.0, radius, out=radius)  # (0, 1]: the logarithm stays finite
            np.log(radius, out=radius)
            np.multiply(radius, -2.0, out=radius)
            np.sqrt(radius, out=radius)
            angle = self.uniform(count)
            np.multiply(angle, 2.0 * math.pi, out=angle)
            np.cos(angle, out=angle)
            np.multiply(radius, angle, out=radius)
            total += radius
        total *= std / math.sqrt(GAUSSIAN_SUMMANDS)
        return total.reshape(shape)

    def integers(self, high: int, size: int | tuple[int, ...]) -> npt.NDArray[np.int64]:
        """Uniform integers in ``[0, high)``, unbiased: masked bits, values >= high redrawn."""
        if not isinstance(high, int) or not 1 <= high <= _INT64_LIMIT:
            raise PrivacyNoiseError(f"high must be an int in [1, 2**63], got {high!r}.")
        shape, count = _count(size)
        result = np.zeros(count, dtype=np.int64)
        bits = (high - 1).bit_length()
        if bits == 0:
            return result.reshape(shape)
        width = next(width for width in (1, 2, 4, 8) if bits <= 8 * width)
        mask = np.array((1 << bits) - 1, dtype=f"<u{width}")
        bound = np.array(high, dtype=np.uint64)
        pending = np.arange(count)
        while pending.size:
            candidates = self._words(pending.size, width) & mask
            accepted = candidates < bound
            result[pending[accepted]] = candidates[accepted]
            pending = pending[~accepted]
        return result.reshape(shape)

    def randbelow(self, n: int) -> int:
        """An exactly uniform integer in ``[0, n)`` for any positive Python int ``n``."""
        if not isinstance(n, int) or n < 1:
            raise PrivacyNoiseError(f"randbelow needs a positive int, got {n!r}.")
        bits = (n - 1).bit_length()
        if bits == 0:
            return 0
        width = (bits + 7) // 8
        surplus = 8 * width - bits
        while True:
            candidate = int.from_bytes(self._stream.read(width), "big") >> surplus
            if candidate < n:
                return candidate

    def subset(self, population: int, size: int) -> list[int]:
        """A uniformly random ``size``-subset of ``range(population)``, in increasing order.

        The first ``size`` steps of a Fisher-Yates shuffle (Knuth, TAOCP vol. 2,
        Algorithm 3.4.2P), each index drawn exactly uniformly by :meth:`randbelow`.
        """
        if not isinstance(size, int) or not 0 <= size <= population:
            raise PrivacyNoiseError(
                f"cannot choose {size!r} of {population!r} items: size must be in [0, population]."
            )
        order = list(range(population))
        for index in range(size):
            swap = index + self.randbelow(population - index)
            order[index], order[swap] = order[swap], order[index]
        return sorted(order[:size])

    def bernoulli(self, probability: float, size: int) -> npt.NDArray[np.bool_]:
        """Independent coins, each True with probability exactly ``probability``.

        Each coin compares a uniform real in ``[0, 1)``, revealed 64 bits at a
        time, with the binary expansion of ``probability``; a further word is
        drawn only on a tie (chance ``2**-64``), so the result is exact and as
        fast as one comparison per coin.
        """
        if not isinstance(probability, numbers.Real) or not 0 <= probability <= 1:
            raise PrivacyNoiseError(f"probability must be a number in [0, 1], got {probability!r}.")
        _, count = _count(size)
        result = np.zeros(count, dtype=np.bool_)
        if probability == 1:
            result[:] = True
            return result
        exact = Fraction(float(probability))
        word_count = -(-(exact.denominator.bit_length() - 1) // 64)
        expansion = exact.numerator << (64 * word_count - (exact.denominator.bit_length() - 1))
        words = expansion.to_bytes(8 * word_count, "big")
        undecided = np.arange(count)
        for index in range(word_count):
            if not undecided.size:
                break
            target = np.uint64(int.from_bytes(words[8 * index : 8 * index + 8], "big"))
            drawn = self._words(undecided.size)
            result[undecided[drawn < target]] = True
            undecided = undecided[drawn == target]
        return result
