"""Specifications of attack simulation: poisoned updates, the attack wrapper and poisoned data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fedwarden.attacks import (
    ALittleIsEnough,
    AttackSimulation,
    GaussianNoise,
    InnerProductManipulation,
    ModelReplacement,
    RoundKnowledge,
    RunningMoments,
    Scaling,
    SignFlip,
    Trigger,
    add_backdoor,
    alie_z,
    backdoor_success_rate,
    backdoor_test_set,
    choose_malicious,
    flip_labels,
)
from fedwarden.core.errors import ConfigError, DataError, RoundAborted
from fedwarden.core.messages import ClientUpdate
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.pipeline import Aggregate, Aggregator, StreamingWeightedMean, ValidateUpdate


def vector(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def knowledge(
    mean: Sequence[float],
    std: Sequence[float],
    cohort_size: int = 10,
    num_malicious: int = 2,
) -> RoundKnowledge:
    return RoundKnowledge(
        benign_mean=np.array(mean, dtype=np.float64),
        benign_std=np.array(std, dtype=np.float64),
        num_benign=cohort_size - num_malicious,
        cohort_size=cohort_size,
        num_malicious=num_malicious,
    )


def update(client_id: str, values: np.ndarray, num_examples: int = 1) -> ClientUpdate:
    return ClientUpdate(4, client_id, values, num_examples, {"train_loss": 0.5})


RNG = np.random.default_rng(0)
PLAIN = knowledge([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


# --- the attacks' math on hand-computed cases --------------------------------------------------


def test_sign_flip_sends_minus_scale_times_own_update() -> None:
    own = vector(1.0, -2.0, 0.5)
    assert np.array_equal(SignFlip().poison(own, PLAIN, RNG), vector(-1.0, 2.0, -0.5))
    flipped = SignFlip(scale=3.0).poison(own, PLAIN, RNG)
    assert flipped.dtype == np.float32
    assert np.array_equal(flipped, vector(-3.0, 6.0, -1.5))


def test_scaling_multiplies_own_update_by_factor() -> None:
    boosted = Scaling(factor=4.0).poison(vector(1.0, -2.0, 0.25), PLAIN, RNG)
    assert boosted.dtype == np.float32
    assert np.array_equal(boosted, vector(4.0, -8.0, 1.0))


def test_gaussian_noise_has_requested_standard_deviation() -> None:
    size, sigma = 20_000, 2.0
    noise = GaussianNoise(sigma=sigma).poison(np.zeros(size, np.float32), PLAIN, RNG)
    assert noise.dtype == np.float32 and noise.shape == (size,)
    # the sample std of n normals has standard error sigma / sqrt(2n); allow six of them
    assert abs(float(noise.std()) - sigma) < 6 * sigma / np.sqrt(2 * size)
    assert abs(float(noise.mean())) < 6 * sigma / np.sqrt(size)


@pytest.mark.parametrize(
    ("cohort_size", "num_malicious", "quantile"),
    [
        (10, 1, 0.5),  # s = floor(6) - 1 = 5, (10 - 5) / 10
        (10, 3, 0.7),  # s = 6 - 3 = 3
        (50, 12, 0.72),  # s = 26 - 12 = 14, (50 - 14) / 50
        (5, 4, 0.8),  # majority: s = max(3 - 4, 1) = 1
    ],
)
def test_alie_z_is_the_normal_quantile_of_the_papers_supporter_count(
    cohort_size: int, num_malicious: int, quantile: float
) -> None:
    z = alie_z(cohort_size, num_malicious)
    assert z == pytest.approx(norm.ppf(quantile), abs=1e-12)
    assert norm.cdf(z) == pytest.approx(quantile, abs=1e-12)


def test_alie_z_of_fifty_with_twelve_malicious_matches_the_table_value() -> None:
    assert alie_z(50, 12) == pytest.approx(0.5828415, abs=1e-7)
    assert alie_z(10, 1) == 0.0


@pytest.mark.parametrize(("cohort_size", "num_malicious"), [(0, 0), (5, 0), (5, 6)])
def test_alie_z_refuses_impossible_counts(cohort_size: int, num_malicious: int) -> None:
    with pytest.raises(ConfigError, match="ALIE"):
        alie_z(cohort_size, num_malicious)


def test_alie_sends_mean_minus_z_times_std() -> None:
    seen = knowledge([1.0, 2.0, -1.0], [0.5, 1.0, 2.0], cohort_size=10, num_malicious=3)
    fixed = ALittleIsEnough(z=1.5).poison(vector(9.0, 9.0, 9.0), seen, RNG)
    assert np.array_equal(fixed, vector(0.25, 0.5, -4.0))
    z = norm.ppf(0.7)
    expected = np.array([1.0 - 0.5 * z, 2.0 - z, -1.0 - 2.0 * z], dtype=np.float32)
    assert np.array_equal(ALittleIsEnough().poison(vector(9.0, 9.0, 9.0), seen, RNG), expected)


def test_ipm_sends_minus_epsilon_times_benign_mean() -> None:
    seen = knowledge([2.0, -4.0, 0.5], [1.0, 1.0, 1.0])
    assert np.array_equal(
        InnerProductManipulation().poison(vector(7.0, 7.0, 7.0), seen, RNG),
        vector(-0.2, 0.4, -0.05),
    )
    assert np.array_equal(
        InnerProductManipulation(epsilon=100.0).poison(vector(7.0, 7.0, 7.0), seen, RNG),
        vector(-200.0, 400.0, -50.0),
    )


def test_model_replacement_boosts_by_cohort_size_over_malicious_count() -> None:
    own = vector(1.0, -0.5, 0.0)
    seen = knowledge([0.0] * 3, [1.0] * 3, cohort_size=10, num_malicious=2)
    assert np.array_equal(ModelReplacement().poison(own, seen, RNG), vector(5.0, -2.5, 0.0))
    alone = knowledge([0.0] * 3, [1.0] * 3, cohort_size=10, num_malicious=1)
    assert np.array_equal(ModelReplacement().poison(own, alone, RNG), vector(10.0, -5.0, 0.0))
    assert np.array_equal(ModelReplacement(boost=3.0).poison(own, seen, RNG), vector(3, -1.5, 0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SignFlip(scale=0.0),
        lambda: GaussianNoise(sigma=-1.0),
        lambda: Scaling(factor=float("inf")),
        lambda: InnerProductManipulation(epsilon=0.0),
        lambda: ModelReplacement(boost=-2.0),
        lambda: ALittleIsEnough(z=float("nan")),
    ],
)
def test_attack_parameters_out_of_range_are_refused(make: object) -> None:
    with pytest.raises(ConfigError, match="attack"):
        make()  # type: ignore[operator]


# --- streaming statistics of the benign updates ------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda count: st.lists(
            st.lists(st.floats(-1e3, 1e3, width=32), min_size=4, max_size=4),
            min_size=count,
            max_size=count,
        )
    )
)
def test_running_moments_equal_numpy_mean_and_population_std(rows: list[list[float]]) -> None:
    matrix = np.array(rows, dtype=np.float32)
    moments = RunningMoments(4)
    for row in matrix:
        moments.add(row)
    assert moments.count == len(rows)
    as64 = matrix.astype(np.float64)
    np.testing.assert_allclose(moments.mean, as64.mean(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(moments.variance), as64.std(axis=0), rtol=1e-9, atol=1e-6)


# --- the attack wrapper ------------------------------------------------------------------------


class Recording(Aggregator):
    """An inner aggregator that keeps every update it is given, in order."""

    name: ClassVar[str] = "recording"
    needs_individual_updates = True

    def __init__(self) -> None:
        self.added: list[ClientUpdate] = []
        self.cohort: Sequence[str] = ()

    def start(self, size: int, cohort: Sequence[str]) -> None:
        self.added, self.cohort = [], cohort

    def add(self, update: ClientUpdate) -> None:
        self.added.append(update)

    def result(self) -> Aggregate:
        stacked = np.stack([u.update for u in self.added])
        return Aggregate(stacked.mean(axis=0), float(len(self.added)), len(self.added))

    def round_parameters(self) -> dict[str, float]:
        return {"clip_norm": 2.5}

    def report(self) -> dict[str, object]:
        return {"protocol": "recording"}


BENIGN = {
    "b1": vector(1.0, 2.0, -1.0),
    "b2": vector(3.0, 0.0, -1.0),
    "b3": vector(2.0, 1.0, 5.0),
}
MALICIOUS = {"m1": vector(0.5, 0.5, 0.5), "m2": vector(-1.0, 4.0, 2.0)}
COHORT = ["b1", "m1", "b2", "m2", "b3"]


def run_round(simulation: Aggregator, order: Sequence[str] = COHORT) -> Aggregate:
    simulation.start(3, COHORT)
    for client_id in order:
        simulation.add(update(client_id, {**BENIGN, **MALICIOUS}[client_id]))
    return simulation.result()


def test_wrapper_passes_benign_updates_unchanged_and_poisons_held_ones_last() -> None:
    inner = Recording()
    simulation = AttackSimulation(inner, SignFlip(), {"m1", "m2"}, seed=1)
    simulation.start(3, COHORT)
    sent = {cid: update(cid, {**BENIGN, **MALICIOUS}[cid]) for cid in COHORT}
    for client_id in COHORT:
        simulation.add(sent[client_id])
    assert [u.client_id for u in inner.added] == ["b1", "b2", "b3"]
    assert all(added is sent[added.client_id] for added in inner.added)
    simulation.result()
    assert [u.client_id for u in inner.added] == ["b1", "b2", "b3", "m1", "m2"]
    for poisoned in inner.added[3:]:
        honest = sent[poisoned.client_id]
        assert np.array_equal(poisoned.update, -honest.update)
        assert poisoned.num_examples == honest.num_examples
        assert poisoned.metrics == honest.metrics


def test_streaming_mean_of_attacked_round_is_mean_of_benign_and_poisoned_vectors() -> None:
    simulation = AttackSimulation(
        StreamingWeightedMean("uniform"), InnerProductManipulation(0.5), {"m1", "m2"}, seed=1
    )
    aggregate = run_round(simulation)
    benign_mean = np.mean(list(BENIGN.values()), axis=0)  # [2, 1, 1]
    poisoned = -0.5 * benign_mean
    expected = (sum(BENIGN.values()) + 2 * poisoned) / 5  # [0.8, 0.4, 0.4]
    np.testing.assert_allclose(aggregate.mean_update, expected, rtol=1e-6)
    np.testing.assert_allclose(aggregate.mean_update, [0.8, 0.4, 0.4], rtol=1e-6)
    assert aggregate.num_updates == 5


def test_alie_in_the_wrapper_uses_the_rounds_benign_statistics_and_cohort() -> None:
    inner = Recording()
    run_round(AttackSimulation(inner, ALittleIsEnough(), {"m1", "m2"}, seed=1))
    benign = np.array(list(BENIGN.values()), dtype=np.float64)
    z = norm.ppf((5 - (3 - 2)) / 5)  # n = 5, f = 2, s = floor(3.5) - 2 = 1
    expected = (benign.mean(axis=0) - z * benign.std(axis=0)).astype(np.float32)
    for poisoned in inner.added[3:]:
        np.testing.assert_allclose(poisoned.update, expected, rtol=1e-6)
        assert poisoned.update.dtype == np.float32


def test_without_benign_updates_the_attacker_uses_its_own_honest_statistics() -> None:
    inner = Recording()
    simulation = AttackSimulation(inner, InnerProductManipulation(1.0), {"m1", "m2"}, seed=1)
    simulation.start(3, ["m1", "m2"])
    for client_id, values in MALICIOUS.items():
        simulation.add(update(client_id, values))
    simulation.result()
    own_mean = (MALICIOUS["m1"] + MALICIOUS["m2"]) / 2
    for poisoned in inner.added:
        np.testing.assert_allclose(poisoned.update, -own_mean, rtol=1e-6)


def test_gaussian_attack_is_reproducible_per_seed_whatever_the_arrival_order() -> None:
    first, second, other = Recording(), Recording(), Recording()
    run_round(AttackSimulation(first, GaussianNoise(), {"m1", "m2"}, seed=7))
    run_round(AttackSimulation(second, GaussianNoise(), {"m1", "m2"}, seed=7), COHORT[::-1])
    run_round(AttackSimulation(other, GaussianNoise(), {"m1", "m2"}, seed=8))
    for a, b in zip(first.added[3:], second.added[3:], strict=True):
        assert np.array_equal(a.update, b.update)
    assert not np.array_equal(first.added[3].update, first.added[4].update)
    assert not np.array_equal(first.added[3].update, other.added[3].update)


def test_wrapper_mirrors_inner_flags_and_reports_the_attack() -> None:
    inner = Recording()
    simulation = AttackSimulation(inner, SignFlip(), ["m1", "m2", "m9"], seed=1)
    assert simulation.name == "attacked_recording"
    assert simulation.needs_individual_updates and not simulation.hides_individual_updates
    assert simulation.round_parameters() == {"clip_norm": 2.5}
    run_round(simulation)
    assert simulation.report() == {
        "protocol": "recording",
        "attack": {
            "name": "sign_flip",
            "malicious_clients": 3,
            "poisoned_updates": 2,
            "poisoned_rejected": 0,
        },
    }


def test_poisoned_updates_pass_through_the_server_stages_and_can_be_rejected() -> None:
    simulation = AttackSimulation(
        StreamingWeightedMean("uniform"),
        Scaling(100.0),
        {"m1", "m2"},
        seed=1,
        stages=[ValidateUpdate(3, max_norm=10.0)],
    )
    aggregate = run_round(simulation)
    np.testing.assert_allclose(aggregate.mean_update, [2.0, 1.0, 1.0], rtol=1e-6)
    assert aggregate.num_updates == 3
    assert simulation.report()["attack"]["poisoned_rejected"] == 2


def test_round_of_only_rejected_poisoned_updates_is_aborted() -> None:
    simulation = AttackSimulation(
        StreamingWeightedMean("uniform"),
        Scaling(100.0),
        {"m1", "m2"},
        seed=1,
        stages=[ValidateUpdate(3, max_norm=10.0)],
    )
    simulation.start(3, ["m1", "m2"])
    for client_id, values in MALICIOUS.items():
        simulation.add(update(client_id, values))
    with pytest.raises(RoundAborted, match="rejected every poisoned update"):
        simulation.result()


def test_wrapper_without_malicious_clients_is_refused() -> None:
    with pytest.raises(ConfigError, match="no malicious client"):
        AttackSimulation(Recording(), SignFlip(), [], seed=1)


# --- choosing malicious clients ----------------------------------------------------------------


def test_choose_malicious_picks_the_rounded_fraction_reproducibly_in_client_order() -> None:
    ids = [f"client_{i:02d}" for i in range(23)]
    chosen = choose_malicious(ids, 0.2, seed=5)
    assert len(chosen) == 5  # round(4.6)
    assert len(set(chosen)) == 5 and set(chosen) <= set(ids)
    assert list(chosen) == [cid for cid in ids if cid in chosen]
    assert choose_malicious(ids, 0.2, seed=5) == chosen
    assert choose_malicious(ids, 0.0, seed=5) == ()
    assert choose_malicious(ids, 1.0, seed=5) == tuple(ids)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, 0.1])
def test_choose_malicious_refuses_fractions_out_of_range_or_rounding_to_none(
    fraction: float,
) -> None:
    with pytest.raises(ConfigError, match="malicious fraction"):
        choose_malicious(["a", "b", "c", "d"], fraction, seed=0)


# --- data poisoning ----------------------------------------------------------------------------


def toy_dataset(
    num_clients: int = 4, num_train: int = 20, num_classes: int = 4
) -> FederatedDataset:
    """Clients with features in [0, 0.5) (so a trigger value of 1 never occurs naturally)."""
    rng = np.random.default_rng(11)
    clients = {
        f"c{i}": ClientData(
            f"c{i}",
            rng.uniform(0.0, 0.5, size=(num_train, 16)),
            rng.integers(0, num_classes, size=num_train),
            rng.uniform(0.0, 0.5, size=(5, 16)),
            rng.integers(0, num_classes, size=5),
        )
        for i in range(num_clients)
    }
    return FederatedDataset(
        "toy",
        clients,
        rng.uniform(0.0, 0.5, size=(30, 16)),
        np.arange(30) % num_classes,
        16,
        num_classes,
    )


@pytest.mark.parametrize(
    ("mapping", "flip"),
    [("shift", lambda y: (y + 1) % 4), ("reverse", lambda y: 3 - y)],
)
def test_label_flip_changes_exactly_the_malicious_clients_training_labels(
    mapping: str, flip: object
) -> None:
    dataset = toy_dataset()
    before = {cid: client.y_train.copy() for cid, client in dataset.clients.items()}
    poisoned = flip_labels(dataset, {"c1", "c3"}, mapping=mapping)  # type: ignore[arg-type]
    assert poisoned.client_ids == dataset.client_ids
    for cid, client in poisoned.clients.items():
        original = dataset.clients[cid]
        assert np.array_equal(original.y_train, before[cid])  # input untouched
        assert np.array_equal(client.x_train, original.x_train)
        assert np.array_equal(client.y_test, original.y_test)
        if cid in {"c1", "c3"}:
            assert np.array_equal(client.y_train, flip(before[cid]))  # type: ignore[operator]
        else:
            assert client is original
    shifted = flip_labels(dataset, {"c1"}, num_classes=4)
    assert np.all(shifted.clients["c1"].y_train != dataset.clients["c1"].y_train)


def test_label_flip_refuses_unknown_clients_and_regression() -> None:
    dataset = toy_dataset()
    with pytest.raises(DataError, match="not in data set"):
        flip_labels(dataset, {"c9"})
    regression = FederatedDataset(
        "reg", dataset.clients, dataset.x_test, dataset.y_test, 16, num_classes=None
    )
    with pytest.raises(DataError, match="classification"):
        flip_labels(regression, {"c1"})


def test_corner_patch_of_digits_is_the_bottom_right_two_by_two_square() -> None:
    trigger = Trigger.corner_patch()
    assert trigger.indices == (54, 55, 62, 63)
    assert trigger.value == 1.0
    assert Trigger.corner_patch(image_side=4, patch_side=1, value=16.0).indices == (15,)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_backdoor_stamps_the_requested_fraction_and_relabels_it(fraction: float) -> None:
    dataset = toy_dataset(num_train=22)
    trigger = Trigger((0, 7, 15), 1.0)
    poisoned = add_backdoor(
        dataset, ["c0", "c2"], trigger, target_label=3, fraction=fraction, seed=4
    )
    expected_count = int(np.floor(fraction * 22 + 0.5))
    for cid, client in poisoned.clients.items():
        original = dataset.clients[cid]
        if cid not in {"c0", "c2"}:
            assert client is original
            continue
        stamped = np.all(client.x_train[:, [0, 7, 15]] == 1.0, axis=1)
        assert int(stamped.sum()) == expected_count
        assert np.all(client.y_train[stamped] == 3)
        untouched = [i for i in range(16) if i not in (0, 7, 15)]
        assert np.array_equal(client.x_train[:, untouched], original.x_train[:, untouched])
        assert np.array_equal(client.x_train[~stamped], original.x_train[~stamped])
        assert np.array_equal(client.y_train[~stamped], original.y_train[~stamped])
        assert not np.any(original.x_train == 1.0)  # input untouched
        assert np.array_equal(client.x_test, original.x_test)
    again = add_backdoor(dataset, ["c0", "c2"], trigger, target_label=3, fraction=fraction, seed=4)
    assert np.array_equal(again.clients["c0"].x_train, poisoned.clients["c0"].x_train)


def test_backdoor_refuses_bad_target_or_fraction() -> None:
    dataset = toy_dataset()
    trigger = Trigger((0,), 1.0)
    with pytest.raises(ConfigError, match="target_label"):
        add_backdoor(dataset, ["c0"], trigger, target_label=4, fraction=0.5, seed=0)
    with pytest.raises(ConfigError, match="fraction"):
        add_backdoor(dataset, ["c0"], trigger, target_label=1, fraction=0.0, seed=0)
    with pytest.raises(DataError, match="do not fit"):
        add_backdoor(dataset, ["c0"], Trigger((16,), 1.0), target_label=1, fraction=0.5, seed=0)


def test_backdoor_test_set_holds_triggered_examples_of_other_classes() -> None:
    dataset = toy_dataset()
    trigger = Trigger((2, 3), 1.0)
    test_set = backdoor_test_set(dataset.x_test, dataset.y_test, trigger, target_label=1)
    others = dataset.y_test != 1
    assert len(test_set.x) == int(others.sum()) == 22  # 30 examples, classes 0..3 in turn
    assert np.all(test_set.true_labels != 1)
    assert np.all(test_set.x[:, [2, 3]] == 1.0)
    assert np.array_equal(
        np.delete(test_set.x, [2, 3], axis=1), np.delete(dataset.x_test[others], [2, 3], axis=1)
    )
    assert np.array_equal(test_set.target_labels, np.ones(22, dtype=np.int64))


def test_backdoor_success_rate_is_fraction_predicted_as_target() -> None:
    x = np.zeros((8, 4))
    x[:3, 3] = 1.0  # three of eight carry a learned trigger

    def predict(features: np.ndarray) -> np.ndarray:
        return np.where(features[:, 3] > 0.5, 2, 0)

    def scores(features: np.ndarray) -> np.ndarray:
        return np.eye(3)[predict(features)]

    assert backdoor_success_rate(predict, x, target_label=2) == 3 / 8
    assert backdoor_success_rate(scores, x, target_label=2) == 3 / 8
    assert backdoor_success_rate(predict, x, target_label=0) == 5 / 8
    with pytest.raises(DataError, match="at least one"):
        backdoor_success_rate(predict, x[:0], target_label=2)
