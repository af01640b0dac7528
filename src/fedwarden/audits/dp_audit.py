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
  ``r`` under (epsilon, delta)-DP; :func:`~fedwarden.privacy.auditing.one_run_p_value`
  is the paper's algorithm (Appendix D), and
  :func:`~fedwarden.privacy.auditing.one_run_epsilon_lower_bound` the largest
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

The statistics live in :mod:`fedwarden.privacy.auditing`; this module runs
the trainings they are applied to.

User-level DP-FedAvg (``privacy.mechanism = "user_level"``) is audited
with canary clients in one real run: :mod:`fedwarden.audits.canary_clients`.

PyTorch is imported only by the functions that need it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import numpy.typing as npt

from fedwarden.audits.canary_clients import CanaryStatistic, canary_client_audit
from fedwarden.audits.results import AuditMethod, AuditResult, logged
from fedwarden.build.run import prepare
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.auditing import (
    check_confidence,
    multi_run_epsilon_lower_bound,
    one_run_audit,
)
from fedwarden.privacy.silo import dp_sgd_round_event

if TYPE_CHECKING:
    from fedwarden.models.torch import TorchTrainer

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

__all__ = ["audit_privacy", "make_canaries"]


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
    statistic: CanaryStatistic = "final_model",
) -> AuditResult:
    """Audit the training ``config`` describes; the claim and the measured lower bound.

    ``one_run`` plants ``num_canaries`` canaries and trains once; ``multi_run``
    trains ``num_runs`` times, half with one canary (``num_canaries`` is then
    not used). ``privacy.mechanism`` must be ``dp_sgd`` (Opacus DP-SGD, the
    claim is the ledger's epsilon), ``none`` (no DP: the claim is infinite,
    and the audit measures what training leaks), both with model.kind
    ``mlp``, or ``user_level`` (DP-FedAvg, one-run only: canary clients,
    scored by ``statistic``, see :func:`canary_client_audit`). See the module
    docstring for what is trained.
    """
    from fedwarden.models.torch import TorchTrainer

    if method not in get_args(AuditMethod):
        raise ConfigError(f"method {method!r} is not one of {list(get_args(AuditMethod))}")
    check_confidence(confidence)
    mechanism = config.privacy.mechanism
    if mechanism == "user_level":
        if method != "one_run":
            raise ConfigError(
                "user-level DP-FedAvg is audited with canary clients in one run: use method "
                f"'one_run' (got {method!r})"
            )
        return canary_client_audit(
            config, num_canaries=num_canaries, confidence=confidence, statistic=statistic
        )
    if mechanism not in ("dp_sgd", "none") or config.model.kind != "mlp":
        raise ConfigError(
            f"privacy audits train PyTorch models with sample-level DP-SGD, or run user-level "
            f"DP-FedAvg with canary clients: set privacy.mechanism to 'dp_sgd', 'none' or "
            f"'user_level' (it is {mechanism!r}), and for 'dp_sgd' and 'none' model.kind to "
            f"'mlp' (it is {config.model.kind!r})"
        )
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
    from fedwarden.audits.membership import train_alone

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
    from fedwarden.audits.membership import train_alone

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
    return logged(result)


def _loss_drop(
    trainer: TorchTrainer,
    initial: npt.NDArray[Any],
    trained: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> FloatArray:
    """How much training lowered each example's loss: the canary score."""
    from fedwarden.audits.membership import per_example_losses, predict_logits

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
