"""Fixed-point numbers in Z_{2^b}: what the masks are added to, and how a masked vector is packed.

Secure aggregation adds vectors modulo 2^b, so floats are scaled by 2^f, rounded, and stored in two's
complement mod 2^b (uint64, 1 <= b <= 64). The modular sum decodes to the true sum only if that sum
fits in the signed range [-2^(b-1), 2^(b-1) - 1]; `fixed_point_for` picks the smallest b for which
no sum of the round's inputs can leave it, so nothing wraps silently.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from secagg.errors import QuantizationError

MAX_BIT_WIDTH = 64
MAX_FRACTION_BITS = 52  # beyond the float64 mantissa, extra fraction bits carry no information


def _mask(bit_width: int) -> np.uint64:
    return np.uint64((1 << bit_width) - 1)


def _check_bit_width(bit_width: int) -> None:
    if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 1 <= bit_width <= MAX_BIT_WIDTH:
        raise QuantizationError(f"bit_width must be an integer in 1..{MAX_BIT_WIDTH}, got {bit_width!r}")


def _scaled_bound(value_bound: float, fraction_bits: int) -> int:
    """round(value_bound * 2^f): the largest |integer| a value within the bound encodes to."""
    if isinstance(value_bound, bool) or not isinstance(value_bound, numbers.Real) \
            or not math.isfinite(value_bound) or value_bound < 0:
        raise QuantizationError(f"value_bound must be a finite number >= 0, got {value_bound!r}")
    scaled = float(value_bound) * 2.0**fraction_bits
    if not math.isfinite(scaled) or scaled >= 2.0**MAX_BIT_WIDTH:
        raise QuantizationError(f"value_bound {value_bound} is too large for any {MAX_BIT_WIDTH}-bit encoding")
    return round(scaled)


def _as_elements(values: np.ndarray, bit_width: int, what: str) -> np.ndarray:
    """`values` as a 1-D uint64 array of elements of Z_{2^b}; refuse anything else (no silent casts)."""
    if not isinstance(values, np.ndarray) or values.dtype != np.uint64 or values.ndim != 1:
        raise QuantizationError(f"{what} must be a 1-D numpy uint64 array")
    if bit_width < MAX_BIT_WIDTH and values.size and int(values.max()) >> bit_width:
        raise QuantizationError(f"{what} holds values >= 2^{bit_width}")
    return values


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """Numbers x encoded as round(x * 2^fraction_bits) mod 2^bit_width."""

    bit_width: int
    fraction_bits: int

    def __post_init__(self) -> None:
        _check_bit_width(self.bit_width)
        f = self.fraction_bits
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= MAX_FRACTION_BITS:
            raise QuantizationError(f"fraction_bits must be an integer in 0..{MAX_FRACTION_BITS}, got {f!r}")

    @property
    def mask(self) -> np.uint64:
        """2^b - 1: `& mask` reduces a uint64 (which wraps mod 2^64) mod 2^b."""
        return _mask(self.bit_width)

    @property
    def max_magnitude(self) -> int:
        """The largest |integer| the signed range holds symmetrically: 2^(b-1) - 1."""
        return (1 << (self.bit_width - 1)) - 1

    def encode(self, x: np.ndarray, *, value_bound: float) -> np.ndarray:
        """round(x * 2^f) mod 2^b as uint64; every |x| must be <= value_bound (the round's declared bound)."""
        scaled_bound = _scaled_bound(value_bound, self.fraction_bits)
        if scaled_bound > self.max_magnitude:
            raise QuantizationError(
                f"value_bound {value_bound} needs more than {self.bit_width} bits at {self.fraction_bits} fraction bits")
        array = np.asarray(x)
        if array.dtype.kind not in "fiu":
            raise QuantizationError(f"cannot encode values of dtype {array.dtype}")
        array = array.astype(np.float64, copy=False).reshape(-1)
        if not np.all(np.isfinite(array)):
            raise QuantizationError("cannot encode non-finite values")
        if array.size and float(np.max(np.abs(array))) > value_bound:
            raise QuantizationError(f"a value of magnitude {float(np.max(np.abs(array)))} exceeds the bound {value_bound}")
        # |x| <= V and rint is monotone and odd, so |rint(x 2^f)| <= rint(V 2^f) = scaled_bound: fits int64.
        integers = np.rint(array * 2.0**self.fraction_bits).astype(np.int64)
        return integers.view(np.uint64) & self.mask

    def decode(self, total: np.ndarray) -> np.ndarray:
        """float64 of a (summed) vector read as signed integers mod 2^b, divided by 2^f."""
        values = _as_elements(total, self.bit_width, "the vector to decode")
        if self.bit_width == MAX_BIT_WIDTH:
            signed = values.view(np.int64)
        else:
            signed = values.astype(np.int64)
            signed[signed >= (1 << (self.bit_width - 1))] -= 1 << self.bit_width
        return signed.astype(np.float64) / 2.0**self.fraction_bits

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b mod 2^b."""
        return (_as_elements(a, self.bit_width, "a") + _as_elements(b, self.bit_width, "b")) & self.mask

    def subtract(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a - b mod 2^b."""
        return (_as_elements(a, self.bit_width, "a") - _as_elements(b, self.bit_width, "b")) & self.mask


def fixed_point_for(*, max_summands: int, value_bound: float, fraction_bits: int) -> FixedPoint:
    """The narrowest encoding in which a sum of `max_summands` values in [-value_bound, value_bound] cannot wrap.

    Each value encodes to an integer of magnitude <= M = round(value_bound * 2^f) (rounding is monotone),
    so a sum has magnitude <= n*M, and the signed range of b bits holds it iff n*M <= 2^(b-1) - 1, i.e.
    b = 1 + ceil(log2(n*M + 1)) = 1 + bit_length(n*M). With b - 1 bits, n values of +M sum past the range.
    """
    if isinstance(max_summands, bool) or not isinstance(max_summands, int) or max_summands < 1:
        raise QuantizationError(f"max_summands must be a positive integer, got {max_summands!r}")
    if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, int) \
            or not 0 <= fraction_bits <= MAX_FRACTION_BITS:
        raise QuantizationError(f"fraction_bits must be an integer in 0..{MAX_FRACTION_BITS}, got {fraction_bits!r}")
    scaled_bound = _scaled_bound(value_bound, fraction_bits)
    bit_width = 1 + (max_summands * scaled_bound).bit_length()
    if bit_width > MAX_BIT_WIDTH:
        raise QuantizationError(
            f"a sum of {max_summands} values within ±{value_bound} at {fraction_bits} fraction bits "
            f"needs {bit_width} bits, more than {MAX_BIT_WIDTH}")
    return FixedPoint(bit_width=bit_width, fraction_bits=fraction_bits)


def packed_size(count: int, bit_width: int) -> int:
    """Bytes of `count` values packed at `bit_width` bits each: ceil(count * b / 8)."""
    return (count * bit_width + 7) // 8


_WINDOW_BITS = 57  # up to here a field plus its bit offset in its first byte (< 8) fits in 8 bytes


def pack(values: np.ndarray, bit_width: int) -> bytes:
    """Exactly `bit_width` bits per value, little-endian bit order, zero padding in the last byte.

    For 8 <= b <= 57 the inverse of `unpack`'s windows: each group of 8 values fills b bytes, value r
    of every group is OR-ed in (shifted left by (r*b) % 8) as one strided uint64 view at byte
    (r*b) // 8 of the groups (fields are bit-disjoint, and with b >= 8 the windows of one view do
    not overlap). Other widths go through one byte per bit.
    """
    _check_bit_width(bit_width)
    values = _as_elements(values, bit_width, "the vector to pack")
    count = values.size
    if not 8 <= bit_width <= _WINDOW_BITS or not count:
        return _pack_bits(values, bit_width)
    groups = -(-count // 8)
    grouped = np.zeros(groups * 8, np.uint64)
    grouped[:count] = values  # zero values beyond count: zero padding bits
    out = np.zeros(groups * bit_width + 8, np.uint8)
    for r in range(8):
        offset, shift = divmod(r * bit_width, 8)
        windows: np.ndarray = np.ndarray((groups,), "<u8", out, offset, (bit_width,))
        windows |= grouped[r::8] << np.uint64(shift)
    return out[:packed_size(count, bit_width)].tobytes()


def _pack_bits(values: np.ndarray, bit_width: int) -> bytes:
    """`pack` through one byte per bit."""
    width = (bit_width + 7) // 8  # only the low bytes of each value can hold set bits
    low = values.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)[:, :width]
    bits = np.unpackbits(low, axis=1, bitorder="little")[:, :bit_width]
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bit_width: int, count: int) -> np.ndarray:
    """The uint64 values of `pack`; refuse a wrong length or nonzero padding bits.

    (Values >= 2^b cannot come out: every field is exactly b bits wide.) For b <= 57, value i is the
    8-byte little-endian window at byte (i*b) // 8, shifted right by (i*b) % 8 and masked to b bits;
    values i, i + 8, i + 16, ... sit at the same offsets within each b-byte group of 8 values, so
    each of the 8 is one strided uint64 view of the data (padded with zeros) and one shift.
    """
    _check_bit_width(bit_width)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise QuantizationError(f"count must be a non-negative integer, got {count!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise QuantizationError("packed data must be bytes")
    expected = packed_size(count, bit_width)
    raw = np.frombuffer(data, np.uint8)
    if len(data) != expected or raw.size != expected:
        raise QuantizationError(
            f"packed vector of {len(data)} bytes, expected {expected} for {count} values of {bit_width} bits")
    used = count * bit_width
    if used % 8 and int(raw[-1]) >> (used % 8):  # padding bits exist only in the last byte
        raise QuantizationError("packed vector has nonzero padding bits")
    if not count:
        return np.zeros(0, np.uint64)
    if bit_width > _WINDOW_BITS:
        return _unpack_bits(raw, bit_width, count)
    groups = -(-count // 8)
    padded = np.zeros(groups * bit_width + 8, np.uint8)
    padded[:expected] = raw
    out = np.empty(groups * 8, np.uint64)
    mask = _mask(bit_width)
    for r in range(8):
        offset, shift = divmod(r * bit_width, 8)
        windows: np.ndarray = np.ndarray((groups,), "<u8", padded, offset, (bit_width,))
        out[r::8] = (windows >> np.uint64(shift)) & mask
    return out[:count]


def _unpack_bits(raw: np.ndarray, bit_width: int, count: int) -> np.ndarray:
    """`unpack` through one byte per bit (b > 57: a field may span 9 bytes); length and padding already checked."""
    bits = np.unpackbits(raw, bitorder="little")
    used = count * bit_width
    width = (bit_width + 7) // 8
    fields = np.zeros((count, 8 * width), np.uint8)
    fields[:, :bit_width] = bits[:used].reshape(count, bit_width)
    octets = np.zeros((count, 8), np.uint8)
    octets[:, :width] = np.packbits(fields, axis=1, bitorder="little")
    return octets.reshape(-1).view("<u8").astype(np.uint64)
