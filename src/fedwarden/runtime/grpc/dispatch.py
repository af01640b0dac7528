"""Asynchronous fit tasks over the grpc runtime (FedBuff): dispatch one, poll for replies.

A synchronous round sends its cohort's tasks and waits for all of them; an
asynchronous server keeps a few clients training at all times, on whichever
model version was current when each started, and takes replies as they come.
Tasks of several versions may be open at once; each version is served until
the server retires it.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping

from fedwarden.core.messages import ClientFailure, ClientUpdate, FitInstruction, UpdateRefused
from fedwarden.core.params import Vector
from fedwarden.runtime.grpc.tasks import TaskBoard, fit_task, lost, overdue
from fedwarden.runtime.grpc.uploads import Uploads


class AsynchronousTasks:
    """The runtime's :class:`~fedwarden.core.channel.AsynchronousClients`."""

    def __init__(self, board: TaskBoard, uploads: Uploads) -> None:
        self.board = board
        self.uploads = uploads
        self._dispatched: dict[str, str] = {}
        """Open asynchronous tasks: task id -> client."""

    def publish(self, vector: Vector, label: str) -> str:
        """Serve a copy of ``vector`` to clients as a new model version; its id."""
        return self.board.publish(vector, label)

    def retire(self, version: str) -> None:
        """Stop serving a model version."""
        self.board.retire(version)

    def connected_clients(self) -> list[str]:
        """The clients with an open session right now."""
        return self.board.connected_clients()

    def release(self, round_index: int, client_id: str) -> None:
        """Delete the spooled copy of an applied update."""
        self.uploads.delete_spooled(round_index, client_id)

    def dispatch(self, version: str, instruction: FitInstruction) -> None:
        """Send one fit task on model ``version`` without waiting; :meth:`poll` gives its reply."""
        with self.board.lock:
            task_id = self.board.send(
                instruction.client_id,
                fit_task(instruction),
                instruction.round_index,
                "fit",
                version,
            )
            self._dispatched[task_id] = instruction.client_id

    def resume(self, version: str, instruction: FitInstruction) -> None:
        """Send a task of the server before its restart again, on its own model version.

        The client's session with that server is gone, so is its work: the task
        is pushed now if the client is connected, else when it reconnects.
        """
        self.dispatch(version, instruction)

    def recover(self, tasks: Mapping[str, int]) -> list[ClientUpdate]:
        """The updates answering ``tasks`` accepted before a restart: read back from the spool.

        The journal keys an asynchronous update by its model version's index,
        as a synchronous one by its round; released updates are not read back.
        """
        recovered: list[ClientUpdate] = []
        for index in sorted(set(tasks.values())):
            for client_id, row in self.uploads.accepted(index).items():
                if tasks.get(client_id) == index:
                    recovered.append(self.uploads.read_back(row))
        return recovered

    def poll(
        self, timeout: float, deadline_s: float | None = None
    ) -> list[ClientUpdate | ClientFailure | UpdateRefused]:
        """Replies to dispatched tasks that arrived within ``timeout`` seconds.

        Tasks of lost clients, and tasks open longer than ``deadline_s``, come
        back as failures.
        """
        board = self.board
        replies: list[ClientUpdate | ClientFailure | UpdateRefused] = []
        for task in board.lost_tasks(self._dispatched):
            del self._dispatched[task.task_id]
            replies.append(lost(task))
        if deadline_s is not None:
            now = time.monotonic()
            with board.lock:
                late = [
                    board.open[task_id]
                    for task_id in self._dispatched
                    if task_id in board.open
                    and not board.open[task_id].receiving
                    and now - board.open[task_id].sent_at > deadline_s
                ]
                for task in late:
                    board.expire(task.task_id)
            for task in late:
                del self._dispatched[task.task_id]
                replies.append(overdue(task.round_index, task.client_id, deadline_s))
        wait = timeout
        while True:
            try:
                reply, answered = board.replies.get(timeout=wait)
            except queue.Empty:
                return replies
            wait = 0.0
            if answered is not None and self._dispatched.pop(answered, None) is None:
                continue
            if isinstance(reply, ClientUpdate | ClientFailure | UpdateRefused):
                replies.append(reply)
