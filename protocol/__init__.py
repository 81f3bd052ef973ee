"""What the device and the server agree on, with no TensorFlow in it.

Both sides import this package and nothing of each other's: `manifest` (the model package's
schema and its content digest), `signatures` (the names and tensors of the model's signatures),
`package` (reading and writing a package folder with bounded, verified reads), `updates` (the
sign of a model update) and `files` (bounded reads of regular files and atomic writes).
"""
