"""The privacy ledger: dp-accounting's figures, budgets refused in advance, a file that lasts."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from fedwarden.core.errors import ConfigError, FedwardenError
from fedwarden.privacy.accounting import (
    compute_spend,
    fixed_size_gaussian,
    poisson_gaussian,
)
from fedwarden.privacy.ledger import BudgetExceeded, LedgerEntry, PrivacyBudget, PrivacyLedger

DELTA = 1e-5
UPDATE = poisson_gaussian(0.1, 1.0)  # one round of user-level DP-FedAvg, q = 0.1, z = 1
COUNT = poisson_gaussian(0.1, 5.0)  # adaptive clipping's noisy count in the same round
QUERY = dp_event.GaussianDpEvent(12.0)  # a DP metrics query


def pld_oracle(event: dp_event.DpEvent, relation: NeighboringRelation) -> float:
    return float(PLDAccountant(neighboring_relation=relation).compose(event).get_epsilon(DELTA))


def rdp_oracle(events: list[dp_event.DpEvent], relation: NeighboringRelation) -> float:
    accountant = RdpAccountant(neighboring_relation=relation)
    for event in events:
        accountant.compose(event)
    return float(accountant.get_epsilon(DELTA))


def sampled(q: float, z: float) -> dp_event.DpEvent:
    return dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))


def run_ledger(budget: float = 100.0, path: Path | None = None, **options: object) -> PrivacyLedger:
    return PrivacyLedger(
        PrivacyBudget(budget, DELTA),
        privacy_unit="client",
        path=path,
        **options,  # type: ignore[arg-type]
    )


def test_ledger_epsilon_equals_dp_accountings_for_rounds_counts_and_a_query() -> None:
    ledger = run_ledger()
    for round_index in range(8):
        ledger.charge(round_index, "model_update", UPDATE)
        ledger.charge(round_index, "clip_count", COUNT)
    ledger.charge(8, "metrics_query", QUERY)
    spent = ledger.spent()
    charged = [entry.event for entry in ledger.entries]
    assert spent.epsilon_rdp == rdp_oracle(charged, NeighboringRelation.ADD_OR_REMOVE_ONE)
    composed = dp_event.ComposedDpEvent(
        [
            dp_event.SelfComposedDpEvent(sampled(0.1, 1.0), 8),
            dp_event.SelfComposedDpEvent(sampled(0.1, 5.0), 8),
            QUERY,
        ]
    )
    oracle = pld_oracle(composed, NeighboringRelation.ADD_OR_REMOVE_ONE)
    assert spent.epsilon == pytest.approx(oracle, rel=1e-3)
    assert spent.accountant == "pld"


def test_fixed_size_ledger_equals_dp_accountings_rdp_with_replace_one() -> None:
    ledger = run_ledger(neighboring="replace_one")
    for round_index in range(3):
        ledger.charge(round_index, "model_update", fixed_size_gaussian(1000, 40, 1.0))
    # replace-one sensitivity of a sum clipped to C is 2C: dp-accounting's RDP sees z / 2
    seen = dp_event.SampledWithoutReplacementDpEvent(1000, 40, dp_event.GaussianDpEvent(0.5))
    spent = ledger.spent()
    assert spent.epsilon == rdp_oracle([seen] * 3, NeighboringRelation.REPLACE_ONE)
    assert spent.accountant == "rdp"


def test_round_is_refused_before_charging_when_the_budget_would_be_exceeded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "privacy_ledger.json"
    ledger = run_ledger(budget=2.5, path=path)
    rounds = 0
    refusal: BudgetExceeded | None = None
    while refusal is None:
        try:
            ledger.check([UPDATE], f"round {rounds + 1}")
        except BudgetExceeded as raised:
            refusal = raised
        else:
            ledger.charge(rounds, "model_update", UPDATE)
            rounds += 1
    # dp-accounting agrees that exactly this many rounds fit in epsilon = 2.5
    relation = NeighboringRelation.ADD_OR_REMOVE_ONE
    assert pld_oracle(dp_event.SelfComposedDpEvent(sampled(0.1, 1.0), rounds), relation) <= 2.5
    assert pld_oracle(dp_event.SelfComposedDpEvent(sampled(0.1, 1.0), rounds + 1), relation) > 2.5
    # nothing was charged for the refused round, in memory or on disk
    assert len(ledger.entries) == rounds
    assert len(json.loads(path.read_text())["entries"]) == rounds
    spent = ledger.spent()
    assert refusal.spent == spent
    assert refusal.would_spend == compute_spend([UPDATE] * (rounds + 1), DELTA)
    assert refusal.budget == PrivacyBudget(2.5, DELTA)
    cost = refusal.would_spend.epsilon - spent.epsilon
    assert str(refusal).startswith(
        f"round {rounds + 1} would spend epsilon={cost:.4g} (delta=1e-05) but only "
        f"{2.5 - spent.epsilon:.4g} of the budget epsilon=2.5 remains (spent so far: "
        f"epsilon={spent.epsilon:.4g})"
    )
    assert isinstance(refusal, FedwardenError)


def test_a_refusal_survives_pickling_with_its_figures() -> None:
    ledger = run_ledger(budget=1.0)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.check([UPDATE] * 5, "round 1")
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (copy.spent, copy.would_spend, copy.budget) == (
        refused.value.spent,
        refused.value.would_spend,
        refused.value.budget,
    )
    assert str(copy) == str(refused.value)


def test_an_affordable_check_returns_the_spend_and_charges_nothing() -> None:
    ledger = run_ledger()
    ledger.charge(0, "model_update", UPDATE)
    would = ledger.check([UPDATE, COUNT], "round 2")
    assert would == compute_spend([UPDATE, UPDATE, COUNT], DELTA)
    assert len(ledger.entries) == 1
    assert ledger.spent() == compute_spend([UPDATE], DELTA)


def every_kind_of_release() -> list[tuple[int, str, dp_event.DpEvent]]:
    return [
        (0, "model_update", UPDATE),
        (0, "clip_count", COUNT),
        (1, "model_update", poisson_gaussian(0.1, 1.3)),  # noise changed mid-run
        (1, "metrics_query", QUERY),
        (
            2,
            "analytics",
            dp_event.ComposedDpEvent(
                [dp_event.DiscreteLaplaceDpEvent(0.02, 25), dp_event.LaplaceDpEvent(40.0)]
            ),
        ),
    ]


def test_reopened_ledger_has_the_same_entries_and_identical_spend(tmp_path: Path) -> None:
    path = tmp_path / "run" / "privacy_ledger.json"
    ledger = run_ledger(path=path, client_budget=5.0)
    for round_index, kind, event in every_kind_of_release():
        ledger.charge(round_index, kind, event, note=f"{kind} of round {round_index}")
    ledger.charge_client("hospital-a", 2, poisson_gaussian(0.02, 1.0, 50))
    reopened = run_ledger(path=path, client_budget=5.0)
    assert reopened.entries == ledger.entries
    assert reopened.spent() == ledger.spent()
    assert reopened.client_spent("hospital-a") == ledger.client_spent("hospital-a")
    assert reopened.report() == ledger.report()
    assert reopened.next_round_index == 3
    assert reopened.entries[-1] == LedgerEntry(
        2, "dp_sgd", poisson_gaussian(0.02, 1.0, 50), client_id="hospital-a"
    )


def test_reopening_with_another_privacy_unit_or_relation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "privacy_ledger.json"
    run_ledger(path=path).charge(0, "model_update", UPDATE)
    with pytest.raises(ConfigError, match="privacy_unit='client' but this run declares"):
        PrivacyLedger(PrivacyBudget(100.0, DELTA), privacy_unit="example", path=path)
    with pytest.raises(ConfigError, match="neighboring='add_remove' but this run declares"):
        run_ledger(path=path, neighboring="replace_one")


def test_a_budget_raised_in_the_config_alone_is_refused_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "privacy_ledger.json"
    first = run_ledger(budget=2.0, path=path)
    first.charge(0, "model_update", UPDATE)
    kept = path.read_text()
    with pytest.raises(ConfigError, match=r"kept under the budget epsilon=2.0.*explicitly"):
        run_ledger(budget=4.0, path=path)
    assert path.read_text() == kept


def test_an_explicit_budget_change_is_kept_with_its_author_in_the_files_history(
    tmp_path: Path,
) -> None:
    path = tmp_path / "privacy_ledger.json"
    first = run_ledger(budget=2.0, path=path)
    first.charge(0, "model_update", UPDATE)
    raised = run_ledger(budget=4.0, path=path, budget_changed_by="dana")
    assert raised.budget == PrivacyBudget(4.0, DELTA)
    assert raised.spent() == first.spent()
    history = json.loads(path.read_text())["budget_history"]
    assert [(item["epsilon"], item["from_entry"], item["changed_by"]) for item in history] == [
        (2.0, 0, None),
        (4.0, 1, "dana"),
    ]
    assert raised.report()["budget_history"] == history


def test_a_damaged_ledger_file_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "privacy_ledger.json"
    path.write_text('{"format": "fedwarden.privacy_ledger", "entr')
    with pytest.raises(ConfigError, match=r"cannot be read .* would reset the privacy spent"):
        run_ledger(path=path)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_leaves_the_previous_file_whole_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "privacy_ledger.json"
    ledger = run_ledger(path=path)
    ledger.charge(0, "model_update", UPDATE)
    before = path.read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, failing, crash)
        with pytest.raises(OSError, match="disk full"):
            ledger.charge(1, "model_update", UPDATE)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["privacy_ledger.json"]
    # the release happened: the ledger still counts it, and the next write keeps it
    assert ledger.spent() == compute_spend([UPDATE, UPDATE], DELTA)
    ledger.charge(2, "model_update", UPDATE)
    assert len(run_ledger(path=path).entries) == 3


def test_an_event_that_cannot_be_accounted_is_refused_and_not_recorded() -> None:
    ledger = run_ledger()
    with pytest.raises(ConfigError, match="replace_one"):
        ledger.charge(0, "model_update", fixed_size_gaussian(100, 10, 1.0))
    assert ledger.entries == ()


def test_projection_equals_the_spend_after_charging_those_rounds() -> None:
    ledger = run_ledger()
    ledger.charge(0, "model_update", UPDATE)
    projected = ledger.projection([UPDATE, COUNT], 4)
    for round_index in range(1, 5):
        ledger.charge(round_index, "model_update", UPDATE)
        ledger.charge(round_index, "clip_count", COUNT)
    assert projected.epsilon == pytest.approx(ledger.spent().epsilon, rel=1e-9)
    assert projected.epsilon_rdp == pytest.approx(ledger.spent().epsilon_rdp, rel=1e-9)
    assert ledger.projection([UPDATE], 0) == ledger.spent()


def test_per_client_budgets_retire_a_silo_exactly_when_dp_accounting_says(
    tmp_path: Path,
) -> None:
    silo_round = poisson_gaussian(0.02, 1.0, 50)  # 50 DP-SGD steps at q = 0.02, z = 1
    ledger = PrivacyLedger(
        PrivacyBudget(8.0, DELTA),
        privacy_unit="example",
        path=tmp_path / "privacy_ledger.json",
        client_budget=2.0,
    )
    rounds = 0
    while not ledger.client_would_exceed("silo-a", silo_round):
        ledger.charge_client("silo-a", rounds, silo_round)
        rounds += 1
    relation = NeighboringRelation.ADD_OR_REMOVE_ONE
    steps = dp_event.SelfComposedDpEvent(sampled(0.02, 1.0), 50 * rounds)
    more = dp_event.SelfComposedDpEvent(sampled(0.02, 1.0), 50 * (rounds + 1))
    assert pld_oracle(steps, relation) <= 2.0 < pld_oracle(more, relation)
    assert ledger.client_spent("silo-a").epsilon == pytest.approx(
        pld_oracle(steps, relation), rel=1e-3
    )
    # silos are accounted apart, and apart from the run
    assert not ledger.client_would_exceed("silo-b", silo_round)
    assert ledger.client_spent("silo-b").epsilon == 0
    assert ledger.spent().epsilon == 0
    report = ledger.report()
    assert report["max_client_epsilon"] == ledger.client_spent("silo-a").epsilon
    assert report["client_budget"] == 2.0


def test_without_a_client_budget_no_client_is_ever_over() -> None:
    ledger = run_ledger()
    assert not ledger.client_would_exceed("silo-a", poisson_gaussian(1.0, 0.1, 100))


def test_report_is_json_ready_and_states_unit_relation_and_what_is_left() -> None:
    ledger = run_ledger(budget=8.0, neighboring="add_remove")
    ledger.charge(0, "model_update", UPDATE)
    report = json.loads(json.dumps(ledger.report()))
    spent = ledger.spent()
    assert report == {
        "epsilon": spent.epsilon,
        "delta": DELTA,
        "accountant": "pld",
        "epsilon_rdp": spent.epsilon_rdp,
        "epsilon_pld": spent.epsilon_pld,
        "privacy_unit": "client",
        "neighboring": "add_remove",
        "budget_epsilon": 8.0,
        "budget_delta": DELTA,
        "budget_remaining": 8.0 - spent.epsilon,
        "client_budget": None,
        "max_client_epsilon": None,
        "client_epsilons": {},
        "entries": 1,
        "budget_history": [
            {
                "epsilon": 8.0,
                "delta": DELTA,
                "client_budget": None,
                "changed_by": None,
                "from_entry": 0,
                "recorded_at": report["budget_history"][0]["recorded_at"],
            }
        ],
    }


@pytest.mark.parametrize(
    ("epsilon", "delta", "message"),
    [
        (0.0, DELTA, "epsilon must be > 0"),
        (1.0, 0.0, r"delta must be in \(0, 1\)"),
        (1.0, 1.0, r"delta must be in \(0, 1\)"),
    ],
)
def test_impossible_budgets_are_refused(epsilon: float, delta: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PrivacyBudget(epsilon, delta)


def test_an_unknown_privacy_unit_is_refused() -> None:
    with pytest.raises(ConfigError, match="privacy_unit must be one of"):
        PrivacyLedger(PrivacyBudget(1.0, DELTA), privacy_unit="user")  # type: ignore[arg-type]
