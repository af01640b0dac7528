"""The wire of the ``FeatureParty`` service: arrays, row indices and PSI points as checked bytes.

Every array crosses as its shape and raw little-endian float32 bytes, and is
refused unless two-dimensional, of at least one row and one column, of as
many bytes as its shape says, and finite; row indices cross as distinct
int64 within the aligned table; PSI points as whole 32-byte group elements.
Nothing is pickled. Both ends cap messages at :data:`MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

from typing import Final, TypeVar, cast, get_args

import numpy as np
import numpy.typing as npt

from fedwarden.secure.psi import POINT_BYTES, PsiMode, PsiOffer, PsiRequest, PsiResponse
from fedwarden.vertical import vertical_pb2 as vpb
from fedwarden.vertical.messages import VerticalError
from fedwarden.vertical.release import GaussianRelease
from fedwarden.vertical.split import Rows

SERVICE: Final = "fedwarden.vertical.v1.FeatureParty"

MAX_MESSAGE_BYTES: Final = 64 << 20
"""Largest message either end accepts. Cut-layer batches are kilobytes; a PSI message carries
one point of 32 bytes per id, so no message can hold more than 2,097,152 ids (64 MiB / 32 B)."""

_FLOAT32: Final = np.dtype("<f4")
_INT64: Final = np.dtype("<i8")
_Points = TypeVar("_Points", PsiOffer, PsiRequest)


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC options of both ends: the message size cap (a larger message is refused)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def encode_tensor(values: npt.NDArray[np.float32]) -> vpb.Tensor:
    """A float32 array as its shape and raw little-endian bytes (C order)."""
    array = np.ascontiguousarray(values, dtype=_FLOAT32)
    return vpb.Tensor(shape=list(array.shape), data=array.tobytes())


def decode_tensor(
    message: vpb.Tensor, what: str, rows: int | None = None, columns: int | None = None
) -> npt.NDArray[np.float32]:
    """The float32 array a :class:`vpb.Tensor` carries, refused unless well-formed and finite.

    ``rows``, if given, is the number of rows the array must have (one per
    example); ``columns`` the number of columns (the cut width).
    """
    shape = tuple(int(size) for size in message.shape)
    if len(shape) != 2:
        raise VerticalError(
            f"{what} must be a (batch, cut_width) array but declares shape {shape}; send one "
            "row per example"
        )
    if min(shape) < 1:
        raise VerticalError(
            f"{what} declares shape {shape}: a (batch, cut_width) array needs at least one row "
            "and one column"
        )
    expected = shape[0] * shape[1] * _FLOAT32.itemsize
    if len(message.data) != expected:
        raise VerticalError(
            f"{what} declares shape {shape}, {expected} bytes of float32, but carries "
            f"{len(message.data)} bytes; encode it with encode_tensor"
        )
    if rows is not None and shape[0] != rows:
        raise VerticalError(f"{what} holds {shape[0]} rows for a batch of {rows} examples")
    if columns is not None and shape[1] != columns:
        raise VerticalError(
            f"{what} is {shape[1]} columns wide but the architecture's cut width is {columns}; "
            "the party runs another bottom model than the one prepared"
        )
    values = np.frombuffer(message.data, dtype=_FLOAT32).reshape(shape).astype(np.float32)
    if not np.isfinite(values).all():
        raise VerticalError(
            f"{what} holds NaN or infinite values; the sender's model diverged or the message "
            "is corrupt: it was refused and nothing was updated"
        )
    return values


def encode_rows(rows: Rows) -> bytes:
    """Row indices as int64 little-endian bytes."""
    return np.asarray(rows, dtype=_INT64).tobytes()


def decode_rows(data: bytes, table_rows: int) -> Rows:
    """Row indices from int64 bytes, refused unless distinct and each a row of the aligned table.

    A row asked for twice in one call would be released twice, and averaging
    the copies shrinks the noise of a release.
    """
    if not data or len(data) % _INT64.itemsize:
        raise VerticalError(
            f"row indices must be a nonempty list of int64 (8 bytes each), got {len(data)} bytes"
        )
    rows = np.frombuffer(data, dtype=_INT64).astype(np.int64)
    if rows.min() < 0 or rows.max() >= table_rows:
        raise VerticalError(
            f"row indices must lie in [0, {table_rows}) (the aligned table), got "
            f"{rows.min()} to {rows.max()}"
        )
    if len(np.unique(rows)) != len(rows):
        raise VerticalError(
            f"row indices must be distinct, got {len(rows)} indices naming "
            f"{len(np.unique(rows))} rows; ask for each row once per pass"
        )
    return rows


def split_points(data: bytes, what: str) -> tuple[bytes, ...]:
    """Concatenated group elements cut back into points of :data:`POINT_BYTES`."""
    if len(data) % POINT_BYTES:
        raise VerticalError(
            f"{what} must be whole {POINT_BYTES}-byte points, got {len(data)} bytes"
        )
    return tuple(data[start : start + POINT_BYTES] for start in range(0, len(data), POINT_BYTES))


def points_message(points: PsiOffer | PsiRequest) -> vpb.PsiPoints:
    """A PSI offer or request on the wire: its mode and its points, concatenated."""
    return vpb.PsiPoints(mode=points.mode, points=b"".join(points.points))


def psi_points(message: vpb.PsiPoints, kind: type[_Points]) -> _Points:
    """The PSI offer or request (``kind``) a :class:`vpb.PsiPoints` carries, checked."""
    if message.mode not in get_args(PsiMode):
        raise VerticalError(
            f"PSI mode must be one of {list(get_args(PsiMode))}, got {message.mode!r}"
        )
    mode = cast(PsiMode, message.mode)
    return kind(mode=mode, points=split_points(message.points, f"{kind.__name__}.points"))


def answer_message(response: PsiResponse) -> vpb.PsiAnswer:
    return vpb.PsiAnswer(double_blinded=b"".join(response.double_blinded))


def psi_response(message: vpb.PsiAnswer) -> PsiResponse:
    return PsiResponse(
        double_blinded=split_points(message.double_blinded, "PsiResponse.double_blinded")
    )


def release_of(declaration: vpb.Declaration) -> GaussianRelease | None:
    """The release a party declared (None: it sends without one)."""
    if not declaration.HasField("release"):
        return None
    return GaussianRelease(
        clip_norm=declaration.release.clip_norm,
        noise_multiplier=declaration.release.noise_multiplier,
    )
