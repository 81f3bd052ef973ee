"""The report says plainly whether the model beats the simple baselines, and why not when it does
not (issue 16, item 6: `fedrec up` ended with a model worse than both and said nothing)."""

from __future__ import annotations

from tff_pipeline import reporting


def _report(hr: float, rmse: float, dp: str) -> dict:
    return {"final": {"hr@10": hr, "rmse": rmse},
            "baselines": {"popularity": {"hr@10": 0.48}, "biases": {"rmse": 0.737}},
            "config": {"dp": dp}, "privacy": {"epsilon_rdp": 7.999, "rounds": 20}, "data": {"num_clients": 400}}


def test_a_model_behind_both_baselines_is_told_why_under_dp():
    lines = reporting.against_baselines(_report(0.423, 0.803, "adaptive"))
    assert lines[0].startswith("ranks worse than recommending the most popular items (HR@10 0.4230 against 0.4800): "
                               "user-level DP (ε 7.999 over 20 rounds) costs more than 400 users can pay")
    assert lines[1].startswith("predicts stars worse than user and item biases alone (RMSE 0.8030 against 0.7370)")
    assert all("--dp none" in line for line in lines)


def test_a_model_ahead_says_so_and_without_dp_the_reason_is_the_rounds():
    ahead = reporting.against_baselines(_report(0.52, 0.70, "none"))
    assert ahead == ["ranks better than recommending the most popular items (HR@10 0.5200 against 0.4800)",
                     "predicts stars better than user and item biases alone (RMSE 0.7000 against 0.7370)"]
    behind = reporting.against_baselines(_report(0.43, 0.80, "none"))
    assert all(line.endswith("20 rounds are too few for this data; train more rounds") for line in behind)


def test_without_baselines_it_says_there_are_none():
    report = _report(0.5, 0.7, "none")
    report["baselines"] = {"popularity": None, "biases": None}
    assert reporting.against_baselines(report) == ["no baselines were computed (--no-baselines)"]
