"""dp-accounting's modules, imported when an event is first built or accounted.

``import dp_accounting`` loads all of dp-accounting, and with it SciPy's signal,
stats and optimize (about a second, most of a server's start-up). Every module of
fedwarden that describes or accounts a release takes dp-accounting's modules from
here, so a process that never builds an event (``fedwarden --help``, a client
without local DP, a config check) never pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedwarden._lazy import lazy_module

if TYPE_CHECKING:
    from dp_accounting import dp_event, mechanism_calibration, privacy_accountant
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant
else:
    dp_event = lazy_module("dp_accounting.dp_event")
    mechanism_calibration = lazy_module("dp_accounting.mechanism_calibration")
    privacy_accountant = lazy_module("dp_accounting.privacy_accountant")
    pld_privacy_accountant = lazy_module("dp_accounting.pld.pld_privacy_accountant")
    rdp_privacy_accountant = lazy_module("dp_accounting.rdp.rdp_privacy_accountant")

__all__ = [
    "dp_event",
    "mechanism_calibration",
    "pld_privacy_accountant",
    "privacy_accountant",
    "rdp_privacy_accountant",
]
