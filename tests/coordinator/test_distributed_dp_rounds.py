"""Distributed DP over real rounds: the devices noise their uploads, the coordinator only ever
decodes a noised sum (`fedrec up --capture`), and a device refuses a task that does not fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from protocol import distributed_dp
from protocol.generated import rounds_pb2
from protocol.upload import UploadLayout
from tests.coordinator.commands import fedrec


def _captured(folder):
    rounds = sorted(folder.glob("round_*.npz"))
    return [dict(np.load(path)) for path in rounds]


@pytest.mark.e2e
@pytest.mark.parametrize("dp", ["fixed", "distributed"])
def test_the_coordinator_sees_the_plain_sum_only_under_central_dp(tmp_path, dp):
    """Issue 18, item 4. Central DP: what the coordinator decoded equals the reporters' plaintext
    sum exactly (it adds the noise afterwards: the problem). Distributed DP: it differs by noise
    of the stated sigma (each device's Skellam share, for at least m reporters), so the
    coordinator never held the plain sum."""
    capture = tmp_path / "capture"
    done = fedrec("up", "--dp", dp, "--noise-multiplier", "1", "--devices", "40", "--clients-per-round", "20",
                  "--rounds", "3", "--no-baselines", "--quiet", "--capture", str(capture), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = _captured(capture)
    assert len(rounds) == 3
    for captured in rounds:
        revealed, plaintext, sigma = captured["revealed"], captured["plaintext"], float(captured["sigma"])
        assert revealed.shape == plaintext.shape and np.linalg.norm(plaintext) > 0.5
        if dp == "fixed":
            assert sigma == 0.0 and np.array_equal(revealed, plaintext)
        else:
            # sigma = sqrt(r) z C / sqrt(m), C = 0.5, m = the round goal (half the cohort of 20)
            assert sigma == pytest.approx(0.5 * math.sqrt(int(captured["reporters"]) / 10))
            assert float(np.std(revealed - plaintext)) == pytest.approx(sigma, rel=0.08)
            assert abs(float(np.mean(revealed - plaintext))) < 4 * sigma / math.sqrt(revealed.size)
    # Rated-item inference (item 3): a device's own upload names its rated items (its nonzero rows);
    # the cohort's sum still points at them under central DP, the noised sum no longer does (z = 1).
    rated = json.loads((capture / "rated_items.json").read_text())
    assert rated["dp"] == dp and rated["rounds"] == 3 and rated["own_upload_auc"] > 0.99
    if dp == "fixed":
        assert rated["revealed_sum_auc"] > 0.65
    else:
        assert rated["revealed_sum_auc"] < 0.58
    # What `fedrec audit --captures` reads from the folder: the views the server had, by name.
    from coordinator.round_capture import rated_item_settings

    views = rated_item_settings(capture)
    summed = "secagg_sum_central_dp" if dp == "fixed" else "distributed_dp_sum"
    if dp == "fixed":
        assert set(views) == {"clipped_dp_update", summed}
        assert views["clipped_dp_update"]["uploads_summed"] == 1
    else:
        assert set(views) == {summed}  # nobody but the device sees its own upload
    assert views[summed]["uploads_summed"] == rated["mean_cohort"]
    assert views[summed]["auc"] == rated["revealed_sum_auc"]


def test_the_rated_item_auc_is_the_mann_whitney_statistic():
    from coordinator.round_capture import rated_item_auc

    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    assert rated_item_auc(scores, np.array([0, 2])) == 1.0
    assert rated_item_auc(scores, np.array([1, 3])) == 0.0
    assert rated_item_auc(np.ones(5), np.array([1])) == 0.5  # ties count half
    assert rated_item_auc(scores, np.array([4])) == 0.5  # 0.5 beats two of four


def _task(layout: UploadLayout, **spec_changes) -> rounds_pb2.RoundTask:
    spec = distributed_dp.DistributedDpSpec(bits=18, l2_clip=0.5, noise_multiplier=1.0, clients=20, noise_reporters=10,
                                            dim=layout.num_model_values)
    wire = distributed_dp.to_wire(spec, b"rotation-seed-01")
    for name, value in spec_changes.items():
        setattr(wire, name, value)
    return rounds_pb2.RoundTask(
        round_id=b"r" * 16, private=True, clip_norm=0.5, distributed_dp=wire,
        secagg=rounds_pb2.SecAggConfig(num_participants=20, degree=19, threshold=10, bit_width=18, fraction_bits=0,
                                       vector_length=spec.padded_dim, graph_seed=b"g" * 16))


@pytest.mark.parametrize("change, message", [
    (dict(dim=99), "dimension 99 is not this model's"),
    (dict(l2_clip=0.7), "clip to its own l2_clip"),
    (dict(bits=30), "bits must be an integer in 1..22"),
    (dict(rotation_seed=b"short"), "8..64 bytes"),
    (dict(noise_reporters=0), "noise_reporters must be an integer"),
])
def test_a_device_refuses_a_distributed_dp_task_that_does_not_fit(change, message):
    from edge_client.round_client import WireError, _distributed_dp

    layout = UploadLayout(num_items=30, dim=4)
    assert _distributed_dp(_task(layout), layout) is not None
    with pytest.raises(WireError, match=message):
        _distributed_dp(_task(layout, **change), layout)
    task = _task(layout)
    task.secagg.fraction_bits = 16  # the secure sum must carry the integers as they are
    with pytest.raises(WireError, match="does not carry its distributed-DP integers"):
        _distributed_dp(task, layout)


def test_the_server_divides_a_noised_sum_by_the_cohort_and_charges_the_planned_round():
    from coordinator.server_aggregation import SummedUpdateAggregator
    from tff_pipeline.federated.aggregation import AggregatorConfig, AggregatorKind
    from tff_pipeline.privacy import distributed

    layout = UploadLayout(num_items=30, dim=4)
    spec = distributed_dp.DistributedDpSpec(bits=18, l2_clip=0.5, noise_multiplier=1.0, clients=20,
                                            noise_reporters=10, dim=layout.num_model_values)
    config = AggregatorConfig(kind=AggregatorKind.DP_DISTRIBUTED, noise_multiplier=1.0, clip=0.5,
                              expected_clients_per_round=20.0, part_scale=0.5, noise_reporters=10, bits=18)
    aggregator = SummedUpdateAggregator(config=config, layout=layout, distributed=spec)
    assert aggregator.device_clip(aggregator.initial_state()) == 0.5
    summed = np.zeros(layout.length)
    summed[:layout.num_model_values] = np.arange(layout.num_model_values, dtype=np.float64)
    summed[layout.weight_index] = 12
    result = aggregator.aggregate(aggregator.initial_state(), summed, 12)
    parts, _, _ = layout.unpack(summed)
    np.testing.assert_allclose(result.mean_delta[0], parts[0] / 20, rtol=1e-6)
    np.testing.assert_allclose(result.mean_delta[3], parts[3] / 20 / 0.5, rtol=1e-6)  # the ranking step unscaled
    assert result.dp_event == distributed.round_event(spec)
    summed[layout.weight_index] = 9
    with pytest.raises(ValueError, match="less noise than the 10"):
        aggregator.aggregate(aggregator.initial_state(), summed, 9)
    with pytest.raises(ValueError, match="needs its spec"):
        SummedUpdateAggregator(config=config, layout=layout)
