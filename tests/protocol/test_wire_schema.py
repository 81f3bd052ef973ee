"""The wire schema: generated code matches the .proto; tensors and upload vectors are checked on arrival."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import codegen
from protocol.generated import rounds_pb2
from protocol.tensors import WireError, from_wire, to_wire
from protocol.upload import UploadError, UploadLayout


def test_the_committed_grpc_code_is_what_the_proto_generates():
    assert codegen.main(["--check"]) == 0


def test_a_tensor_round_trips_and_is_refused_when_it_lies_about_itself():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(from_wire(to_wire(array), expected_shape=(3, 4), what="t"), array)
    with pytest.raises(WireError, match="shape"):
        from_wire(to_wire(array), expected_shape=(4, 3), what="t")
    short = rounds_pb2.Tensor(shape=[3, 4], float32_le=array.tobytes()[:-4])
    with pytest.raises(WireError, match="44 bytes, expected 48"):
        from_wire(short, expected_shape=(3, 4), what="t")
    bad = array.copy()
    bad[1, 1] = np.nan
    with pytest.raises(WireError, match="non-finite"):
        from_wire(to_wire(bad), expected_shape=(3, 4), what="t")


def test_the_upload_vector_weights_the_rating_head_and_not_the_ranking_step():
    layout = UploadLayout(num_items=3, dim=2)
    parts = (np.ones((3, 2)), np.full(3, 2.0), np.array(3.0), np.full((3, 2), 5.0))
    vector = layout.pack(parts, weight=4.0, unclipped=True)
    assert vector.shape == (layout.length,) == (3 * 2 + 3 + 1 + 3 * 2 + 2,)
    unpacked, weight, unclipped = layout.unpack(vector)
    assert weight == 4.0 and unclipped == 1.0
    assert np.all(unpacked[0] == 4.0) and np.all(unpacked[1] == 8.0) and unpacked[2] == 12.0
    assert np.all(unpacked[3] == 5.0)  # per device: never multiplied by the weight
    with pytest.raises(UploadError, match="item_bias_delta"):
        layout.pack((parts[0], np.ones(4), parts[2], parts[3]), weight=1.0, unclipped=False)
    with pytest.raises(UploadError, match="non-finite"):
        layout.pack((parts[0], parts[1], np.array(np.inf), parts[3]), weight=1.0, unclipped=False)


def test_a_scalar_stays_a_scalar():
    tensor = to_wire(np.float32(3.5))
    assert list(tensor.shape) == [] and from_wire(tensor, expected_shape=(), what="mean") == np.float32(3.5)
