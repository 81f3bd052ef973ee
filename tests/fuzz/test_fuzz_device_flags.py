"""Fuzz the flags of the long-running device commands: `fedrec-edge join` and `python -m edge_client.fleet`.

A bad flag value (an address, a token, a CA file, a profile, a device folder of any kind) must be
refused with exit status 2 and exactly one `PROG: error:` line naming what was given (argparse's
own usage errors, a usage block then one `error:` line, are accepted), never a traceback or a
hang. Everything runs in-process. Valid flags get as far as dialling the coordinator: for
127.0.0.1 a real TLS connection to a loopback port nobody listens on, which the device must
answer by saying it waits, and why (counted as "waiting", then stopped there by a guard); any
other address is stopped by a guard before it is dialled ("would connect"), so nothing leaves
this machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
from pathlib import Path

import grpc  # noqa: F401 - imported first, so the entry points leave GRPC_VERBOSITY alone in this process
import pytest
from fuzzlib import (
    PATH_KINDS,
    assert_one_line,
    budget,
    int_tokens,
    mutated_table,
    place,
    record,
    remark,
    scratch_dir,
    tokens,
    whole_file_garbage,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_client import cli as edge_cli
from edge_client import fleet as fleet_module
from edge_client.join_lock import JoinLock

pytestmark = pytest.mark.fuzz

FLEET_PROG = "python -m edge_client.fleet"
TOKEN = "a-valid-looking-enrollment-token"
PROFILES = ["ideal", "mixed", "heterogeneous", "slow", "drop-after-masking"]
LOG_LEVELS = ["DEBUG", "info", "WARNING", "ERROR"]
CA_KINDS = ["ca_ok", "ca_ok", "ca_mutated", "ca_mutated", "ca_garbage", *PATH_KINDS]
DEVICE_KINDS = ["fresh", "fresh", "fresh", "locked", "unknown_home", *PATH_KINDS]
ROOT_KINDS = ["root_ok", "root_ok", "root_ok", "root_empty", "root_locked", *PATH_KINDS]
ADDRESS_SHAPES = ["@loopback@", "@loopback@", "@loopback@", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                  "127.0.0.1:-1", "127.0.0.1:http", ":7443", "[::1]:7443", "::1:7443", "[127.0.0.1]:7443",
                  "coordinator.example:7443", "a..b:1", "-bad-:1", "localhost:99999", "host:1:2", "\u00e9t\u00e9:80"]


class WouldConnect(BaseException):
    """Raised by the guard where a device would dial an address other than 127.0.0.1."""


class Waited(BaseException):
    """Raised by the guard once a device said it waits for the coordinator (the loop would retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@pytest.fixture(scope="module", autouse=True)
def guards():
    """Dial only 127.0.0.1; stop at the first "waiting" (instead of retrying); leave logging alone."""
    real_reach, real_waiting = fleet_module._reach, fleet_module.WaitNotice.waiting

    async def reach(options, notice, stop):
        if not options.coordinator.startswith("127.0.0.1:"):
            raise WouldConnect()
        return await real_reach(options, notice, stop)

    def waiting(self, reason):
        real_waiting(self, reason)
        raise Waited(reason)

    patch = pytest.MonkeyPatch()
    patch.setattr(fleet_module, "_reach", reach)
    patch.setattr(fleet_module.WaitNotice, "waiting", waiting)
    patch.setattr(fleet_module, "configure_logs", lambda level, log_format: None)
    yield
    patch.undo()


def _valid_ca() -> bytes:
    """A coordinator's CA certificate (`coordinator.tls`: pure `cryptography`), made once."""
    import tempfile

    from coordinator import tls

    with tempfile.TemporaryDirectory(prefix="fedrec-fuzz-ca-") as folder:
        return tls.load_or_create(Path(folder)).ca_pem


VALID_CA = _valid_ca()


def _unreachable() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# ---------------------------------------------------------------------------------------------
# Strategies

address = st.one_of(st.sampled_from(ADDRESS_SHAPES), tokens,
                    st.tuples(tokens, int_tokens(-5, 70000)).map(lambda pair: f"{pair[0]}:{pair[1]}"))
optional_choice = lambda known: st.one_of(st.none(), st.sampled_from(known), tokens)  # noqa: E731


@st.composite
def ca_file(draw) -> tuple[str, bytes | None]:
    """(kind, content): the valid CA, a mutation of it, garbage, or a path of another kind (None)."""
    kind = draw(st.sampled_from(CA_KINDS))
    if kind == "ca_ok":
        return kind, VALID_CA
    if kind == "ca_mutated":
        lines = [[line] for line in VALID_CA.decode().splitlines()]
        return kind, draw(mutated_table(lines, sep="", encoding="utf-8", max_mutations=2))
    if kind == "ca_garbage":
        return kind, draw(whole_file_garbage())
    return kind, None


# Each example starts from valid flags and makes 0-2 of them anything (so a good share gets as far
# as dialling, and a refusal is about one or two inputs, not five).
JOIN_VALID = {"device": "fresh", "address": "@loopback@", "token": TOKEN, "ca": ("ca_ok", VALID_CA), "profile": None,
              "log_level": None, "junk": None}
JOIN_FUZZED = {
    "device": st.sampled_from(DEVICE_KINDS),
    "address": address,
    "token": st.one_of(st.none(), tokens),
    "ca": ca_file(),
    "profile": optional_choice(PROFILES),
    "log_level": optional_choice(LOG_LEVELS),
    "junk": st.sampled_from(["--bogus", "--profile", "extra", "--ca-cert", "-x"]),
}
FLEET_VALID = {"root": "root_ok", "address": "@loopback@", "token_file": ("token_ok", f"{TOKEN}\n".encode()),
               "ca": ("ca_ok", VALID_CA), "profile": None, "log_level": None, "seed": None, "parent_pid": None,
               "extra": []}
FLEET_FUZZED = {
    "root": st.sampled_from(ROOT_KINDS),
    "address": address,
    "token_file": st.one_of(
        st.sampled_from(PATH_KINDS).map(lambda kind: (kind, None)),
        st.sampled_from([b"", b"\n", b"  \n", b"tok\x00en\n", b"two\nlines\n", "\u00e9t\u00e9\n".encode(),
                         b"\xff\xfe"]).map(lambda data: ("token_odd", data)),
        whole_file_garbage().map(lambda data: ("token_garbage", data))),
    "ca": ca_file(),
    "profile": optional_choice(PROFILES),
    "log_level": optional_choice(LOG_LEVELS),
    "seed": st.one_of(st.integers(0, 5).map(str), int_tokens(), tokens),
    "parent_pid": st.sampled_from(["parent", "self", "1", "0", "-3", "x", str(2**70)]),
    "extra": st.lists(st.sampled_from(["--record-uploads", "--log-format=json", "--log-format=xml", "--bogus"]),
                      min_size=1, max_size=2),
}


@st.composite
def fuzzed(draw, valid: dict, strategies: dict) -> dict:
    spec = dict(valid)
    for field in draw(st.lists(st.sampled_from(sorted(strategies)), max_size=2, unique=True)):
        spec[field] = draw(strategies[field])
    return spec


# ---------------------------------------------------------------------------------------------
# Running and checking

def _run(main, argv: list[str]) -> tuple[str, int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code, kind = main(argv), "returned"
        except SystemExit as stop:
            code, kind = stop.code, "usage"
        except WouldConnect:
            code, kind = None, "would connect"
        except Waited as waited:
            code, kind = None, f"waiting: {waited.reason}"
    return kind, code, out.getvalue(), err.getvalue()


def _check(prog: str, argv: list[str], kind: str, code, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    if kind == "would connect":
        record("outcome: valid flags, would dial another address (stopped by the guard)")
        assert stderr == "" and stdout == "", (stdout, stderr)
    elif kind.startswith("waiting: "):
        reason = kind.removeprefix("waiting: ")
        record(f"outcome: waiting for 127.0.0.1 ({reason})")
        assert_one_line(reason)
        # gRPC's word for a CA it could not load: such a CA must be refused, or re-encoded, before.
        assert "empty address list" not in reason, reason
        address = argv[argv.index("--coordinator") + 1]
        assert address.startswith("127.0.0.1:") and stdout == "", (stdout, stderr)  # never "joined"
        if prog == "fedrec-edge":
            assert stderr == f"fedrec-edge: waiting for the coordinator at {address} ({reason}); retrying\n", stderr
    elif kind == "usage":
        record("outcome: argparse usage error")
        assert code == 2, (code, stderr)
        assert re.match(rf"{re.escape(prog)}( [a-z-]+)?: error: ", stderr.rstrip("\n").splitlines()[-1]), stderr
    else:
        record("outcome: exit 2, one-line error")
        assert code == 2 and stdout == "", (code, stdout, stderr)
        assert stderr.endswith("\n") and stderr.startswith(f"{prog}: error: "), stderr
        assert_one_line(stderr[:-1])
        assert _names_input(stderr, argv), f"the error names none of the inputs {argv}: {stderr!r}"


def _names_input(message: str, argv: list[str]) -> bool:
    """The refusal names a flag or a value that was given (a file, a folder, the address)."""
    given = [arg for arg in argv if arg.startswith("--")] + [arg for arg in argv if "/" in arg or ":" in arg]
    return any(arg.split("=")[0] in message for arg in given if len(arg) > 2)


def _device(root: Path, kind: str) -> Path:
    if kind == "fresh":
        return root / "device"
    if kind == "locked":
        return root / "locked-device"
    if kind == "unknown_home":
        return Path("~no-such-user-fedrec-fuzz/device")
    return place(root / "device", kind)


def _file(root: Path, name: str, kind: str, content: bytes | None) -> Path:
    path = root / name
    if content is not None:
        path.write_bytes(content)
        return path
    return place(path, kind)


def _devices_root(root: Path, kind: str) -> Path:
    path = root / "devices"
    if kind in ("root_ok", "root_locked"):
        for name in ("a", "b"):
            (path / name).mkdir(parents=True)
        return path
    if kind == "root_empty":
        (path / ".hidden").mkdir(parents=True)
        return path
    return place(path, kind)


def _flag(argv: list[str], flag: str, value: str | None) -> None:
    if value is not None:
        argv += [flag, value]


# ---------------------------------------------------------------------------------------------
# fedrec-edge join

@settings(max_examples=budget(1))
@given(spec=fuzzed(JOIN_VALID, JOIN_FUZZED))
@example(spec={"device": "fresh", "address": "@loopback@", "token": "WRONG", "ca": ("ca_garbage", b"garbage\n"),
               "profile": None, "log_level": None, "junk": None})
@example(spec={"device": "fresh", "address": "@loopback@", "token": TOKEN, "ca": ("ca_ok", VALID_CA), "profile": None,
               "log_level": None, "junk": None})
@example(spec={"device": "locked", "address": "@loopback@", "token": TOKEN, "ca": ("ca_ok", VALID_CA),
               "profile": "mixed", "log_level": "DEBUG", "junk": None})
@example(spec={"device": "fresh", "address": "@loopback@", "token": None, "ca": ("ca_ok", VALID_CA), "profile": None,
               "log_level": None, "junk": None})
@example(spec={"device": "fresh", "address": "@loopback@", "token": TOKEN, "ca": ("ca_ok", VALID_CA),
               "profile": "turbo", "log_level": None, "junk": None})
def test_fedrec_edge_join_refuses_bad_flags_with_one_line_or_waits(spec):
    with scratch_dir() as root:
        device = _device(root, spec["device"])
        ca = _file(root, "ca.pem", *spec["ca"])
        argv = ["--device-dir", str(device), "join", "--coordinator",
                spec["address"].replace("@loopback@", _unreachable()), "--ca-cert", str(ca)]
        _flag(argv, "--enroll-token", spec["token"])
        _flag(argv, "--profile", spec["profile"])
        _flag(argv, "--log-level", spec["log_level"])
        if spec["junk"]:
            argv.append(spec["junk"])
        remark(f"argv: {argv}")
        with JoinLock(root / "locked-device") if spec["device"] == "locked" else contextlib.nullcontext():
            kind, code, stdout, stderr = _run(edge_cli.main, argv)
        remark(f"{kind} {code}: {stderr!r}")
    _check("fedrec-edge", argv, kind, code, stdout, stderr)


# ---------------------------------------------------------------------------------------------
# python -m edge_client.fleet

@settings(max_examples=budget(1))
@given(spec=fuzzed(FLEET_VALID, FLEET_FUZZED))
@example(spec={"root": "missing", "address": "@loopback@", "token_file": ("token_ok", TOKEN.encode()),
               "ca": ("ca_ok", VALID_CA), "profile": None, "log_level": None, "seed": None, "parent_pid": None,
               "extra": []})
@example(spec={"root": "root_ok", "address": "@loopback@", "token_file": ("missing", None),
               "ca": ("ca_ok", VALID_CA), "profile": None, "log_level": None, "seed": None, "parent_pid": None,
               "extra": []})
@example(spec={"root": "root_ok", "address": "@loopback@", "token_file": ("token_ok", TOKEN.encode()),
               "ca": ("ca_ok", VALID_CA), "profile": "warp", "log_level": None, "seed": None, "parent_pid": None,
               "extra": []})
@example(spec={"root": "root_ok", "address": "@loopback@", "token_file": ("token_ok", TOKEN.encode()),
               "ca": ("ca_ok", VALID_CA), "profile": "heterogeneous", "log_level": "INFO", "seed": "3",
               "parent_pid": "parent", "extra": ["--record-uploads"]})
@example(spec={"root": "root_locked", "address": "@loopback@", "token_file": ("token_ok", TOKEN.encode()),
               "ca": ("ca_ok", VALID_CA), "profile": None, "log_level": None, "seed": None, "parent_pid": None,
               "extra": []})
def test_edge_client_fleet_refuses_bad_flags_with_one_line_or_waits(spec):
    with scratch_dir() as root:
        devices = _devices_root(root, spec["root"])
        ca = _file(root, "ca.pem", *spec["ca"])
        token = _file(root, "token", *spec["token_file"])
        argv = ["--devices-root", str(devices), "--coordinator", spec["address"].replace("@loopback@", _unreachable()),
                "--ca-cert", str(ca), "--enroll-token-file", str(token)]
        _flag(argv, "--profile", spec["profile"])
        _flag(argv, "--log-level", spec["log_level"])
        _flag(argv, "--seed", spec["seed"])
        pids = {"parent": str(os.getppid()), "self": str(os.getpid())}
        _flag(argv, "--parent-pid", pids.get(spec["parent_pid"], spec["parent_pid"]))
        argv += spec["extra"]
        remark(f"argv: {argv}")
        with JoinLock(devices / "b") if spec["root"] == "root_locked" else contextlib.nullcontext():
            kind, code, stdout, stderr = _run(fleet_module.main, argv)
        remark(f"{kind} {code}: {stderr!r}")
    _check(FLEET_PROG, argv, kind, code, stdout, stderr)


# ---------------------------------------------------------------------------------------------
# Regression tests: product bugs this tier found (fixed), each with its minimal input

@pytest.mark.parametrize("variant", ["bom", "cr-line-ends", "leading-space"])
def test_a_ca_file_gRPC_would_not_read_as_it_is_is_used_re_encoded(variant):
    """`cryptography` reads these, gRPC's TLS did not: the device waited forever for the coordinator
    ("UNAVAILABLE: empty address list") instead of dialling it."""
    data = {"bom": b"\xef\xbb\xbf" + VALID_CA, "cr-line-ends": VALID_CA.replace(b"\n", b"\r"),
            "leading-space": b"  " + VALID_CA}[variant]
    with scratch_dir() as root:
        (root / "ca.pem").write_bytes(data)
        address = _unreachable()
        argv = ["--device-dir", str(root / "device"), "join", "--coordinator", address, "--ca-cert",
                str(root / "ca.pem"), "--enroll-token", TOKEN]
        kind, code, stdout, stderr = _run(edge_cli.main, argv)
    assert kind == "waiting: connection refused", (kind, stderr)
    _check("fedrec-edge", argv, kind, code, stdout, stderr)
