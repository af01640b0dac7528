"""The prediction service: a registered model version behind FastAPI, with shadow and drift.

``fedwarden serve MODEL@production`` serves the production version of ``MODEL`` from the
model registry (or any ``MODEL@X.Y.Z``):

* ``POST /predict`` takes ``{"instances": [[f1, ..., fn], ...]}``. The request schema is
  generated from the model's declared input: exactly ``n`` finite numbers per instance, within
  the features' value range where the data source declares one; anything else gets a 422
  that names the field and what is allowed. The answer is each instance's predicted class
  and class probabilities, always from the primary version.
* Shadow deployment: with ``shadow`` (a candidate version) and ``shadow_share``, that share
  of requests is also given to the candidate after the response is sent; the service records
  how often the two disagree on the class, the mean absolute difference of their
  probabilities, and the latency (p50, p95) of each (``GET /shadow`` and ``/metrics``).
* Drift: with a :class:`~fedwarden.serve.drift.DriftMonitor`, served inputs are compared with
  the training data's reference histograms. Each new alert names the served version and goes
  the way training alerts go (:func:`fedwarden.monitor.alerts.deliver`): the log, the run
  store's audit log (an ``alert_raised`` entry, with ``--audit-key``), a webhook (with
  ``--webhook``) and the ``fedwarden_serve_drift_alerts`` counter.
* ``GET /health`` says what is served; ``GET /metrics`` is the Prometheus text format.

Trust: give the service a delegated audit key, not the deployment's root ``audit.key``.
``fedwarden audit delegate STORE --audit-key audit.key --kind alert_raised --name serving
--output serving.key`` records, signed by the root key, that ``serving.key`` may sign
``alert_raised`` entries only; ``fedwarden serve ... --audit-key serving.key
--root-public-key audit.pub`` then records drift alerts with it. Whoever takes over the
service (an internet-facing process) can forge alert entries, and nothing else: a forged
registration, promotion, round or privacy figure fails verification, and ``fedwarden audit
revoke`` withdraws the key. A service given the root key itself can sign any audit entry.
The store is opened read-only, and alerts are appended through a connection that may insert
audit entries and nothing else, so the service cannot change weights, enrolments or spooled
payloads either; with ``--root-public-key`` it serves only weights whose SHA-256 the audit
log recorded when they were registered (:mod:`fedwarden.serve.provenance`).

The model is rebuilt from the registry: its flat weights and ParamSpec, and the kind of model
from the config of the run that trained it (``softmax``: NumPy multinomial logistic
regression; ``mlp``: the PyTorch multilayer perceptron).

This module is the application (routes, request schema, ``fedwarden serve``);
the model it serves is rebuilt in :mod:`fedwarden.serve.model`, the shadow
comparison kept in :mod:`fedwarden.serve.shadow`, and the Prometheus metrics
defined in :mod:`fedwarden.serve.metrics`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import BackgroundTasks, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model
from sqlalchemy.exc import SQLAlchemyError

from fedwarden.governance.audit import AuditLog, ServerAuditTrail
from fedwarden.governance.registry import ModelRegistry
from fedwarden.governance.store import RunStore, StoreAccess
from fedwarden.monitor.alerts import AlertSink, deliver, webhook
from fedwarden.serve.drift import DriftMonitor, DriftReference
from fedwarden.serve.metrics import ServiceMetrics
from fedwarden.serve.model import DeclaredInput, ServeError, load_served_model
from fedwarden.serve.shadow import ShadowRecorder

logger = logging.getLogger(__name__)

MAX_INSTANCES = 1000
"""Most instances one ``/predict`` request may carry."""


class Prediction(BaseModel):
    """One instance's predicted class and its class probabilities."""

    label: int
    probabilities: list[float]


class PredictResponse(BaseModel):
    """The primary version's predictions, in the order of the instances."""

    model: str
    predictions: list[Prediction]


def request_model(declared: DeclaredInput) -> type[BaseModel]:
    """The pydantic schema of ``/predict``'s body for a model's declared input."""
    value = Annotated[
        float,
        Field(allow_inf_nan=False, ge=declared.lower, le=declared.upper),
    ]
    instance = Annotated[
        list[value],
        Field(min_length=declared.num_features, max_length=declared.num_features),
    ]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Instances to classify: {declared.describe()}.",
        instances=(
            Annotated[list[instance], Field(min_length=1, max_length=MAX_INSTANCES)],
            ...,
        ),
    )


def _typed_body(endpoint: Callable[..., Any], model: type[BaseModel]) -> Callable[..., Any]:
    """``endpoint`` with its ``body`` parameter typed as ``model``, a schema built at run time."""
    signature = inspect.signature(endpoint)
    parameters = [
        parameter.replace(annotation=model) if parameter.name == "body" else parameter
        for parameter in signature.parameters.values()
    ]
    endpoint.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return endpoint


def _validation_message(error: RequestValidationError, declared: DeclaredInput) -> JSONResponse:
    """A 422 naming each bad field and what a valid request is (no echo of the bad values)."""
    detail = [
        {"loc": list(problem["loc"]), "msg": problem["msg"], "type": problem["type"]}
        for problem in error.errors()
    ]
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in detail
    )
    message = (
        f'{problems}. Send {{"instances": [[f1, ..., f{declared.num_features}], ...]}}: '
        f"1 to {MAX_INSTANCES} instances, {declared.describe()}"
    )
    return JSONResponse(status_code=422, content={"detail": detail, "message": message})


def create_app(
    registry: ModelRegistry,
    reference: str,
    *,
    shadow: str | None = None,
    shadow_share: float = 0.0,
    shadow_seed: int | None = None,
    drift: DriftMonitor | None = None,
    audit: AuditLog | None = None,
    alert_sinks: Sequence[AlertSink] = (),
    root_public_key: Ed25519PublicKey | None = None,
) -> FastAPI:
    """The prediction service for version ``reference`` (``MODEL@production`` or ``MODEL@X.Y.Z``).

    ``shadow`` is a candidate version that ``shadow_share`` of requests also go to (chosen
    with a generator seeded by ``shadow_seed``); ``drift`` monitors the served inputs. Each
    new drift alert, with the served version as its ``model_version``, is logged, appended to
    ``audit`` (the run store's audit log) and handed to every one of ``alert_sinks``. With
    ``root_public_key``, served weights must match their audited registration.
    """
    primary = load_served_model(registry, reference, root_public_key)
    candidate = None if shadow is None else load_served_model(registry, shadow, root_public_key)
    if candidate is not None and candidate.declared.num_features != primary.declared.num_features:
        raise ServeError(
            f"shadow {candidate.reference} takes {candidate.declared.num_features} features, "
            f"{primary.reference} takes {primary.declared.num_features}; a shadow must answer "
            "the same requests"
        )
    if drift is not None and max(item.feature for item in drift.reference.features) >= (
        primary.declared.num_features
    ):
        raise ServeError(
            f"the drift reference names features beyond the {primary.declared.num_features} "
            f"that {primary.reference} takes; build it for this model's input"
        )
    recorder = ShadowRecorder(
        None if candidate is None else candidate.reference, shadow_share, shadow_seed
    )
    declared = primary.declared
    metrics = ServiceMetrics.create(recorder, drift)

    app = FastAPI(
        title="fedwarden prediction service",
        description=f"Serves {primary.reference}: {declared.describe()}.",
    )

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def refuse_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _validation_message(error, declared)

    def run_shadow(instances: npt.NDArray[np.float32], expected: npt.NDArray[np.float64]) -> None:
        assert candidate is not None
        start = time.perf_counter()
        try:
            probabilities = candidate.probabilities(instances)
        except Exception:  # the candidate must never affect serving; its failure is counted
            logger.exception("shadow %s failed on a request", candidate.reference)
            recorder.failed()
            return
        seconds = time.perf_counter() - start
        recorder.shadow_latency.record(seconds)
        metrics.model_latency.labels("shadow").observe(seconds)
        metrics.instances_served.labels("shadow").inc(len(instances))
        recorder.compare(expected, probabilities)

    sinks: list[AlertSink] = [lambda alert: metrics.drift_alerts.labels(alert.rule).inc()]
    if audit is not None:
        sinks.append(ServerAuditTrail(audit, primary.run_id).alert_raised)
    sinks += alert_sinks

    def observe_drift(instances: npt.NDArray[np.float32]) -> None:
        assert drift is not None
        for alert in drift.observe(instances):
            deliver(replace(alert, model_version=primary.reference), sinks)

    def predict(body: Any, background: BackgroundTasks) -> PredictResponse:
        """Predict each instance's class and class probabilities with the primary version."""
        instances = np.asarray(body.instances, dtype=np.float32)
        start = time.perf_counter()
        probabilities = primary.probabilities(instances)
        seconds = time.perf_counter() - start
        recorder.primary_latency.record(seconds)
        metrics.model_latency.labels("primary").observe(seconds)
        metrics.instances_served.labels("primary").inc(len(instances))
        if recorder.choose():
            background.add_task(run_shadow, instances, probabilities)
        if drift is not None:
            background.add_task(observe_drift, instances)
        return PredictResponse(
            model=primary.reference,
            predictions=[
                Prediction(label=int(row.argmax()), probabilities=row.tolist())
                for row in probabilities
            ],
        )

    app.add_api_route(
        "/predict",
        _typed_body(predict, request_model(declared)),
        methods=["POST"],
        response_model=PredictResponse,
    )

    @app.get("/health")
    def health() -> dict[str, Any]:
        """What is served, and that the service answers."""
        return {
            "status": "ok",
            "model": primary.reference,
            "shadow": recorder.candidate,
            "shadow_share": recorder.share,
            "drift_monitoring": drift is not None,
            "input": {
                "num_features": declared.num_features,
                "num_classes": declared.num_classes,
                "lower": declared.lower,
                "upper": declared.upper,
            },
        }

    @app.get("/shadow")
    def shadow_report() -> dict[str, Any]:
        """How the shadow candidate compares with the primary version so far."""
        return recorder.report()

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> Response:
        """Request counts, latencies, shadow comparison and drift, in Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve_model(
    store_url: str,
    reference: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    shadow: str | None = None,
    shadow_share: float = 0.0,
    drift_reference: Path | None = None,
    audit_key: Path | None = None,
    webhook_url: str | None = None,
    root_public_key: Path | None = None,
) -> None:
    """Serve ``reference`` from the registry of the run store at ``store_url`` with uvicorn.

    ``drift_reference`` is a reference written by
    :meth:`~fedwarden.serve.drift.DriftReference.to_json`. Its alerts are logged; with
    ``audit_key`` appended to the store's audit log, beside the entries of any server writing
    to it; with ``webhook_url`` (http or https) POSTed there as JSON.

    ``audit_key`` should be a key delegated ``alert_raised`` (``fedwarden audit delegate``),
    with ``root_public_key`` the log's root public key (the server kit's ``audit.pub``):
    whoever controls this process can then forge alert entries only, and the key can be
    revoked. Without ``root_public_key``, ``audit_key`` is taken as the root key itself, with
    which this process could sign any audit entry. ``root_public_key`` also has the served
    weights checked against their audited registration.

    The store is opened read-only; drift alerts are appended through a second connection
    that may insert audit entries and do nothing else (:class:`RunStore`'s ``access``).
    """
    import uvicorn

    from fedwarden.governance.audit import load_public_key, load_signing_key

    alert_sinks = () if webhook_url is None else (webhook(webhook_url),)
    root = None if root_public_key is None else load_public_key(root_public_key)
    store = _open_store(store_url, "read_only")
    appender = None if audit_key is None else _open_store(store_url, "audit_append")
    drift = (
        None
        if drift_reference is None
        else DriftMonitor(DriftReference.from_json(Path(drift_reference).read_text()))
    )
    try:
        audit = (
            None
            if audit_key is None or appender is None
            else AuditLog(appender, load_signing_key(audit_key), root_public_key=root)
        )
        app = create_app(
            ModelRegistry(store, None),
            reference,
            shadow=shadow,
            shadow_share=shadow_share,
            drift=drift,
            audit=audit,
            alert_sinks=alert_sinks,
            root_public_key=root,
        )
        uvicorn.run(app, host=host, port=port)
    finally:
        store.close()
        if appender is not None:
            appender.close()


def _open_store(store_url: str, access: StoreAccess) -> RunStore:
    """The existing store at ``store_url``, opened with only ``access``."""
    try:
        store = RunStore(store_url, access)
        with store.reading():
            return store
    except SQLAlchemyError as error:
        raise ServeError(
            f"cannot open the run store {store_url!r} ({access}): {error.__class__.__name__}; "
            "give the URL of the store the server wrote"
        ) from None
