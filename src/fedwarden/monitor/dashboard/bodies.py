"""The JSON bodies of the dashboard API: immutable, and unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedwarden.core.records import round_number
from fedwarden.governance.registry import DEFAULT_THRESHOLD


class _Body(BaseModel):
    """A JSON body of the API: immutable, and unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Body):
    """Why a request was refused."""

    detail: str


class HealthStatus(_Body):
    """The dashboard is up and its store answers."""

    status: Literal["ok"]
    runs: int


class RunSummary(_Body):
    """One run of the store: its name, status, run directory and privacy budget."""

    run_id: str
    name: str
    status: str
    message: str
    run_dir: str
    created_at: datetime
    finished_at: datetime | None
    budget_epsilon: float | None = Field(description="The run's epsilon budget; None without DP.")
    budget_delta: float | None


class RoundPoint(_Body):
    """The figures of one completed round, as the run store's round record holds them.

    ``round`` counts from 1; the store's record keys it by ``round_index``, from 0.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    round: int = Field(description="The round, counted from 1.")
    accuracy: float | None = None
    loss: float | None = None
    epsilon: Annotated[
        float | None, Field(description="Cumulative epsilon spent after the round.")
    ] = None
    epsilon_projected: float | None = None
    sampled: int = 0
    participants: int = 0
    dropped: int = 0
    failed: int = 0
    rejected: int = 0
    rejection_reasons: dict[str, int] = Field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    applied: bool = True
    flagged: list[str] = Field(default_factory=list)
    quarantined: list[str] = Field(default_factory=list)
    note: str = ""

    @model_validator(mode="before")
    @classmethod
    def _number_from_one(cls, record: Any) -> Any:
        """Read figures stored before rounds were numbered from 1 (``round_index``, from 0)."""
        if isinstance(record, dict) and "round_index" in record:
            index = record["round_index"]
            rest = {key: value for key, value in record.items() if key != "round_index"}
            return {**rest, "round": round_number(index) if isinstance(index, int) else index}
        return record


class RunRounds(_Body):
    """A run's rounds so far, with the budget its epsilon is spent against."""

    run_id: str
    budget_epsilon: float | None
    budget_delta: float | None
    rounds: list[RoundPoint]
    problem: Annotated[
        str | None, Field(description="Why the rounds could not be read (then none are listed).")
    ] = None


class ClientRejection(_Body):
    """One update of a client that the server refused."""

    round: int | None = Field(description="The round, counted from 1 (None: outside one).")
    reason: str
    message: str
    rejected_at: datetime


class ClientStatus(_Body):
    """What one client did in a run: sampled, accepted, refused, flagged, quarantined."""

    client_id: str
    enrolled: bool
    sampled_rounds: list[int]
    accepted_updates: int
    rejections: list[ClientRejection]
    flagged_rounds: list[int]
    quarantined: bool


class RunClients(_Body):
    """The clients of one run."""

    run_id: str
    clients: list[ClientStatus]


class Verification(_Body):
    """Whether the whole audit log verified with its public key."""

    checked: bool = Field(description="False when the dashboard was given no public key.")
    ok: bool | None
    entries: int
    first_bad: int | None
    problem: str
    last_hash: str | None


class AuditEntryView(_Body):
    """One audit entry; ``payload`` is the canonical JSON of its event."""

    sequence: int
    timestamp: str
    kind: str
    payload: str
    entry_hash: str


class AuditView(_Body):
    """The latest audit entries (newest first) and the verification of the whole log."""

    verification: Verification
    total_entries: int
    entries: list[AuditEntryView]


class ModelView(_Body):
    """One registered model version and its stage."""

    reference: str
    model: str
    version: str
    run_id: str
    parent: str | None
    stage: str
    rounds: int
    participants: int
    metrics: dict[str, Any]
    recorded_accuracy: float | None
    pilot_accuracy: float | None
    rolled_back: bool
    weights_deleted: bool
    registered_at: datetime
    promoted_at: datetime | None


class RegistryView(_Body):
    """Every registered version, and whether this dashboard may change stages."""

    can_change: bool
    cannot_change_because: str
    models: list[ModelView]


class PromoteRequest(_Body):
    """Promote a candidate: who decides, its pilot accuracy, or an override with a reason."""

    by: Annotated[str, Field(min_length=1, max_length=200)]
    pilot_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_THRESHOLD
    override: bool = False
    reason: Annotated[str, Field(max_length=2000)] = ""


class RollbackRequest(_Body):
    """Roll back the production version of ``model`` (optional when only one model serves)."""

    by: Annotated[str, Field(min_length=1, max_length=200)]
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
