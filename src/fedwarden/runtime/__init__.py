"""Runtimes: where clients run. ``local`` processes, ``inprocess``, a ``ray`` cluster, ``grpc``."""

from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import ClientEngine, Workload
from fedwarden.runtime.inprocess import InProcessRuntime
from fedwarden.runtime.local import LocalRuntime
from fedwarden.runtime.ray import RayRuntime
from fedwarden.runtime.state import ClientStateStore

__all__ = [
    "ClientEngine",
    "ClientStateStore",
    "InProcessRuntime",
    "LocalRuntime",
    "RayRuntime",
    "Runtime",
    "Workload",
]
