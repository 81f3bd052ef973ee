"""The privacy planner: the cohort and rounds a budget gets when the user leaves them unset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tff_pipeline.privacy import accounting, planner

ML100K_USERS = 943


@pytest.mark.parametrize("epsilon, rounds", [(1.0, 50), (4.0, 170), (8.0, 300), (32.0, 300), (0.01, 20)])
def test_rounds_follow_the_budget(epsilon: float, rounds: int):
    assert planner.planned_rounds(epsilon) == rounds


def test_rounds_never_fall_as_the_budget_grows():
    budgets = [0.05 * k for k in range(1, 400)]
    planned = [planner.planned_rounds(e) for e in budgets]
    assert planned == sorted(planned)


@pytest.mark.parametrize("population, cohort", [(1, 1), (2, 1), (943, 314), (3000, 1000), (10**6, 1000)])
def test_cohort_is_a_third_of_the_users_at_most_a_thousand(population: int, cohort: int):
    assert planner.planned_cohort(population) == cohort


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_a_plan_spends_its_budget_and_no_more(epsilon: float):
    plan = planner.plan_budget(target_epsilon=epsilon, delta=1e-4, population=ML100K_USERS)
    assert plan.planned == ("clients_per_round", "rounds")
    assert plan.sampling_rate == pytest.approx(plan.clients_per_round / ML100K_USERS)
    # Recomputed independently of the plan's own figures.
    spent = accounting.epsilon_rdp(plan.noise_multiplier, plan.sampling_rate, plan.rounds, 1e-4)
    assert 0.99 * epsilon <= spent <= epsilon
    assert plan.epsilon_pld <= plan.epsilon_rdp
    assert f"{plan.rounds} rounds" in plan.describe()


def test_given_values_are_kept_and_only_the_rest_is_planned():
    plan = planner.plan_budget(target_epsilon=8.0, delta=1e-4, population=ML100K_USERS, clients_per_round=100)
    assert (plan.clients_per_round, plan.rounds, plan.planned) == (100, 300, ("rounds",))
    plan = planner.plan_budget(target_epsilon=8.0, delta=1e-4, population=ML100K_USERS, rounds=40)
    assert (plan.clients_per_round, plan.rounds, plan.planned) == (314, 40, ("clients_per_round",))
    # Fewer rounds for the same budget: less noise per round.
    fewer_rounds = planner.plan_budget(target_epsilon=8.0, delta=1e-4, population=ML100K_USERS)
    assert plan.noise_multiplier < fewer_rounds.noise_multiplier


@pytest.mark.parametrize("kwargs, words", [
    ({"target_epsilon": 0.0, "delta": 1e-4, "population": 943}, "positive finite epsilon"),
    ({"target_epsilon": float("inf"), "delta": 1e-4, "population": 943}, "positive finite epsilon"),
    ({"target_epsilon": 8.0, "delta": 1e-2, "population": 943}, "delta"),
    ({"target_epsilon": 8.0, "delta": 1e-4, "population": 0}, "at least one user"),
])
def test_impossible_budgets_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        planner.plan_budget(**kwargs)


@pytest.mark.e2e
def test_the_plain_dp_command_prints_and_records_its_plan(tmp_path: Path, png_size):
    """`fedrec simulate --dp adaptive --target-epsilon E` with no cohort flags plans them, says so,
    and config.json holds the planned values (so --resume continues the same plan)."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fedrec_cli", "simulate", "--dp", "adaptive", "--target-epsilon", "0.5",
         "--no-baselines", "--eval-every", "100", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan_line = next(line for line in done.stdout.splitlines() if line.startswith("privacy plan"))
    config = json.loads((out / "config.json").read_text())["config"]
    report = json.loads((out / "report.json").read_text())
    users = report["data"]["num_clients"]
    assert config["rounds"] == planner.planned_rounds(0.5) == report["privacy"]["rounds"]
    assert config["clients_per_round"] == planner.planned_cohort(users)
    assert f"expected cohort {config['clients_per_round']}" in plan_line and "planned: cohort, rounds" in plan_line
    assert report["privacy"]["epsilon_rdp"] <= 0.5
    # The privacy plot (epsilon per round against the budget) is drawn and embedded.
    assert png_size(out / "privacy.png")[0] > 200
    assert "](privacy.png)" in (out / "report.md").read_text()
