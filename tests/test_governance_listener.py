"""The run store's listener: the server's cohorts and refusals become store rows."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from fedwarden.governance.listener import StoreListener
from fedwarden.governance.store import RunStore, rejections

RUN_ID = "run-1"


def test_the_listener_records_each_cohort_and_each_refusal_with_its_reason_and_sentence(
    tmp_path: Path,
) -> None:
    with RunStore.sqlite(tmp_path / "store.db") as store:
        store.create_run(RUN_ID, "test", "{}", str(tmp_path))
        listener = StoreListener(store, RUN_ID)
        listener.round_started(0, ["client_0", "client_1"])
        listener.update_rejected(0, "client_1", "norm_bound", "update norm 9.1 exceeds 5")
        assert store.round_cohort(RUN_ID, 0) == ["client_0", "client_1"]
        with store.reading() as connection:
            rows = connection.execute(
                select(
                    rejections.c.round_index,
                    rejections.c.client_id,
                    rejections.c.reason,
                    rejections.c.message,
                )
            ).all()
        assert [tuple(row) for row in rows] == [
            (0, "client_1", "norm_bound", "update norm 9.1 exceeds 5")
        ]
