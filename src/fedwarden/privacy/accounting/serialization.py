"""DP events as JSON, the form a privacy ledger stores them in, and back.

An event is an object with its ``dp_accounting.dp_event`` class name under
``"type"`` and its fields, nested events as objects and tuples tagged as
``{"tuple": [...]}``. These bytes are part of the ledger's file format
(``tests/test_privacy_accounting.py`` pins them): a ledger written today must
read back equal tomorrow. Only dp_accounting's own event classes are built
when reading.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import attr

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting.library import dp_event


def event_to_json(event: dp_event.DpEvent) -> dict[str, Any]:
    """A JSON-ready dict of ``event``: its class name under ``"type"`` and its fields, nested."""
    if not isinstance(event, dp_event.DpEvent):
        raise ConfigError(f"expected a dp_accounting DpEvent, got {type(event).__name__}")
    encoded = _encode_value(event)
    assert isinstance(encoded, dict)
    return encoded


def event_from_json(data: Mapping[str, Any]) -> dp_event.DpEvent:
    """The DpEvent that :func:`event_to_json` wrote, rebuilt exactly (equal to the original)."""
    if not isinstance(data, Mapping) or "type" not in data:
        raise ConfigError(f"a stored DP event must be an object with a 'type' key, got {data!r}")
    return _decode_event(data)


def _encode_value(value: Any) -> Any:
    """JSON form of one event field: events as objects, tuples tagged, numbers as they are."""
    if isinstance(value, dp_event.DpEvent):
        cls = type(value)
        if getattr(dp_event, cls.__name__, None) is not cls:
            raise ConfigError(
                f"{cls.__module__}.{cls.__name__} is not one of dp_accounting.dp_event's "
                "classes; only those can be stored in a ledger"
            )
        encoded: dict[str, Any] = {"type": cls.__name__}
        for field in attr.fields(cls):
            encoded[field.name] = _encode_value(getattr(value, field.name))
        return encoded
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, list):
        return [_encode_value(item) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode_value(item) for item in value]}
    raise ConfigError(
        f"cannot store a DP event field of type {type(value).__name__} ({value!r}); event "
        "fields must be numbers, strings, lists, tuples or events"
    )


def _decode_value(value: Any) -> Any:
    """The field value that :func:`_encode_value` wrote."""
    if isinstance(value, Mapping):
        if "type" in value:
            return _decode_event(value)
        if set(value) == {"tuple"} and isinstance(value["tuple"], list):
            return tuple(_decode_value(item) for item in value["tuple"])
        raise ConfigError(f"a stored DP event holds an unreadable field value {value!r}")
    if isinstance(value, list):
        return [_decode_value(item) for item in value]
    return value


def _decode_event(data: Mapping[str, Any]) -> dp_event.DpEvent:
    """One event from its JSON object; only dp_accounting.dp_event classes are built."""
    name = data["type"]
    cls = getattr(dp_event, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, dp_event.DpEvent)):
        raise ConfigError(
            f"unknown DP event type {name!r}; a stored event must name a class of "
            "dp_accounting.dp_event (was the ledger written by a newer dp-accounting?)"
        )
    fields = {field.name for field in attr.fields(cls)}
    given = {key: value for key, value in data.items() if key != "type"}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConfigError(f"stored {name} has unknown fields {unknown}; it knows {sorted(fields)}")
    try:
        return cls(**{key: _decode_value(value) for key, value in given.items()})
    except TypeError as error:
        raise ConfigError(f"stored {name} cannot be rebuilt from {dict(given)}: {error}") from error
