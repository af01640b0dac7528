"""Alert rules over a run's rounds, and the Prometheus metrics of a serving federation.

:class:`AlertRules` looks at each completed round and raises an :class:`Alert`
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

Each alert goes to every sink: the log (always), the audit trail and a
webhook (a JSON POST) when configured. :class:`FederationMetrics` keeps the
Prometheus series the server's ``/metrics`` endpoint serves.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fedwarden.server.records import RoundRecord

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Alert:
    """One rule that fired: which, for which round (and client), and why."""

    rule: str
    round_index: int
    message: str
    client_id: str | None = None


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
    sinks: Sequence[Callable[[Alert], None]] = ()
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
            logger.warning("alert %s (round %d): %s", alert.rule, alert.round_index, alert.message)
            for sink in self.sinks:
                sink(alert)
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
                record.round_index,
                f"the central loss has not improved for {self._since_best} rounds "
                f"(best {self._best_loss:.4f}, now {record.loss:.4f})",
            )
        ]

    def _dropouts(self, record: RoundRecord) -> list[Alert]:
        lost = record.dropped + record.failed
        if not record.sampled or lost / record.sampled <= self.thresholds.max_dropout_fraction:
            return []
        return [
            Alert(
                "dropouts",
                record.round_index,
                f"{lost} of {record.sampled} sampled clients dropped out or failed "
                f"(more than {self.thresholds.max_dropout_fraction:.0%})",
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
                record.round_index,
                f"epsilon {record.epsilon:.3f} spent of a budget of {budget:g} "
                f"({record.epsilon / budget:.0%})",
            )
        ]

    def _accuracy(self, record: RoundRecord) -> list[Alert]:
        floor = self.thresholds.accuracy_floor
        if floor is None or record.accuracy is None or record.accuracy >= floor:
            return []
        return [
            Alert(
                "accuracy_floor",
                record.round_index,
                f"central accuracy {record.accuracy:.4f} is below the floor {floor:g}",
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
                        record.round_index,
                        f"{client} was sampled {self._silent[client]} rounds in a row and did "
                        "not deliver",
                        client_id=client,
                    )
                )
        return alerts


def webhook(url: str) -> Callable[[Alert], None]:
    """A sink that POSTs each alert as JSON to ``url`` (failures are logged, never raised)."""

    def post(alert: Alert) -> None:
        request = urllib.request.Request(
            url,
            data=json.dumps(asdict(alert)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S):
                return
        except OSError as error:
            logger.warning("alert webhook %s failed: %s", url, error)

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
    """The server's round monitor: alert rules, then the metrics (alerts included)."""

    rules: AlertRules
    metrics: FederationMetrics

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        """Evaluate the rules on a finished round and update the metrics."""
        alerts = self.rules.round_completed(record, silent_clients)
        self.metrics.round_completed(record, alerts)
