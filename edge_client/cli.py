"""`fedrec-edge`: the device side from a shell (install a model, rate, personalize, recommend).

Errors are the user's to fix (a refused package, a bad CSV line, no model yet), so they are
printed as one `fedrec-edge: error: ...` line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_client.device import DEFAULT_DEVICE_DIR, Device, DeviceError
from protocol.messages import one_line
from tflite_models import bundled_package

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
    join = commands.add_parser("join", help="take part in federated rounds of a coordinator (until Ctrl-C)")
    join.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    join.add_argument("--enroll-token", help="the coordinator's enrollment token (needed once, to enroll)")
    join.add_argument("--ca-cert", type=Path, required=True,
                      help="the coordinator's CA certificate (its state folder's tls/ca.pem)")
    join.add_argument("--profile", default="ideal", help="simulated heterogeneity: ideal | mixed | heterogeneous")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "join":
        _join(args)
        return
    with Device(args.device_dir) as device:
        if args.command == "install":
            package = args.package_dir
            if package is None:
                if not BUNDLED_PACKAGE.is_dir():
                    raise DeviceError(f"no PACKAGE_DIR given and no bundled model at {BUNDLED_PACKAGE}")
                package = BUNDLED_PACKAGE
            print("\n".join(device.install(package).lines()))
        elif args.command == "import-ratings":
            report = device.import_ratings(args.file)
            print(f"imported {report.rows} ratings from {report.path} ({report.added} new, {report.replaced} replaced)")
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


def _join(args: argparse.Namespace) -> None:
    import asyncio
    import signal

    from edge_client.fleet import FleetOptions, run_devices
    from protocol.files import read_bounded

    ca_pem = read_bounded(args.ca_cert, max_bytes=1 << 20, what="CA certificate")
    options = FleetOptions(args.coordinator, ca_pem, args.enroll_token or "", args.profile)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"joined {args.coordinator}; taking part in rounds until Ctrl-C", flush=True)
        stats = await run_devices([Path(args.device_dir).expanduser()], options, stop)
        for values in stats.values():
            print(f"rounds: {values['rounds_completed']} completed, {values['rounds_abandoned']} abandoned; "
                  f"models installed: {values['models_installed']}")

    asyncio.run(amain())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as error:  # DeviceError, ManifestError, StoreError, FileRefused are ValueErrors
        print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
