"""Staged rollout: pilot evaluations, promotion against the production baseline, rollback."""

from __future__ import annotations

import builtins
import json
import logging
import math
from datetime import UTC, datetime

from sqlalchemy import Connection, func, insert, select, update

from fedwarden.governance.audit import ModelPromoted, ModelRolledBack, PilotEvaluated
from fedwarden.governance.registry.reading import RegistryReader
from fedwarden.governance.registry.records import (
    DEFAULT_THRESHOLD,
    ModelVersion,
    PilotEvaluation,
    RegistryError,
    Stage,
    version_from,
)
from fedwarden.governance.store import model_versions, pilot_evaluations

logger = logging.getLogger(__name__)


class Rollout(RegistryReader):
    """Moves versions between stages, each change audited with its reason."""

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
            previous = version_from(row)
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
