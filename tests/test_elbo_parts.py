"""The ELBO's parts: the closed-form KL, the Monte Carlo log-likelihood, the record hook."""

import numpy as np
import pyro
import torch
from torch.distributions import Normal, kl_divergence

from deepfactor.batching import EncoderInputs, RatingBatcher
from deepfactor.elbo_parts import elbo_parts, elbo_recorder
from deepfactor.fitted import build_modules
from deepfactor.fitting import fit, load_data
from deepfactor.predict import encode_posterior

from conftest import small_config


def _problem():
    config = small_config()
    train = load_data(config).train
    model, guide = build_modules(config, train.num_movies, train.num_users)
    inputs = EncoderInputs(train, train.rating, float(train.rating.mean()),
                           float(train.rating.std()))
    with torch.no_grad():
        model.decoder.output_bias.fill_(float(train.rating.mean()))
    return train, inputs, model, guide


def test_kl_parts_are_the_closed_form_sums_over_rated_entities():
    train, inputs, model, guide = _problem()
    parts = elbo_parts(model, guide, inputs, train, train.rating, num_samples=2)
    q = encode_posterior(guide, inputs, train.num_movies, train.num_users)
    for loc, scale, counts, key in ((q.z_movie_loc, q.z_movie_scale, train.movie_counts(),
                                     "kl_movie"),
                                    (q.z_user_loc, q.z_user_scale, train.user_counts(),
                                     "kl_user")):
        rated = torch.from_numpy(counts > 0)
        kl = kl_divergence(Normal(loc[rated], scale[rated]), Normal(0.0, 1.0)).sum()
        np.testing.assert_allclose(parts[key], float(kl), rtol=1e-4)
    assert parts["elbo"] == parts["expected_loglik"] - parts["kl_movie"] - parts["kl_user"]


def test_parts_add_up_to_the_full_data_elbo_pyro_estimates():
    train, inputs, model, guide = _problem()
    loss = pyro.infer.TraceMeanField_ELBO()(model, guide)
    full = RatingBatcher(train, train.rating, inputs, len(train),
                         np.random.default_rng(0)).full()
    with torch.no_grad():
        estimates = -np.array([loss(full).item() for _ in range(400)])
    parts = elbo_parts(model, guide, inputs, train, train.rating, num_samples=400)
    # both are means of 400 one-draw estimates of the same number (analytic KL in both);
    # 4.5 combined standard errors
    se = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(parts["elbo"] - estimates.mean()) < 4.5 * np.sqrt(2) * se


def test_fit_records_the_parts_of_every_epoch():
    config = small_config(**{"train.epochs": 3})
    fitted = fit(config, progress=False, record=elbo_recorder(num_samples=2))
    assert len(fitted.history) == 3
    for row in fitted.history:
        assert {"expected_loglik", "kl_movie", "kl_user", "elbo", "active"} <= set(row)
        np.testing.assert_allclose(row["elbo"],
                                   row["expected_loglik"] - row["kl_movie"] - row["kl_user"])
        assert row["kl_movie"] >= 0 and row["kl_user"] >= 0
    # the hook changes no training step: the same seed without it ends identically
    plain = fit(config, progress=False)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in fitted.history]
