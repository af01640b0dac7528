"""The monitoring dashboard: its JSON API, its OpenAPI contract, and its page in a browser.

Every test reads the store of one real gRPC run (three digits clients, user-level DP with an
epsilon budget of 50), copied so that each test may change it, with the run's model
registered as ``run@1.0.0``.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from playwright import sync_api
from rich.console import Console
from schemathesis.specs.openapi.checks import negative_data_rejection
from sqlalchemy import func, select, update

from fedwarden.build.run import run
from fedwarden.cli.console import ConsoleObserver
from fedwarden.core.config import RunConfig
from fedwarden.governance.audit import (
    AuditLog,
    RoundCompleted,
    audit_report,
    load_public_key,
    load_signing_key,
    read_entries,
)
from fedwarden.governance.registry import ModelRegistry, ModelVersion
from fedwarden.governance.store import RunStore, StoreError, audit_log, runs
from fedwarden.monitor.dashboard import DashboardError, create_app
from fedwarden.server import RunDirectory
from machine import unavailable

TOKEN = "dashboard-token-for-tests-0123456789"
BUDGET_EPSILON = 50.0
CHROMIUM = Path("/usr/bin/chromium")


@dataclass(frozen=True)
class SimulatedRun:
    """A finished gRPC run: its directory, store, audit keys and per-round metrics."""

    run_id: str
    run_dir: Path
    signing_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> SimulatedRun:
    """Three rounds of user-level DP-FedAvg over gRPC, with a store and a signed audit log."""
    runs_dir = tmp_path_factory.mktemp("dashboard-runs")
    result = run(
        RunConfig.from_mapping(
            {
                "runtime": {"kind": "grpc", "heartbeat_s": 1},
                "data": {"source": "digits", "num_clients": 3},
                "model": {"kind": "softmax"},
                "sampling": {"cohort_size": 3},
                "privacy": {"mechanism": "user_level", "epsilon": BUDGET_EPSILON},
                "rounds": 3,
                "runs_dir": str(runs_dir),
            }
        )
    )
    assert result.run_dir is not None
    run_dir = Path(result.run_dir)
    server_kit = runs_dir / "federation" / "pki" / "servers" / "server"
    with RunStore.sqlite(runs_dir / "fedwarden.db") as store:
        (run_id,) = _run_ids(store)
    return SimulatedRun(
        run_id=run_id,
        run_dir=run_dir,
        signing_key=load_signing_key(server_kit / "audit.key"),
        public_key=load_public_key(server_kit / "audit.pub"),
        metrics=json.loads((run_dir / "metrics.json").read_text()),
        summary=json.loads((run_dir / "summary.json").read_text()),
    )


def _run_ids(store: RunStore) -> list[str]:
    """The ids of the store's runs."""
    with store.reading() as connection:
        return list(connection.execute(select(runs.c.run_id)).scalars())


def register_model(store: RunStore, simulated: SimulatedRun, accuracy: float) -> ModelVersion:
    """Register the run's final model (with the given recorded accuracy) in the store."""
    registry = ModelRegistry(store, AuditLog(store, simulated.signing_key))
    recorded = store.run(simulated.run_id)
    assert recorded is not None
    return registry.register(
        simulated.run_id,
        None,
        simulated.run_dir / "model.npz",
        (simulated.run_dir / "param_spec.json").read_text(),
        rounds=len(simulated.metrics),
        participants=3,
        dp={"epsilon": simulated.summary["epsilon"], "delta": simulated.summary["delta"]},
        metrics={"accuracy": accuracy},
        config_hash=recorded.config_hash,
        data_description="digits, 3 clients, Dirichlet(0.5)",
    )


@pytest.fixture
def store_path(simulated_run: SimulatedRun, tmp_path: Path) -> Path:
    """A copy of the run's store, where the run registered its model as candidate ``run@1.0.0``."""
    path = tmp_path / "store.db"
    for part in simulated_run.run_dir.parent.glob("fedwarden.db*"):
        shutil.copy(part, tmp_path / part.name.replace("fedwarden.db", "store.db"))
    assert simulated_run.summary["registered_model"] == "run@1.0.0"
    return path


def store_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite store file."""
    return f"sqlite:///{path}"


@pytest.fixture
def make_client(
    store_path: Path, simulated_run: SimulatedRun
) -> Iterator[Callable[..., TestClient]]:
    """Open dashboard test clients on the store copy (with both audit keys unless told)."""
    opened: list[TestClient] = []

    def open_client(authorized: bool = True, **options: Any) -> TestClient:
        arguments: dict[str, Any] = {
            "token": TOKEN,
            "audit_public_key": simulated_run.public_key,
            "audit_signing_key": simulated_run.signing_key,
        }
        arguments.update(options)
        client = TestClient(
            create_app(store_url(store_path), **arguments),
            headers=bearer(TOKEN) if authorized else None,
        )
        client.__enter__()
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    """A dashboard holding the audit signing key and public key."""
    return make_client()


def bearer(token: str) -> dict[str, str]:
    """The Authorization header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


def stages(client: TestClient) -> dict[str, str]:
    """The stage of every registered version, by reference."""
    response = client.get("/api/models")
    assert response.status_code == 200
    return {model["reference"]: model["stage"] for model in response.json()["models"]}


# Runs, rounds, clients.


def test_healthz_says_the_store_answers(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "runs": 1}


def test_runs_list_the_run_with_its_privacy_budget(
    client: TestClient, simulated_run: SimulatedRun
) -> None:
    (listed,) = client.get("/api/runs").json()
    assert listed["run_id"] == simulated_run.run_id
    assert listed["status"] == "completed"
    assert listed["run_dir"] == str(simulated_run.run_dir)
    assert listed["budget_epsilon"] == BUDGET_EPSILON
    assert listed["budget_delta"] == simulated_run.summary["budget_delta"]


def test_rounds_are_the_figures_the_store_recorded_as_the_run_wrote_them(
    client: TestClient, simulated_run: SimulatedRun, store_path: Path
) -> None:
    with RunStore.sqlite(store_path) as store:
        assert store.round_records(simulated_run.run_id) == simulated_run.metrics
    body = client.get(f"/api/runs/{simulated_run.run_id}/rounds").json()
    assert body["problem"] is None
    assert body["budget_epsilon"] == BUDGET_EPSILON
    assert [point["round"] for point in body["rounds"]] == [1, 2, 3]
    for point, recorded in zip(body["rounds"], simulated_run.metrics, strict=True):
        for name in ("accuracy", "loss", "epsilon", "participants", "sampled", "bytes_up"):
            assert point[name] == recorded[name], name
    epsilons = [point["epsilon"] for point in body["rounds"]]
    assert epsilons == sorted(epsilons)
    assert 0 < epsilons[-1] <= BUDGET_EPSILON


def test_unknown_run_is_answered_404_naming_it(client: TestClient) -> None:
    for panel in ("rounds", "clients"):
        response = client.get(f"/api/runs/no-such-run/{panel}")
        assert response.status_code == 404
        assert "no-such-run" in response.json()["detail"]


def add_run(store_path: Path, run_id: str, run_dir: Path, records: list[str]) -> None:
    """Record another run in the store copy, with ``records`` as its rounds' records."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunStore.sqlite(store_path) as store:
        store.create_run(
            run_id, "other", json.dumps({"privacy": {"mechanism": "none"}}), str(run_dir)
        )
        for round_index, record in enumerate(records):
            store.round_started(run_id, round_index, [])
            store.round_completed(run_id, round_index, record)


def test_damaged_round_record_is_reported_not_a_server_error(
    client: TestClient, store_path: Path, tmp_path: Path
) -> None:
    add_run(store_path, "damaged", tmp_path / "damaged", ['{"round_index": 0, "accuracy": '])
    body = client.get("/api/runs/damaged/rounds").json()
    assert body["rounds"] == []
    assert "damaged" in body["problem"] and "not JSON" in body["problem"]
    assert body["budget_epsilon"] is None


def test_non_finite_figures_are_sent_as_null(
    client: TestClient, store_path: Path, tmp_path: Path
) -> None:
    add_run(
        store_path,
        "diverged",
        tmp_path / "diverged",
        ['{"round_index": 0, "loss": NaN, "accuracy": 0.1, "epsilon": Infinity}'],
    )
    (point,) = client.get("/api/runs/diverged/rounds").json()["rounds"]
    assert (point["loss"], point["accuracy"], point["epsilon"]) == (None, 0.1, None)


def test_clients_show_cohorts_refusals_flags_and_quarantine(
    client: TestClient, simulated_run: SimulatedRun, store_path: Path, tmp_path: Path
) -> None:
    with RunStore.sqlite(store_path) as store:
        store.record_rejection(
            simulated_run.run_id, 1, "client_1", "norm_bound", "update norm 9.1 exceeds 5"
        )
    clients = {
        listed["client_id"]: listed
        for listed in client.get(f"/api/runs/{simulated_run.run_id}/clients").json()["clients"]
    }
    assert sorted(clients) == ["client_0", "client_1", "client_2"]
    assert all(listed["enrolled"] for listed in clients.values())
    assert all(listed["sampled_rounds"] == [1, 2, 3] for listed in clients.values())
    # Every update of the run stays on record after its spooled payload is deleted; client_1's
    # round-1 upload, refused above, no longer counts as accepted.
    accepted = {client_id: listed["accepted_updates"] for client_id, listed in clients.items()}
    assert accepted == {"client_0": 3, "client_1": 2, "client_2": 3}
    (refusal,) = clients["client_1"]["rejections"]
    assert (refusal["round"], refusal["reason"]) == (2, "norm_bound")
    assert clients["client_0"]["rejections"] == []

    add_run(
        store_path,
        "flagging",
        tmp_path / "flagging",
        # Figures as stores written before rounds were numbered from 1 hold them (from 0).
        [
            json.dumps({"round_index": 0, "flagged": ["mallory"], "quarantined": []}),
            json.dumps({"round_index": 1, "flagged": ["mallory"], "quarantined": ["mallory"]}),
        ],
    )
    with RunStore.sqlite(store_path) as store:
        store.accept_update(
            "flagging",
            0,
            "mallory",
            digest="00",
            num_examples=10,
            metrics_json="{}",
            payload_path="unused",
            header_json="{}",
        )
    listed = {
        entry["client_id"]: entry
        for entry in client.get("/api/runs/flagging/clients").json()["clients"]
    }
    assert listed["mallory"]["flagged_rounds"] == [1, 2]
    assert listed["mallory"]["quarantined"] is True
    assert listed["mallory"]["accepted_updates"] == 1
    # The server's checks then refuse the upload the transport had accepted.
    with RunStore.sqlite(store_path) as store:
        store.record_rejection("flagging", 0, "mallory", "norm_bound", "update norm 9 exceeds 5")
    refused = {
        entry["client_id"]: entry
        for entry in client.get("/api/runs/flagging/clients").json()["clients"]
    }["mallory"]
    assert refused["accepted_updates"] == 0
    assert [rejection["reason"] for rejection in refused["rejections"]] == ["norm_bound"]
    assert listed["mallory"]["enrolled"] is False
    assert listed["client_0"]["quarantined"] is False


# Audit log.


def test_audit_log_verifies_with_the_public_key(client: TestClient, store_path: Path) -> None:
    with RunStore.sqlite(store_path) as store:
        entries = read_entries(store)
    body = client.get("/api/audit", params={"limit": 3}).json()
    verification = body["verification"]
    assert verification["checked"] is True
    assert verification["ok"] is True
    assert verification["entries"] == body["total_entries"] == len(entries)
    assert verification["last_hash"] == entries[-1].entry_hash
    assert [entry["sequence"] for entry in body["entries"]] == [
        entry.sequence for entry in reversed(entries[-3:])
    ]
    assert body["entries"][0]["kind"] == "model_registered"


def test_a_modified_audit_entry_fails_verification_at_that_entry(
    client: TestClient, store_path: Path
) -> None:
    with RunStore.sqlite(store_path) as store, store.transaction() as connection:
        connection.execute(
            update(audit_log)
            .where(audit_log.c.sequence == 2)
            .values(payload=audit_log.c.payload + " ")
        )
    verification = client.get("/api/audit").json()["verification"]
    assert verification["ok"] is False
    assert verification["first_bad"] == 2
    assert "modified" in verification["problem"]


def test_audit_log_without_a_public_key_is_listed_but_not_verified(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(audit_public_key=None, audit_signing_key=None)
    body = client.get("/api/audit").json()
    assert body["verification"]["checked"] is False
    assert body["verification"]["ok"] is None
    assert "public key" in body["verification"]["problem"]
    assert body["total_entries"] == len(body["entries"]) > 0


def test_audit_limit_out_of_range_is_refused(client: TestClient) -> None:
    assert client.get("/api/audit", params={"limit": 0}).status_code == 422
    assert client.get("/api/audit", params={"limit": 100_000}).status_code == 422


# Registry.


def test_models_list_the_registered_version_and_its_stage(
    client: TestClient, simulated_run: SimulatedRun
) -> None:
    body = client.get("/api/models").json()
    assert body["can_change"] is True
    (listed,) = body["models"]
    assert listed["reference"] == "run@1.0.0"
    assert listed["stage"] == "candidate"
    assert listed["run_id"] == simulated_run.run_id
    assert listed["recorded_accuracy"] == simulated_run.summary["accuracy"]


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-token-wrong-token"), {"Authorization": TOKEN}, bearer("")],
    ids=["no header", "wrong token", "not a bearer", "empty token"],
)
def test_registry_changes_without_the_token_are_refused_with_403(
    make_client: Callable[..., TestClient], headers: dict[str, str]
) -> None:
    client = make_client(authorized=False)
    promote = client.post("/api/models/run@1.0.0/promote", json={"by": "eve"}, headers=headers)
    assert promote.status_code == 403
    assert "token" in promote.json()["detail"]
    rollback = client.post("/api/models/rollback", json={"by": "eve"}, headers=headers)
    assert rollback.status_code == 403
    assert stages(make_client()) == {"run@1.0.0": "candidate"}


READS = ["/api/runs", "/api/audit", "/api/models"]


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-token-wrong-token"), {"Authorization": TOKEN}],
    ids=["no header", "wrong token", "not a bearer"],
)
def test_reads_without_the_token_are_refused_and_name_no_client(
    make_client: Callable[..., TestClient], simulated_run: SimulatedRun, headers: dict[str, str]
) -> None:
    client = make_client(authorized=False)
    run = f"/api/runs/{simulated_run.run_id}"
    for path in [*READS, f"{run}/rounds", f"{run}/clients"]:
        response = client.get(path, headers=headers)
        assert response.status_code == 403, path
        assert "client_" not in response.text and simulated_run.run_id not in response.text
    assert client.get("/healthz").status_code == 200


def test_audit_verification_is_recomputed_only_when_a_stored_entry_changes(
    client: TestClient, store_path: Path
) -> None:
    cache = client.app.state.verification  # type: ignore[attr-defined]
    for _ in range(3):
        assert client.get("/api/audit").json()["verification"]["ok"] is True
    assert cache.computed == 1
    with RunStore(store_url(store_path)) as store, store.transaction() as connection:
        connection.execute(
            update(audit_log)
            .where(audit_log.c.sequence == 1)
            .values(payload=func.replace(audit_log.c.payload, ":", ": "))
        )
    verification = client.get("/api/audit").json()["verification"]
    assert (verification["ok"], verification["first_bad"]) == (False, 1)
    assert cache.computed == 2


def test_promote_with_the_token_puts_the_candidate_in_production_and_audits_it(
    client: TestClient, store_path: Path
) -> None:
    response = client.post(
        "/api/models/run@1.0.0/promote",
        json={"by": "alice", "pilot_accuracy": 0.5},
        headers=bearer(TOKEN),
    )
    assert response.status_code == 200, response.text
    assert response.json()["stage"] == "production"
    assert response.json()["pilot_accuracy"] == 0.5
    assert stages(client) == {"run@1.0.0": "production"}
    with RunStore.sqlite(store_path) as store:
        last = read_entries(store)[-1]
    assert last.kind == "model_promoted"
    assert json.loads(last.payload)["by"] == "alice"
    assert client.get("/api/audit").json()["verification"]["ok"] is True


def test_promote_refused_by_the_staged_rollout_is_answered_409_with_the_reason(
    client: TestClient, simulated_run: SimulatedRun, store_path: Path
) -> None:
    assert (
        client.post(
            "/api/models/run@1.0.0/promote",
            json={"by": "alice", "pilot_accuracy": 0.9},
            headers=bearer(TOKEN),
        ).status_code
        == 200
    )
    with RunStore.sqlite(store_path) as store:
        register_model(store, simulated_run, accuracy=0.1)
    refused = client.post(
        "/api/models/run@1.1.0/promote",
        json={"by": "alice", "pilot_accuracy": 0.5},
        headers=bearer(TOKEN),
    )
    assert refused.status_code == 409
    assert "pilot accuracy 0.5000" in refused.json()["detail"]
    assert "Override with a reason" in refused.json()["detail"]
    assert stages(client) == {"run@1.0.0": "production", "run@1.1.0": "candidate"}

    overridden = client.post(
        "/api/models/run@1.1.0/promote",
        json={"by": "alice", "pilot_accuracy": 0.5, "override": True, "reason": "pilot bias"},
        headers=bearer(TOKEN),
    )
    assert overridden.status_code == 200, overridden.text
    assert stages(client) == {"run@1.0.0": "deprecated", "run@1.1.0": "production"}

    restored = client.post(
        "/api/models/rollback", json={"by": "bob", "model": "run"}, headers=bearer(TOKEN)
    )
    assert restored.status_code == 200, restored.text
    assert restored.json()["reference"] == "run@1.0.0"
    assert stages(client) == {"run@1.0.0": "production", "run@1.1.0": "deprecated"}


def test_registry_refusals_of_unknown_versions_and_first_rollback_are_409(
    client: TestClient,
) -> None:
    unknown = client.post("/api/models/run@9.9.9/promote", json={"by": "a"}, headers=bearer(TOKEN))
    assert unknown.status_code == 409
    assert "run@9.9.9" in unknown.json()["detail"]
    nothing = client.post("/api/models/rollback", json={"by": "a"}, headers=bearer(TOKEN))
    assert nothing.status_code == 409
    assert "name the model" in nothing.json()["detail"]


def test_registry_changes_without_the_signing_key_are_refused_with_409(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(audit_signing_key=None)
    body = client.get("/api/models").json()
    assert body["can_change"] is False
    assert "audit signing key" in body["cannot_change_because"]
    response = client.post(
        "/api/models/run@1.0.0/promote", json={"by": "alice"}, headers=bearer(TOKEN)
    )
    assert response.status_code == 409
    assert "audit signing key" in response.json()["detail"]
    assert stages(client) == {"run@1.0.0": "candidate"}


def test_a_short_token_or_a_missing_store_is_refused_at_start(
    store_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(DashboardError, match="at least 16"):
        create_app(store_url(store_path), token="short")
    with pytest.raises(StoreError, match="no run store"):
        create_app(store_url(tmp_path / "missing.db"), token=TOKEN)
    assert not (tmp_path / "missing.db").exists()


def test_page_and_its_assets_are_served_without_external_sources(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "fedwarden dashboard" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    script = client.get("/static/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text
    assert "https://" not in script.text
    assert client.get("/static/dashboard.css").status_code == 200


# The OpenAPI contract.


def test_openapi_document_declares_every_endpoint(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert set(document["paths"]) == {
        "/healthz",
        "/api/runs",
        "/api/runs/{run_id}/rounds",
        "/api/runs/{run_id}/clients",
        "/api/audit",
        "/api/models",
        "/api/models/{reference}/promote",
        "/api/models/rollback",
    }
    promote = document["paths"]["/api/models/{reference}/promote"]["post"]
    assert {"200", "403", "409", "422"} <= set(promote["responses"])
    assert promote["security"] == [{"HTTPBearer": []}]


@pytest.fixture
def api_schema(store_path: Path, simulated_run: SimulatedRun) -> schemathesis.BaseSchema:
    """The OpenAPI document of a dashboard holding both audit keys, loaded by schemathesis."""
    app = create_app(
        store_url(store_path),
        token=TOKEN,
        audit_public_key=simulated_run.public_key,
        audit_signing_key=simulated_run.signing_key,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_api_conforms_to_its_openapi_document_and_never_fails_with_5xx(
    api_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    @given(case=api_schema.as_strategy(mode))
    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call_every_operation(case: schemathesis.Case) -> None:
        case.call_and_validate()
        # The token added here may repair a mutation that removed the Authorization header.
        case.call_and_validate(headers=bearer(TOKEN), excluded_checks=[negative_data_rejection])

    call_every_operation()


# The page in a browser.


def free_socket() -> socket.socket:
    """A listening-ready TCP socket bound to a free port of 127.0.0.1."""
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound.bind(("127.0.0.1", 0))
    return bound


@pytest.fixture
def served_dashboard(store_path: Path, simulated_run: SimulatedRun) -> Iterator[str]:
    """The dashboard served by uvicorn in a thread; its base URL."""
    import uvicorn

    app = create_app(
        store_url(store_path),
        token=TOKEN,
        audit_public_key=simulated_run.public_key,
        audit_signing_key=simulated_run.signing_key,
        refresh_seconds=0,
    )
    listening = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before serving the dashboard"
        time.sleep(0.05)
    host, port = listening.getsockname()
    yield f"http://{host}:{port}"
    server.should_exit = True
    thread.join()
    listening.close()


@pytest.mark.slow
def test_page_in_chromium_draws_the_run_verifies_the_audit_and_promotes(
    served_dashboard: str, simulated_run: SimulatedRun
) -> None:
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM}: install it (apt-get install chromium)")
    last = simulated_run.metrics[-1]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            outside_requests: list[str] = []
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith(served_dashboard)
                    else outside_requests.append(request.url)
                ),
            )
            page.goto(served_dashboard)
            sync_api.expect(page.locator("#load-status")).to_contain_text(
                "enter the dashboard token"
            )
            page.fill("#token", TOKEN)
            page.locator("#token").dispatch_event("change")

            accuracy_point = page.locator('svg[data-chart="accuracy"] circle[data-round="3"]')
            accuracy_point.wait_for()
            assert float(accuracy_point.get_attribute("data-value") or "nan") == pytest.approx(
                last["accuracy"]
            )
            last_row = page.locator('#rounds tr[data-round="3"]')
            assert last_row.locator("td.accuracy").inner_text() == f"{last['accuracy']:.4f}"
            assert last_row.locator("td.epsilon").inner_text() == f"{last['epsilon']:.4f}"

            epsilon_chart = page.locator('svg[data-chart="epsilon"]')
            assert float(
                epsilon_chart.locator("line.budget").get_attribute("data-budget") or "nan"
            ) == pytest.approx(BUDGET_EPSILON)
            assert epsilon_chart.locator("text.budget-label").text_content() == (
                "budget \u03b5 = 50"
            )
            epsilon_values = [
                float(point.get_attribute("data-value") or "nan")
                for point in epsilon_chart.locator("circle").all()
            ]
            assert epsilon_values == pytest.approx(
                [row["epsilon"] for row in simulated_run.metrics]
            )
            assert page.locator('svg[data-chart="participation"] circle').count() == 4 * 3
            assert page.locator('svg[data-chart="bytes"] circle').count() == 2 * 3

            audit_status = page.locator("#audit-status")
            assert audit_status.inner_text().startswith("Audit log verified")
            assert audit_status.get_attribute("class") == "ok"
            assert page.locator('#clients tr[data-client-id="client_2"]').count() == 1

            stage = page.locator('#models tr[data-reference="run@1.0.0"] td.stage')
            assert stage.inner_text() == "candidate"
            page.fill("#token", "not-the-token-at-all")
            page.click('#models tr[data-reference="run@1.0.0"] button.promote')
            sync_api.expect(page.locator("#registry-result")).to_contain_text("refused (403)")
            assert stage.inner_text() == "candidate"

            page.fill("#token", TOKEN)
            page.fill("#by", "browser-operator")
            page.click('#models tr[data-reference="run@1.0.0"] button.promote')
            sync_api.expect(stage).to_have_text("production")
            sync_api.expect(page.locator("#registry-result")).to_have_text(
                "run@1.0.0 is in production"
            )
            sync_api.expect(page.locator("#audit tbody tr").first).to_contain_text(
                "browser-operator"
            )
            assert outside_requests == []
        finally:
            browser.close()


def test_the_first_round_is_round_1_in_the_terminal_the_files_the_store_and_the_audit_report(
    simulated_run: SimulatedRun, store_path: Path
) -> None:
    checkpoint = RunDirectory(simulated_run.run_dir).load_checkpoint()
    assert checkpoint is not None
    terminal = Console(file=io.StringIO(), width=200, force_terminal=False)
    observer = ConsoleObserver(terminal, rounds=3, start=0)
    for record in checkpoint.history:
        observer.round_finished(record)
    rows = terminal.file.getvalue().splitlines()[1:]  # type: ignore[attr-defined]
    assert [int(row.split()[0]) for row in rows] == [1, 2, 3]
    assert [row["round"] for row in simulated_run.metrics] == [1, 2, 3]
    with RunStore.sqlite(store_path) as store:
        assert [row["round"] for row in store.round_records(simulated_run.run_id)] == [1, 2, 3]
        report = audit_report(store, simulated_run.public_key)
        events = [entry.event() for entry in read_entries(store)]
    (lineage,) = report["lineage"]["runs"]
    assert [item["round"] for item in lineage["rounds"]] == [1, 2, 3]
    assert {item["round"] for item in report["privacy"][0]["dp_events"]} == {1, 2, 3}
    # The signed entries keep the round's position (from 0), as logs written before did.
    completed = [event for event in events if isinstance(event, RoundCompleted)]
    assert [event.round_index for event in completed] == [0, 1, 2]
