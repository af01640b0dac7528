"""Statistics of empirical privacy audits: lower bounds on epsilon from an auditor's guesses.

An auditor plants canaries, trains, and guesses which canaries were trained
on (the procedures are in :mod:`fedwarden.audits.dp_audit`). The functions
here turn the guesses' accuracy into a statistical lower bound on epsilon:
with probability ``confidence``, no (epsilon, delta)-DP mechanism with a
smaller epsilon lets the guesses be this good.

- One run (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1)
  Training Run"): ``m`` canaries, each included independently with
  probability 1/2; the auditor guesses "in" for the highest scores and "out"
  for the lowest, abstaining on the rest. Theorem 5.2 bounds the probability
  of ``v`` or more correct guesses out of ``r`` under (epsilon, delta)-DP;
  :func:`one_run_p_value` is the paper's algorithm (Appendix D), and
  :func:`one_run_epsilon_lower_bound` the largest epsilon it rejects.
  :func:`one_run_audit` tries several guess counts, each at confidence
  ``1 - (1 - confidence) / (number of counts)`` (Bonferroni), so the bound
  holds at ``confidence`` whichever count gives it.
- Many runs (Jagielski, Ullman & Oprea 2020; Nasr, Song, Thakurta, Papernot
  & Carlini 2021): a threshold on the canary's score is a test whose
  false-positive and false-negative rates have Clopper-Pearson upper bounds,
  and (epsilon, delta)-DP implies ``FPR + e^eps FNR >= 1 - delta`` and the
  same with the rates swapped, so ``eps >= log((1 - delta - FNR) / FPR)``.
  The threshold is chosen on half of the runs and the bound computed on the
  other half, so the choice does not inflate it.
- An estimate, not a bound (Andrew, Kairouz, Oh, Oprea, McMahan &
  Suriyakumar, ICLR 2024): Gaussians fitted to the inserted and the unused
  canaries' scores, and the epsilon at ``delta`` of the Gaussian pair
  (:func:`gaussian_fit_epsilon`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from fedwarden.core.errors import ConfigError, DataError

FloatArray = npt.NDArray[np.float64]

GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Shares of the canaries the one-run auditor guesses on (half "in", half "out")."""

_BISECTION_STEPS = 40
_EPSILON_SEARCH_CEILING = 100.0
_STD_FLOOR = 1e-12
"""Fitted standard deviations are kept at least this large (identical scores)."""

__all__ = [
    "GUESS_FRACTIONS",
    "check_confidence",
    "clopper_pearson",
    "gaussian_fit_epsilon",
    "gaussian_pair_epsilon",
    "multi_run_epsilon_lower_bound",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "threshold_epsilon_lower_bound",
]


def one_run_p_value(
    num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float
) -> float:
    """The chance of ``num_correct`` or more right guesses under (epsilon, delta)-DP.

    Steinke, Nasr & Jagielski 2023, Theorem 5.2 as computed by their
    Appendix D algorithm: ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]`` plus
    ``2 m delta`` times the largest ``P[v - i <= Binomial < v] / i``.
    """
    _check_counts(num_canaries, num_guesses, num_correct)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ConfigError(f"epsilon={epsilon} must be >= 0 and delta={delta} in [0, 1]")
    accuracy = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(num_correct - 1, num_guesses, accuracy))
    if delta == 0 or num_correct == 0:
        return min(tail, 1.0)
    below = stats.binom.pmf(np.arange(num_correct - 1, -1, -1), num_guesses, accuracy)
    ratio = float(np.max(np.cumsum(below) / np.arange(1, num_correct + 1)))
    return min(tail + 2 * num_canaries * delta * ratio, 1.0)


def one_run_epsilon_lower_bound(
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """The largest epsilon that ``num_correct`` of ``num_guesses`` right guesses rejects.

    Every epsilon below the returned one has p-value (:func:`one_run_p_value`)
    under ``1 - confidence``; 0 when even epsilon 0 is not rejected. Bisection
    as in the paper's ``get_eps_audit``.
    """
    check_confidence(confidence)
    significance = 1.0 - confidence

    def rejected(epsilon: float) -> bool:
        value = one_run_p_value(num_canaries, num_guesses, num_correct, epsilon, delta)
        return value < significance

    if not rejected(0.0):
        return 0.0
    upper = 1.0
    while rejected(upper):
        if upper >= _EPSILON_SEARCH_CEILING:
            return upper
        upper *= 2.0
    lower = 0.0
    for _ in range(_BISECTION_STEPS):
        middle = (lower + upper) / 2.0
        if rejected(middle):
            lower = middle
        else:
            upper = middle
    return lower


def one_run_audit(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    delta: float,
    confidence: float = 0.95,
    guess_fractions: Sequence[float] = GUESS_FRACTIONS,
) -> tuple[float, int, int]:
    """The one-run bound from canary ``scores`` and whether each was ``included``.

    For each fraction ``f`` the auditor guesses "in" for the ``f m / 2``
    highest scores and "out" for the ``f m / 2`` lowest; each count is tested
    at the Bonferroni-corrected confidence. Returns the best bound with its
    number of guesses and of correct guesses.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(included, dtype=np.bool_).reshape(-1)
    if values.shape != truth.shape or not len(values):
        raise DataError(
            f"one-run audit needs one score per canary and one inclusion flag per canary; got "
            f"{values.shape[0]} scores and {truth.shape[0]} flags"
        )
    if not guess_fractions or not all(0 < f <= 1 for f in guess_fractions):
        raise ConfigError(f"guess_fractions {list(guess_fractions)} must be in (0, 1]")
    check_confidence(confidence)
    corrected = 1.0 - (1.0 - confidence) / len(guess_fractions)
    order = np.argsort(-values, kind="stable")
    ranked = truth[order]
    num_canaries = len(values)
    best = (0.0, 0, 0)
    for fraction in guess_fractions:
        per_side = max(1, int(fraction * num_canaries) // 2)
        correct = int(ranked[:per_side].sum()) + int((~ranked[num_canaries - per_side :]).sum())
        guesses = 2 * per_side
        bound = one_run_epsilon_lower_bound(num_canaries, guesses, correct, delta, corrected)
        if bound > best[0] or best[1] == 0:
            best = (bound, guesses, correct)
    return best


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval of a binomial proportion at ``confidence``.

    Each end misses with probability at most ``(1 - confidence) / 2``
    (Clopper & Pearson 1934): the beta quantiles
    ``Beta(alpha/2; k, n-k+1)`` and ``Beta(1-alpha/2; k+1, n-k)``.
    """
    if not (0 <= successes <= trials and trials >= 1):
        raise DataError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    check_confidence(confidence)
    alpha = 1.0 - confidence
    lower = 0.0
    if successes:
        lower = float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    upper = _clopper_pearson_upper(np.array([successes]), trials, confidence)
    return lower, float(upper[0])


def threshold_epsilon_lower_bound(
    in_scores: npt.ArrayLike,
    out_scores: npt.ArrayLike,
    threshold: float,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """The epsilon lower bound of the test "score >= threshold means the canary was in".

    Nasr et al. 2021, section 4: with Clopper-Pearson upper bounds on the
    false-positive and false-negative rates (both hold together with
    probability ``confidence``: each is the upper end of an interval at that
    confidence), epsilon is at least the larger of
    ``log((1 - delta - FNR) / FPR)`` and ``log((1 - delta - FPR) / FNR)``, and 0.
    """
    bounds = _threshold_bounds(in_scores, out_scores, np.array([threshold]), delta, confidence)
    return float(bounds[0])


def multi_run_epsilon_lower_bound(
    in_scores: npt.ArrayLike,
    out_scores: npt.ArrayLike,
    delta: float,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """The multi-run bound: threshold chosen on the first half of each world, bound on the rest.

    Returns ``(bound, threshold)``. The threshold maximizes
    :func:`threshold_epsilon_lower_bound` on the selection halves among the
    midpoints of their sorted scores (and one threshold beyond each end).
    """
    inside = np.asarray(in_scores, dtype=np.float64)
    outside = np.asarray(out_scores, dtype=np.float64)
    if len(inside) < 2 or len(outside) < 2:
        raise DataError(
            f"multi-run auditing needs at least 2 runs with and 2 without the canary, got "
            f"{len(inside)} and {len(outside)}"
        )
    in_select, in_evaluate = inside[: len(inside) // 2], inside[len(inside) // 2 :]
    out_select, out_evaluate = outside[: len(outside) // 2], outside[len(outside) // 2 :]
    candidates = np.unique(np.concatenate([in_select, out_select]))
    thresholds = np.concatenate(
        [(candidates[:-1] + candidates[1:]) / 2, [candidates[0] - 1, candidates[-1] + 1]]
    )
    selection = _threshold_bounds(in_select, out_select, thresholds, delta, confidence)
    chosen = float(thresholds[int(np.argmax(selection))])
    bound = threshold_epsilon_lower_bound(in_evaluate, out_evaluate, chosen, delta, confidence)
    return bound, chosen


def _threshold_bounds(
    in_scores: npt.ArrayLike,
    out_scores: npt.ArrayLike,
    thresholds: FloatArray,
    delta: float,
    confidence: float,
) -> FloatArray:
    """:func:`threshold_epsilon_lower_bound` at each of ``thresholds``, vectorized."""
    check_confidence(confidence)
    inside = np.sort(np.asarray(in_scores, dtype=np.float64))
    outside = np.sort(np.asarray(out_scores, dtype=np.float64))
    if not len(inside) or not len(outside):
        raise DataError("a threshold test needs scores of runs with and without the canary")
    false_negatives = np.searchsorted(inside, thresholds, side="left")
    false_positives = len(outside) - np.searchsorted(outside, thresholds, side="left")
    fnr = _clopper_pearson_upper(false_negatives, len(inside), confidence)
    fpr = _clopper_pearson_upper(false_positives, len(outside), confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.where(1 - delta - fnr > 0, np.log((1 - delta - fnr) / fpr), -np.inf)
        backward = np.where(1 - delta - fpr > 0, np.log((1 - delta - fpr) / fnr), -np.inf)
    return np.asarray(np.maximum(0.0, np.maximum(forward, backward)), dtype=np.float64)


def _clopper_pearson_upper(
    successes: npt.NDArray[np.integer[Any]], trials: int, confidence: float
) -> FloatArray:
    """The upper ends of :func:`clopper_pearson`'s intervals for an array of success counts."""
    alpha = 1.0 - confidence
    below = successes < trials
    upper = np.ones(successes.shape)
    upper[below] = stats.beta.ppf(1 - alpha / 2, successes[below] + 1, trials - successes[below])
    return upper


def gaussian_pair_epsilon(
    first: tuple[float, float], second: tuple[float, float], delta: float
) -> float:
    """The epsilon at ``delta`` of telling ``N(mean, std^2)`` ``first`` from ``second``.

    The smallest epsilon with ``integral (p - e^eps q)_+ <= delta`` both ways
    (``p`` the density of one Gaussian, ``q`` of the other): the privacy curve
    of the pair, exact for unequal variances too (the region where the log
    density ratio exceeds epsilon is bounded by the roots of a quadratic). For
    equal variances it is the analytic Gaussian mechanism of Balle & Wang
    2018 with ``mu = |mean gap| / std``.
    """
    for mean, std in (first, second):
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DataError(
                f"a Gaussian needs a finite mean and a positive std, got N({mean}, {std}^2)"
            )
    if not 0 < delta < 1:
        raise ConfigError(f"delta={delta} must be in (0, 1)")
    return max(
        _epsilon_of_curve(lambda epsilon: _gaussian_pair_delta(epsilon, first, second), delta),
        _epsilon_of_curve(lambda epsilon: _gaussian_pair_delta(epsilon, second, first), delta),
    )


def gaussian_fit_epsilon(
    in_scores: npt.ArrayLike, out_scores: npt.ArrayLike, delta: float
) -> float:
    """Andrew et al. 2024's epsilon estimate from the scores of inserted and unused canaries.

    Section 3 of "One-shot Empirical Privacy Estimation for Federated
    Learning": a Gaussian is fitted to each population (sample mean and
    standard deviation) and the estimate is :func:`gaussian_pair_epsilon` of
    the two. It is an estimate, not a bound: it holds no confidence level and
    is only as good as the Gaussian fit.
    """
    fitted = []
    for name, scores in (("inserted", in_scores), ("unused", out_scores)):
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(values) < 2 or not np.isfinite(values).all():
            raise DataError(
                f"the Gaussian fit needs at least 2 finite scores of {name} canaries, got "
                f"{len(values)}; plant more canaries"
            )
        fitted.append((float(values.mean()), max(float(values.std(ddof=1)), _STD_FLOOR)))
    return gaussian_pair_epsilon(fitted[0], fitted[1], delta)


def _gaussian_pair_delta(
    epsilon: float, first: tuple[float, float], second: tuple[float, float]
) -> float:
    """``integral (p - e^eps q)_+`` for ``p`` the density of ``first``, ``q`` of ``second``.

    ``log p - log q - eps = a x^2 + b x + c``; the integral runs over where
    that is positive: one half-line (``a = 0``), the outside of the roots
    (``a > 0``) or the inside (``a < 0``).
    """
    (mean_p, std_p), (mean_q, std_q) = first, second
    a = 0.5 / std_q**2 - 0.5 / std_p**2
    b = mean_p / std_p**2 - mean_q / std_q**2
    c = mean_q**2 / (2 * std_q**2) - mean_p**2 / (2 * std_p**2) + math.log(std_q / std_p) - epsilon
    intervals: list[tuple[float, float]]
    if abs(a) <= 1e-12 * (abs(b) + abs(c) + 1e-300):
        if b == 0:
            intervals = [(-math.inf, math.inf)] if c > 0 else []
        elif b > 0:
            intervals = [(-c / b, math.inf)]
        else:
            intervals = [(-math.inf, -c / b)]
    else:
        discriminant = b * b - 4 * a * c
        if discriminant <= 0:
            intervals = [(-math.inf, math.inf)] if a > 0 else []
        else:
            root = math.sqrt(discriminant)
            roots = sorted(((-b - root) / (2 * a), (-b + root) / (2 * a)))
            intervals = (
                [(-math.inf, roots[0]), (roots[1], math.inf)] if a > 0 else [(roots[0], roots[1])]
            )
    excess = 0.0
    for low, high in intervals:
        mass_p = _normal_mass(low, high, mean_p, std_p)
        mass_q = _normal_mass(low, high, mean_q, std_q)
        excess += mass_p - math.exp(epsilon) * mass_q
    return max(excess, 0.0)


def _normal_mass(low: float, high: float, mean: float, std: float) -> float:
    """``P[low < N(mean, std^2) < high]``, from the survival function above the mean.

    Upper-tail masses stay accurate to relative precision: they are multiplied
    by ``e^epsilon``, which would blow up the rounding of ``1 - cdf``.
    """
    if low >= mean:
        return float(stats.norm.sf(low, mean, std) - stats.norm.sf(high, mean, std))
    return float(stats.norm.cdf(high, mean, std) - stats.norm.cdf(low, mean, std))


def _epsilon_of_curve(delta_at: Callable[[float], float], delta: float) -> float:
    """The smallest epsilon >= 0 at which the decreasing curve ``delta_at`` is ``<= delta``."""
    if delta_at(0.0) <= delta:
        return 0.0
    if delta_at(_EPSILON_SEARCH_CEILING) > delta:
        return _EPSILON_SEARCH_CEILING
    return float(
        optimize.brentq(lambda epsilon: delta_at(epsilon) - delta, 0.0, _EPSILON_SEARCH_CEILING)
    )


def _check_counts(num_canaries: int, num_guesses: int, num_correct: int) -> None:
    if not 0 <= num_correct <= num_guesses <= num_canaries:
        raise DataError(
            f"need 0 <= correct ({num_correct}) <= guesses ({num_guesses}) <= canaries "
            f"({num_canaries})"
        )


def check_confidence(confidence: float) -> None:
    """Refuse a confidence outside (0, 1)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
