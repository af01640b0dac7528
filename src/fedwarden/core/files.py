"""The one way fedwarden replaces a file: whole and durable, or not at all.

A crash, a full disk or an error while writing must leave either the old file or the new one,
never a part: run directories, checkpoints, the privacy ledger, client state, spooled uploads
and audit anchors are read back after a restart. :func:`atomic_file` writes to a fresh
temporary file in the same folder, flushes and fsyncs it, moves it over the target with
``os.replace`` (atomic on POSIX within one file system), then fsyncs the folder so the rename
itself survives a power loss. On any error the temporary file is removed and the target is
left as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "write_atomic"]

PRIVATE_MODE = 0o600
"""Permission bits of a private file: readable and writable by its owner only."""


@contextlib.contextmanager
def atomic_file(path: Path, *, private: bool = False) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends, or never if it raises.

    ``private`` creates it readable by its owner only (0600) from the start; otherwise its
    permissions are those of a new file under the process's umask.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE if private else 0o666
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if private:
                os.fchmod(handle.fileno(), PRIVATE_MODE)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: Path, content: bytes, *, private: bool = False) -> None:
    """Replace ``path`` with ``content``, whole and durable (:func:`atomic_file`)."""
    with atomic_file(path, private=private) as handle:
        handle.write(content)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a file system that cannot fsync a folder is skipped."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
