"""Privacy accounting: what a run's releases cost, computed by Google's dp-accounting.

A release is described by a ``dp_accounting.dp_event.DpEvent`` (what happened)
and accounted by two of dp-accounting's accountants (how much it cost):

- the privacy loss distribution (PLD) accountant, the reported figure
  (Koskela, Jalko & Honkela 2020; Doroshenko, Ghazi, Kamath, Kumar & Manurangsi
  2022, "Connect the Dots: Tighter Discrete Approximations of Privacy Loss
  Distributions");
- the Renyi DP (RDP) accountant, always computed as a cross-check (Mironov 2017;
  Mironov, Talwar & Zhang 2019 for the Poisson-sampled Gaussian; Wang, Balle &
  Kasiviswanathan 2019 for sampling without replacement), converted to
  (epsilon, delta) with Proposition 12 of Canonne, Kamath & Steinke 2020
  (arXiv:2004.00010). The older conversion ``min_a rdp(a) + log(1/delta)/(a-1)``
  is looser: it is where the often-quoted epsilon of 3.01 for TF Privacy's MNIST
  DP-SGD example comes from; this conversion gives 2.597.

Units. In fedwarden ``noise_multiplier`` is always the noise standard deviation
divided by the clipping bound C of one privacy unit's contribution: the pipeline
adds N(0, (z C)^2) to a sum of contributions clipped to C (McMahan et al. 2018).
Under ``add_remove`` neighbours C is the sensitivity of that sum. Under
``replace_one`` neighbours it is 2C. dp-accounting's PLD accountant doubles the
sensitivity itself for ``replace_one``; its RDP accountant reads a Gaussian's or
Laplace's noise multiplier as noise over the sensitivity of the relation at
hand, so under ``replace_one`` the RDP accountant is given z / 2 (see
``accountants._as_rdp_sees_it``). Both accountants then describe the same mechanism.

Pure-DP releases. dp-accounting's RDP accountant has no formula for
``DiscreteLaplaceDpEvent`` (the exact integer noise of the analytics queries).
Such a release with noise parameter a and sensitivity D is (a D)-DP, and every
epsilon-DP mechanism is dominated by binary randomized response with the same
epsilon (Kairouz, Oh & Viswanath 2015), so its RDP cross-check is that of
``RandomizedResponseDpEvent(2 / (1 + e^(a D)), 2)`` under replace-one
neighbours: a sound upper bound whatever the relation the epsilon is stated
for. The PLD accountant accounts it exactly (under ``add_remove``).

Speed. A run charges the same few events hundreds of times. Identical events
are grouped; the PLD accountant builds each distinct event's privacy loss
distribution once (kept in a small cache), and a round only self-composes it
for its count (one FFT power) and composes the groups. The discretization
interval is dp-accounting's default 1e-4 while the RDP epsilon is below 2, and
about 1e-4 of the RDP epsilon above (a power of two, so it changes a handful
of times in a run): the PLD stays a pessimistic upper bound, within about 1e-4
relative of the default accountant's, and wide loss distributions (large
epsilon) stay small. The RDP curve of each distinct event is computed once and
the curves are added in charge order, so the RDP figure is bit-for-bit the one
dp-accounting's ``RdpAccountant`` returns when given the same events one by one.

The package: :mod:`~fedwarden.privacy.accounting.events` (the events of
fedwarden's releases), :mod:`~fedwarden.privacy.accounting.accountants` (what
events cost, and calibration) and
:mod:`~fedwarden.privacy.accounting.serialization` (events as the JSON a
ledger stores).
"""

from __future__ import annotations

from fedwarden.privacy.accounting.accountants import (
    AccountantName,
    Neighboring,
    PrivacySpend,
    calibrate_noise_multiplier,
    calibrate_release,
    compute_spend,
)
from fedwarden.privacy.accounting.events import (
    fixed_size_gaussian,
    poisson_gaussian,
)
from fedwarden.privacy.accounting.serialization import (
    event_from_json,
    event_to_json,
)

__all__ = [
    "AccountantName",
    "Neighboring",
    "PrivacySpend",
    "calibrate_noise_multiplier",
    "calibrate_release",
    "compute_spend",
    "event_from_json",
    "event_to_json",
    "fixed_size_gaussian",
    "poisson_gaussian",
]
