"""The nightly retrain example: two nights, a good candidate promoted, a worse one refused.

Each night is a real run on the grpc runtime (three client processes on loopback) followed by
the registry's staged-rollout decision and the audit report; the flow is called directly, as
its schedule would call it, with or without Prefect installed.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.governance import ModelRegistry, RunStore
from fedwarden.governance.audit import (
    ModelPromoted,
    ModelRegistered,
    PilotEvaluated,
    RoundCompleted,
    RunCreated,
    read_entries,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "orchestration"
GOOD_LEARNING_RATE = "learning_rate = 0.5\n"
runner = CliRunner()


def load_flow() -> ModuleType:
    """The example's ``nightly_retrain`` module, imported from its file."""
    spec = importlib.util.spec_from_file_location("nightly_retrain", EXAMPLE / "nightly_retrain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def night_config(folder: Path, name: str, runs_dir: Path, learning_rate: str | None = None) -> Path:
    """The example's config with its runs in ``runs_dir``, and another learning rate if given."""
    text = (EXAMPLE / "nightly.toml").read_text()
    assert text.count(GOOD_LEARNING_RATE) == 1
    if learning_rate is not None:
        text = text.replace(GOOD_LEARNING_RATE, f"learning_rate = {learning_rate}\n")
    path = folder / name
    path.write_text(f'runs_dir = "{runs_dir}"\n{text}')
    return path


@pytest.mark.slow
def test_nightly_flow_promotes_a_good_candidate_and_refuses_a_worse_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flow = load_flow()
    runs_dir = tmp_path / "runs"
    caplog.set_level(logging.INFO, logger="nightly_retrain")

    first = flow.nightly_retrain(night_config(tmp_path, "good.toml", runs_dir))
    assert first.decision.promoted
    assert first.decision.production == first.retrained.candidate == "nightly@1.0.0"
    assert first.retrained.pilot["production"] is None

    # A night whose training barely moves the model: its pilot accuracy falls far short.
    second = flow.nightly_retrain(night_config(tmp_path, "worse.toml", runs_dir, "1e-06"))
    pilot = second.retrained.pilot
    assert second.retrained.candidate == "nightly@1.1.0"
    assert pilot["production"] == "nightly@1.0.0"
    assert pilot["clients"] == first.retrained.pilot["clients"]
    assert len(pilot["clients"]) == 2
    assert pilot["candidate_accuracy"] < pilot["production_accuracy"] - 0.02
    assert not second.decision.promoted
    assert second.decision.production == "nightly@1.0.0"
    assert "nightly@1.1.0" in second.decision.refusal
    refusals = [record for record in caplog.records if "was not promoted" in record.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING

    store_url = second.retrained.store_url
    assert store_url == first.retrained.store_url
    with RunStore(store_url) as store:
        registry = ModelRegistry(store, None)
        assert {found.reference: found.stage for found in registry.list()} == {
            "nightly@1.0.0": "production",
            "nightly@1.1.0": "candidate",
        }
        events = [entry.event() for entry in read_entries(store)]
    verified = runner.invoke(
        app,
        ["audit", "verify", store_url, "--public-key", str(second.retrained.audit_public_key)],
    )
    assert verified.exit_code == 0, verified.output
    assert f"OK: {len(events)} audit entries verified" in verified.output

    runs = [first.retrained.run_dir.name, second.retrained.run_dir.name]
    governance = [
        (type(event).__name__, getattr(event, "run_id", None) or getattr(event, "version", None))
        for event in events
        if isinstance(event, RunCreated | ModelRegistered | PilotEvaluated | ModelPromoted)
    ]
    assert governance == [
        ("RunCreated", runs[0]),
        ("ModelRegistered", runs[0]),
        ("PilotEvaluated", "1.0.0"),
        ("ModelPromoted", "1.0.0"),
        ("RunCreated", runs[1]),
        ("ModelRegistered", runs[1]),
        ("PilotEvaluated", "1.1.0"),
    ]
    (promotion,) = [event for event in events if isinstance(event, ModelPromoted)]
    assert (promotion.by, promotion.replaced) == (flow.ACTOR, None)
    assert promotion.pilot_accuracy == first.retrained.pilot["candidate_accuracy"]
    completed = [event.run_id for event in events if isinstance(event, RoundCompleted)]
    assert completed == [runs[0]] * 3 + [runs[1]] * 3

    page = second.report.read_text()
    assert second.report.parent == second.retrained.run_dir
    assert f"Audit log verified: {len(events)} entries" in page
    assert flow.ACTOR in page
