"""The gRPC servicer: authenticate, refuse what does not belong, translate, delegate.

Round logic lives in `round_run` / `scheduler`; this module only turns messages into their calls.
Every call but Enroll and Status must come from an enrolled device: the header names it and the
request is signed with its enrolled key (`protocol.signing`), with a nonce it never used before.
A refused message is answered with an error status that says why, counted by reason
(`fedrec_messages_refused`), and changes nothing; a message that does not even parse is refused
as "malformed" with INVALID_ARGUMENT (`add_service`), and refusals are logged as one line per
reason every few seconds, not one per message.

Enrollment is bounded (issue 16: one token once minted 500 identities in 17 s, all sharing one
key): the token admits at most `max_devices` active identities (the population plus a margin),
a public key belongs to one identity (enrolling again with it gives that identity a new
certificate, never a second identity), a device enrolling under the label of an active one
replaces it (a device that lost its folder takes its own slot back instead of a new one), and
failed enrollments are rate-limited per peer address (`rate_limit.FailureLimiter`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from coordinator.capture import RequestCapture
from coordinator.errors import Refused
from coordinator.metrics import REFUSAL_REASONS, CoordinatorMetrics
from coordinator.rate_limit import FailureLimiter, LogLimiter, peer_host
from coordinator.round_run import RoundAbandoned
from coordinator.scheduler import ActiveRound, Scheduler
from coordinator.selection import Selected
from coordinator.state_store import StateStore
from coordinator.status import live_status
from coordinator.tls import ServerTls, TlsError
from protocol import distributed_dp
from protocol.files import read_bounded
from protocol.generated import rounds_pb2, rounds_pb2_grpc
from protocol.manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES, MAX_MODEL_BYTES, MODEL_FILE
from protocol.signing import SIGNATURE_METADATA, SignatureError, verify_request
from protocol.tensors import to_wire

log = logging.getLogger("fedrec.coordinator")
Message = TypeVar("Message")
_NONCE_BYTES = 16
_NONCES_KEPT = 512  # per device: far more calls than one device makes per round


class CoordinatorService(rounds_pb2_grpc.CoordinatorServicer):
    def __init__(self, *, store: StateStore, scheduler: Scheduler, metrics: CoordinatorMetrics, tls: ServerTls,
                 enroll_token: str, max_devices: int, capture: RequestCapture | None = None,
                 enroll_limiter: FailureLimiter | None = None) -> None:
        self.store, self.scheduler, self.metrics, self.tls = store, scheduler, metrics, tls
        self.capture = capture
        self.enroll_token = enroll_token
        self.max_devices = max_devices
        self.enroll_limiter = enroll_limiter or FailureLimiter()
        self.log_limiter = LogLimiter()
        self._nonces: dict[str, collections.OrderedDict[bytes, None]] = {}
        self._known: dict[str, str] = store.devices()
        self._keys: dict[str, bytes] = store.public_keys()

    # enrollment and status (no client certificate needed)

    async def Enroll(self, request: rounds_pb2.EnrollRequest, context: Any) -> rounds_pb2.EnrollResponse:
        async def handle() -> rounds_pb2.EnrollResponse:
            peer = peer_host(context.peer() or "unknown")
            wait = self.enroll_limiter.retry_after(peer)
            if wait > 0:
                raise Refused("rate_limited", f"too many failed enrollments from {peer}; try again in {wait:.0f} s",
                               "RESOURCE_EXHAUSTED")
            try:
                return self._enroll(request)
            except Refused as refusal:
                if refusal.reason != "enrollment_full":
                    self.enroll_limiter.failed(peer)
                raise

        return await self._serve("Enroll", request, context, handle, authenticate=False)

    def _enroll(self, request: rounds_pb2.EnrollRequest) -> rounds_pb2.EnrollResponse:
        """Check the token, then admit the CSR's key as a new identity, as the identity it already
        has, or as the replacement of the active device with the same label."""
        if not hmac.compare_digest(request.token.encode(), self.enroll_token.encode()):
            raise Refused("bad_token", "the enrollment token is wrong", "PERMISSION_DENIED")
        try:
            public_key = self.tls.csr_public_key(request.certificate_request)
        except TlsError as error:
            raise Refused("invalid", str(error), "INVALID_ARGUMENT") from None
        label = request.label[:128]
        known = self.store.device_with_key(public_key)
        if known is not None:
            if known.revoked or (label and label != known.label):
                raise Refused("key_reused", "this public key is already enrolled as another device; every device "
                                             "needs a key of its own", "ALREADY_EXISTS")
            certificate = self.tls.sign_device(request.certificate_request, known.device_id)
            self.store.renew_certificate(known.device_id, hashlib.sha256(certificate).hexdigest())
            return rounds_pb2.EnrollResponse(device_id=known.device_id, certificate=certificate)
        replaced = self.store.active_device_with_label(label) if label else None
        if replaced is None and self.store.num_devices() >= self.max_devices:
            raise Refused("enrollment_full", f"this coordinator admits at most {self.max_devices} devices (its "
                                              "population plus the enrollment margin), and all are enrolled",
                           "RESOURCE_EXHAUSTED")
        device_id = "d-" + secrets.token_hex(8)
        certificate = self.tls.sign_device(request.certificate_request, device_id)
        self.store.add_device(device_id, label=label or device_id,
                              certificate_sha256=hashlib.sha256(certificate).hexdigest(), public_key=public_key,
                              replaces=replaced)
        if replaced is not None:
            self._known.pop(replaced, None)
            self._keys.pop(replaced, None)
            self._nonces.pop(replaced, None)
            log.info("device %s replaces %s (label %r)", device_id, replaced, label)
        self._known[device_id] = label or device_id
        self._keys[device_id] = public_key
        self.metrics.enrolled.inc()
        return rounds_pb2.EnrollResponse(device_id=device_id, certificate=certificate)

    async def Status(self, request: rounds_pb2.StatusRequest, context: Any) -> rounds_pb2.StatusResponse:
        async def handle() -> rounds_pb2.StatusResponse:
            return self.status()

        return await self._serve("Status", request, context, handle, authenticate=False)

    def status(self) -> rounds_pb2.StatusResponse:
        refused = {reason: int(self.metrics.value("fedrec_messages_refused_total", reason=reason))
                   for reason in REFUSAL_REASONS}
        status = live_status(self.scheduler, self.store, devices_enrolled=len(self._known), refused=refused)
        return rounds_pb2.StatusResponse(
            rounds_completed=status.rounds_completed, rounds_abandoned=status.rounds_abandoned,
            round_in_progress=status.round_in_progress, phase=status.phase, cohort=status.cohort,
            devices_enrolled=status.devices_enrolled, devices_checked_in=status.devices_checked_in,
            dropouts=status.dropouts, epsilon=status.epsilon or 0.0, delta=status.delta or 0.0,
            model_version=status.model_version or "", params_version=status.params_version,
            rounds_planned=status.rounds_planned or 0, refused=status.refused,
        )

    # devices

    async def CheckIn(self, request: rounds_pb2.CheckInRequest, context: Any) -> rounds_pb2.CheckInResponse:
        async def handle() -> rounds_pb2.CheckInResponse:
            device_id = self._authenticate("CheckIn", request, context)
            self.metrics.checkins.inc()
            try:
                self.scheduler.hosts.saw(device_id, request.host)
            except ValueError as error:
                raise Refused("malformed", str(error), "INVALID_ARGUMENT") from None
            latest = self.scheduler.latest_model_version
            published = {version for version, _, _ in self.store.packages()}
            if self.scheduler.status.finished:
                return self._retry(latest, 3_600_000, f"training finished: {self.scheduler.status.stop_reason}")
            if request.model_version not in published:
                return self._retry(latest, 0, f"install model {latest} first")
            if request.num_examples == 0:
                return self._retry(latest, 60_000, "no examples to train on")
            outcome = await self.scheduler.pool.check_in(device_id)
            if isinstance(outcome, Selected):
                active = self.scheduler.current
                if active is None or active.run.round_id != outcome.round_key or device_id not in active.run.index:
                    return self._retry(latest, 1000, "the round ended before it started")
                return rounds_pb2.CheckInResponse(task=self._task(active, device_id), latest_model_version=latest)
            return self._retry(latest, outcome.retry_after_ms, outcome.reason)

        return await self._serve("CheckIn", request, context, handle)

    async def GetModel(self, request: rounds_pb2.GetModelRequest, context: Any) -> rounds_pb2.ModelPackage:
        async def handle() -> rounds_pb2.ModelPackage:
            self._authenticate("GetModel", request, context)
            folders = {version: folder for version, _, folder in self.store.packages()}
            folder = folders.get(request.model_version)
            if folder is None:
                raise Refused("stale_model", f"no published model {request.model_version!r}",
                               "NOT_FOUND")
            manifest = read_bounded(folder / MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES, what="manifest")
            model = read_bounded(folder / MODEL_FILE, max_bytes=MAX_MODEL_BYTES, what="model")
            return rounds_pb2.ModelPackage(model_version=request.model_version, manifest_json=manifest,
                                           model_tflite=model)

        return await self._serve("GetModel", request, context, handle)

    async def AdvertiseKeys(self, request: rounds_pb2.AdvertiseKeysRequest,
                            context: Any) -> rounds_pb2.AdvertiseKeysResponse:
        async def phase(device_id: str, active: ActiveRound) -> rounds_pb2.AdvertiseKeysResponse:
            keys = await active.run.advertise_keys(device_id, request.channel_public_key, request.mask_public_key)
            return rounds_pb2.AdvertiseKeysResponse(neighbours=[
                rounds_pb2.PublicKeys(index=i, channel_public_key=c, mask_public_key=m)
                for i, (c, m) in sorted(keys.items())])

        return await self._round_phase("AdvertiseKeys", request, context, phase, rounds_pb2.AdvertiseKeysResponse)

    async def ShareKeys(self, request: rounds_pb2.ShareKeysRequest, context: Any) -> rounds_pb2.ShareKeysResponse:
        async def phase(device_id: str, active: ActiveRound) -> rounds_pb2.ShareKeysResponse:
            ciphertexts = _unique({s.index: s.ciphertext for s in request.shares}, len(request.shares), "share")
            received = await active.run.share_keys(device_id, ciphertexts)
            return rounds_pb2.ShareKeysResponse(shares=[rounds_pb2.EncryptedShare(index=i, ciphertext=c)
                                                        for i, c in sorted(received.items())])

        return await self._round_phase("ShareKeys", request, context, phase, rounds_pb2.ShareKeysResponse)

    async def SubmitMaskedInput(self, request: rounds_pb2.MaskedInputRequest,
                                context: Any) -> rounds_pb2.MaskedInputResponse:
        async def phase(device_id: str, active: ActiveRound) -> rounds_pb2.MaskedInputResponse:
            # packed as sent: the SecAgg+ server unpacks it (and refuses a wrong length or padding)
            survivors, dropped = await active.run.submit_masked_input(device_id, request.masked_vector)
            return rounds_pb2.MaskedInputResponse(survivors=survivors, dropped=dropped)

        return await self._round_phase("SubmitMaskedInput", request, context, phase, rounds_pb2.MaskedInputResponse)

    async def Unmask(self, request: rounds_pb2.UnmaskRequest, context: Any) -> rounds_pb2.UnmaskResponse:
        async def phase(device_id: str, active: ActiveRound) -> rounds_pb2.UnmaskResponse:
            shares = _unique({s.index: s.share for s in request.shares}, len(request.shares), "revealed share")
            await active.run.unmask(device_id, shares)
            # Pace steering: come back with everyone else (not first, which would favour this cohort).
            comeback = self.scheduler.pool.come_back("round completed")
            return rounds_pb2.UnmaskResponse(
                params_version=self.scheduler.training.params_version,
                outcome=rounds_pb2.PhaseOutcome(abandoned=False, retry_after_ms=comeback.retry_after_ms))

        return await self._round_phase("Unmask", request, context, phase, rounds_pb2.UnmaskResponse)

    async def _round_phase(self, method: str, request: Any, context: Any,
                           phase: Callable[[str, ActiveRound], Awaitable[Message]], response_type: Any) -> Message:
        """A round call: authenticate, check the round id, run the phase; an abandoned round is
        an answer (the device stops and comes back later), not an error."""
        async def handle() -> Message:
            device_id, active = self._round_call(method, request, context)
            try:
                return await phase(device_id, active)
            except RoundAbandoned as error:
                return response_type(outcome=self._abandoned(str(error)))

        return await self._serve(method, request, context, handle)

    # plumbing

    async def _serve(self, method: str, request: Any, context: Any, handle: Callable[[], Awaitable[Message]], *,
                     authenticate: bool = True) -> Message:
        size_in = request.ByteSize()
        self.metrics.bytes_in.labels(method=method).inc(size_in)
        if self.capture is not None:
            self.capture.request(method, request)
        active = self.scheduler.current
        try:
            response = await handle()
        except Refused as refusal:
            reason = refusal.reason
            self.metrics.refused.labels(reason=reason).inc()
            code = getattr(grpc.StatusCode, refusal.status)
            self._log_refusal(method, reason, str(refusal))
            await context.abort(code, f"{reason}: {refusal}")
            raise AssertionError("unreachable") from None  # context.abort raises
        size_out = response.ByteSize()  # type: ignore[attr-defined]  # every response is a generated message
        self.metrics.bytes_out.labels(method=method).inc(size_out)
        if active is not None and method not in ("Status", "Enroll", "GetModel"):
            active.bytes_in += size_in
            active.bytes_out += size_out
        return response

    async def refuse_malformed(self, method: str, request: Malformed, context: Any) -> Any:
        """A request that is not a valid message of its method's type: refused and counted."""
        self.metrics.bytes_in.labels(method=method).inc(request.size)
        self.metrics.refused.labels(reason="malformed").inc()
        self._log_refusal(method, "malformed", request.error)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"malformed: the request is not a valid {request.type_name} message")
        raise AssertionError("unreachable")  # context.abort raises

    def _log_refusal(self, method: str, reason: str, detail: str) -> None:
        """One line per reason every few seconds (a flood of bad messages is not a flood of lines)."""
        if self.log_limiter.should_log(reason):
            skipped = self.log_limiter.take_suppressed(reason)
            more = f" (and {skipped} more refused for this reason since the last line)" if skipped else ""
            log.info("%s refused (%s): %s%s", method, reason, detail[:200], more)

    def _authenticate(self, method: str, request: Any, context: Any) -> str:
        header = request.header
        device_id = header.device_id
        public_key = self._keys.get(device_id)
        if public_key is None:
            raise Refused("unknown_device", f"device {device_id[:40]!r} is not enrolled here; enroll first",
                           "UNAUTHENTICATED")
        signatures = [value for key, value in (context.invocation_metadata() or ()) if key == SIGNATURE_METADATA]
        try:
            if len(signatures) != 1 or not isinstance(signatures[0], bytes):
                raise SignatureError("the request must carry exactly one signature")
            verify_request(public_key, signatures[0], method, request)
        except SignatureError as error:
            raise Refused("identity_mismatch", f"device {device_id}: {error}", "UNAUTHENTICATED") from None
        if len(header.nonce) != _NONCE_BYTES:
            raise Refused("malformed", f"the nonce must be {_NONCE_BYTES} bytes", "INVALID_ARGUMENT")
        seen = self._nonces.setdefault(device_id, collections.OrderedDict())
        if header.nonce in seen:
            raise Refused("replay", "this nonce was used before (a replayed message)", "PERMISSION_DENIED")
        seen[header.nonce] = None
        while len(seen) > _NONCES_KEPT:
            seen.popitem(last=False)
        return device_id

    def _round_call(self, method: str, request: Any, context: Any) -> tuple[str, ActiveRound]:
        device_id = self._authenticate(method, request, context)
        active = self.scheduler.current
        if active is None or request.header.round_id != active.run.round_id:
            raise Refused("stale_round", "no round with this id is in progress")
        return device_id, active

    def _task(self, active: ActiveRound, device_id: str) -> rounds_pb2.RoundTask:
        params, settings = active.run.params, active.settings
        return rounds_pb2.RoundTask(
            round_id=active.run.round_id, round_number=active.run.round_number,
            params_version=active.params_version, model_version=active.model_version,
            global_weights=[to_wire(np.asarray(w)) for w in active.weights],
            clip_norm=settings.clip_norm, private=settings.private, ranking_scale=settings.ranking_scale,
            max_weight=settings.max_weight, deadline_unix_ms=active.deadline_unix_ms,
            secagg=rounds_pb2.SecAggConfig(
                num_participants=params.num_participants, index=active.run.index[device_id], degree=params.degree,
                threshold=params.threshold, bit_width=params.fixed_point.bit_width,
                fraction_bits=params.fixed_point.fraction_bits, value_bound=settings.value_bound,
                vector_length=params.vector_length, graph_seed=params.graph_seed),
            distributed_dp=(None if settings.distributed is None or active.rotation_seed is None
                            else distributed_dp.to_wire(settings.distributed, active.rotation_seed)),
        )

    def _retry(self, latest: str, after_ms: int, reason: str) -> rounds_pb2.CheckInResponse:
        return rounds_pb2.CheckInResponse(retry=rounds_pb2.RetryLater(retry_after_ms=after_ms, reason=reason),
                                          latest_model_version=latest)

    def _abandoned(self, reason: str) -> rounds_pb2.PhaseOutcome:
        comeback = self.scheduler.pool.come_back(reason)
        return rounds_pb2.PhaseOutcome(abandoned=True, reason=reason, retry_after_ms=comeback.retry_after_ms)


def _unique(mapping: dict[int, bytes], count: int, what: str) -> dict[int, bytes]:
    if len(mapping) != count:
        raise Refused("invalid", f"a {what} index appears twice", "INVALID_ARGUMENT")
    return mapping


SERVICE_NAME = "Coordinator"  # in protocol/rounds.proto


@dataclasses.dataclass(frozen=True)
class Malformed:
    """What the server hands a handler when the request bytes do not parse."""

    type_name: str
    error: str
    size: int


def add_service(server: Any, service: CoordinatorService) -> None:
    """Register `service` as the generated `add_CoordinatorServicer_to_server` does, except that
    a request that does not parse reaches `service.refuse_malformed` instead of failing inside
    gRPC (which answered UNKNOWN, counted nothing and logged a traceback per message)."""
    descriptor = rounds_pb2.DESCRIPTOR.services_by_name[SERVICE_NAME]
    handlers = {}
    for method in descriptor.methods:
        request_type = getattr(rounds_pb2, method.input_type.name)
        response_type = getattr(rounds_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(service, method.name, getattr(service, method.name)),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))


def _lenient(message_type: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as error:  # untrusted bytes: any parse failure
            return Malformed(message_type.DESCRIPTOR.name, f"{type(error).__name__}: {error}", len(data))
    return deserialize


def _guarded(service: CoordinatorService, method: str, handler: Callable[[Any, Any], Awaitable[Any]]
             ) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: Any) -> Any:
        if isinstance(request, Malformed):
            return await service.refuse_malformed(method, request, context)
        return await handler(request, context)
    return call


def new_enroll_token() -> str:
    return secrets.token_urlsafe(24)

