"""The ``grpc`` runtime's client half: the ``fedwarden client`` process of one site.

The client dials the server (it may sit behind a NAT), joins, has its
model and pipeline stages built from the run's config by the
:class:`ClientBuilder` its caller gives it, and keeps one ``Connect`` stream
open: tasks arrive on it the moment a round starts, heartbeats leave on it.
For a fit task the client downloads the global vector (chunked, checked
against its SHA-256), trains and runs the stages' client halves with the same
:class:`~fedwarden.runtime.engine.ClientEngine` the simulation runtimes use,
signs the update with its identity key and streams it back. A protocol step
goes to the stage that answers them (:class:`~fedwarden.core.channel.ProtocolHalf`,
secure aggregation's client half). When the server goes away the client
reconnects with capped exponential backoff and jitter; SIGTERM ends it after
the current upload.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden import __version__
from fedwarden.core.channel import ProtocolHalf
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import FedwardenError
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    TrainConfig,
)
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.core.records import round_number
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.sources import load_client_file
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline.stage import Stage
from fedwarden.runtime.engine import ClientEngine, Workload
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.credentials import ClientKit
from fedwarden.runtime.grpc.wire import (
    SERVICE,
    UPLOAD_DATA_TAG,
    ProtocolError,
    UploadMetadata,
    check_version,
    chunks,
    framed,
    grpc_options,
    read_chunk,
    sign,
    version_message,
)
from fedwarden.secure.secagg.policy import SecAggPolicy

logger = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


JOIN_TIMEOUT_S = 30.0


class ReproducibleNoiseRefused(FedwardenError):
    """The server asked for test-mode (seeded) privacy noise, which this client did not allow."""


class RunOver(FedwardenError):
    """The server said the run is finished."""


class SessionLost(FedwardenError):
    """The session stream closed while the run goes on (the server is restarting)."""


@dataclass(frozen=True)
class Site:
    """Who a client is, for the pipeline stages that act in its name (secure aggregation's)."""

    client_id: str
    identity: Ed25519PrivateKey
    ca_certificate: bytes
    """The client's own enrolment CA (PEM): peers' certificates must chain to it."""
    secagg_policy: SecAggPolicy | None = None
    """What this site accepts in secure-aggregation rounds (its own setting, not the server's)."""
    he_public_context: bytes | None = None
    """The CKKS key holder's public context, which this site got from the key holder itself."""


class ClientBuilder(Protocol):
    """Builds a client's trainer and pipeline stages for a run, from the config it was sent.

    The stages are those whose client halves the client runs, in order (the
    last may be a :class:`~fedwarden.core.channel.ProtocolHalf`).
    """

    def __call__(
        self, config: RunConfig, dataset: FederatedDataset, site: Site
    ) -> tuple[Trainer, Sequence[Stage]]:
        """The trainer and stages of ``site`` for ``config``, over its ``dataset``."""
        ...


@dataclass(frozen=True)
class _Stubs:
    """Callables for the four RPCs of ``federation.proto`` on one channel."""

    join: grpc.UnaryUnaryMultiCallable
    connect: grpc.StreamStreamMultiCallable
    download: grpc.UnaryStreamMultiCallable
    upload: grpc.StreamUnaryMultiCallable

    @classmethod
    def on(cls, channel: grpc.Channel) -> _Stubs:
        return cls(
            channel.unary_unary(
                f"/{SERVICE}/Join",
                request_serializer=pb.JoinRequest.SerializeToString,
                response_deserializer=pb.JoinReply.FromString,
            ),
            channel.stream_stream(
                f"/{SERVICE}/Connect",
                request_serializer=pb.ClientSignal.SerializeToString,
                response_deserializer=pb.Task.FromString,
            ),
            channel.unary_stream(
                f"/{SERVICE}/Download",
                request_serializer=pb.DownloadRequest.SerializeToString,
                response_deserializer=read_chunk,
            ),
            channel.stream_unary(
                f"/{SERVICE}/Upload",
                request_serializer=_serialize_upload,
                response_deserializer=pb.UploadReceipt.FromString,
            ),
        )


def open_channel(address: str, kit: ClientKit | None) -> grpc.Channel:
    """A channel to the server: mutual TLS with ``kit``, or plaintext (``None``, loopback)."""
    if kit is None:
        return grpc.insecure_channel(address, options=grpc_options())
    return grpc.secure_channel(address, kit.tls.channel_credentials(), options=grpc_options())


class FederationClient:
    """One site: joins the server at ``address`` and answers its tasks until the run ends.

    ``kit`` holds the TLS certificate and identity key; with ``insecure`` the
    channel is plaintext and only the identity key of ``kit`` is used.
    ``build`` makes the trainer and pipeline stages of each run it joins.
    ``allow_test_mode_noise`` is this site's own choice, never the server's: a
    run config asking for ``privacy.reproducible_noise`` (noise, masks and
    batches anyone holding the seed can recompute, the server included) is
    refused unless it is set.
    ``secagg_policy`` is what this site accepts in a secure-aggregation round
    (its own setting; the server cannot lower it); peers' identities come from
    certificates checked against the kit's CA.
    ``he_public_context`` is the key holder's public context (its
    ``public_context.bin``) for homomorphic aggregation, taken from the key
    holder out of band and never from the server, which could substitute a
    key of its own.
    """

    def __init__(
        self,
        address: str,
        kit: ClientKit,
        data_path: Path,
        build: ClientBuilder,
        *,
        insecure: bool = False,
        state_dir: Path | None = None,
        allow_test_mode_noise: bool = False,
        secagg_policy: SecAggPolicy | None = None,
        he_public_context: bytes | None = None,
    ) -> None:
        self.address = address
        self.kit = kit
        self.client_id = kit.client_id
        self.data_path = data_path
        self.build = build
        self.insecure = insecure
        self.state_dir = state_dir
        self.allow_test_mode_noise = allow_test_mode_noise
        self.secagg_policy = secagg_policy
        self.he_public_context = he_public_context
        self.stop = threading.Event()
        self._engine: tuple[str, ClientEngine] | None = None
        self._models: dict[str, Vector] = {}
        self._protocol: ProtocolHalf | None = None
        self._joined = False
        self._call: grpc.Future | None = None

    def run(self) -> None:
        """Serve the federation until the run is over or :meth:`shutdown` is called."""
        delay = BACKOFF_START_S
        while not self.stop.is_set():
            self._joined = False
            try:
                self._session()
                return
            except RunOver:
                logger.info("the server finished the run")
                self.shutdown()
                return
            except (grpc.RpcError, SessionLost) as error:
                if self.stop.is_set():
                    return
                code = error.code() if isinstance(error, grpc.Call) else None
                if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION):
                    assert isinstance(error, grpc.Call)
                    raise FedwardenError(
                        f"the server refused {self.client_id}: {error.details()}"
                    ) from None
                if self._joined:
                    delay = BACKOFF_START_S
                wait = delay * (0.5 + secrets.randbelow(1000) / 1000)
                logger.warning(
                    "server %s unavailable (%s); reconnecting in %.1f s",
                    self.address,
                    code.name if code is not None else str(error),
                    wait,
                )
                self.stop.wait(wait)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def shutdown(self) -> None:
        """Stop after the current task (SIGTERM): close the session stream."""
        self.stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _hello(self) -> pb.JoinRequest:
        public = self.kit.identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return pb.JoinRequest(
            version=version_message(),
            client_id=self.client_id,
            software_version=__version__,
            identity_public_key=public,
        )

    def _session(self) -> None:
        """One connection: join, then answer tasks until the stream ends."""
        with open_channel(self.address, None if self.insecure else self.kit) as channel:
            stubs = _Stubs.on(channel)
            reply: pb.JoinReply = stubs.join(self._hello(), timeout=JOIN_TIMEOUT_S)
            check_version(reply.version, "the server")
            self._joined = True
            engine = self._engine_for(reply)
            signals: queue.Queue[pb.ClientSignal] = queue.Queue()
            call = stubs.connect(self._signals(signals, reply.heartbeat_seconds))
            self._call = call
            logger.info("%s connected to run %s", self.client_id, reply.run_id)
            for task in call:
                kind = task.WhichOneof("kind")
                if kind == "finished":
                    raise RunOver(task.finished.message)
                try:
                    self._answer(stubs, engine, task)
                except FedwardenError as error:
                    logger.warning("task %s failed: %s", task.task_id, error)
                    failed = pb.TaskFailed(task_id=task.task_id, reason="error", message=str(error))
                    signals.put(pb.ClientSignal(failed=failed))
            if not self.stop.is_set():
                raise SessionLost("the session stream ended; the server is going away")

    def _signals(
        self, signals: queue.Queue[pb.ClientSignal], heartbeat_s: int
    ) -> Iterator[pb.ClientSignal]:
        """What the client sends on its session: the hello, then heartbeats and failures."""
        yield pb.ClientSignal(hello=self._hello())
        while not self.stop.is_set():
            try:
                yield signals.get(timeout=heartbeat_s)
            except queue.Empty:
                yield pb.ClientSignal(heartbeat=pb.Heartbeat(sent_unix_ms=int(time.time() * 1000)))

    def _engine_for(self, reply: pb.JoinReply) -> ClientEngine:
        """The client's trainer and pipeline halves for this run, built once per run."""
        if self._engine is not None and self._engine[0] == reply.run_id:
            return self._engine[1]
        config = RunConfig.model_validate_json(reply.run_config_json)
        self._check_noise_mode(config)
        num_classes = reply.num_classes or None
        data = load_client_file(
            self.data_path, self.client_id, config.data, config.seed, num_classes
        )
        dataset = FederatedDataset(
            name=self.client_id,
            clients={self.client_id: data},
            x_test=data.x_test[:0],
            y_test=data.y_test[:0],
            num_features=reply.num_features,
            num_classes=num_classes,
        )
        site = Site(
            self.client_id,
            self.kit.identity,
            self.kit.tls.root_certificate,
            self.secagg_policy,
            self.he_public_context,
        )
        trainer, built = self.build(config, dataset, site)
        stages = tuple(built)
        self._protocol = next((stage for stage in stages if isinstance(stage, ProtocolHalf)), None)
        engine = ClientEngine(Workload(dataset, trainer, stages, config.seed, self.state_dir))
        self._engine = (reply.run_id, engine)
        self._models.clear()
        return engine

    def _check_noise_mode(self, config: RunConfig) -> None:
        """Refuse a run in test mode unless this site allowed it; say loudly when it did.

        In test mode every noise, mask and batch a client draws is keyed by the
        config's seed, which the server chose and knows: it could subtract the
        noise and the sampling would amplify nothing. A client never takes that
        setting from the party its privacy protects it from.
        """
        if not config.privacy.reproducible_noise:
            return
        if not self.allow_test_mode_noise:
            raise ReproducibleNoiseRefused(
                f"{self.client_id} refuses run {config.name!r}: its config sets "
                "privacy.reproducible_noise = true, so every noise and sample this client draws "
                "would be computable from the seed the server chose. Ask the server to turn test "
                "mode off, or start `fedwarden client --allow-test-mode-noise` on a test "
                "federation only"
            )
        logger.warning(
            "TEST MODE: run %r uses reproducible privacy noise seeded by the server's config; "
            "this client's releases have no differential privacy against the server",
            config.name,
        )

    def _answer(self, stubs: _Stubs, engine: ClientEngine, task: pb.Task) -> None:
        """Download the task's model, train or evaluate, and upload the signed result."""
        kind = task.WhichOneof("kind")
        logger.info(
            "round %d: %s task %s received", round_number(task.round_index), kind, task.task_id
        )
        if kind == "protocol":
            if self._protocol is None:
                raise ProtocolError("this run has no multi-step aggregation protocol")
            self._upload(stubs, task, self._protocol.answer(task.protocol.message))
            return
        vector = self._model(stubs, task)
        if kind == "fit":
            fit = task.fit
            train = _train_config(fit.train)
            parameters = dict(fit.round_parameters)
            instruction = FitInstruction(task.round_index, self.client_id, train, parameters)
            update = engine.fit(vector, instruction)
            self._upload(stubs, task, update)
        else:
            evaluate = task.evaluate
            finetune = _train_config(evaluate.finetune) if evaluate.has_finetune else None
            evaluation = engine.evaluate(
                vector, EvaluateInstruction(task.round_index, self.client_id, finetune)
            )
            self._upload(stubs, task, evaluation)

    def _model(self, stubs: _Stubs, task: pb.Task) -> Vector:
        """The task's global vector, downloaded chunk by chunk into one buffer and checked.

        Each chunk is hashed as it arrives (while the next is in flight), not
        the whole vector again once the last has come.
        """
        reference = task.model
        cached = self._models.get(reference.version)
        if cached is not None:
            return cached
        if reference.num_bytes % VECTOR_DTYPE.itemsize:
            raise ProtocolError(f"a model of {reference.num_bytes} bytes is not float32")
        vector = np.empty(reference.num_bytes // VECTOR_DTYPE.itemsize, dtype=VECTOR_DTYPE)
        target = memoryview(vector.data).cast("B")
        filled = 0
        digest = hashlib.sha256()
        request = pb.DownloadRequest(run_id=task.run_id, version=reference.version)
        try:
            for data in stubs.download(request):
                end = filled + len(data)
                if end > len(target):
                    raise ProtocolError("the server sent more model bytes than it announced")
                digest.update(data)
                target[filled:end] = data
                filled = end
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.NOT_FOUND:
                raise ProtocolError(f"task {task.task_id} is over: {error.details()}") from None
            raise
        if filled != len(target) or digest.digest() != reference.sha256:
            raise ProtocolError("the downloaded model does not match its announced size and hash")
        self._models = {reference.version: vector}
        return vector

    def _upload(
        self, stubs: _Stubs, task: pb.Task, reply: ClientUpdate | ClientEvaluation | bytes
    ) -> None:
        """Sign and stream one result; raise if the server refuses it."""
        header, body = signed_upload(task, self.client_id, reply, self.kit.identity)
        receipt: pb.UploadReceipt = stubs.upload(upload_stream(header, body))
        if not receipt.accepted:
            raise FedwardenError(
                f"the server refused the upload ({receipt.reason}): {receipt.message}"
            )
        logger.info(
            "round %d: %s uploaded", round_number(task.round_index), task.WhichOneof("kind")
        )


def signed_upload(
    task: pb.Task,
    client_id: str,
    reply: ClientUpdate | ClientEvaluation | bytes,
    identity: Ed25519PrivateKey,
) -> tuple[pb.UploadHeader, memoryview]:
    """The signed header and the body of the upload answering ``task`` with ``reply``.

    ``reply`` is an update, an evaluation, or (bytes) the answer to a protocol step.
    """
    num_examples = 0
    if isinstance(reply, bytes):
        kind, body, metadata = "protocol", memoryview(reply), UploadMetadata({}, {})
    elif isinstance(reply, ClientEvaluation):
        kind, body, metadata = "evaluation", memoryview(b""), UploadMetadata(reply.metrics, {})
    elif reply.payload is not None:
        kind, body = "encoded", memoryview(reply.payload)
        metadata = UploadMetadata(reply.metrics, reply.payload_header)
    else:
        kind, body = "update", memoryview(reply.update.data)
        metadata = UploadMetadata(reply.metrics, {})
    if not isinstance(reply, bytes):
        num_examples = reply.num_examples
    header = pb.UploadHeader(
        run_id=task.run_id,
        round_index=task.round_index,
        task_id=task.task_id,
        client_id=client_id,
        num_examples=num_examples,
        metadata_json=metadata.to_json(),
        payload_bytes=body.nbytes,
        payload_sha256=hashlib.sha256(body).digest(),
        payload_kind=kind,
    )
    sign(header, identity)
    return header, body


def upload_stream(header: pb.UploadHeader, body: memoryview) -> Iterator[pb.UploadChunk | bytes]:
    """An upload on the wire: the header, then the body in chunks (framed ``UploadChunk`` bytes)."""
    yield pb.UploadChunk(header=header)
    for piece in chunks(body):
        yield framed(UPLOAD_DATA_TAG, piece)


def _serialize_upload(message: pb.UploadChunk | bytes) -> bytes:
    """Data chunks are already framed; the header is serialized by protobuf."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _train_config(message: pb.TrainConfig) -> TrainConfig:
    return TrainConfig(
        local_epochs=message.local_epochs,
        batch_size=message.batch_size,
        learning_rate=message.learning_rate,
        proximal_mu=message.proximal_mu,
    )
