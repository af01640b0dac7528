"""What watches a run round by round: alert rules, tracking, the store's round rows, anchors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedwarden.build.deployment import (
    Deployment,
)
from fedwarden.core.config import RunConfig
from fedwarden.monitor.alerts import (
    Alert,
    AlertRules,
    AlertThresholds,
    FederationMetrics,
    Monitoring,
    webhook,
)
from fedwarden.monitor.tracking import start_tracking
from fedwarden.server.rundir import RunDirectory

if TYPE_CHECKING:
    from fedwarden.governance.anchor import AnchorEveryRound
    from fedwarden.governance.audit import ServerAuditTrail
    from fedwarden.governance.listener import StoreListener
    from fedwarden.governance.store import RoundRows, RunStore

logger = logging.getLogger(__name__)


def build_monitoring(
    config: RunConfig,
    audit: ServerAuditTrail | None,
    metrics: FederationMetrics | None,
    run_id: str | None = None,
) -> Monitoring:
    """The alert rules of ``config.monitoring`` and the run's MLflow tracking, if on.

    Alerts go to the log, the audit trail and the webhook; the MLflow run is named after
    ``run_id`` (the run directory's name; ``config.name`` for a run without one).
    """
    section = config.monitoring
    sinks: list[Callable[[Alert], None]] = []
    if audit is not None:
        sinks.append(audit.alert_raised)
    if section.webhook_url is not None:
        sinks.append(webhook(section.webhook_url))
    rules = AlertRules(
        AlertThresholds(
            loss_patience=section.loss_patience,
            max_dropout_fraction=section.max_dropout_fraction,
            silent_rounds=section.silent_rounds,
            budget_warning_fraction=section.budget_warning_fraction,
            accuracy_floor=section.accuracy_floor,
        ),
        budget_epsilon=config.privacy.epsilon if config.privacy.mechanism != "none" else None,
        sinks=sinks,
    )
    tracking = start_tracking(config, config.name if run_id is None else run_id)
    return Monitoring(rules, metrics or FederationMetrics(), tracking)


def anchoring(
    store: RunStore | None,
    run_dir: RunDirectory | None,
    audit: ServerAuditTrail | None,
    deployment: Deployment | None,
) -> list[AnchorEveryRound]:
    """The writer of the audit log's root-signed anchor into the run directory, every round."""
    from fedwarden.governance.anchor import AnchorEveryRound

    if store is None or run_dir is None or audit is None or deployment is None:
        return []
    if deployment.audit_key is None:
        return []
    return [AnchorEveryRound(store, deployment.audit_key, run_dir.anchor_path)]


def round_rows(store: RunStore | None, run_dir: RunDirectory | None) -> list[RoundRows]:
    """The run store's recorder of completed rounds, when the run has a store."""
    from fedwarden.governance.store import RoundRows

    if store is None or run_dir is None:
        return []
    return [RoundRows(store, run_dir.path.name)]


def store_listeners(store: RunStore | None, run_dir: RunDirectory | None) -> list[StoreListener]:
    """The run store's recorder of cohorts and refused updates, when the run has a store."""
    from fedwarden.governance.listener import StoreListener

    if store is None or run_dir is None:
        return []
    return [StoreListener(store, run_dir.path.name)]
