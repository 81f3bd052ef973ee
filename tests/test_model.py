"""The model math checked against independent numpy references (closed forms, finite differences)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tff_pipeline import model


def _random_spd(rng: np.random.Generator, k: int, batch: tuple[int, ...] = ()) -> np.ndarray:
    """SPD matrices with eigenvalues in [1, 20] (condition number <= 20)."""
    raw = rng.normal(size=batch + (k, k))
    q, _ = np.linalg.qr(raw)
    eigs = rng.uniform(1.0, 20.0, size=batch + (k,))
    return np.einsum("...ij,...j,...kj->...ik", q, eigs, q)


def _rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12))


# ---------------------------------------------------------------------------------------------
# solve_spd
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 17])
def test_solve_spd_unbatched_matches_numpy(k):
    rng = np.random.default_rng(k)
    a = _random_spd(rng, k)
    b = rng.normal(size=k)
    got = model.solve_spd(tf.constant(a, tf.float32), tf.constant(b, tf.float32), iterations=k).numpy()
    assert got.shape == (k,)
    assert _rel_err(got, np.linalg.solve(a, b)) < 1e-4


@pytest.mark.parametrize("k", [1, 4, 9, 17])
def test_solve_spd_batched_matches_numpy(k):
    rng = np.random.default_rng(100 + k)
    a = _random_spd(rng, k, batch=(3, 2))
    b = rng.normal(size=(3, 2, k))
    got = model.solve_spd(tf.constant(a, tf.float32), tf.constant(b, tf.float32), iterations=k).numpy()
    assert got.shape == (3, 2, k)
    for i in range(3):
        for j in range(2):
            assert _rel_err(got[i, j], np.linalg.solve(a[i, j], b[i, j])) < 1e-4


@pytest.mark.parametrize("batch", [(), (3, 2)])
@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_solve_spd_elimination_matches_numpy(k, batch):
    rng = np.random.default_rng(200 + k)
    a = _random_spd(rng, k, batch=batch)
    b = rng.normal(size=batch + (k,))
    got = model.solve_spd_elimination(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy()
    assert got.shape == batch + (k,)
    expected = np.linalg.solve(a, b[..., np.newaxis])[..., 0]
    for index in np.ndindex(batch):
        assert _rel_err(got[index], expected[index]) < 1e-5


def test_sweep_is_the_sweep_operator_off_the_swept_diagonal():
    """Sweeping the first k pivots of [[A, B], [B^T, C]] gives A^-1 B, C - B^T A^-1 B, and -A^-1 off
    its diagonal (the swept diagonal is left unrepaired: nothing reads it)."""
    rng = np.random.default_rng(3)
    k, extra = 6, 3
    full = _random_spd(rng, k + extra)
    a, b, c = full[:k, :k], full[:k, k:], full[k:, k:]
    got = model.sweep(tf.constant(full, tf.float32), k).numpy().astype(np.float64)
    inverse = np.linalg.inv(a)
    np.testing.assert_allclose(got[:k, k:], inverse @ b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[k:, :k], (inverse @ b).T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[k:, k:], c - b.T @ inverse @ b, rtol=1e-4, atol=1e-5)
    off_diagonal = ~np.eye(k, dtype=bool)
    np.testing.assert_allclose(got[:k, :k][off_diagonal], -inverse[off_diagonal], rtol=1e-4, atol=1e-5)


def test_a_sweep_in_two_parts_is_the_whole_sweep_bit_for_bit():
    """`start` continues a sweep where an earlier one stopped (the device reads the ranking head's
    answer between the two parts): the same ops, so the same floats."""
    rng = np.random.default_rng(4)
    full = tf.constant(_random_spd(rng, 9, batch=(2,)), tf.float32)
    first = model.sweep(full, 5)
    np.testing.assert_array_equal(model.sweep(first, 7, start=5).numpy(), model.sweep(full, 7).numpy())
    np.testing.assert_array_equal(model.sweep(first, 5, start=5).numpy(), first.numpy())  # nothing left to sweep


def test_solve_spd_too_few_iterations_is_not_exact():
    """Guard that the comparison above can fail: 1 CG step on a 10x10 system is not the solution."""
    rng = np.random.default_rng(7)
    a = _random_spd(rng, 10)
    b = rng.normal(size=10)
    got = model.solve_spd(tf.constant(a, tf.float32), tf.constant(b, tf.float32), iterations=1).numpy()
    assert _rel_err(got, np.linalg.solve(a, b)) > 1e-2


# ---------------------------------------------------------------------------------------------
# fit_user / fit_users_batched
# ---------------------------------------------------------------------------------------------


def _params(rng: np.random.Generator, num_items: int, dim: int) -> model.GlobalParams:
    return model.GlobalParams(
        item_embeddings=tf.constant(rng.normal(0.0, 0.5, (num_items, dim)), tf.float32),
        item_bias=tf.constant(rng.normal(0.0, 0.3, num_items), tf.float32),
        global_mean=tf.constant(3.4, tf.float32),
    )


def _numpy_ridge(params: model.GlobalParams, items: np.ndarray, ratings: np.ndarray, config: model.ModelConfig):
    emb = params.item_embeddings.numpy().astype(np.float64)
    bias = params.item_bias.numpy().astype(np.float64)
    mu = float(params.global_mean.numpy())
    x = np.concatenate([emb[items], np.ones((len(items), 1))], axis=1)
    y = ratings.astype(np.float64) - mu - bias[items]
    l2 = np.array([config.user_l2] * config.dim + [config.user_bias_l2])
    w = np.linalg.solve(x.T @ x + np.diag(l2), x.T @ y)
    return w, x, y, l2


@pytest.mark.parametrize("n_ratings", [1, 3, 12, 40])
def test_fit_user_is_the_ridge_minimiser(n_ratings):
    rng = np.random.default_rng(n_ratings)
    # distinct penalties for embedding and bias so a swapped penalty would be caught
    config = model.ModelConfig(num_items=60, dim=6, user_l2=2.0, user_bias_l2=0.3)
    params = _params(rng, config.num_items, config.dim)
    items = rng.choice(config.num_items, size=n_ratings, replace=False).astype(np.int32)
    ratings = rng.uniform(1.0, 5.0, size=n_ratings).astype(np.float32)

    user = model.fit_user(params, tf.constant(items), tf.constant(ratings), config)
    got = np.concatenate([user.embedding.numpy(), [user.bias.numpy()]])
    assert user.embedding.shape == (config.dim,) and user.bias.shape == ()

    w, x, y, l2 = _numpy_ridge(params, items, ratings, config)
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)

    # First-order optimality of sum (y - x w)^2 + sum l2 w^2 at the returned solution.
    grad = 2 * (x.T @ (x @ got - y) + l2 * got)
    scale = np.linalg.norm(2 * x.T @ y) + 1.0
    assert np.linalg.norm(grad) / scale < 1e-4


def test_fit_user_without_ratings_is_zero():
    rng = np.random.default_rng(0)
    config = model.ModelConfig(num_items=10, dim=3)
    params = _params(rng, config.num_items, config.dim)
    user = model.fit_user(params, tf.zeros([0], tf.int32), tf.zeros([0], tf.float32), config)
    np.testing.assert_array_equal(user.embedding.numpy(), np.zeros(3))
    assert float(user.bias.numpy()) == 0.0


def test_fit_users_batched_equals_per_user_fit():
    rng = np.random.default_rng(11)
    config = model.ModelConfig(num_items=50, dim=5, user_l2=1.5, user_bias_l2=4.0)
    params = _params(rng, config.num_items, config.dim)
    num_users = 6  # user 4 has no ratings
    per_user = {}
    rows = []
    for u, n in zip([0, 1, 2, 3, 5], [1, 7, 20, 4, 33]):
        items = rng.choice(config.num_items, size=n, replace=False).astype(np.int32)
        ratings = rng.uniform(1.0, 5.0, size=n).astype(np.float32)
        per_user[u] = (items, ratings)
        rows += [(u, i, r) for i, r in zip(items, ratings)]
    order = rng.permutation(len(rows))  # interleave users: batched fit must not rely on order
    user_ids = np.array([rows[j][0] for j in order], np.int32)
    item_ids = np.array([rows[j][1] for j in order], np.int32)
    ratings = np.array([rows[j][2] for j in order], np.float32)

    batched = model.fit_users_batched(
        params, tf.constant(user_ids), tf.constant(item_ids), tf.constant(ratings), num_users, config
    )
    assert batched.embedding.shape == (num_users, config.dim)
    assert batched.bias.shape == (num_users,)
    for u, (items, r) in per_user.items():
        single = model.fit_user(params, tf.constant(items), tf.constant(r), config)
        np.testing.assert_allclose(batched.embedding.numpy()[u], single.embedding.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.bias.numpy()[u], single.bias.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(batched.embedding.numpy()[4], np.zeros(config.dim))
    assert batched.bias.numpy()[4] == 0.0


# ---------------------------------------------------------------------------------------------
# item_gradients
# ---------------------------------------------------------------------------------------------


def _numpy_loss(v, b, mu, u, bu, r, item_l2, item_bias_l2):
    e = mu + bu + b + v @ u - r
    return 0.5 * np.sum(e * e) + 0.5 * item_l2 * np.sum(v * v) + 0.5 * item_bias_l2 * np.sum(b * b)


@pytest.mark.parametrize("item_bias_l2", [0.0, 0.37])
def test_item_gradients_match_finite_differences(item_bias_l2):
    rng = np.random.default_rng(5)
    n, dim, item_l2 = 7, 4, 0.3
    v = rng.normal(0, 0.5, (n, dim))
    b = rng.normal(0, 0.3, n)
    mu = 3.1
    u = rng.normal(0, 0.7, dim)
    bu = 0.2
    r = rng.uniform(1, 5, n)

    grads = model.item_gradients(
        tf.constant(v, tf.float64), tf.constant(b, tf.float64), tf.constant(mu, tf.float64),
        model.UserParams(tf.constant(u, tf.float64), tf.constant(bu, tf.float64)),
        tf.constant(r, tf.float64), item_l2, item_bias_l2,
    )

    def loss(v_, b_, mu_):
        return _numpy_loss(v_, b_, mu_, u, bu, r, item_l2, item_bias_l2)

    h = 1e-6
    fd_v = np.zeros_like(v)
    for idx in np.ndindex(*v.shape):
        dv = np.zeros_like(v)
        dv[idx] = h
        fd_v[idx] = (loss(v + dv, b, mu) - loss(v - dv, b, mu)) / (2 * h)
    fd_b = np.zeros_like(b)
    for j in range(n):
        db = np.zeros_like(b)
        db[j] = h
        fd_b[j] = (loss(v, b + db, mu) - loss(v, b - db, mu)) / (2 * h)
    fd_mu = (loss(v, b, mu + h) - loss(v, b, mu - h)) / (2 * h)

    np.testing.assert_allclose(grads.item_embeddings.numpy(), fd_v, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads.item_bias.numpy(), fd_b, rtol=1e-6, atol=1e-7)
    # The global-mean gradient is documented as mean(errors) = (dL/dmu) / n.
    np.testing.assert_allclose(grads.global_mean.numpy(), fd_mu / n, rtol=1e-6, atol=1e-7)
    # The reported loss is the mean squared error (before the step).
    e = mu + bu + b + v @ u - r
    np.testing.assert_allclose(grads.loss.numpy(), np.mean(e * e), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# client_update
# ---------------------------------------------------------------------------------------------


def _client_case(local_steps: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    config = model.ModelConfig(num_items=40, dim=5, local_steps=local_steps, local_learning_rate=0.05)
    params = model.initial_global_params(config, seed=seed)
    params = params._replace(item_bias=tf.constant(rng.normal(0, 0.2, config.num_items), tf.float32))
    items = rng.choice(config.num_items, size=9, replace=False).astype(np.int32)
    ratings = rng.uniform(1.0, 5.0, size=9).astype(np.float32)
    return config, params, items, ratings


def test_client_update_delta_is_dense_global_shaped_and_only_on_rated_rows():
    config, params, items, ratings = _client_case()
    out = model.client_update(params, tf.constant(items), tf.constant(ratings), config)

    assert isinstance(out.delta, model.GlobalParams)
    for d, p in zip(out.delta, params):
        assert d.shape == p.shape and d.dtype == p.dtype
    emb = out.delta.item_embeddings.numpy()
    bias = out.delta.item_bias.numpy()
    unrated = np.setdiff1d(np.arange(config.num_items), items)
    np.testing.assert_array_equal(emb[unrated], 0.0)
    np.testing.assert_array_equal(bias[unrated], 0.0)
    assert np.all(np.abs(emb[items]).sum(axis=1) > 0)
    assert np.all(np.abs(bias[items]) > 0)
    assert float(out.delta.global_mean.numpy()) != 0.0
    assert float(out.num_examples.numpy()) == len(ratings)
    assert out.num_examples.dtype == tf.float32


def test_client_update_without_local_steps_has_zero_delta():
    config, params, items, ratings = _client_case(local_steps=0)
    out = model.client_update(params, tf.constant(items), tf.constant(ratings), config)
    for d in out.delta:
        np.testing.assert_array_equal(d.numpy(), 0.0)
    assert float(out.num_examples.numpy()) == len(ratings)


def test_one_local_step_is_a_gradient_step_and_lowers_the_loss():
    config, params, items, ratings = _client_case(local_steps=1)
    out = model.client_update(params, tf.constant(items), tf.constant(ratings), config)
    user = model.fit_user(params, tf.constant(items), tf.constant(ratings), config)
    np.testing.assert_allclose(out.user.embedding.numpy(), user.embedding.numpy(), rtol=1e-6, atol=1e-7)

    v0 = params.item_embeddings.numpy().astype(np.float64)[items]
    b0 = params.item_bias.numpy().astype(np.float64)[items]
    mu0 = float(params.global_mean.numpy())
    u = user.embedding.numpy().astype(np.float64)
    bu = float(user.bias.numpy())
    r = ratings.astype(np.float64)
    lr = config.local_learning_rate

    # The step equals -lr * the (numpy) gradient.
    e = mu0 + bu + b0 + v0 @ u - r
    np.testing.assert_allclose(
        out.delta.item_embeddings.numpy()[items], -lr * (e[:, None] * u[None, :] + config.item_l2 * v0),
        rtol=1e-4, atol=1e-6,
    )
    np.testing.assert_allclose(out.delta.item_bias.numpy()[items], -lr * e, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.delta.global_mean.numpy(), -lr * e.mean(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.loss_before.numpy(), np.mean(e * e), rtol=1e-4)

    before = _numpy_loss(v0, b0, mu0, u, bu, r, config.item_l2, config.item_bias_l2)
    v1 = v0 + out.delta.item_embeddings.numpy()[items]
    b1 = b0 + out.delta.item_bias.numpy()[items]
    mu1 = mu0 + float(out.delta.global_mean.numpy())
    after = _numpy_loss(v1, b1, mu1, u, bu, r, config.item_l2, config.item_bias_l2)
    assert after < before - 1e-4


@pytest.mark.parametrize("local_steps", [2, 5])
def test_client_update_equals_explicit_gradient_descent_with_item_gradients(local_steps):
    """The scalar recurrence in client_update is the same GD as stepping with item_gradients."""
    config, params, items, ratings = _client_case(local_steps=local_steps, seed=3)
    config = dataclasses.replace(config, item_l2=0.3, item_bias_l2=0.2, local_learning_rate=0.07)
    out = model.client_update(params, tf.constant(items), tf.constant(ratings), config)
    user = model.fit_user(params, tf.constant(items), tf.constant(ratings), config)
    v = tf.gather(params.item_embeddings, items)
    b = tf.gather(params.item_bias, items)
    mu = params.global_mean
    losses = []
    for _ in range(local_steps):
        g = model.item_gradients(v, b, mu, user, tf.constant(ratings), config.item_l2, config.item_bias_l2)
        losses.append(float(g.loss))
        v = v - config.local_learning_rate * g.item_embeddings
        b = b - config.local_learning_rate * g.item_bias
        mu = mu - config.local_learning_rate * g.global_mean
    np.testing.assert_allclose(
        out.delta.item_embeddings.numpy()[items], (v - tf.gather(params.item_embeddings, items)).numpy(),
        rtol=1e-4, atol=1e-6,
    )
    np.testing.assert_allclose(
        out.delta.item_bias.numpy()[items], (b - tf.gather(params.item_bias, items)).numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(out.delta.global_mean.numpy(), (mu - params.global_mean).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.loss_before.numpy(), losses[0], rtol=1e-5)
    assert losses == sorted(losses, reverse=True)  # the steps descend


def test_bias_only_model_dim_zero_fits_user_bias_and_updates_item_bias():
    """dim=0 is the biases-only member of the family (useful under strong DP noise)."""
    config = model.ModelConfig(num_items=6, dim=0, user_bias_l2=1.0, local_steps=2)
    params = model.GlobalParams(
        tf.zeros([6, 0]), tf.constant([0.5, -0.5, 0.0, 0.0, 0.0, 0.0]), tf.constant(3.0)
    )
    items = tf.constant([0, 1, 2], tf.int32)
    ratings = tf.constant([4.5, 3.5, 4.0])
    user = model.fit_user(params, items, ratings, config)
    # Ridge on residuals (1, 1, 1) with penalty 1: b_u = 3 / (3 + 1).
    np.testing.assert_allclose(user.bias.numpy(), 0.75, rtol=1e-5)
    assert user.embedding.shape == (0,)
    output = model.client_update(params, items, ratings, config)
    bias_delta = output.delta.item_bias.numpy()
    assert np.all(bias_delta[:3] > 0) and np.all(bias_delta[3:] == 0)


# ---------------------------------------------------------------------------------------------
# the implicit (ranking) head
# ---------------------------------------------------------------------------------------------


def _implicit_setup(seed: int = 0, num_items: int = 40, dim: int = 5):
    rng = np.random.default_rng(seed)
    config = model.ModelConfig(num_items=num_items, dim=dim, implicit_learning_rate=0.7,
                               implicit_unobserved_weight=0.2, implicit_l2=0.5)
    params = model.GlobalParams(tf.constant(rng.normal(0, 0.4, (num_items, dim)), tf.float32),
                                tf.constant(rng.normal(0, 0.2, num_items), tf.float32), tf.constant(3.4))
    items = rng.choice(num_items, 9, replace=False).astype(np.int32)
    return config, params, items


def _numpy_implicit_user(V, items, w0, l2):
    system = w0 * V.T @ V + V[items].T @ V[items] + l2 * np.eye(V.shape[1])
    return np.linalg.solve(system, V[items].sum(axis=0))


def test_the_implicit_user_is_the_exact_minimiser_and_the_delta_its_loss_gradient():
    config, params, items = _implicit_setup()
    V = params.item_embeddings.numpy().astype(np.float64)
    x = model.fit_implicit_user(params, tf.constant(items), config).numpy()
    expected = _numpy_implicit_user(V, items, 0.2, 0.5)
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)

    def loss(table):
        scores = table @ expected
        return np.sum((1 - scores[items]) ** 2) / 2 + 0.2 * np.sum(scores**2) / 2

    # the delta is -lr * d loss / d V, checked against central finite differences
    delta = model.implicit_delta(params, tf.constant(items), tf.constant(expected, tf.float32), config).numpy()
    numeric = np.zeros_like(V)
    for j in range(V.shape[0]):
        for k in range(V.shape[1]):
            step = np.zeros_like(V)
            step[j, k] = 1e-5
            numeric[j, k] = (loss(V + step) - loss(V - step)) / 2e-5
    np.testing.assert_allclose(delta, -0.7 * numeric, rtol=1e-3, atol=1e-5)
    assert np.count_nonzero(np.abs(delta).sum(axis=1)) == V.shape[0]  # dense: every item moves


def test_batched_implicit_fit_equals_one_user_at_a_time():
    config, params, _ = _implicit_setup(seed=1)
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(6), 7).astype(np.int32)
    items = np.concatenate([rng.choice(40, 7, replace=False) for _ in range(6)]).astype(np.int32)
    batched = model.fit_implicit_users_batched(params, tf.constant(users), tf.constant(items), 6, config).numpy()
    for u in range(6):
        single = model.fit_implicit_user(params, tf.constant(items[users == u]), config).numpy()
        np.testing.assert_allclose(batched[u], single, rtol=1e-4, atol=1e-5)


def test_client_update_carries_the_implicit_step_only_when_the_head_is_on():
    config, params, items = _implicit_setup(seed=2)
    ratings = tf.constant(np.linspace(1, 5, len(items)), tf.float32)
    on = model.client_update(params, tf.constant(items), ratings, config)
    x = model.fit_implicit_user(params, tf.constant(items), config)
    np.testing.assert_allclose(on.implicit_user.numpy(), x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(on.implicit_delta.numpy(),
                               model.implicit_delta(params, tf.constant(items), x, config).numpy(), rtol=1e-6)
    off = model.client_update(params, tf.constant(items), ratings, dataclasses.replace(config, implicit_learning_rate=0.0))
    assert not np.any(off.implicit_delta.numpy()) and not np.any(off.implicit_user.numpy())
    for a, b in zip(on.delta, off.delta):  # the rating head's delta does not depend on the ranking head
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("solver", ["cg", "elimination"])
def test_the_private_presets_rating_head_is_biases_only_on_the_device_solvers(solver):
    """Under DP the user's rating embedding is penalised to (almost) zero, so stars are
    mu + b_u + b_i and the item table serves the ranking head; the builtin-op solves (conjugate
    gradient, elimination: what the device runs) must agree with the direct one despite the
    stiff penalty."""
    from tff_pipeline.config import PRIVATE_PRESET, SimulationConfig

    simulation_config = SimulationConfig(dp="adaptive", target_epsilon=8.0, **PRIVATE_PRESET)
    config = simulation_config.model_config(60)
    assert config.user_l2 == PRIVATE_PRESET["user_embedding_l2"] and config.user_bias_l2 == simulation_config.user_l2
    rng = np.random.default_rng(7)
    params = _params(rng, config.num_items, config.dim)
    items = rng.choice(config.num_items, size=40, replace=False).astype(np.int32)
    ratings = rng.uniform(1.0, 5.0, size=40).astype(np.float32)
    direct = model.fit_user(params, tf.constant(items), tf.constant(ratings), config)
    on_device = model.fit_user(params, tf.constant(items), tf.constant(ratings), dataclasses.replace(config, solver=solver))
    # The embedding's share of any prediction is negligible ...
    largest_item = float(np.max(np.linalg.norm(params.item_embeddings.numpy(), axis=1)))
    assert float(np.linalg.norm(direct.embedding.numpy())) * largest_item < 0.02
    # ... and the bias is the biases-only ridge fit.
    residual = ratings - 3.4 - params.item_bias.numpy()[items]
    assert float(direct.bias) == pytest.approx(residual.sum() / (len(items) + config.user_bias_l2), abs=0.02)
    np.testing.assert_allclose(on_device.bias.numpy(), direct.bias.numpy(), rtol=1e-4)
    np.testing.assert_allclose(on_device.embedding.numpy(), direct.embedding.numpy(), atol=1e-5)
