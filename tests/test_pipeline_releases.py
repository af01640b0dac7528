"""One inventory of releases: under DP or secure aggregation nothing per client leaves in clear.

The attack of issue 15, finding 3: a reader of the store (``accepted_updates``
rows, round records) or of the logs learns each client's training loss and
example count, released beside the protected update, uncharged. The process
test runs user-level DP under SecAgg+ over gRPC and reads every row of every
table and every log line for them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from sqlalchemy import inspect, text

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig
from fedwarden.core.messages import CLIENT_EPSILON, ClientUpdate
from fedwarden.data import FederatedDataset
from fedwarden.governance.store import RunStore
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.releases import (
    UNCOUNTED,
    ReleasePolicy,
    WithholdClientStatistics,
)
from grpc_federation import Federation


def _update(metrics: dict[str, float], num_examples: int = 173) -> ClientUpdate:
    return ClientUpdate(0, "client_0", np.ones(4, dtype=np.float32), num_examples, metrics)


def _context(digits: FederatedDataset) -> ClientContext:
    return ClientContext("client_0", digits.clients["client_0"], 0, np.random.default_rng(0))


def _policy(**sections: Any) -> ReleasePolicy:
    return ReleasePolicy.of(RunConfig.from_mapping({"name": "policy", **sections}))


USER_LEVEL = {"mechanism": "user_level", "epsilon": 4.0, "noise_multiplier": 1.0}


def test_a_protected_clients_loss_and_example_count_do_not_leave_it(
    digits_clients: FederatedDataset,
) -> None:
    stage = WithholdClientStatistics(_policy(privacy=USER_LEVEL))
    sent = stage.client_half(
        _update({"train_loss": 0.392, CLIENT_EPSILON: 1.5}), _context(digits_clients)
    )
    assert sent.metrics == {CLIENT_EPSILON: 1.5}
    assert sent.num_examples == UNCOUNTED


def test_an_example_count_goes_on_only_into_a_secure_sum_or_when_declared_public(
    digits_clients: FederatedDataset,
) -> None:
    secure = WithholdClientStatistics(_policy(secure={"kind": "secagg"}))
    public = WithholdClientStatistics(
        _policy(privacy={**USER_LEVEL, "public_example_counts": True})
    )
    for stage in (secure, public):
        sent = stage.client_half(_update({"train_loss": 1.23}), _context(digits_clients))
        assert sent.metrics == {} and sent.num_examples == 173


def test_an_unprotected_run_withholds_nothing() -> None:
    assert not _policy().protected
    assert _policy(secure={"kind": "secagg"}).protected
    assert _policy(
        privacy={"mechanism": "local", "noise_multiplier": 1.0, "epsilon": 8.0}
    ).protected


def test_a_user_level_run_releases_no_train_loss_or_client_evaluation_and_lists_its_releases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedwarden")
    rounds, rate, noise_multiplier = 3, 0.5, 1.0
    config = RunConfig.from_mapping(
        {
            "name": "releases",
            "seed": 5,
            "rounds": rounds,
            "runs_dir": str(tmp_path),
            "data": {"source": "digits", "num_clients": 8},
            "sampling": {"scheme": "poisson", "rate": rate},
            "privacy": {**USER_LEVEL, "noise_multiplier": noise_multiplier, "epsilon": 50.0},
            "runtime": {"workers": 1},
        }
    )
    result = run(config, write_run_dir=False)
    assert all(record.train_loss is None for record in result.history)
    assert result.client_accuracy is None
    said = caplog.text
    assert "train_loss is off" in said and "end-of-run client evaluation is off" in said
    releases = {item["release"]: item for item in result.to_json()["releases"]}
    assert set(releases) == {"model_update", "example_count", "train_loss", "client_evaluation"}
    assert releases["train_loss"]["protection"].startswith("withheld")
    assert releases["example_count"]["protection"].startswith("withheld")
    # Cohorts come from secure randomness: a Poisson cohort of 8 clients at rate 0.5 is
    # empty with probability 1/256, and an empty round releases nothing and is not charged.
    assert all(record.sampled == 0 for record in result.history if not record.applied)
    released = sum(record.applied for record in result.history)
    assert released >= 1
    oracle = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE)
    oracle.compose(
        dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(noise_multiplier)), released
    )
    assert releases["model_update"]["epsilon"] == pytest.approx(oracle.get_epsilon(1e-5), rel=1e-3)


# The process test: user-level DP under SecAgg+ over gRPC.


def _every_row(store_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the store, by table name."""
    with RunStore(store_url) as store, store.reading() as connection:
        tables = inspect(connection).get_table_names()
        return {
            table: [
                dict(row._mapping) for row in connection.execute(text(f"SELECT * FROM {table}"))
            ]
            for table in tables
        }


def _numbers_in(value: Any) -> set[float]:
    """Every number in ``value``, looking into JSON text too."""
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int | float):
        return {float(value)}
    if isinstance(value, str):
        try:
            return _numbers_in(json.loads(value))
        except ValueError:
            return set()
    if isinstance(value, dict):
        return set().union(*(_numbers_in(item) for item in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(_numbers_in(item) for item in value))
    return set()


@pytest.mark.slow
def test_user_level_dp_under_secagg_over_grpc_stores_and_logs_no_per_client_statistic(
    federation: Callable[..., Federation],
) -> None:
    sites = 3
    run_ = federation(
        sites=sites,
        rounds=2,
        privacy={"mechanism": "user_level", "epsilon": 50.0, "clip_norm": 0.5},
        secure={"kind": "secagg", "threshold": 2},
    )
    run_.start_server()
    run_.start_clients()
    assert run_.wait_server() == 0, run_.server_output()
    records = run_.completed_rounds()
    assert [record["participants"] for record in records] == [sites, sites]
    assert all(record["train_loss"] is None for record in records)

    # What the clients hold and would have sent: their training and test-set sizes.
    counts: set[float] = set()
    for path in (run_.root / "data").glob("*.npz"):
        with np.load(path) as data:
            counts |= {float(data["y"].shape[0]), float(data["y_test"].shape[0])}
    assert len(counts) >= sites and min(counts) > UNCOUNTED
    rows = _every_row(f"sqlite:///{run_.root / 'store.db'}")
    updates = rows["accepted_updates"]
    assert len(updates) == 2 * sites
    for update in updates:
        assert update["num_examples"] == UNCOUNTED
        assert json.loads(update["metrics_json"])["metrics"] == {}
    for table, table_rows in rows.items():
        for row in table_rows:
            assert not _numbers_in(row) & counts, (table, row)
            assert "train_loss" not in json.dumps(row, default=str) or table == "rounds", (table,)
    logs = [run_.server_output()] + [run_.client_log(site).read_text() for site in run_.sites]
    for log in logs:
        assert not re.search(r"train_loss\W+\d", log)
        for count in counts:
            assert not re.search(rf"\b{int(count)} examples\b", log)

    summary = run_.summary()
    releases = {item["release"]: item for item in summary["releases"]}
    assert releases["model_update"]["protection"].startswith("inside the secure sum")
    assert releases["model_update"]["epsilon"] == pytest.approx(summary["epsilon"], rel=1e-9)
    assert releases["example_count"]["protection"].startswith("inside the secure sum")
    assert releases["train_loss"]["epsilon"] is None
    assert summary["client_accuracy"] is None
    printed = " ".join(run_.server_output().split())
    assert "release train_loss: withheld" in printed


def test_a_local_dp_run_lists_each_clients_charged_updates(tmp_path: Path) -> None:
    rounds, noise_multiplier = 2, 2.0
    config = RunConfig.from_mapping(
        {
            "name": "local-releases",
            "seed": 5,
            "rounds": rounds,
            "data": {"source": "digits", "num_clients": 4},
            "sampling": {"scheme": "uniform", "cohort_size": 4},
            "privacy": {
                "mechanism": "local",
                "noise_multiplier": noise_multiplier,
                "epsilon": 50.0,
            },
            "runtime": {"workers": 1},
        }
    )
    result = run(config, write_run_dir=False)
    summary = result.to_json()
    releases = {item["release"]: item for item in summary["releases"]}
    assert releases["model_update"]["protection"].startswith("Gaussian noise added by each")
    assert releases["example_count"]["protection"].startswith("withheld")
    assert releases["client_epsilon"]["protection"].startswith("public")
    # Every client took part in both rounds: two Gaussian releases of sensitivity 2C each.
    oracle = PLDAccountant(NeighboringRelation.REPLACE_ONE)
    oracle.compose(dp_event.GaussianDpEvent(2 * noise_multiplier), rounds)
    assert releases["model_update"]["epsilon"] == pytest.approx(oracle.get_epsilon(1e-5), rel=1e-3)
    assert all(record.train_loss is None for record in result.history)
