"""SciPy's BLAS, imported at the first aggregation.

The aggregators add and measure float32 updates in place with ``saxpy`` and
``sdot``. ``scipy.linalg`` takes about a quarter of a second to import, which a
client, the command line and a worker that never aggregate need not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedwarden._lazy import lazy_module

if TYPE_CHECKING:
    from scipy.linalg import blas
else:
    blas = lazy_module("scipy.linalg.blas")

__all__ = ["blas"]
