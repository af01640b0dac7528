"""Deployment: provisioning of a CA, TLS certificates and client identity keys."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "CaPaths": "fedwarden.deploy.pki",
    "IssuedPaths": "fedwarden.deploy.pki",
    "PkiError": "fedwarden.deploy.pki",
    "identity_from_certificate": "fedwarden.deploy.pki",
    "identity_uri": "fedwarden.deploy.pki",
    "init_ca": "fedwarden.deploy.pki",
    "issue": "fedwarden.deploy.pki",
    "load_identity": "fedwarden.deploy.pki",
    "verify_chain": "fedwarden.deploy.pki",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
