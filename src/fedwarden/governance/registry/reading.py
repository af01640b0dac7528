"""Reading the registry: versions by reference, the production version, pilots, weights."""

from __future__ import annotations

import builtins
import hashlib
import json

import numpy as np
from sqlalchemy import Connection, select

from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.governance.audit import AuditLog
from fedwarden.governance.registry.records import (
    WEIGHTS_DTYPE,
    ModelVersion,
    PilotEvaluation,
    RegistryError,
    version_from,
)
from fedwarden.governance.store import RunStore, model_versions, model_weights, pilot_evaluations


class RegistryReader:
    """The registry's versions as the store holds them; the base of every group of changes."""

    def __init__(self, store: RunStore, audit: AuditLog | None) -> None:
        if audit is not None and audit.store is not store:
            raise RegistryError(
                "the audit log belongs to another run store; give the registry the audit log "
                "of the store it keeps versions in"
            )
        self.store = store
        self.audit = audit

    def list(self, name: str | None = None) -> builtins.list[ModelVersion]:
        """Every version (of model ``name`` if given), by model and semantic version."""
        query = select(model_versions).order_by(
            model_versions.c.model,
            model_versions.c.major,
            model_versions.c.minor,
            model_versions.c.patch,
        )
        if name is not None:
            query = query.where(model_versions.c.model == name)
        with self.store.reading() as connection:
            return [version_from(row) for row in connection.execute(query).all()]

    def show(self, version: str) -> ModelVersion:
        """The version named ``MODEL@X.Y.Z`` (or ``X.Y.Z`` where only one model has it)."""
        with self.store.reading() as connection:
            return self._resolve(connection, version)

    def production(self, name: str) -> ModelVersion | None:
        """The version of model ``name`` now in production, if any."""
        with self.store.reading() as connection:
            return self._production(connection, name)

    def pilot(self, version: str) -> PilotEvaluation | None:
        """The latest pilot evaluation of ``version``, if it had one."""
        with self.store.reading() as connection:
            found = self._resolve(connection, version)
            return self._latest_pilot(connection, found)

    def weights(self, version: str) -> Vector:
        """The flat parameter vector of a version, checked against its recorded SHA-256."""
        with self.store.reading() as connection:
            found = self._resolve(connection, version)
            blob = connection.execute(
                select(model_weights.c.weights).where(
                    model_weights.c.model == found.model,
                    model_weights.c.version == found.version,
                )
            ).scalar_one_or_none()
        if blob is None:
            raise RegistryError(
                f"the weights of {found.reference} were deleted by retention; its metadata and "
                "lineage remain (`fedwarden models show`)"
            )
        content = bytes(blob)
        if hashlib.sha256(content).hexdigest() != found.weights_sha256:
            raise RegistryError(
                f"the stored weights of {found.reference} do not match their recorded SHA-256 "
                f"{found.weights_sha256}; they were altered, do not serve them"
            )
        return np.frombuffer(content, dtype=WEIGHTS_DTYPE).astype(VECTOR_DTYPE)

    def _require_audit(self, action: str) -> AuditLog:
        """The audit log, or a refusal: every registry change must be audited."""
        if self.audit is None:
            raise RegistryError(
                f"cannot {action} without the audit log: every registry change is audited; "
                "open the registry with an AuditLog (on the command line: --audit-key FILE)"
            )
        return self.audit

    @staticmethod
    def _require_actor(by: str) -> None:
        """Refuse a change that does not say who made it."""
        if not by.strip():
            raise RegistryError("say who makes this change (by); the audit log records it")

    @staticmethod
    def _production(connection: Connection, name: str) -> ModelVersion | None:
        """The production version of model ``name``, if any."""
        row = connection.execute(
            select(model_versions).where(
                model_versions.c.model == name, model_versions.c.stage == "production"
            )
        ).one_or_none()
        return None if row is None else version_from(row)

    @staticmethod
    def _latest_pilot(connection: Connection, found: ModelVersion) -> PilotEvaluation | None:
        """The most recent pilot evaluation of ``found``, if any."""
        row = connection.execute(
            select(pilot_evaluations)
            .where(
                pilot_evaluations.c.model == found.model,
                pilot_evaluations.c.version == found.version,
            )
            .order_by(pilot_evaluations.c.evaluation_id.desc())
            .limit(1)
        ).one_or_none()
        if row is None:
            return None
        return PilotEvaluation(
            candidate=found.reference,
            clients=tuple(json.loads(row.clients_json)),
            candidate_accuracy=row.accuracy,
            production=None if row.production is None else f"{found.model}@{row.production}",
            production_accuracy=row.production_accuracy,
            evaluated_at=row.evaluated_at,
        )

    @staticmethod
    def _resolve(connection: Connection, reference: str) -> ModelVersion:
        """The version named ``MODEL@X.Y.Z``, or ``X.Y.Z`` where only one model has it."""
        model, separator, version = reference.rpartition("@")
        query = select(model_versions).where(model_versions.c.version == version)
        if separator:
            query = query.where(model_versions.c.model == model)
        rows = connection.execute(query.order_by(model_versions.c.model)).all()
        if not rows:
            raise RegistryError(
                f"there is no model version {reference!r} in the registry; "
                "`fedwarden models list` shows them"
            )
        if len(rows) > 1:
            names = ", ".join(f"{row.model}@{row.version}" for row in rows)
            raise RegistryError(f"version {reference!r} is ambiguous ({names}); write MODEL@X.Y.Z")
        return version_from(rows[0])
