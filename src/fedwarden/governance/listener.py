"""The server's listener that writes each round's cohort and each refused update to the run store.

The runtime only moves messages (DESIGN idea 3); what the server decides about a
round (its cohort, the updates it refused and why) is recorded here, from the
server's own events, so the store's ``rounds`` and ``rejections`` tables hold
the same facts whichever runtime carried the round.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedwarden.governance.store import RunStore
from fedwarden.server.listeners import RoundListener


class StoreListener(RoundListener):
    """Records a run's cohorts and refusals in its :class:`RunStore` (a server listener)."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        """Record the cohort sampled for the round."""
        self.store.round_started(self.run_id, round_index, cohort)

    def update_rejected(self, round_index: int, client_id: str, reason: str, message: str) -> None:
        """Record the refused update, its reason and the operator's sentence."""
        self.store.record_rejection(self.run_id, round_index, client_id, reason, message)
