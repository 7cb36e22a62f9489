"""The minibatch ELBO is unbiased for the full-data ELBO; the naive plate scale is not."""

import numpy as np
import pyro
import pytest
import torch

from deepfactor.batching import EncoderInputs, RatingBatcher, make_batch, renumber
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.fitted import build_modules

from conftest import small_config


def _skewed_problem(rng, num_movies=30, num_users=20, num_ratings=200):
    """Ratings whose movie popularity is very uneven, which is what biases naive scaling."""
    popularity = np.arange(1, num_movies + 1, dtype=float) ** -1.2
    cells = set()
    while len(cells) < num_ratings:
        m = rng.choice(num_movies, p=popularity / popularity.sum())
        cells.add((int(m), int(rng.integers(num_users))))
    movie, user = np.array(sorted(cells)).T
    values = rng.integers(1, 6, num_ratings).astype(float)
    ratings = Ratings(movie, user, values, IdIndex(range(num_movies)), IdIndex(range(num_users)))
    config = small_config(**{"model.latent_dim": 2})
    model, guide = build_modules(config, num_movies, num_users)
    with torch.no_grad():
        model.decoder.output_bias.fill_(3.0)
        for encoder in (guide.movie_encoder, guide.user_encoder):
            # q moves away from the prior as the entity's count grows, so the KL of
            # popular and rare entities differ: the case that naive scaling gets wrong
            encoder.evidence.fill_(1.0)
            encoder.loc.weight.fill_(3.0 / encoder.loc.weight.shape[1])
            encoder.loc.bias.fill_(-1.5)
    return ratings, EncoderInputs(ratings, values, 3.0, 1.2), model, guide


def _estimates(loss, batches):
    with torch.no_grad():
        return np.array([loss(b).item() for b in batches])


def test_entity_weights_count_each_kl_once_in_expectation(rng):
    ratings, inputs, _, _ = _skewed_problem(rng)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, 20, rng)
    total = np.zeros(ratings.num_movies)
    epochs = 400
    for _ in range(epochs):
        for batch in batcher.epoch():
            plate_factor = ratings.num_movies / len(batch.movies)
            np.add.at(total, batch.movies.numpy(), batch.movie_scale.numpy() * plate_factor)
    rated = ratings.movie_counts() > 0
    # each epoch is len(batcher) batches, each an unbiased estimate: E[sum] = epochs * steps
    mean_weight = total[rated] / (epochs * len(batcher))
    np.testing.assert_allclose(mean_weight.mean(), 1.0, atol=0.02)
    assert np.abs(mean_weight - 1).max() < 0.25  # every movie, the rarest included


@pytest.mark.slow
@pytest.mark.parametrize("elbo", ["meanfield", "trace"])
def test_minibatch_elbo_is_unbiased_and_naive_scaling_is_not(elbo, rng):
    ratings, inputs, model, guide = _skewed_problem(rng)
    loss = {"meanfield": pyro.infer.TraceMeanField_ELBO,
            "trace": pyro.infer.Trace_ELBO}[elbo]()(model, guide)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, 20, rng)

    full = _estimates(loss, [batcher.full()] * 600)
    batches = [b for _ in range(150) for b in batcher.epoch()]  # 1500 minibatches
    ours = _estimates(loss, batches)
    naive = _estimates(loss, [_naive(b) for b in batches])

    def se(x):
        return x.std(ddof=1) / np.sqrt(len(x))

    # 4.5 combined standard errors: a false failure about once in 150,000 runs
    tolerance = 4.5 * np.hypot(se(full), se(ours))
    assert abs(ours.mean() - full.mean()) < tolerance
    assert abs(naive.mean() - full.mean()) > 4.5 * np.hypot(se(full), se(naive))


def _naive(batch):
    """The same batch with the plain plate scale M / |batch movies| (no count weights)."""
    ones_m, ones_u = torch.ones_like(batch.movie_scale), torch.ones_like(batch.user_scale)
    return type(batch)(**{**batch.__dict__, "movie_scale": ones_m, "user_scale": ones_u})


def test_batches_cover_every_rating_once_per_epoch(rng):
    ratings, inputs, _, _ = _skewed_problem(rng)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, 33, rng)
    seen = np.concatenate([b.rating_index.numpy() for b in batcher.epoch()])
    assert sorted(seen) == list(range(len(ratings)))
    assert len(batcher) == 7


@pytest.mark.parametrize("num, size", [(1, 5), (50, 0), (50, 1), (50, 400), (10_000, 300)])
def test_renumber_is_unique_with_inverse(rng, num, size):
    ids = rng.integers(num, size=size) if num < 100 else rng.choice(num, 20)[
        rng.integers(20, size=size)]
    scratch = np.full(num, 7, dtype=np.int64)  # whatever a previous call left there
    expected, inverse = np.unique(ids, return_inverse=True)
    for _ in range(2):  # the same scratch serves the next call
        distinct, local = renumber(ids, scratch)
        np.testing.assert_array_equal(distinct, expected)
        np.testing.assert_array_equal(local, inverse)
        assert local.dtype == np.int64
        # unsorted: the same set, and each entry still points at its own id
        distinct, local = renumber(ids, scratch, sort=False)
        np.testing.assert_array_equal(np.sort(distinct), expected)
        np.testing.assert_array_equal(distinct[local], ids)


@pytest.mark.parametrize("batch_size", [33, 10])  # 10: sampled bags, not the small-data path
def test_batcher_batches_match_a_fresh_make_batch(rng, batch_size):
    ratings, inputs, _, _ = _skewed_problem(rng)
    batcher = RatingBatcher(ratings, ratings.rating, inputs, batch_size, rng)
    assert batcher.every_entity == (batch_size == 33)
    for start in (40, 5, 120):  # the batcher's scratch arrays are reused
        positions = np.arange(start, start + batch_size)
        kept = batcher.batch(positions)
        fresh = make_batch(ratings, ratings.rating, positions, inputs)  # np.unique's way
        for name in ("movies", "users", "movie_local", "user_local", "movie_scale",
                     "user_scale"):
            torch.testing.assert_close(getattr(kept, name), getattr(fresh, name))
        np.testing.assert_array_equal(batcher.distinct(positions)[0], kept.movies.numpy())
        np.testing.assert_array_equal(batcher.distinct(positions)[1], kept.users.numpy())


def test_batch_of_one_rating(rng):
    ratings, inputs, model, guide = _skewed_problem(rng)
    batch = make_batch(ratings, ratings.rating, np.array([5]), inputs)
    assert batch.movies.shape == batch.users.shape == (1,)
    # that one movie stands in for all of its ratings: w = 1 * N / (1 * n_movie)
    n_movie = ratings.movie_counts()[ratings.movie[5]]
    weight = batch.movie_scale.item() * ratings.num_movies
    assert weight == pytest.approx(len(ratings) / n_movie, rel=1e-5)
