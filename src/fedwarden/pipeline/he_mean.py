"""CKKS homomorphic aggregation (NVIDIA FLARE's arrangement) as a pipeline aggregator.

Clients encrypt their weighted update with CKKS (TenSEAL, :mod:`fedwarden.secure.he`);
the aggregation server adds ciphertexts holding only the public context; a
separate key holder decrypts only the sum. Needs the ``he`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.pipeline.stage import Aggregate, Aggregator
from fedwarden.secure.he import CkksKeyHolder, CkksParameters, HomomorphicSum, encrypt_update


class HomomorphicMean(Aggregator):
    """CKKS aggregation: clients encrypt, the server sums ciphertexts, a key holder decrypts.

    The key holder is a separate object whose secret key the aggregation
    server never touches (NVIDIA FLARE's arrangement); in a deployment it is a
    separate party. Weights are encrypted with the update, so the key holder
    learns only the weighted sum and the total weight.
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

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Begin summing ``size``-element updates under this run's public context."""
        self.server.start(size)

    def add(self, update: ClientUpdate) -> None:
        """The client encrypts its (weighted) update; the server adds the ciphertexts."""
        weight = float(update.num_examples) if self.weighting == "examples" else 1.0
        message = encrypt_update(
            self.client_context, update.client_id, np.asarray(update.update), weight
        )
        self.server.add(message)

    def result(self) -> Aggregate:
        """The key holder decrypts the encrypted sum into the weighted mean."""
        encrypted = self.server.result()
        mean, total_weight = self.key_holder.decrypt(encrypted)
        return Aggregate(mean.astype(VECTOR_DTYPE), total_weight, encrypted.num_updates)

    def report(self) -> dict[str, Any]:
        """What the run summary says about the encryption."""
        parameters = self.key_holder.parameters
        return {
            "protocol": "CKKS homomorphic sum (TenSEAL), separate key holder",
            "poly_modulus_degree": parameters.poly_modulus_degree,
            "scale_bits": parameters.scale_bits,
        }
