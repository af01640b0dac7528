"""MLflow tracking of a run: its config, each round's figures, and the final model.

Tracking is on when the ``mlflow`` library is importable (``pip install fedwarden[mlflow]``)
and a tracking URI is set: ``[monitoring] mlflow_tracking_uri``, or else the
``MLFLOW_TRACKING_URI`` environment variable. A fedwarden run is then one MLflow run, in the
experiment ``[monitoring] mlflow_experiment``, named after the fedwarden run id and tagged
with it (``fedwarden.run_id``), so that a resumed run continues the same MLflow run:

* params: the run config flattened to dotted keys (``privacy.epsilon``), values as JSON
  (strings as they are); the webhook and tracking URIs are left out, as they may hold secrets;
* metrics, at step = the round index: :data:`ROUND_METRICS` of each round's
  :class:`~fedwarden.core.records.RoundRecord` (None values are skipped);
* at the end: ``model.npz`` and ``param_spec.json`` as artifacts under ``model/``, the
  registered version (``MODEL@X.Y.Z``) as the tag ``fedwarden.registered_version``, and the
  run marked finished; a federated run that raises instead is marked failed.

Tracking never fails a federated round: the first MLflow error is logged as a warning and
tracking stays off for the rest of the run, so that a tracking server that does not answer
does not add its retries to every round. Tracking runs inside the round, so each MLflow call
is bounded by :data:`HTTP_LIMITS` (no retries, a 5 s timeout) unless the environment sets
those MLflow variables itself: an unreachable server costs one timeout, once. The tracking
URI may carry credentials (``http://user:password@host``), and MLflow's errors repeat it:
every warning logged here has the URIs' userinfo replaced by ``***``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedwarden.core.config import RunConfig
from fedwarden.core.records import RoundRecord, round_number
from fedwarden.server.rundir import RunDirectory

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

ROUND_METRICS = (
    "accuracy",
    "loss",
    "train_loss",
    "epsilon",
    "participants",
    "dropped",
    "rejected",
    "bytes_up",
    "bytes_down",
)
"""The RoundRecord fields logged as MLflow metrics after each round."""
RUN_ID_TAG = "fedwarden.run_id"
REGISTERED_VERSION_TAG = "fedwarden.registered_version"
MODEL_ARTIFACT_PATH = "model"
UNTRACKED_PARAMS = frozenset({"monitoring.webhook_url", "monitoring.mlflow_tracking_uri"})
"""Config keys never sent to MLflow: URLs that may carry tokens or passwords."""
PARAMS_PER_BATCH = 100
"""MLflow accepts at most 100 params in one ``log_batch`` call."""
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
"""MLflow's HTTP settings while tracking calls run (its defaults retry for minutes)."""
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
"""A URI's ``scheme://userinfo@``: up to the authority's last ``@`` (a password may hold one)."""
_HTTP_LIMITS_LOCK = threading.Lock()


def tracking_uri(config: RunConfig) -> str | None:
    """The MLflow tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else None (off)."""
    return config.monitoring.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def config_params(config: RunConfig) -> dict[str, str]:
    """The config as MLflow params: dotted keys, JSON values (strings as they are)."""

    def flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, Mapping):
            for key, item in value.items():
                yield from flatten(f"{prefix}.{key}" if prefix else str(key), item)
        elif prefix not in UNTRACKED_PARAMS:
            yield prefix, value if isinstance(value, str) else json.dumps(value)

    return dict(flatten("", config.model_dump(mode="json")))


def redact_userinfo(text: str) -> str:
    """``text`` with the userinfo (``user:password@``) of every URI in it replaced by ``***@``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


@contextmanager
def http_limits() -> Iterator[None]:
    """Apply :data:`HTTP_LIMITS` to the MLflow calls inside, except those the environment sets."""
    with _HTTP_LIMITS_LOCK:
        unset = {name: value for name, value in HTTP_LIMITS.items() if name not in os.environ}
        os.environ.update(unset)
        try:
            yield
        finally:
            for name in unset:
                os.environ.pop(name, None)


def _warn(message: str, error: Exception, *args: object) -> None:
    """Log ``message`` as a warning with ``error``'s type and its redacted text as the last args."""
    logger.warning(message, *args, type(error).__name__, redact_userinfo(str(error)))


def round_metrics(record: RoundRecord) -> dict[str, float]:
    """The figures of :data:`ROUND_METRICS` that ``record`` has (None values left out)."""
    values = {name: getattr(record, name) for name in ROUND_METRICS}
    return {name: float(value) for name, value in values.items() if value is not None}


class MlflowTracking:
    """Logs one fedwarden run to one MLflow run; errors turn tracking off with a warning.

    Ending the MLflow run (:meth:`run_finished` or :meth:`run_failed`) turns tracking off too,
    so that whichever comes second changes nothing.
    """

    def __init__(self, client: MlflowClient, mlflow_run_id: str) -> None:
        self.client = client
        self.mlflow_run_id = mlflow_run_id
        self.active = True

    def round_completed(self, record: RoundRecord) -> None:
        """Log the round's metrics at step ``record.round_index``."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(name, value, timestamp, record.round_index)
            for name, value in round_metrics(record).items()
        ]
        self._safely(
            f"round {round_number(record.round_index)}'s metrics",
            lambda: self.client.log_batch(self.mlflow_run_id, metrics=metrics),
        )

    def run_finished(self, model_dir: Path | None, registered_version: str | None) -> None:
        """Log the final model's files in ``model_dir`` and the registered version; finish."""

        def finish() -> None:
            run_dir = None if model_dir is None else RunDirectory(model_dir)
            files = [] if run_dir is None else [run_dir.model_path, run_dir.param_spec_path]
            for path in files:
                if path.exists():
                    self.client.log_artifact(self.mlflow_run_id, str(path), MODEL_ARTIFACT_PATH)
            if registered_version is not None:
                self.client.set_tag(self.mlflow_run_id, REGISTERED_VERSION_TAG, registered_version)
            self.client.set_terminated(self.mlflow_run_id, "FINISHED")

        self._safely("the final model", finish)
        self.active = False

    def run_failed(self) -> None:
        """Mark the MLflow run failed, as the federated run raised; never raises."""
        self._safely(
            "the run's failure",
            lambda: self.client.set_terminated(self.mlflow_run_id, "FAILED"),
        )
        self.active = False

    def _safely(self, what: str, call: Callable[[], object]) -> None:
        """Run ``call`` while tracking is on; if MLflow raises, warn and turn tracking off."""
        if not self.active:
            return
        try:
            with http_limits():
                call()
        except Exception as error:  # tracking must never fail a round; MLflow raises many kinds
            self.active = False
            _warn(
                "MLflow tracking could not log %s (%s: %s); tracking is off for the rest of "
                "this run, which continues",
                error,
                what,
            )


def start_tracking(config: RunConfig, run_id: str) -> MlflowTracking | None:
    """The MLflow tracking of run ``run_id``, or None when it is off or MLflow cannot start it.

    Opens (or, for a resumed run, finds by its ``fedwarden.run_id`` tag) the MLflow run and
    logs the config as its params. Without a tracking URI nothing is imported or logged.
    """
    uri = tracking_uri(config)
    if uri is None:
        return None
    try:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        logger.warning(
            "an MLflow tracking URI is set but mlflow is not installed; install "
            "fedwarden[mlflow] to track runs (this run is not tracked)"
        )
        return None
    section = config.monitoring
    try:
        with http_limits():
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(section.mlflow_experiment)
            experiment_id = (
                client.create_experiment(section.mlflow_experiment)
                if experiment is None
                else experiment.experiment_id
            )
            found = client.search_runs(
                [experiment_id], f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1
            )
            if found:
                mlflow_run_id = found[0].info.run_id
                logger.info("continuing MLflow run %s of %s", mlflow_run_id, run_id)
            else:
                mlflow_run_id = client.create_run(
                    experiment_id, run_name=run_id, tags={RUN_ID_TAG: run_id}
                ).info.run_id
                params = [Param(key, value) for key, value in config_params(config).items()]
                for start in range(0, len(params), PARAMS_PER_BATCH):
                    batch = params[start : start + PARAMS_PER_BATCH]
                    client.log_batch(mlflow_run_id, params=batch)
    except Exception as error:  # tracking must never stop a run; MLflow raises many kinds
        _warn("MLflow tracking could not start (%s: %s); this run is not tracked", error)
        return None
    logger.info("tracking %s as MLflow run %s", run_id, mlflow_run_id)
    return MlflowTracking(client, mlflow_run_id)
