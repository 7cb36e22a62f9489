"""Scale: bounded encoder inputs (unbiased, O(K) per entity), row-sparse Adam, the generator."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from deepfactor.batching import EncoderInputs, RatingBatcher
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.fitted import build_modules
from deepfactor.optim import RowSparseAdam
from deepfactor.subsample import sample_rows
from deepfactor.synthetic import (ACTIVITY_EXPONENT, ACTIVITY_OFFSET, MIN_PER_USER,
                                  movielens_shape, sample_movielens_pattern,
                                  simulate_movielens)
from deepfactor.train import make_elbo

from conftest import small_config

#: False-failure rate of each goodness-of-fit test below.
ALPHA = 1e-4


@pytest.mark.parametrize("n, cap", [(5, 3), (7, 3), (4, 4), (9, 2)])
def test_sampled_subsets_are_uniform(n, cap):
    """Every K-subset is equally likely, on both the random-key and the redraw path."""
    rng = np.random.default_rng(n * 10 + cap)
    draws = 6000
    starts, counts = np.arange(draws) * n, np.full(draws, n)
    positions, taken = sample_rows(starts, counts, cap, rng)
    assert (taken == min(n, cap)).all()
    rows = (positions - np.repeat(starts, taken)).reshape(draws, -1)
    assert ((rows >= 0) & (rows < n)).all()
    rows.sort(axis=1)
    assert (np.diff(rows, axis=1) > 0).all()  # without replacement
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), min(n, cap)))}
    observed = np.bincount([subsets[tuple(r)] for r in rows], minlength=len(subsets))
    if len(subsets) > 1:
        assert stats.chisquare(observed).pvalue > ALPHA


def test_sampling_reads_at_most_k_per_entity_and_all_of_small_ones():
    rng = np.random.default_rng(0)
    counts = np.array([0, 1, 3, 4, 7, 100, 10_000])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    positions, taken = sample_rows(starts, counts, 4, rng)
    np.testing.assert_array_equal(taken, [0, 1, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(positions[:8], np.arange(8))  # small rows whole


def _skewed_inputs(rng, max_inputs, num_ratings=3000, num_movies=60, num_users=200):
    movie, user = sample_movielens_pattern(num_ratings, num_movies, num_users, rng,
                                           min_per_user=5)
    values = rng.normal(3.5, 1.0, num_ratings)
    ratings = Ratings(movie, user, values, IdIndex(range(num_movies)), IdIndex(range(num_users)))
    return ratings, EncoderInputs(ratings, values, 3.5, 1.0, max_inputs=max_inputs)


def test_sampled_first_layer_input_is_unbiased():
    """E over the random subsets of the sampled input equals the input from all ratings."""
    rng = np.random.default_rng(1)
    cap = 8
    ratings, inputs = _skewed_inputs(rng, cap)
    counts = ratings.movie_counts()
    movies = np.flatnonzero(counts > 3 * cap)[:4]  # sampled on the redraw path
    movies = np.concatenate([movies, np.flatnonzero((counts > cap) & (counts <= 2 * cap))[:2]])
    assert len(movies) >= 4
    weight = torch.randn(2 * ratings.num_users, 5, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))

    def first_layer(bag):
        return bag.matrix.matmul(weight[bag.columns].float()).double().numpy()

    full = first_layer(inputs.movie_bag(movies))  # (movies, 5)
    repeats = 3000
    sampled = np.stack([first_layer(inputs.movie_bag(movies, rng)) for _ in range(repeats)])
    z = (sampled.mean(0) - full) / (sampled.std(0, ddof=1) / np.sqrt(repeats))
    # 30 z-scores, each about N(0, 1) when unbiased: |z| < 4.9 fails with rate ~3e-5
    assert np.abs(z).max() < 4.9, z
    assert (sampled.std(0) > 0).all()  # the samples did vary: the test can fail


@pytest.mark.parametrize("num_ratings", [20_000, 60_000])
def test_step_input_is_bounded_by_batch_entities_times_k(num_ratings):
    """A step's encoder input has at most (entities in batch) x K entries per channel,
    and the first layer's gradient touches at most that many rows, at any total size."""
    cap, batch_size = 6, 300
    num_movies, num_users = movielens_shape(num_ratings)
    config = small_config(**{"guide.encoder_hidden": [8], "model.latent_dim": 2})
    model, guide = build_modules(config, num_movies, num_users)
    ratings, _ = simulate_movielens(model, num_ratings, seed=0)
    inputs = EncoderInputs(ratings, ratings.rating, 0.0, 1.0, max_inputs=cap)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, batch_size,
                            np.random.default_rng(0))
    assert not batcher.every_entity  # beyond SMALL_DATA_FACTOR batches: sampled bags
    batch = next(iter(batcher.epoch()))
    # entities that would read far more than K
    assert max(ratings.movie_counts().max(), ratings.user_counts().max()) > 10 * cap
    for bag, entities in ((batch.movie_bag, batch.movies), (batch.user_bag, batch.users)):
        assert bag.nnz <= 2 * cap * len(entities)
        assert len(bag.columns) <= bag.nnz
    loss = make_elbo("trace")(model, guide)(batch)
    loss.backward()
    for encoder, bag in ((guide.movie_encoder, batch.movie_bag),
                         (guide.user_encoder, batch.user_bag)):
        grad = encoder.first.grad.coalesce()
        assert grad.is_sparse and grad.indices().shape[1] == len(bag.columns)


def test_row_sparse_adam_matches_adam_on_touched_rows_and_leaves_others():
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    dense, sparse = (torch.nn.Parameter(start.clone()) for _ in range(2))
    dense_opt = torch.optim.Adam([dense], lr=0.1)
    sparse_opt = RowSparseAdam([sparse], lr=0.1)
    for _ in range(4):  # every row touched: lazy Adam is Adam
        rows = torch.arange(6)
        for p, opt, flag in ((dense, dense_opt, False), (sparse, sparse_opt, True)):
            opt.zero_grad()
            torch.nn.functional.embedding(rows, p, sparse=flag).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(sparse, dense)
    before = sparse.detach().clone()
    sparse_opt.zero_grad()
    torch.nn.functional.embedding(torch.tensor([1, 4]), sparse, sparse=True).sum().backward()
    sparse_opt.step()
    changed = (sparse.detach() != before).any(1)
    assert changed.tolist() == [False, True, False, False, True, False]
    assert sparse_opt.state_dict()["state"][0]["exp_avg"].shape == (6, 3)


def test_generator_is_movielens_like_and_seeded():
    num_ratings = 200_000
    num_movies, num_users = movielens_shape(num_ratings)
    movie, user = sample_movielens_pattern(num_ratings, num_movies, num_users,
                                           np.random.default_rng(3))
    again = sample_movielens_pattern(num_ratings, num_movies, num_users,
                                     np.random.default_rng(3))
    other = sample_movielens_pattern(num_ratings, num_movies, num_users,
                                     np.random.default_rng(4))
    np.testing.assert_array_equal(movie, again[0])
    np.testing.assert_array_equal(user, again[1])
    assert not np.array_equal(movie, other[0])

    assert len(np.unique(movie * num_users + user)) == num_ratings  # distinct pairs
    per_user = np.bincount(user, minlength=num_users)
    assert per_user.min() >= MIN_PER_USER
    # user activity: log(n - min) falls linearly in log(rank + offset) with slope -a
    extra = np.sort(per_user)[::-1] - MIN_PER_USER
    rank = np.arange(1, num_users + 1) + ACTIVITY_OFFSET * num_users
    middle = slice(num_users // 50, num_users // 2)
    slope = np.polyfit(np.log(rank[middle]), np.log(extra[middle]), 1)[0]
    assert abs(slope + ACTIVITY_EXPONENT) < 0.1, slope
    # movie popularity: heavy tailed, a few blockbusters and a long tail
    per_movie = np.sort(np.bincount(movie, minlength=num_movies))[::-1]
    assert per_movie[0] > 20 * np.median(per_movie)
    assert per_movie[: num_movies // 10].sum() > 0.5 * num_ratings


def test_renumbered_bag_gives_the_first_layer_of_the_formula():
    """matrix @ W[columns] is n^-p sum_k (P_k + v_k V_k), read from all ratings."""
    rng = np.random.default_rng(2)
    ratings, inputs = _skewed_inputs(rng, max_inputs=0, num_ratings=500, num_users=30)
    weight = torch.randn(2 * ratings.num_users, 4, dtype=torch.float64)
    movies = np.array([3, 0, 7])
    bag = inputs.movie_bag(movies)
    got = bag.matrix.matmul(weight[bag.columns].float()).double().numpy()
    for row, m in enumerate(movies):
        users = ratings.user[ratings.movie == m]
        values = (ratings.rating[ratings.movie == m] - 3.5) / 1.0
        w = weight.numpy()
        expected = (w[users] + values[:, None] * w[users + ratings.num_users]).sum(0)
        np.testing.assert_allclose(got[row], expected * len(users) ** -0.5, rtol=1e-4,
                                   atol=1e-4)


def test_small_data_reads_every_entity_with_a_dense_gradient():
    """At most SMALL_DATA_FACTOR batches of ratings: one cached bag, all ratings read."""
    rng = np.random.default_rng(4)
    ratings, inputs = _skewed_inputs(rng, max_inputs=2, num_ratings=600, num_users=40)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, 100, rng)
    assert batcher.every_entity
    batch = next(iter(batcher.epoch()))
    assert batch.movie_bag is inputs.every_movie() and batch.movie_bag.dense_grad
    assert batch.movie_bag.nnz == 2 * len(ratings)  # every rating, both channels
    np.testing.assert_array_equal(batch.movie_rows.numpy(), batch.movies.numpy())


def test_input_sampling_leaves_the_permutations_alone():
    """Data-parallel ranks sample inputs for different shards; their epochs must agree."""
    ratings, inputs = _skewed_inputs(np.random.default_rng(3), max_inputs=4)
    a = RatingBatcher(ratings, ratings.rating, inputs, 50, np.random.default_rng(9))
    b = RatingBatcher(ratings, ratings.rating, inputs, 50, np.random.default_rng(9))
    assert not a.every_entity  # 3000 ratings > 16 batches of 50: inputs are sampled
    order = a.permutation()
    np.testing.assert_array_equal(order, b.permutation())
    for start in range(0, 1000, 50):  # only a draws input samples
        a.batch(order[start:start + 50])
    np.testing.assert_array_equal(a.permutation(), b.permutation())
    # and the samples themselves are seeded: a third batcher draws a's first bag again
    c = RatingBatcher(ratings, ratings.rating, inputs, 50, np.random.default_rng(9))
    d = RatingBatcher(ratings, ratings.rating, inputs, 50, np.random.default_rng(9))
    first, again = c.batch(order[:50]), d.batch(order[:50])
    torch.testing.assert_close(first.movie_bag.columns, again.movie_bag.columns)
