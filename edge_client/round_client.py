"""The device's side of real rounds: enroll, check in, take part, adopt new models.

One `RoundClient` per device. It always dials out (TLS to the coordinator's pinned CA; every
request signed with the device's enrolled key, `protocol.signing`), checks in
when it is eligible, and when selected runs one round:

    task -> AdvertiseKeys -> ShareKeys -> local work (LiteRT client_update, clip)
         -> SubmitMaskedInput (the one masked vector) -> Unmask (shares of its neighbours' secrets)

The update is computed from the device's own stored ratings through `Device.compute_update`,
which leaves the installed model and the user's parameters as they were; it leaves the device
only as a vector masked by secure aggregation (`secagg`). When the coordinator
publishes a newer package the device installs it (`Device.install`: verified, and the user's
personalization kept or refit). Errors of one round never end the loop: a refused or abandoned
round is logged and the device checks in again when told to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_client.device import Device, usable_ratings
from edge_client.errors import DeviceError, EdgeError
from edge_client.identity import DeviceIdentity, IdentityStore
from edge_client.litert_model import GlobalWeights
from edge_client.process import sleep_or_stop
from edge_client.profiles import DeviceProfile
from protocol import distributed_dp
from protocol.files import read_bounded
from protocol.generated import rounds_pb2, rounds_pb2_grpc
from protocol.manifest import MANIFEST_FILE, MODEL_FILE
from protocol.messages import one_line
from protocol.signing import SIGNATURE_METADATA, sign_request
from protocol.tensors import MAX_MESSAGE_BYTES, WireError, from_wire
from protocol.upload import UploadLayout
from secagg.errors import SecAggError
from secagg.params import SecAggParams
from secagg.participant import SecAggParticipant
from secagg.quantize import FixedPoint, fixed_point_for, pack

log = logging.getLogger("fedrec.device")
SERVER_NAME = "fedrec-coordinator"  # the name in the coordinator's certificate (coordinator.tls)
CALL_TIMEOUT_S = 600.0
MAX_CA_BYTES = 1 << 20
# Codes after which asking again may get an answer (the coordinator is starting, restarting, busy).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL,
                       grpc.StatusCode.UNKNOWN})
# gRPC's text for a failed TLS handshake ends with the X.509 verification result when it is not
# "ok": "...:OPENSSL_internal:BAD_SIGNATURE: certificate signature failure" for a server certificate
# our CA did not sign, "Invalid certificate verification context" when no verification ran (the
# handshake failed before it: not a TLS server, ...).
_HANDSHAKE = re.compile(r"handshake failed", re.IGNORECASE)
_NOT_VERIFIED = "Invalid certificate verification context"  # BoringSSL's X509_V_ERR_INVALID_CALL
_VERIFY_ERROR = re.compile(r"SSL_ERROR_SSL: error:[0-9a-fA-F]+:[^:]*:[^:]*:(?P<code>[A-Z0-9_]+)(?:: (?P<why>[^;\n]+))?")
_WAIT_REASONS = (("connection refused", "connection refused"), ("dns resolution failed", "its name does not resolve"),
                 ("connection reset", "connection reset"), ("network is unreachable", "network unreachable"),
                 ("no route to host", "no route to host"), ("timed out", "connection timed out"),
                 ("socket closed", "connection closed"), ("deadline exceeded", "no answer in time"))


class JoinRefused(DeviceError):
    """A refusal that asking again cannot change (a wrong token, a CA that does not match): the
    device stops and says why, instead of retrying forever."""


def read_ca_certificate(path: Path | str) -> bytes:
    """The CA certificates in the file (`check_ca_pem`), refused naming the file: gRPC would take
    anything and fail every connection with no word about the file."""
    ca_pem = read_bounded(path, max_bytes=MAX_CA_BYTES, what="CA certificate")
    return check_ca_pem(ca_pem, str(path))


def check_ca_pem(ca_pem: bytes, source: str) -> bytes:
    """The certificates in `ca_pem`, re-encoded as plain PEM; `source` names it in the refusal.

    Re-encoded because gRPC's TLS library reads less than `cryptography` does (a byte-order mark,
    lone CR line ends, leading white space): given such a file as it is, every connection would
    fail with "empty address list". A coordinator's own ca.pem comes out byte for byte the same."""
    try:
        certificates = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise DeviceError(f"{source}: not a PEM certificate; give the coordinator's CA (its state folder's "
                          "tls/ca.pem)") from None
    return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in certificates)


def connection_trouble(error: grpc.aio.AioRpcError, *, address: str, ca_source: str = "", call: str = "") -> str:
    """Why the coordinator at `address` gave no answer, to wait on; raises JoinRefused when
    waiting cannot help (its certificate does not verify with our CA, or it refused `call`)."""
    code, details = error.code(), error.details() or ""
    verify = _verify_failure(details)
    if verify is not None:
        ca = f"the CA certificate {ca_source}" if ca_source else "the CA certificate"
        raise JoinRefused(f"{ca} does not match the coordinator at {address} (TLS: {verify}); give that "
                          "coordinator's CA (its state folder's tls/ca.pem)")
    if code in RETRYABLE:
        return _wait_reason(code, details)
    if call == "Enroll" and code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        raise JoinRefused(f"the coordinator at {address} refused the enrollment token ({one_line(details)})")
    what = f" {call}" if call else ""
    raise JoinRefused(f"the coordinator at {address} refused{what}: {code.name}: {one_line(details)}")


def _verify_failure(details: str) -> str | None:
    """The certificate verification error in a failed TLS handshake's text, or None."""
    if not _HANDSHAKE.search(details):
        return None
    match = _VERIFY_ERROR.search(details)
    if match is None:
        return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in details else None
    why = (match["why"] or "").strip()
    if why and why != _NOT_VERIFIED:
        return f"certificate verify failed: {why}"
    return "certificate verify failed" if match["code"] == "CERTIFICATE_VERIFY_FAILED" else None


def _wait_reason(code: grpc.StatusCode, details: str) -> str:
    """A few words for a retryable failure ("connection refused"), else gRPC's own text."""
    lowered = details.lower()
    if _HANDSHAKE.search(details):
        match = _VERIFY_ERROR.search(details)
        return f"TLS handshake failed: {match['code']}" if match else "TLS handshake failed"
    for needle, reason in _WAIT_REASONS:
        if needle in lowered:
            return reason
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    text = one_line(details)
    return f"{code.name}: {text[:200]}" if text else code.name


def channel_options() -> list[tuple[str, object]]:
    return [("grpc.ssl_target_name_override", SERVER_NAME),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0)]


def open_channel(address: str, ca_pem: bytes) -> grpc.aio.Channel:
    """A TLS channel that trusts only the coordinator's CA."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, credentials, options=channel_options())


async def enroll(address: str, ca_pem: bytes, token: str, store: IdentityStore, *, label: str = "") -> DeviceIdentity:
    """This device's identity: the stored one, or a new certificate from the coordinator."""
    identity = store.load(ca_pem)
    if identity is not None:
        return identity
    async with open_channel(address, ca_pem) as channel:
        stub = rounds_pb2_grpc.CoordinatorStub(channel)
        response = await stub.Enroll(rounds_pb2.EnrollRequest(
            token=token, certificate_request=store.certificate_request(), label=label), timeout=60)
    return store.save(device_id=response.device_id, certificate_pem=response.certificate, ca_pem=ca_pem)


@dataclasses.dataclass
class ClientStats:
    checkins: int = 0
    rounds_selected: int = 0
    rounds_reported: int = 0
    rounds_completed: int = 0
    rounds_abandoned: int = 0
    dropped_on_purpose: int = 0
    models_installed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    errors: int = 0


class RoundEnded(EdgeError):
    """The round ended for this device (abandoned, refused, or the device dropped out on purpose)."""

    def __init__(self, message: str, retry_after_ms: int = 1000) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class RoundClient:
    """The loop of one device; `run` until `stop` is set."""

    def __init__(self, device: Device, stub: rounds_pb2_grpc.CoordinatorStub, identity: DeviceIdentity, *,
                 profile: DeviceProfile = DeviceProfile(), seed: int | None = None,
                 pending_ratings: Path | None = None, record_uploads: Path | None = None, host: str = "",
                 on_unavailable: Callable[[grpc.aio.AioRpcError], None] | None = None,
                 on_answer: Callable[[], None] | None = None) -> None:
        self.device, self.stub, self.identity, self.profile = device, stub, identity, profile
        # Connection news for whoever runs the device (a "waiting for the coordinator" line); a
        # hook may raise (JoinRefused: the coordinator's certificate changed) to end the loop.
        self.on_unavailable, self.on_answer = on_unavailable, on_answer
        self.host = host  # a simulated edge pod's name (`CheckInRequest.host`); "" otherwise
        self.rng = np.random.default_rng(seed)
        self.stats = ClientStats()
        self.pending_ratings = pending_ratings
        # Audits and tests: keep this device's own plaintext (encoded) uploads, one file per round.
        self.record_uploads = record_uploads
        self._round_id = b""
        key = serialization.load_pem_private_key(identity.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DeviceError("the device's identity key is not an EC key")
        self._key = key

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            wait = self.profile.seconds_until_online(time.time())
            if wait > 0:
                await sleep_or_stop(stop, wait)
                continue
            try:
                retry_ms = await self._check_in_once()
                backoff = 0.5
                if self.on_answer is not None:
                    self.on_answer()
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and self.on_unavailable is not None:
                    self.on_unavailable(error)
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                    grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
                    retry_ms = int(1000 * backoff * (1 + self.rng.random()))
                    backoff = min(backoff * 2, 8.0)  # the coordinator is restarting, or gone for now
                else:
                    self.stats.errors += 1
                    log.warning("%s: %s: %s", self.identity.device_id, error.code().name, error.details())
                    retry_ms = 2000
            except (DeviceError, SecAggError, WireError) as error:
                self.stats.errors += 1
                log.warning("%s: %s", self.identity.device_id, error)
                retry_ms = 2000
            except Exception:
                self.stats.errors += 1
                log.exception("%s: unexpected error; checking in again later", self.identity.device_id)
                retry_ms = 5000
            await sleep_or_stop(stop, retry_ms / 1000)

    async def _check_in_once(self) -> int:
        """One check-in (and round, if selected); returns how long to wait before the next."""
        installed = self.device.store.active_model() or ""
        examples = self._num_examples() if installed else 0
        response = await self._call("CheckIn", rounds_pb2.CheckInRequest(
            header=self._header(), model_version=installed, num_examples=examples, host=self.host))
        self.stats.checkins += 1
        latest = response.latest_model_version
        if response.HasField("task"):
            # The coordinator admitted the installed package (any package of the run computes the
            # same local work; the task carries the current global weights): take part first,
            # then adopt a newer package on the next check-in.
            self.stats.rounds_selected += 1
            try:
                return await self._take_part(response.task)
            except RoundEnded as ended:
                log.info("%s: round ended: %s", self.identity.device_id, ended)
                return ended.retry_after_ms
            finally:
                self._round_id = b""
        if latest and latest != installed:
            await self._adopt(latest)
            return 0
        return response.retry.retry_after_ms

    # the round

    async def _take_part(self, task: rounds_pb2.RoundTask) -> int:
        """Run one round; returns when to check in again (the coordinator's pace steering)."""
        self._round_id = task.round_id
        model = self.device.model
        num_items, dim = model.num_items, model.dim
        shapes = ((num_items, dim), (num_items,), ())
        if len(task.global_weights) != 3:
            raise WireError(f"the task holds {len(task.global_weights)} global tensors, expected 3")
        weights = GlobalWeights(*(from_wire(t, expected_shape=s, what=f"global tensor {i}")
                                  for i, (t, s) in enumerate(zip(task.global_weights, shapes))))
        layout = UploadLayout(num_items, dim)
        distributed = _distributed_dp(task, layout)
        params = _secagg_params(task, layout, distributed)
        participant = SecAggParticipant(params, task.secagg.index)
        drop_at = self.profile.drop_point(self.rng)

        self._maybe_drop(drop_at, "after_task")
        channel_key, mask_key = participant.advertise_keys()
        keys = await self._call("AdvertiseKeys", rounds_pb2.AdvertiseKeysRequest(
            header=self._header(), channel_public_key=channel_key, mask_public_key=mask_key))
        self._check_outcome(keys.outcome)
        self._maybe_drop(drop_at, "after_advertise")
        ciphertexts = participant.share_keys({k.index: (k.channel_public_key, k.mask_public_key)
                                              for k in keys.neighbours})
        shared = await self._call("ShareKeys", rounds_pb2.ShareKeysRequest(
            header=self._header(), shares=[rounds_pb2.EncryptedShare(index=i, ciphertext=c)
                                           for i, c in sorted(ciphertexts.items())]))
        self._check_outcome(shared.outcome)
        self._maybe_drop(drop_at, "after_share")

        started = time.perf_counter()
        # On the loop's thread: the device's SQLite store belongs to it (and the work is milliseconds).
        if distributed is None:
            vector = self._upload_vector(task, weights, layout, params.fixed_point)
            encoded = plaintext = params.fixed_point.encode(vector, value_bound=task.secagg.value_bound)
        else:  # clipped, rounded and noised with this device's own share (`protocol.distributed_dp`)
            spec, rotation_seed = distributed
            update = self.device.compute_update(weights, spec.l2_clip, ranking_scale=task.ranking_scale)
            model_values = layout.pack(update.deltas, weight=1.0, unclipped=False)[:layout.num_model_values]
            upload = distributed_dp.encode(model_values, spec, rotation_seed)
            encoded, plaintext = upload.elements, upload.rounded
        elapsed = time.perf_counter() - started
        await asyncio.sleep(elapsed * (self.profile.compute_slowdown - 1))
        if self.record_uploads is not None:  # before any noise (distributed DP: the rounded integers)
            self.record_uploads.mkdir(parents=True, exist_ok=True)
            np.save(self.record_uploads / f"{task.round_id.hex()}.npy", plaintext)
        masked = participant.masked_input(encoded, {s.index: s.ciphertext for s in shared.shares})
        payload = pack(masked, params.fixed_point.bit_width)
        if math.isfinite(self.profile.upload_bytes_per_s):
            await asyncio.sleep(len(payload) / self.profile.upload_bytes_per_s)
        request = await self._call("SubmitMaskedInput", rounds_pb2.MaskedInputRequest(
            header=self._header(), masked_vector=payload))
        self._check_outcome(request.outcome)
        self.stats.rounds_reported += 1
        self._maybe_drop(drop_at, "after_masked_input")
        revealed = participant.unmask(list(request.survivors), list(request.dropped))
        done = await self._call("Unmask", rounds_pb2.UnmaskRequest(
            header=self._header(), shares=[rounds_pb2.RevealedShare(index=i, share=s)
                                           for i, s in sorted(revealed.items())]))
        self._check_outcome(done.outcome)
        self.stats.rounds_completed += 1
        return done.outcome.retry_after_ms

    def _upload_vector(self, task: rounds_pb2.RoundTask, weights: GlobalWeights, layout: UploadLayout,
                       fixed_point: FixedPoint) -> np.ndarray:
        """The float vector this device contributes (`protocol.upload`), clipped so that it stays
        within the clip after fixed-point rounding too."""
        rounding = math.sqrt(layout.num_model_values) * 2.0 ** -(fixed_point.fraction_bits + 1)
        clip = task.clip_norm - rounding
        if not clip > 0:
            raise WireError(f"clip_norm {task.clip_norm} is too small for the fixed-point encoding")
        update = self.device.compute_update(weights, clip, ranking_scale=task.ranking_scale)
        if task.private:
            weight = 1.0
            unclipped = update.norm_before_clip <= task.clip_norm
        else:
            weight = min(update.num_examples, task.max_weight) / task.max_weight
            unclipped = False
        return layout.pack(update.deltas, weight=weight, unclipped=unclipped)

    # models

    async def _adopt(self, model_version: str) -> None:
        package = await self._call("GetModel", rounds_pb2.GetModelRequest(
            header=self._header(), model_version=model_version))
        with tempfile.TemporaryDirectory(dir=self.device.device_dir, prefix=".download-") as scratch:
            folder = Path(scratch) / "package"
            folder.mkdir()
            (folder / MANIFEST_FILE).write_bytes(package.manifest_json)
            (folder / MODEL_FILE).write_bytes(package.model_tflite)
            report = self.device.install(folder)
        self.stats.models_installed += 1
        log.info("%s: installed model %s", self.identity.device_id, report.model_version)
        if self.pending_ratings is not None and self.pending_ratings.exists() and not self.device.store.ratings():
            self.device.import_ratings(self.pending_ratings)

    def _num_examples(self) -> int:
        try:
            usable = usable_ratings(self.device.store.ratings(), self.device.model.manifest)
        except DeviceError:
            return 0
        return len(usable.dense_ids)

    # plumbing

    def _header(self) -> rounds_pb2.Header:
        return rounds_pb2.Header(device_id=self.identity.device_id, nonce=os.urandom(16), round_id=self._round_id)

    async def _call(self, method: str, request):
        """Sign and send one request (`method` is the RPC's name, part of what is signed)."""
        if self.profile.latency_ms:
            await asyncio.sleep(self.profile.latency_ms / 1000)
        self.stats.bytes_up += request.ByteSize()
        signature = sign_request(self._key, method, request)
        response = await getattr(self.stub, method)(request, timeout=CALL_TIMEOUT_S,
                                                     metadata=((SIGNATURE_METADATA, signature),))
        self.stats.bytes_down += response.ByteSize()
        return response

    def _check_outcome(self, outcome: rounds_pb2.PhaseOutcome) -> None:
        if outcome.abandoned:
            self.stats.rounds_abandoned += 1
            raise RoundEnded(f"abandoned: {outcome.reason}", outcome.retry_after_ms)

    def _maybe_drop(self, drop_at: str | None, point: str) -> None:
        if drop_at == point:
            self.stats.dropped_on_purpose += 1
            raise RoundEnded(f"dropped out on purpose ({point}, profile)")


def _distributed_dp(task: rounds_pb2.RoundTask,
                    layout: UploadLayout) -> tuple[distributed_dp.DistributedDpSpec, bytes] | None:
    """A distributed-DP round's spec and rotation seed, refused unless they fit this model and task."""
    if not task.HasField("distributed_dp"):
        return None
    try:
        spec, seed = distributed_dp.from_wire(task.distributed_dp)
    except distributed_dp.DistributedDpError as error:
        raise WireError(f"the task's distributed DP does not fit: {error}") from None
    if spec.dim != layout.num_model_values:
        raise WireError(f"the task's distributed DP dimension {spec.dim} is not this model's {layout.num_model_values}")
    if not task.private or spec.l2_clip != task.clip_norm:
        raise WireError("a distributed-DP task must be private and clip to its own l2_clip")
    config = task.secagg
    if (config.bit_width, config.fraction_bits, config.vector_length) != (spec.bits, 0, spec.padded_dim):
        raise WireError("the task's secure sum does not carry its distributed-DP integers "
                        f"({spec.bits} bits, no fraction, {spec.padded_dim} values)")
    return spec, seed


def _secagg_params(task: rounds_pb2.RoundTask, layout: UploadLayout,
                   distributed: tuple[distributed_dp.DistributedDpSpec, bytes] | None = None) -> SecAggParams:
    """The round's SecAgg parameters, refused unless they fit this device's model and cannot overflow
    (under distributed DP the sum wraps modulo 2^b by design: `_distributed_dp` checked it)."""
    config = task.secagg
    if distributed is not None:
        return SecAggParams(round_id=task.round_id, num_participants=config.num_participants, degree=config.degree,
                            threshold=config.threshold, fixed_point=FixedPoint(config.bit_width, 0),
                            vector_length=config.vector_length, graph_seed=config.graph_seed)
    if config.vector_length != layout.length:
        raise WireError(f"the task's vector length {config.vector_length} is not this model's {layout.length}")
    fixed_point = FixedPoint(bit_width=config.bit_width, fraction_bits=config.fraction_bits)
    needed = fixed_point_for(max_summands=config.num_participants, value_bound=config.value_bound,
                             fraction_bits=config.fraction_bits)
    if needed.bit_width > config.bit_width:
        raise WireError(f"bit width {config.bit_width} cannot hold the sum; {needed.bit_width} needed")
    bound = config.value_bound
    if not (task.clip_norm <= bound and 1.0 <= bound):
        raise WireError("the announced value bound does not cover the clipped, weighted update")
    return SecAggParams(round_id=task.round_id, num_participants=config.num_participants, degree=config.degree,
                        threshold=config.threshold, fixed_point=fixed_point, vector_length=config.vector_length,
                        graph_seed=config.graph_seed)

