"""The on-device model: the same math as `tff_pipeline.model`, as a tf.Module with signatures.

Variables hold the global parameters (as shipped) and this user's own parameters: the rating
head's (embedding, bias) and the ranking head's implicit vector. Every signature is written with
ops that TFLite has as builtins (no Flex): gathers, multiplies, sums, matmuls, SCATTER_ND,
TOPK_V2, SELECT and variable reads/assignments; the user fits are conjugate-gradient solves
(`ModelConfig(solver="cg")`). The ranking head's shared system w0 V^T V + l2 I depends on the item
table only, so it is a variable too, recomputed when `set_global` replaces the table: a fit then
costs what the rating fit costs. Shapes are fixed by the model (num_items, dim) except the
number of ratings, which varies per call.

Signatures (inputs -> outputs):
    infer(item_ids)                  -> scores                        predicted stars
    topk(k)                          -> item_ids, scores, stars       best k by the ranking head
                                        (by predicted stars until the user has a ranking vector)
    personalize(item_ids, ratings)   -> user_embedding, user_bias, implicit_embedding, loss
                                        exact fits of the user's parameters (what FedRecon
                                        evaluation does), stored in the user variables
    client_update(item_ids, ratings) -> item_embeddings_delta, item_bias_delta, global_mean_delta,
                                        implicit_embeddings_delta, num_examples, loss_before
                                        one federated round's local work; changes no variable
    get_weights()                    -> item_embeddings, item_bias, global_mean,
                                        user_embedding, user_bias, implicit_embedding
    set_global(item_embeddings, item_bias, global_mean) -> num_items
    set_user(user_embedding, user_bias, implicit_embedding) -> dim
    manifest_digest()                -> sha256                        uint8[32]: the content digest
                                        of the manifest this model was exported with
                                        (`protocol.manifest`), so the model vouches for it
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from protocol.signatures import SIGNATURES
from tff_pipeline import model


class OnDeviceModel(tf.Module):
    def __init__(self, params: model.GlobalParams, config: model.ModelConfig, *, manifest_digest: bytes) -> None:
        super().__init__(name="fedrec_on_device")
        if config.dim < 1:
            raise ValueError("the TFLite export needs dim >= 1 (TFLite has no zero-size variables)")
        if len(manifest_digest) != 32:
            raise ValueError(f"manifest_digest must be 32 bytes (sha256), got {len(manifest_digest)}")
        self._manifest_digest = np.frombuffer(manifest_digest, np.uint8).copy()
        self.config = dataclasses.replace(config, solver="cg")
        n, d = config.num_items, config.dim
        self.item_embeddings = tf.Variable(tf.cast(params.item_embeddings, tf.float32), name="item_embeddings")
        self.item_bias = tf.Variable(tf.cast(params.item_bias, tf.float32), name="item_bias")
        self.global_mean = tf.Variable(tf.cast(params.global_mean, tf.float32), name="global_mean")
        self.user_embedding = tf.Variable(tf.zeros([d]), name="user_embedding")
        self.user_bias = tf.Variable(tf.zeros([]), name="user_bias")
        self.implicit_embedding = tf.Variable(tf.zeros([d]), name="implicit_embedding")
        self.implicit_system = tf.Variable(model.implicit_system(self._global(), self.config), name="implicit_system")
        ids = tf.TensorSpec([None], tf.int32, name="item_ids")
        ratings = tf.TensorSpec([None], tf.float32, name="ratings")
        self.infer = tf.function(self._infer, input_signature=[ids])
        self.topk = tf.function(self._topk, input_signature=[tf.TensorSpec([], tf.int32, name="k")])
        self.personalize = tf.function(self._personalize, input_signature=[ids, ratings])
        self.client_update = tf.function(self._client_update, input_signature=[ids, ratings])
        self.get_weights = tf.function(self._get_weights, input_signature=[])
        self.set_global = tf.function(self._set_global, input_signature=[
            tf.TensorSpec([n, d], tf.float32, name="item_embeddings"),
            tf.TensorSpec([n], tf.float32, name="item_bias"),
            tf.TensorSpec([], tf.float32, name="global_mean"),
        ])
        self.set_user = tf.function(self._set_user, input_signature=[
            tf.TensorSpec([d], tf.float32, name="user_embedding"),
            tf.TensorSpec([], tf.float32, name="user_bias"),
            tf.TensorSpec([d], tf.float32, name="implicit_embedding"),
        ])
        self.manifest_digest = tf.function(self._digest, input_signature=[])

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}

    def _digest(self):
        return {"sha256": tf.constant(self._manifest_digest, tf.uint8)}

    def _global(self) -> model.GlobalParams:
        return model.GlobalParams(self.item_embeddings.read_value(), self.item_bias.read_value(),
                                  self.global_mean.read_value())

    def _user(self) -> model.UserParams:
        return model.UserParams(self.user_embedding.read_value(), self.user_bias.read_value())

    def _infer(self, item_ids):
        return {"scores": model.predict(self._global(), self._user(), item_ids)}

    def _all_scores(self):
        params, user = self._global(), self._user()
        interaction = tf.reduce_sum(params.item_embeddings * user.embedding[tf.newaxis, :], axis=1)
        return params.global_mean + user.bias + params.item_bias + interaction

    def _topk(self, k):
        k = tf.minimum(tf.maximum(k, 0), self.config.num_items)
        stars = self._all_scores()
        x = self.implicit_embedding.read_value()
        ranking = model.implicit_scores(self._global(), x)
        # A user without a ranking vector yet (nothing fitted) is ranked by predicted stars.
        has_ranking_vector = tf.reduce_any(tf.not_equal(x, 0.0))
        top = tf.math.top_k(tf.where(has_ranking_vector, ranking, stars), k=k)
        return {"item_ids": top.indices, "scores": top.values, "stars": tf.gather(stars, top.indices)}

    def _personalize(self, item_ids, ratings):
        params = self._global()
        user = model.fit_user(params, item_ids, ratings, self.config)
        implicit = self._fit_implicit(params, item_ids)
        self.user_embedding.assign(user.embedding)
        self.user_bias.assign(user.bias)
        self.implicit_embedding.assign(implicit)
        errors = model.predict(params, user, item_ids) - ratings
        count = tf.maximum(tf.cast(tf.size(ratings), tf.float32), 1.0)
        return {"user_embedding": user.embedding, "user_bias": user.bias, "implicit_embedding": implicit,
                "loss": tf.reduce_sum(errors * errors) / count}

    def _fit_implicit(self, params, item_ids):
        if not self.config.implicit:  # a model trained without the ranking head has no ranking vectors
            return tf.zeros([self.config.dim])
        return model.fit_implicit_user(params, item_ids, self.config, system=self.implicit_system.read_value())

    def _client_update(self, item_ids, ratings):
        output = model.client_update(self._global(), item_ids, ratings, self.config,
                                     implicit_system_matrix=self.implicit_system.read_value())
        return {
            "item_embeddings_delta": output.delta.item_embeddings,
            "item_bias_delta": output.delta.item_bias,
            "global_mean_delta": output.delta.global_mean,
            "implicit_embeddings_delta": output.implicit_delta,
            "num_examples": output.num_examples,
            "loss_before": output.loss_before,
        }

    def _get_weights(self):
        return {"item_embeddings": self.item_embeddings.read_value(), "item_bias": self.item_bias.read_value(),
                "global_mean": self.global_mean.read_value(), "user_embedding": self.user_embedding.read_value(),
                "user_bias": self.user_bias.read_value(), "implicit_embedding": self.implicit_embedding.read_value()}

    def _set_global(self, item_embeddings, item_bias, global_mean):
        self.item_embeddings.assign(item_embeddings)
        self.item_bias.assign(item_bias)
        self.global_mean.assign(global_mean)
        self.implicit_system.assign(model.implicit_system(model.GlobalParams(item_embeddings, item_bias, global_mean),
                                                          self.config))
        return {"num_items": tf.shape(item_bias)[0]}

    def _set_user(self, user_embedding, user_bias, implicit_embedding):
        self.user_embedding.assign(user_embedding)
        self.user_bias.assign(user_bias)
        self.implicit_embedding.assign(implicit_embedding)
        return {"dim": tf.shape(user_embedding)[0]}
