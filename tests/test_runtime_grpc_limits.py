"""The grpc server stays available to honest clients while a peer tries to exhaust it.

Each test mounts the attack from issue 17's finding 1: a peer (a certified
client outside the cohort, or any local process when serving ``--insecure``)
opens many Upload streams that never send a header, or send it slowly, or
send garbage. Honest clients must still join and the round must complete.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.client import _Stubs
from fedwarden.runtime.grpc.limits import ServerLimits, StreamDeadlines, StreamStalled
from grpc_deployment import Deployment, Site, deployment_at
from grpc_federation import wait_for

IDLE_STREAMS = 40
"""More Upload streams than the server of today has threads (2 n + 16 = 20 for two clients)."""


def silent(stop: threading.Event) -> Iterator[pb.UploadChunk]:
    """A request stream that sends nothing until ``stop`` is set."""
    stop.wait()
    yield from ()


class IdleUploads:
    """Upload streams an attacker opens over ``connections`` channels and never feeds."""

    def __init__(self, deployment: Deployment, client_id: str, streams: int, connections: int):
        self.stop = threading.Event()
        self.channels = [deployment.channel(client_id) for _ in range(connections)]
        self.calls = [
            _Stubs.on(self.channels[index % connections]).upload.future(silent(self.stop))
            for index in range(streams)
        ]

    def codes(self) -> Counter[grpc.StatusCode]:
        """How the streams the server has ended so far ended."""
        return Counter(call.exception().code() for call in self.calls if call.done())

    def close(self) -> None:
        self.stop.set()
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


@pytest.mark.parametrize("insecure", [False, True], ids=["certified-peer", "insecure-local-peer"])
def test_idle_upload_streams_do_not_stop_an_honest_join_or_the_round(
    tmp_path: Path, insecure: bool
) -> None:
    with deployment_at(tmp_path, insecure=insecure, extra_clients=("mallory",)) as deployment:
        attack = IdleUploads(deployment, "mallory", IDLE_STREAMS, connections=1 if insecure else 4)
        try:
            first, second = deployment.site("client_0"), deployment.site("client_1")
            done = deployment.round_in_background(0)
            assert first.answer().accepted
            assert second.answer().accepted
            record = done.get(timeout=60)
            assert record.participants == 2
            calls_per_peer = deployment.runtime.limits.calls_per_peer
            assert deployment.runtime.limiter.refused == {
                "peer_limit": IDLE_STREAMS - calls_per_peer
            }
            assert attack.codes() == {
                grpc.StatusCode.RESOURCE_EXHAUSTED: IDLE_STREAMS - calls_per_peer
            }
        finally:
            attack.close()


def test_a_stream_that_never_sends_its_header_is_cut_off_and_its_slot_freed(tmp_path: Path) -> None:
    limits = ServerLimits.for_clients(2, stream_deadline_s=0.5, calls_per_peer=2)
    with deployment_at(tmp_path, extra_clients=("mallory",), limits=limits) as deployment:
        attack = IdleUploads(deployment, "mallory", 2, connections=1)
        try:
            for call in attack.calls:
                with pytest.raises(grpc.RpcError) as stalled:
                    call.result(timeout=30)
                assert stalled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            wait_for(lambda: deployment.runtime.limiter.in_use() == (0, {}), 10, "freed slots")
            assert deployment.runtime.service.deadlines.stalled == 2
            again = IdleUploads(deployment, "mallory", 2, connections=1)
            with pytest.raises(grpc.RpcError) as stalled:
                again.calls[0].result(timeout=30)
            assert stalled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            again.close()
        finally:
            attack.close()


def test_an_upload_that_stalls_after_its_header_frees_the_task_for_an_honest_retry(
    tmp_path: Path,
) -> None:
    limits = ServerLimits.for_clients(2, stream_deadline_s=0.5)
    with deployment_at(tmp_path, limits=limits) as deployment:
        first, second = deployment.site("client_0"), deployment.site("client_1")
        done = deployment.round_in_background(0)
        task = first.next_task()
        header, body = first.honest_upload(task)
        stop = threading.Event()

        def header_then_nothing() -> Iterator[pb.UploadChunk]:
            yield pb.UploadChunk(header=header)
            yield pb.UploadChunk(data=body[:64])
            stop.wait()

        with pytest.raises(grpc.RpcError) as stalled:
            first.stubs.upload(header_then_nothing(), timeout=30)
        stop.set()
        assert stalled.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert first.send(header, body).accepted
        assert second.answer().accepted
        assert done.get(timeout=30).participants == 2


class SlowReader:
    """A call's context as the deadlines see it: the peer takes one response, then no more."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []

    async def write(self, response: bytes) -> None:
        if self.taken:
            await asyncio.Event().wait()
        self.taken.append(response)


def test_a_peer_that_stops_taking_responses_is_cut_off() -> None:
    deadlines = StreamDeadlines()
    reader = SlowReader()

    async def download() -> None:
        for chunk in (b"a", b"b"):
            await deadlines.send(reader, chunk, 0.2, "download")  # type: ignore[arg-type]

    with pytest.raises(StreamStalled, match="download stalled"):
        asyncio.run(download())
    assert reader.taken == [b"a"]
    assert deadlines.stalled == 1


def test_the_deadlines_give_a_working_handler_its_time_and_a_silent_peer_none() -> None:
    deadlines = StreamDeadlines()
    received: list[int] = []

    async def peer() -> AsyncIterator[int]:
        yield 1
        yield 2
        await asyncio.Event().wait()

    async def upload() -> None:
        async for message in deadlines.watch(peer(), 0.2, 0.2, "upload"):
            received.append(message)
            await asyncio.sleep(0.5)

    with pytest.raises(StreamStalled, match="upload stalled"):
        asyncio.run(upload())
    assert received == [1, 2]
    assert deadlines.stalled == 1


SOAK_SECONDS = 20.0
"""The soak's attack stops by itself after this long, whatever it has done."""
SOAK_STREAMS = 1000
"""...or after this many attacking streams, whichever comes first."""
SOAK_ROUNDS = 50
"""Honest rounds run while the attack lasts, at most."""
ROUND_GAP_S = 0.3
"""Pause between honest rounds, so that they span the attack."""


class Soak:
    """A bounded attack on loopback: idle, slow and malformed streams, and unauthenticated peers.

    ``certified`` streams come from one certified identity outside the cohort
    (over several connections); ``unauthenticated`` peers connect without a
    certificate (TLS handshake refused) or speak no TLS at all.
    """

    def __init__(self, deployment: Deployment, client_id: str) -> None:
        self.deployment = deployment
        self.client_id = client_id
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.opened: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.deadline = time.monotonic() + SOAK_SECONDS
        self.workers = [
            threading.Thread(target=self._streams, args=(kind,), daemon=True)
            for kind in ("idle", "slow", "malformed", "idle", "slow", "malformed")
        ] + [threading.Thread(target=self._unauthenticated, daemon=True)]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def active(self) -> bool:
        """Whether the attack still runs (it stops by itself at its time or stream cap)."""
        return any(worker.is_alive() for worker in self.workers)

    def finish(self) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=60)

    def _running(self) -> bool:
        with self.lock:
            total = sum(self.opened.values())
        return not self.stop.is_set() and time.monotonic() < self.deadline and total < SOAK_STREAMS

    def _count(self, counter: Counter[str], key: str) -> None:
        with self.lock:
            counter[key] += 1

    def _streams(self, kind: str) -> None:
        channel = self.deployment.channel(self.client_id)
        upload = channel.stream_unary(
            "/fedwarden.v1.Federation/Upload",
            request_serializer=bytes,
            response_deserializer=pb.UploadReceipt.FromString,
        )
        calls = []
        while self._running():
            self._count(self.opened, kind)
            calls.append(upload.future(self._requests(kind)))
            calls = [call for call in calls if not self._ended(call)]
            self.stop.wait(0.05)
        for call in calls:
            call.cancel()
        channel.close()

    def _requests(self, kind: str) -> Iterator[bytes]:
        """What each kind of attacking stream sends."""
        if kind == "malformed":
            yield b"\xff\xff\xff\xff not a protobuf message"
        elif kind == "slow":
            header = pb.UploadHeader(run_id="run-under-test", client_id=self.client_id)
            self.stop.wait(0.5)
            yield pb.UploadChunk(header=header).SerializeToString()
            while not self.stop.wait(0.5):
                yield pb.UploadChunk(data=b"\0").SerializeToString()
        self.stop.wait()

    def _ended(self, call: grpc.Future) -> bool:
        if not call.done():
            return False
        error = call.exception()
        self._count(self.ended, "accepted" if error is None else error.code().name)
        return True

    def _unauthenticated(self) -> None:
        """Peers without a certificate: a TLS client with none, and a socket speaking junk."""
        address = self.deployment.address
        root = self.deployment.kit(self.client_id).tls.root_certificate
        while self._running():
            self._count(self.opened, "unauthenticated")
            channel = grpc.secure_channel(
                address,
                grpc.ssl_channel_credentials(root_certificates=root),
                options=[("grpc.use_local_subchannel_pool", 1)],
            )
            try:
                _Stubs.on(channel).join(pb.JoinRequest(client_id="anonymous"), timeout=2)
            except grpc.RpcError as error:
                self._count(self.ended, f"unauthenticated {error.code().name}")
            channel.close()
            with socket.create_connection(("127.0.0.1", self.deployment.runtime.port)) as junk:
                junk.sendall(b"PRI * HTTP/2.0\r\n\r\nnot a settings frame")
            self.stop.wait(0.1)


class MemoryWatch:
    """The process's peak resident memory while it runs (sampled from /proc)."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _sample(self) -> None:
        while True:
            status = Path("/proc/self/status").read_text()
            resident = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
            self.peak_kib = max(self.peak_kib, int(resident.split()[1]))
            if self.stop.wait(0.05):
                return


def timed_round(deployment: Deployment, round_index: int, sites: list[Site]) -> float:
    """Run one round with ``sites`` answering honestly; its seconds (reported, never asserted)."""
    started = time.monotonic()
    done = deployment.round_in_background(round_index)
    for site in sites:
        assert site.answer().accepted
    record = done.get(timeout=120)
    assert record.participants == len(sites)
    assert not record.rejection_reasons
    return time.monotonic() - started


@pytest.mark.slow
def test_soak_idle_slow_and_malformed_streams_leave_honest_rounds_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limits = ServerLimits.for_clients(2, stream_deadline_s=1.0)
    with deployment_at(
        tmp_path, extra_clients=("mallory",), rounds=SOAK_ROUNDS + 1, limits=limits
    ) as deployment:
        runtime = deployment.runtime
        with MemoryWatch() as undisturbed_memory:
            sites = [deployment.site("client_0"), deployment.site("client_1")]
            undisturbed = timed_round(deployment, 0, sites)
        for site in sites:
            site.channel.close()
        soak = Soak(deployment, "mallory")
        soak.start()
        try:
            with MemoryWatch() as attacked_memory:
                wait_for(lambda: sum(soak.opened.values()) > 50, 30, "the attack to build up")
                sites = [deployment.site("client_0"), deployment.site("client_1")]
                attacked = []
                while soak.active() and len(attacked) < SOAK_ROUNDS:
                    attacked.append(timed_round(deployment, len(attacked) + 1, sites))
                    soak.stop.wait(ROUND_GAP_S)
                streams, per_peer = runtime.limiter.in_use()
                assert streams <= limits.max_streams
                assert per_peer.get("mallory", 0) <= limits.calls_per_peer
                grpc_threads = [
                    t for t in threading.enumerate() if t.name.startswith("fedwarden-grpc")
                ]
                assert len(grpc_threads) <= limits.max_concurrent_rpcs
        finally:
            soak.finish()
        assert runtime.uploads.rejections.total() <= sum(soak.opened.values())
        with capsys.disabled():
            print(
                "\nsoak (loopback, bounded):"
                f"\n  streams opened by kind: {dict(soak.opened)}"
                f"\n  how they ended: {dict(soak.ended)}"
                f"\n  refused by the limiter: {dict(runtime.limiter.refused)};"
                f" cut off at a deadline: {runtime.service.deadlines.stalled};"
                f" uploads refused: {dict(runtime.uploads.rejections)}"
                f"\n  honest round: undisturbed {undisturbed:.2f} s,"
                f" under attack median {statistics.median(attacked):.2f} s,"
                f" slowest {max(attacked):.2f} s over {len(attacked)} rounds"
                f"\n  peak RSS: undisturbed {undisturbed_memory.peak_kib / 1024:.0f} MiB,"
                f" under attack {attacked_memory.peak_kib / 1024:.0f} MiB"
            )
