"""Messages between the server and its clients, as frozen value objects.

Each message states completely what one side tells the other; a runtime only
moves them (in process, across worker processes, or over the network) and
never interprets them. Fields may be added with defaults; existing fields keep
their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedwarden.core.canonical import canonical_json
from fedwarden.core.params import Vector

Metrics = Mapping[str, float]

CLIENT_EPSILON = "client_epsilon"
"""Metric a client reports under local DP or DP-SGD: its cumulative epsilon so far."""
CLIENT_EPSILON_ROUND = "client_epsilon_round"
"""Metric a client reports under local DP or DP-SGD: the epsilon of this round's release."""


@dataclass(frozen=True)
class TrainConfig:
    """How a client trains in one round: the hyper-parameters the strategy chose."""

    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    proximal_mu: float = 0.0
    """FedProx's proximal weight (Li et al. 2020, eq. 2); 0 is plain local SGD."""


@dataclass(frozen=True)
class FitInstruction:
    """Server to client: train on your data starting from the global vector.

    ``round_parameters`` are this round's settings for the pipeline's client
    halves (e.g. ``clip_norm`` under adaptive clipping), set by the server.
    """

    round_index: int
    client_id: str
    train: TrainConfig
    round_parameters: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    """What a trainer returns from one local training: the update and its weight."""

    update: Vector
    """``new_parameters - global_parameters``, flat float32."""
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


def header_bytes(header: Mapping[str, Any]) -> bytes:
    """The canonical JSON encoding of a payload header: exactly what travels and is counted."""
    return canonical_json(header, ascii_only=True, allow_nan=True).encode()


@dataclass(frozen=True)
class ClientUpdate:
    """Client to server: one client's contribution to one round.

    An update travels either as the raw ``update`` vector or, once a
    compression stage has encoded it, as ``payload`` bytes described by the
    JSON-able ``payload_header``; then ``update`` is empty and the runtimes
    send the header (as :func:`header_bytes`) and the payload instead of the
    vector. The server's decoding stage turns it back into a vector.
    """

    round_index: int
    client_id: str
    update: Vector
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    train_seconds: float = 0.0
    payload: bytes | None = None
    """The encoded update (``None``: the raw vector travels)."""
    payload_header: Mapping[str, Any] = field(default_factory=dict)
    """What the decoder needs besides the bytes (codec, size, seed); JSON-able."""

    @property
    def payload_bytes(self) -> int:
        """Bytes this update occupies on the wire: the vector, or the payload and its header."""
        if self.payload is None:
            return int(self.update.nbytes)
        return len(self.payload) + len(header_bytes(self.payload_header))


@dataclass(frozen=True)
class EvaluateInstruction:
    """Server to client: evaluate the global vector on your test split.

    With ``finetune`` set, this is personalization by local fine-tuning: the
    client also trains ``finetune.local_epochs`` epochs from the global model
    and reports the fine-tuned model's metrics beside the global ones.
    """

    round_index: int
    client_id: str
    finetune: TrainConfig | None = None


@dataclass(frozen=True)
class ClientFailure:
    """A client that did not deliver: dropped at the deadline, failed, or lost with its worker.

    ``reason`` is a short tag counted per round (``"deadline"``, ``"error"``,
    ``"worker_lost"``); ``message`` is the sentence for the operator.
    """

    round_index: int
    client_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class UpdateRefused:
    """An upload a runtime refused before it reached the pipeline (the gRPC transport's checks).

    ``reason`` is the tag counted with the round's rejections (``"forged"``,
    ``"replayed"``, ``"duplicate"``, ``"corrupted"``, ...); the client's task
    stays open, so a genuine upload may still arrive before the deadline.
    """

    round_index: int
    client_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class ClientEvaluation:
    """Client to server: metrics of the global (and personalized) model on local test data."""

    client_id: str
    num_examples: int
    metrics: Metrics


FIT_STREAM = 0
FINETUNE_STREAM = 1


def client_seed(
    run_seed: int, round_index: int, client_id: str, stream: int = FIT_STREAM
) -> np.random.SeedSequence:
    """The seed of one client's training randomness in one round.

    Derived only from the run seed, the stream (training or fine-tuning), the
    round and the client id, so a client trains identically whichever worker,
    runtime or resume runs it.
    """
    key = list(client_id.encode())
    return np.random.SeedSequence([run_seed, stream, round_index, len(key), *key])
