"""PyTorch modules as fedwarden trainers: one module object trains many clients in turn.

The flat vector (DESIGN idea 1) covers the module's floating-point
``state_dict`` entries in ``state_dict`` order: parameters and float buffers
such as BatchNorm running statistics. Integer buffers (``num_batches_tracked``)
are not part of the model that travels; they are reset to their initial value
whenever a vector is loaded, so they cannot carry one client's history into the
next.

Loading a vector copies it into the module's own tensors through zero-copy
NumPy views, and the trained tensors are flattened straight into the update, so
a fit allocates nothing of model size besides the update it returns. Training is
minibatch gradient descent over tensors indexed from the client's arrays (no
``DataLoader``), in the order :func:`~fedwarden.models.batching.epoch_order`
draws from ``client.rng``. PyTorch's CPU generator (dropout, random
augmentations) is seeded from the same ``rng`` first (the CPU generator alone:
``torch.manual_seed`` would also queue a CUDA seeding that costs more than a
whole step of a small model), so a fit is reproducible bit for bit with one
PyTorch thread.

``device`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``) is resolved by
:func:`resolve_device` in each process the trainer is built in. On a CUDA
device the flat vector crosses to the device once per fit and the trained
tensors come back once, as one flat tensor; batches are copied there as they
are drawn.

Options follow the papers they come from:

- ``proximal_mu > 0`` adds FedProx's proximal gradient ``mu (w - w_global)``
  (Li et al. 2020, eq. 2) to every parameter's gradient before each step.
- ``personal_layers`` keeps those layers on the client, as in FedPer
  (Arivazhagan et al. 2019): their values live in ``client.state`` under
  ``"personal/<tensor name>"`` and their entries of every update are zero.
- ``keep_optimizer_state`` keeps the optimizer's per-parameter state (momentum
  buffers, Adam moments and step) in ``client.state`` under
  ``"optimizer/<parameter index>/<state name>"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedwarden.core.config import DEVICE_SETTING
from fedwarden.core.errors import ConfigError, SpecMismatchError
from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import VECTOR_DTYPE, ParamSpec, Vector
from fedwarden.models.batching import shuffled_batches
from fedwarden.models.trainer import ClientContext, ClientState

Loss = Literal["cross_entropy", "mse"]
OptimizerName = Literal["sgd", "adam"]
ModuleFactory = Callable[[], nn.Module]
"""A picklable (module-level, or ``functools.partial`` of one) callable that builds the module."""

Array = npt.NDArray[np.generic]
FloatArray = npt.NDArray[np.floating[Any]]

__all__ = ["TorchTrainer", "mlp", "resolve_device", "shaped"]

logger = logging.getLogger(__name__)

PERSONAL_PREFIX = "personal/"
OPTIMIZER_PREFIX = "optimizer/"
EVALUATION_CHUNK = 8192
"""Rows evaluated per forward pass, which bounds evaluation memory on large test sets."""

_CONFIG = (
    "module_factory",
    "loss",
    "optimizer",
    "momentum",
    "weight_decay",
    "personal_layers",
    "keep_optimizer_state",
    "device",
)


def resolve_device(setting: str) -> torch.device:
    """The torch device a ``train.device`` setting names on this machine.

    ``"auto"`` is the current CUDA device when ``torch.cuda.is_available()``,
    else the CPU (said in one log line). ``"cuda"`` or ``"cuda:N"`` on a
    machine without CUDA, or with fewer devices, is a :class:`ConfigError`.
    """
    if DEVICE_SETTING.fullmatch(setting) is None:
        raise ConfigError(
            f"train.device={setting!r} is not one of 'auto', 'cpu', 'cuda' or 'cuda:N' "
            "(N the device index, e.g. 'cuda:0')"
        )
    if setting == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if setting == "auto":
        if available:
            return torch.device("cuda")
        logger.info("train.device='auto': no CUDA device on this machine, training on the CPU")
        return torch.device("cpu")
    if not available:
        raise ConfigError(
            f"train.device={setting!r} but PyTorch sees no CUDA device on this machine "
            "(torch.cuda.is_available() is False); set train.device to 'auto' or 'cpu', or "
            "install a CUDA build of PyTorch where a GPU and its driver are present"
        )
    device = torch.device(setting)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"train.device={setting!r} names CUDA device {device.index}, but this machine has "
            f"{count} (indices 0 to {count - 1})"
        )
    return device


def mlp(num_features: int, num_classes: int, hidden: tuple[int, ...] = (64,)) -> nn.Sequential:
    """A multilayer perceptron: ``Linear`` and ``ReLU`` per hidden width, then a ``Linear`` head.

    Module level, so ``functools.partial(mlp, 64, 10)`` is a picklable module factory.
    """
    layers: list[nn.Module] = []
    width = num_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def shaped(module_factory: ModuleFactory, example_shape: tuple[int, ...]) -> nn.Module:
    """``module_factory()``'s module, handed its input rows back in ``example_shape``.

    A forward pre-hook reshapes each batch of rows to ``(batch, *example_shape)``
    before the module sees it, so a module written for images of shape
    ``(1, 8, 8)`` trains on the rows every trainer hands it; its parameter names
    stay its own. Module level, so ``functools.partial(shaped, factory, shape)``
    is a picklable module factory when ``factory`` is.
    """
    module = module_factory()
    module.register_forward_pre_hook(partial(_reshape_rows, example_shape))
    return module


def _reshape_rows(
    example_shape: tuple[int, ...], module: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    rows, *rest = inputs
    return (rows.reshape(len(rows), *example_shape), *rest)


class TorchTrainer:
    """A :class:`~fedwarden.models.trainer.Trainer` for a PyTorch module, on the CPU or a GPU.

    ``module_factory`` builds the module; the trainer builds it once (and again
    in each process it is unpickled in) and reuses it, and its optimizer, for
    every client. ``loss`` is ``"cross_entropy"`` (class scores against integer
    labels; evaluation adds accuracy) or ``"mse"`` (outputs against float
    targets). The learning rate comes from each round's
    :class:`~fedwarden.core.messages.TrainConfig`. ``device`` is where it
    trains (:func:`resolve_device`).
    """

    def __init__(
        self,
        module_factory: ModuleFactory,
        *,
        loss: Loss = "cross_entropy",
        optimizer: OptimizerName = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        personal_layers: tuple[str, ...] = (),
        keep_optimizer_state: bool = False,
        device: str = "cpu",
    ) -> None:
        _check_choice("loss", loss, Loss)
        _check_choice("optimizer", optimizer, OptimizerName)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum={momentum} is outside [0, 1)")
        if momentum and optimizer != "sgd":
            raise ConfigError(
                f"momentum={momentum} applies to optimizer='sgd' only; Adam keeps its own "
                "moment estimates (leave momentum at 0)"
            )
        if weight_decay < 0.0:
            raise ConfigError(f"weight_decay={weight_decay} is negative; use 0 or more")
        self.module_factory = module_factory
        self.loss = loss
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.personal_layers = tuple(personal_layers)
        self.keep_optimizer_state = keep_optimizer_state
        self.device = device
        self._build()

    def __getstate__(self) -> dict[str, Any]:
        """Only the configuration travels to worker processes; the module is rebuilt there."""
        return {name: getattr(self, name) for name in _CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    def _build(self) -> None:
        """Build the module, the views of its tensors and the spec (the optimizer: at a fit)."""
        module = self._new_module()
        self._spec = ParamSpec.from_arrays(_floating_state(module))
        self._device = resolve_device(self.device)
        module = module.to(self._device)
        self._module = module
        self._tensors = _floating_tensors(module)
        """The module's floating tensors, in vector order."""
        self._arrays = [_to_numpy(t) for t in self._tensors] if self._device.type == "cpu" else []
        """Zero-copy NumPy views of those tensors on the CPU (none on another device)."""
        self._integer_buffers = [
            (tensor, tensor.clone())
            for tensor in module.state_dict().values()
            if not tensor.is_floating_point()
        ]
        self._personal = self._personal_tensors()
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._anchors: list[torch.Tensor] = []
        self._made_optimizer: torch.optim.Optimizer | None = None

    def _personal_tensors(self) -> list[tuple[str, torch.Tensor, slice]]:
        """Name, tensor and vector slice of every tensor under a personal layer."""
        personal = [
            (t.name, tensor, slice(t.offset, t.offset + t.size))
            for t, tensor in zip(self._spec.tensors, self._tensors, strict=True)
            if any(_under(t.name, layer) for layer in self.personal_layers)
        ]
        unmatched = [
            layer
            for layer in self.personal_layers
            if not any(_under(name, layer) for name, _, _ in personal)
        ]
        if unmatched:
            raise ConfigError(
                f"personal_layers {unmatched} match no tensor of the model; its tensors are "
                f"{', '.join(self._spec.names)}"
            )
        return personal

    @property
    def _optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the trainable parameters, made when first used.

        A process that only reads the spec and the initial vector (the server) makes
        none: PyTorch's first optimizer imports ``torch._dynamo``, about 2 s of start-up.
        """
        if self._made_optimizer is None:
            self._made_optimizer = self._make_optimizer()
        return self._made_optimizer

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the trainable parameters; its learning rate is set each fit."""
        if self.optimizer == "adam":
            return torch.optim.Adam(self._params, weight_decay=self.weight_decay)
        return torch.optim.SGD(self._params, momentum=self.momentum, weight_decay=self.weight_decay)

    @property
    def spec(self) -> ParamSpec:
        """Layout of the module's floating tensors in the flat vector."""
        return self._spec

    @property
    def module(self) -> nn.Module:
        """The module the trainer trains with; it holds the last vector loaded or trained."""
        return self._module

    def initial_vector(self, seed: int) -> Vector:
        """A freshly built module's tensors, flattened; deterministic in ``seed``.

        PyTorch's CPU generator is restored afterwards.
        """
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.vector_of(self._new_module())

    def _new_module(self) -> nn.Module:
        """A fresh module from ``module_factory``: the one place subclasses adapt the model."""
        module = self.module_factory()
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"module_factory returned {type(module).__name__}, not a torch.nn.Module"
            )
        return module

    def vector_of(self, module: nn.Module) -> Vector:
        """The flat vector of ``module``'s floating tensors (same architecture as the trainer's)."""
        return self._spec.flatten(_floating_state(module))

    def load(self, vector: Vector) -> nn.Module:
        """Copy ``vector`` into the trainer's module in place and return the module.

        On the CPU through the NumPy views; on another device the vector
        crosses once, as one tensor, and is copied into the tensors there.
        """
        if self._device.type == "cpu":
            for array, view in zip(self._arrays, self._spec.views(vector).values(), strict=True):
                np.copyto(array, view)
        else:
            flat = _tensor(vector, np.float32).to(self._device)
            with torch.no_grad():
                for t, tensor in zip(self._spec.tensors, self._tensors, strict=True):
                    tensor.copy_(flat[t.offset : t.offset + t.size].view_as(tensor))
        for tensor, initial in self._integer_buffers:
            tensor.copy_(initial)
        return self._module

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """Train from ``vector`` on the client's training split; return ``new - vector``."""
        x = np.asarray(client.data.x_train, dtype=np.float32)
        y = np.asarray(client.data.y_train, dtype=self._target_dtype)
        self.load(vector)
        self._restore_personal(client.state)
        self._optimizer.state.clear()
        if self.keep_optimizer_state:
            self._restore_optimizer(client.state)
        for group in self._optimizer.param_groups:
            group["lr"] = train.learning_rate
        # PyTorch's own randomness (dropout) is seeded from a child of the client's
        # generator, leaving its stream, and so the batch order, as the NumPy trainer sees it.
        torch.default_generator.manual_seed(int(client.rng.spawn(1)[0].integers(2**63)))
        corrections = (
            None
            if client.gradient_correction is None
            else self._per_parameter(client.gradient_correction)
        )
        train_loss = self._train(x, y, client.rng, train, corrections)
        update = self._trained_vector()
        update -= vector
        for name, tensor, entries in self._personal:
            client.state[PERSONAL_PREFIX + name] = _to_numpy(tensor).copy()
            update[entries] = 0.0
        if self.keep_optimizer_state:
            self._save_optimizer(client.state)
        return FitResult(update, len(y), {"train_loss": train_loss})

    def _trained_vector(self) -> Vector:
        """The module's tensors as a new flat vector: one copy back from a non-CPU device."""
        if self._device.type == "cpu":
            return self._spec.flatten(self._arrays, out=np.empty(self._spec.size, VECTOR_DTYPE))
        with torch.no_grad():
            flat = torch.cat([tensor.reshape(-1).to(torch.float32) for tensor in self._tensors])
        vector: Vector = flat.cpu().numpy()
        return vector

    def _on_device(self, array: Array) -> torch.Tensor:
        """``array`` (C-contiguous) as a tensor on the training device; shared memory on the CPU."""
        return torch.from_numpy(array).to(self._device)

    def _train(
        self,
        x: Array,
        y: Array,
        rng: np.random.Generator,
        train: TrainConfig,
        corrections: list[torch.Tensor] | None = None,
    ) -> float:
        """``train.local_epochs`` epochs of minibatch steps; the mean loss of the last epoch.

        Each epoch gathers the examples once in :func:`epoch_order`, so a
        batch is a contiguous slice shared with PyTorch rather than a gather.
        Gradients are dropped by setting them to ``None``, which is what
        ``optimizer.zero_grad(set_to_none=True)`` does, minus its per-call overhead.
        """
        module, params, optimizer = self._module, self._params, self._optimizer
        criterion = _CRITERIA[self.loss]
        mu = train.proximal_mu
        if mu:
            self._anchor()
        module.train()
        total = 0.0
        for epoch in range(train.local_epochs):
            last_epoch = epoch == train.local_epochs - 1
            for x_batch, y_batch in shuffled_batches(x, y, train.batch_size, rng):
                for param in params:
                    param.grad = None
                loss = criterion(module(self._on_device(x_batch)), self._on_device(y_batch), "mean")
                loss.backward()
                if mu:
                    self._add_proximal_gradient(mu)
                if corrections is not None:
                    for param, correction in zip(params, corrections, strict=True):
                        if param.grad is not None:
                            param.grad.add_(correction)
                optimizer.step()
                if last_epoch:
                    total += loss.item() * len(y_batch)
        return total / len(y) if len(y) and train.local_epochs else 0.0

    def _per_parameter(self, vector: Vector) -> list[torch.Tensor]:
        """``vector``'s entries for each trainable parameter, as tensors in parameter order."""
        views = self._spec.views(vector)
        names = [name for name, p in self._module.named_parameters() if p.requires_grad]
        return [self._on_device(np.ascontiguousarray(views[name])) for name in names]

    def _anchor(self) -> None:
        """Remember the parameters at the start of local training (FedProx's ``w_global``)."""
        if not self._anchors:
            self._anchors = [p.detach().clone() for p in self._params]
        with torch.no_grad():
            for anchor, param in zip(self._anchors, self._params, strict=True):
                anchor.copy_(param)

    def _add_proximal_gradient(self, mu: float) -> None:
        """FedProx (Li et al. 2020, eq. 2): the gradient of ``mu/2 ||w - w_global||^2``."""
        with torch.no_grad():
            for param, anchor in zip(self._params, self._anchors, strict=True):
                if param.grad is not None:
                    param.grad.add_(param - anchor, alpha=mu)

    def _restore_personal(self, state: ClientState) -> None:
        """Load the client's own values of the personal layers, if it trained before."""
        for name, tensor, _ in self._personal:
            stored = state.get(PERSONAL_PREFIX + name)
            if stored is not None:
                _check_stored_shape(PERSONAL_PREFIX + name, stored, tuple(tensor.shape))
                with torch.no_grad():
                    tensor.copy_(torch.from_numpy(np.asarray(stored)).to(tensor))

    def _restore_optimizer(self, state: ClientState) -> None:
        """Load the optimizer state the client kept from its previous fit."""
        for key, stored in state.items():
            if not key.startswith(OPTIMIZER_PREFIX):
                continue
            index, _, name = key.removeprefix(OPTIMIZER_PREFIX).partition("/")
            if not index.isdigit() or int(index) >= len(self._params):
                raise SpecMismatchError(
                    f"client state {key!r} names parameter {index}, the model has "
                    f"{len(self._params)} trainable parameters; was it saved by another model?"
                )
            param = self._params[int(index)]
            if stored.ndim:
                _check_stored_shape(key, stored, tuple(param.shape))
            value = torch.from_numpy(np.array(stored, copy=True))
            # A scalar (Adam's step count) stays on the CPU, where PyTorch's optimizers keep it.
            self._optimizer.state[param][name] = value.to(self._device) if stored.ndim else value

    def _save_optimizer(self, state: ClientState) -> None:
        """Keep the optimizer's per-parameter tensors in the client's state."""
        for index, param in enumerate(self._params):
            for name, value in self._optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    state[f"{OPTIMIZER_PREFIX}{index}/{name}"] = _to_numpy(value).copy()

    def evaluate(self, vector: Vector, x: Array, y: Array) -> Metrics:
        """Mean loss, and accuracy for ``cross_entropy``, of ``vector`` on ``(x, y)``."""
        module = self.load(vector)
        module.eval()
        inputs, targets = _tensor(x, np.float32), _tensor(y, self._target_dtype)
        criterion = _CRITERIA[self.loss]
        total, correct = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(targets), EVALUATION_CHUNK):
                chunk = slice(start, start + EVALUATION_CHUNK)
                outputs = module(inputs[chunk].to(self._device))
                target = targets[chunk].to(self._device)
                total += criterion(outputs, target, "sum").item()
                if self.loss == "cross_entropy":
                    correct += int((outputs.argmax(dim=1) == target).sum())
        if not len(targets):
            return {name: float("nan") for name in _METRICS[self.loss]}
        if self.loss == "mse":
            return {"loss": total / targets.numel()}
        return {"loss": total / len(targets), "accuracy": correct / len(targets)}

    @property
    def _target_dtype(self) -> type[np.generic]:
        """Labels are int64 for cross-entropy, targets float32 for mse."""
        return np.int64 if self.loss == "cross_entropy" else np.float32


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets, reduction=reduction)


def _mse(outputs: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    """Squared error; an output of shape ``(n, 1)`` is compared with targets of shape ``(n,)``."""
    if outputs.shape != targets.shape:
        outputs = outputs.reshape(targets.shape)
    return nn.functional.mse_loss(outputs, targets, reduction=reduction)


_METRICS = {"cross_entropy": ("loss", "accuracy"), "mse": ("loss",)}

_CRITERIA: dict[str, Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]] = {
    "cross_entropy": _cross_entropy,
    "mse": _mse,
}


def _floating_state(module: nn.Module) -> dict[str, FloatArray]:
    """Zero-copy NumPy views of ``module``'s floating ``state_dict`` tensors, in order."""
    views: dict[str, FloatArray] = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if tensor.device.type != "cpu":
            raise ConfigError(
                f"tensor {name!r} is on {tensor.device}; build the module on the CPU and set "
                "train.device (TorchTrainer's device) to train it on a GPU"
            )
        views[name] = tensor.numpy()
    return views


def _floating_tensors(module: nn.Module) -> list[torch.Tensor]:
    """``module``'s floating ``state_dict`` tensors, in vector order, on whatever device."""
    return [tensor for tensor in module.state_dict().values() if tensor.is_floating_point()]


def _to_numpy(tensor: torch.Tensor) -> FloatArray:
    """``tensor`` as a NumPy array: a view on the CPU, a copy from another device."""
    array: FloatArray = tensor.detach().cpu().numpy()
    return array


def _tensor(array: Array, dtype: type[np.generic]) -> torch.Tensor:
    """``array`` as a tensor of ``dtype``, sharing its memory unless a cast or read-only input."""
    converted = np.asarray(array, dtype=dtype)
    if not converted.flags.writeable:
        converted = converted.copy()
    return torch.from_numpy(converted)


def _under(name: str, layer: str) -> bool:
    """Whether state_dict key ``name`` belongs to ``layer`` (the key itself or a dotted prefix)."""
    return name == layer or name.startswith(layer + ".")


def _check_stored_shape(key: str, stored: Array, shape: tuple[int, ...]) -> None:
    if tuple(stored.shape) != tuple(shape):
        raise SpecMismatchError(
            f"client state {key!r} has shape {tuple(stored.shape)}, the model needs "
            f"{tuple(shape)}; the model changed since the client saved it"
        )


def _check_choice(field: str, value: str, allowed: Any) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(repr, choices))}")
