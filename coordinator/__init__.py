"""The coordinator: the server side of real federated rounds.

`round_run` walks secagg's stage table for one round (no network), `selection` and `scheduler`
choose cohorts and drive rounds, `server_aggregation` and `training` apply the simulation's DP
query and optimizer to the secure sum and record each round's DP event in the ledger
(`tff_pipeline.privacy.ledger`), `state_store`/`state_lock` keep durable state with one writer,
`service` and `server` are the gRPC side (TLS, enrollment, rate limits, metrics, capture),
`config` is the one configuration path, `cluster/` runs it in Kubernetes, and `up`/`report` are
the `fedrec up` harness that runs a whole deployment on this machine. Every refusal derives from
`errors.CoordinatorError`.
"""
