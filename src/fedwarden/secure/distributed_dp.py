"""Distributed discrete Gaussian: each client noises its own update, the secure sum carries the DP.

Kairouz, Liu & Steinke (ICML 2021), "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation" (KLS below). Under
secure aggregation the server never sees an update, so it cannot add the noise
itself; each client adds a share of discrete Gaussian noise to an integer
vector, and the sum of at least t shares is the noise of the release.

Client (KLS Algorithm 1, :meth:`DistributedDiscreteGaussian.encode`):

1. clip the update to L2 norm C and scale it by ``1 / granularity`` (gamma);
2. pad it to ``D = 2^k`` coordinates and rotate it with a randomized
   Walsh-Hadamard transform ``H D_xi / sqrt(D)`` (:func:`rotate`), whose signs
   ``xi`` come from a public per-round seed: the rotation flattens the vector
   and is public, not privacy noise;
3. round it by conditional randomized rounding (:func:`conditional_round`):
   stochastic rounding, repeated until the integer vector's L2 norm is at most
   Delta_2 (:func:`rounded_norm_bound`, KLS Proposition 22);
4. add ``N_Z(0, sigma^2)`` noise per coordinate, drawn by the exact vectorised
   sampler of Canonne, Kamath & Steinke (2020) with secure randomness
   (:func:`~fedwarden.privacy.discrete.discrete_gaussian_vector`);
5. reduce modulo ``2^b`` (:func:`~fedwarden.secure.encoding.to_ring`).

Server (KLS Algorithm 2, :meth:`DistributedDiscreteGaussian.decode`): read the
ring sum as signed integers, undo the rotation, multiply by gamma. The division
by the cohort's denominator is the pipeline's.

Privacy (:meth:`DistributedDiscreteGaussian.dp_event`). A client's
contribution is its update; neighbouring cohorts differ in one client's update
(zeroed for ``add_remove``, changed for ``replace_one``), so the sum of the
rounded vectors moves by at most Delta_2 in L2 and Delta_1 in L1 (doubled for
``replace_one``). Secure aggregation aborts below t survivors, so at least t
clients' noise is in every sum; more noise is post-processing (independent
noise added to a t-client release), so the ledger charges t. The sum of t
independent ``N_Z(0, sigma^2)`` satisfies, at every Renyi order alpha > 1
(KLS Proposition 14, Eq. 17, for sigma >= 1/2, with
``tau = 10 sum_{k=1}^{t-1} exp(-2 pi^2 sigma^2 k / (k + 1))``)::

    D_alpha <= (alpha / 2) * min((l2 + tau sqrt(D))^2, l2^2 + 2 l1 tau + tau^2 D),
    l2 = Delta_2 / (sqrt(t) sigma),  l1 = Delta_1 / (sqrt(t) sigma),

that is rho-zCDP with rho half the minimum. (The proposition's third bound,
``alpha l2^2 / 2 + tau D``, is approximate zCDP and is not used: one event can
carry only one of the bounds.) The release is charged as dp-accounting's
``ZCDpEvent(rho)``, whose RDP curve ``rho * alpha`` is exactly that of
``GaussianDpEvent(1 / sqrt(2 rho))`` at sensitivity 1
(:meth:`~DistributedDiscreteGaussian.equivalent_noise_multiplier`). Only the
RDP accountant can account a ``ZCDpEvent``, so the ledger's reported epsilon
for it is the RDP figure: the privacy loss distribution of a continuous
Gaussian is not proven for a sum of discrete Gaussians. No amplification by
client sampling is claimed (the unamplified bound holds for any sampling).

No wrap (:attr:`DistributedDiscreteGaussian.largest_sum`). Every coordinate of
the sum of at most n rounded vectors is at most ``n floor(Delta_2)`` in
magnitude (an L-infinity bound implied by the L2 bound). The sum of at most n
noise shares is ``n sigma^2``-subgaussian (the discrete Gaussian's moment
generating function is at most the continuous one's, Canonne, Kamath & Steinke
2020), so by the subgaussian tail and a union bound over the D coordinates, all
of them stay within ``sqrt(2 n sigma^2 ln(2 D / p))`` except with probability
at most ``p = wrap_probability``. A configuration whose sum of both bounds
reaches ``2^(b-1)`` is refused. A wrap, when it happens with probability below
p, spoils accuracy, never privacy (modular reduction is post-processing).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting import Neighboring
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.clipping import clip_to_norm
from fedwarden.privacy.discrete import discrete_gaussian_vector
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.encoding import (
    RingEncodingError,
    check_modulus_bits,
    from_ring,
    signed_capacity,
    stochastic_round,
    to_ring,
)
from fedwarden.secure.prg import SEED_BYTES, expand_mask

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_WRAP_PROBABILITY",
    "MAX_LOCAL_VARIANCE",
    "MAX_PADDED_DIMENSION",
    "DistributedDiscreteGaussian",
    "conditional_round",
    "hadamard_transform",
    "local_noise_variance",
    "new_rotation_seed",
    "padded_dimension",
    "rotate",
    "rounded_norm_bound",
    "unrotate",
]

DEFAULT_BETA = math.exp(-0.5)
"""KLS's conditional-rounding parameter: a rounding is redrawn with probability at most beta."""

DEFAULT_WRAP_PROBABILITY = 2.0**-40
"""Default bound on the chance that the noise pushes any coordinate of a sum out of the ring."""

MAX_LOCAL_VARIANCE = 1 << 30
"""Largest per-client variance sigma^2 (ring units) accepted: it keeps the exact sampler's
rational arithmetic in int64 (``2 sigma^2 (floor(sigma) + 1)^2 < 2^63``), i.e. on its
vectorised path; beyond it the sampler falls back to Python integers (minutes per client)."""

MAX_PADDED_DIMENSION = 1 << 30
"""Largest padded dimension D: conditional rounding's float64 norm check is rigorous up to it."""

# The float64 dot product of D <= 2^30 integers is within (D 2^-53) / (1 - D 2^-53) < 2^-22 of
# the true squared norm, relatively, in any summation order (Higham, "Accuracy and Stability of
# Numerical Algorithms", Section 3.1, inner products); accepting only
# fl(norm^2) (1 + 2^-20) <= bound^2 keeps the true norm within the bound.
_NORM_CHECK_SLACK = 2.0**-20
# Conditional rounding gives up after enough retries that an honest bound fails with
# probability below 2^-50 (each retry fails with probability at most beta).
_ROUNDING_FAILURE_EXPONENT = 50

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
RingArray = npt.NDArray[np.uint64]


def new_rotation_seed() -> bytes:
    """A fresh 32-byte public rotation seed for one round, from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


def padded_dimension(dimension: int) -> int:
    """The smallest power of two at least ``dimension``: the length the rotation works on."""
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise ConfigError(f"dimension must be an int >= 1, got {dimension!r}")
    return 1 << (dimension - 1).bit_length()


def hadamard_transform(values: FloatArray) -> FloatArray:
    """``H values`` for the unnormalized Sylvester-Hadamard matrix H of order ``len(values)``.

    The fast Walsh-Hadamard transform: log2(D) butterfly stages, each two
    vectorised NumPy operations over the whole vector, O(D log D) in all.
    ``H`` is symmetric with ``H H = D I``. ``len(values)`` must be a power of two.
    """
    size = values.shape[0]
    if values.ndim != 1 or size < 1 or size & (size - 1):
        raise RingEncodingError(
            f"the Walsh-Hadamard transform needs a 1-D vector whose length is a power of two, "
            f"got shape {values.shape}; pad it with padded_dimension()"
        )
    current = values.astype(np.float64, copy=True)
    scratch = np.empty_like(current)
    half = 1
    while half < size:
        pairs = current.reshape(-1, 2, half)
        butterflies = scratch.reshape(-1, 2, half)
        np.add(pairs[:, 0], pairs[:, 1], out=butterflies[:, 0])
        np.subtract(pairs[:, 0], pairs[:, 1], out=butterflies[:, 1])
        current, scratch = scratch, current
        half *= 2
    return current


def _rotation_signs(rotation_seed: bytes, size: int) -> FloatArray:
    """The diagonal ``xi`` in {-1, +1}^size: one bit each of the mask PRG under the seed."""
    bits = expand_mask(rotation_seed, size, 1)
    return 1.0 - 2.0 * bits.astype(np.float64)


def rotate(values: FloatArray, rotation_seed: bytes) -> FloatArray:
    """The randomized Hadamard rotation ``H D_xi values / sqrt(D)`` (KLS Algorithm 1, "flatten").

    Orthogonal: it preserves L2 norms, and :func:`unrotate` inverts it.
    """
    signs = _rotation_signs(rotation_seed, values.shape[0])
    rotated = hadamard_transform(values * signs)
    rotated /= math.sqrt(values.shape[0])
    return rotated


def unrotate(values: FloatArray, rotation_seed: bytes) -> FloatArray:
    """The inverse rotation ``D_xi H values / sqrt(D)`` (KLS Algorithm 2)."""
    unrotated = hadamard_transform(values)
    unrotated *= _rotation_signs(rotation_seed, values.shape[0]) / math.sqrt(values.shape[0])
    return unrotated


def rounded_norm_bound(scaled_clip: float, dimension: int, beta: float) -> float:
    """Delta_2: the L2 bound conditional randomized rounding enforces (KLS Proposition 22).

    For a vector of norm at most ``c = scaled_clip`` in ``dimension`` d
    coordinates, ``Delta_2^2 = min{(c + sqrt(d))^2,
    c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)}``.
    Stochastic rounding meets the first bound always and the second with
    probability at least ``1 - beta``.
    """
    root = math.sqrt(dimension)
    always = (scaled_clip + root) ** 2
    if beta == 0:
        return scaled_clip + root
    likely = (
        scaled_clip**2
        + dimension / 4
        + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + root / 2)
    )
    return math.sqrt(min(always, likely))


def conditional_round(
    values: FloatArray, norm_bound: float, source: NoiseSource, max_attempts: int
) -> IntArray:
    """Stochastic rounding of ``values``, redrawn until its L2 norm is at most ``norm_bound``.

    KLS Algorithm 1, "conditional randomized rounding". The norm is checked
    with a float64 dot product and a relative slack that makes the check
    rigorous (``||z||_2 <= norm_bound`` holds exactly for every vector
    returned). Raises RingEncodingError after ``max_attempts`` failed draws.
    """
    squared_bound = norm_bound * norm_bound
    for _ in range(max_attempts):
        rounded = stochastic_round(values, source)
        as_float = rounded.astype(np.float64)
        if float(np.dot(as_float, as_float)) * (1 + _NORM_CHECK_SLACK) <= squared_bound:
            return rounded
    raise RingEncodingError(
        f"conditional randomized rounding found no rounding of L2 norm <= {norm_bound:.6g} in "
        f"{max_attempts} draws: the input's norm ({float(np.linalg.norm(values)):.6g}) is too "
        "close to or above the bound; clip the input to the bound's clip norm first"
    )


def local_noise_variance(
    noise_multiplier: float, clip_norm: float, granularity: float, min_survivors: int
) -> int:
    """The per-client sigma^2 (ring units) with which t clients' noise reaches std ``z C``.

    The target central standard deviation ``z C`` on the sum is ``z C / gamma``
    in ring units, so t shares of variance ``(z C / gamma)^2 / t`` reach it;
    the result is rounded up to an integer (the exact sampler's parameter),
    so the sum's noise is at least the target, and by less than
    ``t gamma^2`` in variance above it.
    """
    _check_positive(noise_multiplier, "noise_multiplier")
    _check_positive(clip_norm, "clip_norm")
    _check_positive(granularity, "granularity")
    _check_count(min_survivors, "min_survivors")
    target = noise_multiplier * clip_norm / granularity
    variance = max(1, math.ceil(target * target / min_survivors))
    if variance > MAX_LOCAL_VARIANCE:
        raise ConfigError(
            f"each client would need noise variance {variance} (ring units), above "
            f"MAX_LOCAL_VARIANCE={MAX_LOCAL_VARIANCE}, where exact sampling is no longer "
            "vectorised; choose a coarser granularity (DistributedDiscreteGaussian.calibrated "
            "picks one)"
        )
    return variance


@dataclass(frozen=True)
class DistributedDiscreteGaussian:
    """The distributed discrete Gaussian mechanism of one round (KLS Theorem 1, Algorithms 1-2).

    ``clip_norm`` C bounds each update's L2 norm; ``granularity`` gamma is the
    grid step in update units; ``local_variance`` sigma^2 is each client's
    noise variance in ring units (an int in ``1..MAX_LOCAL_VARIANCE``);
    ``dimension`` d is the update length (padded to a power of two D);
    ``cohort_size`` n is the most clients in a sum, ``min_survivors`` t the
    fewest (secure aggregation's threshold); ``modulus_bits`` b; ``beta`` the
    conditional-rounding parameter in [0, 1); ``wrap_probability`` the accepted
    chance that the noise wraps a sum. A configuration whose sum could wrap is
    refused with a ConfigError; :meth:`calibrated` builds the finest one that
    cannot for a target noise multiplier. See the module docstring.
    """

    clip_norm: float
    granularity: float
    local_variance: int
    dimension: int
    cohort_size: int
    min_survivors: int
    modulus_bits: int = 32
    beta: float = DEFAULT_BETA
    wrap_probability: float = DEFAULT_WRAP_PROBABILITY

    def __post_init__(self) -> None:
        _check_positive(self.clip_norm, "clip_norm")
        _check_positive(self.granularity, "granularity")
        _check_local_variance(self.local_variance)
        if padded_dimension(self.dimension) > MAX_PADDED_DIMENSION:
            raise ConfigError(
                f"dimension {self.dimension} pads to more than MAX_PADDED_DIMENSION="
                f"{MAX_PADDED_DIMENSION} coordinates; split the model into several releases"
            )
        _check_count(self.cohort_size, "cohort_size")
        _check_count(self.min_survivors, "min_survivors")
        if self.min_survivors > self.cohort_size:
            raise ConfigError(
                f"min_survivors (t={self.min_survivors}) cannot exceed cohort_size "
                f"(n={self.cohort_size}): t is secure aggregation's threshold within the cohort"
            )
        check_modulus_bits(self.modulus_bits)
        if not (isinstance(self.beta, int | float) and 0 <= self.beta < 1):
            raise ConfigError(
                f"beta must be in [0, 1), got {self.beta!r}; KLS use exp(-0.5) (DEFAULT_BETA)"
            )
        if not (isinstance(self.wrap_probability, int | float) and 0 < self.wrap_probability < 1):
            raise ConfigError(
                f"wrap_probability must be in (0, 1), got {self.wrap_probability!r}; the default "
                f"is 2^-40"
            )
        capacity = signed_capacity(self.modulus_bits)
        if self.largest_sum > capacity:
            raise ConfigError(
                f"a noisy sum of n={self.cohort_size} clients could wrap around "
                f"Z_2^{self.modulus_bits}: with clip_norm C={self.clip_norm} and granularity "
                f"gamma={self.granularity:.6g}, rounded vectors have L2 norm up to "
                f"Delta_2={self.norm_bound:.6g}, so the signal can reach "
                f"n*floor(Delta_2)={self.cohort_size * math.floor(self.norm_bound)}, and the "
                f"noise of n shares of variance {self.local_variance} exceeds "
                f"{self.noise_tail_bound:.6g} with probability at most "
                f"{self.wrap_probability:.3g}; "
                f"the largest sum {self.largest_sum} must stay below 2^(b-1)={capacity + 1} "
                f"(b={self.modulus_bits}); use a coarser granularity with less local noise "
                "(DistributedDiscreteGaussian.calibrated picks the finest that fits), raise "
                "modulus_bits, or lower the cohort size"
            )

    @classmethod
    def calibrated(
        cls,
        clip_norm: float,
        noise_multiplier: float,
        dimension: int,
        cohort_size: int,
        min_survivors: int,
        modulus_bits: int = 32,
        beta: float = DEFAULT_BETA,
        wrap_probability: float = DEFAULT_WRAP_PROBABILITY,
    ) -> DistributedDiscreteGaussian:
        """The finest-grained mechanism whose t-client noise has std ``noise_multiplier * C``.

        Searches the largest integer sigma^2 <= MAX_LOCAL_VARIANCE whose
        mechanism cannot wrap, with ``gamma = z C / sqrt(t sigma^2)``, so that
        ``t sigma^2 gamma^2 = (z C)^2``: t survivors' noise is exactly the
        target in update units. A finer grid shrinks the rounding's inflation
        of the sensitivity (Delta_2 against C / gamma).
        """
        _check_positive(noise_multiplier, "noise_multiplier")
        _check_positive(clip_norm, "clip_norm")
        _check_count(min_survivors, "min_survivors")

        def build(variance: int) -> DistributedDiscreteGaussian:
            granularity = noise_multiplier * clip_norm / math.sqrt(min_survivors * variance)
            return cls(
                clip_norm,
                granularity,
                variance,
                dimension,
                cohort_size,
                min_survivors,
                modulus_bits,
                beta,
                wrap_probability,
            )

        def fits(variance: int) -> bool:
            try:
                build(variance)
            except ConfigError:
                return False
            return True

        build(1)  # refuses, naming the numbers, when even sigma^2 = 1 could wrap
        low, high = 1, MAX_LOCAL_VARIANCE + 1  # low fits; high does not, or is out of range
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        return build(low)

    @property
    def padded_dimension(self) -> int:
        """D: the update length padded to a power of two, the length of every ring vector."""
        return padded_dimension(self.dimension)

    @property
    def norm_bound(self) -> float:
        """Delta_2 (ring units): the L2 norm bound of every client's rounded vector."""
        return rounded_norm_bound(
            self.clip_norm / self.granularity, self.padded_dimension, self.beta
        )

    @property
    def l1_bound(self) -> float:
        """Delta_1 (ring units): ``min(Delta_2^2, sqrt(D) Delta_2)``; on Z, ``|z_j| <= z_j^2``."""
        bound = self.norm_bound
        return min(bound * bound, math.sqrt(self.padded_dimension) * bound)

    @property
    def noise_tail_bound(self) -> float:
        """The bound n noise shares stay within on all coordinates w.p. >= 1 - wrap_probability."""
        return math.sqrt(
            2
            * self.cohort_size
            * self.local_variance
            * math.log(2 * self.padded_dimension / self.wrap_probability)
        )

    @property
    def largest_sum(self) -> int:
        """The largest coordinate magnitude of a noisy sum (except w.p. wrap_probability)."""
        return self.cohort_size * math.floor(self.norm_bound) + math.ceil(self.noise_tail_bound)

    @property
    def central_noise_std(self) -> float:
        """The standard deviation, in update units, of t survivors' summed noise per coordinate."""
        return self.granularity * math.sqrt(self.min_survivors * self.local_variance)

    @property
    def tau(self) -> float:
        """KLS's tau for t shares: ``10 sum_{k=1}^{t-1} exp(-2 pi^2 sigma^2 k / (k + 1))``."""
        k = np.arange(1, self.min_survivors, dtype=np.float64)
        exponents = -2 * math.pi**2 * self.local_variance * k / (k + 1)
        return 10 * float(np.sum(np.exp(exponents)))

    def zcdp_rho(self, neighboring: Neighboring = "add_remove") -> float:
        """rho of the rho-zCDP guarantee of one round with t survivors (KLS Proposition 14)."""
        factor = {"add_remove": 1.0, "replace_one": 2.0}.get(neighboring)
        if factor is None:
            raise ConfigError(
                f"neighboring must be 'add_remove' or 'replace_one', got {neighboring!r}"
            )
        central = math.sqrt(self.min_survivors * self.local_variance)
        l2 = factor * self.norm_bound / central
        l1 = factor * self.l1_bound / central
        tau = self.tau
        dimension = self.padded_dimension
        shifted = (l2 + tau * math.sqrt(dimension)) ** 2
        spread = l2 * l2 + 2 * l1 * tau + tau * tau * dimension
        return min(shifted, spread) / 2

    def dp_event(self, neighboring: Neighboring = "add_remove") -> dp_event.DpEvent:
        """The ledger's event for one round: ``ZCDpEvent(rho)``, accounted by RDP only."""
        return dp_event.ZCDpEvent(self.zcdp_rho(neighboring))

    def equivalent_noise_multiplier(self, neighboring: Neighboring = "add_remove") -> float:
        """The fedwarden noise multiplier whose GaussianDpEvent has this round's RDP curve.

        ``ZCDpEvent(rho)`` has RDP ``rho alpha``, as does a Gaussian of noise
        over sensitivity ``1 / sqrt(2 rho)``. fedwarden's multipliers are over
        C, which is the sensitivity for ``add_remove`` and half of it for
        ``replace_one`` (see :mod:`fedwarden.privacy.accounting`). For reports;
        charge :meth:`dp_event`.
        """
        over_sensitivity = 1 / math.sqrt(2 * self.zcdp_rho(neighboring))
        return over_sensitivity if neighboring == "add_remove" else 2 * over_sensitivity

    def encode(
        self, update: npt.NDArray[np.floating], rotation_seed: bytes, source: NoiseSource
    ) -> RingArray:
        """One client's noisy ring vector of length D (KLS Algorithm 1; module docstring)."""
        scaled = self._clip_and_scale(update)
        rotated = rotate(scaled, rotation_seed)
        rounded = conditional_round(rotated, self.norm_bound, source, self._rounding_attempts())
        rounded += discrete_gaussian_vector(
            Fraction(self.local_variance), self.padded_dimension, source
        )
        return to_ring(rounded, self.modulus_bits)

    def decode(self, ring_sum: RingArray, rotation_seed: bytes) -> FloatArray:
        """The float64 noisy sum of the clipped updates, from the ring sum (KLS Algorithm 2).

        Raises :class:`RingEncodingError` for a sum no cohort of honest encoders
        produces (a coordinate beyond :attr:`largest_sum`).
        """
        if (
            not isinstance(ring_sum, np.ndarray)
            or ring_sum.dtype != np.uint64
            or ring_sum.shape != (self.padded_dimension,)
        ):
            raise RingEncodingError(
                f"a ring sum must be a uint64 vector of the padded length D="
                f"{self.padded_dimension}, got {type(ring_sum).__name__} of shape "
                f"{getattr(ring_sum, 'shape', None)} and dtype {getattr(ring_sum, 'dtype', None)}"
            )
        signed = from_ring(ring_sum, self.modulus_bits).astype(np.float64)
        largest = float(np.max(np.abs(signed))) if signed.size else 0.0
        if largest > self.largest_sum:
            raise RingEncodingError(
                f"a coordinate of the ring sum is {largest:.0f}, beyond the {self.largest_sum} "
                f"that {self.cohort_size} clients' rounded, noised vectors reach (except with "
                f"probability {self.wrap_probability}): a client sent a vector its encoder cannot "
                "produce"
            )
        unrotated = unrotate(signed, rotation_seed)
        return unrotated[: self.dimension] * self.granularity

    def _clip_and_scale(self, update: npt.NDArray[np.floating]) -> FloatArray:
        """``update`` clipped to C, scaled by 1 / gamma and zero-padded to D coordinates."""
        if (
            not isinstance(update, np.ndarray)
            or update.shape != (self.dimension,)
            or not np.issubdtype(update.dtype, np.floating)
        ):
            raise RingEncodingError(
                f"an update must be a float vector of length {self.dimension}, got "
                f"{type(update).__name__} of shape {getattr(update, 'shape', None)} and dtype "
                f"{getattr(update, 'dtype', None)}"
            )
        if not np.isfinite(update).all():
            raise RingEncodingError(
                "an update holds NaN or infinite values; it cannot be clipped or noised: fix the "
                "training step that produced it"
            )
        clipped, _ = clip_to_norm(update.astype(np.float32, copy=False), self.clip_norm)
        padded = np.zeros(self.padded_dimension, dtype=np.float64)
        padded[: self.dimension] = clipped
        padded /= self.granularity
        return padded

    def _rounding_attempts(self) -> int:
        """Draws after which an honest conditional rounding fails with probability below 2^-50.

        With beta = 0 the bound is one rounding always meets; the draws left
        only cover the float check's slack.
        """
        if self.beta == 0:
            return _ROUNDING_FAILURE_EXPONENT
        return max(1, math.ceil(_ROUNDING_FAILURE_EXPONENT * math.log(2) / -math.log(self.beta)))


def _check_positive(value: float, name: str) -> None:
    """Refuse a value that is not a positive finite number, naming it."""
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")


def _check_count(value: int, name: str) -> None:
    """Refuse a count that is not an int >= 1, naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _check_local_variance(value: int) -> None:
    """Refuse a per-client variance outside the exact sampler's vectorised range."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_LOCAL_VARIANCE
    ):
        raise ConfigError(
            f"local_variance must be an int in 1..MAX_LOCAL_VARIANCE={MAX_LOCAL_VARIANCE} (the "
            f"per-client sigma^2 in ring units; KLS Proposition 14 needs sigma >= 1/2), got "
            f"{value!r}; local_noise_variance() computes it from a noise multiplier"
        )
