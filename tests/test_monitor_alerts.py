"""Alert rules over round records, their sinks, and the Prometheus /metrics endpoint."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from fedwarden.monitor.alerts import (
    Alert,
    AlertRules,
    AlertThresholds,
    FederationMetrics,
    Monitoring,
)
from fedwarden.runtime.grpc.health import serve_health
from fedwarden.server.records import RoundRecord

BASE = RoundRecord(
    round_index=0,
    sampled=10,
    participants=10,
    dropped=0,
    failed=0,
    rejected=0,
    rejection_reasons={},
    applied=True,
    loss=1.0,
    accuracy=0.5,
    train_loss=None,
    round_seconds=1.0,
    bytes_up=100,
    bytes_down=200,
)


def rounds(**changes_per_round: list[object]) -> list[RoundRecord]:
    count = len(next(iter(changes_per_round.values())))
    return [
        replace(
            BASE,
            round_index=index,
            **{name: values[index] for name, values in changes_per_round.items()},
        )
        for index in range(count)
    ]


def fired(rules: AlertRules, records: list[RoundRecord], silent: list[list[str]] | None = None):
    raised = []
    for index, record in enumerate(records):
        for alert in rules.round_completed(record, [] if silent is None else silent[index]):
            raised.append((alert.rule, alert.round_index, alert.client_id))
    return raised


def test_a_loss_that_has_not_improved_for_five_rounds_raises_one_alert() -> None:
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.94, 0.96]
    assert fired(AlertRules(AlertThresholds()), rounds(loss=losses)) == [("loss_stalled", 6, None)]
    improving = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert fired(AlertRules(AlertThresholds()), rounds(loss=improving)) == []


def test_more_than_a_fifth_of_the_cohort_dropping_raises_an_alert() -> None:
    records = rounds(dropped=[2, 3, 0], failed=[0, 0, 3], participants=[8, 7, 7])
    assert fired(AlertRules(AlertThresholds()), records) == [
        ("dropouts", 1, None),
        ("dropouts", 2, None),
    ]


def test_a_client_silent_three_rounds_in_a_row_raises_an_alert_once() -> None:
    silent = [["c1", "c2"], ["c1"], ["c1", "c2"], ["c1"], ["c2"]]
    records = rounds(participants=[8, 9, 8, 9, 9])
    assert fired(AlertRules(AlertThresholds()), records, silent) == [("client_silent", 2, "c1")]


def test_eighty_percent_of_the_budget_spent_raises_one_alert() -> None:
    rules = AlertRules(AlertThresholds(), budget_epsilon=10.0)
    records = rounds(epsilon=[2.0, 7.9, 8.0, 9.5])
    assert fired(rules, records) == [("privacy_budget", 2, None)]


def test_accuracy_below_the_floor_raises_an_alert_only_when_a_floor_is_set() -> None:
    records = rounds(accuracy=[0.9, 0.6, 0.8])
    assert fired(AlertRules(AlertThresholds()), records) == []
    floored = AlertRules(AlertThresholds(accuracy_floor=0.7))
    assert fired(floored, records) == [("accuracy_floor", 1, None)]


def test_every_sink_receives_every_alert() -> None:
    received: list[Alert] = []
    rules = AlertRules(AlertThresholds(), sinks=[received.append, received.append])
    rules.round_completed(replace(BASE, dropped=5, participants=5), [])
    assert [alert.rule for alert in received] == ["dropouts", "dropouts"]


def test_metrics_endpoint_serves_the_rounds_in_prometheus_text() -> None:
    metrics = FederationMetrics()
    monitoring = Monitoring(AlertRules(AlertThresholds()), metrics)
    monitoring.round_completed(replace(BASE, rejection_reasons={"forged": 2}, rejected=2), [])
    monitoring.round_completed(replace(BASE, round_index=1, dropped=4, participants=6), [])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_health(f"127.0.0.1:{port}", lambda: True, metrics.exposition)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        server.shutdown()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("fedwarden_rounds_total", ())] == 2
    assert samples[("fedwarden_updates_accepted_total", ())] == 16
    assert samples[("fedwarden_updates_rejected_total", (("reason", "forged"),))] == 2
    assert samples[("fedwarden_alerts_total", (("rule", "dropouts"),))] == 1
    assert samples[("fedwarden_central_accuracy", ())] == 0.5
