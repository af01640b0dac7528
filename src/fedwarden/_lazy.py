"""Imports deferred to first use: package re-exports (PEP 562) and slow third-party modules.

Worker processes import only the runtime, the model and the messages; a
package ``__init__`` that eagerly imported the config (pydantic), the server or
SciPy's BLAS would make every worker pay for them at start. A third-party
module that is slow to import and used only on some paths (dp-accounting loads
SciPy's signal, stats and optimize: about a second) is a :func:`lazy_module`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) when asked."""

    def attribute(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return attribute


class _LazyModule(ModuleType):
    """A stand-in for a module, imported when one of its attributes is first read."""

    def __getattr__(self, name: str) -> Any:
        value = getattr(importlib.import_module(self.__name__), name)
        setattr(self, name, value)
        return value


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, imported when one of its attributes is first read.

    Bind it under ``if not TYPE_CHECKING`` and import the real module for the type
    checker; a missing package raises its ``ModuleNotFoundError`` at that first read.
    """
    return _LazyModule(name)
