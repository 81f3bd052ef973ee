"""Fuzz the command lines: `fedrec simulate` flags (and the SimulationConfig they build) and `fedrec-edge`.

A refused command exits 2 with exactly one `fedrec: error:` / `fedrec-edge: error:` line on stderr
(argparse's own usage errors, a usage block then one `error:` line with status 2, are accepted) and
never a traceback. Everything runs in-process. `fedrec simulate` never trains here: the TensorFlow
import and the synthetic data generation are replaced by a guard that stops the command at the point
where a valid configuration would start training (counted as "would train").
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from fuzzlib import (
    HOSTILE_TOKENS,
    PATH_KINDS,
    assert_one_line,
    budget,
    float_tokens,
    int_tokens,
    mutated_table,
    place,
    record,
    remark,
    scratch_dir,
    tokens,
    utf8_text,
    whole_file_garbage,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fedrec_cli.main as fedrec_cli
import tff_pipeline.data as data_module
from edge_client import cli as edge_cli
from edge_client.device import Device
from protocol.manifest import Manifest
from tff_pipeline import runtime as training_runtime
from tff_pipeline.config import MAX_DIM, MAX_LOCAL_STEPS, MAX_ROUNDS, ConfigError, SimulationConfig
from tflite_models import bundled_package

pytestmark = pytest.mark.fuzz

BUNDLED = bundled_package()
BUNDLED_MANIFEST = Manifest.read(BUNDLED / "manifest.json")
CONFIG_FIELDS = [f.name for f in dataclasses.fields(SimulationConfig)]
# Integers beyond float range (a float field must refuse them with a ConfigError). Such ints reach
# SimulationConfig only from a config.json; on the command line, argparse reports a decimal string
# of more than 4300 digits (Python's int() limit) as an invalid value.
HUGE_INTS = st.integers(-(10**400), 10**400)


class WouldTrain(BaseException):
    """Raised by the guard where `fedrec simulate` would start the real (slow, TensorFlow) training."""


@pytest.fixture(scope="module", autouse=True)
def never_train():
    def refuse(*args, **kwargs):
        raise WouldTrain()

    patch = pytest.MonkeyPatch()
    patch.setattr(training_runtime, "import_training_stack", refuse)
    patch.setattr(data_module, "synthetic_split", refuse)  # load_dataset's generator: valid synthetic runs stop here
    yield
    patch.undo()


# ---------------------------------------------------------------------------------------------
# SimulationConfig

any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-5, MAX_ROUNDS + 5), HUGE_INTS, st.floats(), utf8_text,
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, MAX_DIM, MAX_DIM + 1, MAX_LOCAL_STEPS + 1, MAX_ROUNDS + 1, 10**9 + 1,
                     0.0, -0.0, 1.0, 0.5, 1e-300, 5e-324, 1e308, "none", "fixed", "adaptive", "adam", "sgdm",
                     "synthetic", "ml-100k", "movielens-csv", "random", "loo", "u1", ""]),
    st.lists(st.integers(), max_size=2), st.dictionaries(utf8_text, st.integers(), max_size=2), st.just(()),
)
_valid_values = st.fixed_dictionaries({}, optional={
    "dataset": st.sampled_from(["synthetic", "ml-100k", "movielens-csv"]), "seed": st.integers(0, 2**63 - 1),
    "rounds": st.integers(1, MAX_ROUNDS), "dim": st.integers(0, MAX_DIM), "local_steps": st.integers(0, MAX_LOCAL_STEPS),
    "user_l2": st.floats(0, 1e300, exclude_min=True), "item_l2": st.floats(0, 1e300),
    "server_momentum": st.floats(0, 1, exclude_max=True), "delta": st.floats(0, 1, exclude_min=True, exclude_max=True),
    "dp": st.sampled_from(["none", "fixed", "adaptive"]), "baselines": st.booleans(),
})
config_values = st.one_of(
    st.dictionaries(st.sampled_from(CONFIG_FIELDS), any_value, max_size=6),
    # Mostly valid values with one hostile field, so that every check is reached.
    st.tuples(_valid_values, st.dictionaries(st.sampled_from(CONFIG_FIELDS), any_value, max_size=1))
    .map(lambda pair: {**pair[0], **pair[1]}),
)


def _config_or_error(values: dict) -> SimulationConfig | None:
    try:
        config = SimulationConfig(**values)
    except ConfigError as error:
        record(f"ConfigError: {error.field}")
        assert error.field in CONFIG_FIELDS, error.field
        assert_one_line(str(error))
        assert str(error).startswith(f"{error.field}: ")
        return None
    record("valid config")
    return config


@settings(max_examples=budget(3))
@given(values=config_values)
@example(values={"seed": 2**63})
@example(values={"delta": float("nan")})
@example(values={"rounds": True})
@example(values={"dataset": ["synthetic"]})
@example(values={"dataset": {"synthetic": 1}})
@example(values={"dataset": "ml-100k", "data_dir": 5})
@example(values={"user_l2": 2**1000})
@example(values={"user_l2": 10**400})
def test_any_config_value_gives_a_config_or_configerror(values):
    config = _config_or_error(values)
    if config is None:
        return
    # A valid config survives the run folder's config.json round trip.
    again = SimulationConfig.from_dict(json.loads(json.dumps(config.to_dict(), allow_nan=False)))
    assert again == config
    for num_items in (1, 2**16, 2**26, 2**40):
        try:
            config.check_model_size(num_items)
        except ConfigError as error:
            assert error.field == "dim"
            assert_one_line(str(error))


# ---------------------------------------------------------------------------------------------
# fedrec simulate

INT_FLAGS = {"--seed": (0, 2**63 - 1), "--rounds": (1, MAX_ROUNDS), "--clients-per-round": (1, 10**9),
             "--dim": (0, MAX_DIM), "--local-steps": (0, MAX_LOCAL_STEPS), "--eval-every": (1, MAX_ROUNDS),
             "--centralized-epochs": (1, 1000)}
FLOAT_FLAGS = ["--user-l2", "--item-l2", "--item-bias-l2", "--local-lr", "--server-lr", "--server-momentum",
               "--server-adam-epsilon", "--noise-multiplier", "--target-epsilon", "--delta", "--clip",
               "--target-quantile"]
CHOICE_FLAGS = {"--dataset": ["synthetic", "ml-100k", "movielens-csv"], "--server-optimizer": ["sgdm", "adam"],
                "--dp": ["none", "fixed", "adaptive"], "--split": ["u1", "u5", "ua", "random", "loo"]}
PATH_FLAGS = ["--data-dir", "--out", "--resume"]
SWITCHES = ["--no-baselines", "--overwrite", "--quiet"]
SIMULATE_FLAGS = [*INT_FLAGS, *FLOAT_FLAGS, *CHOICE_FLAGS, *PATH_FLAGS, *SWITCHES]
JUNK_ARGS = ["--bogus", "--rounds", "-x", "simulate", "export", "--", "-1", "--dp=", "--see", "--out="]
# Paths: kinds from fuzzlib plus data folders and run folders (see _arena).
PATH_CHOICES = [*PATH_KINDS, "ml_ok", "csv_ok", "ml_fuzzed", "csv_fuzzed", "run_ok", "run_fuzzed", "run_empty"]


def _int_value(flag: str) -> st.SearchStrategy[str]:
    low, high = INT_FLAGS[flag]
    return st.one_of(st.integers(low, high).map(str), st.sampled_from([low - 1, high + 1, -(2**63), 2**64]).map(str),
                     int_tokens(), float_tokens, st.sampled_from(HOSTILE_TOKENS))


float_value = st.one_of(float_tokens, st.floats(0, 2, exclude_min=True).map(repr), int_tokens(),
                        st.sampled_from(HOSTILE_TOKENS), st.just("9" * 400))


def _arena(root: Path) -> dict[str, Path]:
    """Paths for the path flags; the fuzzed ones are rewritten for each example."""
    paths = {kind: place(root / f"kind-{kind}", kind) for kind in PATH_KINDS}
    ml = root / "ml_ok"
    ml.mkdir()
    (ml / "u.data").write_text("".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t{u * i}\n" for u in range(1, 4) for i in range(1, 6)))
    csv_dir = root / "csv_ok"
    csv_dir.mkdir()
    (csv_dir / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,0\n1,2,3,1\n2,1,5,2\n")
    run = root / "run_ok"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"run_id": "20250101T000000Z-00000000", "created_at": "",
                                                 "config": SimulationConfig().to_dict()}))
    (root / "run_empty").mkdir()
    paths.update(ml_ok=ml, csv_ok=csv_dir, run_ok=run, run_empty=root / "run_empty",
                 ml_fuzzed=root / "ml_fuzzed", csv_fuzzed=root / "csv_fuzzed", run_fuzzed=root / "run_fuzzed")
    return paths


# Values of a config.json (any_value includes ints beyond float range).
json_config_value = st.one_of(any_value, st.sampled_from([float("inf"), float("nan")]))


@st.composite
def fuzzed_config_json(draw) -> bytes:
    config = SimulationConfig().to_dict()
    config.update(draw(st.dictionaries(st.sampled_from(CONFIG_FIELDS + ["bogus"]), json_config_value, max_size=3)))
    if draw(st.booleans()):
        config.update(draw(_valid_values))
    for field in draw(st.lists(st.sampled_from(CONFIG_FIELDS), max_size=2)):
        config.pop(field, None)
    payload = {"run_id": draw(st.one_of(st.just("20250101T000000Z-00000000"), utf8_text, any_value)),
               "created_at": draw(st.one_of(utf8_text, any_value)), "config": config}
    for key in draw(st.lists(st.sampled_from(["run_id", "config", "created_at"]), max_size=1)):
        payload.pop(key)
    text = json.dumps(payload, allow_nan=True)
    return draw(st.one_of(st.just(text.encode()), whole_file_garbage(),
                          st.just(b"[" * 100_000), st.integers(0, len(text)).map(lambda k: text[:k].encode())))


@st.composite
def simulate_argv(draw):
    flags = draw(st.lists(st.sampled_from(SIMULATE_FLAGS), min_size=1, max_size=6, unique=True))
    argv = ["simulate"]
    paths_used = {}
    for flag in flags:
        if flag in SWITCHES:
            argv.append(flag)
            continue
        if flag in INT_FLAGS:
            value = draw(_int_value(flag))
        elif flag in FLOAT_FLAGS:
            value = draw(float_value)
        elif flag in CHOICE_FLAGS:
            value = draw(st.one_of(st.sampled_from(CHOICE_FLAGS[flag]), tokens))
        else:
            kind = draw(st.sampled_from(PATH_CHOICES))
            paths_used[flag] = kind
            value = f"@{kind}@"  # replaced by the arena path in the test
        if draw(st.booleans()):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(JUNK_ARGS)))
    return argv, paths_used


def _run(main, argv) -> tuple[str, int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
            kind = "returned"
        except SystemExit as stop:
            code, kind = stop.code, "usage"
        except WouldTrain:
            code, kind = None, "would train"
    return kind, code, out.getvalue(), err.getvalue()


def _check_refusal(prog: str, kind: str, code, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    if kind == "usage":
        record("outcome: argparse usage error")
        assert code == 2, (code, stderr)
        last = stderr.rstrip("\n").splitlines()[-1]
        assert re.match(rf"{prog}( [a-z-]+)?: error: ", last), stderr
    else:
        record("outcome: exit 2, one-line error")
        assert code == 2, (code, stderr)
        assert stderr.endswith("\n") and stderr.startswith(f"{prog}: error: "), stderr
        assert_one_line(stderr[:-1])


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> dict[str, Path]:
    return _arena(tmp_path_factory.mktemp("cli-arena"))


def _write_fuzzed(path: Path, kind: str, draw) -> None:
    """(Re)write a fuzzed data or run folder for this example."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    if kind == "ml_fuzzed":
        rows = [[str(u), str(i), "4", "0"] for u in (1, 2) for i in (1, 2, 3)]
        (path / "u.data").write_bytes(draw(mutated_table(rows, sep="\t", encoding="latin-1")))
    elif kind == "csv_fuzzed":
        rows = [["userId", "movieId", "rating", "timestamp"]]
        rows += [[str(u), str(i), "4.5", "0"] for u in (1, 2) for i in (1, 2)]
        (path / "ratings.csv").write_bytes(draw(mutated_table(rows, sep=",", encoding="utf-8")))
    elif kind == "run_fuzzed":
        (path / "config.json").write_bytes(draw(fuzzed_config_json()))


@settings(max_examples=budget(4))
@given(case=simulate_argv(), data=st.data())
@example(case=(["simulate", "--rounds", "0"], {}), data=None)
@example(case=(["simulate", "--delta=nan"], {}), data=None)
@example(case=(["simulate", "--dim", "99999999999"], {}), data=None)
@example(case=(["simulate", "--dp", "none", "--noise-multiplier", "1"], {}), data=None)
@example(case=(["simulate", "--resume", "@run_ok@", "--rounds", "5"], {"--resume": "run_ok"}), data=None)
@example(case=(["simulate", "--resume", "@run_ok@", "--overwrite"], {"--resume": "run_ok"}), data=None)
@example(case=(["simulate", "--resume", "@run_ok@", "--out", "@file@"], {"--resume": "run_ok", "--out": "file"}), data=None)
@example(case=(["simulate", "--out", "@fifo@"], {"--out": "fifo"}), data=None)
@example(case=(["simulate", "--dataset", "ml-100k", "--data-dir", "@fifo@"], {"--data-dir": "fifo"}), data=None)
@example(case=(["simulate", "--dataset", "ml-100k", "--data-dir", "@ml_ok@", "--dim", "1024"], {"--data-dir": "ml_ok"}),
         data=None)
@example(case=(["simulate", "--split", "u7"], {}), data=None)
@example(case=(["simulate", "--resume", "@loop@", "--out", "@loop@"], {"--resume": "loop", "--out": "loop"}), data=None)
def test_fedrec_simulate_refuses_bad_flags_with_one_line(case, data, arena):
    argv, paths_used = case
    for _flag, kind in paths_used.items():
        if kind.endswith("_fuzzed") and data is not None:
            _write_fuzzed(arena[kind], kind, data.draw)
    argv = [re.sub(r"@(\w+)@", lambda m: str(arena[m.group(1)]), arg) for arg in argv]
    remark(f"argv: {argv}")
    kind, code, stdout, stderr = _run(fedrec_cli.main, argv)
    remark(f"{kind} {code}: {stderr!r}")
    if kind == "would train":
        record("outcome: valid, would train (stopped by the guard)")
        assert stderr == ""
        return
    _check_refusal("fedrec", kind, code, stderr)


@settings(max_examples=budget(1))
@given(config_json=fuzzed_config_json(), out=st.sampled_from([None, "same", *PATH_CHOICES]),
       run_kind=st.sampled_from(["run_fuzzed", "run_fuzzed", "run_fuzzed", *PATH_KINDS]),
       extra=st.lists(st.sampled_from(["--quiet", "--overwrite"]), max_size=1))
def test_fedrec_simulate_resume_of_any_run_folder_is_refused_with_one_line(config_json, out, run_kind, extra, arena):
    """`--resume` of a run folder whose config.json is anything (or of a path of any kind)."""
    run = arena[run_kind]
    if run_kind == "run_fuzzed":
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        (run / "config.json").write_bytes(config_json)
    argv = ["simulate", "--resume", str(run), *extra]
    if out is not None:
        argv += ["--out", str(run if out == "same" else arena[out])]
    remark(f"argv: {argv}, config.json: {config_json[:400]!r}")
    kind, code, stdout, stderr = _run(fedrec_cli.main, argv)
    remark(f"{kind} {code}: {stderr!r}")
    if kind == "would train":
        record("outcome: valid, would train (stopped by the guard)")
        assert stderr == ""
        return
    _check_refusal("fedrec", kind, code, stderr)


# ---------------------------------------------------------------------------------------------
# fedrec-edge

@pytest.fixture(scope="module")
def template_device(tmp_path_factory) -> Path:
    """A device with the bundled model installed and a few ratings (copied for each example)."""
    folder = tmp_path_factory.mktemp("edge-template") / "device"
    with Device(folder) as device:
        device.install(BUNDLED)
        for item, stars in ((0, 5.0), (1, 1.0), (2, 4.0)):
            device.rate(item, stars)
    return folder


DEVICE_KINDS = ["ready", "ready", "ready", "fresh", "junk_db", "db_dir", "models_file", "lock_dir", *PATH_KINDS,
                "unknown_home"]  # '~user' of no such user
PACKAGE_KINDS = ["bundled", "default", "mutated_manifest", "mutated_model", "rehashed_model", "rehashed_model",
                 "manifest_only", *PATH_KINDS]
RATINGS_KINDS = ["valid", "fuzzed", "fuzzed", "garbage", *PATH_KINDS]


@st.composite
def edge_case(draw):
    device_kind = draw(st.sampled_from(DEVICE_KINDS))
    command = draw(st.sampled_from(["install", "import-ratings", "rate", "personalize", "recommend", "status"]))
    spec: dict = {"device": device_kind, "command": command}
    if command == "install":
        spec["package"] = draw(st.sampled_from(PACKAGE_KINDS))
        if spec["package"] == "mutated_manifest":
            text = (BUNDLED / "manifest.json").read_text()
            spec["manifest"] = draw(mutated_table([[line] for line in text.splitlines()], sep="", encoding="utf-8",
                                                  max_mutations=2))
        elif spec["package"] == "mutated_model":
            spec["model_cut"] = draw(st.integers(0, BUNDLED_MANIFEST.model_bytes))
        elif spec["package"] == "rehashed_model":
            # A damaged model whose manifest states its (new) size and sha256: it gets to the interpreter.
            size = BUNDLED_MANIFEST.model_bytes
            spec["flips"] = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=0, max_size=3))
            spec["model_cut"] = draw(st.one_of(st.just(size), st.integers(0, size)))
    elif command == "import-ratings":
        spec["ratings"] = draw(st.sampled_from(RATINGS_KINDS))
        rows = [["item_id", "rating"]] + [[str(i), str(1 + i % 5)] for i in range(5)]
        if spec["ratings"] == "fuzzed":
            spec["content"] = draw(mutated_table(rows, sep=",", encoding="utf-8"))
        elif spec["ratings"] == "garbage":
            spec["content"] = draw(whole_file_garbage())
        elif spec["ratings"] == "valid":
            spec["content"] = "\n".join(",".join(r) for r in rows).encode()
    elif command == "rate":
        spec["args"] = [draw(st.one_of(st.integers(-3, 310).map(str), tokens)),
                        draw(st.one_of(st.sampled_from(["1", "2.5", "5", "0", "6"]), tokens))]
    elif command == "recommend":
        spec["args"] = draw(st.one_of(st.just([]), st.tuples(st.just("-k"), st.one_of(
            st.integers(-2, 400).map(str), int_tokens(), tokens)).map(list)))
    if draw(st.integers(0, 9)) == 0:
        spec["junk"] = draw(st.sampled_from(["--bogus", "-k", "extra", "--device-dir", "install"]))
    return spec


def _edge_device(root: Path, kind: str, template: Path) -> Path:
    path = root / "device"
    if kind == "ready":
        shutil.copytree(template, path, symlinks=True)
    elif kind == "fresh":
        pass
    elif kind == "unknown_home":
        path = Path("~no-such-user-fedrec-fuzz/device")
    elif kind in ("junk_db", "db_dir", "models_file", "lock_dir"):
        shutil.copytree(template, path, symlinks=True)
        if kind == "junk_db":
            for name in ("device.db", "device.db-wal", "device.db-shm"):
                (path / name).unlink(missing_ok=True)
            (path / "device.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
        elif kind == "db_dir":
            for name in ("device.db", "device.db-wal", "device.db-shm"):
                (path / name).unlink(missing_ok=True)
            (path / "device.db").mkdir()
        elif kind == "models_file":
            shutil.rmtree(path / "models")
            (path / "models").write_text("not a folder\n")
        elif kind == "lock_dir":
            (path / ".lock").unlink(missing_ok=True)
            (path / ".lock").mkdir()
    else:
        path = place(path, kind)
    return path


def _edge_package(root: Path, spec: dict) -> list[str]:
    kind = spec["package"]
    if kind == "default":
        return []
    if kind == "bundled":
        return [str(BUNDLED)]
    package = root / "package"
    if kind in ("mutated_manifest", "mutated_model", "manifest_only"):
        package.mkdir()
        manifest = spec.get("manifest", (BUNDLED / "manifest.json").read_bytes())
        (package / "manifest.json").write_bytes(manifest)
        if kind != "manifest_only":
            model = (BUNDLED / "model.tflite").read_bytes()
            (package / "model.tflite").write_bytes(model[:spec["model_cut"]] if kind == "mutated_model" else model)
        return [str(package)]
    if kind == "rehashed_model":
        model = bytearray((BUNDLED / "model.tflite").read_bytes())
        for offset, bit in spec["flips"]:
            model[offset] ^= 1 << bit
        _write_rehashed(package, bytes(model[:spec["model_cut"]]))
        return [str(package)]
    return [str(place(package, kind))]


def _write_rehashed(package: Path, model: bytes) -> None:
    """A package of the bundled manifest and `model`, with the model's size and sha256 in the manifest."""
    package.mkdir()
    (package / "model.tflite").write_bytes(model)
    fields = json.loads((BUNDLED / "manifest.json").read_text())
    fields.update(model_sha256=hashlib.sha256(model).hexdigest(), model_bytes=len(model))
    (package / "manifest.json").write_text(json.dumps(fields))


def _edge_ratings(root: Path, spec: dict) -> list[str]:
    path = root / "ratings.csv"
    if "content" in spec:
        path.write_bytes(spec["content"])
        return [str(path)]
    return [str(place(path, spec["ratings"]))]


@settings(max_examples=budget(3))
@given(spec=edge_case())
@example(spec={"device": "ready", "command": "rate", "args": ["1" * 5000, "3"]})
@example(spec={"device": "ready", "command": "rate", "args": ["5", "nan"]})
@example(spec={"device": "ready", "command": "recommend", "args": ["-k", "0"]})
@example(spec={"device": "ready", "command": "recommend", "args": ["-k", str(2**63)]})
@example(spec={"device": "fifo", "command": "status"})
@example(spec={"device": "fresh", "command": "personalize"})
@example(spec={"device": "ready", "command": "import-ratings", "ratings": "fifo"})
@example(spec={"device": "ready", "command": "install", "package": "dev_null"})
@example(spec={"device": "junk_db", "command": "status"})
@example(spec={"device": "unknown_home", "command": "status"})
def test_fedrec_edge_refuses_bad_input_with_one_line(spec, template_device):
    with scratch_dir() as root:
        device = _edge_device(root, spec["device"], template_device)
        argv = ["--device-dir", str(device), spec["command"]]
        if spec["command"] == "install":
            argv += _edge_package(root, spec)
        elif spec["command"] == "import-ratings":
            argv += _edge_ratings(root, spec)
        else:
            argv += spec.get("args", [])
        if "junk" in spec:
            argv.append(spec["junk"])
        remark(f"argv: {argv}")
        kind, code, stdout, stderr = _run(edge_cli.main, argv)
        remark(f"{kind} {code}: {stderr!r}")
    if kind == "returned" and code == 0:
        record("outcome: exit 0")
        assert stderr == "", stderr
        return
    _check_refusal("fedrec-edge", kind, code, stderr)


# ---------------------------------------------------------------------------------------------
# Regression tests: product bugs this tier found (fixed), each with its minimal input

def test_an_int_beyond_float_range_in_a_float_field_is_a_configerror():
    """Was an OverflowError (math.isfinite of an int too large for a float)."""
    with pytest.raises(ConfigError) as refused:
        SimulationConfig(user_l2=10**400)
    assert refused.value.field == "user_l2"
    assert str(refused.value).startswith("user_l2: must be a finite number, got 1000"), str(refused.value)
    assert_one_line(str(refused.value))


def test_resume_with_a_huge_int_in_config_json_is_a_one_line_error_naming_it(tmp_path):
    """Was an OverflowError traceback (RunFolder.read_identity caught TypeError/ValueError only)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"run_id": "x", "config": {"user_l2": 1' + "0" * 400 + "}}")
    kind, code, _, stderr = _run(fedrec_cli.main, ["simulate", "--resume", str(run)])
    _check_refusal("fedrec", kind, code, stderr)
    assert stderr.startswith(f"fedrec: error: {run / 'config.json'}: invalid configuration: user_l2: "), stderr


def test_resume_and_out_on_a_symlink_loop_is_a_one_line_error_naming_it(tmp_path):
    """Was a RuntimeError traceback ('Symlink loop from ...' of Path.resolve() on Python 3.11)."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    kind, code, _, stderr = _run(fedrec_cli.main, ["simulate", "--resume", str(loop), "--out", str(loop)])
    _check_refusal("fedrec", kind, code, stderr)
    assert stderr.startswith(f"fedrec: error: {loop}: "), stderr


def test_a_device_dir_in_an_unknown_users_home_is_a_one_line_error_naming_it():
    """Was a RuntimeError traceback ('Could not determine home directory.' of Path.expanduser())."""
    device_dir = "~no-such-user-fedrec-fuzz/device"
    kind, code, _, stderr = _run(edge_cli.main, ["--device-dir", device_dir, "status"])
    _check_refusal("fedrec-edge", kind, code, stderr)
    assert stderr.startswith(f"fedrec-edge: error: {device_dir}: "), stderr


@functools.lru_cache(maxsize=1)
def _damaged_model_refusals() -> dict[str, bytes]:
    """Copies of the bundled model with one bit flipped that LiteRT refuses, one per kind of
    refusal ("not a usable TFLite model", "signature ... failed"): the offsets that produce them
    depend on the exported bytes, so they are searched for, deterministically."""
    from edge_client.litert_model import LiteModel, ModelError

    original = (BUNDLED / "model.tflite").read_bytes()
    manifest = Manifest.read(BUNDLED / "manifest.json")
    found: dict[str, bytes] = {}
    for offset in range(len(original) // 3, len(original), 97):
        model = bytearray(original)
        model[offset] ^= 1 << 4
        try:
            LiteModel.from_bytes(bytes(model), manifest, model_path=Path("model.tflite")).self_test()
        except ModelError as error:
            kind = "not-a-usable-model" if "not a usable TFLite model" in str(error) else \
                "signature-failed" if "failed:" in str(error) else None
            if kind and kind not in found:
                found[kind] = bytes(model)
        if len(found) == 2:
            break
    return found


@pytest.mark.parametrize("kind", ["signature-failed", "not-a-usable-model"])
def test_a_damaged_model_is_a_one_line_install_error_naming_it(kind, tmp_path):
    """The bundled model with one bit flipped, its manifest stating the new size and sha256. The
    interpreter's multi-line error text used to be printed as is (2+ lines on stderr)."""
    damaged = _damaged_model_refusals()
    assert kind in damaged, f"no single-bit flip of the bundled model gave a {kind} refusal"
    _write_rehashed(tmp_path / "package", damaged[kind])
    kind_, code, _, stderr = _run(edge_cli.main, ["--device-dir", str(tmp_path / "device"), "install",
                                                  str(tmp_path / "package")])
    _check_refusal("fedrec-edge", kind_, code, stderr)
    assert f"{tmp_path / 'package' / 'model.tflite'}: " in stderr, stderr
