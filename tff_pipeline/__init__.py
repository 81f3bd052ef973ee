"""The TFF simulation: federated training defined as TensorFlow Federated computations.

`data/` loads and splits ratings (numpy only; edge pods ship it), `model` is the personalized
model, `federated/` holds the TFF computations (client work, the DP and weighted-mean
aggregators, the process builder), `privacy/` the plan, the DP events, their accounting and the
ε ledger, `simulation` runs rounds and writes checkpoints (`run_folder`, `checkpoint`),
`runtime`/`remote_runtime`/`worker` own TFF's worker processes, `evaluation`, `baselines`,
`ranking_baselines`, `centralized` and `reporting` measure and write the results, and `export/`
turns a run into a TFLite package for devices. The command line is `fedrec_cli`.
"""
