"""SecAgg+ over each FedBuff buffer: the clients that fill a buffer run one round together.

FedBuff (Nguyen et al. 2022) learns who is in a buffer only when it fills:
clients train on different model versions and finish in any order. A SecAgg+
round (Bonawitz et al. 2017; Bell et al. 2020) needs its cohort before keys
are exchanged, so :class:`BufferSecureSum` runs one round per buffer, over
the clients whose finished updates fill it, once it is full: each such client
holds its update until then (in simulation, the list :meth:`add` keeps stands
in for those devices), and the server learns only the buffer's sum.

The buffer size ``K`` must allow SecAgg+'s rules (``t > (k + 1 + c) / 2``,
:mod:`fedwarden.secure.secagg.parameters`): a buffer too small for them is
refused when the aggregator is built, with the rule it breaks. A buffer
released with fewer updates than the threshold ``t`` resolved for ``K`` (a
deadline, too few idle clients) is aborted: its sum would hide fewer clients
than the configuration promises.

Over the ``grpc`` runtime a FedBuff client uploads as soon as it finishes,
so there is no cohort to exchange keys in before it masks: this aggregator
runs in simulation only, and refuses a runtime's channel. The distributed
discrete Gaussian (clients adding the DP noise) is not built for buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fedwarden.core.channel import ClientChannel
from fedwarden.core.errors import ConfigError, RoundAborted
from fedwarden.core.messages import ClientUpdate
from fedwarden.pipeline.secure import SecureSum, check_encodable
from fedwarden.pipeline.stage import Aggregate, Aggregator


class BufferSecureSum(Aggregator):
    """One SecAgg+ round of :class:`SecureSum` over each buffer's members, once it fills."""

    name: ClassVar[str] = "buffer_secure_sum"
    hides_individual_updates = True

    def __init__(self, secure_sum: SecureSum, buffer_size: int) -> None:
        if secure_sum.distributed_dp is not None:
            raise ConfigError(
                "secure aggregation over FedBuff's buffers does not support the distributed "
                "discrete Gaussian (its noise is calibrated for a sampled cohort); use user-level "
                "DP without secure aggregation, or synchronous rounds"
            )
        try:
            resolved = secure_sum.parameters.resolved(buffer_size)
        except ConfigError as error:
            raise ConfigError(
                f"secure aggregation over FedBuff's buffers of {buffer_size} update(s): {error} "
                "Raise asynchronous.buffer_size, or change the secure section's parameters."
            ) from None
        assert resolved.threshold is not None
        self.secure_sum = secure_sum
        self.buffer_size = buffer_size
        self.threshold = resolved.threshold
        self._size = 0
        self._held: list[ClientUpdate] = []

    def attach(self, channel: ClientChannel | None) -> None:
        """Refuse remote clients: over grpc a FedBuff client uploads before its buffer is known."""
        if channel is not None:
            raise ConfigError(
                "secure aggregation over FedBuff's buffers runs in simulation only: over grpc a "
                "client uploads as soon as it finishes, before the buffer it lands in is known"
            )
        self.secure_sum.attach(None)

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Open a buffer (``cohort``, the clients that may fill it, is not used)."""
        self._size = size
        self._held = []

    def add(self, update: ClientUpdate) -> None:
        """The client keeps its finished update for the buffer's round (refused if unencodable)."""
        check_encodable(update, self._size)
        self._held.append(update)

    def result(self) -> Aggregate:
        """Run SecAgg+ over the buffer's members; their decoded aggregate, or ``RoundAborted``."""
        members = [update.client_id for update in self._held]
        if len(members) < self.threshold:
            raise RoundAborted(
                f"secure aggregation: the buffer holds {len(members)} update(s), fewer than the "
                f"threshold t={self.threshold} of a buffer of {self.buffer_size}; its sum would "
                "hide fewer clients than configured"
            )
        self.secure_sum.start(self._size, members)
        for update in self._held:
            self.secure_sum.add(update)
        self._held = []
        return self.secure_sum.result()

    def report(self) -> dict[str, Any]:
        """The wrapped protocol's report, with the buffer it runs over."""
        return {**self.secure_sum.report(), "buffer_size": self.buffer_size}
