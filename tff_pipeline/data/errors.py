"""Error type for bad input data: the base of the data package's errors.

It derives from `protocol.errors.FedrecError` directly, not from `PipelineError`: the loaders also
run in edge pods, which carry `tff_pipeline/data` alone (numpy and protocol only).

A single exception class lets callers (CLI, pipelines) catch every data problem
in one place, and the formatted message always points at the offending file and
1-based line so the user can fix the input instead of guessing.
"""

from __future__ import annotations

from pathlib import Path

from protocol.errors import FedrecError

__all__ = ["DataError"]


class DataError(FedrecError, ValueError):
    """Bad input data; ``str(err)`` reads ``"{path} line {line}: {message}"``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        where = " ".join(
            part
            for part in (
                self.path,
                None if self.line is None else f"line {self.line}",
            )
            if part
        )
        return f"{where}: {self.message}" if where else self.message
