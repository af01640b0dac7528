"""Communication compression: the client encodes its update compactly, the server decodes it.

A :class:`Codec` is one compression scheme built from up to three steps, applied
in this order to a flat update ``x`` of ``d`` coordinates:

1. **rotate** (optional, dense quantization only): the randomized Hadamard
   rotation ``z = H S x / sqrt(n)`` of Suresh et al. (ICML 2017, "Distributed
   Mean Estimation with Limited Communication", Section 4, ``pi_srk``): ``x``
   is padded with zeros to ``n = 2^ceil(log2 d)``, ``S`` is a diagonal of
   random signs expanded from a seed (only the seed travels) and ``H`` the
   Walsh-Hadamard matrix. The rotation is orthonormal, so it spreads the
   energy evenly and shrinks the range the quantizer must cover.
2. **sparsify** (optional): keep ``k = ceil(fraction * d)`` coordinates, the
   others decode as 0. ``topk`` keeps the ``k`` largest magnitudes and sends
   their indices as ``uint32``; ``randk`` keeps ``k`` uniformly random
   coordinates chosen from a seed, so only the seed travels (Stich, Cordonnier
   & Jaggi, NeurIPS 2018, "Sparsified SGD with Memory", ``top_k`` and
   ``rand_k``). Both are biased (``E[rand_k(x)] = (k/d) x``) and meant for use
   with error feedback, as in that paper.
3. **quantize** the kept values (``"none"`` sends them as ``float32``):

   * ``uniform``: stochastic ``b``-bit quantization, ``b`` in 1, 2, 4, 8
     (Suresh et al. 2017, Section 2, ``pi_sk`` with ``k = 2^b`` levels).
     With ``lo, hi`` the vector's minimum and maximum, each value rounds to
     one of its two neighbouring levels ``lo + j (hi - lo) / (2^b - 1)``, up
     with probability equal to its fractional position: unbiased, and never
     more than one step ``(hi - lo) / (2^b - 1)`` from the value.
   * ``qsgd``: QSGD with ``s`` levels (Alistarh et al., NeurIPS 2017,
     "QSGD", Section 3.1): ``||v|| sign(x_i) xi_i`` with ``xi_i`` the
     stochastic rounding of ``|x_i| s / ||v||`` to an integer in ``0..s``,
     divided by ``s``, where ``v`` is the bucket of ``bucket_size``
     consecutive values holding ``x_i`` (the paper's bucketing, which keeps
     the variance bound to the bucket's size). Unbiased, at most ``||v|| / s``
     from each value, with ``E||Q(v) - v||^2 <= min(b / s^2, sqrt(b) / s) ||v||^2``
     for a bucket of ``b`` values (Lemma 3.1).

With rotation the bounds hold in the rotated space, and so in L2 norm for the
decoded update (the rotation preserves it). Codes are bit-packed: ``m``
values at ``b`` bits take exactly ``ceil(m b / 8)`` bytes.

Payload layout (little-endian): top-k indices (``uint32[k]``, increasing);
then the quantizer's scalars as ``float32`` (``lo, hi`` for uniform, one
``||v||`` per bucket for QSGD); then the packed codes (QSGD: sign bits, then magnitudes at the
smallest width of 1, 2, 4, 8 bits that holds ``s``), or ``float32[k]`` values.
The header says which codec, the vector size ``d`` and the seed when one is
used; :meth:`Codec.payload_length` gives the exact payload size, and the
decoder refuses any payload that is not exactly that long or holds
out-of-range indices or codes.

:class:`CompressUpdate` is the pipeline stage: its client half encodes with
error feedback (Stich et al. 2018, Algorithm 1; Karimireddy et al., ICML 2019,
"Error Feedback Fixes SignSGD", Algorithm 2): the client compresses
``u + e`` and keeps ``e <- (u + e) - decode(encode(u + e))`` in its persistent
state, so over rounds the decoded updates plus the final residual sum to the
updates it computed. Its server half decodes each arriving payload back to a
``float32`` vector before the later stages see it.

Randomness: stochastic rounding draws from a :class:`NoiseSource` (secure by
default); seeds are expanded with the AES-CTR PRG of
:mod:`fedwarden.secure.prg` under HKDF-derived keys, one per purpose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError, FedwardenError, PipelineError, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.core.records import round_number
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.stage import Stage
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.prg import derive_seed, expand_mask

Sparsifier = Literal["none", "topk", "randk"]
Quantizer = Literal["none", "uniform", "qsgd"]
Floats = npt.NDArray[np.float64]
Codes = npt.NDArray[np.uint8]
Indices = npt.NDArray[np.uint32]

PACKED_BITS = (1, 2, 4, 8)
"""Code widths that pack whole codes into a byte."""
MAX_SEED = 2**64
"""Codec seeds are 64-bit: they choose rotation signs and random-k positions, not secrets."""
RESIDUAL_KEY = "compress/residual"
"""Where :class:`CompressUpdate` keeps a client's error-feedback residual between rounds."""
_ROTATION_PURPOSE = b"fedwarden/compress/rotation-signs"
_RANDOM_K_PURPOSE = b"fedwarden/compress/random-k"


class MalformedPayload(FedwardenError):
    """An encoded update does not match its codec: wrong length, header, index or code."""


@dataclass(frozen=True)
class Encoded:
    """One encoded vector: the bytes that travel and the small JSON-able header beside them."""

    header: dict[str, Any]
    payload: bytes


def pack_codes(codes: Codes, bits: int) -> bytes:
    """``codes`` (each below ``2**bits``) packed ``8 // bits`` to a byte, first in the low bits."""
    per_byte = 8 // bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, dtype=np.uint8)
    padded[: codes.size] = codes
    shifts = np.arange(per_byte, dtype=np.uint8) * np.uint8(bits)
    packed = np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1)
    return bytes(packed.astype(np.uint8).tobytes())


def unpack_codes(data: bytes, bits: int, count: int) -> Codes:
    """The first ``count`` ``bits``-wide codes packed in ``data`` by :func:`pack_codes`."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * np.uint8(bits)
    packed = np.frombuffer(data, dtype=np.uint8)
    codes = (packed[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(-1)[:count]


def packed_length(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits occupy once packed."""
    return -(-count * bits // 8)


def _outward_float32(low: float, high: float) -> tuple[np.float32, np.float32]:
    """``float32`` bounds with ``low32 <= low`` and ``high32 >= high`` (rounded outward)."""
    low32, high32 = np.float32(low), np.float32(high)
    if float(low32) > low:
        low32 = np.nextafter(low32, np.float32(-np.inf))
    if float(high32) < high:
        high32 = np.nextafter(high32, np.float32(np.inf))
    return low32, high32


def _stochastic_round(scaled: Floats, top: int, source: NoiseSource) -> Codes:
    """Each value of ``scaled`` (in ``[0, top]``) rounded up with probability its fraction."""
    np.clip(scaled, 0.0, top, out=scaled)
    floor = np.floor(scaled)
    up = source.uniform(scaled.size) < (scaled - floor)
    return (floor + up).astype(np.uint8)


def quantize_uniform(
    values: Floats, bits: int, source: NoiseSource
) -> tuple[np.float32, np.float32, Codes]:
    """Stochastic ``bits``-bit uniform quantization (Suresh et al. 2017, ``pi_sk``).

    Returns ``lo, hi`` (the values' range, rounded outward to ``float32``) and
    one code in ``0 .. 2**bits - 1`` per value; :func:`dequantize_uniform`
    maps a code ``j`` to ``lo + j (hi - lo) / (2**bits - 1)``.
    """
    top = (1 << bits) - 1
    low, high = _outward_float32(float(values.min()), float(values.max()))
    span = float(high) - float(low)
    if span == 0.0:
        return low, high, np.zeros(values.size, dtype=np.uint8)
    scaled = (values - float(low)) * (top / span)
    return low, high, _stochastic_round(scaled, top, source)


def dequantize_uniform(low: float, high: float, codes: Codes, bits: int) -> Floats:
    """The levels that ``codes`` name: ``lo + j (hi - lo) / (2**bits - 1)``."""
    step = (float(high) - float(low)) / ((1 << bits) - 1)
    return float(low) + codes.astype(np.float64) * step


def quantize_qsgd(
    values: Floats, levels: int, bucket_size: int, source: NoiseSource
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], Codes]:
    """QSGD with ``levels`` levels over buckets of ``bucket_size`` values (Alistarh et al. 2017).

    Returns each bucket's norm ``||v||`` (rounded up to ``float32``), the sign
    bits (True for negative) and each ``xi_i s`` in ``0..s``: ``|x_i| s / ||v||``
    rounded stochastically, so that the decoded value is unbiased.
    """
    buckets = _buckets(values, bucket_size)
    exact = np.linalg.norm(buckets, axis=1)
    norms = exact.astype(np.float32)
    short = norms.astype(np.float64) < exact
    norms[short] = np.nextafter(norms[short], np.float32(np.inf))
    scale = np.zeros(norms.size, dtype=np.float64)
    np.divide(levels, norms, out=scale, where=norms > 0)
    scaled = (np.abs(buckets) * scale[:, None]).reshape(-1)[: values.size]
    return norms, values < 0, _stochastic_round(scaled, levels, source)


def dequantize_qsgd(
    norms: npt.NDArray[np.float32],
    negative: npt.NDArray[np.bool_],
    magnitudes: Codes,
    levels: int,
    bucket_size: int,
) -> Floats:
    """``||v|| sign_i xi_i`` with ``xi_i = magnitude_i / s`` and ``v`` the bucket of ``i``."""
    unit = np.repeat(norms.astype(np.float64) / levels, bucket_size)[: magnitudes.size]
    decoded = magnitudes * unit
    np.negative(decoded, out=decoded, where=negative)
    return decoded


def _buckets(values: Floats, bucket_size: int) -> Floats:
    """``values`` zero-padded to whole buckets, one bucket per row."""
    padded = np.zeros(bucket_count(values.size, bucket_size) * bucket_size, dtype=np.float64)
    padded[: values.size] = values
    return padded.reshape(-1, bucket_size)


def bucket_count(count: int, bucket_size: int) -> int:
    """QSGD buckets (each with its own norm) covering ``count`` values."""
    return -(-count // bucket_size)


def qsgd_width(levels: int) -> int:
    """Bits per QSGD magnitude: the smallest packable width holding ``0..levels``."""
    return next(bits for bits in PACKED_BITS if levels < 1 << bits)


def top_k_indices(values: npt.NDArray[np.floating[Any]], k: int) -> Indices:
    """Positions of the ``k`` largest magnitudes of ``values``, increasing (ties: any)."""
    if k >= values.size:
        return np.arange(values.size, dtype=np.uint32)
    chosen = np.argpartition(np.abs(values), values.size - k)[values.size - k :]
    return np.sort(chosen).astype(np.uint32)


def _seed_key(seed: int, purpose: bytes) -> bytes:
    """The 256-bit PRG key for one use of a 64-bit codec seed (HKDF domain separation)."""
    return derive_seed(seed.to_bytes(8, "little"), purpose=purpose, context=b"")


def random_k_indices(size: int, k: int, seed: int) -> Indices:
    """``k`` distinct positions out of ``size``, uniformly at random from ``seed``, increasing.

    Each position gets a 62-bit key from the AES-CTR PRG; the ``k`` smallest
    keys win, a uniform ``k``-subset (keys tie with probability below
    ``size**2 / 2**63``). Encoder and decoder recompute the same set.
    """
    if k >= size:
        return np.arange(size, dtype=np.uint32)
    keys = expand_mask(_seed_key(seed, _RANDOM_K_PURPOSE), size, 62)
    chosen = np.argpartition(keys, k - 1)[:k]
    return np.sort(chosen).astype(np.uint32)


def hadamard_transform(values: Floats) -> Floats:
    """The orthonormal Walsh-Hadamard transform ``H x / sqrt(n)`` (``n`` a power of two).

    The fast transform: ``log2 n`` butterfly passes, each one vectorised over
    the whole vector. The matrix is symmetric and orthonormal, so the
    transform is its own inverse.
    """
    size = values.size
    if size & (size - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {size}")
    result = values.astype(np.float64, copy=True)
    half = 1
    while half < size:
        pairs = result.reshape(-1, 2, half)
        first = pairs[:, 0, :].copy()
        pairs[:, 0, :] += pairs[:, 1, :]
        np.subtract(first, pairs[:, 1, :], out=pairs[:, 1, :])
        half *= 2
    result *= 1.0 / math.sqrt(size)
    return result


def rotation_signs(size: int, seed: int) -> Floats:
    """The random diagonal ``S`` of the rotation: ``size`` signs of +-1 expanded from ``seed``."""
    bits = expand_mask(_seed_key(seed, _ROTATION_PURPOSE), size, 1)
    return 1.0 - 2.0 * bits.astype(np.float64)


def padded_size(size: int) -> int:
    """The power of two the rotation pads a ``size``-vector to."""
    return 1 << max(size - 1, 0).bit_length()


def rotate(values: npt.NDArray[np.floating[Any]], seed: int) -> Floats:
    """``H S x / sqrt(n)`` of ``x`` zero-padded to ``n`` (Suresh et al. 2017, Section 4)."""
    size = padded_size(values.size)
    padded = np.zeros(size, dtype=np.float64)
    padded[: values.size] = values
    padded *= rotation_signs(size, seed)
    return hadamard_transform(padded)


def unrotate(rotated: Floats, seed: int, size: int) -> Floats:
    """The inverse of :func:`rotate`: ``S H z / sqrt(n)``, cut back to ``size`` coordinates."""
    restored = hadamard_transform(rotated)
    restored *= rotation_signs(rotated.size, seed)
    return restored[:size]


@dataclass(frozen=True)
class Codec:
    """One compression scheme: optional rotation, then sparsification, then quantization.

    See the module docstring for each step, its paper and its error bound.
    ``fraction`` is used by ``topk``/``randk``, ``bits`` by ``uniform``,
    ``levels`` and ``bucket_size`` by ``qsgd``. Invalid combinations raise :class:`ConfigError`.
    """

    sparsify: Sparsifier = "none"
    fraction: float = 0.01
    quantize: Quantizer = "none"
    bits: int = 8
    levels: int = 15
    bucket_size: int = 512
    rotate: bool = False

    def __post_init__(self) -> None:
        where = "[pipeline.compression]"
        if self.sparsify not in ("none", "topk", "randk"):
            raise ConfigError(
                f"{where} sparsify={self.sparsify!r} is unknown; use 'none', 'topk' or 'randk'"
            )
        if self.quantize not in ("none", "uniform", "qsgd"):
            raise ConfigError(
                f"{where} quantize={self.quantize!r} is unknown; use 'none', 'uniform' or 'qsgd'"
            )
        if self.sparsify == "none" and self.quantize == "none":
            raise ConfigError(
                f"{where} has sparsify='none' and quantize='none', which compresses nothing; "
                "choose a sparsifier or a quantizer, or leave the section out"
            )
        if self.sparsify != "none" and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(
                f"{where} fraction={self.fraction!r} must lie in (0, 1]: the share of "
                "coordinates kept"
            )
        if self.quantize == "uniform" and self.bits not in PACKED_BITS:
            raise ConfigError(f"{where} bits={self.bits!r} must be one of {PACKED_BITS}")
        if self.quantize == "qsgd" and not 1 <= self.levels <= 255:
            raise ConfigError(f"{where} levels={self.levels!r} must be an integer in 1..255")
        if self.quantize == "qsgd" and not 1 <= self.bucket_size < 2**32:
            raise ConfigError(
                f"{where} bucket_size={self.bucket_size!r} must be a positive integer: the "
                "number of values that share one norm"
            )
        if self.rotate and (self.quantize == "none" or self.sparsify != "none"):
            raise ConfigError(
                f"{where} rotate=true needs quantize='uniform' or 'qsgd' and sparsify='none': "
                "the rotation narrows the quantizer's range, but it spreads the energy a "
                "sparsifier needs concentrated"
            )

    @property
    def label(self) -> str:
        """A short name of the scheme and its settings, carried in every header."""
        parts = []
        if self.sparsify != "none":
            parts.append(f"{self.sparsify}:{self.fraction!r}")
        if self.quantize == "uniform":
            parts.append(f"uniform:{self.bits}")
        elif self.quantize == "qsgd":
            parts.append(f"qsgd:{self.levels}/{self.bucket_size}")
        if self.rotate:
            parts.append("rotate")
        return "+".join(parts)

    @property
    def uses_seed(self) -> bool:
        """Whether a seed travels in the header (rotation signs or random-k positions)."""
        return self.rotate or self.sparsify == "randk"

    def coded_size(self, size: int) -> int:
        """Coordinates the sparsifier works on: the padded size under rotation, else ``size``."""
        return padded_size(size) if self.rotate else size

    def kept(self, size: int) -> int:
        """Values that travel for a ``size``-vector: ``ceil(fraction * size)`` or all."""
        coded = self.coded_size(size)
        if self.sparsify == "none":
            return coded
        return min(coded, max(1, math.ceil(self.fraction * coded)))

    def payload_length(self, size: int) -> int:
        """Exact bytes of the payload encoding a ``size``-vector (the header not included)."""
        kept = self.kept(size)
        length = 4 * kept if self.sparsify == "topk" else 0
        if self.quantize == "none":
            return length + 4 * kept
        if self.quantize == "uniform":
            return length + 8 + packed_length(kept, self.bits)
        norms = 4 * bucket_count(kept, self.bucket_size)
        width = qsgd_width(self.levels)
        return length + norms + packed_length(kept, 1) + packed_length(kept, width)

    def encode(self, vector: Vector, source: NoiseSource) -> Encoded:
        """``vector`` as a payload and header; stochastic rounding draws from ``source``."""
        if vector.size == 0 or not np.isfinite(vector).all():
            raise PipelineError(
                f"a {vector.size}-element update with NaN/Inf values or none at all cannot be "
                f"compressed ({self.label}); check the trainer that produced it"
            )
        header: dict[str, Any] = {"codec": self.label, "size": int(vector.size)}
        seed = 0
        if self.uses_seed:
            seed = int.from_bytes(source.random_bytes(8), "little")
            header["seed"] = seed
        values: npt.NDArray[np.floating[Any]] = rotate(vector, seed) if self.rotate else vector
        sections: list[bytes] = []
        if self.sparsify != "none":
            kept = self.kept(vector.size)
            if self.sparsify == "topk":
                indices = top_k_indices(values, kept)
                sections.append(indices.astype("<u4").tobytes())
            else:
                indices = random_k_indices(values.size, kept, seed)
            values = values[indices]
        sections.append(self._encode_values(values, source))
        return Encoded(header, b"".join(sections))

    def _encode_values(self, values: npt.NDArray[np.floating[Any]], source: NoiseSource) -> bytes:
        if self.quantize == "none":
            return bytes(values.astype("<f4").tobytes())
        wide = values.astype(np.float64)
        if self.quantize == "uniform":
            low, high, codes = quantize_uniform(wide, self.bits, source)
            scalars = np.array([low, high], dtype="<f4").tobytes()
            return scalars + pack_codes(codes, self.bits)
        norms, negative, magnitudes = quantize_qsgd(wide, self.levels, self.bucket_size, source)
        return (
            norms.astype("<f4").tobytes()
            + pack_codes(negative.astype(np.uint8), 1)
            + pack_codes(magnitudes, qsgd_width(self.levels))
        )

    def decode(self, encoded: Encoded) -> Vector:
        """The ``float32`` vector ``encoded`` stands for; :class:`MalformedPayload` if it cannot.

        Everything is checked before it is used: the codec label, the size and
        seed, the exact payload length, index order and range, finite scalars
        and codes within their range.
        """
        size, seed = self._read_header(encoded.header)
        payload = encoded.payload
        expected = self.payload_length(size)
        if len(payload) != expected:
            raise MalformedPayload(
                f"a {self.label} payload of a {size}-vector has {expected} bytes, "
                f"got {len(payload)}"
            )
        coded, kept = self.coded_size(size), self.kept(size)
        offset = 0
        indices: Indices | None = None
        if self.sparsify == "topk":
            indices = np.frombuffer(payload, dtype="<u4", count=kept).astype(np.uint32)
            offset = 4 * kept
            steps = np.diff(indices.astype(np.int64))
            if indices.size and (int(indices[-1]) >= coded or np.any(steps <= 0)):
                raise MalformedPayload(
                    f"top-k indices must increase strictly and stay below {coded}"
                )
        elif self.sparsify == "randk":
            indices = random_k_indices(coded, kept, seed)
        values = self._decode_values(payload[offset:], kept)
        if indices is None:
            dense = values
        else:
            dense = np.zeros(coded, dtype=np.float64)
            dense[indices] = values
        if self.rotate:
            dense = unrotate(dense, seed, size)
        return dense.astype(VECTOR_DTYPE)

    def _read_header(self, header: Any) -> tuple[int, int]:
        if not isinstance(header, dict) or header.get("codec") != self.label:
            codec = header.get("codec") if isinstance(header, dict) else header
            raise MalformedPayload(f"the payload was encoded with {codec!r}, not {self.label!r}")
        keys = {"codec", "size", "seed"} if self.uses_seed else {"codec", "size"}
        if set(header) != keys:
            raise MalformedPayload(
                f"a {self.label} header holds exactly {sorted(keys)}, got {sorted(header)}"
            )
        size, seed = header["size"], header.get("seed", 0)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < 2**32:
            raise MalformedPayload(f"header size {size!r} is not an int in 1..2**32-1")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
            raise MalformedPayload(f"header seed {seed!r} is not an int in 0..2**64-1")
        return size, seed

    def _decode_values(self, data: bytes, kept: int) -> Floats:
        if self.quantize == "none":
            return np.frombuffer(data, dtype="<f4").astype(np.float64)
        if self.quantize == "uniform":
            low, high = (float(v) for v in np.frombuffer(data, dtype="<f4", count=2))
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise MalformedPayload(f"uniform range [{low}, {high}] is not a finite interval")
            return dequantize_uniform(low, high, unpack_codes(data[8:], self.bits, kept), self.bits)
        buckets = bucket_count(kept, self.bucket_size)
        norms = np.frombuffer(data, dtype="<f4", count=buckets).astype(np.float32)
        if not np.all(np.isfinite(norms) & (norms >= 0)):
            raise MalformedPayload("QSGD bucket norms must be finite and non-negative")
        signs_end = 4 * buckets + packed_length(kept, 1)
        negative = unpack_codes(data[4 * buckets : signs_end], 1, kept).astype(np.bool_)
        magnitudes = unpack_codes(data[signs_end:], qsgd_width(self.levels), kept)
        if magnitudes.size and int(magnitudes.max()) > self.levels:
            raise MalformedPayload(f"a QSGD magnitude exceeds the {self.levels} levels")
        return dequantize_qsgd(norms, negative, magnitudes, self.levels, self.bucket_size)


class CompressUpdate(Stage):
    """Encode on the client with error feedback; decode on the server as each update arrives.

    Client half: compress ``u + e`` with the codec and keep the residual
    ``e <- (u + e) - decode(encode(u + e))`` in the client's state under
    :data:`RESIDUAL_KEY` (Stich et al. 2018, Algorithm 1; Karimireddy et al.
    2019, Algorithm 2); the update then travels as the codec's payload alone.
    Server half: check and decode the payload to the ``float32`` update
    (``UpdateRejected`` with reason ``"encoding"`` if it is malformed); an
    update that arrives raw passes unchanged.

    Place it after every stage whose client half changes the update (local
    noise) and before every stage whose server half reads it (validation,
    clipping). Under central DP clip on the server, after decoding: error
    feedback adds the residual after any client-side clipping, so what is
    sent is not bounded by the clip norm. The server decodes each update, so
    secure aggregation cannot follow it.
    """

    name: ClassVar[str] = "compress"
    needs_individual_updates = True

    def __init__(
        self,
        codec: Codec,
        size: int,
        *,
        error_feedback: bool = True,
        reproducible: bool = False,
    ) -> None:
        self.codec = codec
        self.size = size
        self.error_feedback = error_feedback
        self.reproducible = reproducible

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """Add the residual, encode, keep the new residual, and send only the payload."""
        if update.payload is not None:
            raise PipelineError(
                f"the update of client {update.client_id!r} was already encoded by an earlier "
                "stage; a pipeline compresses once"
            )
        corrected = update.update
        residual = context.state.get(RESIDUAL_KEY) if self.error_feedback else None
        if residual is not None:
            if residual.shape != corrected.shape:
                raise PipelineError(
                    f"client {update.client_id!r} kept a residual of shape {residual.shape} "
                    f"but its update has shape {corrected.shape}; the model changed, so "
                    "start the run afresh (or delete its client state)"
                )
            corrected = corrected + residual.astype(VECTOR_DTYPE)
        encoded = self.codec.encode(corrected, self._source(context))
        if self.error_feedback:
            context.state[RESIDUAL_KEY] = corrected - self.codec.decode(encoded)
        return replace(
            update,
            update=np.empty(0, dtype=VECTOR_DTYPE),
            payload=encoded.payload,
            payload_header=encoded.header,
        )

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        """Decode the payload to the update vector, or reject it as malformed."""
        if update.payload is None:
            return update
        who = f"update from client {update.client_id!r} in round {round_number(update.round_index)}"
        if not isinstance(update.payload_header, Mapping):
            raise UpdateRejected("encoding", f"{who} has a payload header that is not an object")
        header = dict(update.payload_header)
        if header.get("size") != self.size:
            raise UpdateRejected(
                "encoding",
                f"{who} encodes {header.get('size')!r} coordinates; the model has {self.size}",
            )
        try:
            vector = self.codec.decode(Encoded(header, update.payload))
        except MalformedPayload as error:
            raise UpdateRejected("encoding", f"{who} is malformed: {error}") from None
        return replace(update, update=vector, payload=None, payload_header={})

    def _source(self, context: ClientContext) -> NoiseSource:
        return NoiseSource.secure_or_testing(self.reproducible, context.test_noise_key)
