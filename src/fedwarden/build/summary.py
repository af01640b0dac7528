"""The end of a completed run: the model registered and piloted, the governance report."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fedwarden.build.attacks import attack_summary
from fedwarden.build.deployment import (
    Deployment,
)
from fedwarden.build.monitoring import anchoring
from fedwarden.core.config import RunConfig
from fedwarden.core.records import RunResult
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.heterogeneity import label_heterogeneity
from fedwarden.pipeline.releases import ReleasePolicy, release_inventory
from fedwarden.pipeline.robust import Reputation
from fedwarden.pipeline.stage import Pipeline
from fedwarden.privacy.secrecy import sampling_secrecy
from fedwarden.privacy.silo import ClientBudgets
from fedwarden.privacy.user_level import UserLevelPrivacy
from fedwarden.runtime.base import Runtime
from fedwarden.server.clustered import ClusteredResult
from fedwarden.server.rundir import RunDirectory

if TYPE_CHECKING:
    from fedwarden.governance.audit import ServerAuditTrail
    from fedwarden.governance.store import RunStore

logger = logging.getLogger(__name__)


def governance_report(
    store: RunStore, audit: ServerAuditTrail, run_dir: RunDirectory, deployment: Deployment
) -> dict[str, str | None]:
    """Write the HTML audit report and a last anchor into the run directory; where all is."""
    from fedwarden.governance.audit import audit_report, render_html

    report = run_dir.audit_report_path
    report.write_text(render_html(audit_report(store, audit.log.public_key)))
    anchors = anchoring(store, run_dir, audit, deployment)
    for writer in anchors:
        writer.anchor()
    return {
        "audit_anchor": str(anchors[0].path) if anchors else None,
        "store": store.url,
        "audit_public_key": (
            None if deployment.audit_public_key is None else str(deployment.audit_public_key)
        ),
        "audit_report": str(report),
    }


def choose_pilot_clients(config: RunConfig, dataset: FederatedDataset) -> list[str]:
    """The clients that will pilot the run's final model, drawn before anyone trains."""
    from fedwarden.build.rollout import draw_pilot

    count = config.rollout.pilot_clients
    policy = ReleasePolicy.of(config)
    if count and not policy.federated_evaluation:
        logger.warning(policy.why_no_federated_evaluation("the pilot evaluation"))
        return []
    return draw_pilot(dataset.client_ids, count, config.seed) if count else []


def _privacy_claim(result: RunResult) -> dict[str, Any]:
    """What the registry claims the run spent: its reported epsilon, which an auditor recomputes.

    ``epsilon_spent`` is the run's guarantee (the largest client's under per-client budgets);
    ``fedwarden audit recompute`` rebuilds it from the DP events in the signed audit log.
    """
    privacy = result.extras.get("privacy", {})
    return {"epsilon_spent": privacy.get("epsilon")}


def register_model(
    config: RunConfig,
    store: RunStore,
    audit: ServerAuditTrail,
    run_dir: RunDirectory,
    result: RunResult,
    data_description: str,
    runtime: Runtime,
    pilot_clients: list[str],
) -> dict[str, Any]:
    """Register the final model as the next candidate (audited) and pilot it on ``pilot_clients``.

    Returns the summary's entries: ``registered_model`` (its reference) and ``pilot``.
    """
    import hashlib

    from fedwarden.build.rollout import run_pilot
    from fedwarden.governance.registry import ModelRegistry

    metrics = {
        name: value
        for name, value in (
            ("accuracy", result.accuracy),
            ("loss", result.loss),
            ("client_accuracy", result.client_accuracy),
        )
        if value is not None
    }
    registry = ModelRegistry(store, audit.log)
    version = registry.register(
        run_dir.path.name,
        None,
        run_dir.model_path,
        run_dir.param_spec_path.read_text(),
        rounds=result.rounds,
        participants=sum(record.participants for record in result.history),
        dp=None if audit.dp is None else {**audit.dp, **_privacy_claim(result)},
        metrics=metrics,
        config_hash=hashlib.sha256(run_dir.read_config().encode()).hexdigest(),
        data_description=data_description,
    )
    logger.info("registered the final model as %s", version.reference)
    governed: dict[str, Any] = {"registered_model": version.reference}
    if pilot_clients:
        vector = registry.weights(version.reference)
        pilot = run_pilot(
            runtime, registry, version, vector, pilot_clients, config.rounds, "fedwarden server"
        )
        if pilot is not None:
            governed["pilot"] = pilot.to_json()
    return governed


def run_extras(
    config: RunConfig,
    dataset: FederatedDataset,
    result: RunResult,
    runtime_name: str,
    pipeline: Pipeline,
    reputation: Reputation | None,
    privacy: UserLevelPrivacy | ClientBudgets | None,
    clustered: ClusteredResult | None,
) -> dict[str, Any]:
    """The run summary's entries beside the result's: runtime, pipeline, attack, privacy, data."""
    extras = {
        **result.extras,
        "runtime": runtime_name,
        "num_clients": len(dataset.clients),
        "pipeline": pipeline.describe(),
    }
    aggregator_report = pipeline.aggregator.report()
    if pipeline.aggregator.hides_individual_updates:
        extras["secure_aggregation"] = aggregator_report
    if "robust_rule" in aggregator_report:
        extras["robust_aggregation"] = aggregator_report
    if reputation is not None:
        extras["quarantined_clients"] = sorted(reputation.quarantined())
    attack = attack_summary(config, dataset, pipeline)
    if attack is not None:
        extras["attack"] = attack
    if clustered is not None:
        extras["clustering"] = clustered.to_json()
    if config.privacy.mechanism != "none":
        extras["privacy"] = {**extras.get("privacy", {}), **sampling_secrecy(config)}
    policy = ReleasePolicy.of(config)
    if policy.protected:
        extras.setdefault("privacy", {})["releases"] = release_inventory(
            config,
            None if privacy is None else privacy.ledger,
            config.rollout.pilot_clients,
        )
    if dataset.num_classes is not None:
        heterogeneity = label_heterogeneity(dataset)
        extras["label_chi2"] = heterogeneity.chi2
        extras["label_chi2_p_value"] = heterogeneity.p_value
    return extras
