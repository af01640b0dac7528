"""Split architectures: per-party bottom models, the label party's top model, and their union.

A :class:`SplitArchitecture` is the model of vertical learning written down
once: one bottom model per party, each reading only that party's columns, and
a top model reading the bottoms' outputs concatenated (the cut layer). The
same modules train split across parties (:class:`~fedwarden.vertical.split.SplitLearning`)
or in one place (:class:`StackedModel`, the centralized baseline), so the
two differ only in where the computation runs.

Two ready-made architectures:

* :func:`split_mlp`: the split neural network of Gupta & Raskar (2018),
  "Distributed learning of deep neural network over multiple agents", and
  Vepakomma et al. (2018), "Split learning for health": each bottom a small
  ReLU network, the top a ReLU network over the concatenated cut layer.
* :func:`split_logistic`: vertical logistic regression (Hardy et al. 2017,
  "Private federated learning on vertically partitioned data", without the
  encryption): each party's bottom a linear map of its columns to per-class
  partial logits; the top (:class:`SumOfLogits`) adds them and a bias, so the
  whole is a multinomial logistic regression on all columns, and each party
  gets back the gradient of the loss with respect to its own partial logits.

An :class:`ArchitectureSpec` names one of the two with its public sizes and
seed, so parties in other processes build exactly the same initial modules
(:mod:`fedwarden.vertical.remote` sends it to each feature party).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from fedwarden.core.errors import ConfigError


@dataclass(frozen=True)
class SplitArchitecture:
    """One bottom model per party (in party order) and the label party's top model."""

    bottoms: tuple[nn.Module, ...]
    top: nn.Module

    def stacked(self) -> StackedModel:
        """The same modules as one centralized network."""
        return StackedModel(self.bottoms, self.top)


class StackedModel(nn.Module):
    """The split architecture in one place: bottoms on their column blocks, then the top."""

    def __init__(self, bottoms: Sequence[nn.Module], top: nn.Module) -> None:
        super().__init__()
        self.bottoms = nn.ModuleList(bottoms)
        self.top = top

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits for the examples whose column blocks (one per party, in order) are ``blocks``."""
        cut = torch.cat(
            [bottom(block) for bottom, block in zip(self.bottoms, blocks, strict=True)], 1
        )
        logits: torch.Tensor = self.top(cut)
        return logits


class SumOfLogits(nn.Module):
    """The top of vertical logistic regression: the parties' partial logits summed, plus a bias."""

    def __init__(self, parties: int, classes: int) -> None:
        super().__init__()
        self.parties = parties
        self.classes = classes
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        """``cut`` is ``(batch, parties * classes)``: each party's partial logits side by side."""
        partial = cut.reshape(cut.shape[0], self.parties, self.classes)
        return partial.sum(dim=1) + self.bias


def split_mlp(
    column_counts: Sequence[int],
    classes: int,
    *,
    cut_width: int = 4,
    hidden_width: int = 16,
    seed: int = 0,
) -> SplitArchitecture:
    """A split neural network: a ReLU bottom per party to ``cut_width`` units, a ReLU top.

    Built from ``torch.manual_seed(seed)``: the same seed gives the same
    initial weights, for the split run and its centralized baseline alike.
    """
    _check_sizes(column_counts, classes)
    for name, value in (("cut_width", cut_width), ("hidden_width", hidden_width)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"split_mlp {name} must be a whole number >= 1, got {value!r}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        bottoms = tuple(
            nn.Sequential(
                nn.Linear(columns, hidden_width), nn.ReLU(), nn.Linear(hidden_width, cut_width)
            )
            for columns in column_counts
        )
        top = nn.Sequential(
            nn.ReLU(),
            nn.Linear(cut_width * len(column_counts), hidden_width),
            nn.ReLU(),
            nn.Linear(hidden_width, classes),
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return SplitArchitecture(bottoms, top)


def split_logistic(
    column_counts: Sequence[int], classes: int, *, seed: int = 0
) -> SplitArchitecture:
    """Vertical multinomial logistic regression: linear bottoms, a :class:`SumOfLogits` top."""
    _check_sizes(column_counts, classes)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        bottoms = tuple(nn.Linear(columns, classes, bias=False) for columns in column_counts)
    finally:
        torch.random.set_rng_state(generator_state)
    return SplitArchitecture(bottoms, SumOfLogits(len(column_counts), classes))


ArchitectureKind = Literal["mlp", "logistic"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """A ready-made split architecture by name, sizes and seed: every party builds the same one.

    ``kind`` ``"mlp"`` is :func:`split_mlp` (``cut_width``, ``hidden_width``);
    ``"logistic"`` is :func:`split_logistic`. Building it twice gives the same
    initial weights, so a party in another process can build its own bottom.
    """

    kind: ArchitectureKind
    column_counts: tuple[int, ...]
    classes: int
    cut_width: int = 4
    hidden_width: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in get_args(ArchitectureKind):
            raise ConfigError(
                f"architecture kind must be one of {list(get_args(ArchitectureKind))}, got "
                f"{self.kind!r}"
            )
        _check_sizes(self.column_counts, self.classes)

    @property
    def cut_columns(self) -> int:
        """How many cut-layer columns each bottom outputs."""
        return self.cut_width if self.kind == "mlp" else self.classes

    def build(self) -> SplitArchitecture:
        """The architecture's modules, initialised from ``seed``."""
        if self.kind == "mlp":
            return split_mlp(
                self.column_counts,
                self.classes,
                cut_width=self.cut_width,
                hidden_width=self.hidden_width,
                seed=self.seed,
            )
        return split_logistic(self.column_counts, self.classes, seed=self.seed)


def _check_sizes(column_counts: Sequence[int], classes: int) -> None:
    """Refuse an architecture without parties, with an empty party, or with fewer than 2 classes."""
    if not column_counts or not all(isinstance(c, int) and c >= 1 for c in column_counts):
        raise ConfigError(
            f"column_counts must list each party's number of columns (each >= 1), got "
            f"{list(column_counts)!r}"
        )
    if not (isinstance(classes, int) and classes >= 2):
        raise ConfigError(f"classes must be a whole number >= 2, got {classes!r}")
