"""Canonical JSON: the one encoder for every byte string that is hashed, signed or counted.

Sorted keys and no whitespace, so the same value always gives the same bytes. Three protocols
use it, and each keeps the bytes it has always had:

- audit entries (governance): non-ASCII text stays UTF-8, NaN and infinity are refused; the
  entries hold people's text, and the hashes of entries already written must still verify;
- grpc upload metadata (the bytes a client signs): non-ASCII escaped as ``\\uXXXX``, NaN and
  infinity refused; clients already deployed sign these bytes;
- payload headers (``core.messages.header_bytes``): non-ASCII escaped, NaN written as ``NaN``;
  a peer's header is counted as traffic before any stage checks it, so counting must not fail.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any, *, ascii_only: bool, allow_nan: bool = False) -> str:
    """``value`` as JSON with sorted keys and no whitespace.

    ``ascii_only`` escapes every non-ASCII character as ``\\uXXXX`` (the wire protocols) or
    keeps it as UTF-8 text (the audit log); callers must choose, as the two give different
    bytes. ``allow_nan`` writes NaN and infinity as JavaScript does instead of raising
    ``ValueError``; only payload headers, counted even when a peer put NaN in one, allow it.
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=ascii_only,
        allow_nan=allow_nan,
    )
