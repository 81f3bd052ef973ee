"""`fedrec up`, `fedrec serve`, `fedrec status`: the deployment commands of the `fedrec` CLI.

Like the rest of the CLI, each checks what it can (flags, coordinator.toml, addresses, the state
folder's lock) before importing TensorFlow, and a user error is one `fedrec: error: ...` line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedrec_cli.training_flags import add_training_flags, given_training_values
from tff_pipeline import runtime
from tff_pipeline.config import ConfigError

UP_OUTPUTS = ("coordinator", "devices", "coordinator.log")
log = logging.getLogger("fedrec.coordinator")


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, tuple[argparse.ArgumentParser, Any]]:
    """The deployment's commands: name -> (its parser, its runner)."""
    up = sub.add_parser("up", help="coordinator + simulated devices on this machine (loopback), then a report")
    add_training_flags(up)
    up.add_argument("--devices", type=int, help="simulated devices, one user each (default: every user with "
                                                "train ratings)")
    up.add_argument("--device-processes", type=int, default=2, help="processes the devices share (default 2)")
    up.add_argument("--profile", default="ideal", help="device heterogeneity: ideal | mixed | heterogeneous")
    up.add_argument("--selection", help="auto (poisson under DP, else uniform) | uniform | seeded | poisson")
    up.add_argument("--over-selection", type=float, help="uniform selection: extra fraction selected (default 0.3)")
    up.add_argument("--min-reporters", type=int, help="reports a round needs (default: the cohort)")
    up.add_argument("--report-window", dest="report_window_s", type=float, help="seconds (default 60)")
    up.add_argument("--export-every", type=int, help="publish a model package every N rounds (default 10)")
    up.add_argument("--out", type=Path, help="output folder (new or empty; default: a temporary one, removed)")
    up.add_argument("--overwrite", action="store_true", help="replace the deployment already in --out")
    up.add_argument("--quiet", action="store_true")
    up.add_argument("--capture", type=Path, metavar="DIR",
                    help="audit mode: devices record their plaintext uploads, and DIR gets round_<r>.npz per round "
                         "(revealed: the sum the coordinator decoded; plaintext: the reporters' sum before any "
                         "noise; sigma: the noise the mechanism put into revealed)")

    serve = sub.add_parser("serve", help="run the coordinator alone (what Kubernetes runs)")
    serve.add_argument("--config", type=Path, help="coordinator.toml (default: built-in synthetic defaults, state "
                                                   "in ./coordinator-state)")
    serve.add_argument("--state-dir", type=Path, help="durable state folder (overrides the config's state_dir)")
    serve.add_argument("--host", help="listen address (overrides the config's [server] host; 0.0.0.0 in a pod)")
    serve.add_argument("--tls-dir", help="bring-your-own TLS: serve tls.crt/tls.key from this folder and give devices "
                       "its ca.crt (a mounted kubernetes.io/tls Secret, e.g. cert-manager's; overrides [server] tls_dir)")
    serve.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--capture-requests", type=Path, metavar="FILE",
                       help="audit: append every request received and every revealed sum to FILE (JSON lines)")
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument("--log-format", choices=["text", "json"], default="text",
                       help="json: one object per line, with each round's fields")
    serve.add_argument("--in-cluster", action="store_true",
                       help="run as a Kubernetes pod: Lease leader election, edge pod watch, status ConfigMap")
    serve.add_argument("--namespace", help="--in-cluster: the pod's namespace")
    serve.add_argument("--identity", help="--in-cluster: this candidate's name in leader election (the pod's name)")
    serve.add_argument("--service-account-dir", type=Path,
                       help="--in-cluster: token and ca.crt (default /var/run/secrets/kubernetes.io/serviceaccount)")
    serve.add_argument("--kubeconfig", type=Path, help="--in-cluster from outside a pod: reach the API with this")
    serve.add_argument("--edge-selector", help="--in-cluster: label selector of the edge pods")

    status = sub.add_parser("status", help="a coordinator's round, cohort, dropouts, ε spent, model version")
    status.add_argument("--coordinator", metavar="HOST:PORT", help="default: the address in --state-dir")
    status.add_argument("--ca-cert", type=Path, help="default: --state-dir's tls/ca.pem")
    status.add_argument("--state-dir", type=Path, default=Path("coordinator-state"))
    return {"up": (up, _up), "serve": (serve, _serve), "status": (status, _status)}


def _serve(args: argparse.Namespace) -> int:
    """Check everything that can be checked before the slow start (the configuration, the
    addresses, the state folder's lock), then import TensorFlow and serve."""
    from coordinator.config import planned
    from coordinator.state_lock import StateLock, refuse_if_held
    from protocol.logs import configure

    configure(args.log_level, args.log_format)
    config = serve_config(args)
    if not args.in_cluster:
        refuse_if_held(config.state_dir)
    _check_addresses(config, args)
    # Outside a cluster the folder is taken now, so that a second coordinator is refused at
    # once; in a cluster only once the Lease is held (a standby replica must not touch it).
    lock = None if args.in_cluster else StateLock(config.state_dir).acquire()
    try:
        if lock is not None:
            from coordinator.state_store import StateStore

            StateStore(config.state_dir).close()  # a damaged database is refused now, not after the slow start
        config = planned(config)
        for note in config.notes:
            log.info("%s", note)
        if config.plan is not None:
            log.info("%s", config.plan.describe())
        runtime.import_training_stack()
        from coordinator import server

        if args.parent_pid:
            _exit_with_parent(args.parent_pid)
        if not args.in_cluster:
            server.run(config, capture_path=args.capture_requests, lock=lock)
            return 0
    finally:
        if lock is not None:
            lock.release()  # server.run released it already when it ran
    from coordinator.cluster.api import ClusterSettings, connect
    from coordinator.cluster.runtime import run_in_cluster

    if not args.namespace or not args.identity:
        raise ConfigError("in_cluster", "--in-cluster needs --namespace and --identity (the pod's)")
    extra = {"edge_selector": args.edge_selector} if args.edge_selector else {}
    settings = ClusterSettings(namespace=args.namespace, identity=args.identity, **extra)
    api = connect(kubeconfig=args.kubeconfig, service_account_dir=args.service_account_dir)
    return run_in_cluster(config, settings, api, capture_path=args.capture_requests)


def serve_config(args: argparse.Namespace) -> Any:
    """coordinator.toml (or the built-in deployment defaults) with the command line's overrides,
    every value checked."""
    from coordinator.config import DEFAULT_CONFIG, config_from_dict, load_config

    config = load_config(args.config) if args.config else config_from_dict(DEFAULT_CONFIG, base=Path.cwd())
    if args.state_dir is not None:
        config = dataclasses.replace(config, state_dir=args.state_dir)
    if args.host is not None:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, host=args.host))
    if args.tls_dir is not None:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, tls_dir=args.tls_dir))
    return config


def _check_addresses(config: Any, args: argparse.Namespace) -> None:
    from coordinator.listen import check_can_listen

    origin = f"{args.config}: [server] " if args.config else ""
    host_field = "host" if args.host is not None else f"{origin}host"
    server = config.server
    check_can_listen(server.host, server.port, field=host_field if server.port == 0 else f"{origin}port")
    if server.metrics_port >= 0 and not args.in_cluster:  # in a cluster the probes' port opens before the Lease
        field = f"{origin}metrics_port" if server.metrics_host is None else f"{origin}metrics_host"
        check_can_listen(server.metrics_bind_host, server.metrics_port, field=field)


def _status(args: argparse.Namespace) -> int:
    """The live coordinator's status; with none running, what its state folder says."""
    from coordinator.state_lock import describe_holder, holder
    from coordinator.tls import TLS_DIR

    state_dir = args.state_dir
    running = holder(state_dir) if args.coordinator is None and state_dir.is_dir() else None
    if args.coordinator is None and running is None:
        if not state_dir.exists():
            raise ConfigError("state_dir", f"{state_dir}: no such folder (no coordinator state here)")
        from coordinator.durable_status import read_durable_status  # the accountants: only when offline

        durable = read_durable_status(state_dir)
        print(f"coordinator not running (nothing holds {state_dir}); its state:")
        print("\n".join(durable.stopped_lines()))
        return 0
    address = _check_address(args.coordinator) if args.coordinator is not None else _read_address(state_dir)
    ca_pem = _read_ca(args.ca_cert or state_dir / TLS_DIR / "ca.pem")
    import grpc

    from coordinator.status import progress_line
    from coordinator.up import read_status

    try:
        status = asyncio.run(read_status(address, ca_pem))
    except grpc.aio.AioRpcError as error:
        if running is None:
            print(f"fedrec: error: {address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        from coordinator.durable_status import read_durable_status

        print(f"coordinator running ({describe_holder(running)}) but not answering at {address}: "
              f"{error.code().name}; its state:")
        print("\n".join(read_durable_status(state_dir).stopped_lines()))
        return 0
    print(progress_line(status))
    print(f"model {status.model_version} (params version {status.params_version})")
    refused = {k: v for k, v in status.refused.items() if v}
    if refused:
        print("refused messages: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    return 0


def _read_address(state_dir: Path) -> str:
    """The address a running coordinator wrote into its state folder, checked."""
    from coordinator.state_store import ADDRESS_FILE
    from protocol.files import FileRefused, read_bounded

    path = state_dir / ADDRESS_FILE
    try:
        text = read_bounded(path, max_bytes=1024, what="address file").decode("ascii").strip()
    except (FileRefused, UnicodeDecodeError) as error:
        raise ConfigError("coordinator", f"{path}: not a coordinator address ({error}); give --coordinator "
                                         "HOST:PORT") from None
    from protocol.addresses import AddressError, parse_host_port

    try:
        parse_host_port(text)
    except AddressError as error:
        raise ConfigError("coordinator", f"{path}: not a coordinator address ({error}); give --coordinator") from None
    return text


def _check_address(text: str) -> str:
    from protocol.addresses import AddressError, parse_host_port

    try:
        parse_host_port(text)
    except AddressError as error:
        raise ConfigError("coordinator", str(error)) from None
    return text


def _read_ca(path: Path) -> bytes:
    from cryptography import x509

    from protocol.files import FileRefused, read_bounded

    try:
        pem = read_bounded(path, max_bytes=1 << 20, what="CA certificate")
        x509.load_pem_x509_certificate(pem)
    except FileRefused as error:
        raise ConfigError("ca_cert", str(error)) from None
    except ValueError:
        raise ConfigError("ca_cert", f"{path}: not a PEM certificate") from None
    return pem


def _up(args: argparse.Namespace) -> int:
    """Check every flag against the data and the fleet, print the plan, then run the deployment."""
    from coordinator import up
    from coordinator.config import deployment_training
    from coordinator.status import progress_line
    from coordinator.up import UpOptions
    from tff_pipeline.data import load_dataset
    from tff_pipeline.run_folder import RunFolder

    _check_up_flags(args)
    given = deployment_training(given_training_values(args))
    deployment = _deployment_flags(args)
    temporary = args.out is None
    folder = RunFolder(args.out) if not temporary else None
    if folder is not None:
        _claim_up_folder(folder, overwrite=args.overwrite)
    training = _training_config(given)
    split = load_dataset(training.dataset, data_dir=training.data_dir, split=training.split, seed=training.seed,
                         synthetic_users=training.synthetic_users)
    training.check_model_size(split.num_items)
    devices = _device_count(args, split)
    coordinator_config = up.coordinator_config(training, deployment, devices=devices, given=given)
    for note in coordinator_config.notes:
        print(note)
    if coordinator_config.plan is not None:
        print(coordinator_config.plan.describe())
    config = coordinator_config.training
    out = Path(tempfile.mkdtemp(prefix="fedrec-up-")) if temporary else args.out
    folder = RunFolder(out)
    identity = folder.start(config, overwrite=args.overwrite)
    started = time.monotonic()
    last_line = [""]

    def on_status(status: Any) -> None:
        line = progress_line(status)
        if not args.quiet and line != last_line[0]:
            print(line, flush=True)
            last_line[0] = line

    try:
        final, state_dir, shards = up.run_deployment(
            out=out, split=split, config=coordinator_config, options=UpOptions(devices, args.device_processes,
                                                                               args.profile, args.quiet, args.capture),
            on_status=on_status)
        runtime.import_training_stack()
        from coordinator.report import deployment_report
        from tff_pipeline import reporting

        result = deployment_report(config=config, split=split, identity=identity, state_dir=state_dir,
                                   shard_dirs=shards, final_status=final, wall_seconds=time.monotonic() - started)
        reporting.write_outputs(folder, result.report, result.params, split.vocab)
        print(reporting.markdown(reporting.json_safe(result.report)))
        if not temporary:
            print(f"wrote {out}/report.json, report.md, metrics.csv, final_model.npz (coordinator state in "
                  f"{state_dir}, devices in {out / 'devices'})")
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
    return 0


def _check_up_flags(args: argparse.Namespace) -> None:
    """What can be refused from the flags alone, before any data is read."""
    from edge_client.profiles import PRESETS

    names = (*PRESETS, "heterogeneous")
    if args.profile not in names:
        raise ConfigError("profile", f"unknown device profile {args.profile!r} (known: {', '.join(names)})")
    capture = args.capture
    if capture is not None and (capture.is_file() or (capture.is_dir() and any(capture.iterdir()))):
        raise ConfigError("capture", f"{capture} is not an empty folder; an audit never overwrites what is there")
    if args.devices is not None and args.devices < 2:
        raise ConfigError("devices", f"at least 2 devices are needed, got {args.devices}")
    if not 1 <= args.device_processes <= 64:
        raise ConfigError("device_processes", f"must be 1 to 64, got {args.device_processes}")


def _deployment_flags(args: argparse.Namespace) -> Any:
    from coordinator.config import DeploymentConfig

    values = {name: getattr(args, name) for name in
              ("selection", "over_selection", "min_reporters", "report_window_s", "export_every")
              if getattr(args, name, None) is not None}
    return DeploymentConfig(**values)


def _training_config(given: dict[str, Any]) -> Any:
    from tff_pipeline.config import training_config

    return training_config(given)


def _device_count(args: argparse.Namespace, split: Any) -> int:
    import numpy as np

    users = int(np.unique(split.train.users).size)
    if args.devices is None:
        return users
    if args.devices > users:
        raise ConfigError("devices", f"{args.devices} is more than the {users} users with train ratings in the "
                                     f"{split.name} data set (one device per user); at most {users}")
    return int(args.devices)


def _claim_up_folder(folder: Any, *, overwrite: bool) -> None:
    """--out must be new, empty, or an earlier `fedrec up` folder with --overwrite (then only what
    `fedrec up` wrote there is removed)."""
    from tff_pipeline.run_folder import CONFIG_FILE, RESULT_FILES

    path = folder.path
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError("out", f"{path} is a file, not a folder")
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    ours = set(UP_OUTPUTS) | set(RESULT_FILES) | {CONFIG_FILE} | {p for p in entries if p.endswith(".log")}
    if not (path / "coordinator").is_dir() or not entries <= ours:
        raise ConfigError("out", f"{path} is not empty and is not a `fedrec up` folder; choose a new or empty one")
    if not overwrite:
        raise ConfigError("out", f"{path} holds an earlier deployment; replace it with --overwrite")
    from coordinator.state_lock import describe_holder, holder

    running = holder(path / "coordinator")
    if running is not None:
        raise ConfigError("out", f"{path}: its coordinator is running ({describe_holder(running)}); stop it before "
                                 "--overwrite replaces its state")
    for name in entries:
        target = path / name
        if target.is_dir() and name in UP_OUTPUTS:
            shutil.rmtree(target)
        elif name.endswith(".log"):
            target.unlink()


def _exit_with_parent(parent_pid: int) -> None:
    """A `fedrec up` child: stop (SIGTERM to ourselves) when the parent is gone."""
    import os
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()

