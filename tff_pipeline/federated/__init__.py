"""Federated training as TFF computations: client work, aggregation (the one DP query and the
example-weighted mean), the learning process and its pseudo-gradient, cohort sampling."""
