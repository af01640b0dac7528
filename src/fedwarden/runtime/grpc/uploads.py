"""The grpc runtime's uploads: header checks, spooling and hashing, signatures, acceptance.

Each upload's header is checked before its body is read (this run, an open
task of this client, not already delivered); the body is streamed chunk by
chunk into a spool file while its SHA-256 is computed; then the signature is
verified against the enrolled key. A refused upload (``forged``,
``replayed``, ``duplicate``, ``corrupted``, ``impersonation``,
``unknown_task``) is never aggregated; it is counted against the
authenticated sender, never the client its header names. A refusal of the
sender's own open task goes to the server, whose listeners record it; the
others, which the server never sees, are recorded in the journal at a
bounded rate. An accepted update is fsynced and recorded in the journal
before the client gets its receipt, so a server killed afterwards still has
it: on restart the round's accepted updates (an asynchronous run's: those of
its open tasks not yet in a released buffer) are read back from the spool.
Accepted updates are memory-mapped from the spool, so the server's
footprint stays O(model).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.core.errors import FedwardenError
from fedwarden.core.files import atomic_file
from fedwarden.core.messages import ClientEvaluation, ClientUpdate, UpdateRefused
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.core.records import round_number
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.journal import AcceptedUpdate, DuplicateUpdate, Journal
from fedwarden.runtime.grpc.limits import CallRefused
from fedwarden.runtime.grpc.serving import Workers
from fedwarden.runtime.grpc.tasks import OpenTask, ProtocolAnswer, TaskBoard
from fedwarden.runtime.grpc.wire import (
    CHUNK_BYTES,
    PAYLOAD_KINDS,
    ProtocolError,
    UploadMetadata,
    canonical_json,
    signature_valid,
)

logger = logging.getLogger(__name__)

MAX_PROTOCOL_BYTES = 16 << 20
"""Largest answer to a protocol step (secure aggregation's are kilobytes)."""
MAX_RECORDED_REFUSALS = 10
"""Refused uploads answering no open task of their sender, recorded one by one per peer and
round; the rest are counted, and recorded as one row when the round ends."""


class UploadRefused(FedwardenError):
    """An upload failed a transport check; ``reason`` is the counted tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Uploads:
    """Receives uploads into ``spool_dir`` and keeps the count of those it refused."""

    def __init__(
        self, board: TaskBoard, journal: Journal, spool_dir: Path, workers: Workers
    ) -> None:
        self.board = board
        self.journal = journal
        self.workers = workers
        """The server's pool of threads, for spooling, signatures, the journal and deletions."""
        self.run_id = board.run_id
        self.spool_dir = spool_dir
        self.rejections: Counter[str] = Counter()
        """Refused uploads by reason, over the server's life."""
        self.refusals_by_peer: dict[str, Counter[str]] = {}
        """Refused uploads by the peer that sent them (its certificate's name), and reason."""
        self._recorded_refusals: Counter[str] = Counter()
        self._unrecorded_refusals: dict[str, Counter[str]] = {}

    async def receive_upload(
        self,
        caller: str | None,
        address: str,
        stream: AsyncIterator[pb.UploadChunk | memoryview],
    ) -> pb.UploadReceipt:
        """Check the header, spool and hash the body, verify the signature, record, receipt.

        ``caller`` is the certificate's name (None under --insecure, when the
        connection's ``address`` names the sender); ``stream`` is watched. The
        call waits for chunks without a thread; spooling, fsync, signature and
        journal run on the server's worker threads.
        """
        workers = self.workers
        sender = caller if caller is not None else f"unauthenticated {address}"
        first = await anext(stream, None)
        if first is None or isinstance(first, memoryview) or first.WhichOneof("kind") != "header":
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header")
        header = first.header
        try:
            task = self._claim(header, caller)
        except UploadRefused as refusal:
            return await workers.run(self._refuse, sender, None, refusal)
        except ProtocolError as error:
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        try:
            reply = await self._receive(task, header, stream)
        except UploadRefused as refusal:
            self._release(task)
            return await workers.run(self._refuse, sender, task, refusal)
        except ProtocolError as error:
            self._release(task)
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        except BaseException:
            self._release(task)
            raise
        self.board.post(reply, task.task_id)
        return pb.UploadReceipt(accepted=True)

    def delete_spooled(self, round_index: int, client_id: str | None = None) -> None:
        """Release the spooled updates of a round (or one client's): the server has applied them.

        The journal forgets them at once; their files are unlinked on a worker
        thread, off the next round's path (unlinking a freshly fsynced 40 MB
        file waits on the file system for about 10 ms). Stopping the workers
        waits for the deletions.
        """
        paths = self.journal.release_payloads(self.run_id, round_index, client_id)
        if paths:
            self.workers.submit(_unlink_all, paths)

    def accepted(self, round_index: int) -> dict[str, AcceptedUpdate]:
        """The journal's rows of the round's accepted updates not yet released, by client.

        Read after a restart: a released update was applied (or refused) and
        checkpointed, and its spooled copy is gone.
        """
        rows = self.journal.accepted_updates(self.run_id, round_index)
        return {row.client_id: row for row in rows if row.payload_path}

    def read_back(self, row: AcceptedUpdate) -> ClientUpdate:
        """An update accepted before a restart, from its journal row and spool file."""
        self.board.delivered.add((row.round_index, row.client_id))
        payload_kind = json.loads(row.header_json)["payload_kind"]
        return _update_from_spool(
            row.round_index,
            row.client_id,
            row.num_examples,
            row.metrics_json,
            payload_kind,
            Path(row.payload_path),
        )

    def _claim(self, header: pb.UploadHeader, peer: str | None) -> OpenTask:
        """The open task ``header`` answers, marked as receiving; ``UploadRefused`` otherwise."""
        if header.payload_kind not in PAYLOAD_KINDS:
            raise ProtocolError(f"payload_kind must be one of {PAYLOAD_KINDS}")
        client_id = header.client_id
        if peer is not None and client_id != peer:
            raise UploadRefused(
                "impersonation", f"certificate {peer!r} uploaded as client {client_id!r}"
            )
        if header.run_id != self.run_id:
            raise UploadRefused(
                "replayed", f"{client_id} sent an upload of run {header.run_id!r}, not this run"
            )
        board = self.board
        with board.lock:
            task = board.open.get(header.task_id)
            if task is None or task.client_id != client_id:
                if board.expired.get(header.task_id) == client_id:
                    raise UploadRefused(
                        "late",
                        f"{client_id} answered task {header.task_id!r} of round "
                        f"{header.round_index} after it was closed (deadline or lost session)",
                    )
                if header.round_index < board.current_round:
                    raise UploadRefused(
                        "replayed",
                        f"{client_id} sent an upload for round {round_number(header.round_index)}; "
                        f"round {round_number(board.current_round)} is running",
                    )
                if (header.round_index, client_id) in board.delivered:
                    raise UploadRefused(
                        "duplicate",
                        f"{client_id} already delivered round {round_number(header.round_index)}",
                    )
                raise UploadRefused(
                    "unknown_task", f"{client_id} answered task {header.task_id!r}, not open"
                )
            if task.receiving:
                raise UploadRefused("duplicate", f"{client_id} is already uploading this task")
            if header.round_index != task.round_index:
                raise UploadRefused(
                    "replayed",
                    f"{client_id}'s upload names round {round_number(header.round_index)}, its "
                    f"task is for round {round_number(task.round_index)}",
                )
            task.receiving = True
        return task

    def _release(self, task: OpenTask) -> None:
        with self.board.lock:
            if task.task_id in self.board.open:
                task.receiving = False

    def _refuse(
        self, sender: str, task: OpenTask | None, refusal: UploadRefused
    ) -> pb.UploadReceipt:
        """Count a refused upload against its sender; have it recorded; tell the client why.

        ``sender`` is the authenticated certificate's name (under --insecure,
        the connection), never the name a header claims. A refusal of an upload
        for the sender's own open ``task`` goes to the server, whose listeners
        record and audit it one by one; the rest, which the server never sees,
        are recorded in the journal up to ``MAX_RECORDED_REFUSALS`` per peer and
        round, then counted (:meth:`record_unrecorded` writes the count).
        """
        self.rejections[refusal.reason] += 1
        receipt = pb.UploadReceipt(accepted=False, reason=refusal.reason, message=str(refusal))
        with self.board.lock:
            self.refusals_by_peer.setdefault(sender, Counter())[refusal.reason] += 1
            recorded = task is not None or self._recorded_refusals[sender] < MAX_RECORDED_REFUSALS
            if task is None and recorded:
                self._recorded_refusals[sender] += 1
            elif not recorded:
                self._unrecorded_refusals.setdefault(sender, Counter())[refusal.reason] += 1
        if not recorded:
            logger.debug(
                "upload refused (%s) from %s, counted: %s", refusal.reason, sender, refusal
            )
            return receipt
        logger.warning("upload refused (%s) from %s: %s", refusal.reason, sender, refusal)
        if task is None:
            self.journal.record_rejection(self.run_id, None, sender, refusal.reason, str(refusal))
        else:
            refused = UpdateRefused(task.round_index, sender, refusal.reason, str(refusal))
            self.board.post(refused, None)
        return receipt

    def record_unrecorded(self) -> None:
        """Record, one row per peer, the refusals counted but not recorded since the last call."""
        with self.board.lock:
            unrecorded, self._unrecorded_refusals = self._unrecorded_refusals, {}
            self._recorded_refusals.clear()
        for sender, reasons in unrecorded.items():
            counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
            self.journal.record_rejection(
                self.run_id,
                None,
                sender,
                "rate_limited",
                f"{reasons.total()} further refused uploads ({counts}) counted, not recorded "
                "one by one",
            )

    async def _receive(
        self,
        task: OpenTask,
        header: pb.UploadHeader,
        stream: AsyncIterator[pb.UploadChunk | memoryview],
    ) -> ClientUpdate | ClientEvaluation | ProtocolAnswer:
        """Spool and hash the body, verify the signature; the accepted reply."""
        workers = self.workers
        metadata = UploadMetadata.from_json(header.metadata_json)
        expected = self._expected_bytes(task, header)
        if task.kind != "fit":
            body = bytearray()
            async for data in _data_chunks(stream):
                body += data
                if len(body) > expected:
                    raise ProtocolError(f"the upload exceeds its declared {expected} bytes")
            await workers.run(self._accept_small, task, header, body, expected)
            if task.kind == "protocol":
                return ProtocolAnswer(task.client_id, bytes(body))
            return ClientEvaluation(task.client_id, header.num_examples, metadata.metrics)
        path = self.spool_dir / f"round-{task.round_index}" / f"{task.client_id}.bin"
        spool = await workers.run(Spool, path)
        try:
            received = 0
            async for data in _data_chunks(stream):
                received += len(data)
                if received > expected:
                    raise ProtocolError(f"the upload exceeds its declared {expected} bytes")
                await workers.run(spool.write, data)
            if received != expected:
                raise ProtocolError(f"the upload ended after {received} of {expected} bytes")
            await workers.run(self._accept, task, header, spool, path)
        except BaseException as error:
            spool.discard(error)
            raise
        return _update_from_spool(
            task.round_index,
            task.client_id,
            header.num_examples,
            header.metadata_json,
            header.payload_kind,
            path,
        )

    def _accept(self, task: OpenTask, header: pb.UploadHeader, spool: Spool, path: Path) -> None:
        """Check the spooled update's hash and signature, make it durable, record it (blocking)."""
        if spool.digest.digest() != bytes(header.payload_sha256):
            raise UploadRefused(
                "corrupted", f"{task.client_id}'s payload does not match its SHA-256"
            )
        self._verify(task, header)
        spool.keep()
        try:
            self.journal.accept_update(
                self.run_id,
                task.round_index,
                task.client_id,
                digest=spool.digest.hexdigest(),
                num_examples=header.num_examples,
                metrics_json=header.metadata_json,
                payload_path=str(path),
                header_json=canonical_json({"payload_kind": header.payload_kind}),
            )
        except DuplicateUpdate as error:
            raise UploadRefused("duplicate", str(error)) from None
        with self.board.lock:
            self.board.open.pop(task.task_id, None)
            self.board.delivered.add((task.round_index, task.client_id))

    def _accept_small(
        self, task: OpenTask, header: pb.UploadHeader, body: bytearray, expected: int
    ) -> None:
        """Check an evaluation's or protocol answer's size, hash and signature (blocking)."""
        if len(body) != expected:
            raise ProtocolError(f"the upload ended after {len(body)} of {expected} bytes")
        if hashlib.sha256(body).digest() != bytes(header.payload_sha256):
            raise UploadRefused(
                "corrupted", f"{task.client_id}'s answer does not match its SHA-256"
            )
        self._verify(task, header)
        with self.board.lock:
            self.board.open.pop(task.task_id, None)

    def _verify(self, task: OpenTask, header: pb.UploadHeader) -> None:
        """Refuse an upload whose signature is not the enrolled identity's."""
        enrolled = self.journal.enrolled(task.client_id)
        if enrolled is None or not signature_valid(
            header, Ed25519PublicKey.from_public_bytes(enrolled.public_key)
        ):
            raise UploadRefused(
                "forged",
                f"{task.client_id}'s signature does not verify with its enrolled identity key",
            )

    def _expected_bytes(self, task: OpenTask, header: pb.UploadHeader) -> int:
        """The body size ``header`` may declare for ``task``; ``ProtocolError`` otherwise."""
        size = task.message.model.num_bytes
        declared = header.payload_bytes
        if task.kind == "protocol" or header.payload_kind == "protocol":
            if task.kind != "protocol" or header.payload_kind != "protocol":
                raise ProtocolError("a protocol answer answers a protocol step, and only that")
            if declared > MAX_PROTOCOL_BYTES:
                raise ProtocolError(f"a protocol answer of {declared} bytes exceeds the cap")
        elif task.kind == "evaluate" or header.payload_kind == "evaluation":
            if task.kind != "evaluate" or header.payload_kind != "evaluation" or declared:
                raise ProtocolError("an evaluation answers an evaluate task and carries no payload")
        elif header.payload_kind == "update" and declared != size:
            raise ProtocolError(f"an update must be {size} bytes (the model), not {declared}")
        elif header.payload_kind == "encoded" and declared > 2 * size + CHUNK_BYTES:
            raise ProtocolError(f"an encoded update of {declared} bytes exceeds the cap")
        return int(declared)


async def _data_chunks(
    stream: AsyncIterator[pb.UploadChunk | memoryview],
) -> AsyncIterator[memoryview | bytes]:
    """The bytes of the data chunks after an upload's header (``ProtocolError`` for another)."""
    async for message in stream:
        if isinstance(message, memoryview):
            yield message
        elif message.WhichOneof("kind") == "data":
            yield message.data
        else:
            raise ProtocolError("an upload sends one header, then only data chunks")


class Spool:
    """An update being written to its spool file (``atomic_file``) while its SHA-256 is computed.

    Each step is short blocking work the service runs on its worker threads;
    :meth:`keep` makes the file durable under its name, :meth:`discard`
    leaves nothing behind.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = ExitStack()
        self._handle = self._file.enter_context(atomic_file(path))
        self.digest = hashlib.sha256()

    def write(self, data: memoryview | bytes) -> None:
        self.digest.update(data)
        self._handle.write(data)

    def keep(self) -> None:
        """Flush, fsync and move the file to its name."""
        self._file.close()

    def discard(self, error: BaseException) -> None:
        """Delete the unfinished file (idempotent; a kept file stays)."""
        self._file.__exit__(type(error), error, error.__traceback__)


def _unlink_all(paths: list[str]) -> None:
    """Delete released spool files (one already gone is no error)."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def _update_from_spool(
    round_index: int,
    client_id: str,
    num_examples: int,
    metadata_json: str,
    payload_kind: str,
    path: Path,
) -> ClientUpdate:
    """An accepted update read back (memory-mapped, copy on write) from its spool file."""
    metadata = UploadMetadata.from_json(metadata_json)
    if payload_kind == "encoded":
        return ClientUpdate(
            round_index,
            client_id,
            np.empty(0, dtype=VECTOR_DTYPE),
            num_examples,
            metadata.metrics,
            payload=path.read_bytes(),
            payload_header=metadata.payload_header,
        )
    vector = np.memmap(path, dtype=VECTOR_DTYPE, mode="c")
    return ClientUpdate(round_index, client_id, vector, num_examples, metadata.metrics)
