"""What the local runtime's workers import of the parent's main module.

multiprocessing's ``spawn`` re-runs the parent's main module in each worker so
that classes defined there unpickle. The local runtime's workers import it only
when their workload names it: the ``fedwarden`` command and a script whose
model lives in a module start workers that import neither the command line nor
the script; a script that defines its model class still trains on the workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from module_probe import PROBE_DIR

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
SOURCE = TESTS.parent / "src"

PROBE_RUN = """\
seed = 1
rounds = 1

[data]
source = "digits"
num_clients = 4

[model]
kind = "custom"
factory = "module_probe:module_probe"

[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1

[runtime]
kind = "local"
workers = 2
"""

USER_SCRIPT = '''\
import json

from torch import nn

from fedwarden.core.config import DataConfig
from fedwarden.core.messages import ClientUpdate, FitInstruction, TrainConfig
from fedwarden.data import load_dataset
from fedwarden.models.torch import TorchTrainer
from fedwarden.runtime import LocalRuntime, Workload


class DigitNet(nn.Module):
    """A model class defined in the user's script, so pickled as ``__main__.DigitNet``."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x)


if __name__ == "__main__":
    dataset = load_dataset(DataConfig(source="digits", num_clients=2), seed=1)
    trainer = TorchTrainer(DigitNet)
    train = TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1)
    with LocalRuntime(workers=2) as runtime:
        runtime.start(Workload(dataset, trainer, (), run_seed=1))
        cohort = [FitInstruction(0, cid, train) for cid in dataset.client_ids]
        replies = list(runtime.fit(trainer.initial_vector(0), cohort))
    print(json.dumps([
        {
            "client_id": reply.client_id,
            "trained": isinstance(reply, ClientUpdate) and bool(abs(reply.update).sum() > 0),
            "num_examples": getattr(reply, "num_examples", None),
            "expected_examples": dataset.clients[reply.client_id].num_train,
            "message": getattr(reply, "message", ""),
        }
        for reply in replies
    ]))
'''


PROBE_SCRIPT = """\
import json
import sys

import fedwarden.server  # what a script's main imports and a worker has no use for
from fedwarden.core.config import DataConfig
from fedwarden.data import load_dataset
from fedwarden.runtime import LocalRuntime, Workload
from fedwarden.core.messages import FitInstruction, TrainConfig
from module_probe import module_probe

if __name__ == "__main__":
    dataset = load_dataset(DataConfig(source="digits", num_clients=2), seed=1)
    trainer = module_probe(64, 10)
    train = TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.1)
    with LocalRuntime(workers=2) as runtime:
        runtime.start(Workload(dataset, trainer, (), run_seed=1))
        cohort = [FitInstruction(0, cid, train) for cid in dataset.client_ids]
        replies = runtime.fit(trainer.initial_vector(0), cohort)
        print(json.dumps([type(reply).__name__ for reply in replies]))
"""


def _environment(*paths: Path) -> dict[str, str]:
    path = os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _run_script(tmp_path: Path, text: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as a script of its own in ``tmp_path``, the way a user starts one."""
    script = tmp_path / "user_script.py"
    script.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )


def test_workers_of_the_fedwarden_command_do_not_import_the_command_line(tmp_path: Path) -> None:
    console_script = Path(sys.executable).with_name("fedwarden")
    config = tmp_path / "probe.toml"
    config.write_text(PROBE_RUN, encoding="utf-8")
    reports = tmp_path / "modules"
    reports.mkdir()
    completed = subprocess.run(
        [str(console_script), "run", str(config), "--json", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_environment(SOURCE, TESTS), PROBE_DIR: str(reports)},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    worker_modules = [
        set(json.loads(report.read_text(encoding="utf-8"))) for report in reports.iterdir()
    ]
    assert len(worker_modules) == 2, "each of the two workers trains two of the four clients"
    for modules in worker_modules:
        assert "fedwarden.cli" not in modules
        assert "typer" not in modules
        assert "fedwarden.server" not in modules


def test_workers_of_a_script_whose_model_lives_in_a_module_do_not_import_the_script(
    tmp_path: Path,
) -> None:
    reports = tmp_path / "modules"
    reports.mkdir()
    completed = _run_script(
        tmp_path, PROBE_SCRIPT, {**_environment(SOURCE, TESTS), PROBE_DIR: str(reports)}
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == ["ClientUpdate", "ClientUpdate"]
    worker_modules = [
        set(json.loads(report.read_text(encoding="utf-8"))) for report in reports.iterdir()
    ]
    assert len(worker_modules) == 2, "each of the two workers trains one of the two clients"
    for modules in worker_modules:
        assert "fedwarden.server" not in modules
        assert "module_probe" in modules


def test_a_script_that_starts_a_run_when_imported_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    unguarded = textwrap.dedent(USER_SCRIPT).replace('if __name__ == "__main__":', "if True:")
    completed = _run_script(tmp_path, unguarded, _environment(SOURCE))
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("fedwarden.core.errors.RuntimeFailure: worker 0 could not start")
    assert 'if __name__ == "__main__":' in last_line


def test_a_model_class_defined_in_the_users_script_trains_on_the_workers(
    tmp_path: Path,
) -> None:
    completed = _run_script(tmp_path, textwrap.dedent(USER_SCRIPT), _environment(SOURCE))
    assert completed.returncode == 0, completed.stderr
    replies = json.loads(completed.stdout)
    assert [reply["client_id"] for reply in replies] == ["client_0", "client_1"]
    for reply in replies:
        assert reply["trained"], reply["message"]
        assert reply["num_examples"] == reply["expected_examples"]
