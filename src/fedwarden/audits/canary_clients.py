"""Canary clients: a one-run audit of user-level DP-FedAvg in a real federated run.

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

- a lower bound, valid at ``confidence``: :func:`~fedwarden.privacy.auditing.one_run_audit`
  with the cosines as scores;
- Andrew et al.'s *estimate* (not a bound): Gaussians fitted to the inserted
  and the unused canaries' cosines, and the epsilon at ``delta`` of the
  Gaussian pair (:func:`~fedwarden.privacy.auditing.gaussian_fit_epsilon`).

PyTorch is not imported here, so the worker processes that unpickle a
:class:`CanaryTrainer` around a NumPy model start without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import numpy.typing as npt

from fedwarden.audits.results import AuditResult, logged
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
from fedwarden.privacy.auditing import (
    check_confidence,
    gaussian_fit_epsilon,
    one_run_audit,
)
from fedwarden.privacy.user_level import UserLevelPrivacy
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.local import LocalRuntime
from fedwarden.server.server import Server

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

CanaryStatistic = Literal["final_model", "all_iterates"]
FloatArray = npt.NDArray[np.float64]


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
    return logged(result)


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
    for round_index in range(server.settings.rounds):
        server.run_round(round_index)
        current = server.vector.astype(np.float64)
        if statistic == "all_iterates":
            largest = np.maximum(largest, canary_cosines(directions, current - previous))
        previous = current
        logger.info("canary-client audit: round %d of %d", round_index + 1, server.settings.rounds)
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
