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

User-level DP-FedAvg (``privacy.mechanism = "user_level"``) is audited with
canary *clients* and white-box access to the model, as the server has it
(Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar, ICLR 2024, "One-shot
Empirical Privacy Estimation for Federated Learning", Algorithm 1): the
auditor draws ``m`` random unit directions in parameter space and adds ``m``
canary clients to the population; each is inserted with probability 1/2.
Whenever sampled, an inserted canary submits its direction scaled to the
round's clip norm; a canary that is not inserted submits a zero update, which
changes nothing in the released model, so each canary's insertion is a change
of one client (add/remove under Poisson sampling, replace-one under fixed-size
cohorts, the ledger's own neighbouring relation). The configured federated
training then runs for real (:func:`canary_client_audit`). A canary's score is
the cosine between its direction and the final model delta (final minus
initial model), or with ``statistic="all_iterates"`` the largest cosine with
any round's model delta. Two figures come out:

- a lower bound, valid at ``confidence``: the one-run procedure above with
  the cosines as scores;
- Andrew et al.'s *estimate* (not a bound): Gaussians fitted to the inserted
  and the unused canaries' cosines, and the epsilon at ``delta`` of the
  Gaussian pair (:func:`~fedwarden.privacy.auditing.gaussian_fit_epsilon`).

The statistics live in :mod:`fedwarden.privacy.auditing`; this module runs
the trainings they are applied to.

PyTorch is imported only by the functions that need it, so the worker
processes that unpickle a :class:`CanaryTrainer` around a NumPy model start
without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from fedwarden.build.pipeline import build_pipeline
from fedwarden.build.privacy import build_privacy
from fedwarden.build.run import prepare
from fedwarden.build.server import build_server
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import VECTOR_DTYPE, ParamSpec, Vector
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.models.trainer import ClientContext, Trainer
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.auditing import (
    check_confidence,
    gaussian_fit_epsilon,
    multi_run_epsilon_lower_bound,
    one_run_audit,
)
from fedwarden.privacy.silo import dp_sgd_round_event
from fedwarden.privacy.user_level import UserLevelPrivacy
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.local import LocalRuntime
from fedwarden.server.server import Server

if TYPE_CHECKING:
    from fedwarden.models.torch import TorchTrainer

logger = logging.getLogger(__name__)

AuditMethod = Literal["one_run", "multi_run"]
CanaryStatistic = Literal["final_model", "all_iterates"]
FloatArray = npt.NDArray[np.float64]

__all__ = [
    "AuditMethod",
    "AuditResult",
    "CanaryStatistic",
    "CanaryTrainer",
    "audit_privacy",
    "canary_client_audit",
    "canary_cosines",
    "canary_directions",
    "make_canaries",
]


@dataclass(frozen=True)
class AuditResult:
    """An audit's epsilon lower bound beside the accountant's claimed epsilon.

    With probability at least ``confidence`` the training's true epsilon (at
    ``delta``) is at least ``lower_bound``. ``num_canaries`` were planted
    (one-run) or one canary over ``num_runs`` trainings (multi-run);
    ``num_guesses`` and ``num_correct`` are the guesses scored (one-run:
    canaries guessed on; multi-run: evaluation runs) and how many were right.
    ``noise_multiplier`` is the ``z`` of DP-SGD or DP-FedAvg (0 without DP,
    where the claim is infinite). ``score`` names the canary score:
    ``loss_drop`` (sample-level canaries, black box) or ``cosine_final_model``
    / ``cosine_all_iterates`` (canary clients, white box).
    ``epsilon_estimate`` is Andrew et al. 2024's Gaussian-fit estimate (canary
    clients only, else None): a point estimate with no confidence attached,
    which may lie above or below the true epsilon, unlike ``lower_bound``.
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
    score: str = "loss_drop"
    epsilon_estimate: float | None = None

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
        estimate = (
            ""
            if self.epsilon_estimate is None
            else f" Estimate (Andrew et al. 2024, Gaussian fit, not a bound): epsilon ~ "
            f"{self.epsilon_estimate:.3f}."
        )
        return (
            f"{self.method} audit ({self.score}): epsilon >= {self.lower_bound:.3f} with "
            f"confidence {self.confidence:g} (delta {self.delta:g}); accountant claims "
            f"{self.claimed_epsilon:.3f} (z = {self.noise_multiplier:.4f}); {verdict}."
            f"{estimate} {self.num_correct} of {self.num_guesses} guesses right, "
            f"{self.num_canaries} canaries, {self.num_runs} training run(s)."
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with ``exceeds_claim``."""
        return {**asdict(self), "exceeds_claim": self.exceeds_claim}


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


def canary_directions(count: int, size: int, rng: np.random.Generator) -> FloatArray:
    """``count`` independent uniformly random unit vectors of ``size`` elements, one per row.

    Andrew et al. 2024: in high dimension they are nearly orthogonal to each
    other and to any fixed update, so a canary's cosine with the model delta
    measures its own contribution. They are the auditor's choice, not privacy
    noise, so a seeded generator draws them.
    """
    directions = rng.standard_normal((count, size))
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    return np.asarray(directions / norms, dtype=np.float64)


def canary_cosines(directions: FloatArray, model_delta: npt.ArrayLike) -> FloatArray:
    """The cosine between each unit row of ``directions`` and ``model_delta`` (0 if it is 0)."""
    delta = np.asarray(model_delta, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(delta))
    if norm == 0.0:
        return np.zeros(len(directions))
    return np.asarray(directions @ (delta / norm), dtype=np.float64)


class CanaryTrainer:
    """A run's trainer, with canary clients that submit a fixed update instead of training.

    Andrew et al. 2024, Algorithm 1: an inserted canary client (``canaries``
    maps its id to its unit direction) submits that direction scaled to the
    round's clip norm (``round_parameters["clip_norm"]``, which adaptive
    clipping moves; ``clip_norm`` when the round sends none); an unused canary
    (in ``unused`` but not in ``canaries``) submits a zero update. Every other
    client trains with ``trainer``. The updates then pass through the
    pipeline's client and server halves like any other.
    """

    def __init__(
        self,
        trainer: Trainer,
        canaries: Mapping[str, FloatArray],
        unused: Sequence[str],
        clip_norm: float,
    ) -> None:
        self.trainer = trainer
        self.canaries = dict(canaries)
        self.unused = frozenset(unused)
        self.clip_norm = clip_norm

    @property
    def spec(self) -> ParamSpec:
        """The trained model's layout."""
        return self.trainer.spec

    def initial_vector(self, seed: int) -> Vector:
        """The trained model's initialization."""
        return self.trainer.initial_vector(seed)

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """A canary's update (weight 1), or the real client's training."""
        if client.client_id in self.canaries:
            bound = client.round_parameters.get("clip_norm", self.clip_norm)
            direction = self.canaries[client.client_id]
            return FitResult((direction * bound).astype(VECTOR_DTYPE), 1)
        if client.client_id in self.unused:
            return FitResult(np.zeros(self.spec.size, dtype=VECTOR_DTYPE), 1)
        return self.trainer.fit(vector, client, train)

    def evaluate(
        self, vector: Vector, x: npt.NDArray[np.generic], y: npt.NDArray[np.generic]
    ) -> Metrics:
        """The trained model's metrics."""
        return self.trainer.evaluate(vector, x, y)


def canary_client_audit(
    config: RunConfig,
    *,
    num_canaries: int = 500,
    confidence: float = 0.95,
    statistic: CanaryStatistic = "final_model",
) -> AuditResult:
    """Audit user-level DP-FedAvg with canary clients (Andrew et al. 2024) in one real run.

    The run is ``config``'s own federated training, built by
    :mod:`fedwarden.build` (the same data, trainer, strategy,
    sampler, privacy accounting with its ledger, and update pipeline:
    validation, ``ClipUpdate`` and DP-FedAvg's ``GaussianMean`` with the
    configured noise source), run round by round by :class:`Server` on the
    ``local`` runtime's worker processes, with ``num_canaries`` canary
    clients added to the population (:class:`CanaryTrainer`), each inserted
    with probability 1/2. The noise multiplier is calibrated, and the claim
    charged, for that population, as the run executes it.

    Scores: the cosine of each canary's direction with the final model delta
    (``statistic="final_model"``), or the largest cosine with any round's
    model delta (``"all_iterates"``, what a server that sees every round's
    model can use). The lower bound is :func:`one_run_audit` of the scores
    (valid at ``confidence``); the estimate is :func:`gaussian_fit_epsilon`
    of the inserted against the unused canaries (not a bound).
    """

    if statistic not in get_args(CanaryStatistic):
        raise ConfigError(
            f"statistic {statistic!r} is not one of {list(get_args(CanaryStatistic))}"
        )
    if num_canaries < 2:
        raise ConfigError(
            f"num_canaries={num_canaries}: a canary-client audit needs 2 or more; use hundreds"
        )
    check_confidence(confidence)
    _check_canary_config(config)
    prepared = prepare(config)
    config = prepared.config
    rng = np.random.default_rng(config.seed)
    directions = canary_directions(num_canaries, prepared.trainer.spec.size, rng)
    included = rng.random(num_canaries) < 0.5
    population, canary_ids = _with_canary_clients(prepared.dataset, num_canaries)
    trainer = CanaryTrainer(
        prepared.trainer,
        {cid: directions[index] for index, cid in enumerate(canary_ids) if included[index]},
        canary_ids,
        config.privacy.clip_norm,
    )
    privacy = build_privacy(config, population, trainer.spec.size, None)
    assert isinstance(privacy, UserLevelPrivacy)
    pipeline = build_pipeline(config, trainer, population, privacy)
    with LocalRuntime(config.runtime.workers) as runtime:
        server = build_server(config, population, trainer, pipeline, runtime, privacy=privacy)
        runtime.start(Workload(population, trainer, pipeline.stages, config.seed))
        scores = _canary_scores(server, directions, statistic)
    delta = config.privacy.delta
    bound, guesses, correct = one_run_audit(scores, included, delta, confidence)
    result = AuditResult(
        "one_run",
        privacy.epsilon(),
        bound,
        delta,
        confidence,
        privacy.noise_multiplier,
        num_canaries,
        1,
        guesses,
        correct,
        score=f"cosine_{statistic}",
        epsilon_estimate=_estimate(scores[included], scores[~included], delta),
    )
    return _logged(result)


def _estimate(in_scores: FloatArray, out_scores: FloatArray, delta: float) -> float | None:
    """:func:`gaussian_fit_epsilon`, or None when a side has fewer than 2 canaries to fit."""
    if min(len(in_scores), len(out_scores)) < 2:
        logger.warning(
            "no epsilon estimate: %d canaries were inserted and %d unused, the Gaussian fit "
            "needs 2 of each; plant more canaries",
            len(in_scores),
            len(out_scores),
        )
        return None
    return gaussian_fit_epsilon(in_scores, out_scores, delta)


def _canary_scores(
    server: Server, directions: FloatArray, statistic: CanaryStatistic
) -> FloatArray:
    """Run every round of ``server``; each canary's cosine with the model delta(s)."""
    initial = server.vector.astype(np.float64)
    previous = initial
    largest = np.full(len(directions), -np.inf)
    for round_index in range(server.rounds):
        server.run_round(round_index)
        current = server.vector.astype(np.float64)
        if statistic == "all_iterates":
            largest = np.maximum(largest, canary_cosines(directions, current - previous))
        previous = current
        logger.info("canary-client audit: round %d of %d", round_index + 1, server.rounds)
    if statistic == "all_iterates":
        return largest
    return canary_cosines(directions, previous - initial)


def _check_canary_config(config: RunConfig) -> None:
    """Refuse the run features the canary-client audit does not reproduce."""
    unsupported = {
        "secure.kind": config.secure.kind != "none",
        "asynchronous.enabled": config.asynchronous.enabled,
        "clustering.enabled": config.clustering.enabled,
        "strategy.name": config.strategy.name == "scaffold",
        "sampling.scheme": config.sampling.scheme == "stratified",
    }
    refused = [field for field, present in unsupported.items() if present]
    if refused:
        raise ConfigError(
            f"the canary-client audit runs synchronous rounds in the clear over the whole "
            f"population, with canaries that have no strata nor control variates; change "
            f"{', '.join(refused)} (secure.kind 'none', no asynchronous rounds or clustering, "
            f"a strategy other than 'scaffold', uniform or poisson sampling)"
        )


def _with_canary_clients(
    dataset: FederatedDataset, count: int
) -> tuple[FederatedDataset, list[str]]:
    """``dataset`` with ``count`` data-less canary clients appended; their ids."""
    canary_ids = [f"canary-client-{index}" for index in range(count)]
    taken = set(dataset.clients) & set(canary_ids)
    if taken:
        raise DataError(
            f"the data set already has clients named {sorted(taken)[:3]}; canary clients need "
            "fresh ids, rename those clients"
        )
    some = next(iter(dataset.clients.values()))
    clients = dict(dataset.clients)
    for cid in canary_ids:
        clients[cid] = ClientData(
            cid, some.x_train[:0], some.y_train[:0], some.x_test[:0], some.y_test[:0]
        )
    return (
        FederatedDataset(
            dataset.name,
            clients,
            dataset.x_test,
            dataset.y_test,
            dataset.num_features,
            dataset.num_classes,
        ),
        canary_ids,
    )


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
    return _logged(result)


def _logged(result: AuditResult) -> AuditResult:
    """``result``, logged as an error when its bound exceeds the claim."""
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
