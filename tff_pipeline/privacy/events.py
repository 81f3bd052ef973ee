"""DP events as they are stored: canonical JSON of the `dp_accounting.DpEvent`s a run applies.

One round of DP-FedAvg is `PoissonSampledDpEvent(q, event)`: each user (or device) takes part
independently with probability q, and `event` is what the DP query returned when it noised the
round's sum (`GaussianDpEvent(z)` with fixed clipping; a `ComposedDpEvent` of the update's and
the clipped count's Gaussians with adaptive clipping; `skellam.SkellamDpEvent` under distributed
DP). The simulation keeps its rounds' events in
its checkpoints and the coordinator in its ledger (`ledger.py`), both in this encoding; ε is
composed from them by `accounting.epsilon`.

Only the event types that occur are encoded (Gaussian, Skellam, Composed, PoissonSampled,
SelfComposed, NoOp); any other type is refused rather than stored in a form the accountants might misread.
Numbers may arrive as numpy or TensorFlow scalars (TF computes the noise multipliers); they are
stored, and decoded, as Python floats.
"""

from __future__ import annotations

import json
import math
from typing import Any

import dp_accounting

from tff_pipeline.privacy.errors import PrivacyError
from tff_pipeline.privacy.skellam import SkellamDpEvent


def encode_event(event: dp_accounting.DpEvent) -> str:
    """Canonical JSON of an event built of Gaussian, Composed, PoissonSampled, SelfComposed and
    NoOp events (ValueError for any other type or an out-of-range value)."""
    return json.dumps(_to_json(event), sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_event(text: str) -> dp_accounting.DpEvent:
    """The event `encode_event` wrote (ValueError for anything else)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise PrivacyError(f"not JSON: {error}") from None
    return _from_json(obj)


def concrete_event(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """`event` with its numbers as Python floats (a TF query computes them as tensors), checked
    as `encode_event` checks what it stores."""
    return decode_event(encode_event(event))


def sampled_round(event: dp_accounting.DpEvent, sampling_rate: float) -> dp_accounting.DpEvent:
    """One round as it is accounted: `event` (what the DP query applied) on a Poisson sample of
    rate `sampling_rate`, with concrete numbers."""
    return concrete_event(dp_accounting.PoissonSampledDpEvent(sampling_rate, event))


def _to_json(event: dp_accounting.DpEvent) -> dict[str, Any]:
    kind = type(event)
    if kind is dp_accounting.NoOpDpEvent:
        return {"type": "NoOp"}
    if kind is dp_accounting.GaussianDpEvent:
        return {"type": "Gaussian", "noise_multiplier": _non_negative(event.noise_multiplier, "noise_multiplier")}
    if kind is SkellamDpEvent:
        return {"type": "Skellam", "l1_sensitivity": _non_negative(event.l1_sensitivity, "l1_sensitivity"),
                "l2_sensitivity": _non_negative(event.l2_sensitivity, "l2_sensitivity"),
                "variance": _non_negative(event.variance, "variance")}
    if kind is dp_accounting.PoissonSampledDpEvent:
        return {"type": "PoissonSampled", "sampling_probability": _probability(event.sampling_probability),
                "event": _to_json(event.event)}
    if kind is dp_accounting.ComposedDpEvent:
        return {"type": "Composed", "events": [_to_json(e) for e in event.events]}
    if kind is dp_accounting.SelfComposedDpEvent:
        return {"type": "SelfComposed", "count": _count(event.count), "event": _to_json(event.event)}
    raise PrivacyError(f"DP events of type {kind.__name__} are not stored")


def _from_json(obj: Any) -> dp_accounting.DpEvent:
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise PrivacyError(f"not an event: {obj!r}")
    known: dict[str, set[str]] = {
        "NoOp": set(), "Gaussian": {"noise_multiplier"}, "PoissonSampled": {"sampling_probability", "event"},
        "Composed": {"events"}, "SelfComposed": {"count", "event"},
        "Skellam": {"l1_sensitivity", "l2_sensitivity", "variance"},
    }
    fields = known.get(obj["type"])
    if fields is None or set(obj) != fields | {"type"}:
        raise PrivacyError(f"not an event of a stored type: {obj!r}")
    kind = obj["type"]
    if kind == "NoOp":
        return dp_accounting.NoOpDpEvent()
    if kind == "Gaussian":
        return dp_accounting.GaussianDpEvent(_non_negative(obj["noise_multiplier"], "noise_multiplier"))
    if kind == "Skellam":
        return SkellamDpEvent(*(_non_negative(obj[name], name) for name in ("l1_sensitivity", "l2_sensitivity", "variance")))
    if kind == "PoissonSampled":
        return dp_accounting.PoissonSampledDpEvent(_probability(obj["sampling_probability"]), _from_json(obj["event"]))
    if kind == "Composed":
        if not isinstance(obj["events"], list):
            raise PrivacyError(f"composed events must be a list: {obj!r}")
        return dp_accounting.ComposedDpEvent([_from_json(e) for e in obj["events"]])
    return dp_accounting.SelfComposedDpEvent(_from_json(obj["event"]), _count(obj["count"]))


def _number(value: Any, name: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise PrivacyError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # also a 0-d tensor or numpy scalar
    except (TypeError, ValueError):
        raise PrivacyError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PrivacyError(f"{name} must be finite, got {number}")
    return number


def _non_negative(value: Any, name: str) -> float:
    number = _number(value, name)
    if number < 0:
        raise PrivacyError(f"{name} must be >= 0, got {number}")
    return number


def _probability(value: Any) -> float:
    number = _number(value, "sampling probability")
    if not 0 <= number <= 1:
        raise PrivacyError(f"a sampling probability must be in [0, 1], got {number}")
    return number


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PrivacyError(f"a composition count must be an integer >= 0, got {value!r}")
    return value
