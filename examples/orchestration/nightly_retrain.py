"""Nightly federated retrain with a staged rollout through the model registry, every step audited.

Three steps, each a Prefect task when Prefect 3 is installed (a plain call otherwise):

1. ``retrain``: :func:`fedwarden.build.run.run` on the grpc runtime. A completed run
   registers its final model as a candidate version and, with ``[rollout] pilot_clients``,
   evaluates the candidate and the production version federatedly on the same pilot clients;
   the store's audit log records the run, its rounds, the registration and the pilot.
2. ``promote``: :meth:`~fedwarden.governance.registry.ModelRegistry.promote` of the candidate
   ``by="nightly-retrain"``, which compares the recorded pilot accuracies. A candidate more than
   the threshold below production is refused: the flow logs the refusal, production keeps
   serving, and the flow's outcome says why. Only a promotion is audited.
3. ``report``: the store's HTML audit report, written after the decision.

Run it once, or serve it on the nightly schedule (needs Prefect)::

    python examples/orchestration/nightly_retrain.py examples/orchestration/nightly.toml --once
    python examples/orchestration/nightly_retrain.py examples/orchestration/nightly.toml

Without Prefect, schedule the ``--once`` command with cron (``0 2 * * *``) instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedwarden.build.run import run
from fedwarden.core.config import load_config
from fedwarden.core.errors import FedwardenError
from fedwarden.governance import AuditLog, ModelRegistry, RegistryError, RunStore
from fedwarden.governance.audit import (
    audit_report,
    load_public_key,
    load_signing_key,
    render_html,
)

logger = logging.getLogger("nightly_retrain")

SCHEDULE = "0 2 * * *"
"""Every night at 02:00 (cron, the scheduler's time zone)."""
ACTOR = "nightly-retrain"
"""Who the registry's audit log says promoted a candidate."""

Step = TypeVar("Step", bound=Callable[..., Any])
PREFECT_INSTALLED = importlib.util.find_spec("prefect") is not None

if PREFECT_INSTALLED:
    from prefect import flow, task
else:  # Prefect is optional: each step is then a plain call, and the flow runs once.

    def task(step: Step) -> Step:
        """Without Prefect a task is its function."""
        return step

    def flow(*, name: str) -> Callable[[Step], Step]:
        """Without Prefect a flow is its function (``name`` is Prefect's)."""
        return task


@dataclass(frozen=True)
class Retrained:
    """What the retrain step left: the run's directory, its candidate and its pilot.

    ``pilot`` is the run's pilot evaluation (candidate and production accuracy on the same
    clients), None without ``[rollout] pilot_clients``. ``audit_key`` signs the store's audit
    log and ``audit_public_key`` verifies it.
    """

    run_dir: Path
    candidate: str
    pilot: Mapping[str, Any] | None
    store_url: str
    audit_key: Path
    audit_public_key: Path


@dataclass(frozen=True)
class Decision:
    """What the promote step decided about ``candidate``.

    ``production`` is the version serving after the decision; ``refusal`` is the registry's
    reason when the candidate was not promoted (None when it was).
    """

    candidate: str
    promoted: bool
    production: str | None
    refusal: str | None


@dataclass(frozen=True)
class NightlyOutcome:
    """One night's retrain: the new candidate, the decision on it, and the audit report."""

    retrained: Retrained
    decision: Decision
    report: Path


@task
def retrain(config_path: Path) -> Retrained:
    """Train ``config_path`` on the grpc runtime; the run registers and pilots its candidate."""
    config = load_config(config_path)
    result = run(config)
    extras = result.extras
    if "registered_model" not in extras or result.run_dir is None:
        raise FedwardenError(
            f"run {config.name!r} registered no model: only a completed grpc run with an "
            "audit key registers one; check the run's log and its rounds"
        )
    # Every night's run keeps the same store, and the same server kit (audit.key beside
    # audit.pub) signs its audit log: the runs directory's, as the run reports them.
    governance = extras["governance"]
    public_key = Path(governance["audit_public_key"])
    retrained = Retrained(
        run_dir=Path(result.run_dir),
        candidate=extras["registered_model"],
        pilot=extras.get("pilot"),
        store_url=governance["store"],
        audit_key=public_key.with_name("audit.key"),
        audit_public_key=public_key,
    )
    logger.info("run %s registered %s", retrained.run_dir.name, retrained.candidate)
    return retrained


@task
def promote(retrained: Retrained) -> Decision:
    """Promote the candidate if its pilot holds up against production's; else keep production."""
    with RunStore(retrained.store_url) as store:
        registry = ModelRegistry(store, AuditLog(store, load_signing_key(retrained.audit_key)))
        try:
            promoted = registry.promote(retrained.candidate, by=ACTOR)
        except RegistryError as refusal:
            serving = registry.production(registry.show(retrained.candidate).model)
            production = None if serving is None else serving.reference
            logger.warning(
                "%s was not promoted; %s keeps serving: %s",
                retrained.candidate,
                production,
                refusal,
            )
            return Decision(retrained.candidate, False, production, str(refusal))
    logger.info("%s is in production", promoted.reference)
    return Decision(retrained.candidate, True, promoted.reference, None)


@task
def report(retrained: Retrained, output: Path) -> Path:
    """Write the store's HTML audit report (verified with the public key) to ``output``."""
    with RunStore(retrained.store_url) as store:
        summary = audit_report(store, load_public_key(retrained.audit_public_key))
    output.write_text(render_html(summary))
    if not summary["verification"]["ok"]:
        logger.error(
            "the audit log fails verification at entry %s: %s",
            summary["verification"]["first_bad"],
            summary["verification"]["problem"],
        )
    logger.info("audit report: %s", output)
    return output


@flow(name="nightly-retrain")
def nightly_retrain(config_path: Path) -> NightlyOutcome:
    """Retrain, decide on the candidate, report: one night of the staged rollout."""
    retrained = retrain(config_path)
    decision = promote(retrained)
    written = report(retrained, retrained.run_dir / "nightly_report.html")
    return NightlyOutcome(retrained, decision, written)


def main() -> None:
    """Run the flow once (``--once``), or serve it on :data:`SCHEDULE` with Prefect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the run config (TOML)")
    parser.add_argument("--once", action="store_true", help="run tonight's retrain now, once")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if arguments.once:
        outcome = nightly_retrain(arguments.config)
        print(f"candidate {outcome.decision.candidate}: ", end="")
        print("promoted" if outcome.decision.promoted else f"refused ({outcome.decision.refusal})")
        print(f"in production: {outcome.decision.production}; report: {outcome.report}")
        return
    if not PREFECT_INSTALLED:
        parser.exit(
            2,
            "serving on a schedule needs Prefect 3 (pip install 'prefect>=3,<4'); without it, "
            f"run this script with --once from cron ({SCHEDULE})\n",
        )
    nightly_retrain.serve(
        name="nightly-retrain",
        cron=SCHEDULE,
        parameters={"config_path": str(arguments.config.resolve())},
    )


if __name__ == "__main__":
    main()
