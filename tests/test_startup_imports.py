"""A process imports what its path needs: the slow libraries wait until they are used.

``fedwarden --help``, a server and a client start without dp-accounting, SciPy (its BLAS,
statistics and clustering wait for the first aggregation, ALIE attack or clustered run),
PyTorch or Opacus; the command line also without grpc and SQLAlchemy. Each case runs in a
fresh interpreter and reads ``sys.modules``: the property is which modules are loaded, not
how long it took.
"""

from __future__ import annotations

import colorsys
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedwarden
from fedwarden._lazy import lazy_module

SLOW_EVERYWHERE = ("dp_accounting", "scipy", "torch", "opacus")


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` are in ``sys.modules`` after a fresh interpreter runs ``code``."""
    source = str(Path(fedwarden.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
    }
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    ("code", "watched"),
    [
        pytest.param(
            "from fedwarden.cli import app",
            (*SLOW_EVERYWHERE, "grpc", "sqlalchemy"),
            id="the console script's import",
        ),
        pytest.param(
            "import sys\nsys.argv = ['fedwarden', 'run', '--help']\nfrom fedwarden.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass",
            (*SLOW_EVERYWHERE, "grpc", "sqlalchemy"),
            id="fedwarden run --help",
        ),
        pytest.param("import fedwarden.server", SLOW_EVERYWHERE, id="the server"),
        pytest.param(
            "import fedwarden.build.client, fedwarden.runtime.grpc.client",
            SLOW_EVERYWHERE,
            id="a client",
        ),
    ],
)
def test_a_process_starts_without_the_slow_libraries_it_does_not_use(
    code: str, watched: tuple[str, ...]
) -> None:
    assert loaded_after(code, watched) == []


def test_a_torch_trainer_makes_its_optimizer_and_loads_torch_dynamo_only_when_it_trains() -> None:
    build = (
        "import functools\n"
        "import numpy as np\n"
        "from torch import nn\n"
        "from fedwarden.models.torch import TorchTrainer\n"
        "trainer = TorchTrainer(functools.partial(nn.Linear, 4, 2))\n"
        "vector = trainer.initial_vector(0)\n"
    )
    assert loaded_after(build, ("torch._dynamo",)) == []
    train = (
        "from fedwarden.core.messages import TrainConfig\n"
        "from fedwarden.data.dataset import ClientData\n"
        "from fedwarden.models.trainer import ClientContext\n"
        "x = np.ones((8, 4), np.float32)\n"
        "y = np.zeros(8, np.int64)\n"
        "data = ClientData('c', x, y, x, y)\n"
        "context = ClientContext('c', data, 0, np.random.default_rng(0))\n"
        "trainer.fit(vector, context, TrainConfig(1, 4, 0.1))\n"
    )
    assert loaded_after(build + train, ("torch._dynamo",)) == ["torch._dynamo"]


def test_dp_accounting_is_loaded_when_a_spend_is_first_accounted() -> None:
    code = (
        "import fedwarden.server\n"
        "from fedwarden.privacy.accounting import compute_spend, poisson_gaussian\n"
        "spend = compute_spend([poisson_gaussian(0.01, 1.0, 100)], 1e-5)\n"
        "assert spend.epsilon > 0"
    )
    assert loaded_after(code, ("dp_accounting", "scipy.stats")) == ["dp_accounting", "scipy.stats"]


def test_a_lazy_module_is_the_module_once_read_and_a_missing_one_fails_at_that_read() -> None:
    assert lazy_module("colorsys").rgb_to_hsv is colorsys.rgb_to_hsv
    missing = lazy_module("fedwarden_no_such_package")
    with pytest.raises(ModuleNotFoundError, match="fedwarden_no_such_package"):
        _ = missing.anything
