"""What the device and the server agree on, with no TensorFlow in it.

Both sides import this package and nothing of each other's: `rounds.proto` and its generated
code in `generated/`, `upload` (the one vector a device uploads), `tensors` (the wire form of
weights), `signing` (signed requests), `manifest` (the model package's schema and content
digest), `signatures` (the model's signature names and tensors), `package` (bounded, verified
reads and all-or-nothing writes of a package folder), `updates` (the sign of a model update),
`files` (bounded reads, atomic writes), `addresses`, `holder_lock`, `logs`, and `errors`
(`FedrecError`, the root of every package's error base).
"""
