"""`fedrec-edge` end to end in a process where TensorFlow cannot be imported, plus a static import check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge_client
from tests.import_scan import top_level_imports

PACKAGE_ROOT = Path(edge_client.__file__).parent
REPO_ROOT = PACKAGE_ROOT.parent
# The device's dependencies: numpy and LiteRT to run the model; gRPC and protobuf to talk to the
# coordinator; cryptography and pycryptodome (Crypto) for TLS identity and secure aggregation.
ALLOWED_TOP_LEVEL = {"numpy", "ai_edge_litert", "grpc", "google", "cryptography", "Crypto", "edge_client", "protocol",
                     "secagg", "tflite_models", "prometheus_client"}
# A simulated edge pod makes its users' ratings from the data set's numpy-only loaders
# (tff_pipeline/data, which the slim edge image carries; checked below).
SIMULATED_USERS = {Path("edge_client/pod.py"): {"tff_pipeline"}}
# Run when the wire code is regenerated (grpcio-tools, a dev dependency), never on a device.
BUILD_TOOLS = {Path("protocol/codegen.py")}
# Everything a device runs: its own package, the shared schema, secure aggregation, the bundled models.
DEVICE_PACKAGES = ("edge_client", "protocol", "secagg", "tflite_models")
BLOCKED = ("tensorflow", "tensorflow_federated", "tensorflow_privacy", "tff_pipeline")


@pytest.fixture(scope="module")
def no_tensorflow_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose PYTHONPATH starts with packages that refuse to be imported."""
    blockers = tmp_path_factory.mktemp("blockers")
    for name in BLOCKED:
        (blockers / name).mkdir()
        (blockers / name / "__init__.py").write_text(f"raise ImportError('{name} must not be imported on a device')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blockers), str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _edge(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_client.cli", *args], capture_output=True, text=True, check=False,
                          env=env, cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def test_the_blockers_block(no_tensorflow_env, tmp_path):
    done = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                          env=no_tensorflow_env, cwd=tmp_path, timeout=60, check=False)
    assert done.returncode != 0 and "tensorflow must not be imported on a device" in done.stderr


def test_the_cli_runs_a_whole_session_without_tensorflow(no_tensorflow_env, make_package, tmp_path):
    device = str(tmp_path / "device")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("movieId,rating,timestamp\n1000,5,1\n1007,1,2\n1014,4,3\n")

    def ok(*args: str) -> str:
        done = _edge(no_tensorflow_env, tmp_path, "--device-dir", device, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"
        return done.stdout

    assert "installed model tiny-r1-" in ok("install", str(make_package()))
    assert "imported 3 ratings" in ok("import-ratings", str(ratings))
    assert "rated item 1021: 2" in ok("rate", "1021", "2")
    assert "from 4 ratings" in ok("personalize")
    lines = ok("recommend", "-k", "5").splitlines()
    assert "personalized" in lines[0]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(row[2:4] == ["Item", row[1]] for row in rows)  # rank, id, title "Item <id>", score
    assert not {int(row[1]) for row in rows} & {1000, 1007, 1014, 1021}
    assert all(1.0 <= float(row[4]) <= 5.0 for row in rows)
    status = ok("status")
    assert "ratings: 4 (4 known to the active model)" in status and "fitted with tiny-r1-" in status

    refused = _edge(no_tensorflow_env, tmp_path, "--device-dir", device, "rate", "99", "4")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "fedrec-edge: error: rating refused: item id 99 is not in the active model's vocabulary "
        f"(model {status.split('model: ')[1].split()[0]})")
    missing = _edge(no_tensorflow_env, tmp_path, "--device-dir", device, "install", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "fedrec-edge: error: install refused (model tiny-r1-" in missing.stderr


def test_cli_errors_on_a_fresh_device_are_one_line(no_tensorflow_env, tmp_path):
    done = _edge(no_tensorflow_env, tmp_path, "--device-dir", str(tmp_path / "d"), "recommend")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "fedrec-edge: error: no model installed in" in done.stderr


def test_device_code_imports_only_the_standard_library_and_the_device_dependencies():
    allowed = set(sys.stdlib_module_names) | ALLOWED_TOP_LEVEL | {"__future__"}
    modules = sorted(p for name in DEVICE_PACKAGES for p in (REPO_ROOT / name).rglob("*.py")
                     if p.relative_to(REPO_ROOT) not in BUILD_TOOLS)
    assert {p.name for p in modules} >= {"__init__.py", "cli.py", "device.py", "store.py", "litert_model.py",
                                         "client_update.py", "manifest.py", "package.py", "signatures.py",
                                         "device_lock.py", "native_log.py", "round_client.py", "fleet.py",
                                         "identity.py", "profiles.py", "participant.py", "rounds_pb2.py",
                                         "rounds_pb2_grpc.py", "upload.py", "tensors.py", "quantize.py", "shamir.py",
                                         "keys.py", "graph.py", "prg.py"}
    offending = [f"{p.relative_to(REPO_ROOT)}:{line}: {name}" for p in modules for line, name in top_level_imports(p)
                 if name not in allowed | SIMULATED_USERS.get(p.relative_to(REPO_ROOT), set())]
    assert offending == []


def test_the_data_loaders_an_edge_pod_uses_need_only_numpy():
    allowed = set(sys.stdlib_module_names) | {"numpy", "protocol", "__future__"}
    modules = sorted((REPO_ROOT / "tff_pipeline" / "data").rglob("*.py"))
    assert modules
    offending = [f"{p.relative_to(REPO_ROOT)}:{line}: {name}" for p in modules for line, name in top_level_imports(p)
                 if name not in allowed]
    assert offending == []
    assert (REPO_ROOT / "tff_pipeline" / "__init__.py").read_text().count("import") == 0
