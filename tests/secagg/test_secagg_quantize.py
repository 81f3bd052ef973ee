"""Fixed point in Z_2^b: round trips, the tight overflow bound, and bit packing."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from secagg.errors import QuantizationError, SecAggError
from secagg.quantize import FixedPoint, fixed_point_for, pack, packed_size, unpack


def test_encode_decode_round_trip_within_half_a_step():
    fp = FixedPoint(bit_width=32, fraction_bits=16)
    x = np.random.default_rng(0).uniform(-100, 100, 5000)
    x[:3] = [-100.0, 100.0, 0.0]
    encoded = fp.encode(x, value_bound=100.0)
    assert encoded.dtype == np.uint64 and int(encoded.max()) < 2**32
    assert np.max(np.abs(fp.decode(encoded) - x)) <= 2.0**-17


def test_negative_values_are_twos_complement_mod_2b():
    fp = FixedPoint(bit_width=8, fraction_bits=2)
    assert fp.encode(np.array([-1.0, 1.0, -0.25]), value_bound=1.0).tolist() == [256 - 4, 4, 255]
    assert fp.decode(np.array([252, 4, 255], np.uint64)).tolist() == [-1.0, 1.0, -0.25]


def test_full_64_bit_width():
    fp = FixedPoint(bit_width=64, fraction_bits=20)
    x = np.array([-3.5, 2.25, 0.0])
    assert fp.decode(fp.encode(x, value_bound=4.0)).tolist() == x.tolist()
    total = fp.add(fp.encode(x, value_bound=4.0), fp.encode(-x, value_bound=4.0))
    assert total.tolist() == [0, 0, 0]


def test_add_subtract_are_mod_2b():
    fp = FixedPoint(bit_width=5, fraction_bits=0)
    a, b = np.array([31, 3], np.uint64), np.array([2, 5], np.uint64)
    assert fp.add(a, b).tolist() == [1, 8]
    assert fp.subtract(b, a).tolist() == [3, 2]
    with pytest.raises(QuantizationError):
        fp.add(np.array([32], np.uint64), np.array([0], np.uint64))


@pytest.mark.parametrize("bad", [np.array([np.nan]), np.array([np.inf]), np.array([1.0 + 1e-9]), np.array([-2.0])])
def test_encode_refuses_non_finite_and_out_of_bound(bad):
    with pytest.raises(QuantizationError):
        FixedPoint(bit_width=32, fraction_bits=8).encode(bad, value_bound=1.0)


def test_encode_refuses_a_bound_the_width_cannot_hold():
    with pytest.raises(QuantizationError, match="needs more than"):
        FixedPoint(bit_width=8, fraction_bits=4).encode(np.array([0.0]), value_bound=8.0)  # 128 > 127
    FixedPoint(bit_width=8, fraction_bits=4).encode(np.array([7.9]), value_bound=7.9)


@pytest.mark.parametrize("args", [(0, 1), (65, 1), (8, -1), (8, 53), (True, 1)])
def test_fixed_point_validates(args):
    with pytest.raises(QuantizationError):
        FixedPoint(*args)


def test_decode_refuses_values_out_of_range():
    with pytest.raises(QuantizationError):
        FixedPoint(bit_width=8, fraction_bits=0).decode(np.array([256], np.uint64))
    with pytest.raises(QuantizationError):
        FixedPoint(bit_width=8, fraction_bits=0).decode(np.array([1.0]))


@pytest.mark.parametrize("n, bound, f", [(1, 1.0, 0), (3, 1.0, 0), (20, 1.0, 16), (50, 0.3, 3), (100, 12.5, 10),
                                          (7, 0.3125, 3), (1000, 1e-3, 20), (2**20, 1.0, 30)])
def test_overflow_bound_is_tight(n, bound, f):
    fp = fixed_point_for(max_summands=n, value_bound=bound, fraction_bits=f)
    worst = round(bound * 2**f)
    # The smallest b whose signed range [-2^(b-1), 2^(b-1) - 1] holds +-n*worst (exact integers).
    assert n * worst <= 2 ** (fp.bit_width - 1) - 1
    assert fp.bit_width == 1 or n * worst > 2 ** (fp.bit_width - 2) - 1
    # Every value within the bound encodes to magnitude <= worst (rounding included).
    edge = np.array([bound, -bound, np.nextafter(bound, 0), -np.nextafter(bound, 0)])
    encoded = fp.decode(fp.encode(edge, value_bound=bound)) * 2**f
    assert np.all(np.abs(encoded) <= worst)
    # The worst sums, both signs, decode exactly at b bits...
    one = fp.encode(np.array([bound, -bound]), value_bound=bound)
    total = np.zeros(2, np.uint64)
    if n <= 1000:
        for _ in range(n):
            total = fp.add(total, one)
    else:
        total = ((one.astype(object) * n) % 2**fp.bit_width).astype(np.uint64)
    assert fp.decode(total).tolist() == [n * worst / 2**f, -n * worst / 2**f]
    # ...and the positive one wraps at b - 1 bits.
    if fp.bit_width > 1:
        narrow = FixedPoint(bit_width=fp.bit_width - 1, fraction_bits=f)
        wrapped = np.array([(n * worst) % 2**narrow.bit_width], np.uint64)
        assert narrow.decode(wrapped)[0] != n * worst / 2**f


def test_fixed_point_for_refuses_more_than_64_bits():
    with pytest.raises(QuantizationError, match="more than 64"):
        fixed_point_for(max_summands=2**20, value_bound=2.0**20, fraction_bits=30)
    with pytest.raises(QuantizationError):
        fixed_point_for(max_summands=0, value_bound=1.0, fraction_bits=8)
    with pytest.raises(QuantizationError):
        fixed_point_for(max_summands=2, value_bound=float("inf"), fraction_bits=8)


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 13, 26, 33, 63, 64])
def test_pack_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    for count in (0, 1, 5, 1001):
        values = rng.integers(0, 2**bits, count, dtype=np.uint64, endpoint=False) if bits < 64 \
            else rng.integers(0, 2**64 - 1, count, dtype=np.uint64)
        data = pack(values, bits)
        assert len(data) == packed_size(count, bits) == math.ceil(count * bits / 8)
        assert np.array_equal(unpack(data, bits, count), values)


def test_pack_layout_is_little_endian_bits():
    assert pack(np.array([1, 2, 3], np.uint64), 2) == bytes([0b111001])
    assert pack(np.array([0x0102], np.uint64), 16) == b"\x02\x01"


def test_pack_and_unpack_refusals():
    with pytest.raises(QuantizationError, match=">= 2\\^4"):
        pack(np.array([16], np.uint64), 4)
    with pytest.raises(QuantizationError):
        pack(np.array([1], np.int64), 4)
    data = pack(np.array([1, 2, 3], np.uint64), 5)  # 15 bits: one padding bit
    with pytest.raises(QuantizationError, match="expected 2"):
        unpack(data + b"\x00", 5, 3)
    with pytest.raises(QuantizationError, match="expected 2"):
        unpack(data[:1], 5, 3)
    with pytest.raises(QuantizationError, match="padding"):
        unpack(data[:1] + bytes([data[1] | 0x80]), 5, 3)
    with pytest.raises(QuantizationError):
        unpack(data, 65, 3)
    assert issubclass(QuantizationError, SecAggError)


def test_pack_is_fast():
    values = np.random.default_rng(0).integers(0, 2**40, 60_000, dtype=np.uint64)
    pack(values, 40)
    start = time.perf_counter()
    data = pack(values, 40)
    back = unpack(data, 40, 60_000)
    assert time.perf_counter() - start < 0.1
    assert np.array_equal(back, values)
