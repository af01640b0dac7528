"""The DP events of fedwarden's releases: Gaussian sums over sampled cohorts, as DpEvents.

An event says what happened (the mechanism and its parameters), never how it
is accounted: any accountant can consume it (see
:mod:`fedwarden.privacy.accounting.accountants`). ``noise_multiplier`` is
always the noise standard deviation over the clipping bound C of one privacy
unit's contribution (the package docstring's "Units").
"""

from __future__ import annotations

import numbers

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting.library import dp_event


def poisson_gaussian(
    sampling_rate: float, noise_multiplier: float, steps: int = 1
) -> dp_event.DpEvent:
    """``steps`` releases of a Poisson-sampled Gaussian sum.

    The sampled Gaussian of Abadi et al. 2016 (DP-SGD) and McMahan et al. 2018 (DP-FedAvg).

    Each unit (client for DP-FedAvg, example for DP-SGD) is in a release's sample
    independently with probability ``sampling_rate``; the sum of clipped
    contributions gets N(0, (noise_multiplier * C)^2) noise. A rate of 1 is no
    sampling: the event is then the Gaussian mechanism itself.
    """
    _check_sampling_rate(sampling_rate)
    _check_noise_multiplier(noise_multiplier)
    check_steps(steps)
    gaussian = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1:
        return dp_event.SelfComposedDpEvent(gaussian, steps)
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(sampling_rate, gaussian), steps
    )


def fixed_size_gaussian(
    population: int, cohort_size: int, noise_multiplier: float, steps: int = 1
) -> dp_event.DpEvent:
    """``steps`` releases of a Gaussian sum over a fixed-size cohort.

    Sampling without replacement as analysed by Wang, Balle & Kasiviswanathan 2019.

    Each release draws ``cohort_size`` distinct units uniformly from
    ``population``. Only the RDP accountant can account it, and only with
    ``replace_one`` neighbours (the population size is public);
    ``noise_multiplier`` is noise over the clipping bound C, as everywhere in
    fedwarden (the RDP accountant is given z / 2, see the package docstring).
    """
    if not isinstance(population, numbers.Integral) or not isinstance(
        cohort_size, numbers.Integral
    ):
        raise ConfigError(
            f"population ({population!r}) and cohort_size ({cohort_size!r}) must be whole "
            "numbers of units"
        )
    if not 1 <= cohort_size <= population:
        raise ConfigError(
            f"cohort_size must be between 1 and the population ({population}), got "
            f"{cohort_size}; a cohort is drawn without replacement from the population"
        )
    _check_noise_multiplier(noise_multiplier)
    check_steps(steps)
    return dp_event.SelfComposedDpEvent(
        dp_event.SampledWithoutReplacementDpEvent(
            int(population), int(cohort_size), dp_event.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )


def _check_sampling_rate(sampling_rate: float) -> None:
    if not (isinstance(sampling_rate, numbers.Real) and 0 < sampling_rate <= 1):
        raise ConfigError(
            f"sampling_rate must be in (0, 1], got {sampling_rate!r}: the probability that a "
            "unit takes part in a release (1 = every unit, no sampling)"
        )


def _check_noise_multiplier(noise_multiplier: float) -> None:
    if not (isinstance(noise_multiplier, numbers.Real) and noise_multiplier > 0):
        raise ConfigError(
            f"noise_multiplier must be > 0, got {noise_multiplier!r}; a release without noise "
            "has no differential privacy guarantee"
        )


def check_steps(steps: int, what: str = "steps") -> None:
    """Refuse a number of releases that is not a whole number >= 1."""
    if not (isinstance(steps, numbers.Integral) and steps >= 1):
        raise ConfigError(f"{what} must be a whole number >= 1, got {steps!r}")
