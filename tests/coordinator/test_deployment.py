"""Real rounds over real processes: `fedrec serve` plus device fleets (TensorFlow blocked) on loopback.

One deployment runs to completion while a third of its devices vanish after sending their masked
input, and while a hostile client (enrolled, and not) sends replays, forged signatures, fuzzed
bytes, wrong phases and oversized messages. The tests then read what happened: rounds, model
quality, the coordinator's audit capture against the devices' own plaintext uploads, refusals.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import urllib.request

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coordinator.capture import read_capture
from coordinator.config import DeploymentConfig
from coordinator.state_store import StateStore
from edge_client.identity import IdentityStore
from edge_client.round_client import enroll, open_channel
from protocol.generated import rounds_pb2, rounds_pb2_grpc
from protocol.signing import SIGNATURE_METADATA, sign_request
from protocol.tensors import MAX_MESSAGE_BYTES
from secagg.quantize import FixedPoint, unpack
from tests.coordinator.deployment import Deployment

pytestmark = pytest.mark.e2e  # a real coordinator and device fleets, five rounds

ROUNDS = 5
COHORT = 6


@pytest.fixture(scope="module")
def synthetic_split():
    from tff_pipeline.data import load_dataset

    return load_dataset("synthetic", seed=0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_split):
    """A deployment of 12 devices (4 of which always vanish after masking) run to its end under attack."""
    from tff_pipeline.config import SimulationConfig

    root = tmp_path_factory.mktemp("deployment")
    training = SimulationConfig(rounds=ROUNDS, clients_per_round=COHORT, baselines=False, seed=0)
    deployment = DeploymentConfig(selection="uniform", over_selection=0.0, min_reporters=4, selection_timeout_s=20,
                                  phase_timeout_s=15, report_window_s=20, straggler_grace_s=1.0, export_every=2)
    run = Deployment(root, synthetic_split, training=training, deployment=deployment,
                     fleets=[(8, "ideal"), (4, "drop-after-masking")]).start()
    attacks: dict[str, object] = {}
    attacker = threading.Thread(target=lambda: attacks.update(asyncio.run(_attack(run))), daemon=True)
    try:
        run.wait_until(lambda s: s.devices_enrolled >= 12, timeout_s=180, what="the devices to enroll")
        attacker.start()
        final = run.wait_until(lambda s: s.phase == "finished", timeout_s=420, what="training to finish")
        attacker.join(timeout=120)
        metrics = urllib.request.urlopen(f"http://{run.metrics_address}/metrics", timeout=10).read().decode()
        yield run, final, attacks, metrics
    finally:
        run.stop()


def test_rounds_complete_and_the_model_improves(finished, synthetic_split):
    from tff_pipeline import model, personalized_eval
    from tff_pipeline.config import SimulationConfig

    run, final, _, _ = finished
    assert final.rounds_completed == ROUNDS and final.params_version == ROUNDS
    store = StateStore(run.state_dir)
    try:
        params = store.latest_checkpoint().arrays["params"]
        rounds = store.rounds()
    finally:
        store.close()
    completed = [r for r in rounds if r.status == "completed"]
    assert len(completed) == ROUNDS
    config = SimulationConfig(seed=0).model_config(synthetic_split.num_items)
    before = personalized_eval.evaluate_global_model(model.initial_global_params(config, seed=0), synthetic_split, config)
    after = personalized_eval.evaluate_global_model(model.GlobalParams(*params), synthetic_split, config)
    # Five rounds of six devices: small steps, but both heads move the right way.
    assert after["rmse"] < before["rmse"] and after["hr@10"] > before["hr@10"] + 0.02, (before, after)


def test_devices_vanishing_after_masking_are_recovered_and_the_sum_is_exact(finished):
    """Every revealed sum equals the sum of the reporters' own plaintext uploads, bit for bit
    (mod 2^b), although some reporters were gone before the unmasking phase."""
    run, final, _, _ = finished
    records = read_capture(run.capture_path)
    rounds = {r["round_id"]: r["participants"] for r in records if r["kind"] == "round"}
    labels = _labels(run)
    revealed = [r for r in records if r["kind"] == "revealed"]
    assert len(revealed) >= ROUNDS
    vanished_reporters = 0
    for record in revealed:
        participants = rounds[record["round_id"]]
        fixed_point = FixedPoint(bit_width=record["bit_width"], fraction_bits=run.deployment.fraction_bits)
        total = np.frombuffer(base64.b64decode(record["total"]), "<u8")
        expected = np.zeros_like(total)
        for index in record["reporters"]:
            label = labels[participants[index]]
            own = np.load(_device_dir(run, label) / "uploads" / f"{record['round_id']}.npy")
            expected = fixed_point.add(expected, own)
            vanished_reporters += _fleet_of(run, label) == 1
        assert np.array_equal(total, expected)
    assert vanished_reporters > 0  # some rounds really did recover devices that left after masking


def test_the_coordinator_cannot_decode_any_individual_update(finished):
    """Everything the coordinator received, checked against each device's plaintext upload: no
    masked vector equals it or correlates with it, and no request holds its bytes."""
    run, _, _, _ = finished
    records = read_capture(run.capture_path)
    bit_widths = {r["round_id"]: r["bit_width"] for r in records if r["kind"] == "revealed"}
    labels = _labels(run)
    requests = [(r["method"], base64.b64decode(r["bytes"])) for r in records if r["kind"] == "request"]
    masked = [rounds_pb2.MaskedInputRequest.FromString(body) for method, body in requests
              if method == "SubmitMaskedInput"]
    checked = 0
    for message in masked:
        round_id = message.header.round_id.hex()
        if round_id not in bit_widths:
            continue
        upload = _device_dir(run, labels[message.header.device_id]) / "uploads" / f"{round_id}.npy"
        own = np.load(upload)
        bits = bit_widths[round_id]
        seen = unpack(message.masked_vector, bits, own.size)
        fixed_point = FixedPoint(bit_width=bits, fraction_bits=run.deployment.fraction_bits)
        plain, decoded = fixed_point.decode(own), fixed_point.decode(seen)
        assert not np.array_equal(seen, own)
        assert abs(np.corrcoef(plain, decoded)[0, 1]) < 0.1
        # The masked values are spread over the whole range, as uniform noise is.
        assert np.mean(seen >= (1 << (bits - 1))) == pytest.approx(0.5, abs=0.05)
        checked += 1
    assert checked >= ROUNDS * 4
    blob = b"".join(body for _, body in requests)
    for label in list(labels.values())[:6]:
        for upload in (_device_dir(run, label) / "uploads").glob("*.npy"):
            own = np.load(upload)
            nonzero = np.flatnonzero(own)[:4]
            for index in nonzero:  # no 8-byte run of the plaintext appears anywhere in the requests
                assert own[index:index + 1].astype("<u8").tobytes() not in blob


def test_hostile_messages_are_refused_counted_and_harmless(finished):
    run, final, attacks, metrics = finished
    assert attacks.get("error") is None, attacks.get("error")
    expected = {"unknown": grpc.StatusCode.UNAUTHENTICATED, "forged": grpc.StatusCode.UNAUTHENTICATED,
                "replay": grpc.StatusCode.PERMISSION_DENIED, "stale_round": grpc.StatusCode.FAILED_PRECONDITION,
                "bad_token": grpc.StatusCode.PERMISSION_DENIED, "oversized": grpc.StatusCode.RESOURCE_EXHAUSTED}
    for name, code in expected.items():
        assert attacks[name] == code, (name, attacks[name])
    assert attacks["fuzzed"] > 0 and attacks["fuzzed_answered_ok"] == 0
    refused = dict(final.refused)
    for reason in ("unknown_device", "identity_mismatch", "replay", "stale_round", "bad_token"):
        assert refused[reason] >= 1, (reason, refused)
    # The honest devices kept training through all of it.
    assert final.rounds_completed == ROUNDS
    assert 'fedrec_messages_refused_total{reason="replay"}' in metrics
    assert f"fedrec_rounds_completed_total {float(ROUNDS)}" in metrics


def test_device_processes_never_imported_tensorflow(finished):
    run, _, _, _ = finished
    for index in range(2):
        log = run.log_tail(f"fleet-{index}.log", lines=10_000)
        assert "must not be imported on a device" not in log
        assert "Traceback" not in log


# the hostile client

async def _attack(run: Deployment) -> dict[str, object]:
    """Misbehave in every way the coordinator must refuse; returns the status code each got."""
    results: dict[str, object] = {}
    try:
        store = IdentityStore(run.root / "attacker")
        identity = await enroll(run.address, run.ca_pem, run.enroll_token, store, label="attacker")
        key = ec.generate_private_key(ec.SECP256R1())
        from cryptography.hazmat.primitives import serialization

        own_key = serialization.load_pem_private_key(identity.key_pem, password=None)
        async with open_channel(run.address, run.ca_pem) as channel:
            stub = rounds_pb2_grpc.CoordinatorStub(channel)

            async def code_of(call) -> grpc.StatusCode:
                try:
                    await call
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            def header(**fields) -> rounds_pb2.Header:
                return rounds_pb2.Header(device_id=fields.get("device_id", identity.device_id),
                                         nonce=fields.get("nonce", os.urandom(16)), round_id=fields.get("round_id", b""))

            def signed(method: str, request, signer=own_key):
                return ((SIGNATURE_METADATA, sign_request(signer, method, request)),)

            bad_token = rounds_pb2.EnrollRequest(token="not-the-token", certificate_request=store.certificate_request())
            results["bad_token"] = await code_of(stub.Enroll(bad_token))
            stranger = rounds_pb2.CheckInRequest(header=header(device_id="d-0000000000000000"), num_examples=3)
            results["unknown"] = await code_of(stub.CheckIn(stranger, metadata=signed("CheckIn", stranger, key)))
            forged = rounds_pb2.CheckInRequest(header=header(), num_examples=3)
            results["forged"] = await code_of(stub.CheckIn(forged, metadata=signed("CheckIn", forged, key)))
            honest = rounds_pb2.CheckInRequest(header=header(), model_version="", num_examples=3)
            await code_of(stub.CheckIn(honest, metadata=signed("CheckIn", honest)))
            results["replay"] = await code_of(stub.CheckIn(honest, metadata=signed("CheckIn", honest)))
            stale = rounds_pb2.AdvertiseKeysRequest(header=header(round_id=os.urandom(16)),
                                                    channel_public_key=os.urandom(32), mask_public_key=os.urandom(32))
            results["stale_round"] = await code_of(stub.AdvertiseKeys(stale, metadata=signed("AdvertiseKeys", stale)))
            huge = rounds_pb2.MaskedInputRequest(header=header(), masked_vector=b"\0" * (MAX_MESSAGE_BYTES + 1024))
            roomy = grpc.aio.secure_channel(run.address, grpc.ssl_channel_credentials(run.ca_pem), options=[
                ("grpc.ssl_target_name_override", "fedrec-coordinator"),
                ("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)])
            async with roomy:  # a client that ignores the limit: the coordinator must refuse it itself
                results["oversized"] = await code_of(rounds_pb2_grpc.CoordinatorStub(roomy).SubmitMaskedInput(huge))
            rng = np.random.default_rng(0)
            fuzzed, answered_ok = 0, 0
            for method in ("CheckIn", "AdvertiseKeys", "ShareKeys", "SubmitMaskedInput", "Unmask", "GetModel"):
                raw = channel.unary_unary(f"/fedrec.rounds.v1.Coordinator/{method}")
                for _ in range(15):
                    payload = rng.bytes(int(rng.integers(0, 300)))
                    fuzzed += 1
                    answered_ok += await code_of(raw(payload, timeout=10)) == grpc.StatusCode.OK
            results["fuzzed"], results["fuzzed_answered_ok"] = fuzzed, answered_ok
    except Exception as error:  # noqa: BLE001 - reported by the test, not swallowed
        results["error"] = repr(error)
    return results


# helpers

def _labels(run: Deployment) -> dict[str, str]:
    store = StateStore(run.state_dir)
    try:
        return store.devices()
    finally:
        store.close()


def _device_dir(run: Deployment, label: str):
    for fleet in run.fleets:
        if (fleet.root / label).is_dir():
            return fleet.root / label
    raise AssertionError(f"no device folder for {label}")


def _fleet_of(run: Deployment, label: str) -> int:
    for index, fleet in enumerate(run.fleets):
        if (fleet.root / label).is_dir():
            return index
    return -1
