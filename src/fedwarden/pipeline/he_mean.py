"""CKKS homomorphic aggregation (NVIDIA FLARE's arrangement) as a pipeline aggregator.

Clients encrypt their weighted update with CKKS (TenSEAL, :mod:`fedwarden.secure.he`)
and sign it; the aggregation server adds ciphertexts holding only the public
context; a separate key holder (:mod:`fedwarden.secure.he_keyholder`) checks
the signed contributions and decrypts only the sum. Needs the ``he`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.pipeline.stage import Aggregate, Aggregator
from fedwarden.secure.he import CkksParameters, HomomorphicSum, encrypt_update, sign_contribution
from fedwarden.secure.he_keyholder import CkksKeyHolder

SIMULATION_RUN = "simulation"
"""The run id simulated clients sign their contributions for."""


class HomomorphicMean(Aggregator):
    """CKKS aggregation: clients encrypt, the server sums ciphertexts, a key holder decrypts.

    The key holder is a separate object whose secret key the aggregation
    server never touches; in a deployment it is a separate party. Weights are
    encrypted with the update, so the key holder learns only the weighted sum
    and the total weight. In simulation each client gets an identity key the
    first time it contributes (a deployment uses its certificate's), and the
    rounds are numbered by the calls to :meth:`start`.
    """

    name: ClassVar[str] = "he_mean"
    hides_individual_updates = True

    def __init__(
        self,
        weighting: Literal["examples", "uniform"] = "examples",
        parameters: CkksParameters | None = None,
    ) -> None:
        self.weighting = weighting
        self.key_holder = CkksKeyHolder(parameters)
        self._public_context = self.key_holder.public_context()
        self.server = HomomorphicSum(self._public_context)
        self.client_context = self.server.public
        self._identities: dict[str, Ed25519PrivateKey] = {}
        self._round_index = -1

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Begin summing ``size``-element updates of the next round under the public context."""
        self._round_index += 1
        self.server.start(size, SIMULATION_RUN, self._round_index)

    def add(self, update: ClientUpdate) -> None:
        """The client encrypts and signs its (weighted) update; the server adds the ciphertexts."""
        weight = float(update.num_examples) if self.weighting == "examples" else 1.0
        message = encrypt_update(
            self.client_context, update.client_id, np.asarray(update.update), weight
        )
        self.server.add(
            sign_contribution(
                message, SIMULATION_RUN, self._round_index, self._identity(update.client_id)
            )
        )

    def result(self) -> Aggregate:
        """The key holder checks the contributions and decrypts their sum into the weighted mean."""
        mean, total_weight, contributors = self.key_holder.decrypt(self.server.result())
        return Aggregate(mean.astype(VECTOR_DTYPE), total_weight, contributors)

    def _identity(self, client_id: str) -> Ed25519PrivateKey:
        """A simulated client's identity key, made and authorized on first use."""
        if client_id not in self._identities:
            self._identities[client_id] = Ed25519PrivateKey.generate()
            self.key_holder.authorize(client_id, self._identities[client_id].public_key())
        return self._identities[client_id]

    def report(self) -> dict[str, Any]:
        """What the run summary says about the encryption."""
        parameters = self.key_holder.parameters
        return {
            "protocol": "CKKS homomorphic sum (TenSEAL), separate key holder",
            "poly_modulus_degree": parameters.poly_modulus_degree,
            "scale_bits": parameters.scale_bits,
        }
