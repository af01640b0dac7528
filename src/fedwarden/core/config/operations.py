"""Config sections of how a run is operated: where clients run, monitoring, model rollout."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from fedwarden.core.alerts import check_webhook_url
from fedwarden.core.config.section import Section


class RuntimeConfig(Section):
    """Where clients run."""

    kind: Literal["local", "inprocess", "ray", "grpc"] = "local"
    """``inprocess`` trains the clients in the server's own process: no workers to start."""
    workers: Annotated[int, Field(ge=1)] | None = None
    """Worker processes (local) or actors (ray); default one per core."""
    address: str | None = None
    """Ray cluster address (``host:6379``, ``ray://host:10001``, ``auto``); default: a local one."""
    heartbeat_s: Annotated[float, Field(gt=0)] = 30.0
    """grpc: how often clients signal they are alive; silent for three periods means lost."""
    join_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """grpc: how long the server waits for every client to join before the first round."""
    stream_deadline_s: Annotated[float, Field(gt=0)] = 30.0
    """grpc: a stream's first message and each next chunk arrive within this, or it is cut."""
    calls_per_client: Annotated[int, Field(ge=4)] = 8
    """grpc: calls one client (certificate) may have in progress at once; more are refused."""

    @model_validator(mode="after")
    def _workers_where_there_are_workers(self) -> RuntimeConfig:
        if self.kind == "inprocess" and self.workers is not None:
            raise ValueError(
                "runtime.workers is for the local and ray runtimes; the inprocess runtime trains "
                "in the server's own process: drop workers, or use kind 'local' for processes"
            )
        return self


class MonitoringConfig(Section):
    """Alert rules checked after every round (log, audit log, optional webhook); MLflow."""

    loss_patience: Annotated[int, Field(ge=1)] = 5
    """Alert when the central loss has not improved for this many rounds."""
    max_dropout_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    silent_rounds: Annotated[int, Field(ge=1)] = 3
    """Alert when a client is sampled this many rounds in a row without delivering."""
    budget_warning_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    accuracy_floor: Annotated[float, Field(ge=0, le=1)] | None = None
    webhook_url: Annotated[str, AfterValidator(check_webhook_url)] | None = None
    """Each alert is POSTed here as JSON."""
    mlflow_tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    """MLflow tracking server or store (``http://host:5000``); default ``MLFLOW_TRACKING_URI``."""
    mlflow_experiment: Annotated[str, Field(min_length=1)] = "fedwarden"
    """The MLflow experiment that tracked runs go to."""


class RolloutConfig(Section):
    """Staged rollout: the final model evaluated federatedly on pilot clients before promotion.

    At the end of a completed deployment run (the grpc runtime, which keeps a
    model registry), ``pilot_clients`` clients drawn with the run's seed
    evaluate the new candidate version and the production version on their
    own test data; the registry records both accuracies (audited) and a later
    promotion compares them. 0 evaluates nothing.
    """

    pilot_clients: Annotated[int, Field(ge=0)] = 0
