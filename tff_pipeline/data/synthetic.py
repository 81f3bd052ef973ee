"""Synthetic non-IID rating data for fast, license-free experiments and tests.

Users belong to clusters with their own latent center and genre taste, items
have Zipf-like popularity, and per-user activity is lognormal — the three
properties that make federated recommendation hard (client drift, skewed item
coverage, unbalanced clients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .splits import GENERIC_SPLITS, split_all_ratings
from .types import DatasetSplit, Ratings, Vocabulary

__all__ = ["generate_synthetic", "synthetic_split"]

GLOBAL_MEAN = 3.6
MIN_RATINGS_PER_USER = 10
BASE_TIMESTAMP = 1_000_000_000
ONE_YEAR_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True)
class _World:
    """Latent structure behind the observed ratings."""

    user_cluster: np.ndarray
    user_factors: np.ndarray
    user_bias: np.ndarray
    item_genre: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    popularity: np.ndarray
    taste: np.ndarray  # [num_clusters, num_clusters] genre preference per cluster


def _check_args(num_users: int, num_items: int, latent_dim: int, num_clusters: int,
                mean_ratings_per_user: float) -> None:
    if num_users < 1 or num_items < 2 or latent_dim < 1 or num_clusters < 1:
        raise DataError(
            "synthetic data needs num_users >= 1, num_items >= 2, latent_dim >= 1, "
            f"num_clusters >= 1 (got {num_users}, {num_items}, {latent_dim}, {num_clusters})"
        )
    if mean_ratings_per_user <= 0:
        raise DataError(f"mean_ratings_per_user must be > 0, got {mean_ratings_per_user}")


def _make_world(rng: np.random.Generator, num_users: int, num_items: int, latent_dim: int,
                num_clusters: int, popularity_exponent: float) -> _World:
    # Dot products of N(0, ~0.5) factors in d dims have std ~0.8 on the rating scale.
    scale = 0.5 / np.sqrt(np.sqrt(latent_dim / 8.0))
    centers = rng.normal(0.0, scale * 0.9, size=(num_clusters, latent_dim))
    user_cluster = rng.integers(0, num_clusters, size=num_users)
    user_factors = centers[user_cluster] + rng.normal(0.0, scale * 0.5, (num_users, latent_dim))
    # Genre g is aligned with cluster g, so a cluster rates its own genre higher.
    genre_centers = 0.8 * centers + rng.normal(0.0, scale * 0.4, centers.shape)
    item_genre = rng.integers(0, num_clusters, size=num_items)
    item_factors = genre_centers[item_genre] + rng.normal(0.0, scale * 0.5, (num_items, latent_dim))
    ranks = rng.permutation(num_items)
    popularity = 1.0 / (ranks + 1.0) ** popularity_exponent
    # Popular items tend to be rated slightly higher, as in real catalogues.
    item_bias = rng.normal(0.0, 0.35, num_items) + 0.15 * (popularity / popularity.max())
    taste = 0.5 * np.eye(num_clusters) + 0.5 * rng.dirichlet(np.ones(num_clusters), num_clusters)
    return _World(
        user_cluster=user_cluster,
        user_factors=user_factors,
        user_bias=rng.normal(0.0, 0.3, num_users),
        item_genre=item_genre,
        item_factors=item_factors,
        item_bias=item_bias,
        popularity=popularity,
        taste=taste,
    )


def _ratings_per_user(rng: np.random.Generator, num_users: int, num_items: int,
                      mean: float) -> np.ndarray:
    """Lognormal activity, at least 10 and at most half the catalogue.

    The cap keeps enough unrated items per user for negative sampling.
    """
    sigma = 0.7
    counts = np.rint(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, num_users))
    upper = max(1, num_items // 2)
    return np.clip(counts, min(MIN_RATINGS_PER_USER, upper), upper).astype(np.int64)


def _user_rows(rng: np.random.Generator, world: _World, user: int, count: int,
               noise_std: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items, ratings and timestamps for one user."""
    weights = world.popularity * world.taste[world.user_cluster[user]][world.item_genre]
    items = rng.choice(len(weights), size=count, replace=False, p=weights / weights.sum())
    score = (
        GLOBAL_MEAN
        + world.user_bias[user]
        + world.item_bias[items]
        + world.item_factors[items] @ world.user_factors[user]
        + rng.normal(0.0, noise_std, count)
    )
    ratings = np.clip(np.rint(score), 1.0, 5.0)
    stamps = BASE_TIMESTAMP + rng.integers(0, ONE_YEAR_SECONDS, size=count)
    return items, ratings, stamps


def generate_synthetic(
    *,
    num_users: int = 400,
    num_items: int = 300,
    latent_dim: int = 8,
    mean_ratings_per_user: float = 40,
    num_clusters: int = 4,
    popularity_exponent: float = 1.0,
    noise_std: float = 0.5,
    seed: int = 0,
) -> tuple[Ratings, Vocabulary]:
    """Deterministic (per seed) non-IID integer 1..5 ratings plus vocabulary."""
    _check_args(num_users, num_items, latent_dim, num_clusters, mean_ratings_per_user)
    rng = np.random.default_rng(seed)
    world = _make_world(rng, num_users, num_items, latent_dim, num_clusters, popularity_exponent)
    counts = _ratings_per_user(rng, num_users, num_items, mean_ratings_per_user)
    rows = [_user_rows(rng, world, u, int(c), noise_std) for u, c in enumerate(counts)]
    ratings = Ratings(
        users=np.repeat(np.arange(num_users), counts),
        items=np.concatenate([r[0] for r in rows]),
        ratings=np.concatenate([r[1] for r in rows]),
        timestamps=np.concatenate([r[2] for r in rows]),
    )
    vocab = Vocabulary(
        user_raw_ids=np.arange(num_users, dtype=np.int64),
        item_raw_ids=np.arange(num_items, dtype=np.int64),
        item_titles=tuple(f"Synthetic item {k}" for k in range(num_items)),
    )
    return ratings, vocab


def synthetic_split(
    *, seed: int = 0, split: str = "random", num_negatives: int = 99, **generator_kwargs: object
) -> DatasetSplit:
    """Generate synthetic data and split it ("random" or "loo").

    With a small catalogue pass a smaller ``num_negatives``; DataError says so
    when a user has too few unrated items.
    """
    if split not in GENERIC_SPLITS:
        raise DataError(f"unknown split {split!r} for synthetic; expected one of {GENERIC_SPLITS}")
    ratings, vocab = generate_synthetic(seed=seed, **generator_kwargs)  # type: ignore[arg-type]  # the generator's keywords, passed through
    return split_all_ratings(
        "synthetic",
        vocab,
        ratings,
        split=split,
        seed=seed,
        num_negatives=num_negatives,
        rating_scale=(1.0, 5.0),
    )
