"""The base of every config section, and how a section's validation errors are reported.

Every section is a pydantic model with ``extra="forbid"``: a typo or a bad value fails at load
time, and :func:`format_validation_error` names the key, the value (never a secret one) and
what is allowed, with the closest known key for a typo.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fedwarden.core.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


SECRET_KEYS = frozenset({"webhook_url", "mlflow_tracking_uri"})
"""Keys whose values may carry a secret (a token in a URL): errors never echo them."""


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: the dotted key, what was wrong, and what is allowed."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            known = _known_keys(model, problem["loc"][:-1])
            key = str(problem["loc"][-1])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(sorted(known))
            lines.append(f"{location}: unknown key{hint} (allowed here: {allowed})")
        else:
            value = problem.get("input")
            secret = bool(problem["loc"]) and problem["loc"][-1] in SECRET_KEYS
            shown = "" if isinstance(value, dict) or secret else f" (got {value!r})"
            lines.append(f"{location}: {problem['msg']}{shown}")
    return "\n".join(lines)


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``path`` inside ``model``."""
    current: type[BaseModel] = model
    for part in path:
        annotation = current.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def parse_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into :class:`ConfigError`."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
