"""The model registry: versions, their lineage, the stage machine, retention, all audited.

Every test runs on SQLite and, where PostgreSQL and psycopg are installed, on a throwaway
PostgreSQL database (the fixtures of the run store's tests).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.core.errors import FedwardenError
from fedwarden.core.params import ParamSpec
from fedwarden.governance import (
    AuditLog,
    ModelPromoted,
    ModelRegistered,
    ModelRegistry,
    ModelRolledBack,
    ModelVersion,
    PilotEvaluated,
    RegistryError,
    RetentionDeletion,
    RunStore,
    verify,
)
from fedwarden.governance.audit import AuditEvent, read_entries
from fedwarden.governance.registry import Bump, next_version
from test_governance_store import postgres_server, store_url  # noqa: F401  (fixtures)

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CONFIG_JSON = '{"name": "mnist", "rounds": 3}'
CONFIG_HASH = hashlib.sha256(CONFIG_JSON.encode()).hexdigest()
ARRAYS = {
    "dense.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "dense.bias": np.array([0.5, -0.5, 1.5], dtype=np.float32),
}
SPEC = ParamSpec.from_arrays(ARRAYS)
runner = CliRunner()


@pytest.fixture
def store(store_url: str) -> Iterator[RunStore]:  # noqa: F811
    """An open store holding the run ``run-1`` of the model ``mnist``."""
    with RunStore(store_url) as opened:
        opened.create_run("run-1", "mnist", CONFIG_JSON, "/runs/mnist-1")
        yield opened


@pytest.fixture
def registry(store: RunStore) -> ModelRegistry:
    """An audited registry on the store."""
    return ModelRegistry(store, AuditLog(store, SIGNING_KEY))


def weights(offset: float = 0.0) -> bytes:
    """The raw float32 bytes of :data:`ARRAYS`' flat vector, shifted by ``offset``."""
    return (SPEC.flatten(ARRAYS) + np.float32(offset)).astype("<f4").tobytes()


def register(
    registry: ModelRegistry,
    accuracy: float | None = 0.9,
    bump: Bump = "minor",
    parent: str | None = None,
    run_id: str = "run-1",
    offset: float = 0.0,
) -> ModelVersion:
    """Register a version of ``run_id``'s model with the given registered accuracy."""
    return registry.register(
        run_id,
        parent,
        weights(offset),
        SPEC.to_json(),
        rounds=3,
        participants=8,
        dp={"epsilon": 2.0, "delta": 1e-5},
        metrics={} if accuracy is None else {"accuracy": accuracy},
        config_hash=CONFIG_HASH,
        data_description="digits, 8 clients, Dirichlet(1.0)",
        bump=bump,
    )


def audited(store: RunStore) -> list[AuditEvent | None]:
    """The events of the store's audit log, in order."""
    return [entry.event() for entry in read_entries(store)]


def stages(registry: ModelRegistry) -> dict[str, str]:
    """Each version's stage, by version."""
    return {found.version: found.stage for found in registry.list()}


def write_signing_key(folder: Path) -> Path:
    """The audit signing key as a PEM file in ``folder``."""
    path = folder / "audit.key"
    path.write_bytes(
        SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


# Versions.


@pytest.mark.parametrize(
    ("latest", "bump", "expected"),
    [
        (None, "major", (1, 0, 0)),
        (None, "patch", (1, 0, 0)),
        ((1, 4, 2), "major", (2, 0, 0)),
        ((1, 4, 2), "minor", (1, 5, 0)),
        ((1, 4, 2), "patch", (1, 4, 3)),
    ],
)
def test_next_version_bumps_one_part_and_resets_the_lower_ones(
    latest: tuple[int, int, int] | None, bump: Bump, expected: tuple[int, int, int]
) -> None:
    assert next_version(latest, bump) == expected


def test_versions_are_named_after_the_run_and_bumped_from_the_latest(
    registry: ModelRegistry, store: RunStore
) -> None:
    first = register(registry)
    assert (first.model, first.version, first.stage) == ("mnist", "1.0.0", "candidate")
    assert register(registry, bump="minor").version == "1.1.0"
    assert register(registry, bump="patch").version == "1.1.1"
    assert register(registry, bump="major").version == "2.0.0"
    assert register(registry, bump="patch").version == "2.0.1"
    store.create_run("run-2", "cifar", CONFIG_JSON, "/runs/cifar-2")
    assert register(registry, run_id="run-2").reference == "cifar@1.0.0"
    assert [found.reference for found in registry.list("mnist")] == [
        "mnist@1.0.0",
        "mnist@1.1.0",
        "mnist@1.1.1",
        "mnist@2.0.0",
        "mnist@2.0.1",
    ]


def test_registered_version_keeps_its_lineage_and_is_audited(
    registry: ModelRegistry, store: RunStore
) -> None:
    parent = register(registry)
    child = register(registry, parent="1.0.0", offset=1.0)
    assert child.parent == "mnist@1.0.0"
    assert (child.run_id, child.rounds, child.participants) == ("run-1", 3, 8)
    assert child.dp == {"epsilon": 2.0, "delta": 1e-5}
    assert child.config_hash == CONFIG_HASH
    assert child.weights_sha256 == hashlib.sha256(weights(1.0)).hexdigest()
    assert registry.show("mnist@1.1.0") == child
    registered = audited(store)
    assert registered == [
        ModelRegistered(
            model="mnist",
            version=version.version,
            run_id="run-1",
            parent=version.parent,
            weights_sha256=version.weights_sha256,
            config_hash=CONFIG_HASH,
            rounds=3,
            participants=8,
            dp={"epsilon": 2.0, "delta": 1e-5},
            metrics={"accuracy": 0.9},
            data_description="digits, 8 clients, Dirichlet(1.0)",
        )
        for version in (parent, child)
    ]


def test_weights_from_a_model_npz_equal_the_same_vector_as_bytes(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    np.savez(tmp_path / "model.npz", **ARRAYS)
    from_file = registry.register(
        "run-1",
        None,
        tmp_path / "model.npz",
        SPEC.to_json(),
        rounds=3,
        participants=8,
        dp=None,
        metrics={},
        config_hash=CONFIG_HASH,
        data_description="",
    )
    assert from_file.weights_sha256 == hashlib.sha256(weights()).hexdigest()
    np.testing.assert_array_equal(registry.weights(from_file.reference), SPEC.flatten(ARRAYS))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": b"\x00" * 7}, "whole float32"),
        ({"weights": b"\x00" * 8}, "needs 9"),
        ({"weights": np.full(9, np.nan, dtype="<f4").tobytes()}, "NaN"),
        ({"run_id": "ghost"}, "no run 'ghost'"),
        ({"config_hash": "0" * 64}, "recorded config hash"),
        ({"parent": "mnist@9.9.9"}, "no model version"),
        ({"metrics": {"accuracy": float("inf")}}, "NaN and infinite"),
        ({"rounds": -1}, "negative"),
    ],
)
def test_bad_registration_is_refused_and_leaves_no_trace(
    registry: ModelRegistry, store: RunStore, change: dict[str, object], message: str
) -> None:
    arguments: dict[str, Any] = {
        "run_id": "run-1",
        "parent": None,
        "weights": weights(),
        "spec_json": SPEC.to_json(),
        "rounds": 3,
        "participants": 8,
        "dp": None,
        "metrics": {"accuracy": 0.9},
        "config_hash": CONFIG_HASH,
        "data_description": "",
    }
    arguments.update(change)
    with pytest.raises(FedwardenError, match=message):
        registry.register(**arguments)
    assert registry.list() == []
    assert read_entries(store) == []


def test_pickled_weights_file_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    path = tmp_path / "weights.npy"
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RegistryError, match="pickled files are refused"):
        registry.register(
            "run-1",
            None,
            path,
            SPEC.to_json(),
            rounds=3,
            participants=8,
            dp=None,
            metrics={},
            config_hash=CONFIG_HASH,
            data_description="",
        )


def test_bare_version_is_refused_when_two_models_have_it(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry)
    assert registry.show("1.0.0").reference == "mnist@1.0.0"
    store.create_run("run-2", "cifar", CONFIG_JSON, "/runs/cifar-2")
    register(registry, run_id="run-2")
    with pytest.raises(RegistryError, match="ambiguous"):
        registry.show("1.0.0")
    assert registry.show("cifar@1.0.0").model == "cifar"


# Stages.


def test_first_candidate_is_promoted_without_a_baseline(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry)
    promoted = registry.promote("mnist@1.0.0", by="dana")
    assert promoted.stage == "production"
    assert promoted.promoted_at is not None
    event = audited(store)[-1]
    assert isinstance(event, ModelPromoted)
    assert (event.version, event.from_stage, event.to_stage, event.by, event.replaced) == (
        "1.0.0",
        "candidate",
        "production",
        "dana",
        None,
    )


def test_promoting_a_candidate_deprecates_the_production_version(
    registry: ModelRegistry,
) -> None:
    register(registry)
    register(registry)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    registry.promote("1.1.0", by="dana", pilot_accuracy=0.91)
    assert stages(registry) == {"1.0.0": "deprecated", "1.1.0": "production"}
    production = registry.production("mnist")
    assert production is not None and production.version == "1.1.0"


def test_production_version_cannot_be_promoted_again(registry: ModelRegistry) -> None:
    register(registry)
    registry.promote("1.0.0", by="dana")
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote("1.0.0", by="dana")


def test_deprecated_version_returns_only_through_rollback(registry: ModelRegistry) -> None:
    register(registry)
    register(registry)
    registry.promote("1.0.0", by="dana")
    registry.promote("1.1.0", by="dana", pilot_accuracy=0.9)
    with pytest.raises(RegistryError, match="only through rollback"):
        registry.promote("1.0.0", by="dana", override=True, reason="try anyway")
    assert stages(registry) == {"1.0.0": "deprecated", "1.1.0": "production"}


def test_rollback_restores_the_previous_production_version_and_withdraws_the_current(
    registry: ModelRegistry, store: RunStore
) -> None:
    for _ in range(2):
        register(registry)
    registry.promote("1.0.0", by="dana")
    registry.promote("1.1.0", by="dana", pilot_accuracy=0.9)
    restored = registry.rollback(by="erin")
    assert restored.version == "1.0.0"
    assert stages(registry) == {"1.0.0": "production", "1.1.0": "deprecated"}
    assert registry.show("1.1.0").rolled_back is True
    assert audited(store)[-1] == ModelRolledBack("mnist", "1.1.0", "1.0.0", "erin")


def test_rollback_skips_withdrawn_versions(registry: ModelRegistry) -> None:
    for _ in range(3):
        register(registry)
    registry.promote("1.0.0", by="dana")
    registry.promote("1.1.0", by="dana", pilot_accuracy=0.9)
    registry.promote("1.2.0", by="dana", pilot_accuracy=0.9)
    assert registry.rollback(by="erin").version == "1.1.0"
    assert registry.rollback(by="erin").version == "1.0.0"
    assert stages(registry) == {"1.0.0": "production", "1.1.0": "deprecated", "1.2.0": "deprecated"}
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback(by="erin")


def test_rollback_without_a_production_version_is_refused(registry: ModelRegistry) -> None:
    register(registry)
    with pytest.raises(RegistryError, match="0 models have a production version"):
        registry.rollback(by="erin")
    with pytest.raises(RegistryError, match="no production version"):
        registry.rollback(by="erin", name="mnist")
    assert stages(registry) == {"1.0.0": "candidate"}


def test_rollback_of_the_first_production_version_is_refused(registry: ModelRegistry) -> None:
    register(registry)
    registry.promote("1.0.0", by="dana")
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback(by="erin")
    assert stages(registry) == {"1.0.0": "production"}


def test_changes_must_say_who_made_them(registry: ModelRegistry) -> None:
    register(registry)
    with pytest.raises(RegistryError, match="who makes this change"):
        registry.promote("1.0.0", by=" ")
    assert stages(registry) == {"1.0.0": "candidate"}


def test_registry_without_an_audit_log_refuses_every_change_but_reads(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry)
    unaudited = ModelRegistry(store, None)
    with pytest.raises(RegistryError, match="--audit-key"):
        unaudited.promote("1.0.0", by="dana")
    with pytest.raises(RegistryError, match="audit"):
        register(unaudited)
    with pytest.raises(RegistryError, match="audit"):
        unaudited.rollback(by="dana")
    with pytest.raises(RegistryError, match="audit"):
        unaudited.apply_retention(0, by="dana")
    assert [found.reference for found in unaudited.list()] == ["mnist@1.0.0"]
    assert stages(registry) == {"1.0.0": "candidate"}


# Staged rollout.


def test_candidate_far_below_production_is_refused_with_the_numbers(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry)
    register(registry)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    entries_before = len(read_entries(store))
    with pytest.raises(RegistryError, match=r"0\.8700.*0\.0300.*0\.9000.*0\.0200"):
        registry.promote("1.1.0", by="dana", pilot_accuracy=0.87)
    assert stages(registry) == {"1.0.0": "production", "1.1.0": "candidate"}
    assert len(read_entries(store)) == entries_before


def test_candidate_within_the_threshold_is_promoted(registry: ModelRegistry) -> None:
    register(registry)
    register(registry)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    promoted = registry.promote("1.1.0", by="dana", pilot_accuracy=0.885)
    assert promoted.stage == "production" and promoted.pilot_accuracy == 0.885


def test_baseline_is_the_production_versions_registered_accuracy_without_a_pilot(
    registry: ModelRegistry,
) -> None:
    register(registry, accuracy=0.95)
    register(registry)
    registry.promote("1.0.0", by="dana")
    with pytest.raises(RegistryError, match=r"0\.9500"):
        registry.promote("1.1.0", by="dana", pilot_accuracy=0.9)
    with pytest.raises(RegistryError, match="needs the candidate's pilot accuracy"):
        registry.promote("1.1.0", by="dana")
    assert registry.promote("1.1.0", by="dana", pilot_accuracy=0.9, threshold=0.06).stage == (
        "production"
    )


def test_override_promotes_a_refused_candidate_and_the_audit_records_why(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry)
    register(registry)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote("1.1.0", by="dana", pilot_accuracy=0.5, override=True)
    registry.promote(
        "1.1.0", by="dana", pilot_accuracy=0.5, override=True, reason="fixes a fairness bug"
    )
    assert stages(registry) == {"1.0.0": "deprecated", "1.1.0": "production"}
    event = audited(store)[-1]
    assert event == ModelPromoted(
        model="mnist",
        version="1.1.0",
        from_stage="candidate",
        to_stage="production",
        by="dana",
        override=True,
        reason="fixes a fairness bug",
        replaced="1.0.0",
        pilot_accuracy=0.5,
        baseline_accuracy=0.9,
        threshold=0.02,
    )


def test_recorded_pilot_is_compared_with_production_on_the_same_clients(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry, accuracy=0.95)
    register(registry, accuracy=0.80)
    registry.promote("1.0.0", by="dana")  # no production yet: no baseline
    pilot = registry.record_pilot(
        "1.1.0", "server", ["site-b", "site-a"], 0.81, "mnist@1.0.0", 0.80
    )
    assert pilot.clients == ("site-a", "site-b") and registry.pilot("1.1.0") == pilot
    assert audited(store)[-1] == PilotEvaluated(
        model="mnist",
        version="1.1.0",
        clients=("site-a", "site-b"),
        accuracy=0.81,
        production="mnist@1.0.0",
        production_accuracy=0.80,
        by="server",
    )
    # Production's registered 0.95 is not the baseline: its 0.80 on the same pilot clients is.
    promoted = registry.promote("1.1.0", by="dana")
    assert promoted.stage == "production" and promoted.pilot_accuracy == 0.81
    event = audited(store)[-1]
    assert isinstance(event, ModelPromoted)
    assert (event.pilot_accuracy, event.baseline_accuracy) == (0.81, 0.80)


def test_recorded_pilot_worse_than_production_on_the_same_clients_is_refused(
    registry: ModelRegistry,
) -> None:
    register(registry)
    register(registry)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.6)
    registry.record_pilot("1.1.0", "server", ["site-a"], 0.70, "mnist@1.0.0", 0.75)
    with pytest.raises(RegistryError, match=r"0\.7000.*0\.0500.*0\.7500"):
        registry.promote("1.1.0", by="dana")
    assert stages(registry) == {"1.0.0": "production", "1.1.0": "candidate"}


def test_pilot_of_an_earlier_production_version_falls_back_to_the_recorded_accuracy(
    registry: ModelRegistry,
) -> None:
    for _ in range(3):
        register(registry)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    registry.record_pilot("1.2.0", "server", ["site-a"], 0.89, "mnist@1.0.0", 0.5)
    registry.promote("1.1.0", by="dana", pilot_accuracy=0.95)
    # Production changed since the pilot: 1.1.0's recorded 0.95 is the baseline now.
    with pytest.raises(RegistryError, match=r"0\.9500"):
        registry.promote("1.2.0", by="dana")


def test_pilot_without_productions_figure_is_checked_against_its_recorded_accuracy(
    registry: ModelRegistry,
) -> None:
    register(registry, accuracy=0.95)
    register(registry)
    registry.promote("1.0.0", by="dana")
    # Production could not be evaluated on the pilot (another layout, or no answer).
    registry.record_pilot("1.1.0", "server", ["site-a"], 0.10, "mnist@1.0.0", None)
    with pytest.raises(RegistryError, match=r"0\.1000.*0\.9500"):
        registry.promote("1.1.0", by="dana")
    assert stages(registry) == {"1.0.0": "production", "1.1.0": "candidate"}


def test_a_pilot_compares_with_the_production_version_of_the_same_model(
    registry: ModelRegistry, store: RunStore
) -> None:
    register(registry)
    register(registry)
    store.create_run("run-2", "cifar", CONFIG_JSON, "/runs/cifar-1")
    register(registry, run_id="run-2")
    with pytest.raises(RegistryError, match="production version of its own model"):
        registry.record_pilot("mnist@1.1.0", "server", ["site-a"], 0.9, "cifar@1.0.0", 0.5)
    with pytest.raises(RegistryError, match="production version of its own model"):
        registry.record_pilot("mnist@1.1.0", "server", ["site-a"], 0.9, "mnist@1.0.0", 0.5)


def test_only_candidates_are_piloted_and_every_pilot_names_its_clients(
    registry: ModelRegistry,
) -> None:
    register(registry)
    with pytest.raises(RegistryError, match="names the clients"):
        registry.record_pilot("1.0.0", "server", [], 0.9, None, None)
    with pytest.raises(RegistryError, match=r"fraction in \[0, 1\]"):
        registry.record_pilot("1.0.0", "server", ["site-a"], 1.5, None, None)
    registry.promote("1.0.0", by="dana", pilot_accuracy=0.9)
    with pytest.raises(RegistryError, match="only candidates are piloted"):
        registry.record_pilot("1.0.0", "server", ["site-a"], 0.9, None, None)


def test_pilot_accuracy_outside_zero_to_one_is_refused(registry: ModelRegistry) -> None:
    register(registry)
    with pytest.raises(RegistryError, match=r"fraction in \[0, 1\]"):
        registry.promote("1.0.0", by="dana", pilot_accuracy=87.0)


# Retention.


def serve_in_turn(registry: ModelRegistry, count: int) -> None:
    """Register ``count`` versions and promote each in turn; the last one serves."""
    for number in range(count):
        register(registry, offset=float(number))
        registry.promote(f"1.{number}.0", by="dana", pilot_accuracy=0.9)


def test_retention_deletes_old_deprecated_weights_keeps_metadata_and_audits_each(
    registry: ModelRegistry, store: RunStore
) -> None:
    serve_in_turn(registry, 4)
    register(registry)
    before = {found.version: found for found in registry.list()}
    deleted = registry.apply_retention(keep_last=1, by="retention-job")
    assert deleted == ["mnist@1.1.0", "mnist@1.0.0"]
    after = {found.version: found for found in registry.list()}
    assert set(after) == set(before)
    assert {version for version, found in after.items() if found.weights_deleted} == {
        "1.0.0",
        "1.1.0",
    }
    for version in ("1.0.0", "1.1.0"):
        assert after[version].weights_sha256 == before[version].weights_sha256
        assert after[version].stage == "deprecated"
        with pytest.raises(RegistryError, match="deleted by retention"):
            registry.weights(version)
    np.testing.assert_array_equal(registry.weights("1.2.0"), SPEC.flatten(ARRAYS) + 2)
    assert audited(store)[-2:] == [
        RetentionDeletion("model_weights", "mnist@1.1.0", "retention-job"),
        RetentionDeletion("model_weights", "mnist@1.0.0", "retention-job"),
    ]
    assert registry.apply_retention(keep_last=1, by="retention-job") == []
    assert verify(store, SIGNING_KEY.public_key()).ok


def test_retention_never_touches_production_or_candidates(registry: ModelRegistry) -> None:
    serve_in_turn(registry, 2)
    register(registry)
    assert registry.apply_retention(keep_last=0, by="retention-job") == ["mnist@1.0.0"]
    assert not registry.show("1.1.0").weights_deleted
    assert not registry.show("1.2.0").weights_deleted


def test_rollback_to_a_version_whose_weights_were_deleted_is_refused(
    registry: ModelRegistry,
) -> None:
    serve_in_turn(registry, 3)
    registry.apply_retention(keep_last=1, by="retention-job")
    assert registry.rollback(by="erin").version == "1.1.0"
    with pytest.raises(RegistryError, match="deleted by retention"):
        registry.rollback(by="erin")
    assert registry.production("mnist") == registry.show("1.1.0")


# Export.


def test_export_writes_named_arrays_and_the_lineage(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    register(registry)
    register(registry, parent="1.0.0", offset=1.0)
    child = register(registry, parent="1.1.0", offset=2.0)
    arrays_path, lineage_path = registry.export(child.reference, tmp_path / "out")
    with np.load(arrays_path, allow_pickle=False) as exported:
        assert sorted(exported.files) == sorted(ARRAYS)
        for name, array in ARRAYS.items():
            np.testing.assert_array_equal(exported[name], array + 2)
    lineage = json.loads(lineage_path.read_text())
    assert lineage["reference"] == "mnist@1.2.0"
    assert lineage["ancestors"] == ["mnist@1.1.0", "mnist@1.0.0"]
    assert lineage["run"] == {
        "run_id": "run-1",
        "name": "mnist",
        "config_hash": CONFIG_HASH,
        "run_dir": "/runs/mnist-1",
        "status": "running",
    }
    assert lineage["weights_sha256"] == hashlib.sha256(weights(2.0)).hexdigest()
    assert ParamSpec.from_json(json.dumps(lineage["param_spec"])) == SPEC


def test_weights_altered_in_the_database_are_refused(
    registry: ModelRegistry,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    register(registry)
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE model_weights SET weights = :w"), {"w": weights(5.0)})
    engine.dispose()
    with pytest.raises(RegistryError, match="do not match their recorded SHA-256"):
        registry.export("1.0.0", tmp_path)
    assert not (tmp_path / "mnist-1.0.0.npz").exists()


# Command line.


def test_cli_changes_without_the_audit_key_are_refused(
    registry: ModelRegistry,
    store_url: str,  # noqa: F811
) -> None:
    register(registry)
    result = runner.invoke(app, ["models", "promote", store_url, "1.0.0", "--by", "dana"])
    assert result.exit_code == 2
    assert "error:" in result.output and "--audit-key" in result.output
    assert registry.show("1.0.0").stage == "candidate"
    result = runner.invoke(app, ["models", "rollback", store_url, "--by", "dana"])
    assert result.exit_code == 2 and "--audit-key" in result.output


def test_cli_promote_rollback_list_show_and_export(
    registry: ModelRegistry,
    store: RunStore,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    register(registry)
    register(registry)
    key = str(write_signing_key(tmp_path))
    steps = [
        ["promote", store_url, "1.0.0", "--by", "dana", "--pilot-accuracy", "0.9"],
        ["promote", store_url, "1.1.0", "--by", "dana", "--pilot-accuracy", "0.5"],
        [
            *("promote", store_url, "1.1.0", "--by", "dana", "--pilot-accuracy", "0.5"),
            *("--override", "--reason", "urgent fix"),
        ],
        ["rollback", store_url, "--by", "erin"],
    ]
    exit_codes = [
        runner.invoke(app, ["models", *step, "--audit-key", key]).exit_code for step in steps
    ]
    assert exit_codes == [0, 2, 0, 0]
    assert stages(registry) == {"1.0.0": "production", "1.1.0": "deprecated"}
    kinds = [event.kind for event in audited(store) if event is not None]
    assert kinds[-3:] == ["model_promoted", "model_promoted", "model_rolled_back"]
    listed = runner.invoke(app, ["models", "list", store_url])
    assert listed.exit_code == 0
    assert "mnist@1.0.0  production" in listed.output
    assert "mnist@1.1.0  deprecated" in listed.output
    shown = runner.invoke(app, ["models", "show", store_url, "mnist@1.1.0"])
    assert shown.exit_code == 0
    record = json.loads(shown.output)
    assert (record["stage"], record["rolled_back"], record["pilot_accuracy"]) == (
        "deprecated",
        True,
        0.5,
    )
    exported = runner.invoke(app, ["models", "export", store_url, "1.0.0", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / "mnist-1.0.0.npz").exists()
    assert (tmp_path / "out" / "mnist-1.0.0.lineage.json").exists()


def test_cli_show_of_an_unknown_version_says_how_to_find_one(
    registry: ModelRegistry,
    store_url: str,  # noqa: F811
) -> None:
    result = runner.invoke(app, ["models", "show", store_url, "mnist@7.0.0"])
    assert result.exit_code == 2
    assert "models list" in result.output
