"""A resumed DP run continues from what it really spent: its ledger checked against every record.

Issue 15, finding 8: deleting ``privacy_ledger.json``, lowering the spend in it,
or raising the budget in ``config.json``, then ``--resume``, used to continue
training on a fresh budget while the signed audit log went on recording the
understated epsilon. Before a differentially private run is resumed:

- a run with a checkpoint has its ledger (:func:`require_ledger`);
- its ``config.json`` is the config the store and the signed audit log recorded
  when the run was created, or changed to by an explicit budget change
  (:func:`require_recorded_config`);
- its ledger's spend is at least the largest epsilon recorded anywhere else:
  the checkpoint's round history, the store's round rows and the audit log's
  completed rounds (:func:`require_spend_kept`).

The budget changes only explicitly (:class:`BudgetChange`, ``fedwarden run
--resume RUN_DIR --budget-epsilon E --budget-changed-by NAME``): the ledger's
``budget_history``, the store's config and a ``BudgetChanged`` audit entry
record who changed it, from what, to what.

Against whom this holds is in SECURITY.md: someone who can rewrite the run
directory and the store alike, without the audit key, is caught by the signed
log; someone who also holds the audit key is not.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, FedwardenError
from fedwarden.server.rundir import Checkpoint, RunDirectory

if TYPE_CHECKING:
    from fedwarden.governance.audit import ServerAuditTrail
    from fedwarden.governance.store import RunStore

logger = logging.getLogger(__name__)

DP_MECHANISMS = ("user_level", "dp_sgd", "local")
"""The mechanisms whose spend is kept in the run's ledger."""

_RELATIVE_TOLERANCE = 1e-9
"""How far below a recorded epsilon a ledger may be and still agree (JSON round trips)."""


class ResumeRefused(FedwardenError):
    """Resuming would understate what the run spent or change its guarantee unannounced."""


@dataclass(frozen=True)
class BudgetChange:
    """An explicit change of a run's privacy budget to ``epsilon``, asked for by ``by``."""

    epsilon: float
    by: str

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon)):
            raise ConfigError(f"--budget-epsilon must be a number, got {self.epsilon!r}")
        if self.epsilon <= 0:
            raise ConfigError(f"--budget-epsilon must be > 0, got {self.epsilon!r}")
        if not self.by.strip():
            raise ConfigError(
                "a budget change names who makes it (--budget-changed-by NAME); it is "
                "recorded in the ledger and the audit log"
            )

    def apply(self, config: RunConfig) -> RunConfig:
        """``config`` with this budget, validated again; refused for a run without a ledger."""
        if config.privacy.mechanism not in DP_MECHANISMS:
            raise ConfigError(
                f"run {config.name!r} has privacy.mechanism={config.privacy.mechanism!r}: it "
                f"keeps no privacy ledger, so it has no budget to change (one of "
                f"{', '.join(DP_MECHANISMS)} does)"
            )
        values = config.model_dump(mode="json")
        values["privacy"]["epsilon"] = self.epsilon
        return RunConfig.model_validate(values)

    def record(
        self,
        run_dir: RunDirectory,
        store: RunStore | None,
        audit: ServerAuditTrail | None,
        old_epsilon: float,
        config_json: str,
    ) -> None:
        """Record the change in the audit log, the store and ``config.json`` (the changed config).

        The ledger records it in its ``budget_history`` when it is opened with ``by``.
        """
        if audit is not None:
            audit.budget_changed(old_epsilon, self.epsilon, self.by, config_json)
        if store is not None:
            store.change_run_config(run_dir.path.name, config_json)
        run_dir.write_config(config_json)
        logger.warning(
            "%s changed the privacy budget of %s from epsilon=%s to epsilon=%s",
            self.by,
            run_dir.path.name,
            old_epsilon,
            self.epsilon,
        )


def config_hash(config_json: str) -> str:
    """The SHA-256 the store and the audit log record of a config's JSON text."""
    return hashlib.sha256(config_json.encode()).hexdigest()


def require_ledger(run_dir: RunDirectory, config: RunConfig, checkpoint: Checkpoint) -> None:
    """Refuse to resume a DP run whose checkpoint exists without its ledger."""
    if config.privacy.mechanism not in DP_MECHANISMS or run_dir.ledger_path.is_file():
        return
    raise ResumeRefused(
        f"{run_dir.path} has a checkpoint after round {checkpoint.round_index + 1} but no "
        f"{run_dir.ledger_path.name}: the ledger holds the privacy this run has spent, and "
        "resuming without it would restart the budget from zero. Restore the ledger from a "
        "backup; this run will not be resumed without it"
    )


def require_recorded_config(run_dir: RunDirectory, recorded: Mapping[str, str | None]) -> None:
    """Refuse a ``config.json`` whose hash differs from one recorded (by source; None: none)."""
    actual = config_hash(run_dir.read_config())
    for source, expected in recorded.items():
        if expected is not None and expected != actual:
            raise ResumeRefused(
                f"{run_dir.config_path} (SHA-256 {actual[:12]}) is not the config "
                f"{source} recorded for this run (SHA-256 {expected[:12]}): a config edited "
                "after the run began, e.g. with a raised privacy budget, is not resumed. "
                "Restore config.json; change a budget explicitly with `fedwarden run --resume "
                "RUN_DIR --budget-epsilon E --budget-changed-by NAME`"
            )


def require_spend_kept(
    run_dir: RunDirectory, spent: float, recorded: Mapping[str, float | None]
) -> None:
    """Refuse a ledger whose spend is below an epsilon recorded elsewhere (by source)."""
    for source, epsilon in recorded.items():
        if epsilon is not None and spent < epsilon * (1 - _RELATIVE_TOLERANCE):
            raise ResumeRefused(
                f"{run_dir.ledger_path} accounts epsilon={spent:.6g}, less than the "
                f"epsilon={epsilon:.6g} {source} records for this run: the ledger has lost "
                "releases (or was edited), and resuming from it would understate the privacy "
                "spent. Restore the ledger from a backup"
            )


def recorded_config_hashes(store: RunStore | None, run_dir: RunDirectory) -> dict[str, str | None]:
    """The config hash the store and the signed audit log hold for the run in ``run_dir``."""
    from fedwarden.governance.audit import recorded_run

    if store is None:
        return {}
    run_id = run_dir.path.name
    row = store.run(run_id)
    return {
        "the store": None if row is None else row.config_hash,
        "the signed audit log": recorded_run(store, run_id).config_hash,
    }


def recorded_epsilons(
    store: RunStore | None, run_dir: RunDirectory, checkpoint: Checkpoint
) -> dict[str, float | None]:
    """The largest epsilon spent that the checkpoint, the store and the audit log record."""
    from fedwarden.governance.audit import recorded_run

    recorded: dict[str, float | None] = {
        "the checkpoint": max(
            (record.epsilon for record in checkpoint.history if record.epsilon is not None),
            default=None,
        )
    }
    if store is not None:
        run_id = run_dir.path.name
        rows = [row.get("epsilon") for row in store.round_records(run_id)]
        recorded["the store's round rows"] = max(
            (float(epsilon) for epsilon in rows if epsilon is not None), default=None
        )
        recorded["the signed audit log"] = recorded_run(store, run_id).epsilon_spent
    return recorded
