"""Hypothesis profiles for the fuzz tier (tests/fuzz, marker `fuzz`), chosen by FEDREC_FUZZ_PROFILE.

* `ci` (the default): 30 examples per test (x a per-test scale), derandomized so every run tries the
  same examples; about 1,100 examples, ~20 s on 2 cores, part of the default `uv run pytest`.
* `thorough`: 500 examples per test (x the same scale: about 16,800 in all, ~4 minutes on 2 cores),
  also derandomized:
  FEDREC_FUZZ_PROFILE=thorough uv run pytest tests/fuzz -m fuzz -p no:cacheprovider --hypothesis-show-statistics
* `explore`: as many as `thorough`, but random (new examples every run); a failure prints the
  `@reproduce_failure` blob to replay it.

The general tests generate every input they can, with no known-bug exclusions: the ten product bugs
this tier found (all fixed) are plain regression tests with their minimal inputs at the end of each
module. A new bug gets a strict-xfail test there (`test_known_bug_*`) until it is fixed.

No example database is kept (`database=None`), so nothing but hypothesis' own self-ignoring cache
folder `.hypothesis/` is written to the checkout.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,  # file system and SQLite timings vary on a loaded 2-core machine
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=500, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=500, derandomize=False, **_COMMON)

PROFILE = os.environ.get("FEDREC_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "thorough", "explore"):
    raise RuntimeError(f"FEDREC_FUZZ_PROFILE={PROFILE!r}: expected ci, thorough or explore")
settings.load_profile(PROFILE)
