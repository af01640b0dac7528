"""Runtimes: where clients run. ``local`` processes, a ``ray`` cluster (and later ``grpc``)."""

from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import ClientEngine, Workload
from fedwarden.runtime.local import LocalRuntime
from fedwarden.runtime.ray import RayRuntime
from fedwarden.runtime.state import ClientStateStore

__all__ = ["ClientEngine", "ClientStateStore", "LocalRuntime", "RayRuntime", "Runtime", "Workload"]
