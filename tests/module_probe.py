"""A trainer that reports which modules its worker process has loaded.

It lives in its own module, importing only what softmax regression needs, so
the modules it reports are the worker's own and the parent's main module's,
not a test helper's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.models.numpy import NumpyTrainer, softmax_regression
from fedwarden.models.trainer import ClientContext

PROBE_DIR = "FEDWARDEN_TEST_MODULE_PROBE_DIR"
"""The environment variable naming where :func:`module_probe` trainers write."""


@dataclass(frozen=True)
class ModuleProbeTrainer:
    """Softmax regression that writes ``sorted(sys.modules)`` to ``<directory>/<pid>.json``."""

    directory: Path
    inner: NumpyTrainer

    @property
    def spec(self) -> ParamSpec:
        return self.inner.spec

    def initial_vector(self, seed: int) -> Vector:
        return self.inner.initial_vector(seed)

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        modules = json.dumps(sorted(sys.modules))
        (self.directory / f"{os.getpid()}.json").write_text(modules, encoding="utf-8")
        return self.inner.fit(vector, client, train)

    def evaluate(self, vector: Vector, x: np.ndarray, y: np.ndarray) -> Metrics:
        return self.inner.evaluate(vector, x, y)


def module_probe(num_features: int, num_classes: int | None) -> ModuleProbeTrainer:
    """A ``model.factory`` for configs: softmax regression writing to ``$PROBE_DIR``."""
    if num_classes is None:
        raise ValueError("module_probe trains a classifier: give it a data set with classes")
    return ModuleProbeTrainer(
        Path(os.environ[PROBE_DIR]), softmax_regression(num_features, num_classes)
    )
