"""The model registry: every trained model version, its lineage, and which one serves.

A version is registered from a run of the :class:`~fedwarden.governance.store.RunStore` and
named after the run (the ``name`` of its config) with a semantic version: ``1.0.0`` first,
then the latest version of that name bumped by ``major``, ``minor`` or ``patch``. It is
referred to as ``MODEL@X.Y.Z``, or as ``X.Y.Z`` alone where only one model has that version.

Stages and the only transitions between them::

    candidate  --promote-->  production  --(another version promoted)-->  deprecated
    deprecated --rollback--> production  --rollback (withdrawn)-->        deprecated

A candidate is promoted only if its pilot accuracy is at most ``threshold`` below the
accuracy of the production version it replaces. The pilot is a federated evaluation on a
subset of clients (``[rollout] pilot_clients``; :meth:`ModelRegistry.record_pilot` keeps
it, audited): when it also evaluated the current production version on the same clients,
that figure is the baseline; otherwise the production version's recorded accuracy (its own
pilot accuracy at promotion, else its registered ``accuracy`` metric). An operator may
override the refusal, with a reason. ``rollback`` withdraws the production version and
restores the one that served most recently before it; a withdrawn version is never restored
by a later rollback. Production and candidate versions are never deprecated any other way.

Weights are kept in the store's ``model_weights`` table as the raw little-endian float32
bytes of the flat parameter vector (never pickled), with their SHA-256 on the version's row;
``export`` writes them as named arrays (``.npz``) with a lineage JSON. Retention deletes the
weights of all but the ``keep_last`` most recently serving deprecated versions of each model
and keeps every version's metadata.

Every change (register, promote, rollback, retention) commits in one transaction with its
entry in the :class:`~fedwarden.governance.audit.AuditLog`, so a registry without an audit
log is read-only.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import Connection, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fedwarden.core.errors import FedwardenError
from fedwarden.core.params import VECTOR_DTYPE, ParamSpec, Vector
from fedwarden.governance.audit import (
    AuditLog,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    PilotEvaluated,
    RetentionDeletion,
    canonical_json,
)
from fedwarden.governance.store import (
    RunStore,
    model_versions,
    model_weights,
    pilot_evaluations,
    runs,
)

logger = logging.getLogger(__name__)

Stage = Literal["candidate", "production", "deprecated"]
Bump = Literal["major", "minor", "patch"]
DEFAULT_THRESHOLD = 0.02
_WEIGHTS_DTYPE = np.dtype("<f4")


class RegistryError(FedwardenError):
    """The model registry was asked for a version or transition its records do not allow."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model: where it came from, how it was trained, its stage."""

    model: str
    version: str
    run_id: str
    parent: str | None
    stage: Stage
    spec_json: str
    rounds: int
    participants: int
    dp: Mapping[str, Any] | None
    metrics: Mapping[str, Any]
    config_hash: str
    data_description: str
    weights_sha256: str
    weights_deleted: bool
    pilot_accuracy: float | None
    rolled_back: bool
    registered_at: datetime
    promoted_at: datetime | None

    @property
    def reference(self) -> str:
        """``MODEL@X.Y.Z``, the name that identifies this version in the registry."""
        return f"{self.model}@{self.version}"

    @property
    def recorded_accuracy(self) -> float | None:
        """Its pilot accuracy at promotion, else its registered ``accuracy`` metric, if any."""
        if self.pilot_accuracy is not None:
            return self.pilot_accuracy
        accuracy = self.metrics.get("accuracy")
        return float(accuracy) if isinstance(accuracy, int | float) else None

    def to_json(self) -> dict[str, Any]:
        """Its fields as JSON values (timestamps in ISO 8601)."""
        return {
            "reference": self.reference,
            "model": self.model,
            "version": self.version,
            "run_id": self.run_id,
            "parent": self.parent,
            "stage": self.stage,
            "rounds": self.rounds,
            "participants": self.participants,
            "dp": None if self.dp is None else dict(self.dp),
            "metrics": dict(self.metrics),
            "config_hash": self.config_hash,
            "data_description": self.data_description,
            "weights_sha256": self.weights_sha256,
            "weights_deleted": self.weights_deleted,
            "pilot_accuracy": self.pilot_accuracy,
            "rolled_back": self.rolled_back,
            "registered_at": self.registered_at.isoformat(),
            "promoted_at": None if self.promoted_at is None else self.promoted_at.isoformat(),
            "param_spec": json.loads(self.spec_json),
        }


@dataclass(frozen=True)
class PilotEvaluation:
    """A candidate's federated evaluation on pilot clients, beside production's on the same ones."""

    candidate: str
    clients: tuple[str, ...]
    candidate_accuracy: float
    production: str | None
    """``MODEL@X.Y.Z`` in production when the pilot ran (None: there was none)."""
    production_accuracy: float | None
    evaluated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """Its fields as JSON values."""
        return {
            "candidate": self.candidate,
            "clients": list(self.clients),
            "candidate_accuracy": self.candidate_accuracy,
            "production": self.production,
            "production_accuracy": self.production_accuracy,
            "evaluated_at": self.evaluated_at.isoformat(),
        }


def _version_from(row: Row[Any]) -> ModelVersion:
    """A ``model_versions`` row as a :class:`ModelVersion`."""
    return ModelVersion(
        model=row.model,
        version=row.version,
        run_id=row.run_id,
        parent=row.parent,
        stage=row.stage,
        spec_json=row.spec_json,
        rounds=row.rounds,
        participants=row.participants,
        dp=None if row.dp_json is None else json.loads(row.dp_json),
        metrics=json.loads(row.metrics_json),
        config_hash=row.config_hash,
        data_description=row.data_description,
        weights_sha256=row.weights_sha256,
        weights_deleted=bool(row.weights_deleted),
        pilot_accuracy=row.pilot_accuracy,
        rolled_back=bool(row.rolled_back),
        registered_at=row.registered_at,
        promoted_at=row.promoted_at,
    )


def next_version(latest: tuple[int, int, int] | None, bump: Bump) -> tuple[int, int, int]:
    """The semantic version after ``latest`` bumped by ``bump``; ``1.0.0`` for the first."""
    if latest is None:
        return (1, 0, 0)
    major, minor, patch = latest
    if bump == "major":
        return (major + 1, 0, 0)
    if bump == "minor":
        return (major, minor + 1, 0)
    if bump == "patch":
        return (major, minor, patch + 1)
    raise RegistryError(f"bump {bump!r} is not a semantic version part; use major, minor or patch")


def weights_vector(weights: Path | str | bytes, spec: ParamSpec) -> Vector:
    """The flat float32 parameter vector held by ``weights``, checked against ``spec``.

    ``weights`` is the raw little-endian float32 bytes of the flat vector, or the path of an
    ``.npz`` of named arrays (as a run directory's ``model.npz``) or an ``.npy`` flat vector;
    files are read without pickle.
    """
    if isinstance(weights, bytes):
        if len(weights) % _WEIGHTS_DTYPE.itemsize:
            raise RegistryError(
                f"weights of {len(weights)} bytes are not whole float32 values; give the raw "
                "little-endian float32 bytes of the flat parameter vector"
            )
        vector = np.frombuffer(weights, dtype=_WEIGHTS_DTYPE).astype(VECTOR_DTYPE)
    else:
        try:
            loaded = np.load(Path(weights), allow_pickle=False)
        except (OSError, ValueError) as error:
            raise RegistryError(
                f"cannot read model weights from {weights}: {error}; give a model.npz of "
                "named arrays or a flat .npy vector (pickled files are refused)"
            ) from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                vector = spec.flatten({name: loaded[name] for name in loaded.files})
        else:
            vector = np.asarray(loaded, dtype=VECTOR_DTYPE).reshape(-1)
    if vector.shape[0] != spec.size:
        raise RegistryError(
            f"weights hold {vector.shape[0]} values, the model's ParamSpec needs {spec.size}; "
            "register the weights with the spec of the same model"
        )
    if not np.all(np.isfinite(vector)):
        raise RegistryError("weights hold NaN or infinite values; a broken model is not registered")
    return vector


class ModelRegistry:
    """The registry of model versions in a run store; every change is audited.

    Safe to call from several threads: every change is one transaction of the store, together
    with its audit entry.
    """

    def __init__(self, store: RunStore, audit: AuditLog | None) -> None:
        if audit is not None and audit.store is not store:
            raise RegistryError(
                "the audit log belongs to another run store; give the registry the audit log "
                "of the store it keeps versions in"
            )
        self.store = store
        self.audit = audit

    # Reading.

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
            return [_version_from(row) for row in connection.execute(query).all()]

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
        return np.frombuffer(content, dtype=_WEIGHTS_DTYPE).astype(VECTOR_DTYPE)

    def export(self, version: str, path: Path | str) -> tuple[Path, Path]:
        """Write a version's arrays (``.npz``, no pickle) and its lineage JSON into ``path``.

        Returns the two files written: ``MODEL-X.Y.Z.npz`` and ``MODEL-X.Y.Z.lineage.json``.
        """
        found = self.show(version)
        vector = self.weights(found.reference)
        spec = ParamSpec.from_json(found.spec_json)
        directory = Path(path)
        stem = f"{found.model}-{found.version}"
        if Path(stem).name != stem:
            raise RegistryError(
                f"model name {found.model!r} is not a plain file name; export it with the "
                "registry API under a name of your choice"
            )
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        tensors: dict[str, Any] = spec.views(vector)
        np.savez(buffer, **tensors)
        arrays_path = directory / f"{stem}.npz"
        arrays_path.write_bytes(buffer.getvalue())
        lineage_path = directory / f"{stem}.lineage.json"
        lineage_path.write_text(json.dumps(self._lineage(found), indent=2, sort_keys=True) + "\n")
        logger.info("exported %s to %s", found.reference, directory)
        return arrays_path, lineage_path

    def _lineage(self, found: ModelVersion) -> dict[str, Any]:
        """The version's record, its run, and the chain of parents it descends from."""
        ancestors: builtins.list[str] = []
        with self.store.reading() as connection:
            run = connection.execute(
                select(runs.c.name, runs.c.config_hash, runs.c.run_dir, runs.c.status).where(
                    runs.c.run_id == found.run_id
                )
            ).one()
            parent = found.parent
            while parent is not None and parent not in ancestors:
                ancestors.append(parent)
                parent = self._resolve(connection, parent).parent
        return {
            **found.to_json(),
            "run": {"run_id": found.run_id, **run._asdict()},
            "ancestors": ancestors,
        }

    # Changes.

    def register(
        self,
        run_id: str,
        parent: str | None,
        weights: Path | str | bytes,
        spec_json: str,
        *,
        rounds: int,
        participants: int,
        dp: Mapping[str, Any] | None,
        metrics: Mapping[str, Any],
        config_hash: str,
        data_description: str,
        bump: Bump = "minor",
    ) -> ModelVersion:
        """Register the weights trained by run ``run_id`` as the next candidate of its model.

        The model is named after the run; ``parent`` (``MODEL@X.Y.Z``) is the version it was
        trained from, if any; ``config_hash`` must be the run's recorded config hash.
        """
        audit = self._require_audit("register a model version")
        spec = ParamSpec.from_json(spec_json)
        content = weights_vector(weights, spec).astype(_WEIGHTS_DTYPE).tobytes()
        if rounds < 0 or participants < 0:
            raise RegistryError(
                f"rounds ({rounds}) and participants ({participants}) cannot be negative"
            )
        metrics_json = canonical_json(dict(metrics))
        dp_json = None if dp is None else canonical_json(dict(dp))
        try:
            with self.store.transaction() as connection:
                run = connection.execute(
                    select(runs.c.name, runs.c.config_hash).where(runs.c.run_id == run_id)
                ).one_or_none()
                if run is None:
                    raise RegistryError(
                        f"there is no run {run_id!r} in the store; a model is registered from a "
                        "run the store recorded"
                    )
                if run.config_hash != config_hash:
                    raise RegistryError(
                        f"config hash {config_hash} is not run {run_id!r}'s recorded config "
                        f"hash {run.config_hash}; register the weights with the run that "
                        "trained them"
                    )
                parent_reference = (
                    None if parent is None else self._resolve(connection, parent).reference
                )
                latest = connection.execute(
                    select(model_versions.c.major, model_versions.c.minor, model_versions.c.patch)
                    .where(model_versions.c.model == run.name)
                    .order_by(
                        model_versions.c.major.desc(),
                        model_versions.c.minor.desc(),
                        model_versions.c.patch.desc(),
                    )
                    .limit(1)
                ).one_or_none()
                major, minor, patch = next_version(None if latest is None else tuple(latest), bump)
                version = f"{major}.{minor}.{patch}"
                weights_sha256 = hashlib.sha256(content).hexdigest()
                connection.execute(
                    insert(model_versions).values(
                        model=run.name,
                        version=version,
                        major=major,
                        minor=minor,
                        patch=patch,
                        run_id=run_id,
                        parent=parent_reference,
                        stage="candidate",
                        spec_json=spec_json,
                        rounds=rounds,
                        participants=participants,
                        dp_json=dp_json,
                        metrics_json=metrics_json,
                        config_hash=config_hash,
                        data_description=data_description,
                        weights_sha256=weights_sha256,
                        weights_deleted=False,
                        pilot_accuracy=None,
                        production_order=None,
                        rolled_back=False,
                        registered_at=datetime.now(UTC),
                    )
                )
                connection.execute(
                    insert(model_weights).values(model=run.name, version=version, weights=content)
                )
                audit.append_within(
                    connection,
                    ModelRegistered(
                        model=run.name,
                        version=version,
                        run_id=run_id,
                        parent=parent_reference,
                        weights_sha256=weights_sha256,
                        config_hash=config_hash,
                        rounds=rounds,
                        participants=participants,
                        dp=None if dp_json is None else json.loads(dp_json),
                        metrics=json.loads(metrics_json),
                        data_description=data_description,
                    ),
                )
        except IntegrityError as error:
            raise RegistryError(
                f"another process registered a version of run {run_id!r}'s model at the same "
                "time; register again to get the next version"
            ) from error
        logger.info("registered %s@%s from run %s", run.name, version, run_id)
        return self.show(f"{run.name}@{version}")

    def record_pilot(
        self,
        version: str,
        by: str,
        clients: builtins.list[str],
        accuracy: float,
        production: str | None,
        production_accuracy: float | None,
    ) -> PilotEvaluation:
        """Record a candidate's pilot evaluation (and production's on the same clients), audited."""
        audit = self._require_audit("record a pilot evaluation")
        self._require_actor(by)
        if not clients:
            raise RegistryError("a pilot evaluation names the clients it ran on; none were given")
        for figure in (accuracy, production_accuracy):
            if figure is not None and not (math.isfinite(figure) and 0.0 <= figure <= 1.0):
                raise RegistryError(f"pilot accuracy {figure} is not a fraction in [0, 1]")
        with self.store.transaction() as connection:
            candidate = self._resolve(connection, version)
            if candidate.stage != "candidate":
                raise RegistryError(
                    f"{candidate.reference} is {candidate.stage}; only candidates are piloted"
                )
            current = None if production is None else self._resolve(connection, production)
            if current is not None and (
                current.model != candidate.model or current.stage != "production"
            ):
                raise RegistryError(
                    f"{current.reference} is {current.stage} of model {current.model!r}; a pilot "
                    f"compares {candidate.reference} with the production version of its own model"
                )
            connection.execute(
                insert(pilot_evaluations).values(
                    model=candidate.model,
                    version=candidate.version,
                    clients_json=json.dumps(sorted(clients)),
                    accuracy=accuracy,
                    production=None if current is None else current.version,
                    production_accuracy=production_accuracy,
                    evaluated_at=datetime.now(UTC),
                )
            )
            audit.append_within(
                connection,
                PilotEvaluated(
                    model=candidate.model,
                    version=candidate.version,
                    clients=tuple(sorted(clients)),
                    accuracy=accuracy,
                    production=None if current is None else current.reference,
                    production_accuracy=production_accuracy,
                    by=by,
                ),
            )
            recorded = self._latest_pilot(connection, candidate)
        assert recorded is not None
        logger.info(
            "pilot of %s on %d clients: accuracy %.4f", candidate.reference, len(clients), accuracy
        )
        return recorded

    def promote(
        self,
        version: str,
        by: str,
        pilot_accuracy: float | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        override: bool = False,
        reason: str = "",
    ) -> ModelVersion:
        """Move a candidate to production, demoting the production version to deprecated.

        ``pilot_accuracy`` None takes the candidate's latest recorded pilot evaluation, whose
        figure for the production version on the same clients is then the baseline (else the
        production version's recorded accuracy). Refused when the candidate's pilot accuracy
        is more than ``threshold`` below the baseline (or unknown while the baseline is known),
        unless ``override`` is True with a ``reason``; the override is audited.
        """
        audit = self._require_audit("promote a model version")
        self._require_actor(by)
        if pilot_accuracy is not None and not (
            math.isfinite(pilot_accuracy) and 0.0 <= pilot_accuracy <= 1.0
        ):
            raise RegistryError(f"pilot accuracy {pilot_accuracy} is not a fraction in [0, 1]")
        if not (math.isfinite(threshold) and threshold >= 0.0):
            raise RegistryError(f"threshold {threshold} must be a finite number >= 0")
        if override and not reason.strip():
            raise RegistryError("an override needs a reason; say why the refusal is overruled")
        with self.store.transaction() as connection:
            candidate = self._resolve(connection, version)
            if candidate.stage != "candidate":
                raise RegistryError(self._not_a_candidate(candidate))
            current = self._production(connection, candidate.model)
            baseline = None if current is None else current.recorded_accuracy
            pilot = self._latest_pilot(connection, candidate) if pilot_accuracy is None else None
            if pilot is not None:
                pilot_accuracy = pilot.candidate_accuracy
                evaluated = pilot.production_accuracy is not None
                if current is not None and pilot.production == current.reference and evaluated:
                    baseline = pilot.production_accuracy
            if current is not None and baseline is not None and not override:
                self._check_staged_rollout(candidate, current, baseline, pilot_accuracy, threshold)
            if current is not None:
                self._set_stage(connection, current, "deprecated")
            self._enter_production(connection, candidate, pilot_accuracy)
            audit.append_within(
                connection,
                ModelPromoted(
                    model=candidate.model,
                    version=candidate.version,
                    from_stage="candidate",
                    to_stage="production",
                    by=by,
                    override=override,
                    reason=reason,
                    replaced=None if current is None else current.version,
                    pilot_accuracy=pilot_accuracy,
                    baseline_accuracy=baseline,
                    threshold=threshold,
                ),
            )
        logger.info(
            "%s promoted %s to production%s",
            by,
            candidate.reference,
            " (override)" if override else "",
        )
        return self.show(candidate.reference)

    def rollback(self, by: str, name: str | None = None) -> ModelVersion:
        """Withdraw the production version of ``name`` and restore the one that served before.

        ``name`` may be omitted when only one model has a production version.
        """
        audit = self._require_audit("roll back a model")
        self._require_actor(by)
        with self.store.transaction() as connection:
            model = self._model_to_roll_back(connection, name)
            current = self._production(connection, model)
            if current is None:
                raise RegistryError(
                    f"model {model!r} has no production version; there is nothing to roll back"
                )
            row = connection.execute(
                select(model_versions)
                .where(
                    model_versions.c.model == model,
                    model_versions.c.stage == "deprecated",
                    model_versions.c.rolled_back.is_(False),
                    model_versions.c.production_order.is_not(None),
                )
                .order_by(model_versions.c.production_order.desc())
                .limit(1)
            ).one_or_none()
            if row is None:
                raise RegistryError(
                    f"{current.reference} is the first production version of {model!r}; there "
                    "is no earlier version to roll back to"
                )
            previous = _version_from(row)
            if previous.weights_deleted:
                raise RegistryError(
                    f"the weights of {previous.reference}, the previous production version, "
                    "were deleted by retention; promote a candidate instead"
                )
            self._set_stage(connection, current, "deprecated", rolled_back=True)
            self._enter_production(connection, previous, previous.pilot_accuracy)
            audit.append_within(
                connection,
                ModelRolledBack(
                    model=model, from_version=current.version, to_version=previous.version, by=by
                ),
            )
        logger.info("%s rolled %s back to %s", by, current.reference, previous.version)
        return self.show(previous.reference)

    def apply_retention(self, keep_last: int, by: str) -> builtins.list[str]:
        """Delete the weights of all but ``keep_last`` deprecated versions of each model.

        The deprecated versions that served most recently keep their weights (so a rollback
        can still reach them); every version keeps its metadata. Returns the references whose
        weights were deleted, each deletion audited as a :class:`RetentionDeletion`.
        """
        audit = self._require_audit("apply retention")
        self._require_actor(by)
        if keep_last < 0:
            raise RegistryError(f"keep_last {keep_last} must be >= 0")
        with self.store.reading() as connection:
            rows = connection.execute(
                select(model_versions.c.model, model_versions.c.version)
                .where(
                    model_versions.c.stage == "deprecated",
                    model_versions.c.weights_deleted.is_(False),
                )
                .order_by(model_versions.c.model, model_versions.c.production_order.desc())
            ).all()
        kept: dict[str, int] = {}
        deleted: builtins.list[str] = []
        for model, version in rows:
            kept[model] = kept.get(model, 0) + 1
            if kept[model] <= keep_last:
                continue
            with self.store.transaction() as connection:
                removed = connection.execute(
                    update(model_versions)
                    .where(
                        model_versions.c.model == model,
                        model_versions.c.version == version,
                        model_versions.c.stage == "deprecated",
                        model_versions.c.weights_deleted.is_(False),
                    )
                    .values(weights_deleted=True)
                ).rowcount
                if removed == 0:
                    continue
                connection.execute(
                    delete(model_weights).where(
                        model_weights.c.model == model, model_weights.c.version == version
                    )
                )
                audit.append_within(
                    connection,
                    RetentionDeletion(what="model_weights", target=f"{model}@{version}", by=by),
                )
            deleted.append(f"{model}@{version}")
            logger.info("retention: %s deleted the weights of %s@%s", by, model, version)
        return deleted

    # Helpers.

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
    def _not_a_candidate(found: ModelVersion) -> str:
        """Why a version that is not a candidate cannot be promoted."""
        if found.stage == "production":
            return f"{found.reference} is already in production"
        return (
            f"{found.reference} is deprecated; a deprecated version returns to production only "
            "through rollback, or register its weights again as a new candidate"
        )

    @staticmethod
    def _check_staged_rollout(
        candidate: ModelVersion,
        current: ModelVersion,
        baseline: float,
        pilot_accuracy: float | None,
        threshold: float,
    ) -> None:
        """Refuse a candidate that did worse in its pilot than production by over ``threshold``."""
        if pilot_accuracy is None:
            raise RegistryError(
                f"promoting {candidate.reference} over {current.reference} (recorded accuracy "
                f"{baseline:.4f}) needs the candidate's pilot accuracy; give it, or override "
                "with a reason"
            )
        if pilot_accuracy < baseline - threshold:
            raise RegistryError(
                f"{candidate.reference} had pilot accuracy {pilot_accuracy:.4f}, "
                f"{baseline - pilot_accuracy:.4f} below production {current.reference} "
                f"({baseline:.4f}); the staged rollout allows at most {threshold:.4f} less. "
                "Override with a reason to promote it anyway"
            )

    @staticmethod
    def _set_stage(
        connection: Connection, found: ModelVersion, stage: Stage, rolled_back: bool = False
    ) -> None:
        """Move ``found`` to ``stage`` (marking it withdrawn if ``rolled_back``)."""
        connection.execute(
            update(model_versions)
            .where(model_versions.c.model == found.model, model_versions.c.version == found.version)
            .values(stage=stage, rolled_back=found.rolled_back or rolled_back)
        )

    @staticmethod
    def _enter_production(
        connection: Connection, found: ModelVersion, pilot_accuracy: float | None
    ) -> None:
        """Make ``found`` the production version, the most recent to serve."""
        last_order = connection.execute(
            select(func.max(model_versions.c.production_order)).where(
                model_versions.c.model == found.model
            )
        ).scalar_one()
        connection.execute(
            update(model_versions)
            .where(model_versions.c.model == found.model, model_versions.c.version == found.version)
            .values(
                stage="production",
                production_order=(last_order or 0) + 1,
                pilot_accuracy=pilot_accuracy,
                promoted_at=datetime.now(UTC),
            )
        )

    @staticmethod
    def _production(connection: Connection, name: str) -> ModelVersion | None:
        """The production version of model ``name``, if any."""
        row = connection.execute(
            select(model_versions).where(
                model_versions.c.model == name, model_versions.c.stage == "production"
            )
        ).one_or_none()
        return None if row is None else _version_from(row)

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
    def _model_to_roll_back(connection: Connection, name: str | None) -> str:
        """``name``, or the one model with a production version when no name is given."""
        if name is not None:
            return name
        serving = builtins.list(
            connection.execute(
                select(model_versions.c.model)
                .where(model_versions.c.stage == "production")
                .order_by(model_versions.c.model)
            ).scalars()
        )
        if len(serving) != 1:
            raise RegistryError(
                f"{len(serving)} models have a production version "
                f"({', '.join(serving) or 'none'}); name the model to roll back"
            )
        return serving[0]

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
        return _version_from(rows[0])
