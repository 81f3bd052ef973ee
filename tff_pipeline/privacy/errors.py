"""The privacy package's refusals: a budget no noise can meet, a plan for another population, an
event the accountants cannot compose, a ledger entry that cannot be read."""

from __future__ import annotations

from tff_pipeline.errors import PipelineError


class PrivacyError(PipelineError, ValueError):
    """A privacy setting, plan or event that cannot be used; the message says why."""


class LedgerError(PipelineError, RuntimeError):
    """The ledger refuses a record (another event for the round) or holds an unreadable entry."""
