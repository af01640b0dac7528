"""Protocol steps over the grpc runtime: the channel a multi-step aggregator talks through.

Secure aggregation needs several exchanges per round (advertise keys, share
keys, consistency check, unmask). Each step is a task like any other: sent on
the clients' sessions, answered by a signed upload whose body is the answer's
bytes, which only the aggregator's halves read. A client that is lost, fails
the step or misses the deadline is absent from the answers: it has dropped
out of the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from fedwarden.core.messages import ClientFailure
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.sessions import Sessions
from fedwarden.runtime.grpc.tasks import ProtocolAnswer, TaskBoard

logger = logging.getLogger(__name__)


class ProtocolSteps:
    """The runtime's :class:`~fedwarden.core.channel.ClientChannel` to its connected clients.

    ``step_deadline_s`` is how long a step waits for answers when the caller sets no deadline.
    """

    def __init__(self, board: TaskBoard, sessions: Sessions, step_deadline_s: float) -> None:
        self.board = board
        self.sessions = sessions
        self.step_deadline_s = step_deadline_s

    def exchange(
        self, messages: Mapping[str, bytes], deadline_s: float | None = None
    ) -> dict[str, bytes]:
        """Send each client its protocol step; the answers that arrived before the deadline."""
        round_index = max(self.board.current_round, 0)
        tasks = {
            client_id: pb.Task(protocol=pb.ProtocolStep(message=message))
            for client_id, message in messages.items()
        }
        answers: dict[str, bytes] = {}
        wait = deadline_s if deadline_s is not None else self.step_deadline_s
        for reply in self.board.exchange(None, round_index, tasks, "protocol", wait):
            if isinstance(reply, ProtocolAnswer):
                answers[reply.client_id] = reply.message
            elif isinstance(reply, ClientFailure):
                logger.warning("protocol step: client %s %s", reply.client_id, reply.message)
        return answers

    def identity_keys(self, clients: Sequence[str]) -> dict[str, bytes]:
        """The enrolled identity keys of ``clients`` (those enrolled)."""
        return self.sessions.identity_keys(clients)

    def peer_certificates(self, clients: Sequence[str]) -> dict[str, bytes]:
        """The TLS certificates (PEM) ``clients`` presented when they joined (none --insecure)."""
        return self.sessions.peer_certificates(clients)
