"""Exact samplers for the discrete Gaussian and discrete Laplace distributions.

Canonne, Kamath & Steinke (2020), "The Discrete Gaussian for Differential
Privacy", Algorithms 1-3: Bernoulli(exp(-gamma)), the discrete Laplace and the
discrete Gaussian, sampled with integer and rational arithmetic only and with
uniform integers from a :class:`~fedwarden.privacy.randomness.NoiseSource` as
the only randomness. No floating-point number is ever computed, so the output
distribution is exactly the one the privacy proofs are about and there are no
low-order bits to attack (Mironov 2012). Use them for scalar releases and for
noise on an integer grid (inside secure aggregation); model-update vectors
in floating point use :meth:`NoiseSource.gaussian` (see its module).

Parameters are exact rationals: pass a :class:`fractions.Fraction` or an int
(``Fraction(25, 4)`` or ``Fraction("6.25")`` for sigma = 2.5). Floats are
refused because ``Fraction(0.1)`` is not one tenth.

The vector samplers run the same algorithms on NumPy arrays in rounds: every
rejection loop and every run of Bernoulli trials advances all undecided
coordinates at once, and a coordinate leaves the round in which its own loop
would have ended, so each coordinate follows exactly the scalar algorithm.
Each Bernoulli(a / (d k)) trial draws ``u`` uniform in ``[0, d)`` and, only on
the tie ``u == a // k``, ``v`` uniform in ``[0, k)``: ``u k + v`` is uniform in
``[0, d k)`` and is below ``a`` exactly when the trial succeeds, so no product
can overflow int64. When a parameter is too large for int64 arithmetic, the
vector samplers fall back to the scalar ones, which use Python integers.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Rational

import numpy as np
import numpy.typing as npt

from fedwarden.privacy.randomness import NoiseSource, PrivacyNoiseError

__all__ = [
    "bernoulli_exp",
    "discrete_gaussian",
    "discrete_gaussian_vector",
    "discrete_laplace",
    "discrete_laplace_vector",
]

_INT64_MAX = (1 << 63) - 1
_SQUARE_FITS_INT64 = math.isqrt(_INT64_MAX)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _exact(value: Fraction | int, name: str, *, positive: bool) -> Fraction:
    """``value`` as a Fraction, refusing floats (inexact) and values out of range."""
    if isinstance(value, bool) or not isinstance(value, Rational):
        raise PrivacyNoiseError(
            f"{name} must be an exact rational (fractions.Fraction or int), got {value!r}: "
            f"write e.g. Fraction('2.5') or Fraction(25, 4) instead of a float."
        )
    exact = Fraction(value)
    if exact < 0 or (positive and exact == 0):
        bound = "> 0" if positive else ">= 0"
        raise PrivacyNoiseError(f"{name} must be {bound}, got {exact}.")
    return exact


def _check_size(size: int) -> int:
    """``size`` if it is a non-negative int."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise PrivacyNoiseError(f"size must be a non-negative int, got {size!r}.")
    return size


# --- scalar samplers (Python integers, any size) --------------------------------------------


def _bernoulli_exp_at_most_one(numerator: int, denominator: int, source: NoiseSource) -> bool:
    """Bernoulli(exp(-numerator / denominator)) for a ratio in [0, 1] (CKS Alg. 1, first case).

    Draw Bernoulli(gamma / k) for k = 1, 2, ... until one fails; the coin is
    heads when the failing k is odd.
    """
    k = 1
    while source.randbelow(denominator * k) < numerator:
        k += 1
    return k % 2 == 1


def _bernoulli_exp_ratio(numerator: int, denominator: int, source: NoiseSource) -> bool:
    """Bernoulli(exp(-numerator / denominator)) for any non-negative ratio (CKS Alg. 1)."""
    whole, remainder = divmod(numerator, denominator)
    for _ in range(whole):
        if not _bernoulli_exp_at_most_one(1, 1, source):
            return False
    return _bernoulli_exp_at_most_one(remainder, denominator, source)


def bernoulli_exp(gamma: Fraction, source: NoiseSource) -> bool:
    """A coin that is True with probability exactly exp(-gamma), for rational gamma >= 0.

    Canonne, Kamath & Steinke (2020), Algorithm 1: exp(-gamma) is the product
    of floor(gamma) coins of exp(-1) and one of exp(-(gamma - floor(gamma))).
    """
    exact = _exact(gamma, "gamma", positive=False)
    return _bernoulli_exp_ratio(exact.numerator, exact.denominator, source)


def _discrete_laplace_ratio(t: int, s: int, source: NoiseSource) -> int:
    """The discrete Laplace with scale t / s (CKS Alg. 2)."""
    while True:
        remainder = source.randbelow(t)
        if not _bernoulli_exp_at_most_one(remainder, t, source):
            continue
        multiples = 0
        while _bernoulli_exp_at_most_one(1, 1, source):
            multiples += 1
        magnitude = (remainder + t * multiples) // s
        negative = source.randbelow(2) == 1
        if negative and magnitude == 0:
            continue
        return -magnitude if negative else magnitude


def discrete_laplace(scale: Fraction, source: NoiseSource) -> int:
    """An integer x with probability proportional to exp(-|x| / scale), exactly.

    Canonne, Kamath & Steinke (2020), Algorithm 2: a geometric magnitude built
    from exp(-u / t) and exp(-1) coins, a random sign, and zero counted once.
    """
    exact = _exact(scale, "scale", positive=True)
    return _discrete_laplace_ratio(exact.numerator, exact.denominator, source)


def _gaussian_parameters(sigma_squared: Fraction) -> tuple[int, int, int]:
    """``(p, q, t)`` with sigma**2 = p / q and CKS's Laplace scale t = floor(sigma) + 1."""
    p, q = sigma_squared.numerator, sigma_squared.denominator
    return p, q, math.isqrt(p // q) + 1


def discrete_gaussian(sigma_squared: Fraction, source: NoiseSource) -> int:
    """An integer x with probability proportional to exp(-x**2 / (2 sigma**2)), exactly.

    Canonne, Kamath & Steinke (2020), Algorithm 3: propose y from the discrete
    Laplace with scale t = floor(sigma) + 1 and accept it with probability
    exp(-(|y| - sigma**2 / t)**2 / (2 sigma**2)). With sigma**2 = p / q that
    exponent is the integer ratio (|y| t q - p)**2 / (2 p q t**2).
    """
    exact = _exact(sigma_squared, "sigma_squared", positive=True)
    p, q, t = _gaussian_parameters(exact)
    while True:
        proposal = _discrete_laplace_ratio(t, 1, source)
        distance = abs(proposal) * t * q - p
        if _bernoulli_exp_ratio(distance * distance, 2 * p * q * t * t, source):
            return proposal


# --- vector samplers (NumPy rounds over int64, same algorithms) -----------------------------


def _bernoulli_ratio_batch(
    numerators: IntArray, denominator: int, k: int, source: NoiseSource
) -> BoolArray:
    """Coins that are True with probability numerators / (denominator * k), exactly."""
    drawn = source.integers(denominator, numerators.size)
    quotients = numerators // k
    heads = drawn < quotients
    if k > 1:
        ties = np.flatnonzero(drawn == quotients)
        if ties.size:
            heads[ties] = source.integers(k, ties.size) < numerators[ties] % k
    return heads


def _bernoulli_exp_at_most_one_batch(
    numerators: IntArray, denominator: int, source: NoiseSource
) -> BoolArray:
    """Coins of exp(-numerators / denominator), each ratio in [0, 1] (CKS Alg. 1, in rounds)."""
    heads = np.empty(numerators.size, dtype=np.bool_)
    running = np.arange(numerators.size)
    k = 1
    while running.size:
        continues = _bernoulli_ratio_batch(numerators[running], denominator, k, source)
        heads[running[~continues]] = k % 2 == 1
        running = running[continues]
        k += 1
    return heads


def _exp_minus_one_batch(count: int, source: NoiseSource) -> BoolArray:
    """``count`` coins of exp(-1)."""
    return _bernoulli_exp_at_most_one_batch(np.ones(count, dtype=np.int64), 1, source)


def _bernoulli_exp_batch(
    wholes: IntArray, remainders: IntArray, denominator: int, source: NoiseSource
) -> BoolArray:
    """Coins of exp(-(wholes + remainders / denominator)) (CKS Alg. 1, in rounds)."""
    heads = _bernoulli_exp_at_most_one_batch(remainders, denominator, source)
    running = np.flatnonzero(heads & (wholes > 0))
    trial = 1
    while running.size:
        survived = _exp_minus_one_batch(running.size, source)
        heads[running[~survived]] = False
        running = running[survived]
        running = running[wholes[running] > trial]
        trial += 1
    return heads


def _discrete_laplace_batch(t: int, s: int, size: int, source: NoiseSource) -> IntArray:
    """``size`` discrete Laplace draws with scale t / s (CKS Alg. 2, rejections in rounds)."""
    samples = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        remainders = source.integers(t, pending.size)
        kept = _bernoulli_exp_at_most_one_batch(remainders, t, source)
        remainders, slots = remainders[kept], pending[kept]
        multiples = np.zeros(remainders.size, dtype=np.int64)
        running = np.arange(remainders.size)
        while running.size:
            running = running[_exp_minus_one_batch(running.size, source)]
            multiples[running] += 1
        if multiples.size and int(multiples.max()) > (_INT64_MAX - t) // t:
            raise PrivacyNoiseError(
                f"a discrete Laplace draw with scale {Fraction(t, s)} exceeded int64; "
                f"use discrete_laplace for Python-int results."
            )
        magnitudes = (remainders + t * multiples) // s
        negative = source.integers(2, magnitudes.size) == 1
        accepted = ~(negative & (magnitudes == 0))
        samples[slots[accepted]] = np.where(negative, -magnitudes, magnitudes)[accepted]
        done = np.zeros(pending.size, dtype=np.bool_)
        done[np.flatnonzero(kept)[accepted]] = True
        pending = pending[~done]
    return samples


def _scalar_fallback(draw: list[int], what: str) -> IntArray:
    """Scalar draws as an int64 array, refusing values int64 cannot hold."""
    try:
        return np.array(draw, dtype=np.int64)
    except OverflowError as error:
        raise PrivacyNoiseError(
            f"a {what} draw exceeded int64; use the scalar sampler for Python-int results."
        ) from error


def discrete_laplace_vector(scale: Fraction, size: int, source: NoiseSource) -> IntArray:
    """``size`` independent exact discrete Laplace draws (CKS Alg. 2, vectorised in rounds)."""
    exact = _exact(scale, "scale", positive=True)
    _check_size(size)
    t, s = exact.numerator, exact.denominator
    if t > _INT64_MAX or s > _INT64_MAX:
        draws = [_discrete_laplace_ratio(t, s, source) for _ in range(size)]
        return _scalar_fallback(draws, "discrete Laplace")
    return _discrete_laplace_batch(t, s, size, source)


def _gaussian_acceptance_batch(
    magnitudes: IntArray, p: int, q: int, t: int, source: NoiseSource
) -> BoolArray:
    """CKS Alg. 3's acceptance coins exp(-(m t q - p)**2 / (2 p q t**2)) for magnitudes m.

    Squares that int64 holds are decided in rounds; the rare larger ones (far
    in the tail, where the coin is almost surely tails) with Python integers.
    """
    denominator = 2 * p * q * t * t
    fits = magnitudes <= _INT64_MAX // (t * q)
    distances = np.abs(np.where(fits, magnitudes, 0) * (t * q) - p)
    small = fits & (distances <= _SQUARE_FITS_INT64)
    accepted = np.empty(magnitudes.size, dtype=np.bool_)
    squares = distances[small] * distances[small]
    accepted[small] = _bernoulli_exp_batch(
        squares // denominator, squares % denominator, denominator, source
    )
    for index in np.flatnonzero(~small):
        distance = int(magnitudes[index]) * t * q - p
        accepted[index] = _bernoulli_exp_ratio(distance * distance, denominator, source)
    return accepted


def discrete_gaussian_vector(sigma_squared: Fraction, size: int, source: NoiseSource) -> IntArray:
    """``size`` independent exact discrete Gaussian draws (CKS Alg. 3, vectorised in rounds)."""
    exact = _exact(sigma_squared, "sigma_squared", positive=True)
    _check_size(size)
    p, q, t = _gaussian_parameters(exact)
    if 2 * p * q * t * t > _INT64_MAX:
        draws = [discrete_gaussian(exact, source) for _ in range(size)]
        return _scalar_fallback(draws, "discrete Gaussian")
    samples = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        proposals = _discrete_laplace_batch(t, 1, pending.size, source)
        accepted = _gaussian_acceptance_batch(np.abs(proposals), p, q, t, source)
        samples[pending[accepted]] = proposals[accepted]
        pending = pending[~accepted]
    return samples
