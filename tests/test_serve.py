"""The prediction service: predictions, input validation, shadow deployment, drift, metrics.

The model comes from a real deployment: a small gRPC run on digits writes its run store,
signed audit log and final model, and the model is registered from the run's ``model.npz``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
import numpy.typing as npt
import pytest
import schemathesis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.core.result import Ok

from fedwarden.core.alerts import Alert, AlertError
from fedwarden.core.config import RunConfig
from fedwarden.core.params import ParamSpec
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.sources import load_dataset
from fedwarden.governance.audit import (
    AlertRaised,
    AuditError,
    AuditLog,
    RoundStarted,
    SignerRevoked,
    delegate_signer,
    load_public_key,
    load_signing_key,
    read_entries,
    verify,
)
from fedwarden.governance.registry import ModelRegistry, ModelVersion, weights_vector
from fedwarden.governance.store import RunStore
from fedwarden.models.numpy import softmax_regression
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.serve.app import create_app, serve_model
from fedwarden.serve.drift import (
    DriftMonitor,
    DriftReference,
    reference_from_arrays,
    reference_from_federation,
)
from fedwarden.serve.model import ServeError, load_served_model

MONITORED = (19, 20, 27, 28, 36, 43)
"""Digit pixels that vary across images (the borders are almost always 0)."""


@dataclass(frozen=True)
class Deployment:
    """A finished gRPC run, its store (URL), registry and audit key, and its data set."""

    run_dir: Path
    store_url: str
    audit_key: Path
    store: RunStore
    registry: ModelRegistry
    dataset: FederatedDataset
    production: ModelVersion
    candidate: ModelVersion


def _softmax(scores: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return result


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A 3-round gRPC run on digits; its model in production, a perturbed copy as candidate."""
    from fedwarden.build.deployment import local_federation
    from fedwarden.build.run import run

    runs_dir = tmp_path_factory.mktemp("serve-runs")
    config = RunConfig.from_mapping(
        {
            "name": "digits",
            "runtime": {"kind": "grpc", "heartbeat_s": 1},
            "data": {"source": "digits", "num_clients": 3},
            "model": {"kind": "softmax"},
            "rounds": 3,
            "runs_dir": str(runs_dir),
        }
    )
    result = run(config)
    assert result.run_dir is not None
    run_dir = Path(result.run_dir)
    store_path = runs_dir / "fedwarden.db"
    store = RunStore.sqlite(store_path)
    key_path = local_federation(runs_dir) / "servers" / "server" / "audit.key"
    key = load_signing_key(key_path)
    registry = ModelRegistry(store, AuditLog(store, key))
    run_row = store.run(run_dir.name)
    assert run_row is not None
    spec_json = (run_dir / "param_spec.json").read_text()
    vector = weights_vector(run_dir / "model.npz", ParamSpec.from_json(spec_json))
    rng = np.random.default_rng(0)
    perturbed = vector + rng.normal(0.0, 0.5, vector.shape).astype(np.float32)
    versions = [
        registry.register(
            run_row.run_id,
            None,
            weights.astype("<f4").tobytes(),
            spec_json,
            rounds=3,
            participants=3,
            dp=None,
            metrics={},
            config_hash=run_row.config_hash,
            data_description="digits, 3 clients",
        )
        for weights in (vector, perturbed)
    ]
    production = registry.promote(versions[0].reference, by="test")
    yield Deployment(
        run_dir,
        f"sqlite:///{store_path}",
        key_path,
        store,
        registry,
        load_dataset(config.data, config.seed),
        production,
        versions[1],
    )
    store.close()


@pytest.fixture
def client(deployment: Deployment) -> TestClient:
    """The service for the production version, no shadow, no drift monitor."""
    return TestClient(create_app(deployment.registry, "digits@production"))


def test_predictions_equal_the_models_own_predictions(
    deployment: Deployment, client: TestClient
) -> None:
    x = np.asarray(deployment.dataset.x_test[:50], dtype=np.float32)
    response = client.post("/predict", json={"instances": x.tolist()})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == deployment.production.reference
    trainer = softmax_regression(64, 10)
    scores = trainer.predict(deployment.registry.weights(deployment.production.reference), x)
    labels = [prediction["label"] for prediction in body["predictions"]]
    probabilities = np.array([prediction["probabilities"] for prediction in body["predictions"]])
    assert labels == scores.argmax(axis=1).tolist()
    np.testing.assert_allclose(probabilities, _softmax(scores.astype(np.float64)), atol=1e-6)


def test_an_mlp_run_is_served_with_its_modules_own_outputs(deployment: Deployment) -> None:
    import torch

    from fedwarden.models.torch import TorchTrainer, mlp

    config = RunConfig.from_mapping({"name": "digits-mlp", "model": {"kind": "mlp", "hidden": [8]}})
    config_json = config.model_dump_json()
    deployment.store.create_run("digits-mlp-run", "digits-mlp", config_json, "/runs/mlp")
    trainer = TorchTrainer(partial(mlp, 64, 10, (8,)))
    vector = trainer.initial_vector(seed=5)
    run_row = deployment.store.run("digits-mlp-run")
    assert run_row is not None
    version = deployment.registry.register(
        "digits-mlp-run",
        None,
        vector.astype("<f4").tobytes(),
        trainer.spec.to_json(),
        rounds=0,
        participants=0,
        dp=None,
        metrics={},
        config_hash=run_row.config_hash,
        data_description="digits",
    )
    x = np.asarray(deployment.dataset.x_test[:20], dtype=np.float32)
    with torch.inference_mode():
        expected = trainer.load(vector)(torch.from_numpy(x)).numpy()
    served = TestClient(create_app(deployment.registry, version.reference))
    body = served.post("/predict", json={"instances": x.tolist()}).json()
    probabilities = np.array([prediction["probabilities"] for prediction in body["predictions"]])
    np.testing.assert_allclose(probabilities, _softmax(expected.astype(np.float64)), atol=1e-6)


def test_the_served_input_schema_declares_features_and_range(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    instance = schema["properties"]["instances"]["items"]
    assert (instance["minItems"], instance["maxItems"]) == (64, 64)
    assert (instance["items"]["minimum"], instance["items"]["maximum"]) == (0.0, 1.0)
    assert client.get("/health").json()["input"] == {
        "num_features": 64,
        "num_classes": 10,
        "lower": 0.0,
        "upper": 1.0,
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('{"instances": [[0.5, 0.5]]}', "instances.0"),
        ('{"instances": [[' + ", ".join(["NaN"] * 64) + "]]}", "instances.0.0"),
        ('{"instances": [[' + ", ".join(["2.0"] * 64) + "]]}", "less than or equal to 1"),
        ('{"instances": [[' + ", ".join(['"a"'] * 64) + "]]}", "instances.0.0"),
        ('{"instances": []}', "at least 1 item"),
        ('{"rows": [[0.5]]}', "instances"),
        ("not json", "JSON"),
    ],
)
def test_a_bad_request_gets_422_naming_the_problem(
    client: TestClient, body: str, named: str
) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    message = response.json()["message"]
    assert named in message
    assert "64 finite numbers in [0, 1]" in message


def test_serving_production_of_a_model_without_one_is_refused(deployment: Deployment) -> None:
    with pytest.raises(ServeError, match="no production version"):
        load_served_model(deployment.registry, "unknown@production")


def test_shadow_gets_its_share_of_requests_and_records_deltas(deployment: Deployment) -> None:
    served = TestClient(
        create_app(
            deployment.registry,
            "digits@production",
            shadow=deployment.candidate.reference,
            shadow_share=0.5,
            shadow_seed=11,
        )
    )
    x = np.asarray(deployment.dataset.x_test[:10], dtype=np.float32)
    requests = 200
    for _ in range(requests):
        response = served.post("/predict", json={"instances": x.tolist()})
        assert response.json()["model"] == deployment.production.reference
    expected_shadowed = int((np.random.default_rng(11).random(requests) < 0.5).sum())
    report = served.get("/shadow").json()
    assert report["requests"] == requests
    assert report["shadowed_requests"] == expected_shadowed
    assert abs(expected_shadowed - requests / 2) < 3 * math.sqrt(requests / 4)
    primary = _softmax(
        softmax_regression(64, 10)
        .predict(deployment.registry.weights(deployment.production.reference), x)
        .astype(np.float64)
    )
    candidate = _softmax(
        softmax_regression(64, 10)
        .predict(deployment.registry.weights(deployment.candidate.reference), x)
        .astype(np.float64)
    )
    disagreement = float((primary.argmax(axis=1) != candidate.argmax(axis=1)).mean())
    assert report["compared_instances"] == expected_shadowed * len(x)
    assert report["disagreement_rate"] == pytest.approx(disagreement)
    assert report["mean_abs_probability_delta"] == pytest.approx(
        float(np.abs(primary - candidate).mean()), rel=1e-4
    )
    latency = report["latency_seconds"]
    assert latency["primary"]["count"] == requests
    assert latency["shadow"]["count"] == expected_shadowed
    for role in ("primary", "shadow"):
        assert 0 < latency[role]["p50"] <= latency[role]["p95"]


def test_shadow_share_without_a_candidate_is_refused(deployment: Deployment) -> None:
    with pytest.raises(ServeError, match="needs a shadow candidate"):
        create_app(deployment.registry, "digits@production", shadow_share=0.5)


def _pooled_train(dataset: FederatedDataset) -> npt.NDArray[np.float32]:
    return np.concatenate([client.x_train for client in dataset.clients.values()])


def _serve_with_drift(deployment: Deployment) -> tuple[TestClient, DriftMonitor, list[Alert]]:
    reference = reference_from_arrays(
        _pooled_train(deployment.dataset), MONITORED, bins=8, lower=0.0, upper=1.0
    )
    monitor = DriftMonitor(reference, window=300, min_window=200, check_every=100)
    received: list[Alert] = []
    app = create_app(
        deployment.registry, "digits@production", drift=monitor, alert_sinks=[received.append]
    )
    return TestClient(app), monitor, received


def _feed(client: TestClient, x: npt.NDArray[Any]) -> None:
    for start in range(0, len(x), 25):
        assert client.post(
            "/predict", json={"instances": x[start : start + 25].tolist()}
        ).is_success


def test_inputs_like_the_training_data_raise_no_drift_alert(deployment: Deployment) -> None:
    served, monitor, received = _serve_with_drift(deployment)
    _feed(served, np.asarray(deployment.dataset.x_test, dtype=np.float64))
    assert monitor.statistics, "the monitor never checked the window"
    assert received == []
    assert max(drift.psi for drift in monitor.statistics) < 0.2


def test_shifted_inputs_raise_psi_and_ks_alerts_once(deployment: Deployment) -> None:
    served, _, received = _serve_with_drift(deployment)
    shifted = np.clip(np.asarray(deployment.dataset.x_test, dtype=np.float64) + 0.4, 0.0, 1.0)
    _feed(served, shifted)
    rules = {(alert.rule, alert.feature) for alert in received}
    assert {rule for rule, _ in rules} == {"drift_psi", "drift_ks"}
    assert len(rules) == len(received), "an alert was raised twice while its rule kept holding"
    for alert in received:
        assert alert.statistic is not None and alert.threshold is not None
        if alert.rule == "drift_psi":
            assert alert.statistic > alert.threshold == 0.2
        else:
            assert alert.statistic < alert.threshold == pytest.approx(0.01 / len(MONITORED))
        assert f"feature {alert.feature}" in alert.message
        assert alert.model_version == deployment.production.reference
        assert alert.round_index is None


def test_the_dp_reference_is_close_to_the_true_one_and_charges_the_ledger(
    deployment: Deployment,
) -> None:
    ledger = PrivacyLedger(PrivacyBudget(10.0, 1e-5), privacy_unit="example")
    private = reference_from_federation(
        deployment.dataset,
        MONITORED,
        bins=8,
        epsilon=3.0,
        ledger=ledger,
        lower=0.0,
        upper=1.0,
        noise=NoiseSource.for_testing(4),
    )
    exact = reference_from_arrays(
        _pooled_train(deployment.dataset), MONITORED, bins=8, lower=0.0, upper=1.0
    )
    for noisy, true in zip(private.features, exact.features, strict=True):
        assert noisy.edges == true.edges
        total_variation = 0.5 * np.abs(noisy.proportions() - true.proportions()).sum()
        assert total_variation < 0.02
        assert noisy.counts != true.counts, "no noise was added"
    assert [entry.kind for entry in ledger.entries] == ["analytics"] * len(MONITORED)
    assert 0.0 < ledger.spent().epsilon <= 3.0 + 1e-9
    assert private.epsilon == 3.0
    assert DriftReference.from_json(private.to_json()) == private


def test_metrics_are_prometheus_text_with_shadow_and_drift(deployment: Deployment) -> None:
    reference = reference_from_arrays(
        _pooled_train(deployment.dataset), MONITORED, bins=8, lower=0.0, upper=1.0
    )
    monitor = DriftMonitor(reference, window=100, min_window=50, check_every=50)
    served = TestClient(
        create_app(
            deployment.registry,
            "digits@production",
            shadow=deployment.candidate.reference,
            shadow_share=1.0,
            drift=monitor,
        )
    )
    _feed(served, np.asarray(deployment.dataset.x_test[:100], dtype=np.float64))
    served.post("/predict", json={"instances": [[0.5]]})
    response = served.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    requests = {
        (sample.labels["endpoint"], sample.labels["status"]): sample.value
        for sample in families["fedwarden_serve_requests"].samples
        if sample.name.endswith("_total")
    }
    assert requests[("/predict", "200")] == 4
    assert requests[("/predict", "422")] == 1
    assert families["fedwarden_serve_request_latency_seconds"].type == "histogram"
    assert families["fedwarden_serve_shadow_disagreement_rate"].samples[0].value >= 0.0
    quantiles = {
        (sample.labels["role"], sample.labels["quantile"])
        for sample in families["fedwarden_serve_model_latency_quantile_seconds"].samples
    }
    assert quantiles == {(role, q) for role in ("primary", "shadow") for q in ("0.50", "0.95")}
    psi = {sample.labels["feature"] for sample in families["fedwarden_serve_drift_psi"].samples}
    assert psi == {str(feature) for feature in MONITORED}


def test_schemathesis_finds_no_server_error(deployment: Deployment) -> None:
    app = create_app(
        deployment.registry,
        "digits@production",
        shadow=deployment.candidate.reference,
        shadow_share=0.5,
        shadow_seed=1,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the OpenAPI spec has operations schemathesis rejects"
    assert {operation.path for operation in operations} >= {"/predict", "/health", "/metrics"}
    for operation in operations:

        @hypothesis.settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def no_server_error(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500, (case.path, response.text)

        no_server_error()


def test_serve_model_runs_the_app_for_the_stores_registry(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    reference_path = tmp_path / "reference.json"
    reference_path.write_text(
        reference_from_arrays(
            _pooled_train(deployment.dataset), MONITORED, bins=4, lower=0.0, upper=1.0
        ).to_json()
    )
    served: dict[str, Any] = {}

    def capture(app: Any, host: str, port: int) -> None:
        served.update(health=TestClient(app).get("/health").json(), host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", capture)
    serve_model(
        deployment.store_url,
        "digits@production",
        host="0.0.0.0",
        port=9100,
        shadow=deployment.candidate.reference,
        shadow_share=0.25,
        drift_reference=reference_path,
    )
    assert (served["host"], served["port"]) == ("0.0.0.0", 9100)
    assert served["health"]["model"] == deployment.production.reference
    assert served["health"]["shadow"] == deployment.candidate.reference
    assert served["health"]["drift_monitoring"] is True


def test_served_drift_alerts_reach_the_audit_log_with_a_delegated_key_and_the_webhook(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    import fedwarden.serve.app as app_module

    reference_path = tmp_path / "reference.json"
    reference_path.write_text(
        reference_from_arrays(
            _pooled_train(deployment.dataset), MONITORED, bins=8, lower=0.0, upper=1.0
        ).to_json()
    )
    posted: list[Alert] = []
    monkeypatch.setattr(app_module, "webhook", lambda url: posted.append)
    shifted = np.clip(np.asarray(deployment.dataset.x_test, dtype=np.float64) + 0.4, 0.0, 1.0)

    def drift_then_stop(app: Any, host: str, port: int) -> None:
        _feed(TestClient(app), shifted)

    monkeypatch.setattr(uvicorn, "run", drift_then_stop)
    root = AuditLog(deployment.store, load_signing_key(deployment.audit_key))
    serving_key = tmp_path / "serving.key"
    delegation = delegate_signer(root, serving_key, ["alert_raised"], name="serving", by="test")
    root_public = deployment.audit_key.with_suffix(".pub")
    entries_before = len(read_entries(deployment.store))
    serve_model(
        deployment.store_url,
        "digits@production",
        drift_reference=reference_path,
        audit_key=serving_key,
        root_public_key=root_public,
        webhook_url="https://hooks.example/drift",
    )
    audited = [
        entry.event()
        for entry in read_entries(deployment.store)[entries_before:]
        if entry.kind == AlertRaised.kind
    ]
    assert posted, "no drift alert was raised"
    assert [event.rule for event in audited if isinstance(event, AlertRaised)] == [
        alert.rule for alert in posted
    ]
    for event, alert in zip(audited, posted, strict=True):
        assert event == AlertRaised.of(alert, deployment.production.run_id)
        assert event.model_version == deployment.production.reference
        assert event.feature in MONITORED and event.round_index is None
    assert verify(deployment.store, load_public_key(root_public)).ok
    served = AuditLog(
        deployment.store, load_signing_key(serving_key), root_public_key=root.public_key
    )
    root.append(SignerRevoked(delegation.public_key, "test", "serving host retired"))
    with pytest.raises(AuditError, match="revoked"):
        served.append(RoundStarted("forged", 0, ("mallory",), None))
    assert verify(deployment.store, load_public_key(root_public)).ok


def test_serve_refuses_a_store_that_does_not_exist_and_never_creates_one(tmp_path: Path) -> None:
    store_path = tmp_path / "never-opened.db"
    with pytest.raises(ServeError, match="cannot open the run store"):
        serve_model(f"sqlite:///{store_path}", "digits@production")
    assert not store_path.exists()


def test_serve_refuses_a_webhook_that_is_not_an_http_url_before_opening_the_store(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "never-opened.db"
    with pytest.raises(AlertError, match="not an http:// or https:// URL"):
        serve_model(
            f"sqlite:///{store_path}",
            "digits@production",
            webhook_url="file:///etc/passwd",
        )
    assert not store_path.exists()


def test_the_serve_command_passes_the_audit_keys_and_the_webhook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    import fedwarden.serve.app as app_module
    from fedwarden.cli import app

    calls: list[dict[str, Any]] = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append({"args": args, **kwargs})

    monkeypatch.setattr(app_module, "serve_model", record)
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "digits@production",
            "--store",
            "sqlite:///store.db",
            "--audit-key",
            str(tmp_path / "serving.key"),
            "--root-public-key",
            str(tmp_path / "audit.pub"),
            "--webhook",
            "https://hooks.example/drift",
        ],
    )
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["audit_key"] == tmp_path / "serving.key"
    assert call["root_public_key"] == tmp_path / "audit.pub"
    assert call["webhook_url"] == "https://hooks.example/drift"
