"""Specifications of the update pipeline: validation, the streaming mean, and stage composition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.core.errors import PipelineError, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.data.dataset import ClientData
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline import (
    Aggregate,
    Aggregator,
    Pipeline,
    Stage,
    StreamingWeightedMean,
    ValidateUpdate,
)
from fedwarden.pipeline.stage import client_halves

FLOAT32_MAX = float(np.finfo(np.float32).max)


def client_update(values: object, num_examples: int = 10, client_id: str = "c1") -> ClientUpdate:
    """A round-3 update from ``client_id`` carrying ``values`` as given."""
    return ClientUpdate(3, client_id, values, num_examples)  # type: ignore[arg-type]


def float32_update(values: list[float], num_examples: int = 10) -> ClientUpdate:
    return client_update(np.array(values, dtype=np.float32), num_examples)


def rejection(stage: ValidateUpdate, update: ClientUpdate) -> UpdateRejected:
    """The UpdateRejected that ``stage`` raises for ``update``."""
    with pytest.raises(UpdateRejected) as caught:
        stage.server_half(update)
    return caught.value


# --- ValidateUpdate -------------------------------------------------------------------------


def test_a_good_update_passes_validation_unchanged() -> None:
    vector = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    update = client_update(vector)
    result = ValidateUpdate(3, max_norm=10.0).server_half(update)
    assert result is update
    np.testing.assert_array_equal(result.update, [0.5, -1.0, 2.0])


@pytest.mark.parametrize(
    "values",
    [np.zeros(3, dtype=np.float64), np.zeros(3, dtype=np.float16), [0.0, 0.0, 0.0]],
    ids=["float64", "float16", "list"],
)
def test_an_update_that_is_not_a_float32_array_is_rejected_for_dtype(values: object) -> None:
    error = rejection(ValidateUpdate(3), client_update(values))
    assert error.reason == "dtype"
    assert "'c1'" in str(error)
    assert "float32" in str(error)


@pytest.mark.parametrize(
    "vector",
    [np.zeros(2, np.float32), np.zeros(4, np.float32), np.zeros((3, 1), np.float32)],
    ids=["short", "long", "two_dimensional"],
)
def test_an_update_of_the_wrong_shape_is_rejected_for_shape(vector: np.ndarray) -> None:
    error = rejection(ValidateUpdate(3), client_update(vector))
    assert error.reason == "shape"
    assert str(vector.shape) in str(error)
    assert "(3,)" in str(error)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "plus_inf", "minus_inf"])
@pytest.mark.parametrize("max_norm", [None, 1e6], ids=["no_bound", "bound"])
def test_an_update_with_nan_or_inf_is_rejected_as_non_finite(
    bad: float, max_norm: float | None
) -> None:
    error = rejection(ValidateUpdate(3, max_norm), float32_update([0.1, bad, 0.2]))
    assert error.reason == "non_finite"
    assert "'c1'" in str(error)


def test_a_non_finite_value_beside_a_huge_one_is_still_non_finite() -> None:
    error = rejection(ValidateUpdate(2, max_norm=1.0), float32_update([3e38, np.nan]))
    assert error.reason == "non_finite"


@pytest.mark.parametrize("num_examples", [0, -5])
def test_an_update_claiming_no_examples_is_rejected_for_weight(num_examples: int) -> None:
    error = rejection(ValidateUpdate(2), float32_update([0.0, 1.0], num_examples))
    assert error.reason == "weight"
    assert str(num_examples) in str(error)


def test_an_update_above_the_norm_bound_is_rejected_for_norm_bound() -> None:
    error = rejection(ValidateUpdate(2, max_norm=4.99), float32_update([3.0, 4.0]))
    assert error.reason == "norm_bound"
    assert "5" in str(error)
    assert "4.99" in str(error)


def test_an_update_exactly_at_the_norm_bound_passes() -> None:
    update = float32_update([3.0, 4.0])
    assert ValidateUpdate(2, max_norm=5.0).server_half(update) is update


@pytest.mark.parametrize("values", [[3e38, 1.0], [FLOAT32_MAX, -FLOAT32_MAX], [1e20, 1e20, 1e20]])
def test_finite_values_whose_squared_norm_overflows_break_a_norm_bound(
    values: list[float],
) -> None:
    assert np.isfinite(np.array(values, dtype=np.float32)).all()
    error = rejection(ValidateUpdate(len(values), max_norm=1e6), float32_update(values))
    assert error.reason == "norm_bound"


@pytest.mark.parametrize("values", [[3e38, 1.0], [FLOAT32_MAX, -FLOAT32_MAX], [1e20, 1e20, 1e20]])
def test_finite_values_whose_squared_norm_overflows_pass_without_a_norm_bound(
    values: list[float],
) -> None:
    update = float32_update(values)
    assert ValidateUpdate(len(values)).server_half(update) is update


def test_an_empty_model_accepts_an_empty_update() -> None:
    update = client_update(np.zeros(0, dtype=np.float32))
    assert ValidateUpdate(0, max_norm=1.0).server_half(update) is update


# --- StreamingWeightedMean ------------------------------------------------------------------


def aggregate(aggregator: Aggregator, updates: np.ndarray, num_examples: np.ndarray) -> Aggregate:
    """Run one round of ``aggregator`` over the rows of ``updates``."""
    aggregator.start(updates.shape[1], [f"c{index}" for index in range(len(updates))])
    for row, weight in zip(updates, num_examples, strict=True):
        aggregator.add(client_update(row, int(weight)))
    return aggregator.result()


def random_cohort(seed: int, cohort: int, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 updates (one row per client) and each client's number of examples."""
    rng = np.random.default_rng(seed)
    updates = rng.normal(0.0, rng.uniform(0.01, 10.0), (cohort, dims)).astype(np.float32)
    return updates, rng.integers(1, 1000, cohort)


@settings(max_examples=50, deadline=None)
@given(
    cohort=st.integers(1, 30),
    dims=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_streaming_mean_equals_numpys_example_weighted_average(
    cohort: int, dims: int, seed: int
) -> None:
    updates, num_examples = random_cohort(seed, cohort, dims)
    result = aggregate(StreamingWeightedMean("examples"), updates, num_examples)

    expected = np.average(updates.astype(np.float64), axis=0, weights=num_examples)
    scale = float(np.abs(updates).max())
    np.testing.assert_allclose(result.mean_update, expected, rtol=1e-5, atol=1e-5 * scale)
    assert result.mean_update.dtype == np.float32
    assert result.total_weight == float(num_examples.sum())
    assert result.num_updates == cohort


@settings(max_examples=25, deadline=None)
@given(cohort=st.integers(1, 30), dims=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_uniform_weighting_equals_the_plain_mean_whatever_the_example_counts(
    cohort: int, dims: int, seed: int
) -> None:
    updates, num_examples = random_cohort(seed, cohort, dims)
    result = aggregate(StreamingWeightedMean("uniform"), updates, num_examples)

    expected = updates.astype(np.float64).mean(axis=0)
    scale = float(np.abs(updates).max())
    np.testing.assert_allclose(result.mean_update, expected, rtol=1e-5, atol=1e-5 * scale)
    assert result.total_weight == float(cohort)
    assert result.num_updates == cohort


def test_the_weighted_mean_of_two_updates_is_exact_by_hand() -> None:
    updates = np.array([[1.0, 2.0], [4.0, -1.0]], dtype=np.float32)
    result = aggregate(StreamingWeightedMean(), updates, np.array([1, 3]))
    # (1 * [1, 2] + 3 * [4, -1]) / 4 = [13, -1] / 4
    np.testing.assert_array_equal(result.mean_update, [3.25, -0.25])


def test_start_resets_the_sum_between_rounds_of_the_same_size() -> None:
    aggregator = StreamingWeightedMean()
    first = aggregate(aggregator, np.full((2, 3), 100.0, np.float32), np.array([5, 5]))
    second = aggregate(aggregator, np.array([[1.0, 2.0, 3.0]], np.float32), np.array([7]))
    np.testing.assert_array_equal(first.mean_update, [100.0, 100.0, 100.0])
    np.testing.assert_array_equal(second.mean_update, [1.0, 2.0, 3.0])
    assert second.total_weight == 7.0
    assert second.num_updates == 1


def test_start_resets_the_sum_for_a_round_of_another_size() -> None:
    aggregator = StreamingWeightedMean()
    aggregate(aggregator, np.full((2, 3), 100.0, np.float32), np.array([5, 5]))
    second = aggregate(aggregator, np.array([[1.0, 2.0]], np.float32), np.array([7]))
    np.testing.assert_array_equal(second.mean_update, [1.0, 2.0])


def test_a_result_is_not_changed_by_the_next_round() -> None:
    aggregator = StreamingWeightedMean()
    first = aggregate(aggregator, np.array([[1.0, 2.0]], np.float32), np.array([1]))
    aggregate(aggregator, np.array([[5.0, 6.0]], np.float32), np.array([1]))
    np.testing.assert_array_equal(first.mean_update, [1.0, 2.0])


# --- Pipeline -------------------------------------------------------------------------------


class SecureSum(Stage):
    """Hides each client's update from the server."""

    name: ClassVar[str] = "secure_sum"
    hides_individual_updates: ClassVar[bool] = True


class ServerClip(Stage):
    """Needs each client's update in the clear."""

    name: ClassVar[str] = "server_clip"
    needs_individual_updates: ClassVar[bool] = True


class CoordinateMedian(Aggregator):
    """An aggregator that needs each client's update in the clear."""

    name: ClassVar[str] = "coordinate_median"
    needs_individual_updates: ClassVar[bool] = True

    def start(self, size: int, cohort: Sequence[str]) -> None:
        self.rows: list[np.ndarray] = []

    def add(self, update: ClientUpdate) -> None:
        self.rows.append(update.update)

    def result(self) -> Aggregate:
        return Aggregate(np.median(self.rows, axis=0), float(len(self.rows)), len(self.rows))


class AddOne(Stage):
    name: ClassVar[str] = "add_one"

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        return client_update(update.update + np.float32(1.0), update.num_examples)

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        return client_update(update.update + np.float32(1.0), update.num_examples)


class Double(Stage):
    name: ClassVar[str] = "double"

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        return client_update(update.update * np.float32(2.0), update.num_examples)

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        return client_update(update.update * np.float32(2.0), update.num_examples)


def context() -> ClientContext:
    empty = np.zeros((0, 2), dtype=np.float32)
    labels = np.zeros(0, dtype=np.int64)
    data = ClientData("c1", empty, labels, empty, labels)
    return ClientContext("c1", data, 3, np.random.default_rng(0))


@pytest.mark.parametrize(
    "stages",
    [[SecureSum(), ServerClip()], [ServerClip(), SecureSum()]],
    ids=["hiding_first", "needing_first"],
)
def test_a_stage_that_hides_updates_is_refused_beside_a_stage_that_needs_them(
    stages: list[Stage],
) -> None:
    with pytest.raises(PipelineError) as caught:
        Pipeline(stages, StreamingWeightedMean())
    assert "secure_sum" in str(caught.value)
    assert "server_clip" in str(caught.value)


def test_a_stage_that_hides_updates_is_refused_beside_an_aggregator_that_needs_them() -> None:
    with pytest.raises(PipelineError) as caught:
        Pipeline([SecureSum()], CoordinateMedian())
    assert "secure_sum" in str(caught.value)
    assert "coordinate_median" in str(caught.value)


@pytest.mark.parametrize(
    ("stages", "aggregator"),
    [
        ([SecureSum()], StreamingWeightedMean()),
        ([ServerClip()], CoordinateMedian()),
        ([ValidateUpdate(2), ServerClip()], StreamingWeightedMean()),
    ],
    ids=["hiding_only", "needing_only", "validate_and_needing"],
)
def test_stages_that_do_not_conflict_build_a_pipeline(
    stages: list[Stage], aggregator: Aggregator
) -> None:
    pipeline = Pipeline(stages, aggregator)
    assert pipeline.describe() == [stage.name for stage in stages] + [aggregator.name]


def test_client_halves_run_the_stages_in_order() -> None:
    update = float32_update([1.0, 3.0])
    add_then_double = client_halves([AddOne(), Double()], update, context())
    double_then_add = client_halves([Double(), AddOne()], update, context())
    np.testing.assert_array_equal(add_then_double.update, [4, 8])
    np.testing.assert_array_equal(double_then_add.update, [3, 7])


def test_server_half_runs_the_stages_in_order() -> None:
    update = float32_update([1.0, 3.0])
    add_then_double = Pipeline([AddOne(), Double()], StreamingWeightedMean())
    double_then_add = Pipeline([Double(), AddOne()], StreamingWeightedMean())
    np.testing.assert_array_equal(add_then_double.server_half(update).update, [4, 8])
    np.testing.assert_array_equal(double_then_add.server_half(update).update, [3, 7])


def test_a_rejection_in_server_half_stops_the_later_stages() -> None:
    seen: list[ClientUpdate] = []

    class Record(Stage):
        def server_half(self, update: ClientUpdate) -> ClientUpdate:
            seen.append(update)
            return update

    pipeline = Pipeline([ValidateUpdate(2), Record()], StreamingWeightedMean())
    with pytest.raises(UpdateRejected) as caught:
        pipeline.server_half(float32_update([np.nan, 0.0]))
    assert caught.value.reason == "non_finite"
    assert seen == []
