"""Generate the gRPC code of `rounds.proto` into `protocol/generated/`, reproducibly:
`uv run python -m protocol.codegen`.

The generated files are committed (devices and the coordinator import them without a protobuf
compiler), with `.pyi` stubs from mypy-protobuf so the type checker sees the messages; `--check`
regenerates into a temporary folder and fails if the committed files differ, which a test runs.
The compiler (`grpcio-tools`) and the stub writer (`mypy-protobuf`) are pinned in the dev
dependencies, because their versions decide the generated text. The proto is compiled under the
virtual path `protocol/generated/rounds.proto` so that the generated modules import each other
from the folder they live in.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("rounds.proto")
OUT_DIR = PROTO.parent / "generated"
VIRTUAL_DIR = "protocol/generated"  # where protoc believes the proto lives (import paths follow it)
GENERATED = ("rounds_pb2.py", "rounds_pb2_grpc.py", "rounds_pb2.pyi", "rounds_pb2_grpc.pyi")


def generate(out_root: Path) -> list[Path]:
    """Compile the proto into `out_root/protocol/generated/`; returns the generated files."""
    import grpc_tools  # dev dependency: only this command needs it
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    plugins = Path(sys.executable).parent  # mypy-protobuf's protoc-gen-mypy{,_grpc}, installed beside python
    (out_root / VIRTUAL_DIR).mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "grpc_tools.protoc", f"-I{VIRTUAL_DIR}={PROTO.parent}", f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}", f"--grpc_python_out={out_root}",
        f"--mypy_out=quiet:{out_root}", f"--mypy_grpc_out=quiet:{out_root}",
        f"{VIRTUAL_DIR}/{PROTO.name}",
    ])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    return [out_root / VIRTUAL_DIR / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files are not what the proto generates")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        produced = generate(Path(scratch))
        stale = [p.name for p in produced if not (OUT_DIR / p.name).exists()
                 or (OUT_DIR / p.name).read_bytes() != p.read_bytes()]
        if args.check:
            if stale:
                print(f"out of date: {', '.join(stale)}; run `uv run python -m protocol.codegen`", file=sys.stderr)
                return 1
            return 0
        for path in produced:
            shutil.copyfile(path, OUT_DIR / path.name)
    print("wrote " + ", ".join(GENERATED))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
