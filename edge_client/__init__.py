"""The device side of fedrec: what runs on the phone, with numpy, LiteRT and gRPC, never TensorFlow.

On one device: `litert_model` (a model package in the LiteRT interpreter), `store` (ratings and
personal parameters in SQLite), `ratings_file` (importing a user's ratings), `client_update` (the
clipped update a round uploads), `device` (install, rate, personalize, recommend), `device_lock`
and `join_lock` (one writer, one participation per device folder), `identity` (the device's
signing key), `cli` (`fedrec-edge`).

Taking part in rounds: `round_client` (the rounds over gRPC; SecAgg+ through `secagg`),
`reports` (what a device reports), `process` (flag checks, quiet gRPC, stop signals of the
long-running device processes), `fleet` (many simulated devices per process), `pod` and
`simulated_users` (an edge pod's shard of users), `profiles` (device heterogeneity),
`native_log` (filtering native libraries' stderr). The package schema is `protocol.manifest`.
"""
