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
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import BackgroundTasks, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, create_model
from sqlalchemy.exc import SQLAlchemyError

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import FedwardenError
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.governance.audit import AuditLog, ServerAuditTrail
from fedwarden.governance.registry import ModelRegistry, ModelVersion
from fedwarden.governance.store import RunStore, StoreAccess
from fedwarden.monitor.alerts import AlertSink, deliver, webhook
from fedwarden.serve.drift import DriftMonitor, DriftReference
from fedwarden.serve.provenance import check_weights_provenance

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.floating[Any]]
Scores = Callable[[npt.NDArray[np.float32]], FloatArray]

MAX_INSTANCES = 1000
"""Most instances one ``/predict`` request may carry."""
LATENCY_SAMPLES = 2048
"""Latencies kept per model for the p50 and p95 (the most recent ones)."""
PRODUCTION = "production"
"""The version written in place of ``X.Y.Z`` to serve a model's production version."""

_KNOWN_RANGES: dict[str, tuple[float, float]] = {"digits": (0.0, 1.0)}
"""Feature value ranges that data sources fix without statistics (digits: pixels / 16)."""


class ServeError(FedwardenError):
    """A model version cannot be served as asked."""


@dataclass(frozen=True)
class DeclaredInput:
    """What a model takes and gives: features per instance, their range if known, classes."""

    num_features: int
    num_classes: int
    lower: float | None = None
    upper: float | None = None

    def describe(self) -> str:
        """One sentence saying what a valid instance is."""
        bounds = "" if self.lower is None else f" in [{self.lower:g}, {self.upper:g}]"
        return f"each instance is a list of {self.num_features} finite numbers{bounds}"


@dataclass(frozen=True)
class ServedModel:
    """A registered version rebuilt for prediction: ``scores`` maps instances to class scores.

    ``run_id`` is the run that trained it.
    """

    reference: str
    run_id: str
    declared: DeclaredInput
    scores: Scores

    def probabilities(self, instances: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Class probabilities: the softmax of the model's class scores, one row per instance."""
        scores = np.asarray(self.scores(instances), dtype=np.float64)
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities


def resolve_version(registry: ModelRegistry, reference: str) -> ModelVersion:
    """The version named ``MODEL@X.Y.Z``, or the production version for ``MODEL@production``."""
    name, separator, version = reference.rpartition("@")
    if not (separator and version == PRODUCTION):
        return registry.show(reference)
    found = registry.production(name)
    if found is None:
        raise ServeError(
            f"model {name!r} has no production version; promote one "
            "(`fedwarden models promote`) or serve a version as MODEL@X.Y.Z"
        )
    return found


def load_served_model(
    registry: ModelRegistry, reference: str, root_public_key: Ed25519PublicKey | None = None
) -> ServedModel:
    """Rebuild the version ``reference`` from its weights, ParamSpec and run config.

    With the audit log's ``root_public_key``, the weights must be those its audited
    registration recorded (:func:`~fedwarden.serve.provenance.check_weights_provenance`).
    """
    version = resolve_version(registry, reference)
    vector = registry.weights(version.reference)
    if root_public_key is None:
        logger.warning(
            "serving %s checked against the registry's own hash only: give the root public "
            "key (audit.pub) to check it against its audited registration",
            version.reference,
        )
    else:
        check_weights_provenance(registry.store, version, vector, root_public_key)
    spec = ParamSpec.from_json(version.spec_json)
    run = registry.store.run(version.run_id)
    if run is None:
        raise ServeError(
            f"{version.reference} was trained by run {version.run_id!r}, which the store no "
            "longer holds; the model kind and input come from that run's config"
        )
    config = RunConfig.from_mapping(json.loads(run.config_json), source=f"run {run.run_id}")
    value_range = _KNOWN_RANGES.get(config.data.source)
    lower, upper = (None, None) if value_range is None else value_range
    kind = config.model.kind
    if kind == "softmax":
        num_features, num_classes = spec.tensors[0].shape
        scores = _softmax_scores(spec, vector, num_features, num_classes)
    elif kind == "mlp":
        num_features, num_classes = spec.tensors[0].shape[1], spec.tensors[-1].shape[0]
        scores = _mlp_scores(spec, vector, num_features, num_classes, config.model.hidden)
    else:
        raise ServeError(
            f"{version.reference} is a {kind!r} model, which the prediction service cannot "
            "rebuild yet; it serves 'softmax' and 'mlp' models"
        )
    declared = DeclaredInput(num_features, num_classes, lower, upper)
    logger.info("loaded %s (%s, %s)", version.reference, kind, declared.describe())
    return ServedModel(version.reference, version.run_id, declared, scores)


def _check_spec(reference: str, built: ParamSpec, stored: ParamSpec) -> None:
    """Refuse weights whose stored ParamSpec is not the one the rebuilt model has."""
    if built != stored:
        raise ServeError(
            f"the stored ParamSpec of the weights ({', '.join(stored.names)}) is not the "
            f"rebuilt {reference} model's ({', '.join(built.names)}); the run config and the "
            "registered weights disagree"
        )


def _softmax_scores(spec: ParamSpec, vector: Vector, num_features: int, num_classes: int) -> Scores:
    """Class scores of the NumPy softmax regression with these weights."""
    from fedwarden.models.numpy import softmax_regression

    trainer = softmax_regression(num_features, num_classes)
    _check_spec("softmax", trainer.spec, spec)
    return partial(trainer.predict, vector)


def _mlp_scores(
    spec: ParamSpec,
    vector: Vector,
    num_features: int,
    num_classes: int,
    hidden: tuple[int, ...],
) -> Scores:
    """Class scores of the PyTorch multilayer perceptron with these weights."""
    import torch

    from fedwarden.models.torch import TorchTrainer, mlp

    trainer = TorchTrainer(partial(mlp, num_features, num_classes, hidden))
    _check_spec("mlp", trainer.spec, spec)
    module = trainer.load(vector)
    module.eval()

    def scores(instances: npt.NDArray[np.float32]) -> FloatArray:
        with torch.inference_mode():
            outputs: FloatArray = module(torch.from_numpy(instances)).numpy()
        return outputs

    return scores


# Shadow deployment.


class LatencyWindow:
    """The most recent latencies of one model, for its p50 and p95."""

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self._seconds: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """Keep one latency, forgetting the oldest beyond the window."""
        with self._lock:
            self._seconds.append(seconds)

    def quantiles(self) -> dict[str, float | int | None]:
        """The number of latencies kept, and their p50 and p95 in seconds (None if none)."""
        with self._lock:
            seconds = np.asarray(self._seconds, dtype=np.float64)
        if not len(seconds):
            return {"count": 0, "p50": None, "p95": None}
        p50, p95 = np.percentile(seconds, [50, 95])
        return {"count": len(seconds), "p50": float(p50), "p95": float(p95)}


class ShadowRecorder:
    """Chooses which requests go to the shadow candidate and records how it compares.

    A request is shadowed with probability ``share``, drawn from a generator seeded with
    ``seed`` (None: fresh entropy). Disagreement is counted per instance (the predicted
    classes differ); the probability delta is the mean over classes of ``|p - p_shadow|``,
    averaged over instances.
    """

    def __init__(self, candidate: str | None, share: float, seed: int | None = None) -> None:
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ServeError(f"shadow_share={share} must be a fraction in [0, 1]")
        if candidate is None and share > 0:
            raise ServeError(f"shadow_share={share} needs a shadow candidate version to send to")
        self.candidate = candidate
        self.share = share
        self.primary_latency = LatencyWindow()
        self.shadow_latency = LatencyWindow()
        self._random = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._requests = 0
        self._shadowed = 0
        self._instances = 0
        self._disagreements = 0
        self._delta_sum = 0.0
        self._errors = 0

    def choose(self) -> bool:
        """Count a request, and say whether it also goes to the candidate."""
        with self._lock:
            self._requests += 1
            chosen = self.candidate is not None and bool(self._random.random() < self.share)
            self._shadowed += chosen
            return chosen

    def compare(self, primary: npt.NDArray[np.float64], shadow: npt.NDArray[np.float64]) -> None:
        """Record the primary's and the candidate's probabilities for the same instances."""
        disagreements = int((primary.argmax(axis=1) != shadow.argmax(axis=1)).sum())
        deltas = np.abs(primary - shadow).mean(axis=1)
        with self._lock:
            self._instances += len(primary)
            self._disagreements += disagreements
            self._delta_sum += float(deltas.sum())

    def failed(self) -> None:
        """Count a shadowed request the candidate could not answer."""
        with self._lock:
            self._errors += 1

    def report(self) -> dict[str, Any]:
        """Counts, disagreement rate, mean absolute probability delta and latencies, as JSON."""
        with self._lock:
            instances = self._instances
            report: dict[str, Any] = {
                "candidate": self.candidate,
                "share": self.share,
                "requests": self._requests,
                "shadowed_requests": self._shadowed,
                "compared_instances": instances,
                "disagreements": self._disagreements,
                "disagreement_rate": self._disagreements / instances if instances else None,
                "mean_abs_probability_delta": self._delta_sum / instances if instances else None,
                "errors": self._errors,
            }
        report["latency_seconds"] = {
            "primary": self.primary_latency.quantiles(),
            "shadow": self.shadow_latency.quantiles(),
        }
        return report


class _ServiceCollector(Collector):
    """Exposes the shadow comparison and the drift statistics to Prometheus at each scrape."""

    def __init__(self, shadow: ShadowRecorder, drift: DriftMonitor | None) -> None:
        self._shadow = shadow
        self._drift = drift

    def collect(self) -> Iterator[Metric]:
        """The current values, read from the recorder and the monitor."""
        report = self._shadow.report()
        shadowed = CounterMetricFamily(
            "fedwarden_serve_shadow_requests", "Requests also sent to the shadow candidate."
        )
        shadowed.add_metric([], report["shadowed_requests"])
        yield shadowed
        for name, key, text in (
            ("disagreement_rate", "disagreement_rate", "Share of instances whose class differs"),
            ("mean_abs_probability_delta", "mean_abs_probability_delta", "Mean |p - p_shadow|"),
        ):
            if report[key] is not None:
                yield GaugeMetricFamily(f"fedwarden_serve_shadow_{name}", text, value=report[key])
        latency = GaugeMetricFamily(
            "fedwarden_serve_model_latency_quantile_seconds",
            "Recent model latency quantiles (primary and shadow).",
            labels=["role", "quantile"],
        )
        for role, quantiles in report["latency_seconds"].items():
            for quantile in ("p50", "p95"):
                if quantiles[quantile] is not None:
                    latency.add_metric([role, quantile.replace("p", "0.")], quantiles[quantile])
        yield latency
        if self._drift is None:
            return
        families = {
            "psi": GaugeMetricFamily(
                "fedwarden_serve_drift_psi", "Population stability index", labels=["feature"]
            ),
            "ks_statistic": GaugeMetricFamily(
                "fedwarden_serve_drift_ks_statistic", "Two-sample KS statistic", labels=["feature"]
            ),
            "ks_p_value": GaugeMetricFamily(
                "fedwarden_serve_drift_ks_p_value", "Two-sample KS p-value", labels=["feature"]
            ),
        }
        for drift in self._drift.statistics:
            for name, family in families.items():
                family.add_metric([str(drift.feature)], getattr(drift, name))
        yield from families.values()
        yield GaugeMetricFamily(
            "fedwarden_serve_drift_observed_instances",
            "Served instances the drift monitor has seen.",
            value=self._drift.observed,
        )


# The application.


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
    metrics = CollectorRegistry()
    requests = Counter(
        "fedwarden_serve_requests",
        "HTTP requests by endpoint and status.",
        ["endpoint", "status"],
        registry=metrics,
    )
    request_latency = Histogram(
        "fedwarden_serve_request_latency_seconds",
        "HTTP request latency by endpoint.",
        ["endpoint"],
        registry=metrics,
    )
    model_latency = Histogram(
        "fedwarden_serve_model_latency_seconds",
        "Model inference latency per request (primary and shadow).",
        ["role"],
        registry=metrics,
    )
    instances_served = Counter(
        "fedwarden_serve_instances", "Instances predicted.", ["role"], registry=metrics
    )
    drift_alerts = Counter(
        "fedwarden_serve_drift_alerts", "Drift alerts raised.", ["rule"], registry=metrics
    )
    metrics.register(_ServiceCollector(recorder, drift))

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
        requests.labels(endpoint, str(response.status_code)).inc()
        request_latency.labels(endpoint).observe(time.perf_counter() - start)
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
        model_latency.labels("shadow").observe(seconds)
        instances_served.labels("shadow").inc(len(instances))
        recorder.compare(expected, probabilities)

    sinks: list[AlertSink] = [lambda alert: drift_alerts.labels(alert.rule).inc()]
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
        model_latency.labels("primary").observe(seconds)
        instances_served.labels("primary").inc(len(instances))
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
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

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
