"""The durable store of a deployed server: runs, rounds, enrolled clients, accepted updates.

A long-running ``fedwarden server`` must survive ``kill -9``: on restart it continues its run
from the last completed round, and no client update it acknowledged is lost. Everything it
must remember between rounds that is not a checkpoint or the privacy ledger (those stay in the
run directory, see :mod:`fedwarden.server.rundir`) is a row in one SQLAlchemy database:

``runs``
    one row per run: its name, validated config and the config's SHA-256, its run directory,
    and whether it is ``running``, ``completed`` or ``failed``.
``rounds``
    one row per started round: the sampled cohort and, once completed, its record (the
    figures the dashboard charts, written by :class:`RoundRows`).
``clients``
    every enrolment of a client's long-term Ed25519 identity key (raw 32 bytes); at most one
    per client is active (not revoked), and revoked enrolments stay on record.
``accepted_updates``
    each client update the server accepted, written and committed *before* the client is
    acknowledged; unique per (run, round, client). Once its round is checkpointed the spooled
    payload is deleted and the row stays, with the update's digest, example count and metrics:
    the run's per-client history.
``rejections``
    each refused update with its machine-readable reason.
``audit_log``
    the hash-chained, signed audit log of :mod:`fedwarden.governance.audit`: one row per entry,
    unique per ``sequence``; rows are only ever inserted.
``governance_secrets``
    named per-store secrets, such as the salt that pseudonymizes client ids in audit reports.
``model_versions`` and ``model_weights``
    the model registry of :mod:`fedwarden.governance.registry`: one row per registered version
    (its lineage, stage and metrics) and, until retention deletes them, its weights as the raw
    little-endian float32 bytes of the flat parameter vector (never pickled).
``pilot_evaluations``
    each candidate's federated evaluation on pilot clients, beside production's on the same.

The database is a SQLite file by default (``sqlite:///path/to/fedwarden.db``), opened in WAL
mode with ``synchronous=FULL`` so that a committed row survives a crash of the process or the
machine; a PostgreSQL URL (``postgresql+psycopg://...``) works as well, since every statement
is portable SQLAlchemy Core.

=====================  ======================================================================
module                 what it holds
=====================  ======================================================================
:mod:`.schema`         the tables, all in one :data:`metadata`
:mod:`.records`        the rows the store hands out, and its errors
:mod:`.engine`         opening the database with an access mode it enforces; transactions
:mod:`.runs`           the runs
:mod:`.clients`        the enrolments of clients' identity keys
:mod:`.rounds`         each round's cohort and record
:mod:`.updates`        accepted updates and refusals
:mod:`.run_store`      :class:`RunStore`, every group in one object, and :class:`RoundRows`
=====================  ======================================================================
"""

from __future__ import annotations

from fedwarden.governance.store.engine import StoreAccess, StoreEngine, postgres_grants
from fedwarden.governance.store.records import (
    RejectionRow,
    RoundConflict,
    RunRow,
    StoreError,
)
from fedwarden.governance.store.run_store import RoundRows, RunStore
from fedwarden.governance.store.schema import (
    IDENTITY_KEY_BYTES,
    FinalStatus,
    RunStatus,
    accepted_updates,
    audit_log,
    clients,
    governance_secrets,
    metadata,
    model_versions,
    model_weights,
    pilot_evaluations,
    rejections,
    rounds,
    runs,
)

__all__ = [
    "IDENTITY_KEY_BYTES",
    "FinalStatus",
    "RejectionRow",
    "RoundConflict",
    "RoundRows",
    "RunRow",
    "RunStatus",
    "RunStore",
    "StoreAccess",
    "StoreEngine",
    "StoreError",
    "accepted_updates",
    "audit_log",
    "clients",
    "governance_secrets",
    "metadata",
    "model_versions",
    "model_weights",
    "pilot_evaluations",
    "postgres_grants",
    "rejections",
    "rounds",
    "runs",
]
