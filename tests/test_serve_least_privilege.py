"""The prediction service holds least privilege over the store (issue 17, finding 5).

It opens the store read-only and appends its drift alerts through a connection
that may insert audit entries and nothing else, so whoever takes it over
cannot rewrite production weights with their hash, enrol identity keys or
point a spooled payload at a file the server later deletes; and it serves only
weights whose SHA-256 the root-signed audit log recorded at registration.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, delete, insert, make_url, text, update
from sqlalchemy.exc import SQLAlchemyError

from fedwarden.core.config import RunConfig
from fedwarden.governance.audit import (
    AlertRaised,
    AuditError,
    AuditLog,
    RoundStarted,
    delegate_signer,
    load_signing_key,
    verify,
)
from fedwarden.governance.registry import ModelRegistry, ModelVersion
from fedwarden.governance.store import (
    RunStore,
    StoreAccess,
    accepted_updates,
    audit_log,
    model_versions,
    model_weights,
    postgres_grants,
)
from fedwarden.models.numpy import softmax_regression
from fedwarden.serve.app import create_app
from fedwarden.serve.provenance import ProvenanceError
from test_governance_store import postgres_server, store_url  # noqa: F401  (fixtures)

ROOT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
RUN_ID = "digits-run"


@dataclass
class Registered:
    url: str
    production: ModelVersion
    weights: np.ndarray
    serving_key: Ed25519PrivateKey

    def as_service(self, access: StoreAccess) -> RunStore:
        """The store as the prediction service opens it: with ``access``, as its own role."""
        url = make_url(self.url)
        if url.get_backend_name() == "postgresql":
            role = f"serving_{access}_{next(_roles)}"
            admin = create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f"CREATE ROLE {role} LOGIN"))
                for grant in postgres_grants(role, access):
                    connection.execute(text(grant))
            admin.dispose()
            url = url.set(username=role, password=None)
        return RunStore(url, access)


_roles = itertools.count()
WRITE_REFUSED = "not authorized|permission denied|readonly|read-only"


@pytest.fixture
def registered(tmp_path: Path, store_url: str) -> Iterator[Registered]:  # noqa: F811
    """A store holding one audited softmax model on digits, in production."""
    config = RunConfig.from_mapping(
        {"name": "digits", "data": {"source": "digits"}, "model": {"kind": "softmax"}}
    )
    spec = softmax_regression(64, 10).spec
    weights = np.random.default_rng(0).normal(size=spec.size).astype(np.float32)
    with RunStore(store_url) as store:
        store.create_run(RUN_ID, "digits", config.model_dump_json(), str(tmp_path))
        run = store.run(RUN_ID)
        assert run is not None
        log = AuditLog(store, ROOT_KEY)
        registry = ModelRegistry(store, log)
        version = registry.register(
            RUN_ID,
            None,
            weights.astype("<f4").tobytes(),
            spec.to_json(),
            rounds=1,
            participants=2,
            dp=None,
            metrics={},
            config_hash=run.config_hash,
            data_description="digits",
        )
        production = registry.promote(version.reference, by="test")
        serving = tmp_path / "serving.key"
        delegate_signer(log, serving, ("alert_raised",), name="serving", by="test")
    yield Registered(store_url, production, weights, load_signing_key(serving))


def test_the_services_store_refuses_every_write(registered: Registered) -> None:
    with registered.as_service("read_only") as store:
        assert store.run(RUN_ID) is not None
        with pytest.raises(SQLAlchemyError, match=WRITE_REFUSED):
            store.enroll("mallory", bytes(32), "certificate")
        with pytest.raises(SQLAlchemyError, match=WRITE_REFUSED), store.transaction() as connection:
            connection.execute(update(model_weights).values(weights=b"\0" * 2600))


def test_the_services_audit_path_appends_alerts_and_can_do_nothing_else(
    registered: Registered,
) -> None:
    with registered.as_service("audit_append") as appender:
        log = AuditLog(appender, registered.serving_key, root_public_key=ROOT_KEY.public_key())
        log.append(AlertRaised(RUN_ID, None, "drift_psi", "feature 3", None, "digits@1.0.0", 3))
        with pytest.raises(AuditError, match="may sign only alert_raised, not round_started"):
            log.append(RoundStarted(RUN_ID, 9, ("mallory",), None))
        attacks = [
            update(model_weights).values(weights=b"\0" * 2600),
            update(model_versions).values(weights_sha256="0" * 64),
            insert(accepted_updates).values(
                run_id=RUN_ID,
                round_index=0,
                client_id="mallory",
                digest="0" * 64,
                num_examples=1,
                metrics_json="{}",
                payload_path="/etc/passwd",
                header_json="{}",
                accepted_at=datetime.now(UTC),
            ),
            delete(audit_log).where(audit_log.c.sequence >= 0),
        ]
        for attack in attacks:
            with (
                pytest.raises(SQLAlchemyError, match=WRITE_REFUSED),
                appender.transaction() as connection,
            ):
                connection.execute(attack)
        with pytest.raises(SQLAlchemyError, match=WRITE_REFUSED):
            appender.enroll("mallory", bytes(32), "certificate")
        with pytest.raises(SQLAlchemyError, match=WRITE_REFUSED):
            appender.revoke("client_0")
    with RunStore(registered.url) as store:
        assert verify(store, ROOT_KEY.public_key()).ok
        assert store.enrolled("mallory") is None


def test_weights_replaced_together_with_the_registrys_hash_are_not_served(
    registered: Registered,
) -> None:
    forged = np.zeros_like(registered.weights).astype("<f4").tobytes()
    with RunStore(registered.url) as store:
        with store.transaction() as connection:
            connection.execute(update(model_weights).values(weights=forged))
            connection.execute(
                update(model_versions).values(weights_sha256=hashlib.sha256(forged).hexdigest())
            )
        registry = ModelRegistry(store, None)
        assert np.all(registry.weights(registered.production.reference) == 0)
        with pytest.raises(ProvenanceError, match="replaced after registration"):
            create_app(registry, "digits@production", root_public_key=ROOT_KEY.public_key())


def test_audited_weights_are_served(registered: Registered) -> None:
    with registered.as_service("read_only") as store:
        app = create_app(
            ModelRegistry(store, None), "digits@production", root_public_key=ROOT_KEY.public_key()
        )
        assert app is not None
