"""Where a run is deployed: its listening address, run store, runtime and audit trail."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.data.dataset import FederatedDataset
from fedwarden.deploy.revocation import REVOCATION_LIST, RevocationList
from fedwarden.monitor.alerts import FederationMetrics
from fedwarden.privacy.secrecy import (
    commits_cohorts,
)
from fedwarden.privacy.silo import (
    ClientBudgets,
)
from fedwarden.privacy.user_level import UserLevelPrivacy
from fedwarden.runtime.base import Runtime
from fedwarden.runtime.inprocess import InProcessRuntime
from fedwarden.runtime.local import LocalRuntime
from fedwarden.runtime.ray import RayRuntime
from fedwarden.server.rundir import RunDirectory

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedwarden.governance.audit import ServerAuditTrail
    from fedwarden.governance.store import RunStore
    from fedwarden.runtime.grpc.credentials import TlsKit
    from fedwarden.runtime.grpc.local_clients import LocalClients

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployment:
    """Where ``fedwarden server`` listens and keeps its state (the grpc runtime, for real).

    ``tls`` None serves ``--insecure`` (loopback only). ``store_url`` is a
    SQLAlchemy URL; None keeps a SQLite file in the runs directory.
    ``listening`` is set once the federation service accepts connections
    (the health endpoint reports it).
    """

    address: str
    tls: TlsKit | None
    store_url: str | None = None
    audit_key: Ed25519PrivateKey | None = None
    """Signs the audit log (``audit.key`` of the server kit); None: no audit log."""
    audit_public_key: Path | None = None
    """Where the audit log's public key (``audit.pub``) lies, to print how to verify it."""
    revocation_list: Path | None = None
    """The CA's revocation list (``revoked.pem`` of the server kit), re-read as it changes."""
    listening: threading.Event = field(default_factory=threading.Event)
    launcher: LocalClients | None = None
    """Local client processes to start (``fedwarden run`` on the grpc runtime)."""
    metrics: FederationMetrics = field(default_factory=FederationMetrics)
    """The Prometheus series served on the operations endpoint's ``/metrics``."""

    @classmethod
    def local(
        cls,
        directory: Path,
        dataset: FederatedDataset,
        pki: Path,
        *,
        allow_test_mode_noise: bool = False,
    ) -> Deployment:
        """Loopback with mutual TLS and one client process per client, files under ``directory``.

        ``pki`` keeps the CA and the kits across runs (the store enrols each client's key once).
        ``allow_test_mode_noise`` lets the local clients accept a test-mode config.
        """
        from fedwarden.governance.audit import load_signing_key
        from fedwarden.runtime.grpc.local_clients import LocalClients

        launcher = LocalClients(
            directory, dataset, pki, allow_test_mode_noise=allow_test_mode_noise
        )
        tls = launcher.provision()
        audit_key = load_signing_key(launcher.server_kit / "audit.key")
        return cls(
            "127.0.0.1:0",
            tls,
            audit_key=audit_key,
            audit_public_key=launcher.server_kit / "audit.pub",
            revocation_list=launcher.server_kit / REVOCATION_LIST,
            launcher=launcher,
        )


def local_federation(runs_dir: Path) -> Path:
    """Where ``fedwarden run`` on the grpc runtime keeps the CA and kits of its local clients."""
    return runs_dir / "federation" / "pki"


def open_store(config: RunConfig, deployment: Deployment | None) -> RunStore:
    """A deployment's run store: its URL, or ``<runs_dir>/fedwarden.db``."""
    from fedwarden.governance.store import RunStore

    if deployment is not None and deployment.store_url is not None:
        return RunStore(deployment.store_url)
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    return RunStore.sqlite(config.runs_dir / "fedwarden.db")


def build_runtime(
    config: RunConfig,
    dataset: FederatedDataset,
    run_dir: RunDirectory | None,
    store: RunStore | None,
    deployment: Deployment | None,
) -> Runtime:
    """The runtime named by ``config.runtime``; the grpc runtime serves ``deployment``."""
    if config.runtime.kind == "ray":
        return RayRuntime(config.runtime.workers, config.runtime.address)
    if config.runtime.kind == "local":
        return LocalRuntime(config.runtime.workers)
    if config.runtime.kind == "inprocess":
        return InProcessRuntime()
    from fedwarden.runtime.grpc.limits import ServerLimits
    from fedwarden.runtime.grpc.server import GrpcRuntime
    from fedwarden.runtime.grpc.service import RunDescription

    if run_dir is None or store is None or deployment is None:
        raise ConfigError(
            "the grpc runtime keeps its spool and store with the run directory; run with one"
        )
    return GrpcRuntime(
        deployment.address,
        tls=deployment.tls,
        journal=store,
        run=RunDescription(
            run_dir.path.name,
            config.model_dump_json(),
            dataset.num_features,
            dataset.num_classes,
        ),
        spool_dir=run_dir.spool_dir,
        expected_clients=dataset.client_ids,
        heartbeat_s=config.runtime.heartbeat_s,
        join_timeout_s=config.runtime.join_timeout_s,
        revocations=None
        if deployment.tls is None or deployment.revocation_list is None
        else RevocationList(deployment.revocation_list, deployment.tls.root_certificate),
        limits=ServerLimits.for_clients(
            len(dataset.client_ids),
            stream_deadline_s=config.runtime.stream_deadline_s,
            calls_per_peer=config.runtime.calls_per_client,
        ),
        launcher=deployment.launcher,
        listening=deployment.listening,
    )


def audit_trail(
    config: RunConfig,
    store: RunStore,
    run_dir: RunDirectory,
    deployment: Deployment,
    privacy: UserLevelPrivacy | ClientBudgets | None,
) -> ServerAuditTrail | None:
    """The run's audit trail (recording the run when it is new), or None without an audit key."""
    from fedwarden import __version__
    from fedwarden.governance.audit import AuditLog, ServerAuditTrail

    run_id = run_dir.path.name
    new_run = store.run(run_id) is None
    if new_run:
        store.create_run(run_id, config.name, run_dir.read_config(), str(run_dir.path))
    if deployment.audit_key is None:
        logger.warning(
            "no audit key (audit.key in the server kit): this run is not written to the audit "
            "log; issue a server kit with `fedwarden pki issue server NAME` to get one"
        )
        return None
    section = config.privacy
    dp = None
    if section.mechanism != "none":
        noise_multiplier = getattr(privacy, "noise_multiplier", None) or section.noise_multiplier
        dp = {
            "mechanism": section.mechanism,
            "noise_multiplier": noise_multiplier,
            "clip_norm": section.clip_norm,
            "epsilon_budget": section.epsilon,
            "delta": section.delta,
        }
    trail = ServerAuditTrail(
        AuditLog(store, deployment.audit_key),
        run_id,
        dp=dp,
        delta=None if dp is None else section.delta,
        cohort_openings=run_dir.cohort_openings_path if commits_cohorts(config) else None,
        ledger=None if privacy is None else privacy.ledger,
    )
    if new_run:
        trail.run_created(run_dir.read_config(), __version__)
    return trail
