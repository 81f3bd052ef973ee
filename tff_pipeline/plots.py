"""PNG figures of a run, for report.md: accuracy per round against the baselines, and the
privacy spent per round against the budget. Drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Baselines drawn as horizontal lines, with the metric they have.
_BASELINE_STYLES = {
    "centralized": ("centralized (same model, pooled data)", "tab:green", "--"),
    "biases": ("user+item biases", "tab:gray", ":"),
    "popularity": ("popularity", "tab:red", ":"),
    "local_only": ("local-only", "tab:brown", "-."),
}


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _panel(axis: Any, report: dict[str, Any], metric: str, label: str) -> bool:
    rows = [row for row in report["history"] if row.get(metric) is not None]
    if not rows:
        return False
    axis.plot([row["round"] for row in rows], [row[metric] for row in rows], marker="o", markersize=3,
              color="tab:blue", label="federated (this run)")
    for name, (title, color, style) in _BASELINE_STYLES.items():
        value = (report["baselines"].get(name) or {}).get(metric)
        if value is not None:
            axis.axhline(value, color=color, linestyle=style, label=title)
    axis.set_xlabel("round")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return True


def training_curves(report: dict[str, Any]) -> bytes | None:
    """RMSE and HR@10 per evaluated round, beside the baselines of the same split; None if the
    run evaluated nothing."""
    figure, (rmse_axis, ranking_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    drawn = _panel(rmse_axis, report, "rmse", "RMSE (lower is better)")
    drawn |= _panel(ranking_axis, report, "hr@10", "HR@10, 99 sampled negatives")
    protocol = report["data"].get("ranking_protocol", "")
    ranking_axis.set_title("HR@10" + ("" if protocol.startswith("leave-one-out") else " (not the standard protocol)"),
                           fontsize=9)
    rmse_axis.set_title(f"RMSE on {report['data']['name']}", fontsize=9)
    if not drawn:
        plt.close(figure)
        return None
    return _png(figure)


def privacy_spent(report: dict[str, Any]) -> bytes | None:
    """Epsilon (RDP) after each round against the budget; None for a non-private run."""
    rows = [row for row in report["history"] if row.get("epsilon_rdp") is not None]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.plot([row["round"] for row in rows], [row["epsilon_rdp"] for row in rows], color="tab:purple",
              label="epsilon spent (RDP)")
    budget = report["config"].get("target_epsilon")
    if budget is not None:
        axis.axhline(budget, color="black", linestyle="--", label=f"budget epsilon = {budget:g}")
    privacy = report["privacy"]
    axis.set_title(f"user-level privacy, delta = {privacy['delta']:g}, z = {privacy['noise_multiplier']:.3g}, "
                   f"q = {privacy['sampling_rate']:.3g}", fontsize=9)
    axis.set_xlabel("round")
    axis.set_ylabel("epsilon")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def utility_against_epsilon(points: list[tuple[float, float]], non_private: float | None, reference: float | None,
                            *, metric: str, reference_label: str,
                            distributed: list[tuple[float, float]] | None = None) -> bytes:
    """A metric against the privacy budget (bench/quality.py): central and distributed DP runs as
    points, the non-private run and a reference (e.g. popularity) as lines."""
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for series, color, label in ((points, "tab:blue", "federated, central DP"),
                                 (distributed or [], "tab:purple", "federated, distributed DP")):
        if series:
            ordered = sorted(series)
            axis.plot([e for e, _ in ordered], [v for _, v in ordered], marker="o", color=color, label=label)
    if non_private is not None:
        axis.axhline(non_private, color="tab:green", linestyle="--", label="federated, no DP")
    if reference is not None:
        axis.axhline(reference, color="tab:red", linestyle=":", label=reference_label)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("epsilon (delta = 1e-4)")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def canary_cosines(inserted: list[float], held_out: list[float], *, epsilon: float | None, estimate: float) -> bytes:
    """The privacy audit's evidence: how the final model aligns with canaries it saw and never saw."""
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    bins = 40
    axis.hist(held_out, bins=bins, alpha=0.6, color="tab:gray", label="never inserted")
    axis.hist(inserted, bins=bins, alpha=0.6, color="tab:red", label="inserted canaries")
    claimed = "no DP" if epsilon is None else f"accountant ε {epsilon:.3g}"
    axis.set_title(f"canary alignment with the model's change: {claimed}, estimate ε {estimate:.3g}")
    axis.set_xlabel("cosine(model change, canary direction)")
    axis.set_ylabel("canaries")
    axis.legend()
    return _png(figure)
