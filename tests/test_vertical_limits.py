"""A feature party's gRPC server refuses oversized messages and calls past its caps.

Issue 17 build item 1 for the vertical service: the bounds of the federation
server (:mod:`fedwarden.runtime.grpc.limits`) on the ``FeatureParty``
service. An attacker that reaches the party (a local process under
``--insecure``, or the driver itself) cannot hold every thread or make it
read an unbounded message; each excess call ends at once with
``RESOURCE_EXHAUSTED`` and the party keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from fedwarden.runtime.grpc.limits import ServerLimits
from fedwarden.secure.psi import POINT_BYTES, PsiRequest
from fedwarden.vertical import FeaturePartyServer, RemoteFeatureParty, VerticalError
from fedwarden.vertical.remote.server import PARTY_LIMITS

IDS = tuple(f"id-{index}" for index in range(50))


@contextmanager
def party(**options: object) -> Iterator[FeaturePartyServer]:
    """One feature party on loopback without TLS."""
    server = FeaturePartyServer(
        "clinic", IDS, np.zeros((len(IDS), 3)), address="127.0.0.1:0", tls=None, **options
    )
    server.serve()
    try:
        yield server
    finally:
        server.stop()


def test_the_party_server_is_bounded_by_default() -> None:
    assert PARTY_LIMITS.max_concurrent_rpcs == 4
    assert PARTY_LIMITS.calls_per_peer == 2


def test_a_message_over_the_cap_is_refused_and_the_party_keeps_serving() -> None:
    with party(max_message_bytes=64 << 10) as server:
        address = f"127.0.0.1:{server.port}"
        with RemoteFeatureParty.connect(address, None) as remote:
            # 2,048 points of 32 bytes are 64 KiB: with the rest of the message, over the cap.
            oversized = PsiRequest("intersection", (bytes(POINT_BYTES),) * 2048)
            with pytest.raises(VerticalError, match="RESOURCE_EXHAUSTED"):
                remote.answer_intersection(oversized)
            assert remote.table_rows == len(IDS)
        with RemoteFeatureParty.connect(address, None) as again:  # still serving
            assert again.name == "clinic"


@pytest.mark.parametrize(
    ("calls_per_peer", "held", "refusal"),
    [(1, 1, r"RESOURCE_EXHAUSTED.*already has 1 calls in progress"), (2, 2, "RESOURCE_EXHAUSTED")],
    ids=["per-peer cap", "global cap"],
)
def test_a_call_past_the_per_peer_or_global_cap_is_refused_at_once(
    calls_per_peer: int, held: int, refusal: str
) -> None:
    # Two calls in progress in all. Channels of one process to one address share a connection,
    # which is one peer under --insecure.
    limits = ServerLimits(max_streams=1, join_slots=1, calls_per_peer=calls_per_peer)
    with (
        party(limits=limits) as server,
        RemoteFeatureParty.connect(f"127.0.0.1:{server.port}", None) as remote,
    ):
        answers: list[BaseException | None] = []
        # The party runs its handlers one at a time: holding that lock keeps each admitted call
        # in progress inside the server.
        with server._lock:
            callers = [
                threading.Thread(target=lambda: answers.append(offer(remote))) for _ in range(held)
            ]
            for caller in callers:
                caller.start()
            wait_until(lambda: sum(server.limiter.in_use()[1].values()) == held)
            with pytest.raises(VerticalError, match=refusal):
                remote.offer()
        for caller in callers:
            caller.join(timeout=30)
        assert answers == [None] * held  # the held calls were answered once the party was free
        assert server.limiter.refused == ({"peer_limit": 1} if held == 1 else {})
        remote.offer()  # and the party serves again


def offer(remote: RemoteFeatureParty) -> BaseException | None:
    """Run an ``Offer``; the error it ended with, or None."""
    try:
        remote.offer()
    except VerticalError as error:
        return error
    return None


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
