"""A run whose parameters blow up stops with one line naming the round (README: "stops with an
error at that round instead of finishing untrained"), not a gRPC traceback from the TFF worker.

With --server-lr 1e30 the first round's step leaves the item table finite but ~1e30, so the
next round's ridge systems overflow on the worker ("Input matrix is not invertible"): that
failure of TFF's computation is reported as the divergence it is. The run is the real command
in a subprocess, as small as a round can be (a few clients, no baselines, no evaluation but the
final one).
"""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

pytestmark = pytest.mark.e2e  # a real `fedrec simulate` process


def test_a_huge_server_lr_stops_with_one_line_naming_the_round(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fedrec_cli", "simulate", "--server-lr", "1e30", "--rounds", "3",
         "--clients-per-round", "4", "--dim", "4", "--no-baselines", "--eval-every", "1000", "--quiet",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedrec: error: round "), done.stderr[-3000:]
    assert "the model diverged" in lines[0] and "--server-lr" in lines[0], lines[0]
    assert not (tmp_path / "run" / "report.json").exists()


class _RpcError(grpc.RpcError, grpc.Call):
    """A gRPC error as TFF's stub raises it (grpc's own _InactiveRpcError is both)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self): ...
    def trailing_metadata(self): ...
    def is_active(self): ...
    def time_remaining(self): ...
    def cancel(self): ...
    def add_callback(self, callback): ...


WORKER_SINGULAR = ("Failed to run computation: Input matrix is not invertible.\n\t [[{{node MatrixSolve_1}}]] "
                   "while evaluating local [_var22] in block locals [_var22]")


def test_only_failures_on_non_finite_values_are_read_as_divergence():
    import tensorflow as tf

    from tff_pipeline import simulation

    reason = simulation._non_finite_reason
    assert reason(_RpcError(grpc.StatusCode.INTERNAL, WORKER_SINGULAR)) == "Input matrix is not invertible"
    assert reason(tf.errors.InvalidArgumentError(None, None, "x : Tensor had NaN values")) == "Tensor had NaN values"
    wrapped = RuntimeError("a round failed")
    wrapped.__cause__ = _RpcError(grpc.StatusCode.INTERNAL, "Found Inf or NaN global norm. : Tensor had Inf values")
    assert reason(wrapped) == "Found Inf or NaN global norm"
    # Bugs and outages keep their tracebacks.
    shapes = "Failed to run computation: Incompatible shapes: [3] vs. [4]"
    assert reason(_RpcError(grpc.StatusCode.INTERNAL, shapes)) is None
    assert reason(_RpcError(grpc.StatusCode.UNAVAILABLE, WORKER_SINGULAR)) is None
    assert reason(tf.errors.InvalidArgumentError(None, None, "indices[3] = 99 is not in [0, 50)")) is None
    assert reason(ValueError("Input matrix is not invertible")) is None
    with pytest.raises(tf.errors.InvalidArgumentError):
        with simulation._stop_if_non_finite(3, "evaluating the model"):
            raise tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [3] vs. [4]")
    with pytest.raises(simulation.TrainingDiverged, match=r"^round 3: the model diverged \(evaluating the model "
                                                           r"failed: Input matrix is not invertible"):
        with simulation._stop_if_non_finite(3, "evaluating the model"):
            raise tf.errors.InvalidArgumentError(None, None, "Input matrix is not invertible. [Op:MatrixSolve]")
