"""The accountants: what a set of DP events costs, by dp-accounting's PLD and RDP accountants.

:func:`compute_spend` composes events (PLD reported, RDP always computed as a
cross-check); :func:`calibrate_noise_multiplier` and :func:`calibrate_release`
search the smallest noise that meets a target. The package docstring states
the units, the pure-DP cross-check and how identical events are grouped and
cached for speed.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import attr
import numpy as np

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting.events import check_steps, fixed_size_gaussian, poisson_gaussian
from fedwarden.privacy.accounting.library import (
    dp_event,
    mechanism_calibration,
    pld_privacy_accountant,
    privacy_accountant,
    rdp_privacy_accountant,
)
from fedwarden.privacy.accounting.serialization import event_to_json

Neighboring = Literal["add_remove", "replace_one"]
AccountantName = Literal["pld", "rdp"]

# dp-accounting's NeighboringRelation member of each relation (read when first accounted).
_RELATIONS: dict[str, str] = {"add_remove": "ADD_OR_REMOVE_ONE", "replace_one": "REPLACE_ONE"}

# The PLD discretization interval is this fraction of the RDP epsilon, rounded
# down to a power of two and kept within the bounds below.
_PLD_INTERVAL_FRACTION = 1e-4
_PLD_INTERVAL_DEFAULT = 1e-4

# Calibration starts its bracket here and halves it down to the floor when a
# target is so loose that even this little noise meets it.
_CALIBRATION_START = 0.1
_CALIBRATION_FLOOR = 1e-3
# Brent's method stops within this fraction of the bracket's lower end.
_CALIBRATION_TOLERANCE = 1e-4

_SPEND_CACHE_SIZE = 64
_RDP_CACHE_SIZE = 1024
_LEAF_PLD_CACHE_SIZE = 16

# Why a sampling scheme (a dp_event class name) needs one relation rather than the other.
_RELATION_HINTS: dict[str, str] = {
    "PoissonSampledDpEvent": (
        "Poisson sampling is accounted with 'add_remove' neighbours (a unit's data is "
        "present or absent); use neighboring='add_remove', or fixed-size cohorts "
        "(fixed_size_gaussian) with 'replace_one'"
    ),
    "SampledWithoutReplacementDpEvent": (
        "sampling a fixed-size cohort without replacement is accounted with 'replace_one' "
        "neighbours (the population size is public); use neighboring='replace_one', or "
        "Poisson sampling (poisson_gaussian) with 'add_remove'"
    ),
}


@dataclass(frozen=True)
class PrivacySpend:
    """The (epsilon, delta) guarantee of a set of releases, with its RDP cross-check.

    ``epsilon`` is the PLD figure when the PLD accountant can account every
    event, else the RDP figure; ``accountant`` says which. ``epsilon_pld`` is
    None when the PLD accountant cannot account an event (sampling without
    replacement, zCDP).
    """

    epsilon: float
    delta: float
    accountant: AccountantName
    epsilon_rdp: float
    epsilon_pld: float | None


def compute_spend(
    events: Sequence[dp_event.DpEvent],
    delta: float,
    neighboring: Neighboring = "add_remove",
) -> PrivacySpend:
    """The guarantee of all ``events`` composed, at ``delta``, by dp-accounting's PLD and RDP.

    Raises ConfigError when ``delta`` is not in (0, 1), when the RDP accountant
    cannot account an event under ``neighboring`` (the message says which
    relation fits), or when an event's parameters are out of range.
    """
    _check_delta(delta)
    _check_neighboring(neighboring)
    flat = list(_flatten(events))
    key = (tuple(_event_key(event) for event in flat), float(delta), neighboring)
    cached = _SPEND_CACHE.get(key)
    if cached is not None:
        _SPEND_CACHE.move_to_end(key)
        return cached
    epsilon_rdp = _rdp_epsilon(flat, delta, neighboring)
    epsilon_pld = _pld_epsilon(flat, delta, neighboring, epsilon_rdp)
    if epsilon_pld is None:
        spend = PrivacySpend(epsilon_rdp, float(delta), "rdp", epsilon_rdp, None)
    else:
        spend = PrivacySpend(epsilon_pld, float(delta), "pld", epsilon_rdp, epsilon_pld)
    _SPEND_CACHE[key] = spend
    if len(_SPEND_CACHE) > _SPEND_CACHE_SIZE:
        _SPEND_CACHE.popitem(last=False)
    return spend


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    sampling_rate: float | None = None,
    population: int | None = None,
    cohort_size: int | None = None,
    neighboring: Neighboring = "add_remove",
    per_round_extra: Sequence[dp_event.DpEvent] = (),
) -> float:
    """The smallest noise multiplier that spends at most ``target_epsilon`` in ``rounds`` releases.

    Give ``sampling_rate`` for Poisson sampling, ``population`` and
    ``cohort_size`` for fixed-size cohorts, or neither when every unit takes part
    in every release. ``per_round_extra`` are other releases made every round
    (e.g. adaptive clipping's noisy count), composed in at their own noise. The
    spend is the figure :func:`compute_spend` reports (PLD where it can account
    the releases, else RDP), searched with dp-accounting's
    ``mechanism_calibration.calibrate_dp_mechanism`` (Brent's method, then a
    check that the returned multiplier meets the target).
    """
    if not (isinstance(target_epsilon, numbers.Real) and 0 < target_epsilon < math.inf):
        raise ConfigError(
            f"target_epsilon must be a positive finite number, got {target_epsilon!r}; "
            "without a finite target no noise is needed"
        )
    _check_delta(delta)
    check_steps(rounds, what="rounds")
    _check_neighboring(neighboring)
    fixed_size = population is not None or cohort_size is not None
    if fixed_size and (population is None or cohort_size is None):
        raise ConfigError(
            "fixed-size cohorts need both population and cohort_size; got "
            f"population={population!r}, cohort_size={cohort_size!r}"
        )
    if fixed_size and sampling_rate is not None:
        raise ConfigError(
            "give either sampling_rate (Poisson sampling) or population and cohort_size "
            "(fixed-size cohorts), not both"
        )
    extra = [dp_event.SelfComposedDpEvent(event, rounds) for event in per_round_extra]

    def release(noise_multiplier: float) -> dp_event.DpEvent:
        if population is not None and cohort_size is not None:
            rounds_released = fixed_size_gaussian(population, cohort_size, noise_multiplier, rounds)
        else:
            rate = 1.0 if sampling_rate is None else sampling_rate
            rounds_released = poisson_gaussian(rate, noise_multiplier, rounds)
        return dp_event.ComposedDpEvent([rounds_released, *extra])

    if extra and compute_spend(extra, delta, neighboring).epsilon >= target_epsilon:
        raise ConfigError(
            f"the other releases of every round (per_round_extra) alone spend epsilon >= "
            f"{target_epsilon} over {rounds} rounds; give them more noise or plan fewer rounds"
        )
    return calibrate_release(target_epsilon, delta, release, neighboring, f"{rounds} rounds")


def calibrate_release(
    target_epsilon: float,
    delta: float,
    release: Callable[[float], dp_event.DpEvent],
    neighboring: Neighboring = "add_remove",
    what: str = "the release",
) -> float:
    """The smallest noise multiplier ``z`` whose ``release(z)`` spends at most ``target_epsilon``.

    ``release`` maps a noise multiplier to the whole event it would cause (all
    rounds composed); its spend must fall as ``z`` grows. The search is
    dp-accounting's ``mechanism_calibration.calibrate_dp_mechanism`` over the
    figure :func:`compute_spend` reports.
    """

    def epsilon_at(noise_multiplier: float) -> float:
        return compute_spend([release(noise_multiplier)], delta, neighboring).epsilon

    lower = _CALIBRATION_START
    while epsilon_at(lower) <= target_epsilon:
        if lower / 2 < _CALIBRATION_FLOOR:
            raise ConfigError(
                f"epsilon={target_epsilon} at delta={delta} over {what} is met with a "
                f"noise multiplier below {lower}: such a target protects nothing; choose a "
                "smaller epsilon"
            )
        lower /= 2
    noise_multiplier = mechanism_calibration.calibrate_dp_mechanism(
        lambda: _spend_accountant()(neighboring),
        release,
        target_epsilon,
        delta,
        bracket_interval=mechanism_calibration.LowerEndpointAndGuess(lower, 2 * lower),
        tol=_CALIBRATION_TOLERANCE * lower,
    )
    return float(noise_multiplier)


@functools.cache
def _spend_accountant() -> Callable[[Neighboring], privacy_accountant.PrivacyAccountant]:
    """dp-accounting's accountant interface over :func:`compute_spend`, for calibration.

    Calibration then searches the very figure a ledger reports. The class is made at
    the first calibration: its base is dp-accounting's, slow to import (start-up time).
    """

    class SpendAccountant(privacy_accountant.PrivacyAccountant):
        def __init__(self, neighboring: Neighboring) -> None:
            super().__init__(_relation(neighboring))
            self._neighboring: Neighboring = neighboring
            self._events: list[dp_event.DpEvent] = []

        def _maybe_compose(
            self, event: dp_event.DpEvent, count: int, do_compose: bool
        ) -> privacy_accountant.PrivacyAccountant.CompositionErrorDetails | None:
            if do_compose:
                self._events.append(
                    event if count == 1 else dp_event.SelfComposedDpEvent(event, count)
                )
            return None

        def get_epsilon(self, target_delta: float) -> float:
            return compute_spend(self._events, target_delta, self._neighboring).epsilon

    return SpendAccountant


def _relation(neighboring: Neighboring) -> privacy_accountant.NeighboringRelation:
    """dp-accounting's name for the ``neighboring`` relation."""
    return privacy_accountant.NeighboringRelation[_RELATIONS[neighboring]]


_SPEND_CACHE: OrderedDict[Hashable, PrivacySpend] = OrderedDict()
_RDP_CURVES: OrderedDict[Hashable, np.ndarray] = OrderedDict()
_LEAF_PLDS: OrderedDict[Hashable, Any] = OrderedDict()


def _rdp_epsilon(
    events: Sequence[dp_event.DpEvent], delta: float, neighboring: Neighboring
) -> float:
    """RDP epsilon of ``events`` composed in order, as ``RdpAccountant`` computes it."""
    orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    total = np.zeros_like(orders)
    for event in events:
        total += _rdp_curve(event, neighboring)
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(orders, total, delta)
    return float(epsilon)


def _rdp_curve(event: dp_event.DpEvent, neighboring: Neighboring) -> np.ndarray:
    """The RDP of one event at dp-accounting's default orders (memoized; read-only)."""
    key = (_event_key(event), neighboring)
    curve = _RDP_CURVES.get(key)
    if curve is not None:
        _RDP_CURVES.move_to_end(key)
        return curve
    pure = _pure_dp_release(event)
    if pure is None:
        relation = _relation(neighboring)
        seen = _as_rdp_sees_it(event, neighboring)
    else:
        relation = privacy_accountant.NeighboringRelation.REPLACE_ONE
        seen = pure
    accountant = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    if not accountant.supports(seen):
        raise _unaccountable(event, neighboring)
    try:
        curve = accountant.compose(seen).rdp
    except (ValueError, AssertionError, ZeroDivisionError, OverflowError) as error:
        raise ConfigError(
            f"dp-accounting's RDP accountant refused {event}: {error}; check the event's "
            "parameters (rates in (0, 1], noise multipliers > 0, counts >= 1)"
        ) from error
    curve.flags.writeable = False
    _RDP_CURVES[key] = curve
    if len(_RDP_CURVES) > _RDP_CACHE_SIZE:
        _RDP_CURVES.popitem(last=False)
    return curve


def _pure_dp_release(event: dp_event.DpEvent) -> dp_event.DpEvent | None:
    """The randomized response dominating (repeated) discrete Laplace releases; None for others.

    ``DiscreteLaplaceDpEvent(a, D)`` is (a D)-DP; binary randomized response
    that reports the truth with probability e^eps / (1 + e^eps) dominates every
    eps-DP mechanism (Kairouz, Oh & Viswanath 2015, "The Composition Theorem
    for Differential Privacy"). A noise parameter of 0 is non-private, as
    dp-accounting's PLD accountant reads it.
    """
    count = 1
    while isinstance(event, dp_event.SelfComposedDpEvent):
        count *= event.count
        event = event.event
    if not isinstance(event, dp_event.DiscreteLaplaceDpEvent):
        return None
    if not (event.noise_parameter >= 0 and event.sensitivity >= 0):
        raise ConfigError(
            f"{event} needs a noise parameter and a sensitivity >= 0 (the noise's pmf is "
            "proportional to exp(-a |x|))"
        )
    if event.noise_parameter == 0:
        return dp_event.NonPrivateDpEvent()
    epsilon = event.noise_parameter * event.sensitivity
    response = dp_event.RandomizedResponseDpEvent(
        2 * math.exp(-epsilon) / (1 + math.exp(-epsilon)), 2
    )
    return dp_event.SelfComposedDpEvent(response, count)


def _pld_epsilon(
    events: Sequence[dp_event.DpEvent], delta: float, neighboring: Neighboring, epsilon_rdp: float
) -> float | None:
    """PLD epsilon of ``events``, identical ones self-composed; None if PLD cannot account one."""
    leaves = _grouped_leaves(events)
    relation = _relation(neighboring)
    checker = pld_privacy_accountant.PLDAccountant(neighboring_relation=relation)
    if not all(checker.supports(leaf) for leaf, _ in leaves):
        return None
    try:
        if not math.isfinite(epsilon_rdp):
            # A non-private release: the accountant flags it without building anything.
            grouped = dp_event.ComposedDpEvent(
                [dp_event.SelfComposedDpEvent(leaf, count) for leaf, count in leaves]
            )
            return float(checker.compose(grouped).get_epsilon(delta))
        interval = _pld_interval(epsilon_rdp)
        distribution = None
        for leaf, count in leaves:
            base = _leaf_pld(leaf, relation, interval)
            part = base if count == 1 else base.self_compose(count)
            distribution = part if distribution is None else distribution.compose(part)
        if distribution is None:
            return 0.0
        return float(distribution.get_epsilon_for_delta(delta))
    except (ValueError, AssertionError, ZeroDivisionError, OverflowError) as error:
        raise ConfigError(
            f"dp-accounting's PLD accountant refused {[leaf for leaf, _ in leaves]}: {error}; "
            "check the events' parameters (rates in (0, 1], noise multipliers > 0, counts >= 1)"
        ) from error


def _leaf_pld(
    leaf: dp_event.DpEvent, relation: privacy_accountant.NeighboringRelation, interval: float
) -> Any:
    """The privacy loss distribution ``PLDAccountant`` builds for one ``leaf`` (memoized).

    The accountant chooses the mechanism and its parameters; its distribution
    is kept so that later rounds only self-compose it for their count.
    """
    key = (_event_key(leaf), relation, interval)
    distribution = _LEAF_PLDS.get(key)
    if distribution is not None:
        _LEAF_PLDS.move_to_end(key)
        return distribution
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=relation, value_discretization_interval=interval
    )
    distribution = accountant.compose(leaf)._pld
    _LEAF_PLDS[key] = distribution
    if len(_LEAF_PLDS) > _LEAF_PLD_CACHE_SIZE:
        _LEAF_PLDS.popitem(last=False)
    return distribution


def _pld_interval(epsilon_rdp: float) -> float:
    """The PLD discretization interval: the default 1e-4, or ~1e-4 of the RDP epsilon if coarser.

    Rounded down to a power of two, so it changes a handful of times in a run.
    """
    scaled = epsilon_rdp * _PLD_INTERVAL_FRACTION
    if scaled < 2 * _PLD_INTERVAL_DEFAULT:
        return _PLD_INTERVAL_DEFAULT
    return float(2.0 ** math.floor(math.log2(scaled)))


def _flatten(events: Sequence[dp_event.DpEvent]) -> Iterator[dp_event.DpEvent]:
    """The events in order, with top-level compositions opened up."""
    for event in events:
        if not isinstance(event, dp_event.DpEvent):
            raise ConfigError(
                f"privacy accounting takes dp_accounting DpEvents, got {type(event).__name__}"
            )
        if isinstance(event, dp_event.ComposedDpEvent):
            yield from _flatten(event.events)
        else:
            yield event


def _grouped_leaves(events: Sequence[dp_event.DpEvent]) -> list[tuple[dp_event.DpEvent, int]]:
    """Each distinct non-composition event and how often it is applied, in first-seen order."""
    counts: Counter[Hashable] = Counter()
    firsts: dict[Hashable, dp_event.DpEvent] = {}

    def visit(event: dp_event.DpEvent, count: int) -> None:
        if isinstance(event, dp_event.ComposedDpEvent):
            for inner in event.events:
                visit(inner, count)
        elif isinstance(event, dp_event.SelfComposedDpEvent):
            visit(event.event, count * event.count)
        elif count > 0:
            key = _event_key(event)
            firsts.setdefault(key, event)
            counts[key] += count

    for event in events:
        visit(event, 1)
    return [(firsts[key], counts[key]) for key in firsts]


def _event_key(event: dp_event.DpEvent) -> Hashable:
    """A hashable stand-in for ``event``: itself, or its canonical JSON when a field is a list."""
    try:
        hash(event)
    except TypeError:
        return ("json", json.dumps(event_to_json(event), sort_keys=True))
    return event


def _as_rdp_sees_it(event: dp_event.DpEvent, neighboring: Neighboring) -> dp_event.DpEvent:
    """``event`` as the RDP accountant reads it: Gaussian and Laplace noise over the sensitivity.

    Under replace_one the sensitivity of a sum of contributions clipped to C is
    2C, so a noise multiplier z (noise over C) is z / 2 over the sensitivity.
    """
    if neighboring == "add_remove":
        return event
    if isinstance(event, dp_event.GaussianDpEvent | dp_event.LaplaceDpEvent):
        return attr.evolve(event, noise_multiplier=event.noise_multiplier / 2)
    changes: dict[str, Any] = {}
    for field in attr.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, dp_event.DpEvent):
            changes[field.name] = _as_rdp_sees_it(value, neighboring)
        elif isinstance(value, list) and any(isinstance(item, dp_event.DpEvent) for item in value):
            changes[field.name] = [_as_rdp_sees_it(item, neighboring) for item in value]
    return attr.evolve(event, **changes) if changes else event


def _unaccountable(event: dp_event.DpEvent, neighboring: Neighboring) -> ConfigError:
    """The error for an event RDP cannot account under ``neighboring``, naming what fits."""
    for kind, hint in _RELATION_HINTS.items():
        if _contains(event, getattr(dp_event, kind)):
            other: Neighboring = "replace_one" if neighboring == "add_remove" else "add_remove"
            if rdp_privacy_accountant.RdpAccountant(neighboring_relation=_relation(other)).supports(
                _as_rdp_sees_it(event, other)
            ):
                return ConfigError(
                    f"{type(event).__name__} cannot be accounted with {neighboring!r} "
                    f"neighbours: {hint}"
                )
    return ConfigError(
        f"dp-accounting's RDP accountant cannot account {event} with {neighboring!r} "
        "neighbours, and every release needs the RDP cross-check; describe the release with "
        "Gaussian, Laplace, randomized-response or zCDP events (Poisson-sampled or "
        "fixed-size-sampled Gaussians for sampled releases)"
    )


def _contains(event: dp_event.DpEvent, kind: type[Any]) -> bool:
    """Whether ``event`` or an event nested in it is a ``kind``."""
    if isinstance(event, kind):
        return True
    for field in attr.fields(type(event)):
        value = getattr(event, field.name)
        nested = value if isinstance(value, list) else [value]
        if any(isinstance(item, dp_event.DpEvent) and _contains(item, kind) for item in nested):
            return True
    return False


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, numbers.Real) and 0 < delta < 1):
        raise ConfigError(
            f"delta must be in (0, 1), got {delta!r}; a common choice is below 1 / (number of "
            "privacy units), e.g. 1e-5"
        )


def _check_neighboring(neighboring: str) -> None:
    if neighboring not in get_args(Neighboring):
        raise ConfigError(
            f"neighboring must be one of {list(get_args(Neighboring))}, got {neighboring!r}: "
            "'add_remove' for Poisson sampling, 'replace_one' for fixed-size cohorts"
        )
