"""The model registry: every trained model version, its lineage, and which one serves.

A version is registered from a run of the :class:`~fedwarden.governance.store.RunStore` and
named after the run (the ``name`` of its config) with a semantic version: ``1.0.0`` first,
then the latest version of that name bumped by ``major``, ``minor`` or ``patch``. It is
referred to as ``MODEL@X.Y.Z``, or as ``X.Y.Z`` alone where only one model has that version.

Stages and the only transitions between them::

    candidate  --promote-->  production  --(another version promoted)-->  deprecated
    deprecated --rollback--> production  --rollback (withdrawn)-->        deprecated

A candidate is promoted only if its pilot accuracy is at most ``threshold`` below the
accuracy of the production version it replaces. The pilot is a federated evaluation on a
subset of clients (``[rollout] pilot_clients``; :meth:`ModelRegistry.record_pilot` keeps
it, audited): when it also evaluated the current production version on the same clients,
that figure is the baseline; otherwise the production version's recorded accuracy (its own
pilot accuracy at promotion, else its registered ``accuracy`` metric). An operator may
override the refusal, with a reason. ``rollback`` withdraws the production version and
restores the one that served most recently before it; a withdrawn version is never restored
by a later rollback. Production and candidate versions are never deprecated any other way.

Weights are kept in the store's ``model_weights`` table as the raw little-endian float32
bytes of the flat parameter vector (never pickled), with their SHA-256 on the version's row;
``export`` writes them as named arrays (``.npz``) with a lineage JSON. Retention deletes the
weights of all but the ``keep_last`` most recently serving deprecated versions of each model
and keeps every version's metadata.

Every change (register, promote, rollback, retention) commits in one transaction with its
entry in the :class:`~fedwarden.governance.audit.AuditLog`, so a registry without an audit
log is read-only.

======================  =====================================================================
module                  what it holds
======================  =====================================================================
:mod:`.records`         a version, a pilot evaluation, semantic versions, checked weights
:mod:`.reading`         reading versions, the production version, pilots and weights
:mod:`.registration`    registering versions, and retention
:mod:`.rollout`         pilots, promotion against the baseline, rollback
:mod:`.export`          a version's arrays and lineage as files
:mod:`.model_registry`  :class:`ModelRegistry`, all of them in one object
======================  =====================================================================
"""

from __future__ import annotations

from fedwarden.governance.registry.model_registry import ModelRegistry
from fedwarden.governance.registry.records import (
    DEFAULT_THRESHOLD,
    WEIGHTS_DTYPE,
    Bump,
    ModelVersion,
    PilotEvaluation,
    RegistryError,
    Stage,
    next_version,
    weights_vector,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "WEIGHTS_DTYPE",
    "Bump",
    "ModelRegistry",
    "ModelVersion",
    "PilotEvaluation",
    "RegistryError",
    "Stage",
    "next_version",
    "weights_vector",
]
