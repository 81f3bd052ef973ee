"""A simulation cut after a given round, as an interruption leaves it (the tests of resuming)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tff_pipeline import simulation


class _Interrupt(Exception):
    pass


def interrupt_after(config: Any, split: Any, out_dir: Path, round_num: int) -> None:
    """Run `config` into `out_dir` and stop it once round `round_num` is saved."""

    def stop(row: dict[str, Any]) -> None:
        if row["round"] == round_num:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        simulation.run(config, split, out_dir=out_dir, on_round=stop)
