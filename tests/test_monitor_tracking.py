"""MLflow tracking: a run's config as params, each round's figures, the final model.

Every test tracks to a ``file://`` store under ``tmp_path`` and reads it back through
``MlflowClient``, as a user of the MLflow UI would see it.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fedwarden.build.monitoring import build_monitoring
from fedwarden.core.config import RunConfig
from fedwarden.core.params import ParamSpec
from fedwarden.core.records import RoundRecord
from fedwarden.monitor.alerts import Monitoring
from fedwarden.monitor.tracking import (
    HTTP_LIMITS,
    REGISTERED_VERSION_TAG,
    ROUND_METRICS,
    RUN_ID_TAG,
    MlflowTracking,
    config_params,
    redact_userinfo,
    start_tracking,
)
from fedwarden.server.rundir import RunDirectory

RECORD = RoundRecord(
    round_index=0,
    sampled=4,
    participants=3,
    dropped=1,
    failed=0,
    rejected=0,
    rejection_reasons={},
    applied=True,
    loss=1.5,
    accuracy=0.4,
    train_loss=1.7,
    round_seconds=0.5,
    bytes_up=1000,
    bytes_down=2000,
    epsilon=0.3,
)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file store under tmp_path; MLFLOW_TRACKING_URI unset so only the config turns it on."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # MLflow 3 keeps its file store in maintenance mode behind this opt-in.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def tracked_config(uri: str | None, **changes: object) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "name": "digits",
            "data": {"source": "digits", "num_clients": 3},
            "monitoring": {"mlflow_tracking_uri": uri, **changes},
        }
    )


def only_run(uri: str, experiment: str = "fedwarden") -> Run:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    (run,) = client.search_runs([found.experiment_id])
    return run


def test_a_federated_run_logs_its_config_and_every_rounds_metrics_at_its_step(
    tracking_uri: str, tmp_path: Path
) -> None:
    from fedwarden.build.run import run

    config = RunConfig.from_mapping(
        {
            "name": "digits",
            "rounds": 3,
            "runs_dir": str(tmp_path / "runs"),
            "data": {"source": "digits", "num_clients": 3},
            "sampling": {"cohort_size": 3},
            "runtime": {"kind": "local", "workers": 1},
            "monitoring": {"mlflow_tracking_uri": tracking_uri},
        }
    )
    result = run(config)
    assert result.run_dir is not None
    tracked = only_run(tracking_uri)
    assert tracked.info.run_name == Path(result.run_dir).name
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params == config_params(config)
    assert tracked.data.params["data.num_clients"] == "3"
    assert tracked.data.params["monitoring.mlflow_experiment"] == "fedwarden"
    client = MlflowClient(tracking_uri)
    for name in ("accuracy", "loss", "participants", "bytes_up", "bytes_down"):
        history = client.get_metric_history(tracked.info.run_id, name)
        assert sorted((metric.step, metric.value) for metric in history) == [
            (record.round_index, pytest.approx(float(getattr(record, name))))
            for record in result.history
        ], name
    listed = {item.path for item in client.list_artifacts(tracked.info.run_id, "model")}
    assert listed == {"model/model.npz", "model/param_spec.json"}


def test_the_final_model_and_its_registered_version_are_logged_as_artifacts_and_a_tag(
    tracking_uri: str, tmp_path: Path
) -> None:
    spec = ParamSpec.from_arrays(
        {"weight": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)}
    )
    run_dir = RunDirectory.create(tmp_path / "runs", "digits")
    run_dir.save_model(spec, np.arange(spec.size, dtype=np.float32))
    monitoring = build_monitoring(
        tracked_config(tracking_uri), None, None, run_id=run_dir.path.name
    )
    for index in range(3):
        monitoring.round_completed(replace(RECORD, round_index=index, loss=1.0 / (index + 1)), [])
    monitoring.run_finished(run_dir.path, "digits@1.0.0")

    tracked = only_run(tracking_uri)
    assert tracked.info.run_name == run_dir.path.name
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags[RUN_ID_TAG] == run_dir.path.name
    assert tracked.data.tags[REGISTERED_VERSION_TAG] == "digits@1.0.0"
    client = MlflowClient(tracking_uri)
    listed = {item.path for item in client.list_artifacts(tracked.info.run_id, "model")}
    assert listed == {"model/model.npz", "model/param_spec.json"}
    downloaded = Path(client.download_artifacts(tracked.info.run_id, "model", str(tmp_path / "d")))
    assert (downloaded / "model.npz").read_bytes() == (run_dir.path / "model.npz").read_bytes()
    assert ParamSpec.from_json((downloaded / "param_spec.json").read_text()) == spec
    for name in ROUND_METRICS:
        steps = [metric.step for metric in client.get_metric_history(tracked.info.run_id, name)]
        assert sorted(steps) == [0, 1, 2], name
    losses = client.get_metric_history(tracked.info.run_id, "loss")
    assert {metric.step: metric.value for metric in losses} == pytest.approx(
        {0: 1.0, 1: 0.5, 2: 1 / 3}
    )


def test_without_a_tracking_uri_nothing_is_tracked_or_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monitoring = build_monitoring(tracked_config(None), None, None, run_id="digits-1")
    assert monitoring.tracking is None
    monitoring.round_completed(RECORD, [])
    monitoring.run_finished(tmp_path, "digits@1.0.0")
    assert list(tmp_path.iterdir()) == [], "something was written without a tracking URI"


def test_the_environment_variable_turns_tracking_on_when_the_config_names_no_uri(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    tracking = start_tracking(tracked_config(None, mlflow_experiment="env"), "digits-2")
    assert tracking is not None
    tracking.round_completed(RECORD)
    tracked = only_run(tracking_uri, "env")
    assert tracked.data.metrics["accuracy"] == pytest.approx(0.4)


def test_a_resumed_run_continues_its_mlflow_run(tracking_uri: str) -> None:
    config = tracked_config(tracking_uri)
    first = start_tracking(config, "digits-3")
    again = start_tracking(config, "digits-3")
    other = start_tracking(config, "digits-4")
    assert first is not None and again is not None and other is not None
    assert again.mlflow_run_id == first.mlflow_run_id != other.mlflow_run_id


def test_urls_that_may_hold_secrets_are_not_logged_as_params(tracking_uri: str) -> None:
    config = tracked_config(tracking_uri, webhook_url="https://hooks.example/T0/secret-token")
    assert start_tracking(config, "digits-5") is not None
    params = only_run(tracking_uri).data.params
    assert "monitoring.webhook_url" not in params
    assert "monitoring.mlflow_tracking_uri" not in params
    assert not any("secret-token" in value for value in params.values())
    assert params["monitoring.loss_patience"] == "5"


def test_a_tracking_failure_never_fails_a_round_and_turns_tracking_off(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monitoring = build_monitoring(tracked_config(tracking_uri), None, None, run_id="digits-6")
    tracking = monitoring.tracking
    assert tracking is not None
    calls: list[str] = []

    def unreachable(*args: object, **kwargs: object) -> None:
        calls.append("log_batch")
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(tracking.client, "log_batch", unreachable)
    with caplog.at_level(logging.WARNING, logger="fedwarden.monitor.tracking"):
        monitoring.round_completed(RECORD, [])
        monitoring.round_completed(replace(RECORD, round_index=1), [])
        monitoring.run_finished(None, None)
    assert calls == ["log_batch"], "tracking kept calling MLflow after it failed"
    assert tracking.active is False
    assert "tracking is off for the rest of this run" in caplog.text
    rounds = monitoring.metrics.registry.get_sample_value("fedwarden_rounds_total")
    assert rounds == 2, "the rounds' own monitoring stopped"


def test_a_tracking_store_that_cannot_be_opened_leaves_the_run_untracked(
    tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedwarden.monitor.tracking"):
        tracking = start_tracking(tracked_config("unknown-scheme://nowhere"), "digits-7")
    assert tracking is None
    assert "MLflow tracking could not start" in caplog.text


def test_a_run_that_raised_is_marked_failed_and_a_finished_run_stays_finished(
    tracking_uri: str,
) -> None:
    failing = build_monitoring(tracked_config(tracking_uri), None, None, run_id="digits-8")
    failing.round_completed(RECORD, [])
    failing.run_failed()
    finished = build_monitoring(tracked_config(tracking_uri), None, None, run_id="digits-9")
    finished.run_finished(None, None)
    finished.run_failed()
    client = MlflowClient(tracking_uri)
    statuses = {
        run.info.run_name: run.info.status
        for run in client.search_runs([only_experiment_id(tracking_uri)])
    }
    assert statuses == {"digits-8": "FAILED", "digits-9": "FINISHED"}


def only_experiment_id(uri: str) -> str:
    found = MlflowClient(uri).get_experiment_by_name("fedwarden")
    assert found is not None
    return str(found.experiment_id)


def test_marking_a_run_failed_never_raises(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monitoring = build_monitoring(tracked_config(tracking_uri), None, None, run_id="digits-10")
    assert monitoring.tracking is not None

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(monitoring.tracking.client, "set_terminated", unreachable)
    with caplog.at_level(logging.WARNING, logger="fedwarden.monitor.tracking"):
        monitoring.run_failed()
    assert "could not log the run's failure" in caplog.text
    Monitoring(monitoring.rules, monitoring.metrics).run_failed()


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            "API request to http://alice:S3CRET@127.0.0.1:9/api failed",
            "API request to http://***@127.0.0.1:9/api failed",
        ),
        ("got unsupported URI 'x-db://alice:p@ss@host'", "got unsupported URI 'x-db://***@host'"),
        ("https://token@host and https://host/a@b", "https://***@host and https://host/a@b"),
        ("no URI, only alice@example.org", "no URI, only alice@example.org"),
    ],
)
def test_redaction_removes_every_uris_userinfo_and_nothing_else(text: str, redacted: str) -> None:
    assert redact_userinfo(text) == redacted


class _Unavailable(BaseHTTPRequestHandler):
    """A tracking server that answers every request 503 Service Unavailable (MLflow retries it).

    It records each request as its path and its Authorization header.
    """

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(f"{self.path} {self.headers.get('Authorization', '')}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.do_GET()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def unavailable() -> Iterator[tuple[int, list[str]]]:
    """A local server answering 503 to everything: its port, and the requests it was sent."""
    requests: list[str] = []
    handler = type("Handler", (_Unavailable,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def default_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's HTTP settings unset, as on a host where no one has tuned them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("default_http_settings")
def test_an_unavailable_tracking_server_is_asked_once_then_tracking_turns_off(
    unavailable: tuple[int, list[str]],
) -> None:
    port, requests = unavailable
    uri = f"http://127.0.0.1:{port}"
    assert start_tracking(tracked_config(uri), "digits-11") is None
    assert len(requests) == 1, f"MLflow retried {len(requests) - 1} times before giving up"
    tracking = MlflowTracking(MlflowClient(uri), "0" * 32)
    tracking.round_completed(RECORD)
    tracking.round_completed(replace(RECORD, round_index=1))
    tracking.run_failed()
    assert len(requests) == 2, "tracking kept asking a server that did not answer"
    assert not any(name in os.environ for name in HTTP_LIMITS), "the HTTP limits leaked"


@pytest.mark.usefixtures("default_http_settings")
def test_the_environments_own_mlflow_http_settings_win_over_the_limits(
    unavailable: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, requests = unavailable
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    assert start_tracking(tracked_config(f"http://127.0.0.1:{port}"), "digits-12") is None
    assert len(requests) == 2
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


@pytest.mark.usefixtures("default_http_settings")
def test_a_tracking_server_that_never_answers_costs_one_timeout_once() -> None:
    result: list[MlflowTracking | None] = []
    with socket.socket() as listener:
        # The kernel completes the connections; nothing accepts them, so no answer ever comes.
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        starting = threading.Thread(
            target=lambda: result.append(start_tracking(tracked_config(uri), "digits-13")),
            daemon=True,
        )
        starting.start()
        # A guard against hanging, not a timing: the bound is one 5 s timeout, and MLflow's
        # own defaults would wait 8 times 120 s.
        starting.join(timeout=12 * float(HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
        assert not starting.is_alive(), "tracking still waits on a server that never answers"
        listener.setblocking(False)
        requests = []
        while True:
            try:
                connection, _ = listener.accept()
            except BlockingIOError:
                break
            with connection:
                connection.setblocking(True)
                requests.append(connection.recv(65536))
    assert result == [None]
    assert len(requests) == 1, f"MLflow connected {len(requests)} times"
    assert requests[0].startswith(b"GET /api/2.0/mlflow/experiments/get-by-name")


@pytest.mark.usefixtures("default_http_settings")
def test_no_log_record_at_any_level_holds_a_tracking_secret(
    unavailable: tuple[int, list[str]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """User names, passwords and tokens, in the URI or in MLflow's headers, never reach a log.

    Every record of every logger (MLflow's and urllib3's too) is formatted with its traceback
    and searched, so the property holds whatever wording MLflow's own errors use.
    """
    port, requests = unavailable
    uri = f"http://alice:S3CRET@127.0.0.1:{port}"
    basic = base64.b64encode(b"alice:S3CRET").decode()
    with caplog.at_level(logging.DEBUG):
        assert start_tracking(tracked_config(uri), "digits-14") is None
        assert start_tracking(tracked_config("unknown-scheme://alice:S3CRET@nowhere"), "x") is None
        tracking = MlflowTracking(MlflowClient(uri), "0" * 32)
        tracking.round_completed(RECORD)
        # MLflow sends a token only to a URI without userinfo.
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "T0KEN-7f3a")
        assert start_tracking(tracked_config(f"http://127.0.0.1:{port}"), "digits-15") is None
    assert any(f"Basic {basic}" in request for request in requests), requests
    assert any("Bearer T0KEN-7f3a" in request for request in requests), requests
    warnings = [record.getMessage() for record in caplog.records]
    assert sum("MLflow tracking could not" in message for message in warnings) == 4
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    for secret in ("S3CRET", "alice", "T0KEN-7f3a", basic):
        assert secret not in logged, f"{secret!r} reached a log record"
