"""The device side of fedrec: run a model package with LiteRT, keep the user's data, personalize.

Modules: `manifest` (the package schema shared with the exporter), `litert_model` (one package in
the LiteRT interpreter), `store` (ratings and personal parameters in SQLite), `client_update`
(the clipped update a device uploads in a round), `device` (install, rate, personalize,
recommend) and `cli` (`fedrec-edge`). Only the standard library, numpy and ai_edge_litert are
imported here, never TensorFlow: this is what runs on the phone.
"""
