"""Empirical privacy audits: a lower bound on epsilon, measured, beside the accountant's claim.

An audit trains the model with *canaries* (examples an auditor planted),
guesses from the trained model which canaries were in the training data, and
turns the guesses' accuracy into a statistical lower bound on the epsilon of
the training run: with probability ``confidence``, no (epsilon, delta)-DP
mechanism with a smaller epsilon lets the guesses be this good. A sound
accountant's epsilon must never fall below it; if it does, the DP
implementation (or its accounting) has a bug. The bound is usually far
below the claim: the auditor here sees only the final model (black box) and
plants ordinary-looking inputs, the weakest and most realistic threat model.

Two procedures:

- one-run auditing (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with
  One (1) Training Run"): ``m`` canaries, each included independently with
  probability 1/2, one training run; the auditor guesses "in" for the canaries
  with the highest scores and "out" for the lowest, abstaining on the rest.
  Theorem 5.2 bounds the probability of ``v`` or more correct guesses out of
  ``r`` under (epsilon, delta)-DP; :func:`one_run_p_value` is the paper's
  algorithm (Appendix D), and :func:`one_run_epsilon_lower_bound` the largest
  epsilon it rejects. Several guess counts are tried, each at confidence
  ``1 - (1 - confidence) / (number of counts)`` (Bonferroni), so the bound
  holds at ``confidence`` whichever count gives it.
- multi-run auditing (Jagielski, Ullman & Oprea 2020; Nasr, Song, Thakurta,
  Papernot & Carlini 2021): train many times with one canary and many times
  without; a threshold on the canary's score is a test whose false-positive
  and false-negative rates have Clopper-Pearson upper bounds, and (epsilon,
  delta)-DP implies ``FPR + e^eps FNR >= 1 - delta`` and the same with the
  rates swapped, so ``eps >= log((1 - delta - FNR) / FPR)``. The threshold is
  chosen on half of the runs and the bound computed on the other half, so the
  choice does not inflate it.

The score of a canary is how much training lowered its loss: its loss under
the initial model minus its loss under the trained one. Every training run
starts from the same initial model (the run's seed): the auditor may fix it,
the DP guarantee holds for any initialization, and it removes variance that
would only hide the canary.

:func:`audit_privacy` applies either procedure to a run's configuration: the
silo that spends the most (the smallest, see
:mod:`fedwarden.privacy.silo`) trains alone, with the canaries added, for the
run's rounds with the run's trainer (Opacus DP-SGD for ``dp_sgd``), noise
calibrated as the run would calibrate it. The claimed epsilon is the ledger's
figure (dp-accounting's PLD accountant) for that silo's training as executed.
The sampling rate is ``batch_size / n`` for the silo's actual size ``n``,
canaries included, as the trainer computes it; the claim uses that ``n``
(for multi-run: the smaller, without the canary, which claims more).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy import stats

from fedwarden.attacks.membership import per_example_losses, predict_logits, train_alone
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.models.torch import TorchTrainer
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.silo import dp_sgd_round_event

logger = logging.getLogger(__name__)

AuditMethod = Literal["one_run", "multi_run"]
FloatArray = npt.NDArray[np.float64]

GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Shares of the canaries the one-run auditor guesses on (half "in", half "out")."""

_BISECTION_STEPS = 40
_EPSILON_SEARCH_CEILING = 100.0

__all__ = [
    "GUESS_FRACTIONS",
    "AuditMethod",
    "AuditResult",
    "audit_privacy",
    "clopper_pearson",
    "make_canaries",
    "multi_run_epsilon_lower_bound",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "threshold_epsilon_lower_bound",
]


@dataclass(frozen=True)
class AuditResult:
    """An audit's epsilon lower bound beside the accountant's claimed epsilon.

    With probability at least ``confidence`` the training's true epsilon (at
    ``delta``) is at least ``lower_bound``. ``num_canaries`` were planted
    (one-run) or one canary over ``num_runs`` trainings (multi-run);
    ``num_guesses`` and ``num_correct`` are the guesses scored (one-run:
    canaries guessed on; multi-run: evaluation runs) and how many were right.
    ``noise_multiplier`` is DP-SGD's ``z`` (0 without DP, where the claim is
    infinite).
    """

    method: AuditMethod
    claimed_epsilon: float
    lower_bound: float
    delta: float
    confidence: float
    noise_multiplier: float
    num_canaries: int
    num_runs: int
    num_guesses: int
    num_correct: int

    @property
    def exceeds_claim(self) -> bool:
        """Whether the measured bound is above the claim: a bug in DP-SGD or its accounting."""
        return self.lower_bound > self.claimed_epsilon

    def summary(self) -> str:
        """What ``fedwarden audit privacy`` prints: the bound, the claim and how they compare."""
        verdict = (
            "ABOVE the claim: the implementation or its accounting is broken, report it"
            if self.exceeds_claim
            else "below the claim, as it must be"
        )
        return (
            f"{self.method} audit: epsilon >= {self.lower_bound:.3f} with confidence "
            f"{self.confidence:g} (delta {self.delta:g}); accountant claims "
            f"{self.claimed_epsilon:.3f} (z = {self.noise_multiplier:.4f}); {verdict}. "
            f"{self.num_correct} of {self.num_guesses} guesses right, {self.num_canaries} "
            f"canaries, {self.num_runs} training run(s)."
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with ``exceeds_claim``."""
        return {**asdict(self), "exceeds_claim": self.exceeds_claim}


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
    _check_confidence(confidence)
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
    _check_confidence(confidence)
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
    _check_confidence(confidence)
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
    _check_confidence(confidence)
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


def make_canaries(
    count: int, like: ClientData, num_classes: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``count`` canaries: uniform random inputs within ``like``'s feature range, random labels."""
    low = like.x_train.min(axis=0)
    high = like.x_train.max(axis=0)
    x = (low + (high - low) * rng.random((count, like.x_train.shape[1]))).astype(np.float32)
    y = rng.integers(num_classes, size=count).astype(np.int64)
    return x, y


def audit_privacy(
    config: RunConfig,
    *,
    method: AuditMethod = "one_run",
    num_canaries: int = 500,
    num_runs: int = 64,
    confidence: float = 0.95,
) -> AuditResult:
    """Audit the training ``config`` describes; the claim and the measured lower bound.

    ``one_run`` plants ``num_canaries`` canaries and trains once; ``multi_run``
    trains ``num_runs`` times, half with one canary (``num_canaries`` is then
    not used). ``privacy.mechanism`` must be ``dp_sgd`` (Opacus DP-SGD, the
    claim is the ledger's epsilon) or ``none`` (no DP: the claim is infinite,
    and the audit measures what training leaks). See the module docstring for
    what is trained.
    """
    from fedwarden.server.launch import prepare

    if method not in get_args(AuditMethod):
        raise ConfigError(f"method {method!r} is not one of {list(get_args(AuditMethod))}")
    mechanism = config.privacy.mechanism
    if mechanism not in ("dp_sgd", "none") or config.model.kind != "mlp":
        raise ConfigError(
            f"privacy audits train PyTorch models with sample-level DP-SGD: set model.kind to "
            f"'mlp' (it is {config.model.kind!r}) and privacy.mechanism to 'dp_sgd' or 'none' "
            f"(it is {mechanism!r})"
        )
    _check_confidence(confidence)
    prepared = prepare(config)
    trainer = prepared.trainer
    num_classes = prepared.dataset.num_classes
    if not isinstance(trainer, TorchTrainer) or num_classes is None:
        raise ConfigError("privacy audits need a PyTorch classifier (model.kind 'mlp')")
    config = prepared.config
    silo = min(prepared.dataset.clients.values(), key=lambda client: client.num_train)
    train = TrainConfig(
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        learning_rate=config.train.learning_rate,
    )
    rng = np.random.default_rng(config.seed)
    if method == "one_run":
        return _one_run(config, trainer, silo, num_classes, train, num_canaries, confidence, rng)
    return _multi_run(config, trainer, silo, num_classes, train, num_runs, confidence, rng)


def _one_run(
    config: RunConfig,
    trainer: TorchTrainer,
    silo: ClientData,
    num_classes: int,
    train: TrainConfig,
    num_canaries: int,
    confidence: float,
    rng: np.random.Generator,
) -> AuditResult:
    """Steinke et al.'s procedure on the silo: plant, train once, guess, bound."""
    if num_canaries < 2:
        raise ConfigError(f"num_canaries={num_canaries}: one-run auditing needs 2 or more")
    canary_x, canary_y = make_canaries(num_canaries, silo, num_classes, rng)
    included = rng.random(num_canaries) < 0.5
    planted = _with_examples(silo, canary_x[included], canary_y[included])
    initial = trainer.initial_vector(config.seed)
    trained = train_alone(trainer, planted, train, config.rounds, int(rng.integers(2**31)), initial)
    scores = _loss_drop(trainer, initial, trained, canary_x, canary_y)
    delta = config.privacy.delta
    bound, guesses, correct = one_run_audit(scores, included, delta, confidence)
    return _result(
        "one_run", config, planted.num_train, bound, confidence, num_canaries, 1, guesses, correct
    )


def _multi_run(
    config: RunConfig,
    trainer: TorchTrainer,
    silo: ClientData,
    num_classes: int,
    train: TrainConfig,
    num_runs: int,
    confidence: float,
    rng: np.random.Generator,
) -> AuditResult:
    """Jagielski et al. / Nasr et al.'s procedure: half the runs with the canary, half without."""
    if num_runs < 8:
        raise ConfigError(
            f"num_runs={num_runs}: multi-run auditing needs at least 8 runs (4 with and 4 "
            "without the canary, half of each to choose the threshold)"
        )
    canary_x, canary_y = make_canaries(1, silo, num_classes, rng)
    worlds = {True: _with_examples(silo, canary_x, canary_y), False: silo}
    scores: dict[bool, list[float]] = {True: [], False: []}
    initial = trainer.initial_vector(config.seed)
    for run_index in range(num_runs):
        inside = run_index % 2 == 0
        seed = int(rng.integers(2**31))
        trained = train_alone(trainer, worlds[inside], train, config.rounds, seed, initial)
        scores[inside].append(float(_loss_drop(trainer, initial, trained, canary_x, canary_y)[0]))
        logger.info("multi-run audit: run %d of %d", run_index + 1, num_runs)
    delta = config.privacy.delta
    bound, threshold = multi_run_epsilon_lower_bound(scores[True], scores[False], delta, confidence)
    evaluate_in = scores[True][len(scores[True]) // 2 :]
    evaluate_out = scores[False][len(scores[False]) // 2 :]
    correct = sum(s >= threshold for s in evaluate_in) + sum(s < threshold for s in evaluate_out)
    return _result(
        "multi_run",
        config,
        silo.num_train,
        bound,
        confidence,
        1,
        num_runs,
        len(evaluate_in) + len(evaluate_out),
        correct,
    )


def _result(
    method: AuditMethod,
    config: RunConfig,
    num_examples: int,
    bound: float,
    confidence: float,
    num_canaries: int,
    num_runs: int,
    guesses: int,
    correct: int,
) -> AuditResult:
    """The audit's result with the ledger's epsilon for the silo's ``num_examples``."""
    privacy = config.privacy
    noise_multiplier = privacy.noise_multiplier or 0.0
    if privacy.mechanism == "none":
        claimed = math.inf
    else:
        event = dp_sgd_round_event(
            num_examples, config.train.batch_size, config.train.local_epochs, noise_multiplier
        )
        claimed = compute_spend([event] * config.rounds, privacy.delta).epsilon
    result = AuditResult(
        method,
        claimed,
        bound,
        privacy.delta,
        confidence,
        noise_multiplier,
        num_canaries,
        num_runs,
        guesses,
        correct,
    )
    if result.exceeds_claim:
        logger.error("privacy audit found a DP violation: %s", result.summary())
    else:
        logger.info("%s", result.summary())
    return result


def _loss_drop(
    trainer: TorchTrainer,
    initial: npt.NDArray[Any],
    trained: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> FloatArray:
    """How much training lowered each example's loss: the canary score."""
    before = per_example_losses(predict_logits(trainer, initial, x), y)
    after = per_example_losses(predict_logits(trainer, trained, x), y)
    return before - after


def _with_examples(
    silo: ClientData, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
) -> ClientData:
    """The silo with ``(x, y)`` appended to its training split."""
    return ClientData(
        silo.client_id,
        np.concatenate([silo.x_train, x]),
        np.concatenate([silo.y_train, y]),
        silo.x_test,
        silo.y_test,
        silo.attributes,
    )


def _check_counts(num_canaries: int, num_guesses: int, num_correct: int) -> None:
    if not 0 <= num_correct <= num_guesses <= num_canaries:
        raise DataError(
            f"need 0 <= correct ({num_correct}) <= guesses ({num_guesses}) <= canaries "
            f"({num_canaries})"
        )


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
