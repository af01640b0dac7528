"""The atomic file writer: a file is replaced whole and durably, or left as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedwarden.core.files import atomic_file, write_atomic


def test_the_content_is_replaced_whole_and_no_temporary_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_bytes(b"old")
    write_atomic(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="crash"), atomic_file(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ledger.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_fsync_or_rename_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_private_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "cohort_openings.json"
    write_atomic(path, b"{}", private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
