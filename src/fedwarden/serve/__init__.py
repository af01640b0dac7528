"""Model serving: a registered version behind an HTTP API, shadow deployment, drift monitoring."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_APP = "fedwarden.serve.app"
_DRIFT = "fedwarden.serve.drift"

_EXPORTS = {
    "DeclaredInput": _APP,
    "DriftError": _DRIFT,
    "DriftMonitor": _DRIFT,
    "DriftReference": _DRIFT,
    "FeatureDrift": _DRIFT,
    "FeatureReference": _DRIFT,
    "ServeError": _APP,
    "ServedModel": _APP,
    "ShadowRecorder": _APP,
    "create_app": _APP,
    "load_served_model": _APP,
    "reference_from_arrays": _DRIFT,
    "reference_from_federation": _DRIFT,
    "serve_model": _APP,
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
