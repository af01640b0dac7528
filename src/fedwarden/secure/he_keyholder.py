"""The CKKS key holder: the only party with the secret key, and it decrypts only verified sums.

Issue 21, item 2. The aggregation server holds the public context only; the
key holder (its own process in a deployment, ``fedwarden keyholder``) answers
a :class:`~fedwarden.secure.he.DecryptionRequest` only when it can check
itself, from data the server cannot forge, that the plaintext is a sum of
enough clients' updates:

1. the request is under this key holder's key;
2. the round was never decrypted under this key before, and it is recorded as
   decrypted, durably, before the plaintext leaves: two decryptions with
   overlapping contributors would let the server subtract one from the other;
3. every contribution is signed, for this round, by the identity key
   of an authorized client (the deployment's client certificates), and no
   client appears twice;
4. at least ``min_updates`` distinct clients contributed;
5. the sum recomputed here from the contributions (public operations only)
   equals the server's sum, bit for bit; the key holder then decrypts its
   own recomputation.

This is the "threshold on contributors" check; the server's count is never
used. In NVIDIA FLARE's HE workflow the clients themselves hold the secret key
(every client can decrypt, the server cannot); here no client can decrypt, so
one curious client learns nothing from the others' ciphertexts, at the price
of one more party that must not collude with the server. Recomputing the sum
doubles the homomorphic additions and the key holder receives every
contribution's ciphertext (cohort x model size): acceptable, since additions
are cheap next to encryption and the key holder is one well-connected party.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from fedwarden.core.errors import ConfigError, RoundAborted, UpdateRejected
from fedwarden.core.files import write_atomic
from fedwarden.core.records import round_number
from fedwarden.deploy.pki import identity_from_certificate, verify_chain
from fedwarden.secure.he import (
    CiphertextVector,
    CkksParameters,
    DecryptionRequest,
    PublicContext,
    add_chunks,
    read_update,
)

logger = logging.getLogger(__name__)


class KeyHolder(Protocol):
    """What the aggregation server holds of the key holder: its public context and ``decrypt``.

    :class:`CkksKeyHolder` (in process, simulation) and the gRPC runtime's
    ``RemoteKeyHolder`` (its own process) both satisfy it.
    """

    def public_context(self) -> bytes:
        """The CKKS context without its secret key."""
        ...

    def decrypt(self, request: DecryptionRequest) -> tuple[np.ndarray, float, int]:
        """The checked request's weighted mean, total weight and number of contributors."""
        ...


class DecryptionRefused(RoundAborted):
    """The key holder will not decrypt this request; the message says which check failed.

    A :class:`~fedwarden.core.errors.RoundAborted`: the round's model stays
    unchanged and nothing is revealed.
    """


SECRET_CONTEXT_FILE = "secret_context.bin"
PARAMETERS_FILE = "parameters.json"
PUBLIC_CONTEXT_FILE = "public_context.bin"
"""What clients need: give them this file out of band (never through the aggregation server)."""
DECRYPTED_ROUNDS_FILE = "decrypted_rounds.json"


def _new_context(parameters: CkksParameters) -> Any:
    """A fresh CKKS context with a new secret key."""
    try:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=parameters.poly_modulus_degree,
            coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
        )
    except (ValueError, RuntimeError) as error:
        raise ConfigError(
            f"TenSEAL refused the CKKS parameters {parameters} ({error}); keep the "
            "coefficient modulus within the budget for the polynomial degree"
        ) from error
    context.global_scale = 2.0**parameters.scale_bits
    return context


def _saved_context(serialized: bytes) -> Any:
    """A saved CKKS context, which must hold its secret key."""
    try:
        context = ts.context_from(serialized)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"the saved CKKS secret context cannot be read ({error})") from error
    if not context.is_private():
        raise ConfigError("the saved CKKS context holds no secret key; it is not a key holder's")
    return context


def authorized_clients(
    certificates: Sequence[bytes], ca_certificate: bytes
) -> dict[str, Ed25519PublicKey]:
    """The identity key of each client certificate (PEM) the CA issued, by its common name.

    Give the key holder the certificates of the clients that may contribute,
    and never the aggregation server's own: whoever holds an authorized
    identity key can add contributions of its own.
    """
    clients: dict[str, Ed25519PublicKey] = {}
    for pem in certificates:
        certificate = verify_chain(pem, ca_certificate, purpose="client")
        name = str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        if name in clients:
            raise ConfigError(f"two client certificates are named {name!r}; give each one once")
        clients[name] = identity_from_certificate(pem)
    return clients


class DecryptedRounds:
    """The rounds a key holder has decrypted, kept in a JSON file (or in memory, for simulation).

    A round is added, and the file replaced atomically and synced, before its
    plaintext is released, so a crash or restart never allows a second
    decryption of the same round.
    """

    def __init__(self, key_id: str, path: Path | None = None) -> None:
        self.key_id = key_id
        self.path = path
        self._rounds: set[int] = set()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key_id") != key_id:
                raise ConfigError(
                    f"{path} records decryptions under key {str(saved.get('key_id'))[:12]}..., "
                    f"not this key holder's {key_id[:12]}...; give each key its own file"
                )
            self._rounds = {int(index) for index in saved["rounds"]}

    def __contains__(self, round_index: object) -> bool:
        return round_index in self._rounds

    def add(self, round_index: int) -> None:
        """Record a decryption of round ``round_index`` (durably, with a path)."""
        self._rounds.add(round_index)
        if self.path is not None:
            document = {"key_id": self.key_id, "rounds": sorted(self._rounds)}
            write_atomic(self.path, json.dumps(document).encode())


class CkksKeyHolder:
    """Holder of the CKKS secret key: makes the context, exports its public half, decrypts sums.

    ``clients`` maps each authorized client id to its Ed25519 identity key;
    ``min_updates`` is the fewest distinct clients a decrypted sum must hold
    (default 2: a "sum" of one would reveal that client's update);
    ``decrypted_rounds`` is the file that remembers decrypted rounds across
    restarts (None: in memory, for simulation only).
    """

    def __init__(
        self,
        parameters: CkksParameters | None = None,
        min_updates: int = 2,
        clients: Mapping[str, Ed25519PublicKey] | None = None,
        decrypted_rounds: Path | None = None,
        secret_context: bytes | None = None,
    ) -> None:
        self.parameters = parameters or CkksParameters()
        if min_updates < 1:
            raise ConfigError(f"CkksKeyHolder.min_updates is {min_updates}; it must be >= 1")
        self.min_updates = min_updates
        self._clients: dict[str, Ed25519PublicKey] = dict(clients or {})
        self._context = (
            _new_context(self.parameters)
            if secret_context is None
            else _saved_context(secret_context)
        )
        self._public_context: bytes = self._context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        self._public = PublicContext.load(self._public_context)
        self.key_id = self._public.key_id
        self.decrypted = DecryptedRounds(self.key_id, decrypted_rounds)

    @classmethod
    def open(
        cls,
        state: Path,
        parameters: CkksParameters | None = None,
        min_updates: int = 2,
        clients: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> CkksKeyHolder:
        """The key holder whose key and decrypted rounds live in the folder ``state``.

        The first time, a key is made (from ``parameters``) and saved there:
        the secret context with mode 0600, the parameters, and the public
        context for the clients; afterwards the same key is read back, and the
        rounds it decrypted before a restart stay decrypted.
        """
        secret_file = state / SECRET_CONTEXT_FILE
        parameters_file = state / PARAMETERS_FILE
        decrypted = state / DECRYPTED_ROUNDS_FILE
        if secret_file.exists():
            values = json.loads(parameters_file.read_text())
            saved = CkksParameters(
                values["poly_modulus_degree"],
                tuple(values["coeff_mod_bit_sizes"]),
                values["scale_bits"],
            )
            if parameters is not None and parameters != saved:
                raise ConfigError(
                    f"{state} holds a key made with {saved}, not {parameters}; use that "
                    "folder's parameters, or a new folder for a new key"
                )
            return cls(saved, min_updates, clients, decrypted, secret_file.read_bytes())
        holder = cls(parameters, min_updates, clients, decrypted)
        state.mkdir(parents=True, exist_ok=True)
        secret = holder._context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        write_atomic(secret_file, secret, private=True)
        write_atomic(parameters_file, json.dumps(dataclasses.asdict(holder.parameters)).encode())
        write_atomic(state / PUBLIC_CONTEXT_FILE, holder.public_context())
        return holder

    def public_context(self) -> bytes:
        """The context without its secret key, for clients and the aggregation server."""
        return self._public_context

    def authorize(self, client_id: str, identity: Ed25519PublicKey) -> None:
        """Accept contributions signed by ``identity`` as client ``client_id``'s."""
        known = self._clients.get(client_id)
        if known is not None and known != identity:
            raise ConfigError(
                f"client {client_id!r} is already authorized with another identity key; a "
                "client keeps one identity key for the life of the key"
            )
        self._clients[client_id] = identity

    def decrypt(self, request: DecryptionRequest) -> tuple[np.ndarray, float, int]:
        """Check ``request`` and decrypt its sum: (float32 weighted mean, total weight, clients).

        Raises :class:`DecryptionRefused` naming the failed check; nothing is
        decrypted then, and the round stays decryptable by a valid request.
        """
        where = f"round {round_number(request.round_index)}"
        if request.total.key_id != self.key_id:
            raise DecryptionRefused(
                f"{where}: the sum is under key {request.total.key_id[:12]}..., but this key "
                f"holder holds {self.key_id[:12]}...; send it to the key holder of its run"
            )
        if request.round_index in self.decrypted:
            raise DecryptionRefused(
                f"{where} was decrypted already; a round is decrypted once, since two "
                "decryptions of overlapping contributors would reveal their difference"
            )
        recomputed = self._recompute(request, where)
        total = self._read_total(request, where)
        if [chunk.serialize() for chunk in recomputed] != [chunk.serialize() for chunk in total]:
            raise DecryptionRefused(
                f"{where}: the sum sent is not the sum of the {len(request.contributions)} "
                "contributions listed; send the sum of exactly the contributions you list"
            )
        self.decrypted.add(request.round_index)
        plaintext = np.concatenate(
            [np.asarray(self._private(chunk).decrypt()) for chunk in recomputed]
        )
        total_weight = float(plaintext[-1])
        if not total_weight > 0:
            raise DecryptionRefused(
                f"{where}: the decrypted total weight is {total_weight}; clients must encrypt "
                "positive weights, so these contributions were not valid updates"
            )
        logger.info(
            "decrypted %s: %d contributors, %d values",
            where,
            len(request.contributions),
            request.total.length,
        )
        mean = (plaintext[:-1] / total_weight).astype(np.float32)
        return mean, total_weight, len(request.contributions)

    def _recompute(self, request: DecryptionRequest, where: str) -> list[CiphertextVector]:
        """The sum of the request's contributions, after checking each one's signature."""
        seen: set[str] = set()
        totals: list[CiphertextVector] = []
        for contribution in request.contributions:
            client_id = contribution.update.client_id
            who = f"{where}: the contribution of client {client_id!r}"
            if contribution.round_index != request.round_index:
                raise DecryptionRefused(
                    f"{who} is signed for round {round_number(contribution.round_index)}; a "
                    "contribution counts only in its own round"
                )
            if client_id in seen:
                raise DecryptionRefused(f"{who} is listed twice; each client counts once")
            identity = self._clients.get(client_id)
            if identity is None:
                raise DecryptionRefused(
                    f"{who} is from a client this key holder does not know; authorize its "
                    "identity key (its client certificate) first"
                )
            if not contribution.signed_by(identity):
                raise DecryptionRefused(
                    f"{who} is not signed by that client's identity key; it was forged or altered"
                )
            seen.add(client_id)
        if len(seen) < self.min_updates:
            raise DecryptionRefused(
                f"{where}: the sum holds {len(seen)} client(s); this key holder decrypts only "
                f"sums of at least {self.min_updates}, so no client's update is revealed alone"
            )
        for contribution in request.contributions:
            who = f"{where}: the contribution of client {contribution.update.client_id!r}"
            try:
                vectors = read_update(self._public, contribution.update, request.total.length, who)
                totals = add_chunks(totals, vectors, who)
            except UpdateRejected as error:
                raise DecryptionRefused(str(error)) from error
        return totals

    def _read_total(self, request: DecryptionRequest, where: str) -> list[CiphertextVector]:
        """The server's sum read under the public context, checked like any update."""
        return [self._public_chunk(chunk, where) for chunk in request.total.chunks]

    def _public_chunk(self, chunk: bytes, where: str) -> CiphertextVector:
        try:
            return ts.ckks_vector_from(self._public.context, chunk)
        except (ValueError, RuntimeError) as error:
            raise DecryptionRefused(
                f"{where}: the sum is not a CKKS ciphertext for this key ({error})"
            ) from error

    def _private(self, chunk: CiphertextVector) -> Any:
        """A public-context ciphertext moved to the secret-key context, to decrypt it."""
        return ts.ckks_vector_from(self._context, chunk.serialize())
