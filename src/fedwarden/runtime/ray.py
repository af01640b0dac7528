"""The ``ray`` runtime: the same client engine as actors on a Ray cluster.

Each actor hosts one :class:`~fedwarden.runtime.engine.ClientEngine` with its
share of the clients (client ``i`` on actor ``i mod W``), exactly like a
``local`` worker; the global vector is put in Ray's object store once per
round. Use it when one machine is not enough: ``address`` is ``ray://host:port``
or ``auto``; without it a local cluster is started. Actors are restarted by
Ray if they die; the clients they were training are reported ``worker_lost``.
Replies travel as Ray objects: a compressed update carries only its payload
and header (its ``update`` vector is empty), so the bytes Ray moves and the
``payload_bytes`` the server counts are the compressed size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from fedwarden.core.errors import FedwardenError
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
)
from fedwarden.core.params import Vector
from fedwarden.runtime.base import Runtime, owner_of
from fedwarden.runtime.engine import ClientEngine, Workload


class _EngineActor:
    """A Ray actor around one ClientEngine (wrapped with ``ray.remote`` at start)."""

    def __init__(self, workload: Workload) -> None:
        from fedwarden.runtime.local import _pin_threads

        _pin_threads()
        self.engine = ClientEngine(workload)

    def fit(self, vector: Vector, instruction: FitInstruction) -> ClientUpdate | ClientFailure:
        try:
            return self.engine.fit(vector, instruction)
        except Exception as error:  # a trainer bug must cost one client, not the run
            return ClientFailure(
                instruction.round_index,
                instruction.client_id,
                "error",
                f"{type(error).__name__}: {error}",
            )

    def evaluate(
        self, vector: Vector, instruction: EvaluateInstruction
    ) -> ClientEvaluation | ClientFailure:
        try:
            return self.engine.evaluate(vector, instruction)
        except Exception as error:
            return ClientFailure(
                instruction.round_index,
                instruction.client_id,
                "error",
                f"{type(error).__name__}: {error}",
            )


class RayRuntime(Runtime):
    """Client engines as Ray actors, one CPU each."""

    name: ClassVar[str] = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.requested_workers = workers
        self.address = address
        self._actors: list[Any] = []
        self._owner: dict[str, int] = {}
        self._started_ray = False

    def start(self, workload: Workload) -> None:
        """Connect to (or start) Ray and create the actors."""
        try:
            import ray
        except ImportError:
            raise FedwardenError(
                "the ray runtime needs Ray: pip install 'fedwarden[ray]'"
            ) from None
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
            )
            self._started_ray = True
        client_ids = workload.dataset.client_ids
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = max(1, min(self.requested_workers or cpus, len(client_ids)))
        self._owner = {cid: owner_of(i, count) for i, cid in enumerate(client_ids)}
        actor_class = ray.remote(num_cpus=1, max_restarts=-1)(_EngineActor)
        self._actors = [
            actor_class.remote(
                workload.for_clients([cid for cid in client_ids if self._owner[cid] == w])
            )
            for w in range(count)
        ]

    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure]:
        """One actor call per client, results read in instruction order."""
        import ray

        shared = ray.put(vector)
        calls = [
            self._actors[self._owner[ins.client_id]].fit.remote(shared, ins) for ins in instructions
        ]
        yield from self._collect(calls, instructions, deadline_s)

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        """One actor call per client, results read in instruction order."""
        import ray

        shared = ray.put(vector)
        calls = [
            self._actors[self._owner[ins.client_id]].evaluate.remote(shared, ins)
            for ins in instructions
        ]
        yield from self._collect(calls, instructions, None)

    def _collect(
        self,
        calls: list[Any],
        instructions: Sequence[FitInstruction | EvaluateInstruction],
        deadline_s: float | None,
    ) -> Iterator[Any]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        for call, ins in zip(calls, instructions, strict=True):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                yield ray.get(call, timeout=timeout)
            except GetTimeoutError:
                ray.cancel(call)
                yield ClientFailure(
                    ins.round_index,
                    ins.client_id,
                    "deadline",
                    "did not finish before the round deadline",
                )
            except RayActorError as error:
                yield ClientFailure(
                    ins.round_index,
                    ins.client_id,
                    "worker_lost",
                    f"Ray actor died while training it: {error}",
                )

    def close(self) -> None:
        """Kill the actors, and shut Ray down if this runtime started it."""
        if not self._actors and not self._started_ray:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
