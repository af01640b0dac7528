"""The run store's tables: one SQLAlchemy :data:`metadata` that ``create_all`` creates.

All tables belong to the one :data:`metadata`, so later tables (an audit log, a model registry)
are added to it and created by the same ``create_all``; see :mod:`fedwarden.governance.store`
for what each table holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

RunStatus = Literal["running", "completed", "failed"]
FinalStatus = Literal["completed", "failed"]
IDENTITY_KEY_BYTES = 32


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no offset, so add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store the instant in UTC."""
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read the instant back as an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("config_json", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("run_dir", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    CheckConstraint("status IN ('running', 'completed', 'failed')", name="status"),
)

rounds = Table(
    "rounds",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("round_index", Integer, primary_key=True),
    Column("cohort_json", Text, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("record_json", Text, nullable=True),
    Column("completed_at", UtcDateTime, nullable=True),
)

clients = Table(
    "clients",
    metadata,
    Column("enrolment_id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(200), nullable=False, index=True),
    Column("public_key", LargeBinary(IDENTITY_KEY_BYTES), nullable=False),
    Column("source", String(32), nullable=False),
    Column("enrolled_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
)
# At most one active enrolment per client, enforced by the database itself.
Index(
    "ux_clients_active_client_id",
    clients.c.client_id,
    unique=True,
    sqlite_where=clients.c.revoked_at.is_(None),
    postgresql_where=clients.c.revoked_at.is_(None),
)

accepted_updates = Table(
    "accepted_updates",
    metadata,
    Column("update_id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    Column("round_index", Integer, nullable=False),
    Column("client_id", String(200), nullable=False),
    Column("digest", String(128), nullable=False),
    Column("num_examples", Integer, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("payload_path", Text, nullable=False),
    Column("header_json", Text, nullable=False),
    Column("accepted_at", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "round_index", "client_id"),
)

rejections = Table(
    "rejections",
    metadata,
    Column("rejection_id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("round_index", Integer, nullable=True),
    Column("client_id", String(200), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("rejected_at", UtcDateTime, nullable=False),
)


audit_log = Table(
    "audit_log",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("sequence", Integer, nullable=False, unique=True),
    Column("timestamp", String(40), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("previous_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

governance_secrets = Table(
    "governance_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("major", Integer, nullable=False),
    Column("minor", Integer, nullable=False),
    Column("patch", Integer, nullable=False),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    Column("parent", String(240), nullable=True),
    Column("stage", String(16), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("rounds", Integer, nullable=False),
    Column("participants", Integer, nullable=False),
    Column("dp_json", Text, nullable=True),
    Column("metrics_json", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("data_description", Text, nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("weights_deleted", Boolean, nullable=False),
    Column("pilot_accuracy", Float, nullable=True),
    Column("production_order", Integer, nullable=True),
    Column("rolled_back", Boolean, nullable=False),
    Column("registered_at", UtcDateTime, nullable=False),
    Column("promoted_at", UtcDateTime, nullable=True),
    UniqueConstraint("model", "major", "minor", "patch"),
    CheckConstraint("stage IN ('candidate', 'production', 'deprecated')", name="stage"),
)

model_weights = Table(
    "model_weights",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("weights", LargeBinary, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
)

pilot_evaluations = Table(
    "pilot_evaluations",
    metadata,
    Column("evaluation_id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(32), nullable=False),
    Column("clients_json", Text, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("production", String(32), nullable=True),
    Column("production_accuracy", Float, nullable=True),
    Column("evaluated_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
)


def utc_now() -> datetime:
    """The current instant in UTC, as every timestamp of the store is written."""
    return datetime.now(UTC)
