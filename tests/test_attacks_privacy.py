"""Specifications of the privacy attacks on our own models and of the empirical DP audits."""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from scipy import stats
from sklearn.datasets import load_digits

from fedwarden.audits.canary_clients import canary_cosines, canary_directions
from fedwarden.audits.dp_audit import audit_privacy
from fedwarden.audits.inversion import (
    client_gradient,
    infer_label,
    inversion_model,
    invert,
    psnr,
)
from fedwarden.audits.membership import (
    attack_global_model,
    lira_attack,
    lira_scores,
    logit_confidence,
    loss_threshold_attack,
    membership_result,
    per_example_losses,
    tpr_at_fpr,
    train_alone,
)
from fedwarden.audits.results import AuditResult
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.models.torch import TorchTrainer, mlp
from fedwarden.privacy.auditing import (
    clopper_pearson,
    gaussian_fit_epsilon,
    gaussian_pair_epsilon,
    multi_run_epsilon_lower_bound,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    threshold_epsilon_lower_bound,
)

DELTA = 1e-5


def gaussian_mechanism_epsilon(sigma: float) -> float:
    """dp-accounting's PLD epsilon at DELTA of the Gaussian mechanism, sensitivity 1."""
    accountant = pld_privacy_accountant.PLDAccountant()
    return float(accountant.compose(dp_event.GaussianDpEvent(sigma)).get_epsilon(DELTA))


def dp_fedavg_epsilon(*, rate: float, noise_multiplier: float, rounds: int) -> float:
    """dp-accounting's PLD epsilon at DELTA of ``rounds`` Poisson-sampled Gaussian rounds."""
    step = dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(noise_multiplier))
    accountant = pld_privacy_accountant.PLDAccountant()
    return float(accountant.compose(dp_event.SelfComposedDpEvent(step, rounds)).get_epsilon(DELTA))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    features, labels = load_digits(return_X_y=True)
    return (features / 16.0).astype(np.float32), labels.astype(np.int64)


# One-run auditing (Steinke, Nasr & Jagielski 2023)


def test_one_run_bound_from_all_correct_guesses_grows_with_the_number_of_canaries() -> None:
    bounds = [one_run_epsilon_lower_bound(m, m, m, DELTA) for m in (10, 100, 1000, 10000)]
    assert all(later > earlier for earlier, later in itertools.pairwise(bounds))
    assert bounds[0] > 0.5
    # With delta = 0 and all r guesses right, the bound solves (e^eps / (1 + e^eps))^r = 0.05.
    exact = math.log(1 / (0.05 ** (-1 / 100) - 1))
    assert one_run_epsilon_lower_bound(100, 100, 100, 0.0) == pytest.approx(exact, abs=1e-6)


def test_one_run_bound_of_coin_flip_guesses_is_zero() -> None:
    assert one_run_epsilon_lower_bound(1000, 1000, 500, DELTA) == 0.0
    rng = np.random.default_rng(1)
    included = rng.random(2000) < 0.5
    bound, _, _ = one_run_audit(rng.random(2000), included, DELTA)
    assert bound < 0.2


def test_one_run_p_value_without_delta_is_the_binomial_tail() -> None:
    tail = stats.binom.sf(69, 100, 1 / (1 + math.exp(-1.0)))
    assert one_run_p_value(500, 100, 70, 1.0, 0.0) == pytest.approx(tail)
    assert one_run_p_value(500, 100, 70, 1.0, 1e-3) > tail


def test_one_run_bound_never_exceeds_epsilon_of_randomized_response() -> None:
    """Each canary's membership bit through epsilon-DP randomized response, audited 100 times."""
    true_epsilon, num_canaries, trials = 2.0, 400, 100
    rng = np.random.default_rng(7)
    keep = math.exp(true_epsilon) / (1 + math.exp(true_epsilon))
    bounds = []
    for _ in range(trials):
        included = rng.random(num_canaries) < 0.5
        reported = np.where(rng.random(num_canaries) < keep, included, ~included)
        scores = reported + 1e-3 * rng.random(num_canaries)  # ties broken at random
        bounds.append(one_run_audit(scores, included, 0.0, confidence=0.95)[0])
    exceeded = sum(bound > true_epsilon for bound in bounds)
    assert exceeded <= stats.binom.ppf(0.999, trials, 0.05)
    assert np.median(bounds) > 0.5 * true_epsilon  # and the audit has power


def test_one_run_audit_refuses_mismatched_scores_and_flags() -> None:
    with pytest.raises(DataError, match="one score per canary"):
        one_run_audit([0.1, 0.2], [True], DELTA)
    with pytest.raises(DataError, match="correct"):
        one_run_p_value(10, 5, 6, 1.0, DELTA)


# Multi-run auditing (Jagielski et al. 2020; Nasr et al. 2021)


@pytest.mark.parametrize(("successes", "trials"), [(0, 20), (3, 20), (17, 40), (50, 50)])
def test_clopper_pearson_matches_beta_quantiles(successes: int, trials: int) -> None:
    lower, upper = clopper_pearson(successes, trials, 0.95)
    expected_lower = stats.beta.ppf(0.025, successes, trials - successes + 1) if successes else 0.0
    expected_upper = (
        stats.beta.ppf(0.975, successes + 1, trials - successes) if successes < trials else 1.0
    )
    assert lower == pytest.approx(expected_lower)
    assert upper == pytest.approx(expected_upper)
    exact = stats.binomtest(successes, trials).proportion_ci(0.95, method="exact")
    assert (lower, upper) == pytest.approx((exact.low, exact.high))


def test_perfectly_separated_runs_bound_epsilon_by_the_clopper_pearson_rates() -> None:
    upper = clopper_pearson(0, 50, 0.95)[1]
    bound = threshold_epsilon_lower_bound(np.ones(50), np.zeros(50), 0.5, DELTA, 0.95)
    assert bound == pytest.approx(math.log((1 - DELTA - upper) / upper))


def test_multi_run_bound_of_indistinguishable_runs_is_zero() -> None:
    rng = np.random.default_rng(3)
    bound, _ = multi_run_epsilon_lower_bound(rng.random(100), rng.random(100), DELTA)
    assert bound < 0.5
    same, _ = multi_run_epsilon_lower_bound(np.zeros(100), np.zeros(100), DELTA)
    assert same == 0.0


def test_multi_run_bound_never_exceeds_epsilon_of_a_gaussian_mechanism() -> None:
    """The canary's score is its bit plus Gaussian noise of a known (epsilon, delta)."""
    sigma = 0.5  # sensitivity 1; its epsilon at DELTA by the PLD accountant
    true_epsilon = gaussian_mechanism_epsilon(sigma)
    rng = np.random.default_rng(11)
    trials = 100
    bounds = [
        multi_run_epsilon_lower_bound(
            1 + sigma * rng.standard_normal(200), sigma * rng.standard_normal(200), DELTA
        )[0]
        for _ in range(trials)
    ]
    assert sum(bound > true_epsilon for bound in bounds) <= stats.binom.ppf(0.999, trials, 0.05)
    assert np.median(bounds) > 1.0  # and the audit has power


def test_audit_result_flags_a_bound_above_the_claim() -> None:
    honest = AuditResult("one_run", 4.0, 1.2, DELTA, 0.95, 1.1, 500, 1, 50, 40)
    broken = AuditResult("one_run", 1.0, 1.2, DELTA, 0.95, 1.1, 500, 1, 50, 49)
    assert not honest.exceeds_claim and "below the claim" in honest.summary()
    assert broken.exceeds_claim and "ABOVE the claim" in broken.summary()
    assert broken.to_json()["exceeds_claim"] is True


def test_audit_refuses_a_config_without_dp_sgd_or_a_pytorch_model() -> None:
    local = RunConfig.from_mapping(
        {
            "privacy": {"mechanism": "local", "noise_multiplier": 1.0, "epsilon": 8.0},
            "model": {"kind": "mlp"},
        }
    )
    with pytest.raises(ConfigError, match="dp_sgd"):
        audit_privacy(local)
    with pytest.raises(ConfigError, match=r"model\.kind"):
        audit_privacy(RunConfig())
    user_level = RunConfig.from_mapping({"privacy": {"mechanism": "user_level", "epsilon": 1.0}})
    with pytest.raises(ConfigError, match="one_run"):
        audit_privacy(user_level, method="multi_run")
    secure = user_level.model_copy(
        update={"secure": user_level.secure.model_copy(update={"kind": "secagg"})}
    )
    with pytest.raises(ConfigError, match=r"secure\.kind"):
        audit_privacy(secure)


@pytest.mark.slow
def test_audit_of_dp_sgd_stays_below_the_accountants_epsilon() -> None:
    config = RunConfig.from_mapping(
        {
            "rounds": 3,
            "data": {"source": "digits", "num_clients": 2, "partition": {"scheme": "iid"}},
            "model": {"kind": "mlp", "hidden": [16]},
            "train": {"local_epochs": 1, "batch_size": 64, "learning_rate": 1.0},
            "privacy": {"mechanism": "dp_sgd", "epsilon": 4.0, "delta": DELTA},
        }
    )
    result = audit_privacy(config, num_canaries=200)
    assert 0.0 <= result.lower_bound <= result.claimed_epsilon <= 4.0
    assert result.num_canaries == 200 and result.num_guesses > 0


# Canary clients for user-level DP-FedAvg (Andrew et al. 2024)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_gaussian_pair_epsilon_of_equal_variances_is_the_gaussian_mechanisms(sigma: float) -> None:
    analytic = gaussian_mechanism_epsilon(sigma)  # PLD, sensitivity 1
    assert gaussian_pair_epsilon((1.0, sigma), (0.0, sigma), DELTA) == pytest.approx(
        analytic, rel=1e-3
    )


def test_gaussian_pair_epsilon_of_unequal_variances_spends_exactly_delta() -> None:
    """The hockey-stick divergence at the returned epsilon, integrated on a grid, is delta."""
    first, second = (1.0, 0.6), (0.0, 0.5)
    epsilon = gaussian_pair_epsilon(first, second, DELTA)
    grid = np.linspace(-15, 15, 600_001)
    step = grid[1] - grid[0]
    densities = [stats.norm.pdf(grid, mean, std) for mean, std in (first, second)]
    divergences = [
        np.maximum(p - math.exp(epsilon) * q, 0).sum() * step
        for p, q in (densities, densities[::-1])
    ]
    assert max(divergences) == pytest.approx(DELTA, rel=1e-3)
    assert epsilon == gaussian_pair_epsilon(second, first, DELTA)
    assert epsilon > gaussian_pair_epsilon((1.0, 0.6), (0.0, 0.6), DELTA)


def test_gaussian_fit_estimate_of_a_gaussian_mechanism_is_near_its_analytic_epsilon() -> None:
    """Scores of a Gaussian mechanism of known sigma (sensitivity 1): in = 1 + noise, out = noise.

    Tolerance 0.3: over seeds 0-9 the estimate's spread is about 0.1 at these sizes,
    with an upward bias of about 0.1 (unequal fitted variances fatten one tail).
    """
    sigma, size = 2.0, 20_000
    analytic = gaussian_mechanism_epsilon(sigma)
    rng = np.random.default_rng(0)
    inserted = 1.0 + sigma * rng.standard_normal(size)
    unused = sigma * rng.standard_normal(size)
    assert gaussian_fit_epsilon(inserted, unused, DELTA) == pytest.approx(analytic, abs=0.3)
    assert gaussian_fit_epsilon(unused, sigma * rng.standard_normal(size), DELTA) < 0.5


def test_canary_cosines_are_those_of_unit_directions() -> None:
    rng = np.random.default_rng(2)
    directions = canary_directions(50, 1000, rng)
    assert np.linalg.norm(directions, axis=1) == pytest.approx(np.ones(50))
    delta = 3.0 * directions[0] + 0.01 * rng.standard_normal(1000)
    cosines = canary_cosines(directions, delta)
    assert cosines[0] > 0.9 and np.abs(cosines[1:]).max() < 0.2
    assert not canary_cosines(directions, np.zeros(1000)).any()


def canary_config(noise_multiplier: float) -> RunConfig:
    """10 digits clients, a softmax model, 10 rounds of Poisson sampling at rate 0.2."""
    return RunConfig.from_mapping(
        {
            "seed": 0,
            "rounds": 10,
            "data": {"source": "digits", "num_clients": 10, "partition": {"scheme": "iid"}},
            "model": {"kind": "softmax"},
            "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.1},
            "sampling": {"scheme": "poisson", "rate": 0.2},
            "runtime": {"kind": "local", "workers": 1},
            "privacy": {
                "mechanism": "user_level",
                "epsilon": 1e4,
                "delta": DELTA,
                "noise_multiplier": noise_multiplier,
                "reproducible_noise": True,
            },
        }
    )


@functools.cache
def canary_audit(noise_multiplier: float, statistic: str) -> AuditResult:
    return audit_privacy(
        canary_config(noise_multiplier),
        num_canaries=200,
        statistic="final_model" if statistic == "final_model" else "all_iterates",
    )


@pytest.mark.slow
def test_canary_client_audit_of_user_level_dp_stays_below_the_ledgers_epsilon() -> None:
    result = canary_audit(2.0, "final_model")
    ledger = dp_fedavg_epsilon(rate=0.2, noise_multiplier=2.0, rounds=10)
    assert result.claimed_epsilon == pytest.approx(ledger, rel=1e-3)
    assert 0.0 <= result.lower_bound <= result.claimed_epsilon
    assert result.score == "cosine_final_model" and result.epsilon_estimate is not None
    assert result.num_canaries == 200 and result.noise_multiplier == 2.0
    assert "not a bound" in result.summary()


@pytest.mark.slow
def test_canary_client_audit_sees_the_canaries_when_the_noise_is_tiny() -> None:
    """The audit is not blind: with z = 0.05 the bound is far above the noisy run's.

    With 200 canaries one run cannot certify much more than 2 (39 of 40 or 94 of 100
    guesses right give 1.65 to 1.8, depending on the cohorts drawn), so the tiny-noise
    bound is required above 1.5 and the noisy run's below 1.
    """
    noisy = canary_audit(2.0, "all_iterates")
    tiny = canary_audit(0.05, "all_iterates")
    bounds = (noisy.lower_bound, tiny.lower_bound)
    assert noisy.lower_bound < 1.0 < 1.5 < tiny.lower_bound <= tiny.claimed_epsilon, bounds
    assert noisy.epsilon_estimate is not None and tiny.epsilon_estimate is not None
    assert tiny.epsilon_estimate > 3 * noisy.epsilon_estimate


# Membership inference


def test_loss_threshold_attack_beats_chance_on_an_overfit_model() -> None:
    x, y = digits()
    torch.manual_seed(0)
    trainer = TorchTrainer(functools.partial(mlp, 64, 10, (128,)))
    members = ClientData("small", x[:60], y[:60], x[:0], y[:0])
    vector = train_alone(trainer, members, TrainConfig(20, 20, 0.2), rounds=2, seed=0)
    result = loss_threshold_attack(trainer, vector, (x[:60], y[:60]), (x[1000:1400], y[1000:1400]))
    assert result.auc > 0.65
    assert result.model_accuracy is not None and result.model_accuracy > 0.6
    assert result.num_members == 60 and result.num_non_members == 400


def test_lira_tells_members_of_overfit_models_from_non_members() -> None:
    x, y = digits()
    torch.manual_seed(0)
    trainer = TorchTrainer(functools.partial(mlp, 64, 10, (128,)))
    population = (x[:200], y[:200])
    overfit = lira_attack(
        trainer, *population, TrainConfig(20, 20, 0.2), rounds=2, num_models=6, seed=0
    )
    assert overfit.auc > 0.7
    assert overfit.num_members + overfit.num_non_members == 6 * 200


def test_lira_gives_chance_auc_when_no_model_learns_from_its_members() -> None:
    """Learning rate 0: every model is its initialization, trained without any candidate."""
    x, y = digits()
    trainer = TorchTrainer(functools.partial(mlp, 64, 10, (128,)))
    untrained = lira_attack(
        trainer, x[:200], y[:200], TrainConfig(1, 20, 0.0), rounds=1, num_models=6, seed=0
    )
    assert untrained.auc == pytest.approx(0.5, abs=0.05)


def global_model_config(learning_rate: float) -> RunConfig:
    """3 silos of about 24 training examples, 50 local epochs a round: they memorize them."""
    return RunConfig.from_mapping(
        {
            "name": "membership",
            "rounds": 4,
            "data": {
                "source": "digits",
                "num_clients": 3,
                "central_test_fraction": 0.95,
                "partition": {"scheme": "iid"},
            },
            "model": {"kind": "mlp", "hidden": [256]},
            "train": {"local_epochs": 50, "batch_size": 16, "learning_rate": learning_rate},
            "sampling": {"scheme": "uniform", "cohort_size": 3},
            "runtime": {"kind": "local", "workers": 1},
        }
    )


@pytest.mark.slow
def test_attack_on_the_global_model_finds_the_clients_training_examples(tmp_path: Path) -> None:
    overfit = attack_global_model(global_model_config(0.2), runs_dir=tmp_path / "overfit")
    assert overfit.auc > 0.6  # 0.69 with seed 0; the standard error with 72 members is 0.035
    assert overfit.model_accuracy is not None and overfit.model_accuracy > 0.8
    assert overfit.num_non_members > 0.9 * len(digits()[1])  # the central test set
    # Learning rate 1e-9: the model stays at its initialization, it learns nothing of its members.
    untrained = attack_global_model(global_model_config(1e-9), runs_dir=tmp_path / "untrained")
    assert untrained.auc == pytest.approx(0.5, abs=0.1)


def test_random_scores_give_chance_auc() -> None:
    rng = np.random.default_rng(0)
    result = membership_result("random", rng.random(3000), rng.random(3000))
    assert result.auc == pytest.approx(0.5, abs=0.03)
    assert result.tpr_at_low_fpr == pytest.approx(0.01, abs=0.01)


def test_tpr_at_fpr_counts_members_above_the_allowed_non_members() -> None:
    non_members = np.arange(100.0)  # flagging above 89 lets 10 of 100 through
    assert tpr_at_fpr([95.0, 89.5, 10.0, 88.0], non_members, 0.1) == 0.5
    assert tpr_at_fpr([100.0, 98.5], non_members, 0.0) == 0.5


def test_logit_confidence_is_the_log_odds_of_the_true_class() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 5.0, 0.0]])
    labels = np.array([0, 1])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true_class = probabilities[[0, 1], labels]
    assert per_example_losses(logits, labels) == pytest.approx(-np.log(true_class))
    assert logit_confidence(logits, labels) == pytest.approx(np.log(true_class / (1 - true_class)))


def test_lira_scores_separate_members_when_in_and_out_confidences_differ() -> None:
    rng = np.random.default_rng(5)
    num_shadows, num_examples = 16, 2000
    difficulty = rng.normal(0, 3, num_examples)  # per-example offsets LiRA must cancel
    shadow_membership = rng.random((num_shadows, num_examples)) < 0.5
    shadow_confidence = difficulty + 1.0 * shadow_membership + rng.normal(0, 0.5, (16, 2000))
    target_membership = rng.random(num_examples) < 0.5
    target = difficulty + 1.0 * target_membership + rng.normal(0, 0.5, num_examples)
    scores = lira_scores(target, shadow_confidence, shadow_membership)
    lira = membership_result("lira", scores[target_membership], scores[~target_membership])
    raw = membership_result("raw", target[target_membership], target[~target_membership])
    assert lira.auc > 0.8 > raw.auc


# Gradient inversion


@functools.cache
def inversion_setup() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    x, y = digits()
    torch.manual_seed(0)
    chosen = np.random.default_rng(0).choice(len(y), 10, replace=False)
    return inversion_model(), x[chosen], y[chosen]


def test_idlg_reads_the_label_off_a_single_example_gradient() -> None:
    module, images, labels = inversion_setup()
    for image, label in zip(images, labels, strict=True):
        assert infer_label(client_gradient(module, image, label)) == label


@pytest.mark.parametrize("infer", [True, False], ids=["idlg", "dlg"])
def test_gradient_inversion_rebuilds_one_clients_image_from_its_plain_update(infer: bool) -> None:
    module, images, labels = inversion_setup()
    result = invert(module, images, labels, "plain", infer=infer)
    assert result.mse < 0.01 * result.noise_mse
    assert result.psnr > 30 and result.label_correct and result.succeeded


def test_gradient_inversion_fails_on_the_secure_sum_of_ten_clients() -> None:
    module, images, labels = inversion_setup()
    result = invert(module, images, labels, "secure_sum")
    assert result.num_clients == 10
    assert result.mse > 0.8 * result.noise_mse and not result.succeeded


def test_gradient_inversion_fails_on_a_dp_update() -> None:
    module, images, labels = inversion_setup()
    result = invert(module, images, labels, "dp", clip_norm=1.0, noise_multiplier=1.0)
    assert result.mse > 0.8 * result.noise_mse and not result.succeeded


def test_psnr_of_known_errors() -> None:
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(0.0) == math.inf
