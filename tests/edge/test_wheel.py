"""The device side as installed from a wheel, not from the source tree (issue 7: the bundled
default package was found through the source tree and broke once installed)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

BUILD_WHEEL = """
import sys
from setuptools import build_meta
print(build_meta.build_wheel(sys.argv[1]))
"""


def test_a_wheel_carries_the_bundled_model_and_installs_it_without_the_source_tree(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    built = subprocess.run([sys.executable, "-c", BUILD_WHEEL, str(wheels)], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = wheels / built.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    assert {"tflite_models/synthetic/model.tflite", "tflite_models/synthetic/manifest.json",
            "protocol/manifest.py", "edge_client/cli.py"} <= set(names)
    assert not [n for n in names if n.startswith("tests/")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    # -S: no site-packages processing, so the project's editable install (the source tree) is not
    # on the path; numpy and LiteRT come from the environment's site-packages, after the wheel.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def edge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-S", "-m", "edge_client.cli", "--device-dir", str(tmp_path / "d"),
                               *args], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120)

    where = subprocess.run([sys.executable, "-S", "-c", "import edge_client, tflite_models; "
                            "print(edge_client.__file__); print(tflite_models.bundled_package())"],
                           capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    installed = edge("install")
    assert installed.returncode == 0 and "installed model synthetic-" in installed.stdout, installed.stderr
    assert edge("recommend", "-k", "3").returncode == 0
