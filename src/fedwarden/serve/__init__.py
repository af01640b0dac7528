"""Model serving: a registered version behind an HTTP API, shadow deployment, drift monitoring."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_APP = "fedwarden.serve.app"
_DRIFT = "fedwarden.serve.drift"
_MODEL = "fedwarden.serve.model"

_EXPORTS = {
    "DeclaredInput": _MODEL,
    "DriftError": _DRIFT,
    "DriftMonitor": _DRIFT,
    "DriftReference": _DRIFT,
    "FeatureDrift": _DRIFT,
    "FeatureReference": _DRIFT,
    "ServeError": _MODEL,
    "ServedModel": _MODEL,
    "ShadowRecorder": "fedwarden.serve.shadow",
    "create_app": _APP,
    "load_served_model": _MODEL,
    "reference_from_arrays": _DRIFT,
    "reference_from_federation": _DRIFT,
    "serve_model": _APP,
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
