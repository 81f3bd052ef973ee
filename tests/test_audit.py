"""`fedrec audit` (issue 18, item 3): the one-shot canary estimator, and the audit's power: far
above the DP figure without DP, within the accountant's ε with DP, flagged with the noise off."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from tests.coordinator.commands import fedrec
from tff_pipeline import audit
from tff_pipeline.data import synthetic_split


@pytest.mark.parametrize("mu, delta", [(0.5, 1e-5), (1.0, 1e-4), (3.0, 1e-6)])
def test_the_gaussian_dp_epsilon_solves_its_delta_equation(mu, delta):
    eps = audit.gaussian_dp_epsilon(mu, delta)
    normal = NormalDist()
    assert normal.cdf(-eps / mu + mu / 2) - math.exp(eps) * normal.cdf(-eps / mu - mu / 2) == pytest.approx(delta, rel=1e-4)
    assert audit.gaussian_dp_epsilon(mu * 1.1, delta) > eps  # more separation, more ε
    assert audit.gaussian_dp_epsilon(0.0, delta) == 0.0


def test_the_estimate_sees_separation_and_not_its_absence():
    rng = np.random.default_rng(0)
    null = rng.normal(0, 0.03, 500)
    assert audit.estimate_epsilon(rng.normal(0, 0.03, 500), null, 1e-4) < 1.0
    separated = audit.estimate_with_interval(rng.normal(0.15, 0.03, 500), null, 1e-4, seed=1)
    assert separated[1] <= separated[0] <= separated[2] and separated[1] > 15


def test_canaries_live_on_items_nobody_rated():
    split = synthetic_split(seed=1, num_users=40, num_items=30, num_negatives=5, mean_ratings_per_user=10)
    extended = audit.with_canary_items(split, 3)
    assert extended.num_items == 30 + 3 * audit.CANARY_ITEMS_PER_CANARY
    assert extended.train.items.max() < 30 and len(set(extended.vocab.item_raw_ids.tolist())) == extended.num_items
    canaries = audit.draw_canaries(count=3, num_items=extended.num_items, first_item=30, dim=4, ranking_head=True,
                                   norm=0.5, seed=0)
    assert canaries.uploads.shape == (3, 2 * extended.num_items * 4 + extended.num_items + 1)
    assert np.allclose(np.linalg.norm(canaries.uploads, axis=1), 0.5)
    bias_start = extended.num_items * 4
    nonzero = np.flatnonzero(np.any(canaries.uploads != 0, axis=0))
    assert nonzero.min() >= bias_start + 30 and nonzero.max() < bias_start + extended.num_items
    assert canaries.directions.shape == (6, 3 * audit.CANARY_ITEMS_PER_CANARY)


def _audit(tmp_path, name: str, *flags: str) -> tuple[dict, int]:
    out = tmp_path / name
    done = fedrec("audit", *flags, "--rounds", "100", "--no-baselines", "--quiet", "--out", str(out), timeout=900)
    assert done.returncode in (0, 3), done.stderr[-3000:]
    assert (out / "canaries.png").read_bytes()[:4] == b"\x89PNG" and "Privacy audit" in (out / "report.md").read_text()
    return json.loads((out / "audit.json").read_text()), done.returncode


@pytest.mark.e2e
def test_the_audit_has_power_stays_within_the_accountant_and_flags_a_run_without_noise(tmp_path):
    plain, status = _audit(tmp_path, "none", "--dp", "none")
    assert status == 0 and plain["epsilon"] is None and not plain["flagged"]
    private, status = _audit(tmp_path, "dp8", "--dp", "fixed", "--target-epsilon", "8")
    assert status == 0 and private["epsilon"] == pytest.approx(8.0, rel=1e-3) and not private["flagged"]
    # The estimate is a statistic of 50 canaries (bootstrap interval about ±50%): its interval must
    # reach down to the accountant's ε (not flagged, checked above); the point itself came out at
    # 7.3 and at 8.07 (against 8) in two runs, so it is held to within a quarter above.
    assert private["epsilon_estimate_interval"][0] <= private["epsilon"]
    assert private["epsilon_estimate"] <= 1.25 * private["epsilon"]
    assert plain["epsilon_estimate_interval"][0] > 2 * private["epsilon_estimate"]  # power
    # Membership inference (a fifth of the users held out): reported for every run, and the attack's
    # advantage respects the bound DP puts on any test (vacuous at ε = 8, but a real check of the sign).
    for found in (plain["membership"], private["membership"]):
        assert (found["members"], found["non_members"]) == (320, 80)
        assert 0.0 <= found["advantage"] <= found["advantage_bound"] and 0.0 <= found["auc"] <= 1.0
    assert plain["membership"]["advantage_bound"] == 1.0 and private["membership"]["advantage_bound"] < 1.0
    assert plain["rated_item_auc"] == {}  # no --captures given
    broken, status = _audit(tmp_path, "broken", "--dp", "fixed", "--target-epsilon", "8", "--break-noise")
    assert status == 3 and broken["flagged"] and broken["noise_broken_on_purpose"]
    assert broken["epsilon_estimate_interval"][0] > broken["epsilon"]
