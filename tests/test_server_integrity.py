"""Resuming a DP run: an insider with the run directory and the store cannot reset the budget.

Each test mounts the attack of issue 15, finding 8 (delete the ledger, lower its
spend, raise the budget in config.json, also in the store) against a run
interrupted after two rounds, then resumes it: the resume is refused with a
message that says why. The only way to a new budget is the explicit, audited one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from fedwarden.build.deployment import Deployment
from fedwarden.build.integrity import BudgetChange, ResumeRefused
from fedwarden.build.run import resumed, run, serve
from fedwarden.cli import app
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.governance.audit import (
    BudgetChanged,
    audit_report,
    load_public_key,
    read_entries,
)
from fedwarden.governance.store import RunStore
from fedwarden.server import RunDirectory

BUDGET = 20.0


def _config(tmp_path: Path) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "name": "ledger",
            "seed": 3,
            "rounds": 4,
            "runs_dir": str(tmp_path / "runs"),
            "data": {"source": "synthetic", "num_clients": 20},
            "sampling": {"scheme": "poisson", "rate": 0.5},
            "privacy": {
                "mechanism": "user_level",
                "epsilon": BUDGET,
                "noise_multiplier": 1.0,
                "clip_norm": 0.5,
            },
            "runtime": {"workers": 1},
        }
    )


def _interrupted(tmp_path: Path, store: RunStore | None = None) -> Path:
    """A run stopped after two of its four rounds; its run directory."""
    result = run(_config(tmp_path), stop_after=2, store=store)
    assert result.rounds == 2 and result.run_dir is not None
    return Path(result.run_dir)


def _resume(run_dir: Path, store: RunStore | None = None, **options: Any) -> Any:
    config, _ = resumed(run_dir)
    return run(config, resume=run_dir, store=store, **options)


def _store(tmp_path: Path) -> RunStore:
    return RunStore.sqlite(tmp_path / "store.db")


def _lower_the_ledger(run_dir: Path) -> None:
    """Drop the second round's releases from the ledger, as an insider editing the file would."""
    path = run_dir / "privacy_ledger.json"
    ledger = json.loads(path.read_text())
    ledger["entries"] = [entry for entry in ledger["entries"] if entry["round_index"] == 0]
    path.write_text(json.dumps(ledger))


def _raise_the_budget_in(run_dir: Path, epsilon: float) -> str:
    """Edit config.json to a larger budget; the edited text."""
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["privacy"]["epsilon"] = epsilon
    path.write_text(json.dumps(config, indent=1))
    return path.read_text()


def test_a_checkpoint_without_its_ledger_is_not_resumed(tmp_path: Path) -> None:
    run_dir = _interrupted(tmp_path)
    (run_dir / "privacy_ledger.json").unlink()
    with pytest.raises(
        ResumeRefused, match=r"no privacy_ledger.json.*restart the budget from zero"
    ):
        _resume(run_dir)
    assert not (run_dir / "privacy_ledger.json").exists()


def test_the_command_line_refuses_it_and_says_why(tmp_path: Path) -> None:
    run_dir = _interrupted(tmp_path)
    (run_dir / "privacy_ledger.json").unlink()
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir)])
    assert result.exit_code != 0
    assert "no privacy_ledger.json" in " ".join(result.output.split())


def test_a_ledger_spending_less_than_the_checkpoint_records_is_not_resumed(
    tmp_path: Path,
) -> None:
    run_dir = _interrupted(tmp_path)
    _lower_the_ledger(run_dir)
    with pytest.raises(ResumeRefused, match=r"less than the epsilon=.* the checkpoint records"):
        _resume(run_dir)


def test_a_ledger_and_checkpoint_both_lowered_are_caught_by_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    run_dir = _interrupted(tmp_path, store)
    recorded = json.loads((run_dir / "metrics.json").read_text())[-1]["epsilon"]
    _lower_the_ledger(run_dir)
    # The insider also rewrites the checkpoint's history to a spend of zero.
    directory = RunDirectory(run_dir)
    checkpoint = directory.load_checkpoint()
    assert checkpoint is not None
    lowered = [replace(record, epsilon=0.0) for record in checkpoint.history]
    directory.save_checkpoint(replace(checkpoint, history=lowered))
    with pytest.raises(ResumeRefused, match=rf"epsilon={recorded:.6g} the store's round rows"):
        _resume(run_dir, store)
    with store.transaction() as connection:
        connection.execute(text("DELETE FROM rounds"))
    with pytest.raises(ResumeRefused, match=rf"epsilon={recorded:.6g} the signed audit log"):
        _resume(run_dir, store)


def test_a_budget_raised_in_config_json_is_refused_by_the_ledger(tmp_path: Path) -> None:
    run_dir = _interrupted(tmp_path)
    _raise_the_budget_in(run_dir, 1000.0)
    with pytest.raises(ConfigError, match=r"kept under the budget epsilon=20.0.*explicitly"):
        _resume(run_dir)


def test_a_budget_raised_in_config_json_and_ledger_is_refused_by_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path)
    run_dir = _interrupted(tmp_path, store)
    edited = _raise_the_budget_in(run_dir, 1000.0)
    ledger_path = run_dir / "privacy_ledger.json"
    ledger = json.loads(ledger_path.read_text())
    ledger["budget_history"][-1]["epsilon"] = 1000.0
    ledger_path.write_text(json.dumps(ledger))
    with pytest.raises(ResumeRefused, match=r"not the config the store recorded"):
        _resume(run_dir, store)
    # With write access to the database too, the signed audit log still holds the old hash.
    with store.transaction() as connection:
        connection.execute(
            text("UPDATE runs SET config_json = :json, config_hash = :hash"),
            {"json": edited, "hash": hashlib.sha256(edited.encode()).hexdigest()},
        )
    with pytest.raises(ResumeRefused, match=r"not the config the signed audit log recorded"):
        _resume(run_dir, store)


def test_an_explicit_budget_change_is_audited_reported_and_then_resumable(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    run_dir = _interrupted(tmp_path, store)
    result = _resume(run_dir, store, budget_change=BudgetChange(30.0, "dana"), stop_after=3)
    assert result.rounds == 3

    config_json = (run_dir / "config.json").read_text()
    assert RunConfig.model_validate_json(config_json).privacy.epsilon == 30.0
    run_row = store.run(run_dir.name)
    assert run_row is not None and run_row.config_json == config_json
    changes = [
        event
        for event in (entry.event() for entry in read_entries(store))
        if isinstance(event, BudgetChanged)
    ]
    assert changes == [
        BudgetChanged(
            run_dir.name, BUDGET, 30.0, "dana", hashlib.sha256(config_json.encode()).hexdigest()
        )
    ]
    history = result.extras["privacy"]["budget_history"]
    assert [(item["epsilon"], item["changed_by"]) for item in history] == [
        (BUDGET, None),
        (30.0, "dana"),
    ]
    finished = _resume(run_dir, store)
    assert finished.rounds == 4
    assert finished.extras["privacy"]["budget_epsilon"] == 30.0
    report = audit_report(store, load_public_key(finished.extras["governance"]["audit_public_key"]))
    assert report["verification"]["ok"]
    (privacy,) = [item for item in report["privacy"] if item["run_id"] == run_dir.name]
    budget_changes = privacy["budget_changes"]
    assert [(c["old_epsilon"], c["new_epsilon"], c["by"]) for c in budget_changes] == [
        (BUDGET, 30.0, "dana")
    ]


def test_a_budget_change_needs_a_name_and_a_resumed_dp_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names who makes it"):
        BudgetChange(30.0, " ")
    with pytest.raises(ConfigError, match="only when resuming"):
        run(_config(tmp_path), budget_change=BudgetChange(30.0, "dana"))


def test_the_command_line_changes_a_budget_only_with_a_name(tmp_path: Path) -> None:
    run_dir = _interrupted(tmp_path)
    unnamed = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--budget-epsilon", "30"])
    assert unnamed.exit_code != 0
    assert "--budget-changed-by NAME" in " ".join(unnamed.output.split())
    assert (
        RunConfig.model_validate_json((run_dir / "config.json").read_text()).privacy.epsilon
        == BUDGET
    )

    named = CliRunner().invoke(
        app,
        ["run", "--resume", str(run_dir), "--budget-epsilon", "30", "--budget-changed-by", "dana"],
    )
    assert named.exit_code == 0, named.output
    ledger = json.loads((run_dir / "privacy_ledger.json").read_text())
    assert ledger["budget"]["epsilon"] == 30.0
    assert ledger["budget_history"][-1]["changed_by"] == "dana"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 4 and summary["budget_epsilon"] == 30.0


def test_a_deployed_run_restarted_with_a_raised_budget_is_refused_unless_changed_explicitly(
    tmp_path: Path,
) -> None:
    stored = _config(tmp_path).model_copy(
        update={"runtime": _config(tmp_path).runtime.model_copy(update={"kind": "grpc"})}
    )
    run_dir = RunDirectory.create(tmp_path / "runs", stored.name)
    run_dir.write_config(stored.model_dump_json(indent=1))
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    with RunStore(store_url) as store:
        store.create_run(run_dir.path.name, stored.name, run_dir.read_config(), str(run_dir.path))
    raised = BudgetChange(1000.0, "mallory").apply(stored)
    deployment = Deployment("127.0.0.1:0", None, store_url)
    with pytest.raises(ConfigError, match=r"started with another config.*--budget-changed-by"):
        serve(raised, deployment)
    with pytest.raises(ConfigError, match="started with another config"):
        serve(raised, deployment, budget_change=BudgetChange(30.0, "dana"))


def test_a_local_dp_run_cannot_be_resumed_without_its_ledger_either(tmp_path: Path) -> None:
    values = _config(tmp_path).model_dump()
    values["privacy"] = {"mechanism": "local", "noise_multiplier": 2.0, "epsilon": BUDGET}
    result = run(RunConfig.from_mapping(values), stop_after=2)
    assert result.run_dir is not None
    run_dir = Path(result.run_dir)
    _raise_the_budget_in(run_dir, 1000.0)
    with pytest.raises(ConfigError, match=r"kept under the budget epsilon=20.0.*explicitly"):
        _resume(run_dir)
    (run_dir / "privacy_ledger.json").unlink()
    with pytest.raises(
        ResumeRefused, match=r"no privacy_ledger.json.*restart the budget from zero"
    ):
        _resume(run_dir)
