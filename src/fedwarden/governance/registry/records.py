"""The registry's records: a model version, a pilot evaluation, semantic versions, weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import Row

from fedwarden.core.errors import FedwardenError
from fedwarden.core.params import VECTOR_DTYPE, ParamSpec, Vector

Stage = Literal["candidate", "production", "deprecated"]
Bump = Literal["major", "minor", "patch"]
DEFAULT_THRESHOLD = 0.02
WEIGHTS_DTYPE = np.dtype("<f4")


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


def version_from(row: Row[Any]) -> ModelVersion:
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
        if len(weights) % WEIGHTS_DTYPE.itemsize:
            raise RegistryError(
                f"weights of {len(weights)} bytes are not whole float32 values; give the raw "
                "little-endian float32 bytes of the flat parameter vector"
            )
        vector = np.frombuffer(weights, dtype=WEIGHTS_DTYPE).astype(VECTOR_DTYPE)
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
