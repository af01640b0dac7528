"""Where each client's persistent state lives between rounds and across restarts."""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from fedwarden.core.files import atomic_file
from fedwarden.models.trainer import ClientState

_FILE = re.compile(r"^r(\d+)\.npz$")


class ClientStateStore:
    """Per-client arrays saved after each round the client trains in.

    With a directory, round ``r``'s state of client ``c`` is written atomically and durably
    to ``<dir>/<c>/r<r>.npz`` and the two newest files are kept, so that a run
    resumed from the checkpoint of round ``R`` can discard states written by a
    round after ``R`` that never completed (:meth:`discard_after`) and still
    find the one before. Without a directory the state lives in memory only.
    Files are read with ``allow_pickle=False``.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory: dict[str, tuple[int, ClientState]] = {}

    def load(self, client_id: str, round_index: int) -> ClientState:
        """The newest state written before ``round_index`` (empty if none)."""
        cached = self._memory.get(client_id)
        if cached is not None and cached[0] < round_index:
            return dict(cached[1])
        if self.directory is None:
            return {}
        rounds = [r for r in self._rounds(client_id) if r < round_index]
        if not rounds:
            return {}
        with np.load(self._path(client_id, max(rounds)), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    def save(self, client_id: str, round_index: int, state: ClientState) -> None:
        """Keep ``state`` as the client's state after ``round_index``."""
        self._memory[client_id] = (round_index, dict(state))
        if self.directory is None:
            return
        path = self._path(client_id, round_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = state
        with atomic_file(path) as handle:
            np.savez(handle, **arrays)
        for stale in sorted(self._rounds(client_id))[:-2]:
            self._path(client_id, stale).unlink(missing_ok=True)

    def discard_after(self, round_index: int, client_ids: Collection[str] | None = None) -> None:
        """Forget every state written by a round after ``round_index`` (resume).

        ``client_ids`` limits it to those clients (a clustered run's cluster).
        """
        self._memory.clear()
        if self.directory is None or not self.directory.exists():
            return
        for client_dir in self.directory.iterdir():
            if client_ids is not None and client_dir.name not in client_ids:
                continue
            for stale in self._rounds(client_dir.name):
                if stale > round_index:
                    self._path(client_dir.name, stale).unlink()

    def _path(self, client_id: str, round_index: int) -> Path:
        assert self.directory is not None
        return self.directory / client_id / f"r{round_index:08d}.npz"

    def _rounds(self, client_id: str) -> list[int]:
        assert self.directory is not None
        folder = self.directory / client_id
        if not folder.is_dir():
            return []
        return [int(m.group(1)) for f in os.listdir(folder) if (m := _FILE.match(f))]
