"""Monitoring: alert rules over rounds, Prometheus metrics, and the web dashboard."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_DASHBOARD = "fedwarden.monitor.dashboard"

_EXPORTS = {
    "DashboardError": _DASHBOARD,
    "create_app": _DASHBOARD,
    "serve_dashboard": _DASHBOARD,
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
