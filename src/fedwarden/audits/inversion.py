"""Gradient inversion: rebuilding a client's training image from the update it sends.

The attacker is an honest-but-curious server in FedSGD: a client computes the
gradient of the loss on its batch at the global model and sends it (one step
of local SGD sends ``-learning_rate`` times it, which the server rescales). The
server knows the model and optimizes a dummy input until the dummy's gradient
matches the observed one:

- DLG, "Deep Leakage from Gradients" (Zhu, Liu & Han 2019, Algorithm 1): the
  dummy image and a dummy soft label are optimized together with L-BFGS to
  minimize ``||grad(dummy) - grad(observed)||^2``;
- iDLG, "Improved Deep Leakage from Gradients" (Zhao, Mopuri & Bilen 2020,
  section 3): for cross-entropy on one example, the last layer's weight
  gradient is ``(softmax - onehot) h^T``; with non-negative activations ``h``
  only the true label's row is negative, so the label is read off the gradient
  first and only the image is optimized.

The attack is run against three things a server may see (see
:func:`invert`): one client's plain update (batch of one), the sum of several
clients' updates (all secure aggregation reveals), and a DP update (clipped to
``clip_norm`` and given Gaussian noise of standard deviation
``noise_multiplier * clip_norm``, DP-SGD's step for a batch of one, Abadi et
al. 2016). A reconstruction is scored by its mean squared error and PSNR
against the true image, beside a baseline: a uniformly random image.
Against a sum, the attacker gets the benefit of the doubt: the reconstruction
is scored against whichever of the clients' images it is closest to, and so is
the baseline.

The model is small and smooth (:func:`inversion_model`: sigmoid activations,
which DLG needs for second derivatives and iDLG for non-negative ``h``), on
8x8 digits scaled to [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedwarden.core.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Gradients = list[torch.Tensor]
Scenario = Literal["plain", "secure_sum", "dp"]
FloatArray = npt.NDArray[np.float64]

PIXEL_RANGE = 1.0
"""Pixels lie in [0, PIXEL_RANGE]: the peak signal of PSNR and the range of the noise baseline."""

NOISE_BASELINE_DRAWS = 256
"""Random images averaged into the noise baseline's MSE."""

__all__ = [
    "InversionResult",
    "Reconstruction",
    "client_gradient",
    "dp_gradient",
    "infer_label",
    "inversion_model",
    "invert",
    "noise_baseline_mse",
    "psnr",
    "reconstruct",
    "secure_sum",
]


def inversion_model(num_features: int = 64, num_classes: int = 10, hidden: int = 32) -> nn.Module:
    """The attacked model: ``Linear``, ``Sigmoid``, ``Linear`` (smooth, non-negative hidden)."""
    return nn.Sequential(
        nn.Linear(num_features, hidden), nn.Sigmoid(), nn.Linear(hidden, num_classes)
    )


@dataclass(frozen=True)
class Reconstruction:
    """What the attacker rebuilt: the image and the label it used (inferred or optimized)."""

    image: FloatArray
    label: int
    gradient_distance: float
    """The final ``||grad(dummy) - grad(observed)||^2`` the optimization reached."""


@dataclass(frozen=True)
class InversionResult:
    """How close a reconstruction came, beside the random-image baseline.

    ``mse`` and ``psnr`` compare the reconstruction with the true image (for a
    sum: the closest of the clients' images); ``noise_mse`` and ``noise_psnr``
    do the same for uniformly random images. The attack ``succeeded`` when its
    error is below half the baseline's.
    """

    scenario: Scenario
    num_clients: int
    mse: float
    psnr: float
    noise_mse: float
    noise_psnr: float
    label_correct: bool

    @property
    def succeeded(self) -> bool:
        """Whether the reconstruction is clearly closer than noise (MSE below half of it)."""
        return self.mse < 0.5 * self.noise_mse

    def summary(self) -> str:
        """One line for a report."""
        return (
            f"{self.scenario} ({self.num_clients} client(s)): MSE {self.mse:.4f} "
            f"(PSNR {self.psnr:.1f} dB) vs noise {self.noise_mse:.4f} "
            f"({self.noise_psnr:.1f} dB); label {'right' if self.label_correct else 'wrong'}"
        )


def client_gradient(module: nn.Module, x: npt.ArrayLike, y: npt.ArrayLike) -> Gradients:
    """The gradient of the mean cross-entropy of ``module`` on the batch ``(x, y)``."""
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1, _in_features(module))
    targets = torch.as_tensor(np.asarray(y, dtype=np.int64)).reshape(-1)
    loss = nn.functional.cross_entropy(module(inputs), targets)
    return [g.detach() for g in torch.autograd.grad(loss, list(module.parameters()))]


def secure_sum(gradients: Sequence[Gradients]) -> Gradients:
    """The sum of several clients' gradients: all that secure aggregation reveals."""
    if not gradients:
        raise DataError("secure_sum needs at least one client's gradient")
    return [torch.stack(tensors).sum(dim=0) for tensors in zip(*gradients, strict=True)]


def dp_gradient(
    gradient: Gradients, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> Gradients:
    """Clip ``gradient`` to L2 norm ``clip_norm`` and add N(0, (noise_multiplier clip_norm)^2).

    DP-SGD's privatization of one example's gradient (Abadi et al. 2016, Algorithm 1).
    """
    if clip_norm <= 0 or noise_multiplier < 0:
        raise ConfigError(
            f"clip_norm={clip_norm} must be > 0 and noise_multiplier={noise_multiplier} >= 0"
        )
    norm = math.sqrt(sum(float((g**2).sum()) for g in gradient))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    return [
        g * scale + std * torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in gradient
    ]


def infer_label(gradient: Gradients) -> int:
    """iDLG's label: the row of the last layer's weight gradient with the most negative sum.

    Zhao et al. 2020, section 3: ``dL/dW_i = (p_i - [i = y]) h`` with ``h >= 0``,
    so only the true label's row is negative.
    """
    weights = next((g for g in reversed(gradient) if g.ndim == 2), None)
    if weights is None:
        raise DataError("the gradient has no weight matrix to read the label from")
    return int(torch.argmin(weights.sum(dim=1)))


def reconstruct(
    module: nn.Module,
    observed: Gradients,
    *,
    label: int | None = None,
    iterations: int = 300,
    seed: int = 0,
) -> Reconstruction:
    """Optimize a dummy image (and, without ``label``, a soft label) to match ``observed``.

    DLG (Zhu et al. 2019) with L-BFGS; with a ``label`` (e.g. from
    :func:`infer_label`) it is iDLG. The dummy starts uniformly random in
    the pixel range and is clamped to it at the end (the attacker knows the
    range). ``iterations`` bounds the L-BFGS function evaluations.
    """
    generator = torch.Generator().manual_seed(seed)
    num_features = _in_features(module)
    num_classes = _out_features(module)
    dummy = (PIXEL_RANGE * torch.rand((1, num_features), generator=generator)).requires_grad_()
    soft_label = torch.randn((1, num_classes), generator=generator).requires_grad_()
    variables = [dummy] if label is not None else [dummy, soft_label]
    parameters = list(module.parameters())
    optimizer = torch.optim.LBFGS(variables, lr=1.0, max_iter=iterations, history_size=50)

    def distance() -> torch.Tensor:
        outputs = module(dummy)
        if label is None:
            loss = torch.sum(-torch.softmax(soft_label, dim=1) * torch.log_softmax(outputs, dim=1))
        else:
            loss = nn.functional.cross_entropy(outputs, torch.tensor([label]))
        gradient = torch.autograd.grad(loss, parameters, create_graph=True)
        return sum(
            (((g - o) ** 2).sum() for g, o in zip(gradient, observed, strict=True)),
            torch.zeros(()),
        )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = distance()
        value.backward()
        return value

    optimizer.step(closure)
    final = float(distance().detach())
    image = dummy.detach().clamp(0.0, PIXEL_RANGE).numpy().astype(np.float64).reshape(-1)
    used = label if label is not None else int(torch.argmax(soft_label.detach()))
    return Reconstruction(image, used, final)


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of an MSE over pixels in [0, PIXEL_RANGE]."""
    return math.inf if mse == 0 else 10.0 * math.log10(PIXEL_RANGE**2 / mse)


def noise_baseline_mse(images: npt.ArrayLike, rng: np.random.Generator) -> float:
    """The MSE a uniformly random image reaches, against the closest of ``images`` (averaged)."""
    truth = np.asarray(images, dtype=np.float64).reshape(-1, np.shape(images)[-1])
    noise = PIXEL_RANGE * rng.random((NOISE_BASELINE_DRAWS, truth.shape[1]))
    errors = ((noise[:, None, :] - truth[None, :, :]) ** 2).mean(axis=2)
    return float(errors.min(axis=1).mean())


def invert(
    module: nn.Module,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    scenario: Scenario,
    *,
    clip_norm: float = 1.0,
    noise_multiplier: float = 1.0,
    infer: bool = True,
    iterations: int = 300,
    seed: int = 0,
) -> InversionResult:
    """Attack what the server sees in ``scenario`` when each client holds one of ``images``.

    ``plain``: the first client's gradient (one image); ``secure_sum``: the sum
    of every client's gradient; ``dp``: the first client's gradient clipped to
    ``clip_norm`` with noise ``noise_multiplier * clip_norm``. With ``infer``
    the label is read off the gradient (iDLG), else optimized with the image
    (DLG).
    """
    if scenario not in get_args(Scenario):
        raise ConfigError(f"scenario {scenario!r} is not one of {list(get_args(Scenario))}")
    truth = np.asarray(images, dtype=np.float64).reshape(-1, _in_features(module))
    targets = np.asarray(labels, dtype=np.int64).reshape(-1)
    if scenario != "secure_sum":
        truth, targets = truth[:1], targets[:1]
    gradients = [
        client_gradient(module, image, label) for image, label in zip(truth, targets, strict=True)
    ]
    observed = secure_sum(gradients)
    if scenario == "dp":
        generator = torch.Generator().manual_seed(seed + 1)
        observed = dp_gradient(observed, clip_norm, noise_multiplier, generator)
    label = infer_label(observed) if infer else None
    rebuilt = reconstruct(module, observed, label=label, iterations=iterations, seed=seed)
    errors = ((truth - rebuilt.image[None, :]) ** 2).mean(axis=1)
    closest = int(np.argmin(errors))
    mse = float(errors[closest])
    noise = noise_baseline_mse(truth, np.random.default_rng(seed))
    logger.info("inversion of %s: gradient distance %.3g", scenario, rebuilt.gradient_distance)
    return InversionResult(
        scenario,
        len(truth),
        mse,
        psnr(mse),
        noise,
        psnr(noise),
        rebuilt.label == int(targets[closest]),
    )


def _in_features(module: nn.Module) -> int:
    """The input width of the module's first linear layer."""
    first = next(layer for layer in module.modules() if isinstance(layer, nn.Linear))
    return int(first.in_features)


def _out_features(module: nn.Module) -> int:
    """The output width of the module's last linear layer (the number of classes)."""
    last = [layer for layer in module.modules() if isinstance(layer, nn.Linear)][-1]
    return int(last.out_features)
