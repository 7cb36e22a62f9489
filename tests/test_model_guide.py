"""Shapes, site agreement between model and guide, prior predictive, cold start."""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from deepfactor.batching import EncoderInputs, make_batch
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.fitted import build_modules
from deepfactor.train import make_elbo

from conftest import small_config


def _problem(num_movies, num_users, num_ratings, rng, likelihood="normal"):
    cells = rng.choice(num_movies * num_users, size=num_ratings, replace=False)
    values = rng.integers(1, 6, num_ratings).astype(float)
    ratings = Ratings(cells // num_users, cells % num_users, values, IdIndex(range(num_movies)),
                      IdIndex(range(num_users)))
    config = small_config(**{"model.likelihood": likelihood, "model.bias_latent": True,
                             "model.decoder_inputs": "product+latents"})
    model, guide = build_modules(config, num_movies, num_users)
    targets = model.likelihood.prepare(values)
    inputs = EncoderInputs(ratings, targets, float(targets.mean()), 1.0)
    return ratings, targets, inputs, model, guide


@pytest.mark.parametrize("num_movies, num_users, num_ratings", [(1, 1, 1), (1, 7, 5), (6, 1, 4),
                                                                (13, 9, 40)])
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_model_and_guide_agree_on_latent_sites(num_movies, num_users, num_ratings, batch_size,
                                               rng):
    ratings, targets, inputs, model, guide = _problem(num_movies, num_users, num_ratings, rng)
    positions = rng.permutation(num_ratings)[:batch_size]
    batch = make_batch(ratings, targets, positions, inputs)
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    for site in ("z_movie", "z_user"):
        g, m = guide_trace.nodes[site], model_trace.nodes[site]
        assert g["value"].shape == m["value"].shape == (len(getattr(batch, site[2:] + "s")),
                                                        model.total_dim)
        torch.testing.assert_close(g["scale"], m["scale"])  # same weights in both
    assert model_trace.nodes["rating"]["value"].shape == (len(positions),)
    loss = pyro.infer.TraceMeanField_ELBO()(model, guide)(batch)
    assert loss.shape == () and torch.isfinite(loss)


def test_full_batch_weights_are_one(rng):
    ratings, targets, inputs, model, guide = _problem(13, 9, 40, rng)
    batch = make_batch(ratings, targets, np.arange(40), inputs)
    trace = poutine.trace(guide).get_trace(batch)
    trace.compute_log_prob()
    # the site scale is the plate's M/|movies| times our factor: exactly 1 for all data
    torch.testing.assert_close(trace.nodes["z_movie"]["scale"] * 13 / len(batch.movies),
                               torch.ones(len(batch.movies)))


@pytest.mark.parametrize("likelihood", ["normal", "poisson", "bernoulli", "ordinal"])
def test_prior_predictive_draws_have_the_family_support(likelihood, rng):
    ratings, targets, inputs, model, guide = _problem(13, 9, 40, rng, likelihood)
    batch = make_batch(ratings, None, np.arange(40), inputs)
    with torch.no_grad():
        draws = torch.stack([model(batch) for _ in range(20)])
    assert draws.shape == (20, 40)
    if likelihood == "poisson":
        assert torch.all(draws >= 0) and torch.all(draws == draws.round())
    if likelihood == "bernoulli":
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
    if likelihood == "ordinal":
        assert set(draws.unique().tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert draws.std(0).min() > 0  # random draws, not a copy of anything observed


def test_model_runs_under_a_vectorizing_sample_plate(rng):
    ratings, targets, inputs, model, guide = _problem(13, 9, 40, rng)
    batch = make_batch(ratings, None, np.arange(40), inputs)
    predictive = pyro.infer.Predictive(model, guide=guide, num_samples=7, parallel=True,
                                       return_sites=["rating", "z_movie"])
    with torch.no_grad():
        out = predictive(batch)
    assert out["rating"].shape == (7, 40)
    assert out["z_movie"].shape == (7, len(batch.movies), model.total_dim)


def test_cold_entities_get_the_prior(rng):
    ratings, targets, inputs, model, guide = _problem(5, 4, 8, rng)
    # a movie index map with one extra movie that has no rating
    bigger = Ratings(ratings.movie, ratings.user, targets, IdIndex(range(6)), ratings.user_ids)
    inputs = EncoderInputs(bigger, targets, 3.0, 1.0)
    loc, scale = guide.movie_encoder(inputs.movie_bag(np.array([5, 0])))
    torch.testing.assert_close(loc[0], torch.zeros(model.total_dim))
    torch.testing.assert_close(scale[0], torch.ones(model.total_dim))
    assert not torch.allclose(scale[1], torch.ones(model.total_dim))


def test_a_step_gives_the_same_gradients_every_time_on_two_threads():
    """Gathering latents by fancy indexing summed its gradient with atomic adds on
    several threads, in whatever order they ran: two runs of one seed differed around
    the ninth digit. ``index_select`` sums in a fixed order."""
    rng = np.random.default_rng(1)
    num_movies, num_users, num_ratings = 400, 300, 40_000
    cells = rng.choice(num_movies * num_users, size=num_ratings, replace=False)
    values = rng.integers(1, 6, num_ratings).astype(float)
    ratings = Ratings(cells // num_users, cells % num_users, values,
                      IdIndex(range(num_movies)), IdIndex(range(num_users)))
    config = small_config(**{"model.latent_dim": 8, "model.decoder_hidden": [16]})
    model, guide = build_modules(config, num_movies, num_users)
    inputs = EncoderInputs(ratings, values, float(values.mean()), 1.0)
    batch = make_batch(ratings, values, np.arange(num_ratings), inputs)
    loss_fn = make_elbo("trace")(model, guide)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gradients = []
        for _ in range(5):
            pyro.set_rng_seed(3)
            loss_fn.zero_grad()
            loss_fn(batch).backward()
            gradients.append([p.grad.to_dense().clone() for p in loss_fn.parameters()])
    finally:
        torch.set_num_threads(threads)
    for repeat in gradients[1:]:
        for first, again in zip(gradients[0], repeat):
            assert torch.equal(first, again)
