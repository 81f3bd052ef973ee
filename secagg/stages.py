"""The stages of a SecAgg+ round: one enum for the participant, the server and the round driver.

A participant (`participant.SecAggParticipant`) and the server (`server.SecAggServer`) go through
`PROTOCOL_STAGES` in order. The coordinator's round (`coordinator.round_run.RoundRun`, driven by
`phases.ROUND_PHASES`) uses the same four protocol stages, plus AGGREGATING (unmasking closed, the
sum is being rebuilt) and ABANDONED (the round ended without a result); its DONE means the result
was used.

The values are names other programs see: the coordinator's status reports the round's stage, the
round log keys its per-stage seconds by them, refusal details and device errors quote them, and
deployment tests wait for them. Do not rename them.
"""

from __future__ import annotations

import enum


class Stage(str, enum.Enum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    AGGREGATING = "aggregating"
    DONE = "done"
    ABANDONED = "abandoned"

    @property
    def label(self) -> str:
        """The stage in words ("advertise keys"), as the server's refusals have always said it."""
        return self.value.replace("_", " ")


# What one participant, and the server, go through (each call only in its turn, never backwards).
PROTOCOL_STAGES: tuple[Stage, ...] = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK,
                                      Stage.DONE)
