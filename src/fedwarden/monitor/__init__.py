"""Monitoring: alerts of training and serving, Prometheus metrics, MLflow tracking, dashboard."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_ALERTS = "fedwarden.monitor.alerts"
_DASHBOARD = "fedwarden.monitor.dashboard"
_TRACKING = "fedwarden.monitor.tracking"

_EXPORTS = {
    "AlertRules": _ALERTS,
    "AlertSink": _ALERTS,
    "AlertThresholds": _ALERTS,
    "DashboardError": _DASHBOARD,
    "FederationMetrics": _ALERTS,
    "MlflowTracking": _TRACKING,
    "Monitoring": _ALERTS,
    "create_app": _DASHBOARD,
    "deliver": _ALERTS,
    "serve_dashboard": _DASHBOARD,
    "start_tracking": _TRACKING,
    "webhook": _ALERTS,
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
