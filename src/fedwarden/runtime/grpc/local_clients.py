"""Client processes on this machine, so ``fedwarden run`` can try the ``grpc`` runtime.

Everything a real deployment has is made for real: a CA and startup kits
(kept under ``pki``, the runs directory's ``federation/pki``, so successive
runs present the same enrolled identities to the same store), and under the
run directory one ``.npz`` per client from the simulated data set
(``deploy/data``) and one ``fedwarden client`` process per client talking
mutual TLS to the server on loopback, each logging to ``deploy/logs/<client>.log``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.sources import save_client_file
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.runtime.grpc.credentials import TlsKit

logger = logging.getLogger(__name__)

STOP_GRACE_S = 15.0


class LocalClients:
    """Provisions and starts one ``fedwarden client`` process per client of ``dataset``.

    ``allow_test_mode_noise`` passes ``--allow-test-mode-noise`` to every client:
    whoever runs the whole federation on one machine has chosen test mode.
    """

    def __init__(
        self,
        directory: Path,
        dataset: FederatedDataset,
        pki: Path,
        *,
        allow_test_mode_noise: bool = False,
    ) -> None:
        self.directory = directory
        self.dataset = dataset
        self.pki = pki
        self.allow_test_mode_noise = allow_test_mode_noise
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def server_kit(self) -> Path:
        """The server's startup kit (TLS and the audit log's signing key)."""
        return self.pki / "servers" / "server"

    def provision(self) -> TlsKit:
        """Create the CA, the server's and every client's kit and data file; the server's kit.

        Idempotent: later and resumed runs reuse what exists.
        """
        if not (self.pki / "ca.crt").exists():
            init_ca(self.pki, "local")
        server = self.server_kit
        if not server.exists():
            issue(self.pki, "server", "server")
        for client_id, data in self.dataset.clients.items():
            if not (self.pki / "clients" / client_id).exists():
                issue(self.pki, "client", client_id)
            data_file = self.directory / "data" / f"{client_id}.npz"
            if not data_file.exists():
                save_client_file(data, data_file)
        return TlsKit.from_dir(server)

    def start(self, address: str) -> None:
        """Start every client process, pointed at the server on ``address``."""
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for client_id in self.dataset.client_ids:
            command = [
                sys.executable,
                "-m",
                "fedwarden.cli",
                "client",
                "--server",
                address,
                "--data",
                str(self.directory / "data" / f"{client_id}.npz"),
                "--identity",
                str(self.pki / "clients" / client_id),
                "--state-dir",
                str(self.directory / "client_state" / client_id),
                *(["--allow-test-mode-noise"] if self.allow_test_mode_noise else []),
            ]
            with open(logs / f"{client_id}.log", "ab") as log:
                self.processes[client_id] = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
        logger.info("started %d client processes", len(self.processes))

    def stop(self) -> None:
        """Wait for the clients to exit (the server told them the run is over); kill stragglers."""
        for client_id, process in self.processes.items():
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("client process %s did not exit; terminating it", client_id)
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
