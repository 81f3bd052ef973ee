"""Assemble and run a coordinator: state, TLS, training, scheduler, gRPC service, metrics.

`fedrec serve --config coordinator.toml` and `fedrec up` both end here. On start the coordinator
restores everything from its state folder (a first start creates it: CA, enrollment token,
version-0 model and package), writes the address it listens on to `state_dir/address`, and runs
rounds until the plan is done; SIGTERM/SIGINT stop it after abandoning the round in progress
(the model stays at the last completed round, which is also what a `kill -9` leaves).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import grpc

from coordinator.capture import RequestCapture
from coordinator.catalog import Catalog, synthetic_catalog
from coordinator.config import CoordinatorConfig, planned
from coordinator.errors import ListenError
from coordinator.metrics import CoordinatorMetrics
from coordinator.publishing import publish
from coordinator.scheduler import Scheduler
from coordinator.server_credentials import server_credentials
from coordinator.service import CoordinatorService, add_service, new_enroll_token
from coordinator.state_lock import StateLock
from coordinator.state_store import (
    ADDRESS_FILE,
    CATALOG_FILE,
    METRICS_ADDRESS_FILE,
    TOKEN_FILE,
    TRAINING_CONFIG_META,
    StateStore,
)
from coordinator.tls import ServerTls, load_or_create, with_external_server
from coordinator.training import PrivacySetting, ServerTraining, sampling_setting
from protocol.addresses import join_host_port
from protocol.files import atomic_write
from protocol.tensors import MAX_MESSAGE_BYTES

log = logging.getLogger("fedrec.coordinator")


@dataclasses.dataclass
class Coordinator:
    config: CoordinatorConfig
    store: StateStore
    tls: ServerTls
    training: ServerTraining
    scheduler: Scheduler
    service: CoordinatorService
    metrics: CoordinatorMetrics
    enroll_token: str
    lock: StateLock


def build(config: CoordinatorConfig, *, capture_path: Path | None = None,
          metrics: CoordinatorMetrics | None = None, lock: StateLock | None = None) -> Coordinator:
    """Everything but the network, restored from (or created in) `config.state_dir`; with
    `capture_path`, every request and revealed sum is also written there (`capture.py`).

    The state folder is locked first (`state_lock`): a second coordinator on it is refused
    before it reads anything. `lock`: one the caller already holds (the CLI takes it before
    importing TensorFlow, so that the refusal is immediate)."""
    lock = lock if lock is not None else StateLock(config.state_dir)
    lock.acquire()
    try:
        return _build(planned(config), capture_path=capture_path, metrics=metrics, lock=lock)
    except BaseException:
        lock.release()
        raise


def _build(config: CoordinatorConfig, *, capture_path: Path | None, metrics: CoordinatorMetrics | None,
           lock: StateLock) -> Coordinator:
    store = StateStore(config.state_dir)
    capture = None if capture_path is None else RequestCapture(capture_path)
    tls = load_or_create(config.state_dir, hostnames=config.server.hostnames)
    if config.server.tls_dir is not None:
        tls = with_external_server(tls, Path(config.server.tls_dir))
    token = config.server.enroll_token or _stored_token(config.state_dir)
    catalog = _catalog(config, store)
    privacy = _privacy(config, store)
    training = ServerTraining(store=store, config=config, catalog=catalog, privacy=privacy)

    def publish_version(version: int, params: tuple) -> str:
        privacy_fields = None
        if training.private:
            epsilon_rdp, epsilon_pld = training.ledger.epsilon(config.training.delta) if training.ledger.events() \
                else (0.0, 0.0)
            assert epsilon_pld is not None  # ledger.epsilon composes PLD unless told not to
            privacy_fields = {"epsilon_rdp": float(epsilon_rdp), "epsilon_pld": float(epsilon_pld),
                              "delta": config.training.delta, "noise_multiplier": privacy.noise_multiplier,
                              "rounds": version,
                              "mechanism": f"user-level DP-FedAvg over secure aggregation, {config.training.dp} "
                                           f"clipping, Poisson sampling rate {privacy.sampling_rate:.4g}"}
        manifest = publish(store, params=params, model_config=training.model_config, catalog=catalog,
                           params_version=version, privacy=privacy_fields)
        return manifest.model_version

    packages = store.packages()
    latest = packages[-1][0] if packages else publish_version(training.params_version, training.params)
    metrics = metrics or CoordinatorMetrics()
    scheduler = Scheduler(store=store, training=training, config=config, metrics=metrics,
                          rounds_planned=privacy.rounds, publish=publish_version, latest_model_version=latest,
                          capture=capture)
    service = CoordinatorService(store=store, scheduler=scheduler, metrics=metrics, tls=tls, enroll_token=token,
                                 max_devices=config.max_devices, capture=capture)
    return Coordinator(config, store, tls, training, scheduler, service, metrics, token, lock)


async def serve(coordinator: Coordinator, *, stop: asyncio.Event | None = None,
                on_stopped: Callable[[], None] | None = None) -> None:
    """Listen, run rounds until the plan is done or `stop` is set, then shut down cleanly;
    `on_stopped` runs once rounds have stopped, while the state is still open (a last status)."""
    config = coordinator.config
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_concurrent_streams", 100_000),
                                      # gRPC sets SO_REUSEPORT by default: a second coordinator on the
                                      # same port would then share its traffic instead of failing.
                                      ("grpc.so_reuseport", 0)])
    add_service(server, coordinator.service)
    tls_dir = config.server.tls_dir
    credentials = server_credentials(coordinator.tls, None if tls_dir is None else Path(tls_dir))
    stop = stop or asyncio.Event()
    rounds: asyncio.Task[None] | None = None
    stopper: asyncio.Task[bool] | None = None
    try:
        address = await _listen(server, credentials, coordinator)
        coordinator.metrics.ready = True
        log.info("coordinator listening on %s (state in %s)", address, config.state_dir)
        rounds = asyncio.create_task(coordinator.scheduler.run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({rounds, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if rounds.done():
            rounds.result()  # re-raise a failure of the round loop
            await _linger(stop, seconds=2.0)  # let the last round's devices hear how it ended
    finally:
        coordinator.metrics.ready = False
        coordinator.scheduler.stop()
        active = coordinator.scheduler.current
        if active is not None:
            active.run.abandon("the coordinator is stopping")
        if stopper is not None:
            stopper.cancel()
        await server.stop(grace=1.0)
        if rounds is not None and not rounds.done():
            rounds.cancel()
            try:
                await rounds
            except (asyncio.CancelledError, Exception):
                pass
        if on_stopped is not None and rounds is not None:
            try:
                on_stopped()
            except Exception:
                log.exception("the stop hook failed")
        coordinator.metrics.close()
        coordinator.store.close()
        coordinator.lock.release()


async def _listen(server: grpc.aio.Server, credentials: grpc.ServerCredentials, coordinator: Coordinator) -> str:
    """Bind gRPC and /metrics and write where to `state_dir` (`address`, `metrics-address`)."""
    config = coordinator.config
    try:
        port = server.add_secure_port(config.server.listen_address, credentials)
    except RuntimeError:  # grpcio raises instead of returning 0 in some versions
        port = 0
    if port == 0:
        raise ListenError(f"cannot listen on {config.server.listen_address} (in use, or not an address of this "
                          "machine)")
    await server.start()
    if config.server.metrics_port >= 0:
        metrics_host = config.server.metrics_bind_host
        try:
            metrics_port = coordinator.metrics.port or coordinator.metrics.serve(config.server.metrics_port,
                                                                                 host=metrics_host)
        except OSError as error:
            raise ListenError(f"cannot serve /metrics on {join_host_port(metrics_host, config.server.metrics_port)}: "
                              f"{error.strerror or error}") from None
        atomic_write(config.state_dir / METRICS_ADDRESS_FILE, join_host_port(metrics_host, metrics_port) + "\n")
    address = join_host_port(config.server.host, port)
    atomic_write(config.state_dir / ADDRESS_FILE, address + "\n")  # last: tools wait for it
    return address


def run(config: CoordinatorConfig, *, capture_path: Path | None = None, lock: StateLock | None = None) -> None:
    """`fedrec serve`: build and serve until done or signalled."""
    coordinator = build(config, capture_path=capture_path, lock=lock)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(coordinator, stop=stop)

    asyncio.run(main())


async def _linger(stop: asyncio.Event, *, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _stored_token(state_dir: Path) -> str:
    path = state_dir / TOKEN_FILE
    if not path.exists():
        atomic_write(path, new_enroll_token() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _catalog(config: CoordinatorConfig, store: StateStore) -> Catalog:
    """The run's catalog, fixed at its first start (a later config cannot change the model's items)."""
    kept = config.state_dir / CATALOG_FILE
    if kept.exists():
        return Catalog.read(kept)
    catalog = Catalog.read(config.catalog) if config.catalog is not None else synthetic_catalog(config.training.seed)
    catalog.write(kept)
    return catalog


def _privacy(config: CoordinatorConfig, store: StateStore) -> PrivacySetting:
    """Noise, sampling rate and rounds, planned once for the expected population and then kept
    (with the training config they were planned for, which `fedrec status` reads offline)."""
    population = config.population
    stored = store.get_meta("privacy_setting")
    if stored is not None:
        return PrivacySetting(**json.loads(stored))
    if config.training.private:
        setting = sampling_setting(config, population)
    else:
        cohort = float(config.training.clients_per_round)
        setting = PrivacySetting(0.0, min(1.0, cohort / population), cohort, config.training.rounds)
    store.claim_meta(TRAINING_CONFIG_META, json.dumps(config.training.to_dict()))
    store.claim_meta("privacy_setting", json.dumps(dataclasses.asdict(setting)))
    return setting
