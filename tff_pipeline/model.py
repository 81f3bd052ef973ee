"""The partially-local matrix-factorization model: one definition for every path.

    prediction(u, i) = global_mean + user_bias[u] + item_bias[i] + <user_embedding[u], item_embedding[i]>

The *global* parameters (item embeddings, item biases, global mean) are shared and learned
federatedly. The *local* parameters (one user's embedding and bias) live on that user's device
only; they are reconstructed there from the device's own ratings (FedRecon, Singhal et al. 2021)
and are never sent anywhere.

Everything here is plain TensorFlow math with hand-written gradients and no `tf.GradientTape`,
so the same functions convert to TensorFlow Lite with builtin ops only (see the export issue):
GATHER, MUL, SUM, ADD, SCATTER_ND and friends. The local reconstruction is an exact ridge
regression; for TFLite it is solved by symmetric Gauss-Jordan elimination (`sweep`) unrolled
into builtin ops (or by d + 1 conjugate-gradient iterations; both exact up to float error), in
TF by one direct solve (faster; `ModelConfig.solver`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from protocol import updates

SOLVERS = ("direct", "elimination", "cg")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and the hyperparameters of the local work a device does."""

    num_items: int
    dim: int = 16
    init_stddev: float = 0.1
    initial_global_mean: float = 3.5
    # Ridge penalty of the on-device user fit (embedding and bias).
    user_l2: float = 10.0
    user_bias_l2: float = 10.0
    # Local training of the global item parameters on one device.
    item_l2: float = 0.1
    item_bias_l2: float = 0.0
    local_steps: int = 5
    local_learning_rate: float = 0.1
    # The implicit (ranking) head on the same item table: each device also fits a second user
    # vector x to "which items did I rate" (weighted implicit least squares, Hu et al. 2008:
    # loss sum_rated (1 - <x, v_j>)^2 + w0 sum_all <x, v_j>^2 + l2 |x|^2) and takes one step of
    # that loss on the whole table. `implicit_learning_rate` 0 turns the head off.
    implicit_unobserved_weight: float = 0.1
    implicit_l2: float = 3.0
    implicit_learning_rate: float = 0.0
    # How the (d+1)x(d+1) ridge system is solved: "direct" (one LAPACK op, fastest in TF),
    # "elimination" (symmetric Gauss-Jordan, `sweep`, from builtin ops only: ~6 ops per unknown;
    # the TFLite export's fits are sweeps) or "cg" (conjugate gradient from builtin ops only:
    # ~18 ops per unknown). All give the exact ridge solution up to float rounding.
    solver: str = "direct"

    @property
    def implicit(self) -> bool:
        """Whether the ranking head is trained (it needs an embedding)."""
        return self.implicit_learning_rate > 0 and self.dim > 0

    def __post_init__(self) -> None:
        if self.num_items <= 0 or self.dim < 0:
            raise ValueError(f"num_items must be > 0 and dim >= 0, got {self.num_items}, {self.dim}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {self.solver!r}")
        if self.local_steps < 0:
            raise ValueError(f"local_steps must be >= 0, got {self.local_steps}")


class GlobalParams(NamedTuple):
    """Shared parameters: the only ones that take part in aggregation."""

    item_embeddings: tf.Tensor  # [num_items, dim]
    item_bias: tf.Tensor  # [num_items]
    global_mean: tf.Tensor  # []


class UserParams(NamedTuple):
    """Local parameters: never leave the device."""

    embedding: tf.Tensor  # [dim] (or [batch, dim] in batched evaluation)
    bias: tf.Tensor  # [] (or [batch])


def initial_global_params(config: ModelConfig, *, seed: int) -> GlobalParams:
    """Deterministic initial global parameters (numpy RNG, so they do not depend on TF state)."""
    rng = np.random.default_rng(seed)
    return GlobalParams(
        item_embeddings=tf.constant(
            rng.normal(0.0, config.init_stddev, (config.num_items, config.dim)), tf.float32
        ),
        item_bias=tf.zeros([config.num_items], tf.float32),
        global_mean=tf.constant(config.initial_global_mean, tf.float32),
    )


def predict(params: GlobalParams, user: UserParams, item_ids: tf.Tensor) -> tf.Tensor:
    """Predicted ratings of one user for `item_ids` (int32 [n])."""
    item_vectors = tf.gather(params.item_embeddings, item_ids)
    item_bias = tf.gather(params.item_bias, item_ids)
    interaction = tf.reduce_sum(item_vectors * tf.expand_dims(user.embedding, 0), axis=1)
    return params.global_mean + user.bias + item_bias + interaction


def _user_design(params: GlobalParams, item_ids: tf.Tensor) -> tf.Tensor:
    """Rows [item_embedding, 1]: the regressors of the user's ridge problem."""
    item_vectors = tf.gather(params.item_embeddings, item_ids)
    ones = tf.expand_dims(tf.ones_like(item_ids, tf.float32), 1)  # also right when dim == 0
    return tf.concat([item_vectors, ones], axis=1)


def _ridge_penalty(config: ModelConfig) -> tf.Tensor:
    return tf.constant([config.user_l2] * config.dim + [config.user_bias_l2], tf.float32)


def solve_spd(matrix: tf.Tensor, rhs: tf.Tensor, iterations: int) -> tf.Tensor:
    """Conjugate gradient for symmetric positive-definite systems, batched over leading dims.

    `matrix` [..., k, k], `rhs` [..., k]. With `iterations = k` it is exact in exact arithmetic.
    Written with multiply/sum only (no matmul-with-reshape, no matrix inverse) so it converts to
    builtin TFLite ops.
    """

    def matvec(vector: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(matrix * vector[..., tf.newaxis, :], axis=-1)

    solution = tf.zeros_like(rhs)
    residual = rhs
    direction = rhs
    residual_sq = tf.reduce_sum(residual * residual, axis=-1, keepdims=True)
    tiny = tf.constant(1e-20, rhs.dtype)
    for _ in range(iterations):
        image = matvec(direction)
        curvature = tf.reduce_sum(direction * image, axis=-1, keepdims=True)
        step = residual_sq / tf.maximum(curvature, tiny)
        solution = solution + step * direction
        residual = residual - step * image
        new_residual_sq = tf.reduce_sum(residual * residual, axis=-1, keepdims=True)
        direction = residual + (new_residual_sq / tf.maximum(residual_sq, tiny)) * direction
        residual_sq = new_residual_sq
    return solution


def sweep(matrix: tf.Tensor, pivots: int, *, start: int = 0) -> tf.Tensor:
    """The sweep operator on the first `pivots` coordinates of symmetric matrices [..., K, K]
    (on coordinates `start`..`pivots`-1 only with `start`: sweeps compose, so sweeping 0..j-1 and
    then j..k-1 is sweeping 0..k-1, with the same ops).

    For M = [[A, B], [B^T, C]] with A ([pivots, pivots]) positive definite the result is
    [[*, A^-1 B], [B^T A^-1, C - B^T A^-1 B]], where * is -A^-1 except on its diagonal, which is
    left as garbage: no later step reads a swept pivot, so it is not repaired (one op per pivot
    less). Gauss-Jordan elimination in symmetric form: no pivoting (SPD matrices need none), and
    every step reads a row, never a column (a column slice is a strided copy in LiteRT). Unrolled
    into `pivots` steps of 6 builtin TFLite ops: the outer product of a step is one BATCH_MATMUL of
    the row with itself (a reshape and a broadcast multiply took one op more and were slower).
    """
    size = int(matrix.shape[-1])
    unit = np.eye(size, dtype=np.float32)
    for j in range(start, pivots):
        row = matrix[..., j:j + 1, :]  # [..., 1, K]: also column j, by symmetry
        v = row - unit[j:j + 1]  # row j with the pivot d replaced by d - 1
        # Off row and column j: m - m_.j m_j. / d; on them: m_.j / d (and 2 - 1/d on the pivot).
        matrix = matrix - tf.matmul(v, v / row[..., j:j + 1], transpose_a=True)
    return matrix


def solve_spd_elimination(matrix: tf.Tensor, rhs: tf.Tensor) -> tf.Tensor:
    """Solve symmetric positive-definite systems `matrix` [..., k, k] x = `rhs` [..., k] exactly
    (up to float rounding) by sweeping the augmented [[A, b], [b^T, 0]] (`sweep`): builtin
    TFLite ops only, 6 per unknown (conjugate gradient takes ~18)."""
    k = int(rhs.shape[-1])
    column = tf.expand_dims(rhs, -1)
    corner = tf.zeros_like(column[..., :1, :])
    augmented = tf.concat([tf.concat([matrix, column], -1), tf.concat([tf.linalg.matrix_transpose(column), corner], -1)],
                          -2)
    return sweep(augmented, k)[..., k, :k]


def solve_ridge_system(matrix: tf.Tensor, rhs: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    """Solve the user's (or batch of users') ridge normal equations with the configured solver."""
    if config.solver == "cg":
        return solve_spd(matrix, rhs, iterations=int(rhs.shape[-1]))
    if config.solver == "elimination":
        return solve_spd_elimination(matrix, rhs)
    return tf.linalg.solve(matrix, rhs[..., tf.newaxis])[..., 0]


def fit_user(
    params: GlobalParams, item_ids: tf.Tensor, ratings: tf.Tensor, config: ModelConfig
) -> UserParams:
    """Reconstruct one user's local parameters from their own ratings (exact ridge fit).

    Minimises sum_j (r_j - mu - b_i(j) - <u, v_i(j)> - b_u)^2 + user_l2 |u|^2 + user_bias_l2 b_u^2
    with the global parameters frozen. A user with no ratings gets zeros.
    """
    design = _user_design(params, item_ids)  # [n, d+1]
    target = ratings - params.global_mean - tf.gather(params.item_bias, item_ids)
    # One plain 2-D matmul (TFLite FULLY_CONNECTED / BATCH_MATMUL) instead of an [n, k, k] outer
    # product: on the device this halves the fit's time at 100 ratings.
    gram = tf.matmul(design, design, transpose_a=True)
    gram = gram + tf.linalg.diag(_ridge_penalty(config))
    rhs = tf.reduce_sum(design * target[:, tf.newaxis], axis=0)
    weights = solve_ridge_system(gram, rhs, config)
    return UserParams(embedding=weights[: config.dim], bias=weights[config.dim])


# Rows per chunk when normal equations are accumulated over many ratings: the [rows, k, k] outer
# products of one chunk hold at most 2^24 floats (64 MiB). Unchunked, 9 M ratings at d=16 needed
# 10 GB for the outer products and ~2 GB for the gathered rows.
NORMAL_EQUATIONS_CHUNK_FLOATS = 2**24


def accumulate_normal_equations(
    rows: int,
    chunk_fn: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]],
    num_segments: int,
    k: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per segment, sum_r x_r x_r^T and sum_r x_r y_r over its rows: ([S, k, k], [S, k]).

    `chunk_fn(start, end)` returns the design rows x [m, k], targets y [m] and segment ids [m] of
    rows start..end. Rows are taken in chunks by a `tf.while_loop` with one iteration in flight
    (an unrolled Python loop let TF's executor run every chunk at once: 15 GB), so nothing of
    size [rows, ...] is ever materialised.
    """
    chunk = max(1, NORMAL_EQUATIONS_CHUNK_FLOATS // (k * k))
    num_chunks = max(1, -(-rows // chunk))

    def body(index, gram, rhs):
        start = index * chunk
        design, target, segments = chunk_fn(start, tf.minimum(start + chunk, rows))
        gram += tf.math.unsorted_segment_sum(design[:, :, tf.newaxis] * design[:, tf.newaxis, :], segments,
                                             num_segments)
        rhs += tf.math.unsorted_segment_sum(design * target[:, tf.newaxis], segments, num_segments)
        return index + 1, gram, rhs

    _, gram, rhs = tf.while_loop(
        lambda index, *_: index < num_chunks, body,
        (tf.constant(0), tf.zeros([num_segments, k, k]), tf.zeros([num_segments, k])),
        parallel_iterations=1,
    )
    return gram, rhs


def fit_users_batched(
    params: GlobalParams,
    user_ids: tf.Tensor,
    item_ids: tf.Tensor,
    ratings: tf.Tensor,
    num_users: int,
    config: ModelConfig,
) -> UserParams:
    """`fit_user` for every user at once (same ridge problem, same solver); used in evaluation."""
    def chunk(start: int, end: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        items = item_ids[start:end]
        target = ratings[start:end] - params.global_mean - tf.gather(params.item_bias, items)
        return _user_design(params, items), target, user_ids[start:end]

    gram, rhs = accumulate_normal_equations(int(ratings.shape[0]), chunk, num_users, config.dim + 1)
    gram = gram + tf.linalg.diag(_ridge_penalty(config))[tf.newaxis]
    weights = solve_ridge_system(gram, rhs, config)
    return UserParams(embedding=weights[:, : config.dim], bias=weights[:, config.dim])


def implicit_system(params: GlobalParams, config: ModelConfig) -> tf.Tensor:
    """w0 V^T V + l2 I: the part of every user's implicit normal equations that is the same for
    all users (one [d, d] matmul over the whole table)."""
    gram = tf.matmul(params.item_embeddings, params.item_embeddings, transpose_a=True)
    return config.implicit_unobserved_weight * gram + tf.linalg.diag(
        tf.fill([config.dim], tf.constant(config.implicit_l2, tf.float32)))


def fit_implicit_user(
    params: GlobalParams, item_ids: tf.Tensor, config: ModelConfig, *, system: tf.Tensor | None = None
) -> tf.Tensor:
    """The user's implicit vector x [dim]: the exact minimiser of
    sum_{j rated} (1 - <x, v_j>)^2 + w0 sum_{all j} <x, v_j>^2 + l2 |x|^2 (the items alone count,
    not the stars). `system` is `implicit_system(params, config)` if the caller keeps it (the
    device does: it changes only with the item table)."""
    rated = tf.gather(params.item_embeddings, item_ids)
    shared = implicit_system(params, config) if system is None else system
    system = shared + tf.matmul(rated, rated, transpose_a=True)
    return solve_ridge_system(system, tf.reduce_sum(rated, axis=0), config)


def fit_implicit_users_batched(
    params: GlobalParams, user_ids: tf.Tensor, item_ids: tf.Tensor, num_users: int, config: ModelConfig
) -> tf.Tensor:
    """`fit_implicit_user` for every user at once: [num_users, dim]."""

    def chunk(start: tf.Tensor, end: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        rated = tf.gather(params.item_embeddings, item_ids[start:end])
        return rated, tf.ones_like(rated[:, 0]), user_ids[start:end]

    gram, rhs = accumulate_normal_equations(int(item_ids.shape[0]), chunk, num_users, config.dim)
    return solve_ridge_system(gram + implicit_system(params, config)[tf.newaxis], rhs, config)


def implicit_scores(params: GlobalParams, implicit_user: tf.Tensor) -> tf.Tensor:
    """Ranking scores <x, v_j> of every item for one user's implicit vector x [dim]: [num_items]."""
    return tf.reduce_sum(params.item_embeddings * implicit_user[tf.newaxis, :], axis=1)


def implicit_delta(
    params: GlobalParams, item_ids: tf.Tensor, implicit_user: tf.Tensor, config: ModelConfig
) -> tf.Tensor:
    """One gradient step of the implicit loss on the whole item table, as a delta [num_items, dim]:
    dense, because every item the user did not rate is a (weighted) negative."""
    x = implicit_user
    every_item = implicit_scores(params, x)
    gradient = config.implicit_unobserved_weight * every_item[:, tf.newaxis] * x[tf.newaxis, :]
    rated_error = tf.gather(every_item, item_ids) - 1.0
    gradient += tf.scatter_nd(item_ids[:, tf.newaxis], rated_error[:, tf.newaxis] * x[tf.newaxis, :],
                              tf.shape(params.item_embeddings))
    return -config.implicit_learning_rate * gradient


class ItemGradients(NamedTuple):
    """Gradients of the device's loss w.r.t. the global rows it touches (hand-written)."""

    item_embeddings: tf.Tensor  # [n, dim], row j belongs to item_ids[j]
    item_bias: tf.Tensor  # [n]
    global_mean: tf.Tensor  # []
    loss: tf.Tensor  # [] mean squared error before the step


def item_gradients(
    item_vectors: tf.Tensor,
    item_bias: tf.Tensor,
    global_mean: tf.Tensor,
    user: UserParams,
    ratings: tf.Tensor,
    item_l2: float,
    item_bias_l2: float = 0.0,
) -> ItemGradients:
    """Gradient of L = 1/2 sum_j e_j^2 + item_l2/2 sum_j |v_j|^2 + item_bias_l2/2 sum_j b_j^2
    (sums over the device's ratings).

    Per-row gradients do not depend on how many ratings the user has (each item appears once),
    while the global-mean gradient is averaged so that its scale matches a single row's.
    """
    predictions = (
        global_mean + user.bias + item_bias
        + tf.reduce_sum(item_vectors * user.embedding[tf.newaxis, :], axis=1)
    )
    errors = predictions - ratings
    return ItemGradients(
        item_embeddings=errors[:, tf.newaxis] * user.embedding[tf.newaxis, :]
        + item_l2 * item_vectors,
        item_bias=errors + item_bias_l2 * item_bias,
        global_mean=tf.reduce_mean(errors),
        loss=tf.reduce_mean(errors * errors),
    )


class ClientOutput(NamedTuple):
    """What one device's local work produces. Only the deltas and `num_examples` may be uploaded."""

    delta: GlobalParams  # the rating head's new - old global params (protocol.updates; zeros for untouched items)
    implicit_delta: tf.Tensor  # the ranking head's step on the item table [num_items, dim] (dense)
    num_examples: tf.Tensor  # float32 []
    user: UserParams  # stays on the device
    implicit_user: tf.Tensor  # the user's implicit vector [dim]; stays on the device
    loss_before: tf.Tensor  # mean squared error after reconstruction, before local training


def client_update(
    params: GlobalParams, item_ids: tf.Tensor, ratings: tf.Tensor, config: ModelConfig, *,
    implicit_system_matrix: tf.Tensor | None = None,
) -> ClientOutput:
    """The local work of one device in one federated round (FedRecon style).

    1. Reconstruct the user's own parameters with the global ones frozen (exact ridge fit).
    2. With the user's parameters frozen, take `local_steps` full-batch gradient steps
       (`item_gradients`) on the global rows of the items this user rated and the global mean.
    3. Return the change of the global parameters as a dense delta.
    Items must be unique within one device's ratings (the data loaders guarantee it).

    The steps are computed on per-item scalars instead of [n, dim] rows: with the user fixed,
    a step changes row j's score s_j = <v_j, u> and its embedding only along u, so

        e_j = mu + b_u + b_j + s_j - r_j
        s_j <- (1 - lr*l2) s_j - lr e_j |u|^2,   b_j <- (1 - lr*l2_b) b_j - lr e_j,
        mu  <- mu - lr mean(e),                  a_j <- (1 - lr*l2) a_j + e_j
        v_j(final) = (1 - lr*l2)^K v_j - lr a_j u.

    This is the same gradient descent (a test checks it against `item_gradients` step by step),
    with about a fifth of the ops: the per-client graph is what a federated round pays for.
    """
    user = fit_user(params, item_ids, ratings, config)
    delta, loss_before = local_item_steps(params, item_ids, ratings, user, config)
    if config.implicit:
        implicit_user = fit_implicit_user(params, item_ids, config, system=implicit_system_matrix)
        ranking_delta = implicit_delta(params, item_ids, implicit_user, config)
    else:
        implicit_user = tf.zeros([config.dim])
        ranking_delta = tf.zeros_like(params.item_embeddings)
    return ClientOutput(
        delta=delta,
        implicit_delta=ranking_delta,
        num_examples=tf.cast(tf.size(ratings), tf.float32),
        user=user,
        implicit_user=implicit_user,
        loss_before=loss_before,
    )


def local_item_steps(
    params: GlobalParams, item_ids: tf.Tensor, ratings: tf.Tensor, user: UserParams, config: ModelConfig
) -> tuple[GlobalParams, tf.Tensor]:
    """Steps 2 and 3 of `client_update` for a fitted `user`: the rating head's delta of the
    global parameters (new - old, dense) and the mean squared error before the steps."""
    item_vectors = tf.gather(params.item_embeddings, item_ids)
    item_bias0 = tf.gather(params.item_bias, item_ids)
    lr = config.local_learning_rate
    embedding_decay = 1.0 - lr * config.item_l2
    bias_decay = 1.0 - lr * config.item_bias_l2
    user_norm_sq = tf.reduce_sum(user.embedding * user.embedding)
    scores = tf.reduce_sum(item_vectors * tf.expand_dims(user.embedding, 0), axis=1)
    offset = user.bias - ratings  # the part of every error that the steps do not change
    item_bias = item_bias0
    global_mean = params.global_mean
    accumulated_errors = tf.zeros_like(ratings)
    loss_before = tf.constant(0.0)
    for step in range(config.local_steps):
        errors = global_mean + item_bias + scores + offset
        if step == 0:
            loss_before = tf.reduce_mean(errors * errors)
            accumulated_errors = errors  # decay * 0 + errors, exactly, without three ops on the device
        else:
            accumulated_errors = embedding_decay * accumulated_errors + errors
        scores = embedding_decay * scores - (lr * user_norm_sq) * errors
        item_bias = bias_decay * item_bias - lr * errors
        global_mean = global_mean - lr * tf.reduce_mean(errors)
    indices = tf.expand_dims(item_ids, 1)
    if config.dim == 0:  # scatter_nd refuses an empty output shape
        embeddings_delta = tf.zeros_like(params.item_embeddings)
    else:
        row_delta = (embedding_decay ** config.local_steps - 1.0) * item_vectors - lr * (
            tf.expand_dims(accumulated_errors, 1) * tf.expand_dims(user.embedding, 0)
        )
        embeddings_delta = tf.scatter_nd(indices, row_delta, tf.shape(params.item_embeddings))
    bias_delta = tf.scatter_nd(indices, item_bias - item_bias0, tf.shape(params.item_bias))
    return GlobalParams(embeddings_delta, bias_delta, updates.model_delta(params.global_mean, global_mean)), loss_before


class GroupOutput(NamedTuple):
    """What one client group (several users in one TFF client, `client_work.build_group_client_work`)
    contributes to the plain FedAvg mean: the sums the per-user path's aggregator would form."""

    weighted_delta: GlobalParams  # sum over the group's users of n_u * delta_u (rating head)
    implicit_delta: tf.Tensor  # sum over the group's users of the ranking head's step (per device, weight 1)
    num_examples: tf.Tensor  # float32 []: sum of n_u
    num_users: tf.Tensor  # float32 []: the users (devices) of the group


class _GroupRows(NamedTuple):
    """Each rating's part of its user's `client_update` in a group (`_group_rows`)."""

    counts: tf.Tensor  # [U] n_u
    indices: tf.Tensor  # [n, 1] item ids
    row_delta: tf.Tensor | None  # [n, d] the rating's row of its user's embedding delta (None when d = 0)
    bias_delta: tf.Tensor  # [n] the rating's item bias delta
    mean_delta: tf.Tensor  # [U] each user's global mean delta
    implicit_users: tf.Tensor | None  # [U, d] each user's implicit vector (ranking head on)
    rated_step: tf.Tensor | None  # [n, d] the rating's row of the ranking head's gradient


def _group_rows(params: GlobalParams, item_ids: tf.Tensor, ratings: tf.Tensor, segments: tf.Tensor,
                num_users: tf.Tensor, config: ModelConfig) -> _GroupRows:
    """`client_update` of every user of a group, per rating (see `client_update_group`)."""
    counts = tf.math.unsorted_segment_sum(tf.ones_like(ratings), segments, num_users)  # n_u
    design = _user_design(params, item_ids)  # [n, d+1]
    item_bias0 = tf.gather(params.item_bias, item_ids)
    target = ratings - params.global_mean - item_bias0
    gram = tf.math.unsorted_segment_sum(design[:, :, tf.newaxis] * design[:, tf.newaxis, :], segments, num_users)
    gram = gram + tf.linalg.diag(_ridge_penalty(config))[tf.newaxis]
    rhs = tf.math.unsorted_segment_sum(design * target[:, tf.newaxis], segments, num_users)
    solution = solve_ridge_system(gram, rhs, config)  # [U, d+1]
    user_embedding = tf.gather(solution[:, : config.dim], segments)  # [n, d], each rating's user
    user_bias = tf.gather(solution[:, config.dim], segments)

    # Local item steps, per rating (as `local_item_steps`), the global mean per user.
    item_vectors = design[:, : config.dim]
    lr = config.local_learning_rate
    embedding_decay = 1.0 - lr * config.item_l2
    bias_decay = 1.0 - lr * config.item_bias_l2
    user_norm_sq = tf.reduce_sum(user_embedding * user_embedding, axis=1)
    scores = tf.reduce_sum(item_vectors * user_embedding, axis=1)
    offset = user_bias - ratings
    item_bias = item_bias0
    user_means = tf.fill([num_users], params.global_mean)
    accumulated_errors = tf.zeros_like(ratings)
    for _ in range(config.local_steps):
        errors = tf.gather(user_means, segments) + item_bias + scores + offset
        accumulated_errors = embedding_decay * accumulated_errors + errors
        scores = embedding_decay * scores - (lr * user_norm_sq) * errors
        item_bias = bias_decay * item_bias - lr * errors
        user_means = user_means - lr * tf.math.divide_no_nan(
            tf.math.unsorted_segment_sum(errors, segments, num_users), counts)
    row_delta = None if config.dim == 0 else (embedding_decay ** config.local_steps - 1.0) * item_vectors - lr * (
        accumulated_errors[:, tf.newaxis] * user_embedding)
    implicit_users = rated_step = None
    if config.implicit:
        # Each user's x_u solves (shared + sum_{rated} v v^T) x = sum_{rated} v (`fit_implicit_user`).
        system = tf.math.unsorted_segment_sum(
            item_vectors[:, :, tf.newaxis] * item_vectors[:, tf.newaxis, :], segments, num_users)
        system = system + implicit_system(params, config)[tf.newaxis]
        implicit_users = solve_ridge_system(
            system, tf.math.unsorted_segment_sum(item_vectors, segments, num_users), config)  # [U, d]
        rated_user = tf.gather(implicit_users, segments)
        rated_step = (tf.reduce_sum(item_vectors * rated_user, axis=1) - 1.0)[:, tf.newaxis] * rated_user
    return _GroupRows(counts, tf.expand_dims(item_ids, 1), row_delta, item_bias - item_bias0,
                      updates.model_delta(params.global_mean, user_means), implicit_users, rated_step)


def client_update_group(
    params: GlobalParams, item_ids: tf.Tensor, ratings: tf.Tensor, user_index: tf.Tensor, num_users: tf.Tensor,
    config: ModelConfig,
) -> GroupOutput:
    """`client_update` of every user of a group at once, summed as the plain mean sums them.

    The group's ratings are flat, user u's being the rows with `user_index` u (0..num_users-1).
    Given the broadcast parameters every user's work is independent: the ridge fit is one batched
    solve over the users' normal equations (segment sums), and the local steps act on each rating's
    own scalars (`local_item_steps`), with the user's global mean a per-user scalar; so each
    rating's row delta is computed as the per-user path computes it and the rows are scatter-added
    into the table with the user's example count n_u as weight (the per-user path's scatter_nd adds
    a user's rows the same way, so even repeated items within a user would agree). The result
    equals sum_u n_u * delta_u (rating head) and sum_u implicit_delta_u (ranking head) up to float
    summation order.
    """
    rows = _group_rows(params, item_ids, ratings, user_index, num_users, config)
    weight = tf.gather(rows.counts, user_index)  # n_u of each rating's user
    table = tf.shape(params.item_embeddings)
    if rows.row_delta is None:  # scatter_nd refuses an empty output shape
        embeddings_delta = tf.zeros_like(params.item_embeddings)
    else:
        embeddings_delta = tf.scatter_nd(rows.indices, weight[:, tf.newaxis] * rows.row_delta, table)
    bias_delta = tf.scatter_nd(rows.indices, weight * rows.bias_delta, tf.shape(params.item_bias))
    mean_delta = tf.reduce_sum(rows.counts * rows.mean_delta)
    if config.implicit:
        # sum_u implicit_delta_u = -lr (w0 V sum_u x_u x_u^T + the rated rows)
        outer = tf.matmul(rows.implicit_users, rows.implicit_users, transpose_a=True)
        dense = config.implicit_unobserved_weight * tf.matmul(params.item_embeddings, outer)
        ranking_delta = -config.implicit_learning_rate * (dense + tf.scatter_nd(rows.indices, rows.rated_step, table))
    else:
        ranking_delta = tf.zeros_like(params.item_embeddings)
    return GroupOutput(
        weighted_delta=GlobalParams(embeddings_delta, bias_delta, mean_delta),
        implicit_delta=ranking_delta,
        num_examples=tf.reduce_sum(rows.counts),
        num_users=tf.cast(num_users, tf.float32),
    )


def client_updates_per_user(
    params: GlobalParams, item_ids: tf.Tensor, ratings: tf.Tensor, user_index: tf.Tensor, num_users: tf.Tensor,
    config: ModelConfig,
) -> tuple[tf.Tensor, ...]:
    """Every user's own `client_update` deltas in a group, stacked over the users: item embeddings
    [U, N, d], item biases [U, N], global mean [U], and with the ranking head on its step [U, N, d]
    (what DP clips user by user: `aggregation.PerUserRecordsQuery`)."""
    rows = _group_rows(params, item_ids, ratings, user_index, num_users, config)
    num_items = tf.shape(params.item_bias)[0]
    indices = tf.concat([user_index[:, tf.newaxis], rows.indices], axis=1)  # (user, item) of each rating
    table = tf.stack([num_users, num_items, config.dim])
    if rows.row_delta is None:
        embeddings = tf.zeros(tf.stack([num_users, num_items, 0]))
    else:
        embeddings = tf.scatter_nd(indices, rows.row_delta, table)
    parts = (embeddings, tf.scatter_nd(indices, rows.bias_delta, tf.stack([num_users, num_items])), rows.mean_delta)
    if rows.implicit_users is None:  # the ranking head is off
        return parts
    implicit_users = rows.implicit_users
    scores = tf.matmul(implicit_users, params.item_embeddings, transpose_b=True)  # [U, N]: <x_u, v_j>
    dense = config.implicit_unobserved_weight * scores[:, :, tf.newaxis] * implicit_users[:, tf.newaxis, :]
    ranking = -config.implicit_learning_rate * (dense + tf.scatter_nd(indices, rows.rated_step, table))
    return parts + (ranking,)
