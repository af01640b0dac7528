"""Specifications of the Byzantine-robust aggregators, anomaly scores and client reputation."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedwarden.core.errors import ConfigError, PipelineError, RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate, TrainConfig
from fedwarden.pipeline import Pipeline, Stage
from fedwarden.pipeline.robust import (
    AnomalyRule,
    Bulyan,
    CenteredClipping,
    ClientScore,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    MultiKrum,
    NormBoundedMean,
    Reputation,
    RobustAggregator,
    TrimmedMean,
    anomaly_scores,
    bulyan,
    centered_clipping,
    coordinate_median,
    fltrust,
    geometric_median,
    krum_scores,
    multi_krum,
    norm_bounded_mean,
    pairwise_squared_distances,
    robust_z_scores,
    trimmed_mean,
)

# One coordinate per client: six honest values and one attacker at 100 (row 6).
LINE = [0.0, 1.0, 3.0, 4.0, 7.0, 10.0, 100.0]


def column(values: Sequence[float]) -> np.ndarray:
    """``values`` as an n x 1 float32 matrix, one client per row."""
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def run_round(
    aggregator: RobustAggregator, rows: np.ndarray, cohort_size: int | None = None
) -> tuple[np.ndarray, float, int]:
    """Feed ``rows`` (client ``c<i>`` sends row i) through one round; return the aggregate."""
    count = rows.shape[0] if cohort_size is None else cohort_size
    aggregator.start(rows.shape[1], [f"c{index}" for index in range(count)])
    for index, row in enumerate(rows):
        aggregator.add(ClientUpdate(1, f"c{index}", row.astype(np.float32), num_examples=1))
    aggregate = aggregator.result()
    return aggregate.mean_update, aggregate.total_weight, aggregate.num_updates


finite_matrices = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 11), st.integers(1, 5)),
    elements=st.floats(-1e3, 1e3, width=32),
)
integer_matrices = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 11), st.integers(1, 5)),
    elements=st.integers(-1000, 1000).map(float),
)


# --- the rules on hand-computed cases -----------------------------------------------------


def test_coordinate_median_of_the_line_is_its_middle_value() -> None:
    np.testing.assert_array_equal(coordinate_median(column(LINE)), [4.0])
    np.testing.assert_array_equal(coordinate_median(column([1.0, 2.0, 9.0, 50.0])), [5.5])


@settings(max_examples=40, deadline=None)
@given(finite_matrices)
def test_coordinate_median_equals_numpy_median_and_leaves_the_matrix_intact(
    matrix: np.ndarray,
) -> None:
    original = matrix.copy()
    np.testing.assert_array_equal(coordinate_median(matrix), np.median(matrix, axis=0))
    np.testing.assert_array_equal(trimmed_mean(matrix, 0.2), trimmed_mean(original, 0.2))
    np.testing.assert_array_equal(matrix, original)


def test_trimmed_mean_drops_floor_beta_n_at_each_end() -> None:
    # floor(0.2 * 7) = 1: drop 0 and 100, mean of 1, 3, 4, 7, 10.
    np.testing.assert_array_equal(trimmed_mean(column(LINE), 0.2), [5.0])
    np.testing.assert_array_equal(trimmed_mean(column(LINE), 0.0), [np.float32(125.0 / 7.0)])


@settings(max_examples=40, deadline=None)
@given(integer_matrices, st.floats(0.0, 0.49))
def test_trimmed_mean_equals_scipy_trim_mean_exactly_on_integers(
    matrix: np.ndarray, beta: float
) -> None:
    # Integer sums are exact in both, so the one rounding (the division) must agree bit for bit.
    expected = scipy.stats.trim_mean(matrix, beta, axis=0)
    np.testing.assert_array_equal(trimmed_mean(matrix, beta), expected)


@settings(max_examples=40, deadline=None)
@given(finite_matrices, st.floats(0.0, 0.49))
def test_trimmed_mean_equals_scipy_trim_mean_on_floats(matrix: np.ndarray, beta: float) -> None:
    # SciPy adds the kept rows one by one in float32 (error <= (n - 1) 2^-24 sum|x|), we sum in
    # float64; both then round once more. 11 rows: the gap is below 1e-6 sum|x|.
    expected = scipy.stats.trim_mean(matrix, beta, axis=0)
    bound = 1e-6 * np.abs(matrix).sum(axis=0)
    assert np.all(np.abs(trimmed_mean(matrix, beta) - expected) <= bound)


@settings(max_examples=30, deadline=None)
@given(finite_matrices)
def test_pairwise_squared_distances_match_the_definition(matrix: np.ndarray) -> None:
    wide = matrix.astype(np.float64)
    expected = ((wide[:, None, :] - wide[None, :, :]) ** 2).sum(axis=2)
    scale = float((wide**2).sum(axis=1).max()) + 1.0
    np.testing.assert_allclose(pairwise_squared_distances(matrix), expected, atol=1e-5 * scale)


def test_pairwise_distances_among_honest_rows_survive_a_huge_byzantine_row() -> None:
    honest = np.array([[0.0, 1.0], [2.0, 1.0], [1.0, 3.0], [4.0, 0.0]], dtype=np.float32)
    matrix = np.vstack([honest, np.full((1, 2), 1e15, dtype=np.float32)])
    wide = honest.astype(np.float64)
    expected = ((wide[:, None, :] - wide[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(pairwise_squared_distances(matrix)[:4, :4], expected)


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest() -> None:
    # f = 1, n = 7: the four nearest count. Value 3 (row 2): its four nearest, 4, 1, 0 and 7,
    # are at squared distances 1, 4, 9 and 16, so its score is 30.
    scores = krum_scores(pairwise_squared_distances(column(LINE)), 1)
    np.testing.assert_allclose(scores, [75, 50, 30, 35, 70, 175, 35374], rtol=1e-6, atol=1e-4)


def test_krum_returns_the_lowest_scoring_update_itself() -> None:
    output, selected = multi_krum(column(LINE), f=1, m=1)
    assert selected.tolist() == [2]
    np.testing.assert_array_equal(output, [3.0])


def test_multi_krum_averages_the_m_best_scoring_updates() -> None:
    output, selected = multi_krum(column(LINE), f=1, m=3)
    assert selected.tolist() == [2, 3, 1]
    np.testing.assert_allclose(output, [(3.0 + 4.0 + 1.0) / 3.0], rtol=1e-7)


def test_krum_picks_an_honest_update_when_f_attackers_collude() -> None:
    rng = np.random.default_rng(5)
    honest = 1.0 + 0.1 * rng.standard_normal((7, 16)).astype(np.float32)
    attackers = np.full((3, 16), -20.0, dtype=np.float32)  # identical: zero distance to each other
    matrix = np.vstack([attackers, honest])
    output, selected = multi_krum(matrix, f=3, m=1)
    assert selected[0] >= 3
    np.testing.assert_array_equal(output, matrix[selected[0]])
    _, chosen = multi_krum(matrix, f=3, m=7)
    assert sorted(chosen.tolist()) == list(range(3, 10))


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(5, 10), st.integers(1, 4)),
        elements=st.integers(-50, 50).map(float),
    ),
    st.integers(0, 1),
)
def test_krum_selects_a_minimal_brute_force_score(matrix: np.ndarray, f: int) -> None:
    rows = matrix.shape[0]
    wide = matrix.astype(np.float64)
    brute = []
    for i in range(rows):
        others = sorted(float(((wide[i] - wide[j]) ** 2).sum()) for j in range(rows) if j != i)
        brute.append(sum(others[: rows - f - 2]))
    _, selected = multi_krum(matrix, f=f, m=1)
    assert brute[selected[0]] <= min(brute) + 1e-6 * max(1.0, max(brute))


def test_krum_round_is_aborted_when_n_is_at_most_2f_plus_2() -> None:
    with pytest.raises(RoundAborted, match=r"krum with f=1 needs at least 5 updates.*4 arrived"):
        run_round(Krum(1), column([0.0, 1.0, 2.0, 3.0]))


def test_bulyan_selects_by_krum_then_averages_the_values_nearest_the_median() -> None:
    # f = 1, theta = 5 Krum picks: rows 2, 3, 1, then 4 or 5 (a tie), then 0; the attacker is
    # never picked. Median of {0, 1, 3, 4, 7 or 10} is 3; the beta = 3 values nearest it are
    # 3, 4, 1, so the result is 8 / 3 whichever way the tie went.
    output, selected = bulyan(column(LINE), f=1)
    assert 6 not in selected.tolist()
    assert selected.size == 5
    np.testing.assert_allclose(output, [8.0 / 3.0], rtol=1e-7)


def test_bulyan_coordinate_step_matches_a_brute_force_nearest_to_median_mean() -> None:
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((11, 40)).astype(np.float32)
    output, selected = bulyan(matrix, f=2)
    chosen = matrix[selected].astype(np.float64)
    median = np.median(chosen, axis=0)
    nearest = np.argsort(np.abs(chosen - median), axis=0, kind="stable")[: selected.size - 4]
    expected = np.take_along_axis(chosen, nearest, axis=0).mean(axis=0)
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-7)


def test_bulyan_configuration_is_refused_below_4f_plus_3_with_the_numbers() -> None:
    with pytest.raises(ConfigError, match=r"f=2 needs a cohort of at least 4f \+ 3 = 11.*is 10"):
        Bulyan.check(10, 2)
    Bulyan.check(11, 2)
    with pytest.raises(ConfigError, match=r"2f \+ 3 = 7"):
        Krum.check(6, 2)


def test_bulyan_round_is_aborted_when_too_few_updates_arrive() -> None:
    with pytest.raises(RoundAborted, match=r"bulyan with f=1 needs at least 7 updates.*6 arrived"):
        run_round(Bulyan(1), column(LINE[:6]))


def test_geometric_median_on_a_line_is_the_median() -> None:
    found = geometric_median(column(LINE))
    assert found.converged
    np.testing.assert_allclose(found.median, [4.0], atol=1e-3)


def test_geometric_median_of_points_symmetric_about_a_center_is_the_center() -> None:
    center = np.array([2.0, -1.0], dtype=np.float32)
    offsets = np.array([[1, 0], [-1, 0], [0, 3], [0, -3], [2, 2], [-2, -2]], dtype=np.float32)
    found = geometric_median(center + offsets)
    np.testing.assert_allclose(found.median, center, atol=1e-5)


def test_geometric_median_of_a_triangle_satisfies_the_fermat_optimality_condition() -> None:
    # At the geometric median (not a vertex) the unit vectors towards the points sum to zero.
    points = np.array([[0.0, 0.0], [4.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    found = geometric_median(points, tolerance=1e-12, max_iterations=500)
    directions = points.astype(np.float64) - found.median
    units = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    assert np.linalg.norm(units.sum(axis=0)) < 1e-3


@pytest.mark.parametrize("scale", [1e3, 1e9, 1e15])
def test_geometric_median_lands_on_the_honest_majority_however_large_the_outliers(
    scale: float,
) -> None:
    rows = np.vstack([np.ones((5, 3)), np.full((2, 3), scale)]).astype(np.float32)
    found = geometric_median(rows)
    assert found.converged
    np.testing.assert_allclose(found.median, np.ones(3), atol=1e-5)


def test_centered_clipping_matches_the_hand_computed_iterates() -> None:
    # Around 0 with tau = 5: clipped values 0, 1, 3, 4, 5, 5, 5 -> v1 = 23/7. Around v1 the
    # steps are -23/7, -16/7, -2/7, 5/7, 26/7, then 5 and 5 (clipped): v2 = v1 + 60/49 = 221/49.
    start = np.zeros(1, dtype=np.float32)
    one = centered_clipping(column(LINE), start, tau=5.0, iterations=1)
    two = centered_clipping(column(LINE), start, tau=5.0, iterations=2)
    np.testing.assert_allclose(one, [23.0 / 7.0], rtol=1e-5)
    np.testing.assert_allclose(two, [221.0 / 49.0], rtol=1e-5)


@pytest.mark.parametrize("iterations", [1, 3])
def test_centered_clipping_bounds_one_huge_outliers_influence(iterations: int) -> None:
    # v -> v + clip(x - v) is 1-Lipschitz (y - proj(y) onto a ball is), so one step's map is too;
    # swapping one client's update changes a step by at most 2 tau / n. After l steps the two
    # results differ by at most 2 l tau / n, however large the outlier.
    rng = np.random.default_rng(2)
    honest = rng.standard_normal((9, 8)).astype(np.float32)
    center = np.zeros(8, dtype=np.float32)
    tau = 0.5
    outlier = np.vstack([honest, np.full((1, 8), 1e7, dtype=np.float32)])
    benign = np.vstack([honest, center[None]])
    with_outlier = centered_clipping(outlier, center, tau=tau, iterations=iterations)
    with_benign = centered_clipping(benign, center, tau=tau, iterations=iterations)
    assert np.linalg.norm(with_outlier - with_benign) <= 2.0 * iterations * tau / 10.0


def test_centered_clipping_aggregator_centers_on_the_previous_rounds_aggregate() -> None:
    aggregator = CenteredClipping(tau=1.0, iterations=1)
    rows = np.full((3, 2), 10.0, dtype=np.float32)
    step = np.sqrt(0.5)  # tau = 1 along the diagonal, towards (10, 10)
    first, _, _ = run_round(aggregator, rows)
    np.testing.assert_allclose(first, [step, step], rtol=1e-5)
    second, _, _ = run_round(aggregator, rows)
    np.testing.assert_allclose(second, [2 * step, 2 * step], rtol=1e-5)


def test_norm_bounded_mean_clips_each_update_then_averages() -> None:
    rows = np.array([[3.0, 4.0], [30.0, 40.0], [0.0, 1.0]], dtype=np.float32)
    # Norms 5, 50, 1 with bound 5: the second becomes (3, 4).
    np.testing.assert_allclose(norm_bounded_mean(rows, 5.0), [2.0, 3.0], rtol=1e-5)


def test_fltrust_gives_zero_weight_to_an_update_opposite_to_the_server_update() -> None:
    server = np.array([1.0, 0.0], dtype=np.float32)
    rows = np.array([[2.0, 0.0], [0.5, 0.5], [-3.0, 0.0]], dtype=np.float32)
    output, trust = fltrust(rows, server)
    np.testing.assert_allclose(trust, [1.0, np.sqrt(0.5), 0.0], rtol=1e-6)
    # Rescaled to norm 1: (1, 0) with trust 1 and (r, r) with trust r, r = sqrt(1/2).
    half = np.sqrt(0.5)
    expected = np.array([1.0 + half * half, half * half]) / (1.0 + half)
    np.testing.assert_allclose(output, expected, rtol=1e-6)
    rows[2] = [-3000.0, 0.0]
    np.testing.assert_allclose(fltrust(rows, server)[0], expected, rtol=1e-6)


def test_fltrust_aborts_when_no_update_is_trusted() -> None:
    rows = np.array([[-1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    with pytest.raises(RoundAborted, match="every trust score is 0"):
        fltrust(rows, np.array([1.0, 0.0], dtype=np.float32))


def test_fltrust_aggregator_needs_a_server_update_each_round() -> None:
    rows = np.array([[2.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    with pytest.raises(PipelineError, match="set_server_update"):
        run_round(FLTrust(), rows)
    asked: list[tuple[int, list[float], TrainConfig]] = []

    def root_update(round_index: int, vector: np.ndarray, train: TrainConfig) -> np.ndarray:
        asked.append((round_index, vector.tolist(), train))
        return np.array([1.0, 0.0], dtype=np.float32)

    aggregator = FLTrust(root_update)
    with pytest.raises(PipelineError, match="round_model"):
        run_round(aggregator, rows)
    train = TrainConfig(local_epochs=3)
    aggregator.start(2, ["c0", "c1"])
    aggregator.round_model(np.array([0.5, -0.5], dtype=np.float32), train)
    for index, row in enumerate(rows):
        aggregator.add(ClientUpdate(1, f"c{index}", row, num_examples=1))
    assert aggregator.result().total_weight == 2.0
    assert asked == [(1, [0.5, -0.5], train)]
    assert aggregator.last_trust["c0"] == pytest.approx(1.0)
    assert aggregator.last_trust["c1"] == pytest.approx(np.sqrt(0.5))


# --- the aggregators: buffering, weights, refusals ----------------------------------------


def test_robust_aggregators_are_unweighted_and_report_the_updates_used() -> None:
    rows = column(LINE)
    assert run_round(CoordinateMedian(), rows)[1:] == (7.0, 7)
    assert run_round(TrimmedMean(0.2), rows)[1:] == (5.0, 7)
    assert run_round(Krum(1), rows)[1:] == (1.0, 7)
    assert run_round(MultiKrum(1, 3), rows)[1:] == (3.0, 7)
    assert run_round(Bulyan(1), rows)[1:] == (3.0, 7)
    # The number of examples a client claims changes nothing.
    aggregator = CoordinateMedian()
    aggregator.start(1, ["a", "b", "c"])
    for client_id, value, examples in [("a", 1.0, 1), ("b", 2.0, 1000), ("c", 9.0, 1)]:
        aggregator.add(ClientUpdate(0, client_id, np.array([value], np.float32), examples))
    np.testing.assert_array_equal(aggregator.result().mean_update, [2.0])


def test_the_matrix_grows_when_more_updates_arrive_than_the_cohort_announced() -> None:
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((9, 5)).astype(np.float32)
    output, _, count = run_round(CoordinateMedian(), rows, cohort_size=2)
    assert count == 9
    np.testing.assert_array_equal(output, np.median(rows, axis=0))


@pytest.mark.parametrize(
    ("vector", "reason"),
    [
        (np.zeros(3, dtype=np.float32), "shape"),
        (np.array([1.0, np.nan], dtype=np.float32), "non_finite"),
        (np.array([3e38, 3e38], dtype=np.float32), "norm_bound"),
    ],
)
def test_bad_updates_are_rejected_and_leave_the_round_unchanged(
    vector: np.ndarray, reason: str
) -> None:
    aggregator = CoordinateMedian()
    aggregator.start(2, ["a", "b"])
    aggregator.add(ClientUpdate(0, "a", np.array([1.0, 2.0], np.float32), 1))
    with pytest.raises(UpdateRejected) as caught:
        aggregator.add(ClientUpdate(0, "b", vector, 1))
    assert caught.value.reason == reason
    aggregate = aggregator.result()
    assert aggregate.num_updates == 1
    np.testing.assert_array_equal(aggregate.mean_update, [1.0, 2.0])


def test_a_second_update_from_the_same_client_is_rejected() -> None:
    aggregator = CoordinateMedian()
    aggregator.start(1, ["a"])
    aggregator.add(ClientUpdate(0, "a", np.array([1.0], np.float32), 1))
    with pytest.raises(UpdateRejected) as caught:
        aggregator.add(ClientUpdate(0, "a", np.array([50.0], np.float32), 1))
    assert caught.value.reason == "duplicate"


def test_a_round_without_updates_is_aborted() -> None:
    aggregator = TrimmedMean(0.1)
    aggregator.start(4, ["a"])
    with pytest.raises(RoundAborted, match="no update arrived"):
        aggregator.result()


class HidingStage(Stage):
    name = "secure_sum"
    hides_individual_updates = True


def test_a_pipeline_with_a_robust_aggregator_and_a_hiding_stage_is_refused() -> None:
    with pytest.raises(PipelineError, match="median must see each client's update"):
        Pipeline([HidingStage()], CoordinateMedian())


@pytest.mark.parametrize(
    "build",
    [
        lambda: TrimmedMean(0.5),
        lambda: Krum(-1),
        lambda: MultiKrum(1, 0),
        lambda: CenteredClipping(tau=0.0),
        lambda: NormBoundedMean(float("nan")),
        lambda: GeometricMedian(max_iterations=0),
        lambda: AnomalyRule(min_cosine=2.0),
        lambda: Reputation(quarantine_after=0),
    ],
)
def test_bad_settings_are_refused_with_a_config_error(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


# --- anomaly scores and reputation --------------------------------------------------------


def test_anomaly_scores_measure_distance_cosine_and_norm_ratio() -> None:
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]], dtype=np.float32)
    scores = anomaly_scores(rows, ["a", "b", "c"], np.array([3.0, 4.0], np.float32), AnomalyRule())
    assert [scores[c].distance for c in "abc"] == pytest.approx([0.0, 5.0, 5.0])
    assert [scores[c].cosine for c in "abc"] == pytest.approx([1.0, 0.0, 1.0])
    assert [scores[c].norm_ratio for c in "abc"] == pytest.approx([1.0, 0.0, 2.0])
    # MAD of (0, 5, 5) is 0, so the mean absolute deviation 5/3 stands in.
    assert scores["a"].distance_z == pytest.approx(0.7979 * -5.0 / (5.0 / 3.0))
    assert not any(score.flagged for score in scores.values())


def test_robust_z_scores_use_the_median_absolute_deviation() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, MAD = median(2, 1, 0, 1, 97) = 1
    np.testing.assert_allclose(robust_z_scores(values), 0.6745 * (values - 3.0))


def test_anomaly_scores_flag_an_obvious_outlier() -> None:
    rng = np.random.default_rng(8)
    rows = (1.0 + 0.05 * rng.standard_normal((10, 6))).astype(np.float32)
    rows[7] = -30.0
    aggregator = CoordinateMedian(anomaly=AnomalyRule(min_cosine=0.0, max_norm_ratio=5.0))
    run_round(aggregator, rows)
    assert aggregator.flagged() == ["c7"]
    assert aggregator.last_scores["c7"].reasons == ("distance_z", "cosine", "norm_ratio")
    assert aggregator.report()["flagged_last_round"] == ["c7"]


def flags(flagged: set[str], clients: Sequence[str] = ("good", "bad")) -> dict[str, ClientScore]:
    """One round's scores in which exactly ``flagged`` fired the distance test."""
    return {
        cid: ClientScore(
            cid, 1.0, 1.0, 1.0, 9.0 if cid in flagged else 0.0, ("distance_z",) * (cid in flagged)
        )
        for cid in clients
    }


def test_reputation_quarantines_a_client_after_k_flags_and_survives_a_json_round_trip() -> None:
    reputation = Reputation(quarantine_after=3, smoothing=0.5)
    assert reputation.record(flags({"bad"})) == []
    assert reputation.record(flags(set())) == []
    assert reputation.record(flags({"bad", "good"})) == []
    assert reputation.quarantined() == frozenset()
    restored = Reputation(quarantine_after=3, smoothing=0.5)
    restored.load_state(json.loads(json.dumps(reputation.state())))
    assert restored.state() == reputation.state()
    for copy in (reputation, restored):
        assert copy.record(flags({"bad"})) == ["bad"]
        assert copy.record(flags({"bad"})) == []  # newly quarantined only once
        assert copy.quarantined() == frozenset({"bad"})
        assert copy.eligible(["good", "bad", "new"]) == ["good", "new"]
        assert copy.flags("bad") == 4
        # flags 1, 0, 1, 1, 1 with s <- s + 0.5 (flag - s): 0.5, 0.25, 0.625, 0.8125, 0.90625
        assert copy.suspicion("bad") == pytest.approx(0.90625)
    assert restored.state() == reputation.state()
    reputation.release("bad")
    assert reputation.quarantined() == frozenset()
    assert reputation.flags("bad") == 0


def test_reputation_refuses_a_malformed_state() -> None:
    with pytest.raises(ConfigError, match=r"Reputation\.state"):
        Reputation().load_state({"clients": {"a": {"flags": "many"}}, "quarantined": []})
