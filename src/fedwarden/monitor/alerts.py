"""Alerts of training and serving, their sinks, and the Prometheus metrics of a federation.

One :class:`~fedwarden.core.alerts.Alert` serves both: the training rules below, and the input
drift rules of a served model (:mod:`fedwarden.serve.drift`). :func:`deliver` hands each alert
to the log and then to every sink: the audit log, a webhook (a JSON POST) and the Prometheus
counters, as configured. A sink that fails is logged and the others still get the alert.
A webhook must be an ``http(s)://`` URL (:func:`~fedwarden.core.alerts.check_webhook_url`).

:class:`AlertRules` looks at each completed round and raises an alert
when one of these holds (each threshold configurable in ``[monitoring]``):

- ``loss_stalled``: the central loss has not improved for ``loss_patience``
  rounds (default 5);
- ``dropouts``: more than ``max_dropout_fraction`` (20%) of the sampled
  clients dropped out or failed in the round;
- ``client_silent``: a client was sampled ``silent_rounds`` (3) rounds in a
  row without delivering;
- ``privacy_budget``: at least ``budget_warning_fraction`` (80%) of the
  privacy budget is spent (raised once);
- ``accuracy_floor``: central accuracy fell below ``accuracy_floor`` (off
  unless set).

:class:`FederationMetrics` keeps the Prometheus series the server's ``/metrics`` endpoint
serves; :class:`Monitoring` is the server's round monitor, and hands each round to the
optional MLflow tracking (:mod:`fedwarden.monitor.tracking`) too.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fedwarden.core.alerts import Alert, check_webhook_url
from fedwarden.core.records import RoundRecord

if TYPE_CHECKING:
    from fedwarden.monitor.tracking import MlflowTracking

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0

AlertSink = Callable[[Alert], None]
"""Something that receives each alert: the audit trail, a webhook, a counter, a list in a test."""


def deliver(alert: Alert, sinks: Sequence[AlertSink]) -> None:
    """Log ``alert`` and hand it to every sink; a sink that raises is logged and skipped."""
    logger.warning("%s", alert.describe())
    for sink in sinks:
        try:
            sink(alert)
        except Exception:  # one broken sink (audit store, webhook) must not silence the others
            logger.exception("an alert sink failed to take %s", alert.rule)


@dataclass(frozen=True)
class AlertThresholds:
    """The rules' settings (the ``[monitoring]`` section of a run config)."""

    loss_patience: int = 5
    max_dropout_fraction: float = 0.2
    silent_rounds: int = 3
    budget_warning_fraction: float = 0.8
    accuracy_floor: float | None = None


@dataclass
class AlertRules:
    """Evaluates the rules after each round and hands every alert to the sinks."""

    thresholds: AlertThresholds
    budget_epsilon: float | None = None
    sinks: Sequence[AlertSink] = ()
    _best_loss: float | None = None
    _since_best: int = 0
    _silent: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    _budget_warned: bool = False

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> list[Alert]:
        """The alerts ``record`` raises (already delivered to the sinks)."""
        alerts = [*self._loss(record), *self._dropouts(record), *self._privacy(record)]
        alerts += self._accuracy(record)
        alerts += self._silence(record, silent_clients)
        for alert in alerts:
            deliver(alert, self.sinks)
        return alerts

    def _loss(self, record: RoundRecord) -> list[Alert]:
        if record.loss is None:
            return []
        if self._best_loss is None or record.loss < self._best_loss:
            self._best_loss, self._since_best = record.loss, 0
            return []
        self._since_best += 1
        if self._since_best != self.thresholds.loss_patience:
            return []
        return [
            Alert(
                "loss_stalled",
                f"the central loss has not improved for {self._since_best} rounds "
                f"(best {self._best_loss:.4f}, now {record.loss:.4f})",
                round_index=record.round_index,
            )
        ]

    def _dropouts(self, record: RoundRecord) -> list[Alert]:
        lost = record.dropped + record.failed
        if not record.sampled or lost / record.sampled <= self.thresholds.max_dropout_fraction:
            return []
        return [
            Alert(
                "dropouts",
                f"{lost} of {record.sampled} sampled clients dropped out or failed "
                f"(more than {self.thresholds.max_dropout_fraction:.0%})",
                round_index=record.round_index,
            )
        ]

    def _privacy(self, record: RoundRecord) -> list[Alert]:
        budget = self.budget_epsilon
        if budget is None or record.epsilon is None or self._budget_warned:
            return []
        if record.epsilon < self.thresholds.budget_warning_fraction * budget:
            return []
        self._budget_warned = True
        return [
            Alert(
                "privacy_budget",
                f"epsilon {record.epsilon:.3f} spent of a budget of {budget:g} "
                f"({record.epsilon / budget:.0%})",
                round_index=record.round_index,
            )
        ]

    def _accuracy(self, record: RoundRecord) -> list[Alert]:
        floor = self.thresholds.accuracy_floor
        if floor is None or record.accuracy is None or record.accuracy >= floor:
            return []
        return [
            Alert(
                "accuracy_floor",
                f"central accuracy {record.accuracy:.4f} is below the floor {floor:g}",
                round_index=record.round_index,
            )
        ]

    def _silence(self, record: RoundRecord, silent_clients: Sequence[str]) -> list[Alert]:
        silent = set(silent_clients)
        for client in list(self._silent):
            if client not in silent:
                del self._silent[client]
        alerts = []
        for client in sorted(silent):
            self._silent[client] += 1
            if self._silent[client] == self.thresholds.silent_rounds:
                alerts.append(
                    Alert(
                        "client_silent",
                        f"{client} was sampled {self._silent[client]} rounds in a row and did "
                        "not deliver",
                        round_index=record.round_index,
                        client_id=client,
                    )
                )
        return alerts


def webhook(url: str) -> AlertSink:
    """A sink that POSTs each alert as JSON to ``url`` (failures are logged, never raised).

    ``url`` is checked first (:func:`~fedwarden.core.alerts.check_webhook_url`). The body is
    the alert's fields (:class:`~fedwarden.core.alerts.Alert`), None fields as null. The URL
    itself is never logged: chat webhooks carry their secret in it.
    """
    check_webhook_url(url)

    def post(alert: Alert) -> None:
        request = urllib.request.Request(
            url,
            data=json.dumps(asdict(alert), allow_nan=False).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S):
                return
        except OSError as error:
            logger.warning("the alert webhook failed to take %s: %s", alert.rule, error)

    return post


class FederationMetrics:
    """Prometheus series of a server: rounds, participation, rejections, privacy, alerts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter("fedwarden_rounds", "Rounds completed", registry=self.registry)
        self.updates = Counter(
            "fedwarden_updates_accepted", "Client updates aggregated", registry=self.registry
        )
        self.dropped = Counter(
            "fedwarden_clients_dropped",
            "Sampled clients that dropped or failed",
            registry=self.registry,
        )
        self.rejections = Counter(
            "fedwarden_updates_rejected",
            "Client updates refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "fedwarden_alerts", "Alerts raised, by rule", ["rule"], registry=self.registry
        )
        self.accuracy = Gauge(
            "fedwarden_central_accuracy", "Central test accuracy", registry=self.registry
        )
        self.loss = Gauge("fedwarden_central_loss", "Central test loss", registry=self.registry)
        self.epsilon = Gauge(
            "fedwarden_epsilon_spent", "Privacy budget spent so far", registry=self.registry
        )
        self.bytes = Counter(
            "fedwarden_bytes", "Bytes moved, by direction", ["direction"], registry=self.registry
        )

    def round_completed(self, record: RoundRecord, alerts: Sequence[Alert]) -> None:
        """Add one round's figures."""
        self.rounds.inc()
        self.updates.inc(record.participants)
        self.dropped.inc(record.dropped + record.failed)
        for reason, count in record.rejection_reasons.items():
            self.rejections.labels(reason).inc(count)
        for alert in alerts:
            self.alerts.labels(alert.rule).inc()
        for gauge, value in (
            (self.accuracy, record.accuracy),
            (self.loss, record.loss),
            (self.epsilon, record.epsilon),
        ):
            if value is not None:
                gauge.set(value)
        self.bytes.labels("up").inc(record.bytes_up)
        self.bytes.labels("down").inc(record.bytes_down)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)


@dataclass
class Monitoring:
    """The server's round monitor: alert rules, then the metrics, then MLflow tracking if on."""

    rules: AlertRules
    metrics: FederationMetrics
    tracking: MlflowTracking | None = None

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        """Evaluate the rules on a finished round, update the metrics, track the round."""
        alerts = self.rules.round_completed(record, silent_clients)
        self.metrics.round_completed(record, alerts)
        if self.tracking is not None:
            self.tracking.round_completed(record)

    def run_finished(self, model_dir: Path | None, registered_version: str | None) -> None:
        """Track the run's final model (``model_dir``'s model.npz) and close its MLflow run."""
        if self.tracking is not None:
            self.tracking.run_finished(model_dir, registered_version)

    def run_failed(self) -> None:
        """Mark the run's MLflow run failed, as the federated run raised; never raises."""
        if self.tracking is not None:
            self.tracking.run_failed()
