"""User-level differential privacy, in one place for the simulation and the coordinator.

- `planner`: the plan for a budget: cohort, rounds and noise multiplier z, calibrated once and
  recorded in the config (`plan_run`); `plan_privacy` gives every run its (z, q, T) from it.
- `events`: the DP events a run applies (one `PoissonSampledDpEvent(q, query event)` a round)
  and their canonical JSON, as checkpoints and the ledger store them.
- `accounting`: ε by the RDP and PLD accountants of dp-accounting: `epsilon(events, delta)` for
  the events a run applied (the simulation's report, the coordinator's ledger and report), the
  plan's (z, q, T) figures, and the noise calibration.
- `ledger`: the coordinator's durable ε ledger (SQLite), composed by `accounting.epsilon`.

Nothing here imports TensorFlow: `fedrec status` reads a ledger without it.
"""
