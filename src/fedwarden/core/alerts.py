"""What an alert is: one rule that fired, and the rule every alert webhook URL must meet.

The rules that raise alerts (training rounds in :mod:`fedwarden.monitor.alerts`, input drift
of a served model in :mod:`fedwarden.serve.drift`) and the sinks that take them (the log, the
audit trail, a webhook, Prometheus) live above; the value type and the URL check live here, so
the run config (:mod:`fedwarden.core.config`) and the audit trail can use them from below.
A webhook must be an ``http://`` or ``https://`` URL (:func:`check_webhook_url`), as
``urllib`` would also open ``file://`` and ``ftp://`` ones.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from fedwarden.core.errors import FedwardenError

WEBHOOK_SCHEMES = ("http", "https")


class AlertError(FedwardenError, ValueError):
    """An alert sink cannot be set up as given (a ValueError too, for config validators)."""


@dataclass(frozen=True)
class Alert:
    """One rule that fired, why, and the context its kind has.

    A training rule gives the round (``round_index``) and, for ``client_silent``, the client
    (``client_id``). A drift rule (``drift_psi``, ``drift_ks``) gives the served model's
    version (``model_version``, ``MODEL@X.Y.Z``), the input ``feature``, and the
    ``statistic`` that crossed its ``threshold``. Fields a kind does not have are None.
    """

    rule: str
    message: str
    round_index: int | None = None
    client_id: str | None = None
    model_version: str | None = None
    feature: int | None = None
    statistic: float | None = None
    threshold: float | None = None

    def describe(self) -> str:
        """The alert in one log line: its rule, its context, and its message."""
        context = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("round", self.round_index),
                ("client", self.client_id),
                ("model", self.model_version),
                ("feature", self.feature),
            )
            if value is not None
        )
        return f"alert {self.rule}{f' ({context})' if context else ''}: {self.message}"


def check_webhook_url(url: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host; else raise AlertError.

    The error never quotes the URL, nor any part of it: chat webhooks carry their secret in it.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as error:
        raise AlertError(
            f"the alert webhook URL cannot be parsed ({error}); give it as http(s)://HOST/PATH"
        ) from None
    if parts.scheme not in WEBHOOK_SCHEMES:
        raise AlertError(
            "the alert webhook URL is not an http:// or https:// URL (its scheme is not shown, "
            "as it may be part of a secret); give it as http(s)://HOST/PATH"
        )
    if not parts.hostname:
        raise AlertError("the alert webhook URL has no host; give it as http(s)://HOST/PATH")
    return url
