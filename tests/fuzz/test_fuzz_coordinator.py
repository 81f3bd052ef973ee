"""Fuzz the coordinator's inputs: coordinator.toml (as values and as bytes) and the flags of
`fedrec serve`, `fedrec status` and `fedrec up` (issue 16).

A configuration is either accepted (and then plans: the privacy planner runs on it) or refused
with one `ConfigError` naming its key; a command exits 2 with exactly one `fedrec: error:` line
(or argparse's usage error). Everything runs in-process. Nothing is served or trained: the
TensorFlow import and the start of a deployment are replaced by a guard that stops the command
where a valid one would start ("would serve"). Host names resolve only to loopback here (a guard
on getaddrinfo): nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import string
import tomllib
from pathlib import Path

import pytest
from fuzzlib import HOSTILE_TOKENS, PATH_KINDS, assert_one_line, budget, place, record, scratch_dir, utf8_text
from hypothesis import example, given, settings
from hypothesis import strategies as st

import coordinator.up as up_module
import fedrec_cli.main as fedrec_cli
from coordinator import listen
from coordinator.config import (
    ConfigError,
    DeploymentConfig,
    ServerConfig,
    config_from_dict,
    load_config,
    planned,
)
from coordinator.state_store import StateStore
from tff_pipeline import runtime as training_runtime
from tff_pipeline.config import SimulationConfig, training_config

pytestmark = pytest.mark.fuzz


class WouldServe(BaseException):
    """Raised where `fedrec serve` would import TensorFlow, or `fedrec up` start its processes."""


_real_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    """Resolve IP literals and localhost; any other name is 'unknown' (no DNS query leaves)."""
    if host in (None, "localhost") or _is_ip(host):
        return _real_getaddrinfo(host, *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (fuzz: no DNS)")


def _is_ip(host) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@pytest.fixture(scope="module", autouse=True)
def never_serve():
    def refuse(*args, **kwargs):
        raise WouldServe()

    patch = pytest.MonkeyPatch()
    patch.setattr(training_runtime, "import_training_stack", refuse)
    patch.setattr(up_module, "run_deployment", refuse)
    patch.setattr(listen.socket, "getaddrinfo", _loopback_only)
    yield
    patch.undo()


# ---------------------------------------------------------------------------------------------
# coordinator.toml as values

SERVER_KEYS = [f.name for f in __import__("dataclasses").fields(ServerConfig)]
ROUNDS_KEYS = [f.name for f in __import__("dataclasses").fields(DeploymentConfig)]
TRAINING_KEYS = [f.name for f in __import__("dataclasses").fields(SimulationConfig)]

toml_scalar = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), utf8_text,
    st.sampled_from([0, 1, -1, 2, 7443, 65535, 65536, 70000, 0.5, 1e300, "127.0.0.1", "::1", "localhost",
                     "0123456789abcdef", "fedrec-coordinator", "adaptive", "fixed", "none", "poisson", "uniform",
                     "seeded", "auto", "", " ", "a..b", "-x", "x" * 300]),
)
toml_value = st.one_of(toml_scalar, st.lists(toml_scalar, max_size=3), st.dictionaries(utf8_text, toml_scalar,
                                                                                       max_size=2))


def _section(keys: list[str]) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.one_of(st.sampled_from(keys), utf8_text), toml_value, max_size=4)


_good_server = st.fixed_dictionaries({}, optional={
    "host": st.sampled_from(["127.0.0.1", "::1", "localhost"]), "port": st.integers(0, 65535),
    "metrics_port": st.integers(-1, 65535), "enroll_token": st.text(string.ascii_letters, min_size=16, max_size=40),
    "hostnames": st.lists(st.sampled_from(["fedrec-coordinator", "a.b.svc", "10.0.0.1"]), max_size=2)})
_good_rounds = st.fixed_dictionaries({}, optional={
    "population": st.integers(2, 10**6), "over_selection": st.floats(0, 10), "min_reporters": st.integers(2, 50)})
_good_training = st.fixed_dictionaries({}, optional={
    "dp": st.sampled_from(["none", "fixed", "adaptive"]), "target_epsilon": st.floats(0.1, 100),
    "noise_multiplier": st.floats(0.3, 5), "rounds": st.integers(1, 400), "clients_per_round": st.integers(1, 500),
    "delta": st.sampled_from([1e-5, 1e-4, 1e-3])})

coordinator_tables = st.one_of(
    st.fixed_dictionaries({}, optional={"server": _section(SERVER_KEYS), "rounds": _section(ROUNDS_KEYS),
                                        "training": _section(TRAINING_KEYS), "state_dir": toml_value,
                                        "catalog": toml_value}),
    # Mostly valid, so that the planner is reached; one hostile key at most.
    st.tuples(_good_server, _good_rounds, _good_training, _section(SERVER_KEYS + ROUNDS_KEYS)).map(
        lambda t: {"server": t[0], "rounds": t[1], "training": t[2]} if not t[3] else
        {"server": {**t[0], **{k: v for k, v in t[3].items() if k in SERVER_KEYS}},
         "rounds": {**t[1], **{k: v for k, v in t[3].items() if k in ROUNDS_KEYS}}, "training": t[2]}),
    st.dictionaries(utf8_text, toml_value, max_size=3),
)


def _config_or_error(data: dict, base: Path, *, plan: bool = True):
    """A checked config (planned too, with `plan`: seconds of accounting for a DP one), or None
    after checking that the refusal is one ConfigError line naming a key."""
    try:
        config = config_from_dict(data, base=base)
        if plan:
            config = planned(config)
    except ConfigError as error:
        record(f"ConfigError: {error.field.split(' ')[0]}")
        assert_one_line(str(error))
        known = ["[server]", "[rounds]", "[training]", "state_dir", "catalog", *data.keys(),
                 *(repr(k)[:66] for k in data)]
        assert any(error.field.startswith(str(k)) for k in known), error.field
        return None
    record("valid config" + (" (planned)" if config.plan is not None else ""))
    assert config.population >= 2 and config.max_devices >= config.population
    assert config.training.clients_per_round <= config.population or not config.planned
    return config


@settings(max_examples=budget(3))
@given(data=coordinator_tables)
@example(data={"server": {"port": 70000}})
@example(data={"server": {"enroll_token": 123}})
@example(data={"server": {"hostnames": "abc"}})
@example(data={"rounds": {"min_reporters": 401}})  # beyond the default population of 400: named by section
@example(data={"training": {"dp": "adaptive", "target_epsilon": 1e-300}})
@example(data={"training": {"dp": "adaptive", "target_epsilon": 1e300}})
@example(data={"training": {"dp": "fixed", "noise_multiplier": 1e-300, "target_epsilon": 1.0}})
@example(data={"training": {"dp": "adaptive", "target_epsilon": 8.0, "delta": 0.5}, "rounds": {"population": 2}})
@example(data={"rounds": {"population": 10**8}, "training": {"dp": "adaptive", "target_epsilon": 8.0}})
def test_any_coordinator_table_gives_a_config_or_one_configerror(data):
    """Every table is checked; the non-private ones are planned too (the privacy planner has a
    test of its own below, with a smaller budget: a DP plan costs seconds of accounting)."""
    with scratch_dir() as base:
        dp = data.get("training", {}).get("dp", "none") if isinstance(data.get("training"), dict) else "none"
        _config_or_error(data, base, plan=dp == "none")


@settings(max_examples=budget(0.25))
# Budgets under 0.5 plan correctly but slowly (dp-accounting's RDP of a subsampled Gaussian takes
# ~0.5 s per evaluation at z ~ 30, and calibration needs ~15): kept to one example.
@given(target=st.one_of(st.floats(0.5, 100), st.sampled_from([0.5, 1.0, 8.0, 99.9, 100.0])),
       noise=st.one_of(st.none(), st.floats(0.01, 100), st.sampled_from([0.01, 1e4])),
       rounds=st.one_of(st.none(), st.integers(1, 1000)),
       cohort=st.one_of(st.none(), st.integers(1, 1000)), population=st.integers(2, 10**6),
       delta=st.sampled_from([1e-7, 1e-4, 1e-2, 0.5]), dp=st.sampled_from(["fixed", "adaptive"]))
@example(target=100.0, noise=None, rounds=1, cohort=2, population=2, delta=1e-4, dp="fixed")
@example(target=0.01, noise=None, rounds=10**4, cohort=None, population=10**6, delta=1e-7, dp="adaptive")
@example(target=0.01, noise=0.01, rounds=1000, cohort=None, population=2, delta=1e-4, dp="fixed")
def test_any_privacy_setting_plans_or_is_refused_in_one_line(target, noise, rounds, cohort, population, delta, dp):
    """The planner and the accountants on every budget the config admits (they raised
    ZeroDivisionError and dp-accounting's own errors on extreme ones)."""
    training = {"dp": dp, "target_epsilon": target, "delta": delta}
    if noise is not None:
        training["noise_multiplier"] = noise
    if rounds is not None:
        training["rounds"] = rounds
    if cohort is not None:
        training["clients_per_round"] = cohort
    config = _config_or_error({"training": training, "rounds": {"population": population}}, Path("."))
    if config is not None and config.plan is not None:
        assert config.plan.epsilon_rdp <= target * (1 + 1e-9) and config.plan.noise_multiplier > 0


# ---------------------------------------------------------------------------------------------
# coordinator.toml as bytes

GOOD_TOML = ('state_dir = "state"\n[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = -1\n'
             'enroll_token = "0123456789abcdef"\n[training]\nrounds = 3\n[rounds]\npopulation = 10\n')


@st.composite
def toml_bytes(draw) -> bytes:
    text = GOOD_TOML
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "insert", "replace_value", "garbage"]))
        if op == "cut":
            k = draw(st.integers(0, len(text)))
            text = text[:k]
        elif op == "insert":
            k = draw(st.integers(0, len(text)))
            text = text[:k] + draw(st.sampled_from(HOSTILE_TOKENS + ["[", "]", "=", "\n[server]\n", '"""'])) + text[k:]
        elif op == "replace_value":
            lines = text.split("\n")
            k = draw(st.integers(0, len(lines) - 1))
            if "=" in lines[k]:
                key = lines[k].split("=")[0]
                lines[k] = f"{key}= {draw(st.sampled_from(HOSTILE_TOKENS))}"
            text = "\n".join(lines)
        else:
            return draw(st.binary(max_size=200))
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=budget(2))
@given(payload=toml_bytes(), kind=st.sampled_from(["file", *PATH_KINDS]))
@example(payload=b"\xff\xfe[server]", kind="file")
@example(payload=b"[server]\nport = 1e400\n", kind="file")
def test_any_config_file_gives_a_config_or_one_configerror_naming_it(payload, kind):
    with scratch_dir() as root:
        path = root / "coordinator.toml"
        if kind == "file":
            path.write_bytes(payload)
        else:
            path = place(path, kind)
        try:
            load_config(path)
            record("valid file")
        except ConfigError as error:
            record("ConfigError")
            assert_one_line(str(error), names=path)


# ---------------------------------------------------------------------------------------------
# the command lines

def _run(argv: list[str]) -> tuple[str, int | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code, kind = fedrec_cli.main(argv), "returned"
        except SystemExit as stop:
            code, kind = stop.code, "usage"
        except WouldServe:
            code, kind = None, "would serve"
    return kind, code, err.getvalue()


def _check(kind: str, code, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    if kind == "would serve":
        record("outcome: would serve")
        return
    if kind == "usage":
        record("outcome: argparse usage error")
        assert code == 2 and re.search(r"fedrec( [a-z-]+)?: error: ", stderr.splitlines()[-1]), stderr
        return
    if code == 0:
        record("outcome: answered")
        return
    record("outcome: exit 2, one-line error")
    assert code == 2 and stderr.startswith("fedrec: error: ") and stderr.endswith("\n"), (code, stderr)
    assert_one_line(stderr[:-1])


host_value = st.one_of(st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0", "127.0.0.2", "example.invalid",
                                        "no such host", "", "-", "256.1.1.1", "[::1]", "a" * 300]),
                       st.sampled_from(HOSTILE_TOKENS))


@settings(max_examples=budget(1))
@given(payload=toml_bytes(), host=st.one_of(st.none(), host_value),
       state=st.one_of(st.none(), st.sampled_from(["file", "empty_dir", "junk_dir", "garbage_db", "missing",
                                                   "under_file", "dangling", "loop"])))
@example(payload=GOOD_TOML.encode(), host=None, state="garbage_db")
@example(payload=GOOD_TOML.encode(), host="example.invalid", state=None)
def test_fedrec_serve_refuses_bad_input_with_one_line(payload, host, state):
    with scratch_dir() as root:
        config = root / "coordinator.toml"
        config.write_bytes(payload)
        argv = ["serve", "--config", str(config)]
        if host is not None:
            argv += ["--host", host]
        if state is not None:
            folder = root / "state-arg"
            if state == "garbage_db":
                folder.mkdir()
                (folder / "coordinator.db").write_bytes(b"garbage" * 100)
            else:
                folder = place(folder, state)
            argv += ["--state-dir", str(folder)]
        _check(*_run(argv))


def _stopped_state(folder: Path) -> Path:
    StateStore(folder).close()
    return folder


@settings(max_examples=budget(1))
@given(state=st.sampled_from(["stopped", "garbage_db", *PATH_KINDS]),
       coordinator=st.one_of(st.none(), st.sampled_from(["127.0.0.1:1", "[::1]:1", "localhost:1", "127.0.0.1:0",
                                                          "127.0.0.1:99999", "127.0.0.1", ":1", "[::1", "a b:1"]),
                             st.sampled_from(HOSTILE_TOKENS)),
       ca=st.one_of(st.none(), st.sampled_from(["good", "garbage", *PATH_KINDS])))
@example(state="stopped", coordinator=None, ca=None)
@example(state="file", coordinator=None, ca=None)
def test_fedrec_status_refuses_bad_input_with_one_line(state, coordinator, ca):
    with scratch_dir() as root:
        folder = root / "state"
        if state == "stopped":
            _stopped_state(folder)
        elif state == "garbage_db":
            folder.mkdir()
            (folder / "coordinator.db").write_bytes(b"garbage" * 100)
        else:
            folder = place(folder, state)
        argv = ["status", "--state-dir", str(folder)]
        if coordinator is not None:
            argv += ["--coordinator", coordinator]
        if ca is not None:
            path = root / "ca.pem"
            if ca == "good":
                from coordinator.tls import load_or_create

                path.write_bytes(load_or_create(root / "tls-home").ca_pem)
            elif ca == "garbage":
                path.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
            else:
                path = place(path, ca)
            argv += ["--ca-cert", str(path)]
        _check(*_run(argv))


UP_BAD = {
    "--profile": st.one_of(st.sampled_from(["nope", "", "IDEAL"]), utf8_text.filter(
        lambda t: t not in ("ideal", "mixed", "slow", "drop-after-masking", "heterogeneous"))),
    "--devices": st.sampled_from(["0", "1", "-5", "100000000", "401", "1e3", "x"]),
    "--device-processes": st.sampled_from(["0", "65", "-1", "x"]),
    "--selection": st.one_of(st.sampled_from(["random", "", "AUTO"]), st.sampled_from(HOSTILE_TOKENS)),
    "--over-selection": st.sampled_from(["-1", "nan", "inf", "11", "x"]),
    "--report-window": st.sampled_from(["0", "-1", "nan", "1e9"]),
    "--export-every": st.sampled_from(["0", "-1", "x"]),
    "--min-reporters": st.sampled_from(["1", "0", "-1", "401"]),
    "--clients-per-round": st.sampled_from(["0", "-1", "10000000000", "401"]),
    "--dim": st.sampled_from(["-1", "2000", "x"]),
    "--target-epsilon": st.sampled_from(["0", "-1", "nan", "inf"]),
}
UP_ANY = {**{flag: st.sampled_from(HOSTILE_TOKENS) for flag in UP_BAD},
          "--rounds": st.sampled_from(["1", "2", "0", "x"]), "--dp": st.sampled_from(["none", "fixed", "adaptive", "x"]),
          "--seed": st.sampled_from(["0", "1", "-1"])}


@settings(max_examples=budget(2))
@given(bad=st.sampled_from(sorted(UP_BAD)), data=st.data())
@example(bad="--profile", data=None)
def test_fedrec_up_refuses_a_bad_flag_before_starting_anything(bad, data):
    """Every argv holds at least one invalid flag, so nothing may start; a few other flags ride along."""
    with scratch_dir() as root:
        if data is None:
            argv = ["up", "--profile", "nope"]
        else:
            argv = ["up", bad, data.draw(UP_BAD[bad])]
            for flag in data.draw(st.lists(st.sampled_from(sorted(UP_ANY)), max_size=3, unique=True)):
                if flag != bad:
                    argv += [flag, data.draw(UP_ANY[flag])]
        argv += ["--out", str(root / "out"), "--no-baselines"]
        kind, code, stderr = _run(argv)
        assert kind != "would serve", argv  # an invalid flag must be refused
        _check(kind, code, stderr)
        assert not (root / "out" / "coordinator").exists()


def test_a_written_config_round_trips_through_the_reader(tmp_path):
    """What `fedrec up` writes is what `fedrec serve` reads (the TOML writer quotes every value)."""
    training = training_config({"dp": "adaptive", "target_epsilon": 8.0, "rounds": 5, "clients_per_round": 3,
                                "dim": 4, "clip": 0.25})
    path = up_module.write_coordinator_config(tmp_path, training.to_dict(), DeploymentConfig(population=9))
    data = tomllib.loads(path.read_text())
    config = config_from_dict(data, base=tmp_path)
    assert config.training == training and config.population == 9
    assert json.loads(json.dumps(config.training.to_dict())) == training.to_dict()
