"""The one place a config's federated server is assembled: for a run, a cluster or an audit.

Every server of a config samples, trains and aggregates the same way: the
strategy, the sampler, the cohort randomness, the minimum cohort, the round
deadline and the evaluation cadence come from the config here, and FedBuff's
buffered rounds replace synchronous ones when ``asynchronous.enabled``. The
caller brings what belongs to its use: the pipeline, the runtime, the
population and rounds, and the run's records (privacy, run directory,
listeners, test sets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedwarden.build.models import build_sampler, build_strategy
from fedwarden.core.config import RunConfig
from fedwarden.data.dataset import FederatedDataset
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline.robust import Reputation
from fedwarden.pipeline.stage import Pipeline
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.secrecy import cohort_randomness
from fedwarden.runtime.base import Runtime
from fedwarden.server.fedbuff import FedBuffServer
from fedwarden.server.listeners import RoundListener
from fedwarden.server.rundir import RunDirectory
from fedwarden.server.server import (
    CentralTestSet,
    RoundPrivacy,
    Server,
    ServerSettings,
)


def build_server(
    config: RunConfig,
    dataset: FederatedDataset,
    trainer: Trainer,
    pipeline: Pipeline,
    runtime: Runtime,
    *,
    client_ids: Sequence[str] | None = None,
    rounds: int | None = None,
    privacy: RoundPrivacy | None = None,
    noise: NoiseSource | None = None,
    central_test: CentralTestSet | None = None,
    extra_tests: Mapping[str, CentralTestSet] | None = None,
    reputation: Reputation | None = None,
    run_dir: RunDirectory | None = None,
    listeners: Sequence[RoundListener] = (),
    client_evaluation_off: str | None = None,
) -> Server:
    """The server of ``config`` over ``runtime``, training ``client_ids`` for ``rounds``.

    ``client_ids`` defaults to every client of ``dataset`` and ``rounds`` to
    ``config.rounds``; ``noise`` is the pipeline's server-side noise source
    (its position is checkpointed); ``extra_tests`` are evaluated beside
    ``central_test`` (see :class:`Server`).
    """
    population = dataset.client_ids if client_ids is None else list(client_ids)
    settings = ServerSettings(
        rounds=config.rounds if rounds is None else rounds,
        seed=config.seed,
        min_cohort=config.sampling.min_cohort,
        deadline_s=config.sampling.deadline_s,
        evaluate_every=config.evaluate_every,
        client_evaluation_off=client_evaluation_off,
    )
    parts: dict[str, Any] = {
        "trainer": trainer,
        "strategy": build_strategy(config, len(population), trainer),
        "sampler": build_sampler(config, dataset),
        "pipeline": pipeline,
        "runtime": runtime,
        "client_ids": population,
        "settings": settings,
        "cohort_randomness": cohort_randomness(config),
        "noise_randomness": noise,
        "central_test": central_test,
        "extra_tests": extra_tests or {},
        "reputation": reputation,
        "run_dir": run_dir,
        "privacy": privacy,
        "listeners": listeners,
    }
    asynchronous = config.asynchronous
    if not asynchronous.enabled:
        return Server(**parts)
    return FedBuffServer(
        buffer_size=asynchronous.buffer_size,
        concurrency=asynchronous.concurrency or 2 * asynchronous.buffer_size,
        staleness_exponent=asynchronous.staleness_exponent,
        max_staleness=asynchronous.max_staleness,
        **parts,
    )
