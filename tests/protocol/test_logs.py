"""Structured logs: every record one JSON object, with the fields the code attaches."""

from __future__ import annotations

import json
import logging

import pytest

from protocol.logs import JsonFormatter, configure


def test_a_json_log_line_carries_the_rounds_fields():
    record = logging.LogRecord("fedrec.coordinator", logging.INFO, __file__, 1, "round %d completed", (7,), None)
    record.round, record.phase_seconds = 7, {"unmask": 0.25}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "round 7 completed" and entry["level"] == "INFO"
    assert entry["round"] == 7 and entry["phase_seconds"] == {"unmask": 0.25}
    assert entry["logger"] == "fedrec.coordinator" and entry["time"].endswith("+00:00")


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="text or json"):
        configure("INFO", "xml")
