"""The coordinator: the server side of real federated rounds (selection, secure aggregation, DP, durable state)."""
