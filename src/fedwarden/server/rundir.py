"""The run directory: config, per-round metrics, checkpoints, final model and plots.

Layout::

    <runs_dir>/<name>-<timestamp>/
        config.json          the validated RunConfig
        metrics.csv          one row per round, numbered from 1 (``round``)
        metrics.json         the same, as a list of objects
        checkpoint.npz       server state after the last completed round
                             (of the warm-up, in a clustered run)
        clustering.json      a clustered run's clusters and probing round
        clusters/<i>/        cluster i's own run directory: checkpoint.npz,
                             metrics, model.npz of its model
        client_state/        per-client persistent state (see ClientStateStore)
        privacy_ledger.json  every differentially private release and its cost
        summary.json         the final figures and the privacy report
        model.npz            final global parameters, one array per tensor
        param_spec.json      the ParamSpec of model.npz's flat vector
        accuracy.png, loss.png
        spool/               the grpc runtime's spooled uploads
        open_tasks/          FedBuff's open tasks and the model versions they train on
        deploy/              the local client processes of ``fedwarden run`` on grpc
        cohort_openings.json the openings of the audit log's cohort commitments
        audit-anchor.json    the audit log's root-signed anchor
        audit_report.html    the audit report of a completed run

Every file name is a property of :class:`RunDirectory`; nothing else spells them.

Every file is written to a temporary name and renamed, so a crash leaves
either the previous or the new version, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedwarden.core.errors import ConfigError
from fedwarden.core.files import write_atomic
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.core.records import RoundRecord, round_number
from fedwarden.strategies.base import StrategyState


@dataclass(frozen=True)
class Checkpoint:
    """Server state after a completed round: enough to continue bit for bit."""

    round_index: int
    vector: Vector
    strategy_state: StrategyState
    sampler_state: dict[str, Any]
    history: list[RoundRecord]
    train_seconds: float
    privacy_state: dict[str, float] = field(default_factory=dict)
    reputation_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpenTasks:
    """FedBuff's tasks whose updates are not yet in a released buffer, while it fills one.

    ``server_update`` is the index of the buffer being filled; ``tasks`` maps
    each such task's client to the index of the model version it trains on;
    ``buffered`` are the clients whose update the buffer holds. Once buffer
    ``server_update`` is checkpointed, the ``buffered`` tasks are done.
    """

    server_update: int
    tasks: dict[str, int]
    buffered: frozenset[str] = frozenset()


class RunDirectory:
    """Reads and writes one run's directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, runs_dir: Path, name: str) -> RunDirectory:
        """A new, empty directory ``<runs_dir>/<name>-<UTC timestamp>``."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        path = runs_dir / f"{name}-{stamp}"
        path.mkdir(parents=True)
        return cls(path)

    @property
    def config_path(self) -> Path:
        """The validated config the run was started with."""
        return self.path / "config.json"

    @property
    def checkpoint_path(self) -> Path:
        """The server state after the last completed round."""
        return self.path / "checkpoint.npz"

    @property
    def metrics_json_path(self) -> Path:
        """One object per completed round."""
        return self.path / "metrics.json"

    @property
    def metrics_csv_path(self) -> Path:
        """One row per completed round."""
        return self.path / "metrics.csv"

    @property
    def summary_path(self) -> Path:
        """The final figures and the privacy report."""
        return self.path / "summary.json"

    @property
    def model_path(self) -> Path:
        """The final global parameters, one array per tensor."""
        return self.path / "model.npz"

    @property
    def param_spec_path(self) -> Path:
        """The ParamSpec of the final model's flat vector."""
        return self.path / "param_spec.json"

    def plot_path(self, metric: str) -> Path:
        """The PNG plot of central ``metric`` per round."""
        return self.path / f"{metric}.png"

    @property
    def clustering_path(self) -> Path:
        """A clustered run's clusters and probing round, written once the probe is done."""
        return self.path / "clustering.json"

    def cluster_dir(self, index: int) -> RunDirectory:
        """Cluster ``index``'s own run directory (checkpoint, metrics, model), created."""
        path = self.path / "clusters" / str(index)
        path.mkdir(parents=True, exist_ok=True)
        return RunDirectory(path)

    @property
    def client_state_dir(self) -> Path:
        """Where clients' persistent state is kept."""
        return self.path / "client_state"

    @property
    def ledger_path(self) -> Path:
        """The run's privacy ledger (see :class:`~fedwarden.privacy.ledger.PrivacyLedger`)."""
        return self.path / "privacy_ledger.json"

    @property
    def spool_dir(self) -> Path:
        """Where the grpc runtime spools the uploads it acknowledged."""
        return self.path / "spool"

    @property
    def open_tasks_dir(self) -> Path:
        """FedBuff's open tasks (``tasks.json``) and their model versions (``version-N.npy``)."""
        return self.path / "open_tasks"

    @property
    def open_tasks_path(self) -> Path:
        """FedBuff's open tasks, as :class:`OpenTasks`."""
        return self.open_tasks_dir / "tasks.json"

    @property
    def deploy_dir(self) -> Path:
        """Where ``fedwarden run`` on the grpc runtime keeps its local client processes' files."""
        return self.path / "deploy"

    @property
    def cohort_openings_path(self) -> Path:
        """The openings of the audit log's cohort commitments (kept by the operator)."""
        return self.path / "cohort_openings.json"

    @property
    def anchor_path(self) -> Path:
        """The audit log's root-signed anchor, rewritten every round."""
        return self.path / "audit-anchor.json"

    @property
    def audit_report_path(self) -> Path:
        """The HTML audit report written when the run completes."""
        return self.path / "audit_report.html"

    def write_config(self, config_json: str) -> None:
        """Keep the validated config, so ``--resume`` rebuilds the same run."""
        write_atomic(self.config_path, config_json.encode())

    def read_config(self) -> str:
        """The config written by :meth:`write_config`."""
        config = self.config_path
        if not config.is_file():
            raise ConfigError(
                f"{self.path} is not a fedwarden run directory (no config.json); pass the folder "
                "that `fedwarden run` printed"
            )
        return config.read_text()

    def write_summary(self, summary: dict[str, Any]) -> None:
        """The run's final figures, privacy report included, as summary.json."""
        write_atomic(self.summary_path, json.dumps(summary, indent=1).encode())

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the server state after ``checkpoint.round_index`` in one atomic file."""
        meta = {
            "round_index": checkpoint.round_index,
            "sampler_state": checkpoint.sampler_state,
            "history": [record.to_json() for record in checkpoint.history],
            "train_seconds": checkpoint.train_seconds,
            "privacy_state": checkpoint.privacy_state,
            "reputation_state": checkpoint.reputation_state,
        }
        arrays: dict[str, Any] = {f"strategy/{k}": v for k, v in checkpoint.strategy_state.items()}
        buffer = io.BytesIO()
        np.savez(buffer, vector=checkpoint.vector, meta=np.array(json.dumps(meta)), **arrays)
        write_atomic(self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or None if no round completed."""
        path = self.checkpoint_path
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            strategy_state = {
                name.removeprefix("strategy/"): stored[name]
                for name in stored.files
                if name.startswith("strategy/")
            }
            return Checkpoint(
                round_index=meta["round_index"],
                vector=stored["vector"],
                strategy_state=strategy_state,
                sampler_state=meta["sampler_state"],
                history=[RoundRecord(**record) for record in meta["history"]],
                train_seconds=meta["train_seconds"],
                privacy_state=meta.get("privacy_state", {}),
                reputation_state=meta.get("reputation_state", {}),
            )

    def save_model_version(self, index: int, vector: Vector) -> None:
        """Keep model version ``index`` while tasks train on it (FedBuff)."""
        self.open_tasks_dir.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, vector, allow_pickle=False)
        write_atomic(self.open_tasks_dir / f"version-{index}.npy", buffer.getvalue())

    def load_model_version(self, index: int) -> Vector:
        """Model version ``index`` as :meth:`save_model_version` kept it."""
        path = self.open_tasks_dir / f"version-{index}.npy"
        if not path.is_file():
            raise ConfigError(
                f"{path} is missing: an open task trains on model version {index}, which the run "
                "directory no longer holds; the run directory was edited"
            )
        vector: Vector = np.load(path, allow_pickle=False)
        return vector

    def delete_model_version(self, index: int) -> None:
        """Forget model version ``index`` once no open task trains on it."""
        (self.open_tasks_dir / f"version-{index}.npy").unlink(missing_ok=True)

    def write_open_tasks(self, open_tasks: OpenTasks) -> None:
        """Record FedBuff's tasks whose updates are not yet in a released buffer."""
        self.open_tasks_dir.mkdir(exist_ok=True)
        record = {
            "server_update": open_tasks.server_update,
            "tasks": open_tasks.tasks,
            "buffered": sorted(open_tasks.buffered),
        }
        write_atomic(self.open_tasks_path, json.dumps(record, sort_keys=True).encode())

    def read_open_tasks(self) -> OpenTasks | None:
        """The open tasks :meth:`write_open_tasks` recorded last (None if never written)."""
        path = self.open_tasks_path
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return OpenTasks(
            server_update=int(record["server_update"]),
            tasks={str(client): int(index) for client, index in record["tasks"].items()},
            buffered=frozenset(str(client) for client in record["buffered"]),
        )

    def save_clustering(self, clusters: Sequence[Sequence[str]], probe: RoundRecord) -> None:
        """Keep the clusters and the probing round, so a resumed run does not probe again."""
        state = {"clusters": [list(cluster) for cluster in clusters], "probe": probe.to_json()}
        write_atomic(self.clustering_path, json.dumps(state, indent=1).encode())

    def load_clustering(self) -> tuple[list[tuple[str, ...]], RoundRecord] | None:
        """The clusters and probing round :meth:`save_clustering` kept, or None before the probe."""
        path = self.clustering_path
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        clusters = [tuple(cluster) for cluster in state["clusters"]]
        return clusters, RoundRecord(**state["probe"])

    def write_metrics(self, history: list[RoundRecord]) -> None:
        """Rewrite metrics.csv and metrics.json with every round so far (``round`` from 1)."""
        rows = [record.to_row() for record in history]
        write_atomic(self.metrics_json_path, json.dumps(rows, indent=1).encode())
        text = io.StringIO()
        if rows:
            writer = csv.DictWriter(text, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "rejection_reasons": json.dumps(row["rejection_reasons"])})
        write_atomic(self.metrics_csv_path, text.getvalue().encode())

    def save_model(self, spec: ParamSpec, vector: Vector) -> Path:
        """Write the model as named arrays plus its ParamSpec; returns the model path."""
        buffer = io.BytesIO()
        tensors: dict[str, Any] = spec.views(vector)
        np.savez(buffer, **tensors)
        write_atomic(self.model_path, buffer.getvalue())
        write_atomic(self.param_spec_path, spec.to_json().encode())
        return self.model_path

    def save_plots(self, history: list[RoundRecord]) -> None:
        """PNG plots of central accuracy and loss per round."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for metric in ("accuracy", "loss"):
            points = [
                (round_number(r.round_index), getattr(r, metric))
                for r in history
                if getattr(r, metric) is not None
            ]
            figure, axes = plt.subplots(figsize=(6, 4))
            if points:
                rounds, values = zip(*points, strict=True)
                axes.plot(rounds, values, marker="o", markersize=3)
            axes.set_xlabel("round")
            axes.set_ylabel(f"central test {metric}")
            axes.set_title(f"{metric} per round")
            axes.grid(alpha=0.3)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            plt.close(figure)
            write_atomic(self.plot_path(metric), buffer.getvalue())
