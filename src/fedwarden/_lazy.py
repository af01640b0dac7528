"""Package re-exports imported on first use (PEP 562).

Worker processes import only the runtime, the model and the messages; a
package ``__init__`` that eagerly imported the config (pydantic), the server or
SciPy's BLAS would make every worker pay for them at start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) when asked."""

    def attribute(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return attribute
