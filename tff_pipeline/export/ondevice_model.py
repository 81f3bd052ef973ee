"""The on-device model: the same math as `tff_pipeline.model`, as a tf.Module with signatures.

Variables hold the global parameters (as shipped) and this user's own parameters: the rating
head's (embedding, bias) and the ranking head's implicit vector. Every signature is written with
ops that TFLite has as builtins (no Flex): gathers, multiplies, sums, matmuls, SCATTER_ND,
TOPK_V2, SELECT and variable reads/assignments.

What the graphs are shaped by (measured in LiteRT with its XNNPACK delegate, issue 20): a
LiteRT op costs 30-80 ns however small its tensors (a broadcast multiply of a [2, 18, 18]
system ~300 ns), reading a variable copies it (the item table: 107 KB, ~2.5 us), an
[items, dim] * [dim] multiply-and-sum runs row by row (~7 us) where one FULLY_CONNECTED
(x V^T) takes ~3 us, and the XNNPACK delegate prepares every op of every signature when the
interpreter first runs (a cold start pays for the op count). So:

- The user's two exact fits are one batched sweep (`model.sweep`, symmetric Gauss-Jordan: 6 ops
  per unknown; conjugate gradient took ~18 per unknown and system) of [[A, b], [b^T, *]]
  matrices, both the gram matrix of one design matrix of the user's rows plus a shared part,
  each head reading its answer at its own point of the sweep (`_fit`; building a design per
  head took more ops, and so did moving entries of the gram matrix with 0/1 matmuls). The part of both systems
  that does not depend on the user's ratings (the rating head's penalties; the ranking head's
  w0 V^T V + l2 I, which depends on the item table only) is a variable (`shared_systems`),
  recomputed when `set_global` replaces the table.
- `topk` ranks two derived variables, the predicted stars of every item and the scores it is
  ranked by (stars until the user has a ranking vector), instead of reading the item table:
  every signature that changes a variable they depend on (`personalize`, `set_global`,
  `set_user`) recomputes them, so `topk` returns what it would compute from the weights.
- The ranking head's step sums its per-item coefficients before one [items, 1] x [1, dim]
  outer product, instead of building and adding [items, dim] tensors.

Shapes are fixed by the model (num_items, dim) except the number of ratings, which varies per
call.

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
        self.config = dataclasses.replace(config, solver="elimination")
        n, d = config.num_items, config.dim
        self.item_embeddings = tf.Variable(tf.cast(params.item_embeddings, tf.float32), name="item_embeddings")
        self.item_bias = tf.Variable(tf.cast(params.item_bias, tf.float32), name="item_bias")
        self.global_mean = tf.Variable(tf.cast(params.global_mean, tf.float32), name="global_mean")
        self.user_embedding = tf.Variable(tf.zeros([d]), name="user_embedding")
        self.user_bias = tf.Variable(tf.zeros([]), name="user_bias")
        self.implicit_embedding = tf.Variable(tf.zeros([d]), name="implicit_embedding")
        self.shared_systems = tf.Variable(self._shared_systems(self._global()), name="shared_systems")
        # Derived from the variables above (see the module docstring): what `topk` ranks.
        stars, ranking = self._scores(self._global(), self._user(), self.implicit_embedding.read_value())
        self.star_scores = tf.Variable(stars, name="star_scores")
        self.ranking_scores = tf.Variable(ranking, name="ranking_scores")
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

    def _matvec(self, matrix, vector):
        """matrix @ vector for the item table [num_items, dim]: one FULLY_CONNECTED in TFLite."""
        return tf.reshape(tf.matmul(tf.expand_dims(vector, 0), matrix, transpose_b=True), [self.config.num_items])

    def _scores(self, params, user, implicit):
        """Predicted stars of every item, and the scores `topk` ranks them by: the ranking head's
        <x, v_j>, or the stars for a user without a ranking vector yet (nothing fitted)."""
        stars = params.global_mean + user.bias + params.item_bias + self._matvec(params.item_embeddings, user.embedding)
        has_ranking_vector = tf.reduce_any(tf.not_equal(implicit, 0.0))
        return stars, tf.where(has_ranking_vector, self._matvec(params.item_embeddings, implicit), stars)

    def _refresh_scores(self, params, user, implicit):
        stars, ranking = self._scores(params, user, implicit)
        self.star_scores.assign(stars)
        self.ranking_scores.assign(ranking)

    def _shared_systems(self, params):
        """What the fits' sweep matrices (`_fit`) add to the gram matrix of the user's rows: the
        rating head's ridge penalties, and the ranking head's w0 V^T V + l2 I (which depends on
        the item table only) on the embedding block. [heads, d+2, d+2]."""
        d = self.config.dim
        rating = np.zeros([d + 2, d + 2], np.float32)
        rating[np.arange(d + 1), np.arange(d + 1)] = [self.config.user_l2] * d + [self.config.user_bias_l2]
        if not self.config.implicit:  # a model trained without the ranking head has no ranking vectors
            return tf.constant(rating[np.newaxis])
        ranking = tf.pad(model.implicit_system(params, self.config), [[0, 2], [0, 2]])
        return tf.stack([tf.constant(rating), ranking])

    def _topk(self, k):
        k = tf.minimum(tf.maximum(k, 0), self.config.num_items)
        top = tf.math.top_k(self.ranking_scores.read_value(), k=k)
        return {"item_ids": top.indices, "scores": top.values,
                "stars": tf.gather(self.star_scores.read_value(), top.indices)}

    def _fit(self, params, item_ids, ratings):
        """Both of the user's exact fits, `model.fit_user` and `model.fit_implicit_user` (the same
        ridge problems), as one batched sweep (`model.sweep`) of the same gram matrix
        G = Z^T Z of the user's rows Z = [v_j, 1, r_j - mu - b_j] plus each head's shared part.
        The rating head's system is [[A, b], [b^T, *]] with unknowns (u, b_u) and the target
        column last. The ranking head's rows are [v_j, 1] (unknowns x, target 1): its system is
        the same G with w0 V^T V + l2 I added on the embedding block, its answer is row d after
        the d embedding pivots (the coordinates d + 1 and the last pivot ride along unread). So
        both heads sweep together and read their answers at two points of the same sweep; no op
        moves entries of G (two constant 0/1 matmuls did, before: the same results, bit for bit,
        and ~1.5 us slower). The ones column is a GATHER from a constant (one op; ones_like took
        two, SHAPE and BROADCAST_TO)."""
        d = self.config.dim
        rated = tf.gather(params.item_embeddings, item_ids)  # [n, d]
        target = ratings - params.global_mean - tf.gather(params.item_bias, item_ids)
        ones = tf.gather(tf.ones([self.config.num_items]), item_ids)
        rows = tf.concat([rated, tf.stack([ones, target], axis=1)], axis=1)  # [n, d+2]
        gram = tf.matmul(rows, rows, transpose_a=True)  # [d+2, d+2]
        systems = tf.expand_dims(gram, 0) + self.shared_systems.read_value()  # [heads, d+2, d+2]
        if not self.config.implicit:
            solution = model.sweep(systems, d + 1)[0, d + 1, :d + 1]
            return model.UserParams(solution[:d], solution[d]), tf.zeros([d])
        embeddings_swept = model.sweep(systems, d)
        implicit = embeddings_swept[1, d, :d]  # 1^T R (R^T R + w0 V^T V + l2 I)^-1
        solution = model.sweep(embeddings_swept, d + 1, start=d)[0, d + 1, :d + 1]  # b^T A^-1
        return model.UserParams(solution[:d], solution[d]), implicit

    def _personalize(self, item_ids, ratings):
        params = self._global()
        user, implicit = self._fit(params, item_ids, ratings)
        self.user_embedding.assign(user.embedding)
        self.user_bias.assign(user.bias)
        self.implicit_embedding.assign(implicit)
        self._refresh_scores(params, user, implicit)
        errors = model.predict(params, user, item_ids) - ratings
        count = tf.maximum(tf.cast(tf.size(ratings), tf.float32), 1.0)
        return {"user_embedding": user.embedding, "user_bias": user.bias, "implicit_embedding": implicit,
                "loss": tf.reduce_sum(errors * errors) / count}

    def _implicit_delta(self, params, item_ids, implicit):
        """`model.implicit_delta` (one step of the ranking loss on the whole table), with each
        item's coefficient summed first: delta_j = c_j x, c_j = -lr (w0 <x, v_j> + [j rated] (<x, v_j> - 1))."""
        config = self.config
        every_item = self._matvec(params.item_embeddings, implicit)
        rated_error = tf.gather(every_item, item_ids) - 1.0
        coefficient = (-config.implicit_learning_rate * config.implicit_unobserved_weight) * every_item + tf.scatter_nd(
            tf.expand_dims(item_ids, 1), -config.implicit_learning_rate * rated_error, [config.num_items])
        return tf.matmul(tf.expand_dims(coefficient, 1), tf.expand_dims(implicit, 0))

    def _client_update(self, item_ids, ratings):
        params = self._global()
        user, implicit = self._fit(params, item_ids, ratings)
        delta, loss_before = model.local_item_steps(params, item_ids, ratings, user, self.config)
        if self.config.implicit:
            ranking_delta = self._implicit_delta(params, item_ids, implicit)
        else:
            ranking_delta = tf.zeros_like(params.item_embeddings)
        return {
            "item_embeddings_delta": delta.item_embeddings,
            "item_bias_delta": delta.item_bias,
            "global_mean_delta": delta.global_mean,
            "implicit_embeddings_delta": ranking_delta,
            "num_examples": tf.cast(tf.size(ratings), tf.float32),
            "loss_before": loss_before,
        }

    def _get_weights(self):
        return {"item_embeddings": self.item_embeddings.read_value(), "item_bias": self.item_bias.read_value(),
                "global_mean": self.global_mean.read_value(), "user_embedding": self.user_embedding.read_value(),
                "user_bias": self.user_bias.read_value(), "implicit_embedding": self.implicit_embedding.read_value()}

    def _set_global(self, item_embeddings, item_bias, global_mean):
        params = model.GlobalParams(item_embeddings, item_bias, global_mean)
        self.item_embeddings.assign(item_embeddings)
        self.item_bias.assign(item_bias)
        self.global_mean.assign(global_mean)
        self.shared_systems.assign(self._shared_systems(params))
        self._refresh_scores(params, self._user(), self.implicit_embedding.read_value())
        return {"num_items": tf.shape(item_bias)[0]}

    def _set_user(self, user_embedding, user_bias, implicit_embedding):
        self.user_embedding.assign(user_embedding)
        self.user_bias.assign(user_bias)
        self.implicit_embedding.assign(implicit_embedding)
        self._refresh_scores(self._global(), model.UserParams(user_embedding, user_bias), implicit_embedding)
        return {"dim": tf.shape(user_embedding)[0]}
