"""Private set intersection cost: fedwarden's DH-PSI against the 10 s target of issue 8.

Workload (issue 8): two parties with ``n`` ids each (default 100,000), strings
``"entity-<k>"``, half of them shared. Timed on this machine:

* **concurrent** (the figure against the target): each party in its own
  process with one worker thread, so one core per party, the two running at
  once, messages passed as raw concatenated points over a pipe (no pickle).
  The sender offers its blinded ids (:meth:`~fedwarden.secure.psi.PsiSender.offer`)
  while the receiver builds its request; then the sender answers the request
  while the receiver blinds the offer (:meth:`~fedwarden.secure.psi.PsiReceiver.accept`);
  the receiver compares last. Reported: each party's phases (wall and CPU
  seconds of that process), the wall time from the common start until the
  receiver has the intersection, and the CPU seconds of both parties.
* **one after another** in this process, each party on ``--workers`` threads,
  phase by phase: what each party costs when it has every core to itself.
* **hash to the group** per id, CPU microseconds on one thread, for the
  constructions weighed in :mod:`fedwarden.secure.psi`'s docstring.
* **the bound**: the operations no DH-PSI can skip, one hash into the group
  and two variable-base scalar multiplications per id and party, each timed
  in a tight loop of single library calls (the best of three passes), times
  ``n``: the CPU seconds each party needs at least. With both parties on one
  2-core machine, the wall time cannot be below the busier party's. Timed for
  libsodium's X25519 (used) and OpenSSL's (through ``cryptography``, weighed).
* **openmined-psi** (Angelou et al. 2020, "Asymmetric Private Set
  Intersection with Applications to Contact Tracing and Private Vertical
  Federated Machine Learning"; ECDH over P-256 in C++), when installed.

Every result is checked against the plain set intersection. Nothing about
time is asserted: this is a benchmark, not a test. CPU seconds are
``time.process_time`` (all threads of a process), steadier than wall time on
a machine shared with other work.

Run from the repository root: ``python -m benchmarks.psi`` or, smaller,
``python -m benchmarks.psi --size 20000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl import bindings

from fedwarden.secure.psi import (
    POINT_BYTES,
    PsiOffer,
    PsiReceiver,
    PsiRequest,
    PsiResponse,
    PsiSender,
    hash_to_group,
)

TARGET_SECONDS = 10.0
"""Issue 8: 100,000 ids per side within this many seconds on 2 cores."""

Timings = dict[str, tuple[float, float]]
"""Per phase: wall-clock seconds and CPU seconds (all threads of this process)."""


def entity_ids(size: int, party: str) -> list[str]:
    """A party's ids: the receiver's ``0..n-1``, the sender's ``n/2..3n/2-1``: half shared."""
    start = 0 if party == "receiver" else size // 2
    return [f"entity-{index}" for index in range(start, start + size)]


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
    """Phases as a table."""
    print(f"\n{title}\n  {'phase':44s} {'wall s':>8s} {'CPU s':>8s}")
    for label, (wall, cpu) in timings.items():
        print(f"  {label:44s} {wall:8.2f} {cpu:8.2f}")


def _points(payload: bytes) -> tuple[bytes, ...]:
    """Concatenated 32-byte points, split."""
    return tuple(
        payload[start : start + POINT_BYTES] for start in range(0, len(payload), POINT_BYTES)
    )


def _receiver_process(size: int, peer: Connection, report: Connection, start: Barrier) -> None:
    """The receiver's side of the concurrent run; reports its phases and result as JSON."""
    receiver = PsiReceiver(entity_ids(size, "receiver"), workers=1)
    timings: Timings = {}
    start.wait()
    began = time.perf_counter()
    request = _timed("receiver 1: request (hash, blind own)", receiver.request, timings)
    peer.send_bytes(b"".join(request.points))
    offer = PsiOffer("intersection", _points(peer.recv_bytes()))
    _timed("receiver 2: accept (blind sender's offer)", lambda: receiver.accept(offer), timings)
    response = PsiResponse(double_blinded=_points(peer.recv_bytes()))
    outcome = _timed("receiver 3: finish (compare)", lambda: receiver.finish(response), timings)
    ended = time.perf_counter()
    summary = {"timings": timings, "began": began, "ended": ended, "found": outcome.size}
    report.send_bytes(json.dumps(summary).encode())


def _sender_process(size: int, peer: Connection, report: Connection, start: Barrier) -> None:
    """The sender's side of the concurrent run; reports its phases as JSON."""
    sender = PsiSender(entity_ids(size, "sender"), workers=1)
    timings: Timings = {}
    start.wait()
    began = time.perf_counter()
    offer = _timed("sender 1: offer (hash, blind own)", sender.offer, timings)
    request = PsiRequest("intersection", _points(peer.recv_bytes()))
    peer.send_bytes(b"".join(offer.points))
    response = _timed(
        "sender 2: respond (blind receiver's points)", lambda: sender.respond(request), timings
    )
    peer.send_bytes(b"".join(response.double_blinded))
    ended = time.perf_counter()
    report.send_bytes(json.dumps({"timings": timings, "began": began, "ended": ended}).encode())


def run_concurrent(size: int) -> tuple[Timings, float, int]:
    """Both parties at once, a process and a core each: phases, wall seconds, intersection size.

    The wall time runs from the first party's start to the last party's end
    (``time.perf_counter`` is the system's monotonic clock, shared by the two
    processes); building the id lists and starting the processes is not timed.
    The request travels before the offer so that neither party blocks on a
    full pipe while the other is sending.
    """
    context = multiprocessing.get_context("spawn")
    receiver_peer, sender_peer = context.Pipe()
    start = context.Barrier(2)
    reports: list[Connection] = []
    processes = []
    for target, peer in ((_receiver_process, receiver_peer), (_sender_process, sender_peer)):
        incoming, outgoing = context.Pipe(duplex=False)
        reports.append(incoming)
        processes.append(context.Process(target=target, args=(size, peer, outgoing, start)))
    for process in processes:
        process.start()
    summaries = [json.loads(incoming.recv_bytes()) for incoming in reports]
    for process in processes:
        process.join()
    timings: Timings = {}
    for summary in summaries:
        timings.update({label: (wall, cpu) for label, (wall, cpu) in summary["timings"].items()})
    began = min(summary["began"] for summary in summaries)
    wall = max(summary["ended"] for summary in summaries) - began
    return timings, wall, int(summaries[0]["found"])


def run_one_after_another(size: int, workers: int) -> Timings:
    """The same protocol in this process, one phase at a time, each party on ``workers`` threads."""
    timings: Timings = {}
    receiver = PsiReceiver(entity_ids(size, "receiver"), workers=workers)
    sender = PsiSender(entity_ids(size, "sender"), workers=workers)
    offer = _timed("sender 1: offer (hash, blind own)", sender.offer, timings)
    request = _timed("receiver 1: request (hash, blind own)", receiver.request, timings)
    _timed("receiver 2: accept (blind sender's offer)", lambda: receiver.accept(offer), timings)
    response = _timed(
        "sender 2: respond (blind receiver's points)", lambda: sender.respond(request), timings
    )
    _timed("receiver 3: finish (compare)", lambda: receiver.finish(response), timings)
    return timings


def hash_costs(count: int) -> dict[str, float]:
    """CPU microseconds per id, one thread, of the hash-to-group constructions weighed."""
    digests = [hashlib.sha512(f"entity-{index}".encode()).digest() for index in range(count)]
    constructions: dict[str, Callable[[], object]] = {
        "SHA-512 only (into curve or twist: refused)": lambda: [
            hashlib.sha512(f"entity-{index}".encode()).digest()[:32] for index in range(count)
        ],
        "one Elligator 2 map, to u (used)": lambda: hash_to_group(
            [f"entity-{index}" for index in range(count)]
        ),
        "two Elligator 2 maps added (before)": lambda: [
            bindings.crypto_core_ed25519_add(
                bindings.crypto_core_ed25519_from_uniform(digest[:32]),
                bindings.crypto_core_ed25519_from_uniform(digest[32:]),
            )
            for digest in digests
        ],
    }
    costs: dict[str, float] = {}
    for label, construction in constructions.items():
        cpu = time.process_time()
        construction()
        costs[label] = (time.process_time() - cpu) / count * 1e6
    return costs


def operation_costs(count: int) -> dict[str, float]:
    """CPU microseconds per call, one thread, best of three passes, of the operations DH-PSI needs.

    Each is a tight loop of one library call over ``count`` distinct inputs,
    so nothing of the protocol's own bookkeeping is counted.
    """
    digests = [hashlib.sha512(f"entity-{index}".encode()).digest()[:32] for index in range(count)]
    points = hash_to_group([f"entity-{index}" for index in range(count)])
    secret = os.urandom(POINT_BYTES)
    exchange = X25519PrivateKey.from_private_bytes(secret).exchange
    load = X25519PublicKey.from_public_bytes
    from_uniform, scalarmult = bindings.crypto_core_ed25519_from_uniform, bindings.crypto_scalarmult
    operations: dict[str, Callable[[], object]] = {
        "hash: libsodium Elligator 2 (used)": lambda: [from_uniform(d) for d in digests],
        "X25519: libsodium (used)": lambda: [scalarmult(secret, point) for point in points],
        "X25519: OpenSSL via cryptography (weighed)": lambda: [
            exchange(load(point)) for point in points
        ],
    }
    costs: dict[str, float] = {}
    for label, operation in operations.items():
        passes = []
        for _ in range(3):
            cpu = time.process_time()
            operation()
            passes.append((time.process_time() - cpu) / count * 1e6)
        costs[label] = min(passes)
    return costs


def run_openmined(receiver_ids: Sequence[str], sender_ids: Sequence[str]) -> tuple[Timings, int]:
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
    """Time the concurrent run against the target, then the phases alone, the hashes, openmined."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="ids per party")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    arguments = parser.parse_args()
    size = arguments.size
    receiver_ids, sender_ids = entity_ids(size, "receiver"), entity_ids(size, "sender")
    expected = len(set(receiver_ids) & set(sender_ids))
    print(
        f"PSI of {size} ids per party ({expected} shared) on {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores"
    )

    timings, wall, found = run_concurrent(size)
    if found != expected:
        raise SystemExit(f"fedwarden found {found} shared ids, expected {expected}")
    _print("fedwarden DH-PSI, both parties at once, one process and one core each", timings)
    concurrent_cpu = {
        party: sum(cpu for label, (_, cpu) in timings.items() if label.startswith(party))
        for party in ("receiver", "sender")
    }
    busiest = max(concurrent_cpu.values())
    verdict = "meets" if wall <= TARGET_SECONDS else "misses"
    print(
        f"  wall {wall:.2f} s from start to intersection ({verdict} the {TARGET_SECONDS:.0f} s "
        f"target); CPU {sum(concurrent_cpu.values()):.2f} s for both parties (receiver "
        f"{concurrent_cpu['receiver']:.2f} s, sender {concurrent_cpu['sender']:.2f} s)"
    )

    alone = run_one_after_another(size, arguments.workers)
    _print(f"the same phases one after another, {arguments.workers} threads per party", alone)
    for party in ("receiver", "sender"):
        party_wall, party_cpu = _total(
            {label: times for label, times in alone.items() if label.startswith(party)}
        )
        print(f"  {party}: wall {party_wall:.2f} s, CPU {party_cpu:.2f} s")

    print("\nhash to the group, CPU microseconds per id on one thread")
    for label, cost in hash_costs(min(size, 20_000)).items():
        print(f"  {label:44s} {cost:8.1f}")

    costs = operation_costs(min(size, 20_000))
    print("\nthe bound: one hash and two X25519 per id and party, CPU microseconds per call")
    for label, cost in costs.items():
        print(f"  {label:44s} {cost:8.1f}")
    hash_cost = costs["hash: libsodium Elligator 2 (used)"]
    for label in ("X25519: libsodium (used)", "X25519: OpenSSL via cryptography (weighed)"):
        bound = size * (hash_cost + 2 * costs[label]) / 1e6
        print(
            f"  {label}: each party needs at least {bound:.2f} CPU s, {bound / TARGET_SECONDS:.0%}"
            f" of the {TARGET_SECONDS:.0f} s target (the busier party above: {busiest:.2f} s)"
        )

    try:
        theirs, found = run_openmined(receiver_ids, sender_ids)
    except ImportError:
        print("\nopenmined-psi is not installed: `pip install openmined-psi` to compare")
        return
    if found != expected:
        raise SystemExit(f"openmined-psi found {found} shared ids, expected {expected}")
    _print("openmined-psi (ECDH over P-256, raw setup, one process)", theirs)
    print(
        f"  fedwarden used {sum(concurrent_cpu.values()):.2f} CPU s in all, "
        f"openmined-psi {theirs['total'][1]:.2f}"
    )


if __name__ == "__main__":
    main()
