"""Generate the gRPC code of `rounds.proto`, reproducibly: `uv run python -m protocol.codegen`.

The generated files are committed (devices and the coordinator import them without a protobuf
compiler); `--check` regenerates into a temporary folder and fails if the committed files differ,
which a test runs. The compiler is `grpcio-tools`, pinned in the dev dependencies, because its
version decides the generated text.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("rounds.proto")
GENERATED = ("rounds_pb2.py", "rounds_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Compile the proto into `out_root/protocol/`; returns the generated files."""
    from grpc_tools import protoc  # dev dependency: only this command needs it

    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    repo_root = PROTO.parent.parent
    (out_root / "protocol").mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "grpc_tools.protoc", f"-I{repo_root}", f"-I{include}",
        f"--python_out={out_root}", f"--grpc_python_out={out_root}",
        str(PROTO.relative_to(repo_root)),
    ])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    return [out_root / "protocol" / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are not what the proto generates")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        produced = generate(Path(scratch))
        stale = [p.name for p in produced if not (PROTO.parent / p.name).exists()
                 or (PROTO.parent / p.name).read_bytes() != p.read_bytes()]
        if args.check:
            if stale:
                print(f"out of date: {', '.join(stale)}; run `uv run python -m protocol.codegen`", file=sys.stderr)
                return 1
            return 0
        for path in produced:
            shutil.copyfile(path, PROTO.parent / path.name)
    print("wrote " + ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
