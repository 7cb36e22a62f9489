"""Blocked batch orders: a partition of the ratings each epoch, fewer entities per batch."""

import numpy as np
import pytest
import torch
from scipy import stats

from deepfactor.batching import EncoderInputs, RatingBatcher
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.fitted import build_modules
from deepfactor.order import BlockedOrder, distinct_entities
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


def test_full_batches_stay_aligned_and_the_short_batch_is_uniform():
    """With B not dividing N: F full blocked batches at the trainer's slices, then a
    short batch that is a uniformly random subset (each rating equally often)."""
    ratings = _movielens_like(20_000)
    size = 450  # 44 full batches and a short one of 200
    blocked = BlockedOrder(ratings, size, movie_groups=4)
    order = blocked(np.random.default_rng(2))
    np.testing.assert_array_equal(np.sort(order), np.arange(len(ratings)))
    users, group = blocked.deal(np.random.default_rng(2))
    turn = np.empty(ratings.num_users, dtype=int)
    turn[users] = np.arange(ratings.num_users)
    key = group[ratings.movie[order]].astype(int) * ratings.num_users + turn[ratings.user[order]]
    full = key[:44 * size].reshape(44, size)
    assert np.all(np.diff(full, axis=1) >= 0)  # each trainer slice is one piece of the sort

    # uniformity of the short batch, on data small enough to count every rating
    cells = np.random.default_rng(4).choice(40 * 60, size=1_030, replace=False)
    small = Ratings(cells // 60, cells % 60, np.ones(1_030), IdIndex(range(40)),
                    IdIndex(range(60)))
    blocked = BlockedOrder(small, 100, movie_groups=2)  # 10 full batches, 30 short
    rng = np.random.default_rng(7)
    epochs = 3000
    counts = np.bincount(np.concatenate([blocked(rng)[-30:] for _ in range(epochs)]),
                         minlength=len(small))
    expected = epochs * 30 / len(small)  # about 87 per rating
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # a false failure once in 10,000 runs
    assert chi2 < stats.chi2.ppf(1 - 1e-4, len(small) - 1), chi2


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
    random = distinct_entities(ratings, rng.permutation(len(ratings)), size, batches)
    ours = distinct_entities(ratings, blocked(rng), size, batches)
    by_user = distinct_entities(ratings, blocked(rng, 1), size, batches)
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
                          np.random.default_rng(0), order="blocks")
    assert small.every_entity and small.order == "random" and small.movie_groups is None
    large = RatingBatcher(ratings, ratings.rating, _inputs(ratings), 500,
                          np.random.default_rng(0), order="blocks", movie_groups=4)
    assert large.order == "blocks" and large.movie_groups == 4
    plain = RatingBatcher(ratings, ratings.rating, _inputs(ratings), 500,
                          np.random.default_rng(0))
    assert plain.order == "random"  # the class's default; fit() passes the config's
    with pytest.raises(ValueError, match="order must be one of"):
        RatingBatcher(ratings, ratings.rating, _inputs(ratings), 500,
                      np.random.default_rng(0), order="sorted")


def test_one_blocked_epoch_counts_every_kl_exactly_once():
    """sum over the epoch's batches of (B_b / N) w_i is 1 for every entity, exactly."""
    ratings = _movielens_like(20_000)
    size = 450  # 44 batches of 450 and a short one of 200
    batcher = RatingBatcher(ratings, ratings.rating, _inputs(ratings), size,
                            np.random.default_rng(3), order="blocks", movie_groups=8)
    assert batcher.order == "blocks"
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
    """With the guide's draws all but fixed, an epoch's batch losses, weighted by their
    sizes, average to the full loss.

    Every term of the minibatch estimator is linear in the ratings' and entities'
    weights, so over a partition the size-weighted mean is the full-data value up to
    rounding (and the guide's floor on its scale), whatever the order; a weight or a
    rating lost by the blocked order would show as a difference far above that."""
    ratings = _movielens_like(20_000)
    config = small_config(**{"model.latent_dim": 2})
    model, guide = build_modules(config, ratings.num_movies, ratings.num_users)
    inputs = _inputs(ratings)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, 450, np.random.default_rng(3),
                            order="blocks", movie_groups=8)
    assert batcher.order == "blocks"
    loss = __import__("pyro").infer.TraceMeanField_ELBO()(model, guide)
    # the mean-field loss with an analytic KL still samples z for the likelihood:
    # compare at the posterior mean instead, by zeroing the guide's scale
    with torch.no_grad():
        for encoder in (guide.movie_encoder, guide.user_encoder):
            encoder.scale.weight.zero_()
            encoder.scale.bias.fill_(-30.0)  # softplus(-30) ~ 1e-13, plus the floor
        full = loss(batcher.full()).item()
        batches = list(batcher.epoch())  # 44 of 450 and one of 200
        epoch = np.average([loss(batch).item() for batch in batches],
                           weights=[len(batch) for batch in batches])
    assert epoch == pytest.approx(full, rel=1e-4)


def test_groups_beyond_the_movies_are_capped():
    ratings = _movielens_like(20_000)
    blocked = BlockedOrder(ratings, 500, movie_groups=1)
    _, group = blocked.deal(np.random.default_rng(0), groups=100_000)  # > 2**16 too
    assert group.max() == ratings.num_movies - 1  # one movie a group, no wrap-around
    assert BlockedOrder(ratings, 500, movie_groups=100_000).groups == ratings.num_movies


def test_a_run_saved_before_batch_order_existed_reads_as_random(tmp_path):
    """Runs saved by earlier versions took random batches; their configs lack the key."""
    from deepfactor.checkpoint import load_checkpoint, save_checkpoint
    from deepfactor.fitted import load
    from deepfactor.fitting import fit

    fitted = fit(small_config(), progress=False)
    path = fitted.save(tmp_path)
    state = load_checkpoint(path)
    del state["config"]["train"]["batch_order"], state["config"]["train"]["movie_groups"]
    save_checkpoint(path, state)
    again = load(tmp_path)
    assert again.config["train.batch_order"] == "random"
    assert again.config["train.movie_groups"] == 0


def test_more_groups_than_a_label_holds_is_a_config_error():
    from deepfactor.config import ConfigError

    with pytest.raises(ConfigError, match="train.movie_groups.*between 0 and 65536"):
        small_config(**{"train.movie_groups": 2**16 + 1})
