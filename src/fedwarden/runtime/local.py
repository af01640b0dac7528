"""The ``local`` runtime: a pool of worker processes on this machine.

Each worker process holds one model object and its share of the clients'
data (client ``i`` lives on worker ``i mod W``) and trains its part of every
cohort in turn. Only flat vectors and small JSON headers cross the process
boundary: the global vector once per worker per round, one update per client
(its raw vector, or the JSON header and bytes of its compressed payload, so
``ClientUpdate.payload_bytes`` is exactly what crossed).
Each worker uses one thread for BLAS and PyTorch, so W workers use W cores.

A worker that dies costs its clients in that round (reported as
``worker_lost`` failures); it is restarted with the same clients for the next
round, and their persisted state is read back from the state directory.

Workers start on this module, not on a copy of the parent. multiprocessing's
``spawn`` would re-run the parent's main module in every worker so that classes
defined there unpickle, and a script's main imports what the parent needs (the
server, the config, a benchmark's peers): seconds per worker for nothing. Here
a worker imports the parent's main, with the standard library's own
``__mp_main__`` rules, only when its pickled workload names ``__main__``: a
model class defined in the user's script still trains, and everything else
starts with the 300 modules a worker needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from multiprocessing import spawn
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedwarden.core.errors import RuntimeFailure
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    TrainConfig,
    header_bytes,
)
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.runtime.base import Runtime, owner_of
from fedwarden.runtime.engine import ClientEngine, Workload

logger = logging.getLogger(__name__)

Header = dict[str, Any]

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[2]); "
    "from multiprocessing.connection import Connection; "
    "from fedwarden.runtime.local import _worker_main; "
    "_worker_main(Connection(int(sys.argv[1])))"
)
"""What a worker process runs: this module's :func:`_worker_main` on the inherited pipe end.

``argv[2]`` is the directory the parent imported fedwarden from, so the worker
runs the same code whatever its own path says.
"""

_MAIN_MODULES = (b"__main__", b"__mp_main__")
"""A pickle that loads anything from the parent's main module names one of these."""

_PREPARATION_KEYS = ("name", "sys_path", "sys_argv", "dir", "orig_dir")
"""What of ``spawn.get_preparation_data`` a worker takes: its name, the parent's paths and argv."""

_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
"""The keys of ``spawn.get_preparation_data`` that make ``spawn.prepare`` import the main."""

_importing_main = False
"""True in a worker while it imports the parent's main module (see :meth:`LocalRuntime.start`)."""


def _send(connection: Connection, header: Header, vector: Vector | None = None) -> None:
    connection.send_bytes(json.dumps(header).encode())
    if vector is not None:
        connection.send_bytes(vector.data)


def _send_update(connection: Connection, update: ClientUpdate) -> None:
    """The update's header, then its raw vector or its payload header and payload."""
    _send(connection, _update_header(update))
    if update.payload is None:
        connection.send_bytes(update.update.data)
    else:
        connection.send_bytes(header_bytes(update.payload_header))
        connection.send_bytes(update.payload)


def _receive_update(connection: Connection, header: Header, size: int) -> ClientUpdate:
    """The rest of an update whose header arrived: its vector, or its encoded payload."""
    vector = np.empty(0, dtype=VECTOR_DTYPE)
    payload = None
    payload_header: Header = {}
    if header["encoded"]:
        payload_header = json.loads(connection.recv_bytes())
        payload = connection.recv_bytes()
    else:
        vector = _receive_vector(connection, size)
    return ClientUpdate(
        round_index=header["round_index"],
        client_id=header["client_id"],
        update=vector,
        num_examples=header["num_examples"],
        metrics=header["metrics"],
        train_seconds=header["train_seconds"],
        payload=payload,
        payload_header=payload_header,
    )


def _receive_header(connection: Connection) -> Header:
    header: Header = json.loads(connection.recv_bytes())
    return header


def _receive_vector(connection: Connection, size: int) -> Vector:
    vector = np.empty(size, dtype=VECTOR_DTYPE)
    received = connection.recv_bytes_into(vector.data.cast("B"))
    if received != vector.nbytes:
        raise RuntimeFailure(f"expected a {vector.nbytes}-byte vector, received {received} bytes")
    return vector


def _pin_threads() -> None:
    """One BLAS/OpenMP/PyTorch thread per worker, so W workers use W cores.

    Call it after the workload is unpickled: that is when the trainer's
    framework (PyTorch) is imported, and only loaded libraries can be limited.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _worker_main(connection: Connection) -> None:
    """Receive this worker's workload, then serve fit and evaluate requests until told to stop.

    The workload (the user's trainer and this worker's clients' data) comes
    from the parent process that started this one, over a pipe nothing else
    can write to, after the parent's paths (and its main module, when the
    workload needs it: ``spawn.prepare``, as multiprocessing's own children do).
    A ``cancel`` arriving while a list of clients is served skips the rest of
    the list; one arriving after the list is done is ignored. The worker ends
    when told to stop (at once, even within a list) or when the parent's end of
    the pipe closes.
    """
    global _importing_main
    try:
        _importing_main = True
        spawn.prepare(json.loads(connection.recv_bytes()))
        _importing_main = False
        # Not network input: the pipe is an unnamed socket pair made by the parent, whose
        # end this process inherited at start; no other process has an address to reach it.
        workload: Workload = pickle.loads(connection.recv_bytes())
        _pin_threads()
        engine = ClientEngine(workload)
    except EOFError:
        return
    except BaseException as error:  # say why, so the parent can; the traceback goes to stderr
        _send(connection, {"kind": "failed", "message": f"{type(error).__name__}: {error}"})
        raise
    _send(connection, {"kind": "ready"})
    with contextlib.suppress(EOFError):
        _serve(connection, engine, workload.trainer.spec.size)


def _serve(connection: Connection, engine: ClientEngine, size: int) -> None:
    while True:
        request = _receive_header(connection)
        if request["op"] == "stop":
            return
        if request["op"] == "cancel":
            continue
        vector = _receive_vector(connection, size)
        items = request["clients"]
        replies: Iterator[ClientUpdate | ClientEvaluation | Exception]
        if request["op"] == "fit":
            replies = engine.fit_each(vector, [_fit_instruction(item) for item in items])
        else:
            replies = engine.evaluate_each(vector, [_evaluate_instruction(item) for item in items])
        skipped: list[str] = []
        for item in items:
            interruption = None if skipped else _interruption(connection)
            if interruption == "stop":
                return
            if skipped or interruption == "cancel":
                skipped.append(item["client_id"])
                continue
            reply = next(replies)
            if isinstance(reply, ClientUpdate):
                _send_update(connection, reply)
            elif isinstance(reply, ClientEvaluation):
                _send(connection, _evaluation_header(reply))
            else:
                _send(connection, _failure_header(item, reply))
        _send(connection, {"kind": "done", "skipped": skipped})


def _interruption(connection: Connection) -> str | None:
    """``cancel`` or ``stop`` if the parent sent one while a list runs (it sends nothing else)."""
    if not connection.poll():
        return None
    op: str = _receive_header(connection)["op"]
    return op


def _fit_instruction(item: Header) -> FitInstruction:
    return FitInstruction(
        item["round_index"],
        item["client_id"],
        TrainConfig(**item["train"]),
        item["round_parameters"],
    )


def _evaluate_instruction(item: Header) -> EvaluateInstruction:
    finetune = item["finetune"]
    return EvaluateInstruction(
        item["round_index"],
        item["client_id"],
        None if finetune is None else TrainConfig(**finetune),
    )


def _update_header(update: ClientUpdate) -> Header:
    return {
        "kind": "update",
        "client_id": update.client_id,
        "round_index": update.round_index,
        "num_examples": update.num_examples,
        "metrics": dict(update.metrics),
        "train_seconds": update.train_seconds,
        "encoded": update.payload is not None,
        "finished_at": time.monotonic(),
    }


def _evaluation_header(evaluation: ClientEvaluation) -> Header:
    return {
        "kind": "evaluation",
        "client_id": evaluation.client_id,
        "num_examples": evaluation.num_examples,
        "metrics": dict(evaluation.metrics),
        "finished_at": time.monotonic(),
    }


def _failure_header(item: Header, error: Exception) -> Header:
    return {
        "kind": "failure",
        "client_id": item["client_id"],
        "message": f"{type(error).__name__}: {error}",
        "finished_at": time.monotonic(),
    }


class LocalRuntime(Runtime):
    """Worker processes on this machine, one per core by default."""

    name: ClassVar[str] = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.num_workers = workers or os.cpu_count() or 1
        self._processes: list[subprocess.Popen[bytes]] = []
        self._connections: list[Connection] = []
        self._workloads: list[Workload] = []
        self._owner: dict[str, int] = {}
        self._size = 0

    def start(self, workload: Workload) -> None:
        """Start the workers, each with its share of the clients.

        Raises:
            RuntimeFailure: if this process is a worker importing the script
                that started it, and the script starts a runtime when imported.
        """
        if _importing_main:
            raise RuntimeFailure(
                "a worker process imported the script that started the run (its model or data "
                "is defined there) and the script starts a runtime when imported: put the code "
                'that starts the run under `if __name__ == "__main__":`'
            )
        client_ids = workload.dataset.client_ids
        self.num_workers = max(1, min(self.num_workers, len(client_ids)))
        self._owner = {
            cid: owner_of(position, self.num_workers) for position, cid in enumerate(client_ids)
        }
        self._size = workload.trainer.spec.size
        self._workloads = [
            workload.for_clients([cid for cid in client_ids if self._owner[cid] == worker])
            for worker in range(self.num_workers)
        ]
        started = [self._spawn(worker) for worker in range(self.num_workers)]
        self._processes = [process for process, _ in started]
        self._connections = [connection for _, connection in started]
        with ThreadPoolExecutor(self.num_workers) as senders:
            list(senders.map(self._send_workload, range(self.num_workers)))
        for worker in range(self.num_workers):
            self._await_ready(worker)

    def _spawn(self, worker: int) -> tuple[subprocess.Popen[bytes], Connection]:
        """Start worker ``worker``; its workload follows through :meth:`_send_workload`.

        Starting every process before sending any data lets the workers import
        their modules in parallel instead of one after another.
        """
        parent_end, child_end = multiprocessing.Pipe()
        package_root = Path(__file__).resolve().parents[2]
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(child_end.fileno()), str(package_root)],
            pass_fds=(child_end.fileno(),),
        )
        child_end.close()
        return process, parent_end

    def _await_ready(self, worker: int) -> None:
        """Wait until the worker has its workload; raise with its reason if it cannot start.

        Raises:
            RuntimeFailure: if the worker exited or failed before it was ready.
        """
        try:
            header = _receive_header(self._connections[worker])
        except (EOFError, OSError):
            header = {"kind": "failed", "message": f"exited with code {self._exit_code(worker)}"}
        if header["kind"] != "ready":
            raise RuntimeFailure(f"worker {worker} could not start: {header['message']}")

    def _send_workload(self, worker: int) -> None:
        """The parent's paths (and main module, if the workload names it), then the workload."""
        workload = pickle.dumps(self._workloads[worker], protocol=pickle.HIGHEST_PROTOCOL)
        needs_main = any(name in workload for name in _MAIN_MODULES)
        keys = _PREPARATION_KEYS + (_MAIN_KEYS if needs_main else ())
        preparation = spawn.get_preparation_data(f"fedwarden-worker-{worker}")
        sent = {key: preparation[key] for key in keys if key in preparation}
        _send(self._connections[worker], sent)
        self._connections[worker].send_bytes(workload)

    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure]:
        """Train the cohort on the workers; replies in instruction order."""
        items = [
            {
                "client_id": ins.client_id,
                "round_index": ins.round_index,
                "train": asdict(ins.train),
                "round_parameters": dict(ins.round_parameters),
            }
            for ins in instructions
        ]
        round_index = instructions[0].round_index if instructions else 0
        for header, update in self._exchange("fit", vector, items, deadline_s):
            if update is not None:
                yield update
            else:
                yield _failure(round_index, header)

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        """Evaluate on the workers; replies in instruction order."""
        items = [
            {
                "client_id": ins.client_id,
                "round_index": ins.round_index,
                "finetune": None if ins.finetune is None else asdict(ins.finetune),
            }
            for ins in instructions
        ]
        round_index = instructions[0].round_index if instructions else 0
        for header, _ in self._exchange("evaluate", vector, items, None):
            if header["kind"] == "evaluation":
                yield ClientEvaluation(
                    header["client_id"], header["num_examples"], header["metrics"]
                )
            else:
                yield _failure(round_index, header)

    def _exchange(
        self, op: str, vector: Vector, items: list[Header], deadline_s: float | None
    ) -> Iterator[tuple[Header, ClientUpdate | None]]:
        """Send each worker its items, then read replies in item order.

        Yields ``(header, update or None)``; failures have kind ``failure``
        with a ``reason``.
        """
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        per_worker: list[list[Header]] = [[] for _ in range(self.num_workers)]
        for item in items:
            per_worker[self._owner[item["client_id"]]].append(item)
        busy = {w for w in range(self.num_workers) if per_worker[w]}
        for worker in busy:
            self._send_request(worker, {"op": op, "clients": per_worker[worker]}, vector)
        pending = list(items)
        while pending:
            item = pending[0]
            worker = self._owner[item["client_id"]]
            if worker not in busy:
                pending.pop(0)
                continue
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._connections[worker].poll(timeout):
                yield from self._finish_after_deadline(pending, busy, deadline or 0.0)
                return
            try:
                header, update = self._read_reply(worker)
            except (EOFError, OSError):
                yield from self._lose_worker(worker, pending, busy)
                continue
            if header["kind"] == "done":
                raise RuntimeFailure(
                    f"worker {worker} finished its list without answering client "
                    f"{item['client_id']!r}; this is a fedwarden bug"
                )
            pending.pop(0)
            if header["kind"] == "failure":
                header["reason"] = "error"
            yield header, update
            if not any(self._owner[p["client_id"]] == worker for p in pending):
                self._expect_done(worker)
                busy.discard(worker)

    def _send_request(self, worker: int, request: Header, vector: Vector) -> None:
        try:
            _send(self._connections[worker], request, vector)
        except (BrokenPipeError, OSError):
            self._restart(worker)
            _send(self._connections[worker], request, vector)

    def _read_reply(self, worker: int) -> tuple[Header, ClientUpdate | None]:
        connection = self._connections[worker]
        header = _receive_header(connection)
        if header["kind"] != "update":
            return header, None
        return header, _receive_update(connection, header, self._size)

    def _expect_done(self, worker: int) -> None:
        header, _ = self._read_reply(worker)
        if header["kind"] != "done":
            raise RuntimeFailure(f"worker {worker} sent {header['kind']!r} after its last client")

    def _finish_after_deadline(
        self, pending: list[Header], busy: set[int], deadline: float
    ) -> Iterator[tuple[Header, ClientUpdate | None]]:
        """Stop the workers' lists; keep replies finished in time, drop the rest."""
        for worker in busy:
            with contextlib.suppress(OSError):
                _send(self._connections[worker], {"op": "cancel"})
        answered: dict[str, tuple[Header, ClientUpdate | None]] = {}
        for worker in sorted(busy):
            while True:
                try:
                    header, update = self._read_reply(worker)
                except (EOFError, OSError):
                    self._restart(worker)
                    break
                if header["kind"] == "done":
                    break
                answered[header["client_id"]] = (header, update)
        for item in pending:
            reply = answered.get(item["client_id"])
            if reply is not None and reply[0]["finished_at"] <= deadline:
                if reply[0]["kind"] == "failure":
                    reply[0]["reason"] = "error"
                yield reply
            else:
                yield (
                    {
                        "kind": "failure",
                        "client_id": item["client_id"],
                        "reason": "deadline",
                        "message": "did not finish before the round deadline",
                    },
                    None,
                )

    def _lose_worker(
        self, worker: int, pending: list[Header], busy: set[int]
    ) -> Iterator[tuple[Header, ClientUpdate | None]]:
        """Report the dead worker's outstanding clients as lost, then restart it."""
        code = self._exit_code(worker)
        self._restart(worker)
        busy.discard(worker)
        lost = [p for p in pending if self._owner[p["client_id"]] == worker]
        for item in lost:
            pending.remove(item)
            yield (
                {
                    "kind": "failure",
                    "client_id": item["client_id"],
                    "reason": "worker_lost",
                    "message": f"worker process {worker} exited (code {code}) while training it",
                },
                None,
            )

    def _exit_code(self, worker: int) -> int | None:
        """The worker's exit code, waiting up to 5 s for it to exit; None if it has not."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._processes[worker].wait(timeout=5)
        return self._processes[worker].returncode

    def _restart(self, worker: int) -> None:
        logger.warning(
            "worker %d died (exit code %s); restarting it", worker, self._exit_code(worker)
        )
        self._connections[worker].close()
        self._processes[worker], self._connections[worker] = self._spawn(worker)
        self._send_workload(worker)
        self._await_ready(worker)

    def close(self) -> None:
        """Ask every worker to stop, then make sure it has."""
        for connection in self._connections:
            with contextlib.suppress(OSError):
                _send(connection, {"op": "stop"})
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for connection in self._connections:
            connection.close()
        self._processes.clear()
        self._connections.clear()


def _failure(round_index: int, header: Header) -> ClientFailure:
    return ClientFailure(round_index, header["client_id"], header["reason"], header["message"])
