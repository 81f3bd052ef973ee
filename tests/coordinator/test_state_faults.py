"""State-folder faults and `fedrec status` without a live coordinator (issue 16, items 1 and 4).

A state folder that is a file, one on a full disk and a garbage coordinator.db ended in a
`StateError` traceback; `fedrec status` needed a live coordinator, said "empty address list"
for a garbage CA and gave a codec error naming no file for a garbage address file. Real
processes, a real SQLite database and a real full filesystem (a tmpfs; skipped where none
can be mounted).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import dp_accounting
import numpy as np
import pytest

from coordinator.errors import StateError, StateFolderBusy
from coordinator.state_lock import LOCK_FILE, StateLock, holder
from coordinator.state_store import ADDRESS_FILE, TRAINING_CONFIG_META, Checkpoint, StateStore
from coordinator.tls import load_or_create
from tests.coordinator.commands import fedrec, one_error_line
from tff_pipeline.privacy.ledger import PrivacyLedger


def fill(path: Path) -> None:
    """Write to `path` until the disk is full."""
    with open(path, "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


@contextlib.contextmanager
def full_disk(path: Path, size: str = "64k"):
    """A small tmpfs at `path`, filled up."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to make a real full disk: {mounted.stderr.strip()}")
    try:
        fill(path / "filler")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_state_folder_faults_are_one_line_errors_at_once(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    assert "the state folder is a file, not a folder" in one_error_line(fedrec("serve", "--state-dir", str(a_file)))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "coordinator.db").write_bytes(b"garbage " * 512)
    started = time.monotonic()
    line = one_error_line(fedrec("serve", "--state-dir", str(garbage)))
    assert f"{garbage / 'coordinator.db'}: not a usable coordinator database" in line
    assert time.monotonic() - started < 30  # before TensorFlow is imported
    assert (garbage / "coordinator.db").read_bytes() == b"garbage " * 512  # nothing of the user's is touched
    with full_disk(tmp_path / "full") as disk:
        line = one_error_line(fedrec("serve", "--state-dir", str(disk / "state")))
        assert "No space left on device" in line and str(disk / "state") in line


def test_a_full_disk_during_a_run_loses_nothing_stored(tmp_path):
    """The coordinator abandons a round whose checkpoint cannot be written: the index, the rounds
    and the last checkpoint stay as they were."""
    with full_disk(tmp_path / "full", size="4m") as disk:
        (disk / "filler").unlink()
        store = StateStore(disk / "state")
        arrays = {"params": [np.ones(4, np.float32)]}
        store.commit_round(None, Checkpoint(0, arrays, {"round": 0}), reporters=0, dropouts=0, bytes_in=0,
                           bytes_out=0)
        attempt = store.start_round(round_id=b"r" * 16, round_number=1, selected=5)
        fill(disk / "filler")
        big = {"params": [np.ones(1 << 16, np.float32)]}
        with pytest.raises((OSError, StateError)):
            store.commit_round(attempt, Checkpoint(1, big, {"round": 1}), reporters=5, dropouts=0, bytes_in=0,
                               bytes_out=0)
        latest = store.latest_checkpoint()
        assert latest is not None and latest.params_version == 0
        assert [r.status for r in store.rounds()] == ["running"]  # marked interrupted at the next start
        store.close()
        (disk / "filler").unlink()
        reopened = StateStore(disk / "state")
        assert [r.status for r in reopened.rounds()] == ["interrupted"]
        assert reopened.latest_checkpoint().params_version == 0  # type: ignore[union-attr]
        reopened.close()


def test_the_lock_names_its_holder_and_is_released_with_the_process(tmp_path):
    state = tmp_path / "state"
    first = StateLock(state).acquire()
    with pytest.raises(StateFolderBusy, match=r"in use by another coordinator \(pid \d+ on "):
        StateLock(state).acquire()
    info = holder(state)
    assert info is not None and info["pid"] > 0
    first.release()
    assert holder(state) is None and (state / LOCK_FILE).read_text() == ""
    # A killed holder releases it: the kernel drops the flock with the process.
    script = (f"from coordinator.state_lock import StateLock; StateLock({str(state)!r}).acquire(); "
              "print('held', flush=True); import time; time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert holder(state)["pid"] == child.pid  # type: ignore[index]
        child.kill()
        child.wait(timeout=10)
        taken = StateLock(state).acquire()
        assert taken.held
        taken.release()
    finally:
        child.kill()
    assert (state / LOCK_FILE).read_text() == ""  # a released lock names nobody


def _stopped_state(state: Path) -> None:
    """A state folder as a stopped DP coordinator leaves it: 3 rounds, 2 devices, ε spent."""
    store = StateStore(state)
    for version in range(4):
        attempt = None if version == 0 else store.start_round(round_id=bytes([version]) * 16, round_number=version,
                                                              selected=2)
        store.commit_round(attempt, Checkpoint(version, {"params": [np.zeros(2)]}, {}), reporters=2, dropouts=0,
                           bytes_in=0, bytes_out=0)
    store.abandon_round(store.start_round(round_id=b"x" * 16, round_number=4, selected=2), reason="quiet",
                        reporters=0, dropouts=2, bytes_in=0, bytes_out=0)
    for k in range(2):
        store.add_device(f"d-{k}", label=f"user-{k}", certificate_sha256="0" * 64, public_key=bytes([k]) * 8)
    store.claim_meta("privacy_setting", json.dumps({"noise_multiplier": 1.0, "sampling_rate": 0.5,
                                                    "expected_clients": 1.0, "rounds": 40}))
    store.claim_meta(TRAINING_CONFIG_META, json.dumps({"dp": "fixed", "delta": 1e-4}))
    ledger = PrivacyLedger(store.connection)
    for attempt in (1, 2, 3):
        ledger.record(attempt, dp_accounting.GaussianDpEvent(1.0), 0.5)
    store.close()
    load_or_create(state)


def test_fedrec_status_reads_a_stopped_coordinators_state(tmp_path):
    state = tmp_path / "state"
    _stopped_state(state)
    done = fedrec("status", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"coordinator not running (nothing holds {state}); its state:"
    assert lines[1].startswith("rounds 3/40 completed, 1 abandoned  devices 2  ε ") and "at δ 0.0001" in lines[1]
    epsilon = float(lines[1].split("ε ")[1].split()[0])
    assert 0 < epsilon < 10
    one_error_line(fedrec("status", "--state-dir", str(tmp_path / "nowhere")))


def test_fedrec_status_names_a_garbage_ca_or_address_file(tmp_path):
    state = tmp_path / "state"
    _stopped_state(state)
    (state / ADDRESS_FILE).write_text("127.0.0.1:1\n")
    with StateLock(state):  # as if a coordinator ran: status then asks it
        good_ca = (state / "tls" / "ca.pem").read_bytes()
        (state / "tls" / "ca.pem").write_text("garbage\n")
        line = one_error_line(fedrec("status", "--state-dir", str(state)))
        assert f"{state / 'tls' / 'ca.pem'}: not a PEM certificate" in line
        (state / "tls" / "ca.pem").write_bytes(good_ca)
        (state / ADDRESS_FILE).write_bytes(b"\xff\xfe\x00garbage")
        line = one_error_line(fedrec("status", "--state-dir", str(state)))
        assert f"{state / ADDRESS_FILE}: not a coordinator address" in line
        (state / ADDRESS_FILE).write_text("127.0.0.1:1\n")  # nobody answers there: say so, and show the state
        done = fedrec("status", "--state-dir", str(state))
        assert done.returncode == 0 and "but not answering at 127.0.0.1:1: UNAVAILABLE" in done.stdout
        assert "rounds 3/40 completed" in done.stdout
