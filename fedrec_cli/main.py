"""`fedrec`: Privacy-preserving federated recommendation (TFF simulation, coordinator, devices).

Every error the user can fix (a bad flag value, a malformed data file, a folder that holds
another run, a corrupt checkpoint) is printed as one `fedrec: error: ...` line with exit status
2; an interruption prints how to continue, with status 130; anything else is a bug (status 1,
its traceback in a log file whose path is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

# Keep TensorFlow's C++ start-up chatter out of the terminal; must precede the first TF import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fedrec_cli import audit, cluster, deploy, simulate
from fedrec_cli.errors import EXIT_INTERRUPTED, PROG, end_within, report_error

Command = Callable[[argparse.Namespace], int]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, Command]]]:
    """The parser, and each command's own parser (to name flags in errors) and runner."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[argparse.ArgumentParser, Command]] = {}
    for module in (simulate, deploy, cluster, audit):
        commands.update(module.add_parsers(sub))
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    command_parser, run = commands[args.command]
    try:
        return run(args)
    except Exception as error:  # noqa: BLE001 - report_error tells the user's errors from bugs
        return report_error(error, command_parser)
    except KeyboardInterrupt as interrupt:
        return report_error(interrupt, command_parser)


def entry() -> None:
    """The `fedrec` console script (and `python -m fedrec_cli`): `main`, then exit with its status;
    an interrupted command ends within a grace period even if a thread would hold the exit."""
    status = main()
    if status == EXIT_INTERRUPTED:
        end_within(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
