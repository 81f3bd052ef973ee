"""Federated training as TFF computations: client work, aggregation, the learning process."""
