"""`fedrec-edge`: the device side from a shell (install a model, rate, personalize, recommend, join rounds).

Errors are the user's to fix (a refused package, a bad CSV line, no model yet), so they are
printed as one `fedrec-edge: error: ...` line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_client.device import DEFAULT_DEVICE_DIR, Device, DeviceError
from protocol.messages import one_line
from tflite_models import bundled_package

if TYPE_CHECKING:
    from edge_client.fleet import FleetOptions

PROG = "fedrec-edge"
# The model exported from the built-in synthetic run, shipped as package data.
BUNDLED_PACKAGE = bundled_package()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run a fedrec model package on this device.")
    parser.add_argument("--device-dir", type=Path, default=DEFAULT_DEVICE_DIR,
                        help=f"where the device keeps its models and data (default {DEFAULT_DEVICE_DIR})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install = commands.add_parser("install", help="verify and activate a model package")
    install.add_argument("package_dir", type=Path, metavar="PACKAGE_DIR", nargs="?", default=None,
                         help=f"a model package folder (default: the bundled {BUNDLED_PACKAGE.name} model)")
    imports = commands.add_parser("import-ratings", help="import a CSV of ratings (item_id,rating or movieId,rating)")
    imports.add_argument("file", type=Path, metavar="FILE")
    rate = commands.add_parser("rate", help="rate one item")
    rate.add_argument("item_id", metavar="ITEM_ID")
    rate.add_argument("stars", metavar="STARS")
    commands.add_parser("personalize", help="fit the personal parameters from the stored ratings")
    recommend = commands.add_parser("recommend", help="the best items not rated yet")
    recommend.add_argument("-k", type=int, default=10, help="how many (default 10)")
    commands.add_parser("status", help="what is installed and stored")
    join = commands.add_parser("join", help="take part in federated rounds of a coordinator (until Ctrl-C or "
                                            "SIGTERM)")
    join.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    join.add_argument("--enroll-token", help="the coordinator's enrollment token (needed once, to enroll)")
    join.add_argument("--ca-cert", type=Path, required=True,
                      help="the coordinator's CA certificate (its state folder's tls/ca.pem)")
    join.add_argument("--profile", default="ideal", help="simulated heterogeneity: ideal | mixed | heterogeneous")
    join.add_argument("--log-level", default="WARNING", help="DEBUG also shows gRPC's own log (default WARNING)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "join":
        return _join(args)
    with Device(args.device_dir) as device:
        if args.command == "install":
            package = args.package_dir
            if package is None:
                if not BUNDLED_PACKAGE.is_dir():
                    raise DeviceError(f"no PACKAGE_DIR given and no bundled model at {BUNDLED_PACKAGE}")
                package = BUNDLED_PACKAGE
            print("\n".join(device.install(package).lines()))
        elif args.command == "import-ratings":
            imported = device.import_ratings(args.file)
            print(f"imported {imported.rows} ratings from {imported.path} ({imported.added} new, "
                  f"{imported.replaced} replaced)")
        elif args.command == "rate":
            before = device.rate(args.item_id, args.stars)
            suffix = "" if before is None else f" (was {before:g})"
            print(f"rated item {args.item_id}: {args.stars}{suffix}")
        elif args.command == "personalize":
            report = device.personalize()
            ignored = f"; {report.ignored_ratings} ratings of unknown items ignored" if report.ignored_ratings else ""
            print(f"personalized model {report.model_version} from {report.num_ratings} ratings "
                  f"(mean squared error {report.loss:.4f}){ignored}")
        elif args.command == "recommend":
            items = device.recommend(args.k)
            status = device.status()
            source = "personalized" if status.personalized else "global model (not personalized yet)"
            print(f"top {len(items)} for you, {source}:")
            for item in items:
                print(f"{item.rank:>3}  {item.item_id:>8}  {item.title or '-'}  {item.score:.2f}")
        elif args.command == "status":
            print("\n".join(device.status().lines()))
    return 0


def _join(args: argparse.Namespace) -> int:
    """Take part in rounds until SIGTERM/SIGINT; "joined" is said only once the coordinator let
    this device in (enrolled it, or answered it with a stored identity for this CA)."""
    from edge_client import process

    process.quiet_grpc(args.log_level)  # before anything imports grpc
    with process.quiet_stop_signals():
        options, device_dir, level = _join_options(args)
        logging.basicConfig(level=level, format=f"{PROG}: %(message)s")
        joined: list[str] = []
        stats = asyncio.run(_take_part(device_dir, options, joined))
    if not joined:
        print(f"{PROG}: stopped before joining {options.coordinator}", file=sys.stderr)
        return 0
    for values in stats.values():
        print(f"rounds: {values['rounds_completed']} completed, {values['rounds_abandoned']} abandoned; "
              f"models installed: {values['models_installed']}")
    return 0


def _join_options(args: argparse.Namespace) -> tuple[FleetOptions, Path, str]:
    """Every flag checked before any connection (one line naming what is wrong)."""
    from edge_client import process
    from edge_client.fleet import FleetOptions
    from edge_client.identity import IdentityStore
    from edge_client.round_client import read_ca_certificate

    level = process.check_log_level(args.log_level)
    address = process.check_address(args.coordinator)
    profile = process.check_profile(args.profile)
    token = "" if args.enroll_token is None else process.check_token(args.enroll_token, "--enroll-token")
    ca_pem = process.for_flag("--ca-cert", read_ca_certificate, args.ca_cert)
    device_dir = process.device_folder(args.device_dir)
    if not token and IdentityStore(device_dir).load(ca_pem) is None:
        raise DeviceError(f"{device_dir}: not enrolled with the coordinator of {args.ca_cert}; give --enroll-token "
                          "to enroll")
    return FleetOptions(address, ca_pem, token, profile, ca_source=str(args.ca_cert)), device_dir, level


async def _take_part(device_dir: Path, options: FleetOptions, joined: list[str]) -> dict[str, dict]:
    from edge_client import process
    from edge_client.fleet import WaitNotice, run_devices

    def say(line: str) -> None:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    def on_joined(folder: Path, device_id: str) -> None:
        joined.append(device_id)
        print(f"joined {options.coordinator} as device {device_id}; taking part in rounds until Ctrl-C", flush=True)

    stop = asyncio.Event()
    with process.stop_on_signals(stop):
        notice = WaitNotice(options.coordinator, say, report_answers=True)
        return await run_devices([device_dir], options, stop, notice=notice, on_joined=on_joined)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as error:  # DeviceError, ManifestError, StoreError, FileRefused are ValueErrors
        print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
