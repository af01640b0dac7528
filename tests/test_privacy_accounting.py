"""Privacy accounting agrees with dp-accounting's accountants and with published values."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from fedwarden.core.errors import ConfigError, FedwardenError
from fedwarden.privacy.accounting import (
    calibrate_noise_multiplier,
    compute_spend,
    event_from_json,
    event_to_json,
    fixed_size_gaussian,
    poisson_gaussian,
)

ADD_REMOVE = NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE_ONE = NeighboringRelation.REPLACE_ONE
DELTA = 1e-5


def rdp_oracle(events: list[dp_event.DpEvent], relation: NeighboringRelation = ADD_REMOVE) -> float:
    """dp-accounting's RDP epsilon, the events composed one by one."""
    accountant = RdpAccountant(neighboring_relation=relation)
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(DELTA))


def pld_oracle(event: dp_event.DpEvent, relation: NeighboringRelation = ADD_REMOVE) -> float:
    """dp-accounting's PLD epsilon with its default discretization."""
    return float(PLDAccountant(neighboring_relation=relation).compose(event).get_epsilon(DELTA))


def test_poisson_sampled_gaussian_spend_equals_dp_accountings() -> None:
    rounds = 6
    events = [poisson_gaussian(0.05, 1.1)] * rounds
    spend = compute_spend(events, DELTA)
    assert spend.epsilon_rdp == rdp_oracle(events)
    # SelfComposedDpEvent(e, n) is by definition n copies of e composed
    oracle = pld_oracle(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(0.05, dp_event.GaussianDpEvent(1.1)), rounds
        )
    )
    assert spend.epsilon_pld == pytest.approx(oracle, rel=1e-3)
    assert (spend.accountant, spend.epsilon, spend.delta) == ("pld", spend.epsilon_pld, DELTA)


def test_fixed_size_cohorts_are_accounted_by_rdp_with_replace_one_neighbours() -> None:
    rounds, z = 300, 1.2
    spend = compute_spend([fixed_size_gaussian(2000, 100, z, rounds)], DELTA, "replace_one")
    # one client replaced by another moves a sum of updates clipped to C by up to 2C,
    # so dp-accounting's RDP (noise over sensitivity) sees z / 2
    sampled = dp_event.SampledWithoutReplacementDpEvent(2000, 100, dp_event.GaussianDpEvent(z / 2))
    assert spend.epsilon == rdp_oracle([dp_event.SelfComposedDpEvent(sampled, rounds)], REPLACE_ONE)
    assert (spend.accountant, spend.epsilon_pld) == ("rdp", None)
    # round by round, as a ledger charges them
    per_round = compute_spend([fixed_size_gaussian(2000, 100, z)] * 3, DELTA, "replace_one")
    assert per_round.epsilon == rdp_oracle([sampled] * 3, REPLACE_ONE)


def test_replace_one_gaussian_costs_the_same_in_both_accountants() -> None:
    spend = compute_spend([poisson_gaussian(1.0, 3.0, steps=10)], DELTA, "replace_one")
    # dp-accounting's PLD doubles the sensitivity itself under replace-one ...
    plain = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(3.0), 10)
    assert spend.epsilon_pld == pytest.approx(pld_oracle(plain, REPLACE_ONE), rel=1e-3)
    # ... which is add/remove with half the noise multiplier; the RDP side is given that
    halved = dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(1.5), 10)
    assert spend.epsilon_pld == pytest.approx(pld_oracle(halved), rel=1e-3)
    assert spend.epsilon_rdp == rdp_oracle([halved])
    assert spend.epsilon_rdp >= spend.epsilon_pld


def test_composition_of_phases_equals_dp_accountings() -> None:
    q = 0.02

    def sampled(z: float) -> dp_event.DpEvent:
        return dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))

    events: list[dp_event.DpEvent] = []
    for round_index in range(10):
        z = 1.0 if round_index < 6 else 1.4  # noise changed mid-run
        events.append(poisson_gaussian(q, z))  # the model update
        events.append(poisson_gaussian(q, 8.0))  # adaptive clipping's noisy count
    metrics_query = dp_event.GaussianDpEvent(20.0)
    events.append(metrics_query)
    spend = compute_spend(events, DELTA)
    assert spend.epsilon_rdp == rdp_oracle(events)
    phases = dp_event.ComposedDpEvent(
        [
            dp_event.SelfComposedDpEvent(sampled(1.0), 6),
            dp_event.SelfComposedDpEvent(sampled(1.4), 4),
            dp_event.SelfComposedDpEvent(sampled(8.0), 10),
            metrics_query,
        ]
    )
    assert spend.epsilon == pytest.approx(pld_oracle(phases), rel=1e-3)
    # each phase costs something: the composition exceeds every part
    assert spend.epsilon > compute_spend(events[:12], DELTA).epsilon


def test_fixed_size_composition_with_a_metrics_query_is_rdp_throughout() -> None:
    cohort = fixed_size_gaussian(500, 50, 1.0)
    query = dp_event.GaussianDpEvent(10.0)
    events = [cohort, cohort, query, cohort]
    spend = compute_spend(events, DELTA, "replace_one")
    seen = dp_event.SampledWithoutReplacementDpEvent(500, 50, dp_event.GaussianDpEvent(0.5))
    assert spend.epsilon == rdp_oracle(
        [seen, seen, dp_event.GaussianDpEvent(5.0), seen], REPLACE_ONE
    )
    assert spend.accountant == "rdp"


def test_tf_privacy_mnist_dp_sgd_reproduces_the_published_epsilons() -> None:
    # N=60000, batch 256, z=1.1, 60 epochs: 60 * 60000 / 256 = 14062.5 steps, rounded down
    steps = 60 * 60000 // 256
    assert steps == 14062
    spend = compute_spend([poisson_gaussian(256 / 60000, 1.1, steps)], DELTA)
    assert f"{spend.epsilon_rdp:.3g}" == "2.6"  # 2.597 with the modern conversion
    assert spend.epsilon_rdp == pytest.approx(2.597, abs=5e-4)
    assert spend.epsilon_pld == pytest.approx(2.382, abs=5e-4)
    assert spend.epsilon == spend.epsilon_pld
    # the often-quoted 3.01 is the older conversion, min over orders of rdp + log(1/delta)/(a-1)
    accountant = RdpAccountant().compose(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(256 / 60000, dp_event.GaussianDpEvent(1.1)), steps
        )
    )
    older = np.min(accountant.rdp + math.log(1 / DELTA) / (accountant.orders - 1))
    assert older == pytest.approx(3.01, abs=5e-3)


def test_discrete_laplace_is_exact_in_pld_with_a_sound_rdp_cross_check() -> None:
    release = dp_event.DiscreteLaplaceDpEvent(0.02, 25)  # pure 0.5-DP
    spend = compute_spend([release, release], 1e-6)
    oracle = PLDAccountant().compose(dp_event.SelfComposedDpEvent(release, 2)).get_epsilon(1e-6)
    assert spend.epsilon == pytest.approx(oracle, rel=1e-3)
    assert spend.epsilon <= 1.0
    # binary randomized response dominates every 0.5-DP mechanism; its RDP is the cross-check
    assert spend.epsilon_rdp >= spend.epsilon
    assert spend.epsilon_rdp <= 1.0 + math.log(1 / 1e-6) / (1024 - 1)


def test_calibrated_noise_meets_the_target_and_one_percent_less_does_not() -> None:
    count_release = poisson_gaussian(0.05, 2.0)  # adaptive clipping's noisy count, every round
    z = calibrate_noise_multiplier(
        1.0, DELTA, 50, sampling_rate=0.05, per_round_extra=[count_release]
    )

    def run(noise: float) -> float:
        rounds = [poisson_gaussian(0.05, noise, 50), poisson_gaussian(0.05, 2.0, 50)]
        return compute_spend(rounds, DELTA).epsilon

    assert run(z) <= 1.0 < run(0.99 * z)
    # the count was composed in: without it the same noise would leave budget unspent
    assert compute_spend([poisson_gaussian(0.05, z, 50)], DELTA).epsilon < 0.9


def test_calibrated_noise_for_fixed_size_cohorts_meets_the_target_under_rdp() -> None:
    z = calibrate_noise_multiplier(
        3.0, DELTA, 20, population=1000, cohort_size=50, neighboring="replace_one"
    )
    spend = compute_spend([fixed_size_gaussian(1000, 50, z, 20)], DELTA, "replace_one")
    assert spend.accountant == "rdp"
    assert spend.epsilon <= 3.0
    less = compute_spend([fixed_size_gaussian(1000, 50, 0.99 * z, 20)], DELTA, "replace_one")
    assert less.epsilon > 3.0


def test_calibration_without_sampling_matches_the_gaussian_mechanism() -> None:
    z = calibrate_noise_multiplier(2.0, DELTA, 1)
    assert pld_oracle(dp_event.GaussianDpEvent(z)) == pytest.approx(2.0, rel=1e-3)


def every_event() -> list[dp_event.DpEvent]:
    """One instance of every dp_event class, nested where the class nests events."""
    gaussian = dp_event.GaussianDpEvent(1.1)
    return [
        dp_event.NoOpDpEvent(),
        dp_event.NonPrivateDpEvent(),
        dp_event.UnsupportedDpEvent(),
        dp_event.RandomizedResponseDpEvent(0.1, 4),
        gaussian,
        dp_event.LaplaceDpEvent(0.3),
        dp_event.DiscreteLaplaceDpEvent(0.1, 7),
        dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.1, gaussian), 20),
        dp_event.ComposedDpEvent(
            [gaussian, dp_event.ComposedDpEvent([gaussian]), dp_event.NoOpDpEvent()]
        ),
        dp_event.PoissonSampledDpEvent(1 / 3, gaussian),
        dp_event.SampledWithReplacementDpEvent(1000, 10, gaussian),
        dp_event.SampledWithoutReplacementDpEvent(1000, 10, gaussian),
        dp_event.SingleEpochTreeAggregationDpEvent(2.0, [3, 5]),
        dp_event.SingleEpochTreeAggregationDpEvent(2.0, 8),
        dp_event.RepeatAndSelectDpEvent(gaussian, 3.5, 1.0),
        dp_event.MixtureOfGaussiansDpEvent(1.0, (0.0, 1.0), (0.25, 0.75)),
        dp_event.MixtureOfGaussiansDpEvent(1.0, [0.0, 1.0], [0.5, 0.5]),
        dp_event.ZCDpEvent(0.01, 0.001),
        dp_event.TruncatedSubsampledGaussianDpEvent(1000, 0.01, 20, 1.2),
    ]


@pytest.mark.parametrize("event", every_event(), ids=lambda event: type(event).__name__)
def test_every_event_round_trips_exactly_through_json(event: dp_event.DpEvent) -> None:
    stored = json.loads(json.dumps(event_to_json(event)))
    rebuilt = event_from_json(stored)
    assert rebuilt == event
    assert type(rebuilt) is type(event)
    assert event_to_json(rebuilt) == event_to_json(event)


# The bytes a ledger stores for an event; a change here breaks every ledger already written.
STORED_EVENTS = [
    (
        poisson_gaussian(0.1, 1.1, 20),
        '{"type": "SelfComposedDpEvent", "event": {"type": "PoissonSampledDpEvent", '
        '"sampling_probability": 0.1, "event": {"type": "GaussianDpEvent", '
        '"noise_multiplier": 1.1}}, "count": 20}',
    ),
    (
        fixed_size_gaussian(1000, 10, 1.1),
        '{"type": "SelfComposedDpEvent", "event": {"type": "SampledWithoutReplacementDpEvent", '
        '"source_dataset_size": 1000, "sample_size": 10, "event": {"type": "GaussianDpEvent", '
        '"noise_multiplier": 1.1}}, "count": 1}',
    ),
    (
        dp_event.DiscreteLaplaceDpEvent(0.1, 7),
        '{"type": "DiscreteLaplaceDpEvent", "noise_parameter": 0.1, "sensitivity": 7}',
    ),
    (
        dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(1.1), dp_event.NoOpDpEvent()]),
        '{"type": "ComposedDpEvent", "events": [{"type": "GaussianDpEvent", '
        '"noise_multiplier": 1.1}, {"type": "NoOpDpEvent"}]}',
    ),
    (
        dp_event.MixtureOfGaussiansDpEvent(1.0, (0.0, 1.0), [0.25, 0.75]),
        '{"type": "MixtureOfGaussiansDpEvent", "standard_deviation": 1.0, '
        '"sensitivities": {"tuple": [0.0, 1.0]}, "sampling_probs": [0.25, 0.75]}',
    ),
]


@pytest.mark.parametrize(("event", "stored"), STORED_EVENTS, ids=lambda item: type(item).__name__)
def test_the_stored_json_of_an_event_is_pinned_byte_for_byte(
    event: dp_event.DpEvent, stored: str
) -> None:
    assert json.dumps(event_to_json(event)) == stored
    assert event_from_json(json.loads(stored)) == event


def test_the_round_trip_covers_every_dp_event_class() -> None:
    classes = {
        cls
        for _, cls in inspect.getmembers(dp_event, inspect.isclass)
        if issubclass(cls, dp_event.DpEvent) and cls is not dp_event.DpEvent
    }
    assert classes <= {type(event) for event in every_event()}


def test_unknown_stored_event_types_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown DP event type 'os\.system'"):
        event_from_json({"type": "os.system"})
    with pytest.raises(ConfigError, match="unknown fields"):
        event_from_json({"type": "GaussianDpEvent", "noise_multiplier": 1.0, "shell": "rm"})


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0])
def test_delta_outside_zero_one_is_refused(delta: float) -> None:
    with pytest.raises(ConfigError, match=r"delta must be in \(0, 1\)"):
        compute_spend([poisson_gaussian(0.1, 1.0)], delta)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_sampling_rate_outside_zero_one_is_refused(rate: float) -> None:
    with pytest.raises(ConfigError, match=r"sampling_rate must be in \(0, 1\]"):
        poisson_gaussian(rate, 1.0)


def test_poisson_sampling_with_replace_one_names_the_relation_that_fits() -> None:
    with pytest.raises(ConfigError, match="'add_remove' neighbours") as refused:
        compute_spend([poisson_gaussian(0.1, 1.0)], DELTA, "replace_one")
    assert "fixed_size_gaussian" in str(refused.value)
    assert isinstance(refused.value, FedwardenError)


def test_fixed_size_cohorts_with_add_remove_name_the_relation_that_fits() -> None:
    with pytest.raises(ConfigError, match="use neighboring='replace_one'"):
        compute_spend([fixed_size_gaussian(100, 10, 1.0)], DELTA, "add_remove")
    with pytest.raises(ConfigError, match="use neighboring='replace_one'"):
        calibrate_noise_multiplier(3.0, DELTA, 10, population=100, cohort_size=10)


def test_events_no_rdp_accountant_supports_are_refused_with_what_to_use() -> None:
    with pytest.raises(ConfigError, match="needs the RDP cross-check"):
        compute_spend([dp_event.MixtureOfGaussiansDpEvent(1.0, [1.0], [1.0])], DELTA)


def test_impossible_mechanism_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="noise_multiplier must be > 0"):
        poisson_gaussian(0.1, 0.0)
    with pytest.raises(ConfigError, match="cohort_size must be between 1 and the population"):
        fixed_size_gaussian(10, 20, 1.0)
    with pytest.raises(ConfigError, match="not both"):
        calibrate_noise_multiplier(1.0, DELTA, 10, sampling_rate=0.1, population=10, cohort_size=2)
