"""Blocked batch orders: a partition of the ratings each epoch, fewer entities per batch."""

import numpy as np
import pytest
import torch

from deepfactor.batching import EncoderInputs, RatingBatcher
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.fitted import build_modules
from deepfactor.order import BlockedOrder
from deepfactor.synthetic import movielens_shape, sample_movielens_pattern

from conftest import small_config


def _movielens_like(num_ratings=60_000, seed=0) -> Ratings:
    num_movies, num_users = movielens_shape(num_ratings)
    movie, user = sample_movielens_pattern(num_ratings, num_movies, num_users,
                                           np.random.default_rng(seed))
    values = np.random.default_rng(seed + 1).integers(1, 6, num_ratings).astype(float)
    return Ratings(movie, user, values, IdIndex(range(num_movies)), IdIndex(range(num_users)))


def _runs(labels: np.ndarray) -> int:
    """Number of maximal runs of equal consecutive labels."""
    return int(1 + np.count_nonzero(labels[1:] != labels[:-1]))


@pytest.mark.parametrize("groups", [1, 3, 64])
def test_an_epoch_visits_every_rating_once_in_blocks(groups):
    ratings = _movielens_like(20_000)
    blocked = BlockedOrder(ratings, 500, movie_groups=groups)
    order = blocked(np.random.default_rng(5))
    np.testing.assert_array_equal(np.sort(order), np.arange(len(ratings)))
    # the draws behind it: sorted by the movie's group, then by the user's turn
    users, group = blocked.deal(np.random.default_rng(5))
    np.testing.assert_array_equal(np.sort(users), np.arange(ratings.num_users))
    assert np.bincount(group).max() - np.bincount(group).min() <= 1  # equal groups
    turn = np.empty(ratings.num_users, dtype=int)
    turn[users] = np.arange(ratings.num_users)
    key = group[ratings.movie[order]].astype(int) * ratings.num_users + turn[ratings.user[order]]
    batches = key.reshape(-1, 500)  # 40 full batches, visited in a shuffled order
    assert np.all(np.diff(batches, axis=1) >= 0)  # each a slice of the sorted ratings
    in_sort_order = batches[np.argsort(batches[:, 0], kind="stable")].reshape(-1)
    assert np.all(np.diff(in_sort_order) >= 0)  # together, the sorted ratings
    if groups > 1:  # the visits are shuffled, not in the sort's order
        assert np.any(np.diff(batches[:, 0]) < 0)
    if groups == 1:  # batching by user: each user's ratings are contiguous within a batch
        assert sum(_runs(ratings.user[b]) for b in order.reshape(-1, 500)) \
            < ratings.num_users + 40


def test_the_short_batch_comes_last():
    ratings = _movielens_like(20_000)
    blocked = BlockedOrder(ratings, 450, movie_groups=4)  # 44 batches of 450 and one of 200
    order = blocked(np.random.default_rng(2))
    np.testing.assert_array_equal(np.sort(order), np.arange(len(ratings)))
    users, group = blocked.deal(np.random.default_rng(2))
    # the tail is the end of the sort: the last group's last users
    tail_groups = group[ratings.movie[order[-200:]]]
    assert np.all(tail_groups == group.max())


def test_the_same_generator_state_gives_the_same_order():
    ratings = _movielens_like(20_000)
    blocked = BlockedOrder(ratings, 500, movie_groups=8)
    a = blocked(np.random.default_rng(1))
    np.testing.assert_array_equal(a, blocked(np.random.default_rng(1)))
    assert not np.array_equal(a, blocked(np.random.default_rng(2)))


def test_blocked_batches_touch_far_fewer_entities_than_random_ones():
    ratings = _movielens_like(60_000)
    size = 1000
    blocked = BlockedOrder(ratings, size)  # groups measured on the data
    batches = np.arange(len(ratings) // size)
    rng = np.random.default_rng(0)
    random = blocked.distinct_entities(rng.permutation(len(ratings)), batches)
    ours = blocked.distinct_entities(blocked(rng), batches)
    by_user = blocked.distinct_entities(blocked(rng, 1), batches)
    assert blocked.groups > 1
    # measured 0.37 and 0.66 of the random count at this seed; each batch mean is over
    # 60 batches whose counts vary by a few percent, so these margins are not noise
    assert ours < 0.5 * random, (ours, random)
    assert ours < by_user


def test_the_chosen_groups_are_one_when_users_are_the_cheap_side():
    """Five movies rated by every user: any split of the movies only multiplies users."""
    num_movies, num_users = 5, 2000
    movie = np.tile(np.arange(num_movies), num_users)
    user = np.repeat(np.arange(num_users), num_movies)
    ratings = Ratings(movie, user, np.ones(len(movie)), IdIndex(range(num_movies)),
                      IdIndex(range(num_users)))
    assert BlockedOrder(ratings, 100).groups == 1


def _inputs(ratings):
    return EncoderInputs(ratings, ratings.rating, 3.0, 1.0)


def test_the_batcher_keeps_random_order_on_small_data():
    ratings = _movielens_like(20_000)
    small = RatingBatcher(ratings, ratings.rating, _inputs(ratings), 5000,
                          np.random.default_rng(0))
    assert small.every_entity and small.order == "random" and small.movie_groups is None
    large = RatingBatcher(ratings, ratings.rating, _inputs(ratings), 500,
                          np.random.default_rng(0), movie_groups=4)
    assert large.order == "blocks" and large.movie_groups == 4
    plain = RatingBatcher(ratings, ratings.rating, _inputs(ratings), 500,
                          np.random.default_rng(0), order="random")
    assert plain.order == "random"
    with pytest.raises(ValueError, match="order must be one of"):
        RatingBatcher(ratings, ratings.rating, _inputs(ratings), 500,
                      np.random.default_rng(0), order="sorted")


def test_one_blocked_epoch_counts_every_kl_exactly_once():
    """sum over the epoch's batches of (B / N) w_i is 1 for every entity, exactly."""
    ratings = _movielens_like(20_000)
    size = 400  # 50 batches of exactly 400: every batch has the same B
    batcher = RatingBatcher(ratings, ratings.rating, _inputs(ratings), size,
                            np.random.default_rng(3), movie_groups=8)
    movie_total = np.zeros(ratings.num_movies)
    user_total = np.zeros(ratings.num_users)
    for batch in batcher.epoch():
        share = len(batch) / len(ratings)
        np.add.at(movie_total, batch.movies.numpy(), share * batch.movie_scale.double().numpy()
                  * ratings.num_movies / len(batch.movies))
        np.add.at(user_total, batch.users.numpy(), share * batch.user_scale.double().numpy()
                  * ratings.num_users / len(batch.users))
    rated_movies = ratings.movie_counts() > 0
    np.testing.assert_allclose(movie_total[rated_movies], 1.0, rtol=1e-5)
    np.testing.assert_allclose(user_total, 1.0, rtol=1e-5)


def test_a_blocked_epoch_averages_to_the_full_data_elbo():
    """With the guide's draws fixed, the mean of an epoch's batch losses is the full loss.

    Every term of the minibatch estimator is linear in the ratings' and entities'
    weights, so over a partition into equal batches the mean is the full-data value up
    to rounding, whatever the order; a weight or a rating lost by the blocked order
    would show as a difference far above rounding."""
    ratings = _movielens_like(20_000)
    config = small_config(**{"model.latent_dim": 2})
    model, guide = build_modules(config, ratings.num_movies, ratings.num_users)
    inputs = _inputs(ratings)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, 400, np.random.default_rng(3),
                            movie_groups=8)
    loss = __import__("pyro").infer.TraceMeanField_ELBO()(model, guide)
    # the mean-field loss with an analytic KL still samples z for the likelihood:
    # compare at the posterior mean instead, by zeroing the guide's scale
    with torch.no_grad():
        for encoder in (guide.movie_encoder, guide.user_encoder):
            encoder.scale.weight.zero_()
            encoder.scale.bias.fill_(-30.0)  # softplus(-30) ~ 1e-13, plus the floor
        full = loss(batcher.full()).item()
        epoch = np.mean([loss(batch).item() for batch in batcher.epoch()])
    assert epoch == pytest.approx(full, rel=1e-4)
