"""L2 clipping of vectors and the clip norm in force: what bounds each client's contribution.

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
Models", Algorithm 1, ``ClipFn``): an update is scaled to L2 norm at most
``C``, either as one flat vector or per layer (each of L tensors to
``C / sqrt(L)``, so the whole stays within ``C``). The clip stage
(:class:`fedwarden.pipeline.clip.ClipUpdate`), local DP and the secure encodings all clip
with these functions.

Andrew et al. 2021 ("Differentially Private Learning with Adaptive Clipping",
Algorithm 1) move ``C`` between rounds towards a quantile of the update norms
(:class:`AdaptiveClipping`, applied by :class:`fedwarden.pipeline.dp_mean.GaussianMean`);
:class:`ClipNorm` is the value in force, shared by the clip stage, the DP aggregator and the
privacy accounting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedwarden.core.params import ParamSpec, Vector

CLIP_MARGIN = 1e-6
"""Relative margin by which the scale factor undershoots ``C / norm``: float32
rounding then cannot leave a clipped vector's norm above ``C``."""


def clip_to_norm(vector: Vector, clip_norm: float) -> tuple[Vector, float]:
    """``vector`` scaled to L2 norm at most ``clip_norm`` (a new array) and its original norm."""
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm <= clip_norm:
        return vector.copy(), norm
    factor = np.float32(clip_norm / norm * (1.0 - CLIP_MARGIN))
    return vector * factor, norm


def clip_per_layer(vector: Vector, clip_norm: float, spec: ParamSpec) -> tuple[Vector, float]:
    """Each tensor of ``vector`` clipped to ``clip_norm / sqrt(tensors)``; returns the flat norm."""
    layer_bound = clip_norm / math.sqrt(len(spec.tensors))
    clipped = vector.copy()
    for tensor in spec.views(clipped).values():
        flat = tensor.reshape(-1)
        flat[:] = clip_to_norm(flat, layer_bound)[0]
    return clipped, float(np.linalg.norm(vector.astype(np.float64)))


@dataclass
class ClipNorm:
    """The clip norm in force this round, shared by the clip stage and the DP aggregator.

    Adaptive clipping moves it between rounds; clients receive it with their
    instructions (``round_parameters["clip_norm"]``).
    """

    value: float


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al. 2021's quantile tracking: target, step size, and the count's noise."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_multiplier: float = 10.0
