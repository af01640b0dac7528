"""CKKS homomorphic aggregation (NVIDIA FLARE's arrangement) as a pipeline aggregator.

Clients encrypt their weighted update with CKKS (TenSEAL, :mod:`fedwarden.secure.he`)
and sign it; the aggregation server adds ciphertexts holding only the public
context; a separate key holder (:mod:`fedwarden.secure.he_keyholder`) checks
the signed contributions and decrypts only the sum. Needs the ``he`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.core.errors import UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.releases import sealed
from fedwarden.pipeline.stage import Aggregate, Aggregator, Stage
from fedwarden.secure.he import (
    CkksParameters,
    Contribution,
    EncryptedUpdate,
    HomomorphicSum,
    PublicContext,
    encrypt_update,
    sign_contribution,
)
from fedwarden.secure.he_keyholder import CkksKeyHolder, KeyHolder

Weighting = Literal["examples", "uniform"]


def contribution_payload(contribution: Contribution) -> tuple[bytes, dict[str, Any]]:
    """A signed contribution as an update's payload (the chunks) and payload header."""
    update = contribution.update
    header = {
        "he_round_index": contribution.round_index,
        "he_key_id": update.key_id,
        "he_length": update.length,
        "he_chunk_bytes": [len(chunk) for chunk in update.chunks],
        "he_signature": contribution.signature.hex(),
    }
    return b"".join(update.chunks), header


def contribution_of(update: ClientUpdate) -> Contribution:
    """The signed contribution an update's payload carries, in the name of its sender."""
    who = f"client {update.client_id!r}'s encrypted update"
    header: Mapping[str, Any] = update.payload_header
    payload = update.payload or b""
    try:
        sizes = [int(size) for size in header["he_chunk_bytes"]]
        round_index = int(header["he_round_index"])
        length = int(header["he_length"])
        key_id = str(header["he_key_id"])
        signature = bytes.fromhex(str(header["he_signature"]))
    except (KeyError, TypeError, ValueError) as error:
        raise UpdateRejected(
            "payload", f"{who} has no valid CKKS payload header ({error}); clients must encrypt"
        ) from None
    if min(sizes, default=0) < 1 or sum(sizes) != len(payload):
        raise UpdateRejected(
            "payload", f"{who} declares chunks of {sum(sizes)} bytes but carries {len(payload)}"
        )
    offsets = np.cumsum([0, *sizes])
    chunks = tuple(payload[offsets[i] : offsets[i + 1]] for i in range(len(sizes)))
    message = EncryptedUpdate(update.client_id, length, key_id, chunks)
    return Contribution(round_index, message, signature)


class EncryptContribution(Stage):
    """A client's last step under homomorphic aggregation: encrypt, sign, withhold the rest.

    The update, weighted by the example count (or 1), is encrypted under the
    key holder's public context, which the client got from the key holder out
    of band, never from the server; the client signs it for its round with its
    identity key. Its example count travels only inside the ciphertext.
    """

    name: ClassVar[str] = "he_encrypt"

    def __init__(
        self, public_context: bytes, identity: Ed25519PrivateKey, weighting: Weighting
    ) -> None:
        self.public = PublicContext.load(public_context)
        self.identity = identity
        self.weighting = weighting

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """``update`` as a signed CKKS contribution in its payload."""
        return self.encrypted(update)

    def encrypted(self, update: ClientUpdate) -> ClientUpdate:
        """``update`` as a signed CKKS contribution in its payload, nothing else in clear."""
        weight = float(update.num_examples) if self.weighting == "examples" else 1.0
        message = encrypt_update(self.public, update.client_id, np.asarray(update.update), weight)
        payload, header = contribution_payload(
            sign_contribution(message, update.round_index, self.identity)
        )
        return sealed(update, payload, header)


class HomomorphicMean(Aggregator):
    """CKKS aggregation: clients encrypt, the server sums ciphertexts, a key holder decrypts.

    ``key_holder`` is the separate party holding the secret key (a
    :class:`~fedwarden.runtime.grpc.keyholder.RemoteKeyHolder` in a
    deployment); the aggregation server holds only its public context. Each
    update arrives as a signed contribution (:class:`EncryptContribution` ran
    on the client). Without ``key_holder`` the run is simulated: an in-process
    key holder, and each client's encryption and identity key simulated here
    for updates that arrive in clear.
    """

    name: ClassVar[str] = "he_mean"
    hides_individual_updates = True

    def __init__(
        self,
        weighting: Weighting = "examples",
        parameters: CkksParameters | None = None,
        key_holder: KeyHolder | None = None,
    ) -> None:
        self.weighting = weighting
        self._simulated: CkksKeyHolder | None = None
        if key_holder is None:
            key_holder = self._simulated = CkksKeyHolder(parameters)
        self.key_holder: KeyHolder = key_holder
        self.server = HomomorphicSum(self.key_holder.public_context())
        self._clients: dict[str, EncryptContribution] = {}
        self._size = 0
        self._round_index: int | None = None

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Begin a round of ``size``-element updates (its index is the first update's)."""
        self._size = size
        self._round_index = None

    def add(self, update: ClientUpdate) -> None:
        """Read the update's signed contribution and add its ciphertexts to the round's sum."""
        if update.payload is None:
            if self._simulated is None:
                raise UpdateRejected(
                    "payload",
                    f"client {update.client_id!r} sent its update in clear; under homomorphic "
                    "aggregation clients encrypt it (fedwarden client --he-public-context)",
                )
            update = self._simulated_client(update.client_id).encrypted(update)
        contribution = contribution_of(update)
        if self._round_index is None:
            self.server.start(self._size, update.round_index)
            self._round_index = update.round_index
        self.server.add(contribution)

    def result(self) -> Aggregate:
        """The key holder checks the contributions and decrypts their sum into the weighted mean."""
        mean, total_weight, contributors = self.key_holder.decrypt(self.server.result())
        return Aggregate(mean.astype(VECTOR_DTYPE), total_weight, contributors)

    def _simulated_client(self, client_id: str) -> EncryptContribution:
        """A simulated client's encryption stage, its identity key authorized on first use."""
        if client_id not in self._clients:
            assert self._simulated is not None  # only simulated runs send updates in clear
            identity = Ed25519PrivateKey.generate()
            self._simulated.authorize(client_id, identity.public_key())
            self._clients[client_id] = EncryptContribution(
                self.key_holder.public_context(), identity, self.weighting
            )
        return self._clients[client_id]

    def report(self) -> dict[str, Any]:
        """What the run summary says about the encryption."""
        return {
            "protocol": "CKKS homomorphic sum (TenSEAL), separate key holder",
            "poly_modulus_degree": 2 * self.server.public.slot_count,
            "key_holder": "remote" if self._simulated is None else "in process (simulation)",
        }
