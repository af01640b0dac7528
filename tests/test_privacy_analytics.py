"""Federated analytics with DP: answers, bounded contributions, calibrated noise, honest charges."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation

from fedwarden.core.errors import ConfigError
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.privacy.accounting import Neighboring
from fedwarden.privacy.analytics import QueryResult, query_command, run_query
from fedwarden.privacy.analytics_mechanisms import (
    SUM_GRID_STEPS,
    client_contribution,
    plan_releases,
)
from fedwarden.privacy.analytics_queries import (
    Count,
    Histogram,
    Mean,
    Quantile,
    Query,
    QueryError,
    Sum,
    parse_query,
)
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger, PrivacyUnit
from fedwarden.privacy.randomness import NoiseSource

FEATURES = 3


def client(client_id: str, column: np.ndarray) -> ClientData:
    """A client whose feature 1 is ``column`` (0 and 2 are constant); labels cycle 0, 1, 2."""
    rows = len(column)
    x = np.column_stack([np.zeros(rows), column, np.ones(rows)])
    y = np.arange(rows) % 3
    return ClientData(client_id, x, y, x[:0], y[:0])


def federated(clients: Mapping[str, ClientData]) -> FederatedDataset:
    return FederatedDataset(
        name="hand-made",
        clients=clients,
        x_test=np.zeros((0, FEATURES)),
        y_test=np.zeros(0),
        num_features=FEATURES,
        num_classes=3,
    )


def population(seed: int = 0, clients: int = 12) -> FederatedDataset:
    """Clients of 20 to 60 examples whose feature 1 lies in [0, 16]."""
    rng = np.random.default_rng(seed)  # the data, not privacy noise
    return federated(
        {
            f"c{index}": client(f"c{index}", rng.uniform(0, 16, rng.integers(20, 61)))
            for index in range(clients)
        }
    )


def pooled(dataset: FederatedDataset, feature: int = 1) -> np.ndarray:
    return np.concatenate([c.x_train[:, feature] for c in dataset.clients.values()])


def ledger(epsilon: float = 1e9, unit: PrivacyUnit = "client") -> PrivacyLedger:
    return PrivacyLedger(PrivacyBudget(epsilon, 1e-5), privacy_unit=unit)


def answer(
    dataset: FederatedDataset,
    query: Query,
    epsilon: float,
    seed: int = 0,
    unit: PrivacyUnit = "client",
) -> QueryResult:
    """The query answered on a fresh ledger with reproducible (test-mode) noise."""
    return run_query(
        dataset,
        query,
        ledger=ledger(unit=unit),
        epsilon=epsilon,
        delta=1e-6,
        source=NoiseSource.for_testing(seed),
    )


def discrete_laplace_variance(parameter: float) -> float:
    """Var of P(x) proportional to exp(-a|x|): 2 e^-a / (1 - e^-a)^2 (two-sided geometric)."""
    return 2 * math.exp(-parameter) / (1 - math.exp(-parameter)) ** 2


# --- answers -------------------------------------------------------------------------------------
# Large epsilon, small sensitivity: the noise is a few units, so the answers meet the pooled truth.


def test_count_is_the_number_of_examples_at_large_epsilon() -> None:
    dataset = population()
    result = answer(dataset, Count(max_contribution=60), epsilon=20)
    # sensitivity 60, scale 3: the noise std is about 4.2
    assert result.value == pytest.approx(len(pooled(dataset)), abs=25)


def test_sum_and_mean_are_close_to_the_pooled_values_at_large_epsilon() -> None:
    dataset = population(clients=40)
    values = pooled(dataset)
    query = Sum(feature=1, lower=0, upper=16)
    total = answer(dataset, query, epsilon=20, unit="example")
    mean = answer(dataset, Mean(feature=1, lower=0, upper=16), epsilon=20, unit="example")
    # a sum's noise std is sqrt(2) * 16 / 20 ~ 1.1; rounding to the grid adds ~ sqrt(n) step / 2
    assert total.value == pytest.approx(values.sum(), abs=8.0)
    assert mean.value == pytest.approx(values.mean(), abs=0.01)


def test_mean_clips_values_to_its_bounds() -> None:
    dataset = federated({"a": client("a", np.array([-50.0, 2.0, 4.0, 100.0] * 50))})
    result = answer(dataset, Mean(feature=1, lower=0, upper=8), epsilon=20, unit="example")
    assert result.value == pytest.approx((0 + 2 + 4 + 8) / 4, abs=0.05)


def test_mean_with_a_public_count_divides_one_release_by_it() -> None:
    dataset = population(clients=40)
    values = pooled(dataset)
    query = Mean(feature=1, lower=0, upper=16, public_count=len(values))
    result = answer(dataset, query, epsilon=20, unit="example")
    assert [release.name for release in result.releases] == ["sum"]
    assert result.value == pytest.approx(values.mean(), abs=0.01)


def test_missing_values_are_skipped_by_the_mean() -> None:
    dataset = federated({"a": client("a", np.array([np.nan, 2.0, 4.0, np.nan] * 50))})
    result = answer(dataset, Mean(feature=1, lower=0, upper=8), epsilon=20, unit="example")
    assert result.value == pytest.approx(3.0, abs=0.05)


def test_histogram_counts_each_bin_and_clamps_outliers_into_the_end_bins() -> None:
    column = np.array([-3.0, 0.0, 1.0, 3.9, 4.0, 7.5, 8.0, 12.0, 16.0, 40.0])
    dataset = federated({"a": client("a", column[:5]), "b": client("b", column[5:])})
    result = answer(
        dataset, Histogram(feature=1, bins=(0, 4, 8, 12, 16)), epsilon=40, unit="example"
    )
    # noise scale 1/40: a nonzero draw has probability 2 e^-40
    assert result.value == [4.0, 2.0, 1.0, 3.0]


def test_histogram_of_labels_counts_each_class() -> None:
    dataset = population()
    labels = np.concatenate([c.y_train for c in dataset.clients.values()])
    query = parse_query("histogram:feature=label,bins=0:1:2:3")
    result = answer(dataset, query, epsilon=40, unit="example")
    assert result.value == [float(np.sum(labels == k)) for k in range(3)]


def test_quantiles_are_within_the_histogram_resolution_at_large_epsilon() -> None:
    dataset = population(clients=30)
    values = pooled(dataset)
    query = Quantile(feature=1, q=(0.1, 0.5, 0.9), lower=0, upper=16, bins=64)
    result = answer(dataset, query, epsilon=40, unit="example")
    resolution = 16 / 64
    assert result.value == pytest.approx(np.quantile(values, [0.1, 0.5, 0.9]), abs=resolution)
    assert "resolution 0.25" in result.mechanism


def test_single_quantile_is_a_number() -> None:
    dataset = federated({"a": client("a", np.arange(100, dtype=float))})
    query = Quantile(feature=1, q=(0.5,), lower=0, upper=100, bins=100)
    result = answer(dataset, query, epsilon=40, unit="example")
    assert result.value == pytest.approx(50.0, abs=1.0)


def test_example_level_counts_every_example_with_sensitivity_one() -> None:
    dataset = federated({"big": client("big", np.ones(5000)), "small": client("s", np.ones(7))})
    result = answer(dataset, Count(), epsilon=40, unit="example")
    assert result.privacy_unit == "example"
    assert result.max_contribution is None
    assert result.releases[0].sensitivity == 1
    assert result.value == pytest.approx(5007, abs=1)


# --- bounded contributions ----------------------------------------------------------------------


def test_a_client_with_huge_values_contributes_at_most_the_sensitivity() -> None:
    huge = client("huge", np.full(10_000, 1e12))
    source = NoiseSource.for_testing(1)
    queries: list[Query] = [
        Count(max_contribution=40),
        Sum(feature=1, lower=-4, upper=12, max_contribution=40),
        Mean(feature=1, lower=-4, upper=12, max_contribution=40),
        Histogram(feature=1, bins=(0, 1, 2), max_contribution=40),
        Quantile(feature=1, q=(0.5,), lower=0, upper=16, max_contribution=40),
    ]
    for query in queries:
        releases = plan_releases(query, privacy_unit="client", epsilon=1.0, delta=1e-6)
        parts = client_contribution(query, huge, privacy_unit="client", source=source)
        for part, release in zip(parts, releases, strict=True):
            # 40 kept examples at the top of the range (12 is a grid point): the bound is reached
            assert int(np.abs(part).sum()) == release.sensitivity, (query, release.name)


def test_a_client_with_huge_values_moves_the_sum_by_at_most_its_bound() -> None:
    rng = np.random.default_rng(2)
    base = federated({f"c{i}": client(f"c{i}", rng.uniform(0, 16, 4)) for i in range(10)})
    attacked = federated({**base.clients, "huge": client("huge", np.full(10_000, -1e12))})
    query = Sum(feature=1, lower=-4, upper=16, max_contribution=4)  # 4 values per client
    without = answer(base, query, epsilon=20, seed=5)
    with_client = answer(attacked, query, epsilon=20, seed=6)
    # by hand: the client sends 4 values clipped to -4, so it moves the sum by -16 (bound 4 * 16);
    # the two answers' noises have std sqrt(2) * noise_scale together
    spread = 5 * math.sqrt(2) * without.noise_scale
    assert spread < 4 * 16 - 16
    assert isinstance(with_client.value, float) and isinstance(without.value, float)
    assert with_client.value - without.value == pytest.approx(-16, abs=spread)


def test_replace_one_sensitivity_is_the_width_of_what_a_unit_contributes() -> None:
    def sensitivity(query: Query, neighboring: Neighboring) -> int:
        (release,) = plan_releases(
            query, privacy_unit="client", epsilon=1.0, delta=1e-6, neighboring=neighboring
        )
        return release.sensitivity

    histogram = Histogram(feature=1, bins=(0, 1, 2), max_contribution=5)
    total = Sum(feature=1, lower=-4, upper=12, max_contribution=5)
    # replacing a client moves its 5 examples between bins: L1 up to 10
    assert (sensitivity(histogram, "add_remove"), sensitivity(histogram, "replace_one")) == (5, 10)
    # grid step 1/16: 5 values each in [-64, 192] grid steps
    assert sensitivity(total, "add_remove") == 5 * 192
    assert sensitivity(total, "replace_one") == 5 * (192 + 64)


def test_user_level_count_caps_each_client_at_max_contribution() -> None:
    dataset = federated({"big": client("big", np.ones(5000)), "small": client("s", np.ones(7))})
    result = answer(dataset, Count(max_contribution=50), epsilon=40)
    # noise scale 50 / 40: std ~ 1.7
    assert result.value == pytest.approx(50 + 7, abs=9)


# --- noise and accounting -----------------------------------------------------------------------


def test_histogram_noise_has_the_calibrated_variance() -> None:
    bins = 20_000
    query = Histogram(feature=1, bins=tuple(np.linspace(0, 16, bins + 1)), max_contribution=3)
    dataset = federated({f"c{i}": client(f"c{i}", np.array([0.5, 8.5])) for i in range(10)})
    result = answer(dataset, query, epsilon=2.0, seed=11)
    truth = 10 * np.histogram([0.5, 8.5], bins=np.asarray(query.bins))[0]
    noise = np.asarray(result.value) - truth
    parameter = result.releases[0].noise_parameter
    assert parameter == pytest.approx(2.0 / 3, rel=1e-3)  # epsilon / L1 sensitivity (3 examples)
    expected = discrete_laplace_variance(parameter)
    assert noise.mean() == pytest.approx(0.0, abs=5 * math.sqrt(expected / bins))
    # the variance estimate of a Laplace-like law has relative error ~ sqrt(5 / n) ~ 1.6%
    assert noise.var() == pytest.approx(expected, rel=0.08)
    assert result.noise_scale == pytest.approx(math.sqrt(expected), rel=1e-12)


def test_sum_noise_scale_is_the_laplace_scale_of_the_clipped_bound() -> None:
    query = Sum(feature=1, lower=0, upper=16, max_contribution=100)
    releases = plan_releases(query, privacy_unit="client", epsilon=0.5, delta=1e-6)
    (release,) = releases
    # a client moves the sum by at most 100 * 16: Laplace std sqrt(2) * 1600 / 0.5, up to the grid
    assert release.sensitivity == 100 * SUM_GRID_STEPS
    assert release.noise_std == pytest.approx(math.sqrt(2) * 1600 / 0.5, rel=1e-4)


def test_sum_noise_has_the_calibrated_variance_over_many_runs() -> None:
    dataset = federated({"a": client("a", np.full(10, 4.0)), "b": client("b", np.full(10, 8.0))})
    query = Sum(feature=1, lower=0, upper=16)  # 4 and 8 are grid points: no rounding noise
    runs = 1000
    draws = [answer(dataset, query, epsilon=1.0, seed=s, unit="example").value for s in range(runs)]
    noise = np.asarray(draws) - (10 * 4.0 + 10 * 8.0)
    # by hand: one example moves the sum by at most 16, i.e. 256 grid steps of 1/16; a = 1 / 256
    expected = discrete_laplace_variance(1 / 256) / 16**2
    assert noise.mean() == pytest.approx(0.0, abs=5 * math.sqrt(expected / runs))
    # the sample variance of n Laplace draws has relative sd sqrt(5 / n) ~ 7%
    assert noise.var() == pytest.approx(expected, rel=0.25)


def test_charged_epsilon_equals_dp_accountings_for_the_declared_event() -> None:
    book = ledger(epsilon=10.0)
    query = Mean(feature=1, lower=0, upper=16, max_contribution=25)
    result = run_query(
        population(), query, ledger=book, epsilon=1.0, delta=1e-6, source=NoiseSource.secure()
    )
    (entry,) = book.entries
    assert entry.kind == "analytics"
    assert entry.note == str(query)
    # by hand: two releases at epsilon 1/2 each; the sum's sensitivity is 25 * 256 grid units
    total, count = entry.event.events
    assert (total.sensitivity, count.sensitivity) == (25 * 256, 25)
    assert total.noise_parameter == pytest.approx(0.5 / (25 * 256), rel=1e-3)
    assert count.noise_parameter == pytest.approx(0.5 / 25, rel=1e-3)
    oracle = pld_privacy_accountant.PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE)
    oracle.compose(entry.event)
    assert result.epsilon == pytest.approx(oracle.get_epsilon(1e-6), rel=1e-3)
    assert result.delta == 1e-6
    assert result.ledger_epsilon_total == pytest.approx(oracle.get_epsilon(1e-5), rel=1e-3)


@pytest.mark.parametrize("epsilon", [0.01, 0.3, 1.0, 3.3, 8.0])
@pytest.mark.parametrize("delta", [1e-9, 1e-6])
def test_calibration_spends_at_most_the_epsilon_asked_and_nearly_all_of_it(
    epsilon: float, delta: float
) -> None:
    query = Mean(feature=1, lower=-1, upper=3.7, max_contribution=7)
    releases = plan_releases(query, privacy_unit="client", epsilon=epsilon, delta=delta)
    event = dp_event.ComposedDpEvent([release.event for release in releases])
    oracle = pld_privacy_accountant.PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE)
    spent = oracle.compose(event).get_epsilon(delta)
    assert spent <= epsilon * (1 + 1e-3)  # dp-accounting's own discretization, finer than ours
    assert spent >= 0.99 * epsilon
    # pure-DP calibration (Ghosh et al. 2009): a Delta <= epsilon / 2 for each of the two releases
    for release in releases:
        assert release.noise_parameter * release.sensitivity <= epsilon / 2 * (1 + 1e-12)


def test_epsilon_below_the_accountants_floor_is_refused_not_overspent() -> None:
    # under replace-one neighbours the ledger reports RDP, which cannot go below ~0.006 at 1e-6
    with pytest.raises(
        QueryError, match=r"cannot be calibrated to epsilon=0\.003 .* larger epsilon"
    ):
        plan_releases(
            Count(), privacy_unit="client", epsilon=0.003, delta=1e-6, neighboring="replace_one"
        )


def test_queries_add_up_on_the_ledger() -> None:
    book = ledger(epsilon=10.0)
    dataset = population()
    first = run_query(
        dataset, Count(), ledger=book, epsilon=1.0, delta=1e-6, source=NoiseSource.secure()
    )
    second = run_query(
        dataset, Count(), ledger=book, epsilon=1.0, delta=1e-6, source=NoiseSource.secure()
    )
    assert first.ledger_epsilon_total == pytest.approx(first.epsilon, rel=1e-3)
    assert second.ledger_epsilon_total == pytest.approx(2.0, rel=1e-2)


class WatchedClients(Mapping[str, ClientData]):
    """A client mapping that counts every read once armed (after the data set is built)."""

    def __init__(self, clients: Mapping[str, ClientData]) -> None:
        self._clients = dict(clients)
        self.armed = False
        self.reads = 0

    def _read(self) -> None:
        self.reads += self.armed

    def __getitem__(self, key: str) -> ClientData:
        self._read()
        return self._clients[key]

    def __iter__(self) -> Iterator[str]:
        self._read()
        return iter(self._clients)

    def __len__(self) -> int:
        self._read()
        return len(self._clients)


def test_query_over_budget_is_refused_before_any_client_is_read() -> None:
    watched = WatchedClients(population().clients)
    dataset = federated(watched)
    watched.armed = True
    book = ledger(epsilon=1.0)
    with pytest.raises(BudgetExceeded):
        run_query(
            dataset, Count(), ledger=book, epsilon=2.0, delta=1e-6, source=NoiseSource.secure()
        )
    assert watched.reads == 0
    assert book.spent().epsilon == 0
    run_query(dataset, Count(), ledger=book, epsilon=0.5, delta=1e-6, source=NoiseSource.secure())
    assert watched.reads > 0  # the instrument does see an affordable query read the clients


def test_feature_outside_the_data_set_is_refused_with_the_valid_range() -> None:
    with pytest.raises(QueryError, match=r"feature=7: .* features 0 to 2"):
        answer(population(), Sum(feature=7, lower=0, upper=1), epsilon=1.0)


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("count", Count()),
        ("sum:feature=3,lower=0,upper=16", Sum(feature=3, lower=0, upper=16)),
        ("mean:feature=3,lower=0,upper=16", Mean(feature=3, lower=0, upper=16)),
        ("histogram:feature=3,bins=0:4:8:12:16", Histogram(feature=3, bins=(0, 4, 8, 12, 16))),
        (
            "quantile:feature=3,q=0.5,lower=0,upper=16",
            Quantile(feature=3, q=(0.5,), lower=0, upper=16),
        ),
        ("histogram:feature=label,bins=0:1:2", Histogram(feature="label", bins=(0, 1, 2))),
        ("count:max_contribution=5", Count(max_contribution=5)),
        (
            " mean: feature=1, lower=-2.5, upper=1e3, public_count=40 ",
            Mean(feature=1, lower=-2.5, upper=1000, public_count=40),
        ),
    ],
)
def test_parse_query_reads_each_kind_and_its_string_reads_back(text: str, expected: Query) -> None:
    query = parse_query(text)
    assert query == expected
    assert parse_query(str(query)) == query


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("avg:feature=3", ["unknown query 'avg'", "count, sum, mean, histogram, quantile"]),
        ("histogramm:feature=1", ["did you mean 'histogram'"]),
        ("sum:feature=3,lower=0,uper=16", ["no key 'uper'", "did you mean 'upper'", "allowed:"]),
        (
            "sum:feature=3,lower=0",
            ["sum query needs upper (a number", "sum:feature=3,lower=0,upper=16"],
        ),
        ("sum:feature=x,lower=0,upper=1", ["feature='x'", "column index or 'label'"]),
        ("sum:feature=-1,lower=0,upper=1", ["feature=-1", "column index"]),
        ("mean:feature=1,lower=16,upper=0", ["lower=16 and upper=0", "lower must be below"]),
        ("sum:feature=1,lower=0,upper=nan", ["upper=nan", "finite number"]),
        ("histogram:feature=1,bins=0:8:4", ["bins=0:8:4", "strictly increasing"]),
        ("histogram:feature=1,bins=a:b", ["bins='a:b'", "bin edges such as 0:4:8:12:16"]),
        ("quantile:feature=1,q=1.5,lower=0,upper=1", ["q=1.5", "levels in [0, 1]"]),
        ("quantile:feature=1,q=0.5,lower=0,upper=1,bins=0", ["bins=0", "whole number >= 1"]),
        ("count:max_contribution=2.5", ["max_contribution='2.5'", "whole number"]),
        ("sum:feature3,lower=0,upper=1", ["'feature3'", "not key=value"]),
        ("count:max_contribution=1,max_contribution=2", ["'max_contribution' is given twice"]),
    ],
)
def test_parse_query_errors_name_the_bad_part_and_what_is_allowed(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(QueryError) as raised:
        parse_query(text)
    for fragment in fragments:
        assert fragment in str(raised.value)


# --- the command ---------------------------------------------------------------------------------


def test_query_command_answers_from_the_configs_data_and_keeps_one_ledger(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        "seed = 4\n"
        "[data]\nsource = 'digits'\nnum_clients = 5\n"
        "[privacy]\nepsilon = 3.0\ndelta = 1e-6\nreproducible_noise = true\n"
    )
    ledger_path = tmp_path / "queries" / "privacy_ledger.json"
    ledger_path.parent.mkdir()
    first = query_command(config, "count", epsilon=1.0, delta=1e-6, ledger_path=ledger_path)
    second = query_command(
        config,
        "mean:feature=label,lower=0,upper=9",
        epsilon=1.0,
        delta=1e-6,
        ledger_path=ledger_path,
    )
    assert ledger_path.exists()
    assert first.privacy_unit == "client"
    assert second.ledger_epsilon_total == pytest.approx(first.epsilon + second.epsilon, rel=1e-2)
    with pytest.raises(BudgetExceeded):
        query_command(config, "count", epsilon=1.5, delta=1e-6, ledger_path=ledger_path)
    assert second.as_dict()["query"] == "mean:feature=label,lower=0,upper=9,max_contribution=100"


def test_a_budget_raised_in_the_config_alone_buys_no_more_queries(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    text = "seed = 4\n[data]\nsource = 'digits'\nnum_clients = 5\n[privacy]\ndelta = 1e-6\n"
    config.write_text(text + "epsilon = 1.5\n")
    ledger_path = tmp_path / "privacy_ledger.json"
    query_command(config, "count", epsilon=1.0, delta=1e-6, ledger_path=ledger_path)
    config.write_text(text + "epsilon = 100.0\n")
    with pytest.raises(ConfigError, match="budget changes only explicitly"):
        query_command(config, "count", epsilon=1.0, delta=1e-6, ledger_path=ledger_path)
    raised = query_command(
        config, "count", epsilon=1.0, delta=1e-6, ledger_path=ledger_path, budget_changed_by="dana"
    )
    assert raised.ledger_epsilon_total == pytest.approx(2.0, rel=1e-2)


def test_query_command_needs_a_budget_in_the_config(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[data]\nsource = 'digits'\n")
    with pytest.raises(QueryError, match=r"set privacy\.epsilon"):
        query_command(config, "count", epsilon=1.0, delta=1e-6, ledger_path=tmp_path / "l.json")
