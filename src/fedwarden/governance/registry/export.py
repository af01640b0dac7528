"""Exporting a version: its arrays (``.npz``, no pickle) and its lineage as JSON."""

from __future__ import annotations

import builtins
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from fedwarden.core.params import ParamSpec
from fedwarden.governance.registry.reading import RegistryReader
from fedwarden.governance.registry.records import ModelVersion, RegistryError
from fedwarden.governance.store import runs

logger = logging.getLogger(__name__)


class RegistryExport(RegistryReader):
    """Writes a version's weights and lineage to files."""

    def export(self, version: str, path: Path | str) -> tuple[Path, Path]:
        """Write a version's arrays (``.npz``, no pickle) and its lineage JSON into ``path``.

        Returns the two files written: ``MODEL-X.Y.Z.npz`` and ``MODEL-X.Y.Z.lineage.json``.
        """
        found = self.show(version)
        vector = self.weights(found.reference)
        spec = ParamSpec.from_json(found.spec_json)
        directory = Path(path)
        stem = f"{found.model}-{found.version}"
        if Path(stem).name != stem:
            raise RegistryError(
                f"model name {found.model!r} is not a plain file name; export it with the "
                "registry API under a name of your choice"
            )
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        tensors: dict[str, Any] = spec.views(vector)
        np.savez(buffer, **tensors)
        arrays_path = directory / f"{stem}.npz"
        arrays_path.write_bytes(buffer.getvalue())
        lineage_path = directory / f"{stem}.lineage.json"
        lineage_path.write_text(json.dumps(self._lineage(found), indent=2, sort_keys=True) + "\n")
        logger.info("exported %s to %s", found.reference, directory)
        return arrays_path, lineage_path

    def _lineage(self, found: ModelVersion) -> dict[str, Any]:
        """The version's record, its run, and the chain of parents it descends from."""
        ancestors: builtins.list[str] = []
        with self.store.reading() as connection:
            run = connection.execute(
                select(runs.c.name, runs.c.config_hash, runs.c.run_dir, runs.c.status).where(
                    runs.c.run_id == found.run_id
                )
            ).one()
            parent = found.parent
            while parent is not None and parent not in ancestors:
                ancestors.append(parent)
                parent = self._resolve(connection, parent).parent
        return {
            **found.to_json(),
            "run": {"run_id": found.run_id, **run._asdict()},
            "ancestors": ancestors,
        }
