"""Serve only weights whose SHA-256 the root-signed audit log recorded at registration.

The registry checks a version's weights against the SHA-256 in its own row,
which sits in the same database: whoever can write to the store can replace
both together. The audit log's ``model_registered`` entry records the same
hash under the deployment's root key, which that writer does not hold. Before
it serves a version, the prediction service verifies the log from the root
public key (taken from outside the database: the server kit's ``audit.pub``)
and compares the weights it is about to serve with that entry.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.core.errors import FedwardenError
from fedwarden.core.params import Vector
from fedwarden.governance.audit import ModelRegistered, read_entries, verify
from fedwarden.governance.registry import ModelVersion
from fedwarden.governance.store import RunStore


class ProvenanceError(FedwardenError):
    """Weights about to be served are not the ones the audit log recorded."""


def check_weights_provenance(
    store: RunStore, version: ModelVersion, vector: Vector, root_public_key: Ed25519PublicKey
) -> str:
    """The audited SHA-256 of ``version``'s weights, once ``vector`` is shown to have it.

    Raises :class:`ProvenanceError` when the log does not verify, records no
    registration of the version, or recorded another hash.
    """
    result = verify(store, root_public_key)
    if not result.ok:
        raise ProvenanceError(
            f"the audit log fails verification at entry {result.first_bad} ({result.problem}); "
            f"{version.reference} is not served from a store whose record was altered"
        )
    recorded = [
        event.weights_sha256
        for event in (entry.event() for entry in read_entries(store))
        if isinstance(event, ModelRegistered)
        and (event.model, event.version) == (version.model, version.version)
    ]
    if not recorded:
        raise ProvenanceError(
            f"the audit log records no registration of {version.reference}; register models "
            "with `fedwarden models register` (which audits them) before serving them"
        )
    served = hashlib.sha256(vector.astype("<f4").tobytes()).hexdigest()
    if served != recorded[-1]:
        raise ProvenanceError(
            f"the weights of {version.reference} in the store hash to {served}, but its audited "
            f"registration recorded {recorded[-1]}: they were replaced after registration; "
            "do not serve them, and restore the version from a trusted copy"
        )
    return served
