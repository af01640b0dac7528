"""DP-SGD on a torch model: a TorchTrainer whose every client trains with Opacus's DP-SGD.

Abadi et al. 2016, "Deep Learning with Differential Privacy" (Algorithm 1). The
mechanism (Poisson-sampled batches, per-sample clipping, noise from a
:class:`~fedwarden.privacy.randomness.NoiseSource`, each client's RDP accountant
kept in its state) is :mod:`fedwarden.privacy.dp_sgd`, whose docstring gives the
steps; this module wires it to :class:`~fedwarden.models.torch.TorchTrainer`:
it refuses (or fixes) layers Opacus cannot train privately, wraps the module and
optimizer once, and runs each fit's steps with FedProx's proximal term added to
the privatized gradient (post-processing). On a GPU the client's examples cross
to the device once per fit and each step's noise once per step.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import FitResult, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.models.torch import (
    _CRITERIA,
    Array,
    Loss,
    ModuleFactory,
    OptimizerName,
    TorchTrainer,
)
from fedwarden.models.trainer import ClientContext
from fedwarden.privacy.dp_sgd import accounted_fit, fit_metrics, private_training
from fedwarden.privacy.poisson import PoissonSampling
from fedwarden.privacy.randomness import NoiseSource

__all__ = ["DpSgdTrainer"]

logger = logging.getLogger(__name__)

_BACKWARD_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect"
"""PyTorch's warning when the first layer's inputs need no gradient; harmless for Opacus's hooks."""


class DpSgdTrainer(TorchTrainer):
    """A :class:`~fedwarden.models.torch.TorchTrainer` that trains each client with DP-SGD.

    Abadi et al. 2016 with Opacus (:mod:`fedwarden.privacy.dp_sgd` gives the steps).
    ``noise_multiplier`` (``z``) and ``max_grad_norm`` (``C``) set the noise
    standard deviation ``z C`` on each step's sum of clipped per-sample
    gradients; ``delta`` is the δ at which each client's cumulative ε is
    reported. A model with BatchNorm (or another layer Opacus cannot train
    privately) is refused unless ``fix_batchnorm`` lets Opacus's
    ``ModuleValidator.fix`` replace it (BatchNorm becomes GroupNorm). ``noise``
    is where the Gaussian noise comes from: ``None`` (the default) is
    ``NoiseSource.secure()``; a test-mode source makes fits reproducible.
    The other options are :class:`TorchTrainer`'s.
    """

    def __init__(
        self,
        module_factory: ModuleFactory,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        fix_batchnorm: bool = False,
        noise: NoiseSource | None = None,
        loss: Loss = "cross_entropy",
        optimizer: OptimizerName = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        personal_layers: tuple[str, ...] = (),
        keep_optimizer_state: bool = False,
        device: str = "cpu",
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
            raise ConfigError(
                f"noise_multiplier={noise_multiplier} must be a finite number >= 0 (0 adds no "
                "noise and spends infinite epsilon)"
            )
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0.0):
            raise ConfigError(
                f"max_grad_norm={max_grad_norm} must be a finite number > 0: it is the L2 norm "
                "every per-sample gradient is clipped to"
            )
        if not 0.0 < delta < 1.0:
            raise ConfigError(
                f"delta={delta} is outside (0, 1); use less than 1 / (examples per client), "
                "e.g. 1e-5"
            )
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.fix_batchnorm = fix_batchnorm
        self.noise = noise
        self.reproducible_noise = noise is not None and noise.reproducible
        super().__init__(
            module_factory,
            loss=loss,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            personal_layers=personal_layers,
            keep_optimizer_state=keep_optimizer_state,
            device=device,
        )

    def __getstate__(self) -> dict[str, Any]:
        """The configuration; a test-mode source stays behind (each fit keys its own)."""
        return {
            **super().__getstate__(),
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "fix_batchnorm": self.fix_batchnorm,
            "noise": None if self.reproducible_noise else self.noise,
            "reproducible_noise": self.reproducible_noise,
        }

    def _new_module(self) -> nn.Module:
        """The module, refused if Opacus cannot train it privately, or fixed when allowed."""
        module = super()._new_module()
        if self.fix_batchnorm and not ModuleValidator.is_valid(module):
            replaced = _batch_norm_layers(module)
            module = ModuleValidator.fix(module)
            logger.info(
                "fix_batchnorm=True: Opacus's ModuleValidator.fix replaced %s with GroupNorm",
                ", ".join(replaced) or "no BatchNorm layer (other layers only)",
            )
        errors = ModuleValidator.validate(module, strict=False)
        batch_norms = _batch_norm_layers(module)
        if batch_norms:
            raise ConfigError(
                f"the model has BatchNorm layers ({', '.join(batch_norms)}): they mix the examples "
                "of a batch, so DP-SGD cannot bound one example's influence. Replace them with "
                "GroupNorm (nn.GroupNorm, or LayerNorm / InstanceNorm), or pass "
                "fix_batchnorm=True to let Opacus's ModuleValidator.fix swap them for GroupNorm"
            )
        if errors:
            raise ConfigError(
                "Opacus cannot train this model with DP-SGD: "
                + "; ".join(str(error) for error in errors)
                + ". Pass fix_batchnorm=True to apply Opacus's ModuleValidator.fix, or replace "
                "those layers"
            )
        return module

    def _build(self) -> None:
        """Build the module and optimizer, then wrap them with Opacus once for every fit."""
        super()._build()
        self._grad_sample_module, self._dp_optimizer = private_training(
            self._module,
            self._optimizer,
            noise_source=NoiseSource.secure(),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
        )
        self._made_optimizer = self._dp_optimizer

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """Train from ``vector`` with DP-SGD; report the client's cumulative ε and steps."""
        sampling = PoissonSampling(len(client.data.y_train), train.batch_size)
        optimizer = self._dp_optimizer
        optimizer.noise_source = NoiseSource.secure_or_testing(
            self.reproducible_noise, client.test_noise_key
        )
        with accounted_fit(optimizer, client.state, sampling) as accountant:
            result = super().fit(vector, client, train)
        return FitResult(result.update, result.num_examples, fit_metrics(accountant, self.delta))

    def _train(
        self,
        x: Array,
        y: Array,
        rng: np.random.Generator,
        train: TrainConfig,
        corrections: list[torch.Tensor] | None = None,
    ) -> float:
        """``train.local_epochs`` epochs of Poisson-sampled DP-SGD steps.

        Each step is Opacus's ``DPOptimizer.step`` (clip, noise, scale, count
        the step in the accountant), with FedProx's proximal gradient added to
        the privatized gradient before the wrapped optimizer moves. The
        training loss is not computed: it is a statistic of the private data
        without noise, so reporting it would spend privacy the accountant does
        not count (NaN stands for it, and :meth:`fit` does not report it).
        """
        if corrections is not None:
            raise ConfigError(
                "DP-SGD clients take a random number of Poisson-sampled steps, which SCAFFOLD's "
                "control-variate update needs to know; use strategy fedavg or fedprox with DP-SGD"
            )
        module, optimizer = self._grad_sample_module, self._dp_optimizer
        criterion = _CRITERIA[self.loss]
        sampling = PoissonSampling(len(y), train.batch_size)
        inputs, targets = self._on_device(x), self._on_device(y)
        mu = train.proximal_mu
        if mu:
            self._anchor()
        module.train()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _BACKWARD_HOOK_WARNING, UserWarning)
            for _ in range(sampling.steps(train.local_epochs)):
                batch = self._on_device(sampling.batch(optimizer.noise_source))
                optimizer.zero_grad(set_to_none=True)
                criterion(module(inputs[batch]), targets[batch], "mean").backward()
                if optimizer.pre_step():
                    if mu:
                        self._add_proximal_gradient(mu)
                    optimizer.original_optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return math.nan


def _batch_norm_layers(module: nn.Module) -> list[str]:
    """Names of ``module``'s BatchNorm layers."""
    return [
        name or type(layer).__name__
        for name, layer in module.named_modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm)
    ]
