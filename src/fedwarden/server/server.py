"""The federated server: samples cohorts, drives rounds, aggregates, checkpoints.

Per round (DESIGN, "Where data flows"): the sampler picks a cohort, the
runtime delivers the global vector and the strategy's training config to each
client, replies stream back through the pipeline's server halves into the
aggregator, and the strategy's server optimizer produces the new global
vector. The server holds O(model size) memory whatever the cohort size. It
does not know which runtime moves its messages.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import RoundAborted, UpdateRejected
from fedwarden.core.messages import (
    CLIENT_EPSILON,
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    TrainConfig,
    UpdateRefused,
)
from fedwarden.core.records import RoundRecord, RunResult, round_number
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline.robust import Reputation
from fedwarden.pipeline.stage import Pipeline
from fedwarden.privacy.ledger import BudgetExceeded
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.secrecy import COHORT_STREAM
from fedwarden.runtime.base import Runtime
from fedwarden.server.listeners import RoundListener
from fedwarden.server.rundir import Checkpoint, RunDirectory
from fedwarden.server.traffic import RoundTraffic, TrainLoss, weighted_client_metrics
from fedwarden.strategies.base import Strategy
from fedwarden.strategies.sampling import Sampler

logger = logging.getLogger(__name__)


class RoundPrivacy(Protocol):
    """The privacy accounting of a run's rounds (e.g. :class:`UserLevelPrivacy`)."""

    def eligible(self, client_ids: Sequence[str]) -> list[str]:
        """The clients that may still be sampled (those within their own budgets)."""
        ...

    def before_round(self, round_index: int) -> None:
        """Raise ``BudgetExceeded`` if the round's release would overspend."""

    def after_round(self, round_index: int, released: Sequence[str], applied: bool) -> None:
        """Charge what the round released to the ledger, whatever became of it.

        ``released`` are the clients whose update reached the server, accepted or
        rejected; ``applied`` says whether the round's aggregate was released.
        """

    def epsilon(self) -> float:
        """Epsilon spent so far."""
        ...

    def projected_epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` more rounds like the last."""
        ...

    def state(self) -> dict[str, float]:
        """State to checkpoint besides the ledger."""
        ...

    def load_state(self, state: dict[str, float]) -> None:
        """Restore :meth:`state`."""

    def report(self) -> dict[str, Any]:
        """The privacy report."""
        ...


@dataclass(frozen=True)
class CentralTestSet:
    """The server's own held-out data for evaluating the global model.

    An extra test set of a run holds other examples, e.g. triggered ones
    labelled with a backdoor's target, so its accuracy is the backdoor's
    success rate.
    """

    x: npt.NDArray[np.generic]
    y: npt.NDArray[np.generic]


@dataclass(frozen=True)
class ServerSettings:
    """How a server runs its rounds: how many, from which seed, and what each needs.

    A round applies its aggregate only with at least ``min_cohort`` accepted
    updates; it waits at most ``deadline_s`` for replies (None: no limit);
    the central test runs every ``evaluate_every`` rounds and after the last.
    ``client_evaluation_off`` says why the end-of-run evaluation on every
    client is skipped (a protected run: :mod:`fedwarden.pipeline.releases`);
    None runs it.
    """

    rounds: int
    seed: int
    min_cohort: int = 1
    deadline_s: float | None = None
    evaluate_every: int = 1
    client_evaluation_off: str | None = None


class Server:
    """Runs rounds of federated training over a runtime, as its ``settings`` say.

    ``cohort_randomness`` is where cohorts come from; by default a stream
    seeded by the settings' ``seed`` without ``privacy``, and the OS CSPRNG with it, since
    amplification by sampling needs cohorts nobody can recompute.
    ``noise_randomness`` is the pipeline's server-side noise source, passed
    so that a seeded one's position is checkpointed with the cohort stream's.
    ``extra_tests`` are evaluated beside ``central_test``, the accuracy on each
    kept under its name: a :class:`RoundRecord` field such as ``backdoor_success``.
    """

    def __init__(
        self,
        *,
        trainer: Trainer,
        strategy: Strategy,
        sampler: Sampler,
        pipeline: Pipeline,
        runtime: Runtime,
        client_ids: Sequence[str],
        settings: ServerSettings,
        central_test: CentralTestSet | None = None,
        extra_tests: Mapping[str, CentralTestSet] | None = None,
        run_dir: RunDirectory | None = None,
        privacy: RoundPrivacy | None = None,
        reputation: Reputation | None = None,
        listeners: Sequence[RoundListener] = (),
        cohort_randomness: NoiseSource | None = None,
        noise_randomness: NoiseSource | None = None,
    ) -> None:
        self.trainer = trainer
        self.strategy = strategy
        self.sampler = sampler
        self.pipeline = pipeline
        self.runtime = runtime
        self.client_ids = list(client_ids)
        self.settings = settings
        self.central_test = central_test
        self.extra_tests = dict(extra_tests or {})
        self.run_dir = run_dir
        self.privacy = privacy
        self.reputation = reputation
        self.listeners = list(listeners)
        pipeline.aggregator.attach(runtime.client_channel())
        self.vector = trainer.initial_vector(settings.seed)
        self.cohort_randomness = cohort_randomness or (
            NoiseSource.seeded(settings.seed, COHORT_STREAM)
            if privacy is None
            else NoiseSource.secure()
        )
        self.noise_randomness = noise_randomness
        self.history: list[RoundRecord] = []
        self.train_seconds = 0.0
        self.max_client_epsilon: float | None = None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: the next round is ``checkpoint.round_index + 1``."""
        self.trainer.spec.check_vector(checkpoint.vector)
        self.vector = np.array(checkpoint.vector, dtype=np.float32)
        self.strategy.load_state_dict(checkpoint.strategy_state)
        for name, source in self._reproducible_streams().items():
            position = checkpoint.sampler_state.get(name)
            if isinstance(position, int):
                source.seek(position)
        self.history = list(checkpoint.history)
        self.train_seconds = checkpoint.train_seconds
        if self.privacy is not None and checkpoint.privacy_state:
            self.privacy.load_state(checkpoint.privacy_state)
        if self.reputation is not None and checkpoint.reputation_state:
            self.reputation.load_state(checkpoint.reputation_state)

    @property
    def next_round(self) -> int:
        """Index of the next round to run."""
        return len(self.history)

    def run(self, finetune: TrainConfig | None = None, stop_after: int | None = None) -> RunResult:
        """Run the remaining rounds, then evaluate on every client.

        ``finetune`` turns on personalization by local fine-tuning in the final
        evaluation. ``stop_after`` ends the process's work after that many rounds
        in total (used to simulate an interruption before ``--resume``).
        """
        started = time.perf_counter()
        last = self.settings.rounds if stop_after is None else min(self.settings.rounds, stop_after)
        stopped_early = None
        for round_index in range(self.next_round, last):
            try:
                self.run_round(round_index)
            except BudgetExceeded as refusal:
                stopped_early = str(refusal)
                logger.warning("training stops: %s", refusal)
                last = self.settings.rounds
                break
        client_metrics = {}
        if last == self.settings.rounds and self.settings.client_evaluation_off is not None:
            logger.warning(self.settings.client_evaluation_off)
        elif last == self.settings.rounds:
            client_metrics = self.evaluate_clients(finetune)
        if self.run_dir is not None and last == self.settings.rounds:
            self.run_dir.save_model(self.trainer.spec, self.vector)
            self.run_dir.save_plots(self.history)
        client_rounds = sum(r.participants + r.rejected for r in self.history)
        final = next((r for r in reversed(self.history) if r.accuracy is not None), None)
        return RunResult(
            rounds=len(self.history),
            accuracy=None if final is None else final.accuracy,
            loss=None if final is None else final.loss,
            client_accuracy=client_metrics.get("accuracy"),
            personalized_accuracy=client_metrics.get("personalized_accuracy"),
            client_rounds_per_s=client_rounds / self.train_seconds if self.train_seconds else 0.0,
            wall_s=time.perf_counter() - started,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            run_dir=None if self.run_dir is None else str(self.run_dir.path),
            stopped_early=stopped_early,
            history=list(self.history),
            extras=self._privacy_extras(),
        )

    def run_round(self, round_index: int) -> RoundRecord:
        """Sample, train, aggregate, apply, evaluate and checkpoint one round."""
        started = time.perf_counter()
        population = self.client_ids
        if self.privacy is not None:
            self.privacy.before_round(round_index)
            population = self.privacy.eligible(self.client_ids)
        if self.reputation is not None:
            population = self.reputation.eligible(population)
        cohort = self.sampler.sample(population, self.cohort_randomness)
        for listener in self.listeners:
            listener.round_started(round_index, cohort)
        self.pipeline.aggregator.start(self.vector.size, cohort)
        self.pipeline.aggregator.round_model(self.vector, self.strategy.train_config(round_index))
        train_loss = TrainLoss()
        traffic = self.collect_updates(round_index, cohort, self.accepting(train_loss))
        return self.conclude_round(round_index, started, traffic, train_loss)

    def accepting(self, train_loss: TrainLoss) -> Callable[[ClientUpdate], None]:
        """The function that adds a checked update to the round's aggregate and tallies."""
        aggregator = self.pipeline.aggregator

        def accept(update: ClientUpdate) -> None:
            aggregator.add(update)
            if CLIENT_EPSILON in update.metrics:
                self.max_client_epsilon = max(
                    self.max_client_epsilon or 0.0, update.metrics[CLIENT_EPSILON]
                )
            train_loss.add(update)

        return accept

    def conclude_round(
        self, round_index: int, started: float, traffic: RoundTraffic, train_loss: TrainLoss
    ) -> RoundRecord:
        """Aggregate what was accepted, apply it, evaluate, record and checkpoint the round."""
        aggregator = self.pipeline.aggregator
        participants = traffic.participants
        note = ""
        aggregate = None
        if len(participants) >= self.settings.min_cohort and len(participants) > 0:
            try:
                aggregate = aggregator.result()
            except RoundAborted as abort:
                note = f"{abort}; the model is unchanged"
        else:
            note = (
                f"only {len(participants)} accepted update(s), fewer than "
                f"min_cohort={self.settings.min_cohort}; "
                "the model is unchanged"
            )
        applied = aggregate is not None
        scores = aggregator.client_scores() if applied else {}
        flagged = [client for client, score in scores.items() if score.flagged]
        quarantined = [] if self.reputation is None else self.reputation.record(scores)
        if flagged:
            logger.warning(
                "round %d: investigate before trusting: updates of %s are statistical outliers",
                round_number(round_index),
                ", ".join(flagged),
            )
        if aggregate is not None:
            self.vector = self.strategy.apply(self.vector, aggregate.mean_update)
        else:
            logger.warning("round %d: %s", round_number(round_index), note)
        if self.privacy is not None:
            self.privacy.after_round(round_index, traffic.released, applied)
        metrics = self._evaluate_central(round_index)
        self.train_seconds += time.perf_counter() - started
        record = RoundRecord(
            round_index=round_index,
            **traffic.record_fields(),
            applied=applied,
            loss=metrics.get("loss"),
            accuracy=metrics.get("accuracy"),
            train_loss=train_loss.mean(),
            round_seconds=time.perf_counter() - started,
            backdoor_success=metrics.get("backdoor_success"),
            flagged=flagged,
            quarantined=quarantined,
            note=note,
            epsilon=None if self.privacy is None else self.privacy.epsilon(),
            epsilon_projected=None
            if self.privacy is None
            else self.privacy.projected_epsilon(self.settings.rounds - round_index - 1),
        )
        self.history.append(record)
        self._checkpoint()
        for listener in self.listeners:
            listener.round_completed(record, traffic.silent_clients)
        return record

    def undelivered(
        self, traffic: RoundTraffic, round_index: int, reply: ClientFailure | UpdateRefused
    ) -> None:
        """Count and log a client that failed, or an upload its transport refused."""
        if isinstance(reply, UpdateRefused):
            self.rejected(traffic, round_index, reply.client_id, reply.reason, reply.message)
            return
        traffic.failures[reply.reason] += 1
        traffic.silent_clients.append(reply.client_id)
        logger.warning(
            "round %d: client %s %s", round_number(round_index), reply.client_id, reply.message
        )

    def rejected(
        self, traffic: RoundTraffic, round_index: int, client_id: str, reason: str, message: str
    ) -> None:
        """Count a refused update in the round's traffic and tell the listeners."""
        traffic.rejections[reason] += 1
        traffic.rejected_clients.append(client_id)
        for listener in self.listeners:
            listener.update_rejected(round_index, client_id, reason, message)

    def collect_updates(
        self,
        round_index: int,
        cohort: Sequence[str],
        accept: Callable[[ClientUpdate], None],
    ) -> RoundTraffic:
        """Have ``cohort`` train from the global vector; pass each checked update to ``accept``.

        Every reply goes through :meth:`receive`. The global vector is not changed.
        """
        train = self.strategy.train_config(round_index)
        parameters = self.pipeline.aggregator.round_parameters()
        instructions = [FitInstruction(round_index, cid, train, parameters) for cid in cohort]
        traffic = RoundTraffic(sampled=len(cohort), vector_bytes=self.vector.nbytes)
        for reply in self.runtime.fit(self.vector, instructions, self.settings.deadline_s):
            self.receive(round_index, reply, traffic, lambda update: self.admit(update, accept))
        return traffic

    def admit(self, update: ClientUpdate, accept: Callable[[ClientUpdate], None]) -> ClientUpdate:
        """Run ``update`` through the pipeline's server halves into ``accept``; what was added.

        Raises ``UpdateRejected`` when a half or ``accept`` refuses it.
        """
        checked = self.pipeline.server_half(update)
        accept(checked)
        return checked

    def receive(
        self,
        round_index: int,
        reply: ClientUpdate | ClientFailure | UpdateRefused,
        traffic: RoundTraffic,
        admit: Callable[[ClientUpdate], ClientUpdate],
    ) -> ClientUpdate | None:
        """Count one reply of round ``round_index``; the update ``admit`` accepted, or None.

        Failures, and updates ``admit`` rejects (``UpdateRejected``), are
        counted and logged (:meth:`undelivered`, :meth:`refused`), never passed on.
        """
        for listener in self.listeners:
            listener.client_finished(round_index)
        if not isinstance(reply, ClientUpdate):
            self.undelivered(traffic, round_index, reply)
            return None
        traffic.bytes_up += reply.payload_bytes
        try:
            accepted = admit(reply)
        except UpdateRejected as rejection:
            self.refused(traffic, round_index, reply, rejection)
            return None
        traffic.participants.append(accepted.client_id)
        return accepted

    def refused(
        self,
        traffic: RoundTraffic,
        round_index: int,
        update: ClientUpdate,
        rejection: UpdateRejected,
    ) -> None:
        """Count, tell the listeners and log an update the server's checks refused."""
        self.rejected(traffic, round_index, update.client_id, rejection.reason, str(rejection))
        logger.warning("round %d: rejected: %s", round_number(round_index), rejection)

    def _privacy_extras(self) -> dict[str, Any]:
        report = {} if self.privacy is None else dict(self.privacy.report())
        if self.max_client_epsilon is not None:
            key = (
                "max_client_reported_epsilon"
                if "max_client_epsilon" in report
                else ("max_client_epsilon")
            )
            report[key] = self.max_client_epsilon
        return {"privacy": report} if report else {}

    def _evaluate_central(self, round_index: int) -> dict[str, float]:
        due = (
            round_index + 1
        ) % self.settings.evaluate_every == 0 or round_index + 1 == self.settings.rounds
        if self.central_test is None or not due or len(self.central_test.y) == 0:
            return {}
        metrics = dict(self.trainer.evaluate(self.vector, self.central_test.x, self.central_test.y))
        for name, test_set in self.extra_tests.items():
            metrics[name] = self.trainer.evaluate(self.vector, test_set.x, test_set.y)["accuracy"]
        return metrics

    def _checkpoint(self) -> None:
        if self.run_dir is None:
            return
        self.run_dir.save_checkpoint(
            Checkpoint(
                round_index=len(self.history) - 1,
                vector=self.vector,
                strategy_state=self.strategy.state_dict(),
                sampler_state=self._sampler_state(),
                history=self.history,
                train_seconds=self.train_seconds,
                privacy_state={} if self.privacy is None else self.privacy.state(),
                reputation_state={} if self.reputation is None else self.reputation.state(),
            )
        )
        self.run_dir.write_metrics(self.history)

    def _reproducible_streams(self) -> dict[str, NoiseSource]:
        """The seeded streams of cohorts and noise, by checkpoint key (secure ones have no state).

        Saving where they stand lets a resumed test-mode run draw what the
        uninterrupted run would have drawn, bit for bit.
        """
        streams = {"position": self.cohort_randomness, "noise_position": self.noise_randomness}
        return {
            name: source
            for name, source in streams.items()
            if source is not None and source.reproducible
        }

    def _sampler_state(self) -> dict[str, Any]:
        """Where each seeded stream stands."""
        return {name: source.position for name, source in self._reproducible_streams().items()}

    def evaluate_clients(self, finetune: TrainConfig | None = None) -> dict[str, float]:
        """Example-weighted metrics of the global model over every client's test split."""
        instructions = [
            EvaluateInstruction(self.settings.rounds, cid, finetune) for cid in self.client_ids
        ]
        replies = self.runtime.evaluate(self.vector, instructions)
        return weighted_client_metrics(r for r in replies if isinstance(r, ClientEvaluation))
