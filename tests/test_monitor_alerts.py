"""Alert rules over round records, their sinks (log, audit log, webhook), and /metrics."""

from __future__ import annotations

import json
import logging
import multiprocessing
import socket
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from fedwarden.core.alerts import Alert, AlertError, check_webhook_url
from fedwarden.core.errors import FedwardenError
from fedwarden.core.records import RoundRecord
from fedwarden.governance.audit import (
    AlertRaised,
    AuditEvent,
    AuditLog,
    ServerAuditTrail,
    read_entries,
    verify,
)
from fedwarden.governance.store import RunStore
from fedwarden.monitor.alerts import (
    AlertRules,
    AlertThresholds,
    FederationMetrics,
    Monitoring,
    deliver,
    webhook,
)
from fedwarden.runtime.grpc.health import serve_health

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


def rounds(**changes_per_round: Sequence[Any]) -> list[RoundRecord]:
    count = len(next(iter(changes_per_round.values())))
    return [
        replace(
            BASE,
            round_index=index,
            **{name: values[index] for name, values in changes_per_round.items()},
        )
        for index in range(count)
    ]


def fired(
    rules: AlertRules, records: list[RoundRecord], silent: list[list[str]] | None = None
) -> list[tuple[str, int | None, str | None]]:
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


DRIFT = Alert(
    "drift_psi",
    "feature 3: PSI 0.412 over the last 300 inputs exceeds 0.2",
    model_version="digits@1.0.0",
    feature=3,
    statistic=0.412,
    threshold=0.2,
)


def test_a_failing_sink_is_logged_and_the_other_sinks_still_get_the_alert(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise OSError("audit store unreachable")

    with caplog.at_level(logging.WARNING, logger="fedwarden.monitor.alerts"):
        deliver(DRIFT, [broken, received.append])
    assert received == [DRIFT]
    assert "alert drift_psi (model digits@1.0.0, feature 3)" in caplog.text
    assert "an alert sink failed to take drift_psi" in caplog.text


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local webhook receiver: its URL, and the JSON bodies POSTed to it."""
    bodies: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_receives_training_and_drift_alerts_with_their_context(
    hook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, bodies = hook
    rules = AlertRules(AlertThresholds(), sinks=[webhook(url)])
    rules.round_completed(replace(BASE, round_index=7, dropped=5, participants=5), [])
    deliver(DRIFT, [webhook(url)])
    training, drift = bodies
    assert training["rule"] == "dropouts" and training["round_index"] == 7
    assert training["feature"] is None and training["model_version"] is None
    assert drift == {
        "rule": "drift_psi",
        "message": DRIFT.message,
        "round_index": None,
        "client_id": None,
        "model_version": "digits@1.0.0",
        "feature": 3,
        "statistic": 0.412,
        "threshold": 0.2,
    }


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/secret-token",
        "ftp://hooks.example/secret-token",
        "secret-token:hooks.example/T0",
        "hooks.example/secret-token",
        "https:///secret-token",
        "http://[secret-token/x",
    ],
)
def test_a_webhook_that_is_not_an_http_url_with_a_host_is_refused_without_quoting_it(
    url: str,
) -> None:
    with pytest.raises(AlertError, match=r"http\(s\)://HOST/PATH") as refused:
        webhook(url)
    assert isinstance(refused.value, FedwardenError) and isinstance(refused.value, ValueError)
    assert "secret-token" not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["https://hooks.example/T0/secret", "HTTP://127.0.0.1:8080/hook", "http://[::1]/x"]
)
def test_an_http_url_with_a_host_is_a_valid_webhook(url: str) -> None:
    assert check_webhook_url(url) == url


def test_an_unreachable_webhook_does_not_raise_or_log_its_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/T0/secret-token"
    with caplog.at_level(logging.WARNING):
        webhook(url)(DRIFT)
    assert "the alert webhook failed to take drift_psi" in caplog.text
    assert "secret-token" not in caplog.text


SIGNING_KEY = Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class AlertRaisedBeforeDrift(AuditEvent):
    """The alert_raised event as it was written before drift alerts were audited."""

    kind: ClassVar[str] = "alert_raised"
    run_id: str
    round_index: int
    rule: str
    message: str
    client_id: str | None


def test_alert_entries_written_before_drift_alerts_still_verify_and_read_back(
    tmp_path: Path,
) -> None:
    with RunStore.sqlite(tmp_path / "store.db") as store:
        log = AuditLog(store, SIGNING_KEY)
        log.append(AlertRaisedBeforeDrift("run-1", 2, "client_silent", "carol is silent", "carol"))
        trail = ServerAuditTrail(log, "run-1")
        trail.alert_raised(Alert("dropouts", "3 of 10 dropped", round_index=4))
        log.append(AlertRaised.of(DRIFT, "run-1"))
        assert verify(store, SIGNING_KEY.public_key()).ok
        old, training, drift = (entry.event() for entry in read_entries(store))
    assert old == AlertRaised("run-1", 2, "client_silent", "carol is silent", "carol")
    assert training == AlertRaised("run-1", 4, "dropouts", "3 of 10 dropped", None)
    assert drift == AlertRaised(
        "run-1", None, "drift_psi", DRIFT.message, None, "digits@1.0.0", 3, 0.412, 0.2
    )


class _Collisions(logging.Handler):
    """Counts the audit log's retried appends."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "collided" in record.getMessage()


def _append_alerts(
    store_path: str,
    key_pem: bytes,
    writer: str,
    count: int,
    ready: Any,
    results: Any,
) -> None:
    """A process appending ``count`` alerts through the run's trail, as a server or a service."""
    collisions = _Collisions()
    audit_logger = logging.getLogger("fedwarden.governance.audit")
    audit_logger.addHandler(collisions)
    audit_logger.setLevel(logging.DEBUG)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    with RunStore.sqlite(Path(store_path)) as store:
        log = AuditLog(store, key)
        sink = ServerAuditTrail(log, "run-1").alert_raised
        ready.wait()
        for index in range(count):
            sink(replace(DRIFT, message=f"{writer} {index}"))
    results.put((writer, collisions.count))


@pytest.mark.slow
def test_a_server_and_a_prediction_service_append_to_one_audit_log_without_loss(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "store.db"
    RunStore.sqlite(store_path).close()
    key_pem = SIGNING_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    count, names = 30, ("server", "serving")
    context = multiprocessing.get_context("spawn")
    # Both start appending only once both are ready, so that their appends interleave.
    ready, results = context.Barrier(len(names)), context.Queue()
    writers = [
        context.Process(
            target=_append_alerts, args=(str(store_path), key_pem, name, count, ready, results)
        )
        for name in names
    ]
    for process in writers:
        process.start()
    collisions = dict(results.get(timeout=300) for _ in writers)
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sum(collisions.values()) > 0, "the two writers never raced; the test proved nothing"
    with RunStore.sqlite(store_path) as store:
        assert verify(store, SIGNING_KEY.public_key()).ok
        messages = [json.loads(entry.payload)["message"] for entry in read_entries(store)]
    for writer in names:
        assert [text for text in messages if text.startswith(writer + " ")] == [
            f"{writer} {index}" for index in range(count)
        ]
