"""Differentially private split learning: Gaussian releases of cut messages, DP-SGD updates.

A :class:`GaussianRelease` is a party's Gaussian mechanism, used two ways:

* on the **messages** it sends: the ``(batch, cut_width)`` message has each
  example's row scaled to L2 norm at most ``clip_norm`` (:func:`clip_rows`),
  then every coordinate gets independent ``N(0, (noise_multiplier *
  clip_norm)^2)`` noise from a secure
  :class:`~fedwarden.privacy.randomness.NoiseSource`;
* on the **model update** that reads its protected data: DP-SGD (Abadi et al.
  2016, "Deep Learning with Differential Privacy", Algorithm 1). Each
  example's gradient of the party's own model (bottom or top) is computed
  exactly (:func:`per_example_gradients`), clipped to L2 norm ``clip_norm``
  over all the model's parameters, the clipped gradients are summed,
  ``N(0, (noise_multiplier * clip_norm)^2)`` noise is added to every
  coordinate, and the sum is divided by the batch size
  (:func:`noisy_mean_gradient`) before the optimizer's step.

What it protects, against whom, under which relation (the privacy unit is
one example; neighbouring data sets differ by replacing one example's data,
``replace_one``):

* A **feature party's** release: that example's feature values at that party,
  against the label party, the other feature parties and anyone who sees the
  messages. In a training epoch the example is in exactly one batch; its data
  enters (1) its activation row, clipped and noised, and (2) that batch's
  bottom update, where its clipped gradient is one term of a noised sum. Each
  moves by at most ``2 * clip_norm`` when the example is replaced, so an
  epoch is two Gaussian mechanisms per example (parallel composition over
  the disjoint batches, which come from a public seed), adaptively composed
  across epochs. Everything else the party sends later (other rows'
  activations) is computed from the noisy bottom model, i.e. post-processing.
* The **label party's** release: that example's label, together with its
  cut-layer row, against the feature parties. In a training epoch it enters
  (1) the gradient rows sent to each bottom (the label party's own bottom
  too, which is then trained only on noised gradients), clipped and noised,
  one Gaussian mechanism per recipient, and (2) the batch's top-model
  update, a DP-SGD step: one more. The cut gradients sent later are
  computed from the noisy top model.

The model updates are therefore DP-SGD steps with fixed disjoint batches
(no privacy amplification by sampling is claimed). :func:`release_events`
lists the events of one pass; :class:`~fedwarden.vertical.split.SplitLearning`
charges them to the releasing party's own entries of a
:class:`~fedwarden.privacy.ledger.PrivacyLedger` (``charge_client``), which
must use ``privacy_unit="example"`` and ``neighboring="replace_one"``, under
which dp-accounting doubles the sensitivity itself.

Still not protected: which entities take part (the PSI alignment reveals the
shared ids to every party); what a party infers from its own data; the
label party's own feature columns against the feature parties (its own bottom
model trains on them without per-example clipping: its raw features shape the
cut gradients it sends later); and a party without a release, whose messages
and updates are plain. Training with noise costs accuracy; see
``benchmarks/vertical.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.randomness import NoiseSource

ExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""One example's loss from the model's output and its target, each with a batch axis of 1."""


@dataclass(frozen=True)
class GaussianRelease:
    """A party's Gaussian mechanism: rows or per-example gradients clipped to ``clip_norm``."""

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"GaussianRelease.{name} must be a finite number > 0, got {value!r}; "
                    "noise_multiplier is the noise standard deviation over clip_norm"
                )

    def event(self) -> dp_event.DpEvent:
        """The dp-accounting event of one Gaussian mechanism per example (message or update)."""
        return dp_event.GaussianDpEvent(self.noise_multiplier)

    def add_noise(self, clipped: torch.Tensor, noise: NoiseSource) -> npt.NDArray[np.float32]:
        """``clipped`` plus ``N(0, (noise_multiplier * clip_norm)^2)`` noise, as float32."""
        values = clipped.detach().cpu().numpy().astype(np.float64)
        values += noise.gaussian(values.shape, self.noise_multiplier * self.clip_norm)
        return values.astype(np.float32)


def clip_rows(values: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``clip_norm``, differentiably (Abadi et al. 2016)."""
    norms = torch.linalg.vector_norm(values, dim=1, keepdim=True)
    return values * torch.clamp(clip_norm / (norms + 1e-12), max=1.0)


def release_events(
    release: GaussianRelease, training: bool, *, recipients: int = 1
) -> list[dp_event.DpEvent]:
    """The dp-accounting events of one pass by a party releasing under ``release``.

    One Gaussian mechanism per example for each of the ``recipients`` messages
    the party sends (a feature party sends one, to the label party), then in a
    training pass one more for its DP-SGD model update. A predict pass sends
    the message only. A party enforcing its own budget composes these per pass.
    """
    if not (isinstance(recipients, int) and recipients >= 1):
        raise ConfigError(
            f"release_events recipients must be a whole number >= 1, got {recipients!r}: "
            "count the parties the messages go to"
        )
    return [release.event()] * (recipients + (1 if training else 0))


def per_example_gradients(
    module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, example_loss: ExampleLoss
) -> dict[str, torch.Tensor]:
    """Each example's gradient of ``example_loss`` for every parameter, exactly (``torch.func``).

    ``vmap`` of ``grad`` over a ``functional_call`` of ``module`` on one
    example at a time: entry ``name`` has shape ``(batch, *parameter.shape)``,
    row ``i`` the gradient of example ``i``'s loss alone.
    """
    parameters = {name: value.detach() for name, value in module.named_parameters()}

    def loss_of_one(
        values: dict[str, torch.Tensor], example: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        output = functional_call(module, values, (example.unsqueeze(0),))
        return example_loss(output, target.unsqueeze(0))

    gradients: dict[str, torch.Tensor] = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(
        parameters, inputs, targets
    )
    return gradients


def noisy_mean_gradient(
    per_example: Mapping[str, torch.Tensor], release: GaussianRelease, noise: NoiseSource
) -> dict[str, torch.Tensor]:
    """DP-SGD's gradient: clip each example's, sum, add Gaussian noise, divide by the batch size.

    Abadi et al. 2016, Algorithm 1: each example's gradient over all the
    parameters together is scaled to L2 norm at most ``release.clip_norm``
    (:func:`clip_rows`), the sum gets ``N(0, (noise_multiplier *
    clip_norm)^2)`` per coordinate from ``noise`` (:meth:`GaussianRelease.add_noise`),
    and the result is divided by the number of examples.
    """
    names = list(per_example)
    batch = per_example[names[0]].shape[0]
    flat = torch.cat([per_example[name].reshape(batch, -1) for name in names], dim=1)
    summed = clip_rows(flat, release.clip_norm).sum(dim=0, keepdim=True)
    noisy = torch.from_numpy(release.add_noise(summed, noise)).reshape(-1) / batch
    sizes = [per_example[name][0].numel() for name in names]
    return {
        name: part.reshape(per_example[name].shape[1:])
        for name, part in zip(names, torch.split(noisy, sizes), strict=True)
    }


def set_gradients(module: nn.Module, gradients: Mapping[str, torch.Tensor]) -> None:
    """Make ``gradients`` (by parameter name) the ``.grad`` of ``module``'s parameters."""
    for name, parameter in module.named_parameters():
        parameter.grad = gradients[name].to(parameter.dtype)
