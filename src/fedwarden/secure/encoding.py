"""Float updates as elements of the ring Z_{2^b}, so that a masked sum of them cannot wrap.

Secure aggregation (Bonawitz et al., CCS 2017, Section 3) sums vectors of ring
elements modulo ``2^b``; model updates are float vectors. :class:`RingEncoder`
maps one to the other and back:

1. **clip**: the update is scaled to L2 norm at most ``clip_norm`` C (McMahan et
   al. 2018's ``ClipFn``, :func:`~fedwarden.privacy.clipping.clip_to_norm`). Vectors
   above C are clipped, not refused: clipping here makes the no-wrap bound hold
   whatever the caller did, and is a no-op after the pipeline's own clipping.
   Every coordinate then lies in ``[-C, C]`` (the L2 bound implies it).
2. **weight**: the clipped update x is multiplied by the client's integer weight
   w (1 for ``weighting="uniform"``, the example count for
   ``weighting="example_count"``, refused above ``max_weight``), so each
   coordinate of ``w x`` lies in ``[-W C, W C]`` with W = ``max_weight``.
3. **quantize**: ``w x / step`` is rounded stochastically (:func:`stochastic_round`),
   unbiasedly, with cryptographically secure uniforms; each integer lies in
   ``[-k, k]`` with ``k = ceil(W C / step)``.
4. **append the weight**: w travels as one extra ring element after the update,
   so the decoded sum carries ``sum_i w_i x_i`` and ``sum_i w_i`` together and the
   weighted mean ``sum_i w_i x_i / sum_i w_i`` is exact up to quantization.
5. **reduce** modulo ``2^b`` (:func:`to_ring`).

No wrap. With at most n summands every coordinate of the integer sum lies in
``[-n k, n k]`` and the weight sum in ``[0, n W]``. Ring values at or above
``2^(b-1)`` decode as negative (:func:`from_ring`), so the configuration is
valid only if ``n max(k, W) <= 2^(b-1) - 1``. :class:`RingEncoder` refuses
any other at construction, naming the numbers; :meth:`RingEncoder.finest` picks
the smallest step that satisfies it.

Accuracy. Each client's rounding moves each coordinate by less than one step,
so a decoded sum of m updates is within ``m * step`` of the exact sum of the
clipped, weighted updates, coordinate by coordinate, and is unbiased. Float64
carries 53 bits, so ranges beyond ``2^53`` steps per client (``b`` above about
``53 + log2 n``) add no resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError, FedwardenError
from fedwarden.core.params import Vector
from fedwarden.privacy.clipping import clip_to_norm
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.prg import MAX_MODULUS_BITS, reduce_modulo

__all__ = [
    "MIN_MODULUS_BITS",
    "DecodedSum",
    "RingEncoder",
    "RingEncodingError",
    "Weighting",
    "from_ring",
    "signed_capacity",
    "stochastic_round",
    "to_ring",
]

MIN_MODULUS_BITS = 8
"""Smallest ring ``Z_{2^b}`` an encoder accepts (``MAX_MODULUS_BITS`` = 62 comes from the PRG)."""

Weighting = Literal["uniform", "example_count"]

IntArray = npt.NDArray[np.int64]
RingArray = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]


class RingEncodingError(FedwardenError):
    """An update, weight or ring vector cannot be encoded or decoded as given."""


class DecodedSum(NamedTuple):
    """A decoded ring sum: the float64 sum of the weighted updates, and the sum of the weights."""

    total: FloatArray
    weight: int


def signed_capacity(modulus_bits: int) -> int:
    """The largest magnitude a sum may reach in ``Z_{2^b}`` and still decode: ``2^(b-1) - 1``."""
    check_modulus_bits(modulus_bits)
    return (1 << (modulus_bits - 1)) - 1


def check_modulus_bits(modulus_bits: int) -> None:
    """Refuse a ring size outside ``MIN_MODULUS_BITS..MAX_MODULUS_BITS`` with a ConfigError."""
    if (
        isinstance(modulus_bits, bool)
        or not isinstance(modulus_bits, int)
        or not MIN_MODULUS_BITS <= modulus_bits <= MAX_MODULUS_BITS
    ):
        raise ConfigError(
            f"modulus_bits must be an int in {MIN_MODULUS_BITS}..{MAX_MODULUS_BITS}, got "
            f"{modulus_bits!r}; 32 is the default and suits cohorts up to thousands of clients"
        )


def stochastic_round(values: FloatArray, source: NoiseSource) -> IntArray:
    """Each value rounded to ``floor(v)`` or ``floor(v) + 1``, up with probability ``v - floor(v)``.

    Unbiased stochastic rounding (the randomized rounding of Kairouz, Liu &
    Steinke, ICML 2021, Section 4), vectorised: one secure 53-bit uniform per
    coordinate from ``source``, never ``np.random``. The up-probability is exact
    whenever the fraction is a multiple of ``2^-53`` (every ``|v| >= 1``); else
    the bias is below ``2^-53``.
    """
    floors = np.floor(values)
    fractions = values - floors
    up = source.uniform(values.shape) < fractions
    rounded = floors.astype(np.int64)
    rounded += up
    return rounded


def to_ring(integers: IntArray, modulus_bits: int) -> RingArray:
    """Signed integers as uint64 elements of ``Z_{2^b}``: two's complement, then ``mod 2^b``."""
    check_modulus_bits(modulus_bits)
    return reduce_modulo(integers.astype(np.uint64), modulus_bits)


def from_ring(ring: RingArray, modulus_bits: int) -> IntArray:
    """Ring elements as signed integers: values at or above ``2^(b-1)`` map to ``value - 2^b``."""
    check_modulus_bits(modulus_bits)
    reduced = np.bitwise_and(ring.astype(np.uint64), np.uint64((1 << modulus_bits) - 1))
    signed = reduced.astype(np.int64)
    signed[reduced >= np.uint64(1 << (modulus_bits - 1))] -= np.int64(1 << modulus_bits)
    return signed


@dataclass(frozen=True)
class RingEncoder:
    """Clips, weights and stochastically quantizes updates to ``Z_{2^b}``, and decodes their sum.

    ``clip_norm`` is the L2 bound C of one update (larger updates are clipped),
    ``max_summands`` the most updates a sum may hold (the cohort size n),
    ``step`` the quantization step in update units, ``modulus_bits`` b. With
    ``weighting="example_count"`` a client passes its example count w,
    ``0 <= w <= max_weight``, and the update is encoded as ``w x``; with
    ``"uniform"`` every weight is 1 and ``max_weight`` must be 1. A
    configuration whose sum could wrap is refused with a ConfigError (module
    docstring); :meth:`finest` builds the finest one that cannot.
    """

    clip_norm: float
    max_summands: int
    step: float
    modulus_bits: int = 32
    weighting: Weighting = "uniform"
    max_weight: int = 1

    def __post_init__(self) -> None:
        _check_settings(
            self.clip_norm, self.max_summands, self.modulus_bits, self.weighting, self.max_weight
        )
        if not (isinstance(self.step, int | float) and math.isfinite(self.step) and self.step > 0):
            raise ConfigError(
                f"step must be a positive finite number, got {self.step!r}; use "
                "RingEncoder.finest(...) to get the finest step that cannot wrap"
            )
        capacity = signed_capacity(self.modulus_bits)
        if self.largest_sum > capacity:
            levels = capacity // self.max_summands
            advice = (
                f"use a step of at least {self.max_weight * self.clip_norm / levels:.6g} "
                "(RingEncoder.finest gives the finest that fits), "
                if levels >= self.max_weight
                else ""
            )
            raise ConfigError(
                f"a sum of n={self.max_summands} updates could wrap around "
                f"Z_2^{self.modulus_bits}: with clip_norm C={self.clip_norm}, max_weight "
                f"W={self.max_weight} and step={self.step}, each client's coordinates round to at "
                f"most ceil(W*C/step)={self.coordinate_bound} in magnitude, so the largest "
                f"possible sum is n*max(ceil(W*C/step), W)={self.largest_sum}, but signed "
                f"decoding needs it below 2^(b-1)={capacity + 1} (b={self.modulus_bits}); "
                f"{advice}raise modulus_bits (at most {MAX_MODULUS_BITS}), or lower the cohort size"
            )

    @classmethod
    def finest(
        cls,
        clip_norm: float,
        max_summands: int,
        modulus_bits: int = 32,
        weighting: Weighting = "uniform",
        max_weight: int = 1,
    ) -> RingEncoder:
        """The encoder with the smallest step whose sum of ``max_summands`` updates cannot wrap.

        Each client may use ``k = floor((2^(b-1) - 1) / n)`` integer levels per
        sign, so the step is ``W C / k`` (nudged up by float ulps if rounding
        would give ``ceil(W C / step) > k``).
        """
        _check_settings(clip_norm, max_summands, modulus_bits, weighting, max_weight)
        capacity = signed_capacity(modulus_bits)
        levels = capacity // max_summands
        if levels < max_weight:
            raise ConfigError(
                f"Z_2^{modulus_bits} cannot hold a sum of {max_summands} updates with weights up "
                f"to max_weight={max_weight}: even the weights alone could sum to "
                f"{max_summands * max_weight}, but signed decoding needs sums below "
                f"2^(b-1)={capacity + 1}; raise modulus_bits or lower the cohort size or max_weight"
            )
        reach = max_weight * clip_norm
        step = reach / levels
        while math.ceil(reach / step) > levels:
            step = math.nextafter(step, math.inf)
        return cls(clip_norm, max_summands, step, modulus_bits, weighting, max_weight)

    @property
    def coordinate_bound(self) -> int:
        """The largest magnitude of one client's quantized coordinate: ``ceil(W C / step)``."""
        return math.ceil(self.max_weight * self.clip_norm / self.step)

    @property
    def largest_sum(self) -> int:
        """The largest magnitude any coordinate of a sum of ``max_summands`` encodings can reach."""
        return self.max_summands * max(self.coordinate_bound, self.max_weight)

    def sum_error_bound(self, summands: int) -> float:
        """The most a decoded sum of ``summands`` encodings may be off, coordinate by coordinate.

        The exact sum is that of the clipped, weighted float32 updates. Each
        rounding moves a coordinate by less than one step; float64 arithmetic
        (scaling, clamping, decoding) adds at most ``2^-50 (k + 1)`` steps per
        summand, which matters only as ``k = ceil(W C / step)`` nears ``2^50``.
        """
        return summands * self.step * (1 + 2.0**-50 * (self.coordinate_bound + 1))

    def encode(
        self, update: npt.NDArray[np.floating], source: NoiseSource, example_count: int = 1
    ) -> RingArray:
        """``update`` clipped, weighted, stochastically quantized and reduced mod ``2^b``.

        Returns ``len(update) + 1`` ring elements as uint64: the quantized
        ``w x`` and then the weight w. Updates travel as float32 (DESIGN idea 1),
        so a float64 update is rounded to float32 first. ``example_count`` is the weight under
        ``weighting="example_count"`` and ignored under ``"uniform"``.
        """
        weight = self._weight(example_count)
        clipped, _ = clip_to_norm(_finite_vector(update), self.clip_norm)
        reach = self.max_weight * self.clip_norm / self.step
        scaled = clipped.astype(np.float64) * (weight / self.step)
        # A no-op in exact arithmetic (|w x_j| <= W C); it absorbs float rounding.
        np.clip(scaled, -reach, reach, out=scaled)
        integers = np.empty(clipped.size + 1, dtype=np.int64)
        integers[:-1] = stochastic_round(scaled, source)
        integers[-1] = weight
        return to_ring(integers, self.modulus_bits)

    def decode(self, ring_sum: RingArray) -> DecodedSum:
        """The float64 sum of the weighted updates and the total weight from a ring sum."""
        if not isinstance(ring_sum, np.ndarray) or ring_sum.ndim != 1 or ring_sum.size < 1:
            raise RingEncodingError(
                "a ring sum must be a 1-D array of the encoded length (update length + 1, the "
                f"weight last), got {type(ring_sum).__name__} of shape "
                f"{getattr(ring_sum, 'shape', None)}"
            )
        if ring_sum.dtype != np.uint64:
            raise RingEncodingError(
                f"a ring sum must hold uint64 ring elements, got dtype {ring_sum.dtype}"
            )
        signed = from_ring(ring_sum, self.modulus_bits)
        weight = int(signed[-1])
        if weight < 0:
            raise RingEncodingError(
                f"the decoded total weight is {weight} < 0: the ring sum is not a sum of at most "
                f"{self.max_summands} encodings of this encoder (wrong modulus or corrupted sum)"
            )
        return DecodedSum(signed[:-1].astype(np.float64) * self.step, weight)

    def _weight(self, example_count: int) -> int:
        """The weight an update is encoded with, refusing counts the encoder was not sized for."""
        if self.weighting == "uniform":
            return 1
        if (
            isinstance(example_count, bool)
            or not isinstance(example_count, int | np.integer)
            or not 0 <= example_count <= self.max_weight
        ):
            raise RingEncodingError(
                f"example_count must be an int in 0..max_weight={self.max_weight}, got "
                f"{example_count!r}; cap it at max_weight before encoding, or build the encoder "
                "with a larger max_weight (which coarsens the step)"
            )
        return int(example_count)


def _finite_vector(update: npt.NDArray[np.floating]) -> Vector:
    """``update`` as the float32 vector updates travel as, if it is 1-D, float and finite."""
    if (
        not isinstance(update, np.ndarray)
        or update.ndim != 1
        or not np.issubdtype(update.dtype, np.floating)
    ):
        raise RingEncodingError(
            "an update to encode must be a flat 1-D float array (the model's one vector), got "
            f"{type(update).__name__} of shape {getattr(update, 'shape', None)} and dtype "
            f"{getattr(update, 'dtype', None)}"
        )
    if not np.isfinite(update).all():
        raise RingEncodingError(
            "an update to encode holds NaN or infinite values; it cannot be clipped or "
            "quantized: fix the training step that produced it"
        )
    return update.astype(np.float32, copy=False)


def _check_settings(
    clip_norm: float, max_summands: int, modulus_bits: int, weighting: str, max_weight: int
) -> None:
    """Refuse encoder settings out of range, naming the field and what is allowed."""
    if not (isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(
            f"clip_norm must be a positive finite number, got {clip_norm!r}: the L2 bound of one "
            "client's update"
        )
    if isinstance(max_summands, bool) or not isinstance(max_summands, int) or max_summands < 1:
        raise ConfigError(
            f"max_summands must be an int >= 1 (the cohort size), got {max_summands!r}"
        )
    check_modulus_bits(modulus_bits)
    if weighting not in get_args(Weighting):
        raise ConfigError(
            f"weighting must be one of {list(get_args(Weighting))}, got {weighting!r}"
        )
    if isinstance(max_weight, bool) or not isinstance(max_weight, int) or max_weight < 1:
        raise ConfigError(f"max_weight must be an int >= 1, got {max_weight!r}")
    if weighting == "uniform" and max_weight != 1:
        raise ConfigError(
            f"weighting='uniform' gives every update weight 1, so max_weight must be 1, got "
            f"{max_weight}; use weighting='example_count' to weight by example counts"
        )
