"""The prediction service's Prometheus metrics: requests, latencies, shadow comparison, drift.

The metric names are the service's monitoring interface (``GET /metrics``,
Prometheus text format); dashboards and alert rules read them by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedwarden.serve.drift import DriftMonitor
from fedwarden.serve.shadow import ShadowRecorder


@dataclass(frozen=True)
class ServiceMetrics:
    """The service's counters and histograms, in the one registry that ``/metrics`` renders."""

    registry: CollectorRegistry
    requests: Counter
    """HTTP requests by endpoint and status."""
    request_latency: Histogram
    """HTTP request latency by endpoint."""
    model_latency: Histogram
    """Model inference latency per request, by role (primary, shadow)."""
    instances_served: Counter
    """Instances predicted, by role."""
    drift_alerts: Counter
    """Drift alerts raised, by rule."""

    @classmethod
    def create(cls, shadow: ShadowRecorder, drift: DriftMonitor | None) -> ServiceMetrics:
        """A fresh registry with the service's metrics, and the shadow and drift read at scrape."""
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
        metrics.register(_ServiceCollector(shadow, drift))
        return cls(
            metrics, requests, request_latency, model_latency, instances_served, drift_alerts
        )


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
