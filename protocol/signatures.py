"""The model's signatures: their names and tensor names, spelled once for both sides.

The exporter (`tff_pipeline.export.ondevice_model`) builds exactly these; the device
(`edge_client.litert_model`) refuses a model whose signatures differ.
"""

from __future__ import annotations

# name -> (input tensor names, output tensor names)
SIGNATURE_IO: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # Predicted stars (the rating head) of the current user.
    "infer": (frozenset({"item_ids"}), frozenset({"scores"})),
    # The best k items by the ranking head (by predicted stars for a user without a ranking
    # vector yet), with their ranking scores and predicted stars.
    "topk": (frozenset({"k"}), frozenset({"item_ids", "scores", "stars"})),
    # Fits every local vector: the rating head's (embedding, bias) and the ranking head's.
    "personalize": (frozenset({"item_ids", "ratings"}),
                    frozenset({"user_embedding", "user_bias", "implicit_embedding", "loss"})),
    # One round's local work: the delta of every global tensor (the ranking head's step of the
    # item table separately), the example count, the loss before the steps.
    "client_update": (
        frozenset({"item_ids", "ratings"}),
        frozenset({"item_embeddings_delta", "item_bias_delta", "global_mean_delta", "implicit_embeddings_delta",
                   "num_examples", "loss_before"}),
    ),
    "get_weights": (
        frozenset(),
        frozenset({"item_embeddings", "item_bias", "global_mean", "user_embedding", "user_bias",
                   "implicit_embedding"}),
    ),
    "set_global": (frozenset({"item_embeddings", "item_bias", "global_mean"}), frozenset({"num_items"})),
    "set_user": (frozenset({"user_embedding", "user_bias", "implicit_embedding"}), frozenset({"dim"})),
    # The sha256 of the manifest's content, baked into the model at export: the model file,
    # whose own hash the manifest states, vouches for the manifest in return.
    "manifest_digest": (frozenset(), frozenset({"sha256"})),
}
SIGNATURES: tuple[str, ...] = tuple(SIGNATURE_IO)
