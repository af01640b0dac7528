"""ParamSpec: the map between a model's named tensors and one flat float32 vector.

DESIGN idea 1: parameters travel, aggregate, clip, noise and mask as one
contiguous ``float32`` vector. A :class:`ParamSpec` records, for each named
tensor, its shape, dtype and offset in that vector, so the vector can be read
back as zero-copy NumPy views (:meth:`ParamSpec.views`) and written from any
framework's tensors (:meth:`ParamSpec.flatten`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import SpecMismatchError

Vector = npt.NDArray[np.float32]
"""A flat, contiguous float32 parameter (or update) vector."""

VECTOR_DTYPE = np.dtype(np.float32)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor inside the flat vector: its shape, original dtype and offset."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def size(self) -> int:
        """Number of elements of the tensor."""
        return prod(self.shape)


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes, dtypes and offsets of a model's tensors in one flat vector."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any] | Iterable[Any]) -> ParamSpec:
        """Describe named arrays (a mapping, e.g. a state dict) or a list of arrays.

        Works with anything that has ``.shape`` and ``.dtype``: NumPy arrays,
        PyTorch tensors, scikit-learn coefficient arrays. A list gets the names
        ``"0"``, ``"1"``, ...
        """
        items = arrays.items() if isinstance(arrays, Mapping) else enumerate(arrays)
        tensors: list[TensorSpec] = []
        offset = 0
        for name, array in items:
            shape = tuple(int(d) for d in array.shape)
            tensors.append(TensorSpec(str(name), shape, _dtype_name(array.dtype), offset))
            offset += prod(shape)
        return cls(tuple(tensors))

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        if not self.tensors:
            return 0
        last = self.tensors[-1]
        return last.offset + last.size

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in vector order."""
        return tuple(t.name for t in self.tensors)

    def zeros(self) -> Vector:
        """A zero vector of this spec's length."""
        return np.zeros(self.size, dtype=VECTOR_DTYPE)

    def flatten(
        self, arrays: Mapping[str, Any] | Iterable[Any], out: Vector | None = None
    ) -> Vector:
        """Copy named arrays (NumPy or anything ``np.asarray`` reads) into one flat vector.

        ``out`` is filled in place when given, so a worker reuses one buffer.
        """
        vector = self.zeros() if out is None else out
        self.check_vector(vector)
        if isinstance(arrays, Mapping):
            missing = [name for name in self.names if name not in arrays]
            unknown = [str(name) for name in arrays if name not in set(self.names)]
            if missing or unknown:
                raise SpecMismatchError(
                    f"tensors missing: {missing or 'none'}; tensors the spec does not know: "
                    f"{unknown or 'none'}; build the ParamSpec from the same model"
                )
            values = [arrays[name] for name in self.names]
        else:
            values = list(arrays)
        if len(values) != len(self.tensors):
            raise SpecMismatchError(
                f"expected {len(self.tensors)} tensors ({', '.join(self.names)}), "
                f"got {len(values)}; build the ParamSpec from the same model"
            )
        for spec, value in zip(self.tensors, values, strict=True):
            array = np.asarray(value)
            if tuple(array.shape) != spec.shape:
                raise SpecMismatchError(
                    f"tensor {spec.name!r} has shape {tuple(array.shape)}, the spec says "
                    f"{spec.shape}; the model changed after the ParamSpec was built"
                )
            vector[spec.offset : spec.offset + spec.size] = array.reshape(-1)
        return vector

    def views(self, vector: Vector) -> dict[str, npt.NDArray[np.float32]]:
        """Zero-copy views of ``vector`` as named tensors of their original shapes."""
        self.check_vector(vector)
        return {t.name: vector[t.offset : t.offset + t.size].reshape(t.shape) for t in self.tensors}

    def check_vector(self, vector: npt.NDArray[Any]) -> None:
        """Raise :class:`SpecMismatchError` unless ``vector`` is a flat float32 of this length."""
        if vector.ndim != 1 or vector.shape[0] != self.size:
            raise SpecMismatchError(
                f"vector has shape {vector.shape}, this ParamSpec needs ({self.size},)"
            )
        if vector.dtype != VECTOR_DTYPE:
            raise SpecMismatchError(
                f"vector dtype is {vector.dtype}, fedwarden vectors are float32"
            )

    def to_json(self) -> str:
        """Serialize to JSON (stored beside every saved model)."""
        return json.dumps(
            [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "offset": t.offset}
                for t in self.tensors
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> ParamSpec:
        """Read a spec written by :meth:`to_json`."""
        return cls(
            tuple(
                TensorSpec(item["name"], tuple(item["shape"]), item["dtype"], item["offset"])
                for item in json.loads(text)
            )
        )


def _dtype_name(dtype: Any) -> str:
    """The dtype's name without framework prefixes (``torch.float32`` -> ``float32``)."""
    return str(dtype).removeprefix("torch.")
