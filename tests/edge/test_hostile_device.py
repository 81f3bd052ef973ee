"""The device under hostile use (issue 7, items 4, 6-9): races, endless files, edited manifests,
absurd stored data, full and read-only disks. Real `fedrec-edge` processes, real LiteRT and SQLite."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_client.device import Device, DeviceError
from edge_client.store import Store
from protocol.manifest import MANIFEST_FILE, MODEL_FILE

RACE_TRIALS = int(os.environ.get("FEDREC_RACE_TRIALS", "3"))  # CI runs 25 in a step of its own


def _edge(device: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_client.cli", "--device-dir", str(device), *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("fedrec-edge: error: ")
    return lines[0]


def _assert_usable(device_dir: Path) -> str:
    """The active model loads from its folder and recommends; returns its version."""
    with Device(device_dir) as device:
        status = device.status()
        assert status.model_version is not None and status.model_error is None, status.model_error
        assert (device_dir / "models" / status.model_version / MODEL_FILE).is_file()
        assert len(device.recommend(k=3)) == 3
        return status.model_version


def test_concurrent_installs_never_lose_the_active_model(make_package, tmp_path):
    """Item 4: three installs at once once removed the active model's folder (4 of 25 trials)."""
    packages = [make_package(seed=s, round_num=10 + s) for s in (1, 2, 3)]
    device = tmp_path / "device"
    assert _edge(device, "install", str(make_package())).returncode == 0
    for trial in range(RACE_TRIALS):
        order = packages[trial % 3:] + packages[:trial % 3]
        runs = [subprocess.Popen([sys.executable, "-m", "edge_client.cli", "--device-dir", str(device), "install",
                                  str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 stdin=subprocess.DEVNULL) for p in order]
        results = [(r.wait(timeout=120), r.stderr.read()) for r in runs]
        for run in runs:
            run.stdout.close()
            run.stderr.close()
        assert all(code == 0 for code, _ in results), (trial, results)
        active = _assert_usable(device)
        installed = sorted(p.name for p in (device / "models").iterdir())
        assert active in installed and len(installed) <= 2, (trial, installed)  # the active one and one before
        assert not [name for name in installed if name.startswith(".")], (trial, installed)


@pytest.mark.parametrize("what", ["manifest", "model"])
@pytest.mark.parametrize("how", ["/dev/zero", "fifo"])
def test_endless_or_blocking_files_are_refused_at_once(what, how, make_package, tmp_path):
    """Item 6: a /dev/zero model grew to 3.7 GB in 6 s; a FIFO hung forever."""
    package = tmp_path / "pkg"
    shutil.copytree(make_package(), package)
    target = package / (MANIFEST_FILE if what == "manifest" else MODEL_FILE)
    target.unlink()
    if how == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    started = time.monotonic()
    message = _one_line_error(_edge(tmp_path / "device", "install", str(package), timeout=30))
    assert time.monotonic() - started < 20
    assert "is not a regular file" in message and target.name in message


@pytest.mark.parametrize("how", ["/dev/zero", "fifo", "huge"])
def test_ratings_files_that_cannot_be_one_users_are_refused_at_once(how, make_package, tmp_path):
    """Items 6 and 9: a 200 MB ratings file was refused only after 46 s at 4.6 GB."""
    device = tmp_path / "device"
    assert _edge(device, "install", str(make_package())).returncode == 0
    ratings = tmp_path / "ratings.csv"
    if how == "fifo":
        os.mkfifo(ratings)
    elif how == "/dev/zero":
        ratings.symlink_to("/dev/zero")
    else:
        with open(ratings, "wb") as handle:  # sparse: 200 MB without writing them
            handle.write(b"item_id,rating\n")
            handle.truncate(200 * 10**6)
    started = time.monotonic()
    message = _one_line_error(_edge(device, "import-ratings", str(ratings), timeout=30))
    assert time.monotonic() - started < 20
    expected = "cannot be that large" if how == "huge" else "is not a regular file"
    assert expected in message
    with Device(device) as restarted:
        assert restarted.ratings() == {}


def _edit_manifest(source: Path, out: Path, **changes) -> Path:
    shutil.copytree(source, out)
    fields = json.loads((out / MANIFEST_FILE).read_text())
    fields.update(changes)
    (out / MANIFEST_FILE).write_text(json.dumps(fields))
    return out


@pytest.mark.parametrize("changes", [
    {"rating_max": 1e300},
    {"privacy": {"epsilon_rdp": 0.5, "epsilon_pld": 0.4, "delta": 1e-5, "noise_multiplier": 9.0, "rounds": 1,
                 "mechanism": "claimed"}},
    {"item_titles": [f"Ad {k}" for k in range(30)]},
    {"hyperparameters": {"user_l2": 0.0, "user_bias_l2": 0.0, "item_l2": 0.0, "item_bias_l2": 0.0,
                         "local_steps": 1, "local_learning_rate": 1.0, "implicit_learning_rate": 9.0,
                         "implicit_unobserved_weight": 1.0, "implicit_l2": 0.1}},
], ids=["rating range", "epsilon", "titles", "hyperparameters"])
def test_a_manifest_edited_after_export_is_refused(changes, make_package, tmp_path):
    """Item 7: the manifest's fields were covered by no hash; now the model vouches for them."""
    edited = _edit_manifest(make_package(), tmp_path / "edited", **changes)
    with pytest.raises(DeviceError, match="does not match the digest the model was exported with"):
        Device(tmp_path / "device").install(edited)


def test_stored_ratings_outside_the_models_range_are_kept_and_ignored(make_package, tmp_path):
    """Item 7: one stored rating of 1e300 broke personalize and every later upgrade."""
    device = Device(tmp_path / "device")
    device.install(make_package())
    for k, stars in enumerate([5, 4, 1, 2]):
        device.rate(1000 + 7 * k, stars)
    with Store(tmp_path / "device" / "device.db") as store:  # what an older model or a tamperer left
        store.put_ratings([(1000 + 7 * 9, 1e300)])
    report = device.personalize()
    assert report.num_ratings == 4 and report.ignored_ratings == 1 and np.isfinite(report.loss)
    upgrade = device.install(make_package(dim=6, seed=2, round_num=3))  # a dimension change refits
    assert upgrade.params == "refit" and upgrade.refit_num_ratings == 4 and upgrade.out_of_range_ratings == 1
    assert any("outside this model's rating range" in line for line in upgrade.lines())
    assert len(device.recommend(k=3)) == 3
    assert device.ratings()[1000 + 7 * 9] == 1e300  # kept: it is the user's


def test_a_manifest_nested_thousands_deep_is_one_line(make_package, tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(make_package(), package)
    (package / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    message = _one_line_error(_edge(tmp_path / "device", "install", str(package)))
    assert "manifest.json: JSON nested too deeply" in message


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to make a real full/read-only disk: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_and_a_read_only_disk_give_one_line_and_lose_nothing(make_package, tmp_path):
    """Item 8: `sqlite3.OperationalError` tracebacks on a full or read-only device disk."""
    with _small_filesystem(tmp_path / "disk", "2m") as disk:
        device = disk / "device"
        assert _edge(device, "install", str(make_package())).returncode == 0
        assert _edge(device, "rate", "1000", "5").returncode == 0
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as handle:  # fill the disk to the last byte
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 4096)
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0")
        ratings = tmp_path / "ratings.csv"
        ratings.write_text("item_id,rating\n" + "".join(f"{1000 + 7 * k},{1 + k % 5}\n" for k in range(1, 30)))
        message = _one_line_error(_edge(device, "import-ratings", str(ratings)))
        assert "the disk is full" in message, message
        refused = _edge(device, "install", str(make_package(seed=1, round_num=2)))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        filler.unlink()
        assert _assert_usable(device)
        with Device(device) as restarted:
            assert restarted.ratings() == {1000: 5.0}  # the refused import wrote nothing, the old rating stays

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            message = _one_line_error(_edge(device, "rate", "1007", "4"))
            assert "read-only" in message or "readonly" in message, message
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        with Device(device) as restarted:
            assert restarted.ratings() == {1000: 5.0}
