"""The model registry: every group of its records and changes in one object."""

from __future__ import annotations

from fedwarden.governance.registry.export import RegistryExport
from fedwarden.governance.registry.registration import Registration
from fedwarden.governance.registry.rollout import Rollout


class ModelRegistry(Registration, Rollout, RegistryExport):
    """The registry of model versions in a run store; every change is audited.

    Safe to call from several threads: every change is one transaction of the store, together
    with its audit entry.
    """
