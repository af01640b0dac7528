"""Private set intersection cost: fedwarden's DH-PSI, and OpenMined's ``openmined-psi`` beside it.

Workload (issue 8): two parties with ``n`` ids each (default 100,000), strings
``"entity-<k>"``, half of them shared. Timed, in one process on this machine:

* **fedwarden** (:mod:`fedwarden.secure.psi`, DH-PSI over Curve25519's
  prime-order group, intersection mode, each party on ``--workers`` threads):
  the receiver's *request* (hash its ids to the group and blind them), the
  sender's *respond* (blind the receiver's points again, hash and blind its
  own), the receiver's *finish* (blind the sender's points, compare), and the
  total; the hash to the group alone is timed once more on the receiver's ids
  to show its share. The cardinality mode does the same work plus two shuffles.
* **openmined-psi** (Angelou et al. 2020, "Asymmetric Private Set
  Intersection with Applications to Contact Tracing and Private Vertical
  Federated Machine Learning"; ECDH over P-256 in C++), when installed: the
  server's setup message (its ids, a raw list so the result is exact), the
  client's request, the server's answer and the client's intersection.

Both results are checked against the plain set intersection. Nothing about
time is asserted: this is a benchmark, not a test.

Run from the repository root: ``python -m benchmarks.psi`` or, smaller,
``python -m benchmarks.psi --size 20000``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from fedwarden.secure.psi import PsiReceiver, PsiSender, hash_to_group

Timings = dict[str, tuple[float, float]]
"""Per phase: wall-clock seconds and CPU seconds (all threads of this process)."""


def _timed(label: str, action: Callable[[], Any], timings: Timings) -> Any:
    """Run ``action``, record its wall-clock and CPU seconds under ``label``, return its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    timings[label] = (time.perf_counter() - wall, time.process_time() - cpu)
    return result


def _total(timings: Timings) -> tuple[float, float]:
    """The wall-clock and CPU seconds of all phases recorded so far."""
    return (sum(wall for wall, _ in timings.values()), sum(cpu for _, cpu in timings.values()))


def _print(title: str, timings: Timings) -> None:
    """One implementation's phases as a table."""
    print(f"\n{title}\n  {'phase':34s} {'wall s':>8s} {'CPU s':>8s}")
    for label, (wall, cpu) in timings.items():
        print(f"  {label:34s} {wall:8.2f} {cpu:8.2f}")


def run_fedwarden(
    receiver_ids: list[str], sender_ids: list[str], workers: int
) -> tuple[Timings, int]:
    """fedwarden's DH-PSI in intersection mode: seconds per phase and the intersection's size."""
    timings: Timings = {}
    receiver = PsiReceiver(receiver_ids, workers=workers)
    sender = PsiSender(sender_ids, workers=workers)
    request = _timed("receiver request", receiver.request, timings)
    response = _timed("sender respond", lambda: sender.respond(request), timings)
    outcome = _timed("receiver finish", lambda: receiver.finish(response), timings)
    timings["total"] = _total(timings)
    _timed("(hash to group, receiver's ids)", lambda: hash_to_group(receiver_ids, workers), timings)
    return timings, outcome.size


def run_openmined(receiver_ids: list[str], sender_ids: list[str]) -> tuple[Timings, int]:
    """openmined-psi with an exact (raw) setup: seconds per phase and the intersection's size."""
    import private_set_intersection.python as openmined

    timings: Timings = {}
    client = openmined.client.CreateWithNewKey(True)
    server = openmined.server.CreateWithNewKey(True)
    setup = _timed(
        "server setup",
        lambda: server.CreateSetupMessage(
            1e-9, len(receiver_ids), sender_ids, openmined.DataStructure.RAW
        ),
        timings,
    )
    request = _timed("client request", lambda: client.CreateRequest(receiver_ids), timings)
    response = _timed("server respond", lambda: server.ProcessRequest(request), timings)
    indices = _timed("client finish", lambda: client.GetIntersection(setup, response), timings)
    timings["total"] = _total(timings)
    return timings, len(indices)


def main() -> None:
    """Time both implementations on the same ids and print the phases side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="ids per party")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    arguments = parser.parse_args()
    size = arguments.size
    receiver_ids = [f"entity-{index}" for index in range(size)]
    sender_ids = [f"entity-{index}" for index in range(size // 2, size + size // 2)]
    expected = len(set(receiver_ids) & set(sender_ids))
    print(
        f"PSI of {size} ids per party ({expected} shared) on {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, {arguments.workers} worker threads per party"
    )

    ours, found = run_fedwarden(receiver_ids, sender_ids, arguments.workers)
    if found != expected:
        raise SystemExit(f"fedwarden found {found} shared ids, expected {expected}")
    _print("fedwarden DH-PSI (X25519, hash to group by two Elligator 2 maps)", ours)

    try:
        theirs, found = run_openmined(receiver_ids, sender_ids)
    except ImportError:
        print("\nopenmined-psi is not installed: `pip install openmined-psi` to compare")
        return
    if found != expected:
        raise SystemExit(f"openmined-psi found {found} shared ids, expected {expected}")
    _print("openmined-psi (ECDH over P-256, raw setup)", theirs)
    ours_cpu, theirs_cpu = ours["total"][1], theirs["total"][1]
    faster = "fedwarden" if ours_cpu <= theirs_cpu else "openmined-psi"
    ratio = max(ours_cpu, theirs_cpu) / min(ours_cpu, theirs_cpu)
    print(f"\n{faster} is faster, by {ratio:.1f}x in total CPU time")


if __name__ == "__main__":
    main()
