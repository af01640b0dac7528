"""Registering versions from runs, and retention of old versions' weights."""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from fedwarden.core.params import ParamSpec
from fedwarden.governance.audit import ModelRegistered, RetentionDeletion, canonical_json
from fedwarden.governance.registry.reading import RegistryReader
from fedwarden.governance.registry.records import (
    WEIGHTS_DTYPE,
    Bump,
    ModelVersion,
    RegistryError,
    next_version,
    weights_vector,
)
from fedwarden.governance.store import model_versions, model_weights, runs

logger = logging.getLogger(__name__)


class Registration(RegistryReader):
    """Adds versions, audited; deletes old weights under retention, audited."""

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
        content = weights_vector(weights, spec).astype(WEIGHTS_DTYPE).tobytes()
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
