"""Run folders: a run id ties config, checkpoints and results together (issue 7, items 1, 3, 8, 10).

Real TFF runs on a tiny synthetic split; folders are mixed the way an interrupted or reused
`--out` once mixed them, and every resume, export or report must refuse instead of combining
another run's pieces.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from tff_pipeline import checkpoint, simulation
from tff_pipeline.config import SimulationConfig
from tff_pipeline.data import synthetic_split
from tff_pipeline.run_folder import CHECKPOINT_INDEX, RunFolder, RunFolderError


@pytest.fixture(scope="module")
def split():
    return synthetic_split(seed=5, num_users=120, num_items=80, num_negatives=10, mean_ratings_per_user=20)


def _config(**overrides) -> SimulationConfig:
    base = SimulationConfig(rounds=4, clients_per_round=30, dim=4, eval_every=1000, baselines=False,
                            server_optimizer="sgdm", server_learning_rate=0.5, server_momentum=0.0)
    return dataclasses.replace(base, **overrides)


def _dp(epsilon: float, rounds: int = 4) -> SimulationConfig:
    return _config(rounds=rounds, dp="fixed", target_epsilon=epsilon, delta=1e-3)


# --- claiming a folder (no TensorFlow needed) ------------------------------------------------


def test_a_folder_holding_a_run_is_refused_unless_overwrite_and_then_only_run_files_go(tmp_path):
    folder = RunFolder(tmp_path / "out")
    first = folder.start(_config())
    (folder / "notes.txt").write_text("mine")
    (folder.checkpoints).mkdir()
    (folder.checkpoints / "round_00009.npz").write_bytes(b"old")
    (folder.checkpoints / "keep.me").write_text("mine too")
    with pytest.raises(RunFolderError, match=rf"already holds run {first.run_id}.*--resume .*--overwrite"):
        folder.start(_config())
    second = folder.start(_config(), overwrite=True)
    assert second.run_id != first.run_id
    assert folder.read_identity().run_id == second.run_id
    assert (folder / "notes.txt").read_text() == "mine"
    assert not (folder.checkpoints / "round_00009.npz").exists()
    assert (folder.checkpoints / "keep.me").read_text() == "mine too"


def test_other_folders_and_files_are_refused_even_with_overwrite(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("x")
    (tmp_path / "plain").write_text("x")
    for path, message in ((tmp_path / "foreign", "not empty and holds no fedrec run"),
                          (tmp_path / "plain", "is a file, not a folder")):
        for overwrite in (False, True):
            with pytest.raises(RunFolderError, match=message):
                RunFolder(path).start(_config(), overwrite=overwrite)
    assert (tmp_path / "foreign" / "thesis.tex").read_text() == "x" and (tmp_path / "plain").read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RunFolder(empty).start(_config()).run_id


# --- resume -----------------------------------------------------------------------------------


def test_resume_never_adopts_another_runs_checkpoint(tff_runtime, split, tmp_path):
    """Item 1: run A (epsilon 8) finished; run B (epsilon 1) claimed the folder and died before its
    first checkpoint. Resuming B starts B from round 0, never from A's history."""
    out = tmp_path / "run"
    done_a = simulation.run(_dp(8.0), split, out_dir=out)
    a_history = done_a.report["history"]
    identity_b = RunFolder(out).start(_dp(1.0), overwrite=True)  # what `--overwrite` writes first
    assert not (out / "checkpoints" / CHECKPOINT_INDEX).exists()  # A's checkpoints went first
    resumed = simulation.run(_dp(1.0), split, out_dir=out, resume=True, identity=RunFolder(out).read_identity())
    assert resumed.report["run_id"] == identity_b.run_id
    assert resumed.report["privacy"]["epsilon_rdp"] <= 1.0
    assert [row["epsilon_rdp"] for row in resumed.report["history"]][-1] <= 1.0
    assert a_history[-1]["epsilon_rdp"] > 1.0


def test_resume_refuses_pieces_of_two_runs_or_an_edited_config(tff_runtime, split, tmp_path):
    out = tmp_path / "run"
    simulation.run(_dp(8.0, rounds=2), split, out_dir=out)
    config_path = out / "config.json"
    original = json.loads(config_path.read_text())

    # config.json of another run next to this run's checkpoint (the old failure, by hand)
    config_path.write_text(json.dumps({**original, "run_id": "20990101T000000Z-00000000",
                                       "config": {**original["config"], "target_epsilon": 1.0}}))
    with pytest.raises(checkpoint.CheckpointError, match="belongs to run .* mixes two runs"):
        simulation.run(_dp(1.0, rounds=2), split, out_dir=out, resume=True)

    # the same run id, but the configuration edited since the checkpoint
    config_path.write_text(json.dumps({**original, "config": {**original["config"], "target_epsilon": 1.0}}))
    with pytest.raises(checkpoint.CheckpointError, match="another configuration"):
        simulation.run(_dp(1.0, rounds=2), split, out_dir=out, resume=True)

    # a checkpoint beyond the run's planned rounds
    config_path.write_text(json.dumps({**original, "config": {**original["config"], "rounds": 1}}))
    index = json.loads((out / "checkpoints" / CHECKPOINT_INDEX).read_text())
    from tff_pipeline.run_folder import config_digest

    index["config_sha256"] = config_digest(SimulationConfig.from_dict({**original["config"], "rounds": 1}))
    (out / "checkpoints" / CHECKPOINT_INDEX).write_text(json.dumps(index))
    with pytest.raises(checkpoint.CheckpointError, match="holds round 2, but this run plans 1 rounds"):
        simulation.run(_dp(8.0, rounds=1), split, out_dir=out, resume=True)


def test_a_truncated_checkpoint_is_named(tff_runtime, split, tmp_path):
    out = tmp_path / "run"
    simulation.run(_config(rounds=2), split, out_dir=out)
    arrays = out / "checkpoints" / "round_00002.npz"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=r"round_00002\.npz: truncated or corrupt"):
        simulation.run(_config(rounds=2), split, out_dir=out, resume=True)


def test_reusing_out_with_fewer_rounds_keeps_every_new_checkpoint(tff_runtime, split, tmp_path):
    """Item 3: the old run's later rounds once outlived the new run's checkpoints."""
    out = tmp_path / "run"
    simulation.run(_config(rounds=6), split, out_dir=out)
    result = simulation.run(_config(rounds=3, seed=1), split, out_dir=out, overwrite=True)
    files = sorted(p.name for p in (out / "checkpoints").glob("round_*.npz"))
    assert files == ["round_00002.npz", "round_00003.npz"]
    index = json.loads((out / "checkpoints" / CHECKPOINT_INDEX).read_text())
    assert index["round"] == 3 and (out / "checkpoints" / index["arrays"]).exists()
    flat, run_id = checkpoint.read_arrays(out / "checkpoints" / "round_00003.npz")
    assert run_id == result.report["run_id"]
    for got, want in zip(flat[:3], result.params):
        np.testing.assert_array_equal(got, np.asarray(want))


# --- nonsense is refused, not reported --------------------------------------------------------


def test_a_diverging_run_stops_before_saving_a_non_finite_state(tff_runtime, split, tmp_path):
    out = tmp_path / "run"
    config = _config(rounds=10, local_learning_rate=5.0, local_steps=50)  # the local steps overflow
    with pytest.raises(simulation.TrainingDiverged, match=r"round (\d+): the model diverged") as stopped:
        simulation.run(config, split, out_dir=out)
    diverged_at = int(str(stopped.value).split()[1].rstrip(":"))
    index = json.loads((out / "checkpoints" / CHECKPOINT_INDEX).read_text()) if diverged_at > 1 else None
    if index is not None:
        assert index["round"] == diverged_at - 1
        flat, _ = checkpoint.read_arrays(out / "checkpoints" / index["arrays"])
        assert all(np.all(np.isfinite(a)) for a in flat if np.issubdtype(a.dtype, np.floating))


def test_report_json_is_strict_json(tff_runtime, split, tmp_path):
    from tff_pipeline import reporting

    out = tmp_path / "run"
    result = simulation.run(_config(rounds=2), split, out_dir=out)
    result.report["final"]["rmse"] = math.nan  # whatever produced it, it must not be written as NaN
    reporting.write_outputs(RunFolder(out), result.report, result.params, split.vocab)

    def refuse(name: str) -> None:
        raise AssertionError(f"report.json contains {name}")

    report = json.loads((out / "report.json").read_text(), parse_constant=refuse)
    assert report["final"]["rmse"] is None and report["run_id"] == result.report["run_id"]
    for name in ("vocabulary.json",):
        assert json.loads((out / name).read_text())["run_id"] == report["run_id"]
    with np.load(out / "final_model.npz") as final:
        assert str(final["run_id"]) == report["run_id"]


def test_export_refuses_a_report_of_another_run(tff_runtime, split, tmp_path):
    from tff_pipeline.export.package import ExportError, export_run

    out = tmp_path / "run"
    simulation.run(_dp(8.0, rounds=2), split, out_dir=out)  # no report files: the library call writes none
    from tff_pipeline import reporting

    result = simulation.run(_dp(8.0, rounds=2), split, out_dir=tmp_path / "other")
    reporting.write_outputs(RunFolder(tmp_path / "other"), result.report, result.params, split.vocab)
    for name in ("report.json", "final_model.npz", "vocabulary.json"):
        (out / name).write_bytes((tmp_path / "other" / name).read_bytes())
    with pytest.raises(ExportError, match=r"report\.json: belongs to run .* mixes two runs"):
        export_run(out, tmp_path / "package")
    assert not (tmp_path / "package").exists()
