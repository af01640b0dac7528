"""From a RunConfig to a finished run: prepare, build, run, resume."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedwarden.build.attacks import (
    build_backdoor_tests,
    poisoned,
)
from fedwarden.build.deployment import (
    Deployment,
    audit_trail,
    build_runtime,
    local_federation,
    open_store,
)
from fedwarden.build.handed import Handed
from fedwarden.build.integrity import (
    BudgetChange,
    recorded_config_hashes,
    recorded_epsilons,
    require_ledger,
    require_recorded_config,
    require_spend_kept,
)
from fedwarden.build.listeners import RoundObserver, round_listeners
from fedwarden.build.models import build_trainer
from fedwarden.build.monitoring import anchoring, build_monitoring, round_rows, store_listeners
from fedwarden.build.pipeline import (
    build_pipeline,
    build_reputation,
)
from fedwarden.build.privacy import build_privacy
from fedwarden.build.server import build_server
from fedwarden.build.summary import (
    choose_pilot_clients,
    governance_report,
    register_model,
    run_extras,
)
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import Vector
from fedwarden.core.records import RunResult
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.sources import load_dataset
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline.releases import ReleasePolicy
from fedwarden.privacy.secrecy import (
    server_noise,
)
from fedwarden.privacy.silo import (
    calibrate_silo_noise_multiplier,
)
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.state import ClientStateStore
from fedwarden.server.clustered import ClusteredTraining
from fedwarden.server.rundir import RunDirectory
from fedwarden.server.server import CentralTestSet, Server

if TYPE_CHECKING:
    from fedwarden.governance.store import RunStore
from fedwarden.strategies.scaffold import ScaffoldTrainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedRun:
    """The data set and trainer of a run, built once and shared by server and workers.

    ``config`` is the run's config with every calibrated value filled in.
    """

    config: RunConfig
    dataset: FederatedDataset
    trainer: Trainer


def prepare(config: RunConfig, handed: Handed | None = None) -> PreparedRun:
    """Load the data, calibrate DP-SGD's noise if asked to, and build the model for ``config``.

    ``handed`` is the model and data handed to :func:`run` in Python, used where
    ``config`` records them (``model.kind`` / ``data.source`` ``"api"``).
    """
    handed = handed or Handed(None, None)
    dataset = poisoned(config, handed.dataset(partial(load_dataset, config.data, config.seed)))
    section = config.privacy
    if section.mechanism == "dp_sgd" and section.noise_multiplier is None:
        assert section.epsilon is not None
        noise_multiplier = calibrate_silo_noise_multiplier(
            section.epsilon,
            section.delta,
            silo_sizes=list(dataset.train_sizes.values()),
            batch_size=config.train.batch_size,
            local_epochs=config.train.local_epochs,
            rounds=config.rounds,
        )
        logger.info("DP-SGD noise multiplier calibrated to %.4f", noise_multiplier)
        privacy = section.model_copy(update={"noise_multiplier": noise_multiplier})
        config = config.model_copy(update={"privacy": privacy})
    trainer = build_trainer(config, dataset, handed.model, handed.example_shape(dataset))
    handed.require_model_reads(trainer, dataset, config.seed)
    if config.strategy.name == "scaffold":
        trainer = ScaffoldTrainer(trainer)
    return PreparedRun(config, dataset, trainer)


def resumed(run_dir: Path) -> tuple[RunConfig, int]:
    """The config of the run in ``run_dir`` and how many rounds it completed."""
    directory = RunDirectory(run_dir)
    config = RunConfig.model_validate_json(directory.read_config())
    checkpoint = directory.load_checkpoint()
    return config, 0 if checkpoint is None else checkpoint.round_index + 1


def discard_unfinished_client_state(run_dir: RunDirectory, last_round: int) -> None:
    """Forget the clients' state of rounds after the checkpoints a resumed run continues from.

    ``last_round`` is the run's checkpoint; in a clustered run past its probe,
    each cluster's clients keep their state up to their cluster's checkpoint
    (the probing round, before the cluster's first).
    """
    states = ClientStateStore(run_dir.client_state_dir)
    kept = run_dir.load_clustering()
    if kept is None:
        states.discard_after(last_round)
        return
    clusters, probe = kept
    for index, cluster in enumerate(clusters):
        checkpoint = run_dir.cluster_dir(index).load_checkpoint()
        cluster_round = probe.round_index if checkpoint is None else checkpoint.round_index
        states.discard_after(cluster_round, cluster)


def serve(
    config: RunConfig,
    deployment: Deployment,
    observer: RoundObserver | None = None,
    budget_change: BudgetChange | None = None,
) -> RunResult:
    """``fedwarden server``: run ``config`` over gRPC, continuing its unfinished run if any.

    The store remembers the run; a server killed mid-run and started again
    with the same config and store continues from the last completed round.
    ``budget_change`` changes the unfinished run's budget explicitly: ``config``
    must then be its stored config with that budget.
    """
    with open_store(config, deployment) as store:
        unfinished = store.find_unfinished_run(config.name)
        resume = None
        if unfinished is not None:
            stored = RunConfig.model_validate_json(
                RunDirectory(Path(unfinished.run_dir)).read_config()
            )
            expected = stored if budget_change is None else budget_change.apply(stored)
            if expected != config:
                raise ConfigError(
                    f"run {config.name!r} ({unfinished.run_id}) is unfinished and was started "
                    "with another config; restore that config, or give this run another name "
                    "(a privacy budget changes only with --budget-epsilon E "
                    "--budget-changed-by NAME)"
                )
            resume = Path(unfinished.run_dir)
            config = stored
            logger.warning("continuing unfinished run %s", unfinished.run_id)
        return run(
            config,
            resume=resume,
            observer=observer,
            deployment=deployment,
            store=store,
            budget_change=budget_change,
        )


def run(
    config: RunConfig,
    *,
    model: object | None = None,
    clients: object | None = None,
    test: object | None = None,
    resume: Path | None = None,
    observer: RoundObserver | None = None,
    write_run_dir: bool = True,
    stop_after: int | None = None,
    deployment: Deployment | None = None,
    store: RunStore | None = None,
    budget_change: BudgetChange | None = None,
) -> RunResult:
    """Run ``config`` to the end and return its result.

    With ``resume``, continue the run in that directory instead: ``config``
    must be the one stored there (see :func:`resumed`), and the run's ledger
    must agree with every record of it (:mod:`fedwarden.build.integrity`);
    ``budget_change`` changes its privacy budget explicitly. ``deployment`` and
    ``store`` are the grpc runtime's (see :func:`serve`).

    ``model``, ``clients`` and ``test`` hand fedwarden your own model (a PyTorch
    module or its factory, a scikit-learn estimator, a Trainer), your clients'
    data (a list or dict of PyTorch ``Dataset`` objects of ``(x, y)`` items, ``(x, y)``
    arrays or client file paths) and a central test set, in place of the
    config's ``[model]`` and ``[data]`` (see :mod:`fedwarden.build.handed`)::

        fedwarden.run(config, model=MyNet, clients=[site_a, site_b], test=held_out)

    A resumed run must be handed the same model and data again.
    """
    handed = None
    if model is not None or clients is not None or test is not None:
        handed = Handed.of(config, model, clients, test)
        config = handed.stamp(config)
        if resume is not None:
            stored = RunConfig.model_validate_json(RunDirectory(resume).read_config())
            handed.require_resumes(stored, resume)
    if budget_change is not None and resume is None:
        raise ConfigError(
            "a privacy budget is changed only when resuming a run (--resume RUN_DIR); a new "
            "run takes its budget from privacy.epsilon"
        )
    if config.runtime.kind == "grpc" and deployment is None and config.secure.kind == "he":
        raise ConfigError(
            "fedwarden run starts its own client processes, but homomorphic aggregation over "
            "grpc needs a key holder that knows the clients' certificates and clients that took "
            "its public context from it: deploy with `fedwarden keyholder serve`, `fedwarden "
            "server` and `fedwarden client --he-public-context`, or simulate with runtime.kind "
            "'local'"
        )
    if resume is not None:
        run_dir: RunDirectory | None = RunDirectory(resume)
    elif write_run_dir:
        run_dir = RunDirectory.create(config.runs_dir, config.name)
        run_dir.write_config(config.model_dump_json(indent=1))
    else:
        run_dir = None
    if config.runtime.kind == "grpc" and store is None:
        if run_dir is None:
            raise ConfigError(
                "the grpc runtime keeps its store and spool in the run directory; run with one"
            )
        # The runs directory's store: its registry and audit log span successive runs.
        with open_store(config, deployment) as runs_store:
            return _run(
                config, run_dir, observer, stop_after, deployment, runs_store, budget_change
            )
    return _run(config, run_dir, observer, stop_after, deployment, store, budget_change, handed)


def _run(
    config: RunConfig,
    run_dir: RunDirectory | None,
    observer: RoundObserver | None,
    stop_after: int | None,
    deployment: Deployment | None,
    store: RunStore | None,
    budget_change: BudgetChange | None = None,
    handed: Handed | None = None,
) -> RunResult:
    checkpoint = None if run_dir is None else run_dir.load_checkpoint()
    clustering = config.clustering
    if clustering.enabled and stop_after is not None:
        raise ConfigError(
            "stop_after counts the rounds of one server; a clustered run has one per cluster, "
            "so interrupt it instead (it resumes from every cluster's checkpoint)"
        )
    old_epsilon = config.privacy.epsilon
    if run_dir is not None and checkpoint is not None:
        require_ledger(run_dir, config, checkpoint)
        require_recorded_config(run_dir, recorded_config_hashes(store, run_dir))
    if budget_change is not None:
        config = budget_change.apply(config)
        changed_config_json = config.model_dump_json(indent=1)
    prepared = prepare(config, handed)
    config, dataset, trainer = prepared.config, prepared.dataset, prepared.trainer
    pilot_clients = choose_pilot_clients(config, dataset)
    policy = ReleasePolicy.of(config)
    if policy.protected:
        logger.info(policy.why_no_train_loss())
    privacy = build_privacy(
        config,
        dataset,
        trainer.spec.size,
        run_dir,
        None if budget_change is None else budget_change.by,
    )
    if run_dir is not None and checkpoint is not None and privacy is not None:
        require_spend_kept(
            run_dir, privacy.epsilon(), recorded_epsilons(store, run_dir, checkpoint)
        )
    noise = server_noise(config)
    pipeline = build_pipeline(config, trainer, dataset, privacy, noise)
    audit = None
    if store is not None and run_dir is not None:
        if deployment is None:
            deployment = Deployment.local(
                run_dir.deploy_dir,
                dataset,
                local_federation(config.runs_dir),
                allow_test_mode_noise=config.privacy.reproducible_noise,
            )
        audit = audit_trail(config, store, run_dir, deployment, privacy)
    if budget_change is not None and run_dir is not None and old_epsilon is not None:
        budget_change.record(run_dir, store, audit, old_epsilon, changed_config_json)
    monitoring = build_monitoring(
        config,
        audit,
        None if deployment is None else deployment.metrics,
        run_id=None if run_dir is None else run_dir.path.name,
    )
    try:  # a run that fails marks its MLflow run FAILED
        with build_runtime(config, dataset, run_dir, store, deployment) as runtime:

            def make_server(
                client_ids: Sequence[str],
                initial_vector: Vector,
                rounds: int,
                cluster_dir: RunDirectory | None,
            ) -> Server:
                """A cluster's server over the running runtime (no central test: it is global)."""
                cluster_server = build_server(
                    config,
                    dataset,
                    trainer,
                    build_pipeline(config, trainer, dataset),
                    runtime,
                    client_ids=client_ids,
                    rounds=rounds,
                    run_dir=cluster_dir,
                    listeners=round_listeners(observer),
                )
                cluster_server.vector = initial_vector.copy()
                return cluster_server

            server = build_server(
                config,
                dataset,
                trainer,
                pipeline,
                runtime,
                rounds=clustering.warmup_rounds if clustering.enabled else config.rounds,
                privacy=privacy,
                noise=noise,
                central_test=CentralTestSet(dataset.x_test, dataset.y_test),
                extra_tests=build_backdoor_tests(config, dataset),
                reputation=build_reputation(config),
                run_dir=run_dir,
                listeners=round_listeners(
                    observer,
                    audit,
                    [
                        monitoring,
                        *round_rows(store, run_dir),
                        *anchoring(store, run_dir, audit, deployment),
                    ],
                    store_listeners(store, run_dir),
                ),
                client_evaluation_off=None
                if policy.federated_evaluation
                else policy.why_no_federated_evaluation("the end-of-run client evaluation"),
            )
            checkpoint = None if run_dir is None else run_dir.load_checkpoint()
            state_dir = None if run_dir is None else run_dir.client_state_dir
            if checkpoint is not None:
                server.restore(checkpoint)
            if checkpoint is not None and run_dir is not None:
                discard_unfinished_client_state(run_dir, checkpoint.round_index)
            runtime.start(Workload(dataset, trainer, pipeline.stages, config.seed, state_dir))
            finetune = None
            if config.personalization.finetune_epochs:
                finetune = TrainConfig(
                    local_epochs=config.personalization.finetune_epochs,
                    batch_size=config.train.batch_size,
                    learning_rate=config.train.learning_rate,
                )
            clustered = None
            if clustering.enabled:
                clustered = ClusteredTraining(
                    make_server,
                    cluster_rounds=config.rounds - clustering.warmup_rounds - 1,
                    max_clusters=clustering.max_clusters,
                    min_cluster_size=clustering.min_cluster_size,
                    distance_threshold=clustering.distance_threshold,
                ).run(server)
                result = replace(
                    clustered.warmup,
                    rounds=config.rounds,
                    client_accuracy=clustered.clustered_metrics.get("accuracy"),
                )
            else:
                result = server.run(finetune=finetune, stop_after=stop_after)
            governed: dict[str, Any] = {}
            completed = run_dir is not None and store is not None and result.rounds == config.rounds
            if completed and audit is not None and run_dir is not None and store is not None:
                description = f"{config.data.source}, held by {len(dataset.clients)} clients"
                governed = register_model(
                    config, store, audit, run_dir, result, description, runtime, pilot_clients
                )
                assert deployment is not None
                governed["governance"] = governance_report(store, audit, run_dir, deployment)
        extras = run_extras(
            config, dataset, result, runtime.name, pipeline, server.reputation, privacy, clustered
        )
        extras.update(governed)
        monitoring.run_finished(
            None if run_dir is None else run_dir.path, extras.get("registered_model")
        )
        final = RunResult(**{**result.__dict__, "extras": extras})
        if run_dir is not None:
            run_dir.write_summary(final.to_json())
            if store is not None and completed:
                store.finish_run(run_dir.path.name, "completed")
        return final
    except BaseException:
        monitoring.run_failed()
        raise
