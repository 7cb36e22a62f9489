"""A scale per pair (``model.pair_scale``): the decoder's second output scales the spread."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from conftest import small_config
from deepfactor.config import ConfigError, load_config
from deepfactor.diagnostics import percent_key
from deepfactor.likelihoods import make_likelihood, ordinal_log_probs
from deepfactor.model import Decoder

LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)
CUTS = torch.tensor([-2.0, -0.5, 0.7, 2.1])


def _pairs(rng, shape=(6, 9)):
    """``eta = (mu, rho)`` with rho spread enough for scales from about 0.05 to 3."""
    mu = rng.normal(0, 2, size=shape)
    rho = rng.normal(0, 2, size=shape)
    return torch.as_tensor(np.stack([mu, rho], axis=-1), dtype=torch.float32)


def _ordinal(pair_scale):
    lik = make_likelihood("ordinal", levels=LEVELS, pair_scale=pair_scale)
    lik.cutpoints = CUTS.clone()
    return lik


@pytest.mark.parametrize("family", ["normal", "ordinal"])
def test_rho_zero_is_the_shared_scale(family, rng):
    shared = _ordinal(False) if family == "ordinal" else make_likelihood("normal")
    scaled = _ordinal(True) if family == "ordinal" else make_likelihood("normal",
                                                                        pair_scale=True)
    if family == "normal":
        shared.sigma = scaled.sigma = torch.tensor(0.8)
    mu = torch.as_tensor(rng.normal(0, 2, size=(5, 7)), dtype=torch.float32)
    eta = torch.stack([mu, torch.zeros_like(mu)], dim=-1)
    y = torch.as_tensor(rng.integers(1, 6, size=(5, 7)), dtype=torch.float32)
    torch.testing.assert_close(scaled.distribution(eta).log_prob(y),
                               shared.distribution(mu).log_prob(y))
    assert scaled.distribution(eta).batch_shape == mu.shape


def test_normal_sd_is_sigma_times_the_pair_factor(rng):
    lik = make_likelihood("normal", pair_scale=True)
    lik.sigma = torch.tensor(0.7)
    eta = _pairs(rng)
    y = torch.as_tensor(rng.normal(0, 2, size=(6, 9)), dtype=torch.float32)
    sd = 0.7 * torch.nn.functional.softplus(eta[..., 1]) / math.log(2.0)
    torch.testing.assert_close(lik.distribution(eta).log_prob(y),
                               Normal(eta[..., 0], sd).log_prob(y))


def test_ordinal_pair_scale_divides_the_log_odds(rng):
    lik = _ordinal(True)
    eta = _pairs(rng)
    s = torch.nn.functional.softplus(eta[..., 1]) / math.log(2.0)
    probs = lik.distribution(eta).log_probs.exp()  # (6, 9, 5)
    # P(r <= k) = sigmoid((c_k - mu) / s), differenced by hand
    below = torch.sigmoid((CUTS - eta[..., :1]) / s.unsqueeze(-1))
    expected = torch.diff(below, dim=-1, prepend=torch.zeros(6, 9, 1),
                          append=torch.ones(6, 9, 1))
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 9))
    # the same as the shared-scale formula at mu / s with per-pair cut points c / s
    unscaled = ordinal_log_probs(eta[..., 0] / s, CUTS / s.unsqueeze(-1))
    torch.testing.assert_close(unscaled, lik.distribution(eta).log_probs, atol=1e-5,
                               rtol=1e-5)


def test_a_smaller_scale_concentrates_an_ordinal_pair():
    lik = _ordinal(True)
    mu = torch.tensor([0.0, 0.0])
    eta = torch.stack([mu, torch.tensor([-3.0, 3.0])], dim=-1)  # s about 0.07 and 4.4
    sd = lik.distribution(eta).variance.sqrt()
    assert sd[0] < 0.5 * sd[1]


def test_normal_mixture_summary_with_a_scale_per_draw(rng):
    lik = make_likelihood("normal", pair_scale=True)
    lik.sigma = torch.tensor(0.9)
    eta = _pairs(rng, shape=(40, 6))  # S = 40 draws of 6 pairs
    out = lik.predictive_summary(eta, quantiles=(0.05, 0.5, 0.95))
    loc, sd = eta[..., 0].double(), lik.noise_scale(eta).detach().double()
    # the quantiles solve the mixture CDF, the sd is the law of total variance
    for q in (0.05, 0.5, 0.95):
        key = f"q{int(round(q * 100)):02d}"
        cdf = torch.special.ndtr((out[key].double() - loc) / sd).mean(0)
        np.testing.assert_allclose(cdf.numpy(), q, atol=1e-5)
    variance = loc.var(0, unbiased=False) + (sd**2).mean(0)
    np.testing.assert_allclose(out["sd"].double().numpy(), variance.sqrt().numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["mean"].numpy(), loc.mean(0).numpy(), rtol=1e-5)


def test_decoder_second_output_starts_at_zero_and_bias_view_sets_mu_only():
    torch.manual_seed(0)
    decoder = Decoder(4, (8,), inputs="product+latents", outputs=2)
    z = torch.randn(5, 4), torch.randn(5, 4)
    eta = decoder(*z)
    assert eta.shape == (5, 2)
    assert torch.equal(eta[:, 1], torch.zeros(5))  # rho = 0: the shared scale
    with torch.no_grad():
        decoder.output_bias.fill_(3.0)
    assert decoder.net[-1].bias.tolist() == [3.0, 0.0]
    assert Decoder(4, (8,)).forward(*z).shape == (5,)
    with pytest.raises(ValueError, match="1 or 2"):
        Decoder(4, (8,), outputs=3)


def test_decoder_bias_latent_moves_mu_not_rho():
    torch.manual_seed(0)
    decoder = Decoder(3, (8,), bias_latent=True, outputs=2)
    zm, zu = torch.randn(4, 4), torch.randn(4, 4)
    shifted_m = zm.clone()
    shifted_m[:, 3] += 1.0
    a, b = decoder(zm, zu), decoder(shifted_m, zu)
    torch.testing.assert_close(b[:, 0] - a[:, 0], torch.ones(4))
    torch.testing.assert_close(b[:, 1], a[:, 1])


@pytest.mark.parametrize("family", ["poisson", "bernoulli"])
def test_families_without_a_spread_refuse_it(family, tmp_path):
    with pytest.raises(ValueError, match="no spread parameter"):
        make_likelihood(family, pair_scale=True)
    path = tmp_path / "bad.toml"
    path.write_text(f'[model]\nlikelihood = "{family}"\npair_scale = true\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*pair_scale.*normal or ordinal"):
        load_config(path)


@pytest.mark.parametrize("family", ["normal", "ordinal"])
def test_a_pair_scale_fit_saves_loads_checks_recommends_and_folds_in(family, tmp_path):
    from deepfactor import load
    from deepfactor.check_report import PosteriorCollapseWarning, posterior_checks
    from deepfactor.fitting import fit, load_data

    config = small_config(**{"model.likelihood": family, "model.pair_scale": True,
                             "train.epochs": 3})
    fitted = fit(config, progress=False)
    last = fitted.model.decoder.net[-1]
    assert last.out_features == 2 and last.weight[1].abs().sum() > 0  # rho was trained
    assert np.isfinite(fitted.metrics["test"]["lpd"])
    fitted.save(tmp_path / "run")
    again = load(tmp_path / "run")
    users, movies = fitted.user_ids.raw[:4], fitted.movie_ids.raw[:4]
    a, b = fitted.predict(users, movies), again.predict(users, movies)
    np.testing.assert_array_equal(a["mean"], b["mean"])
    assert (a["q05"] <= a["mean"]).all() and (a["mean"] <= a["q95"]).all()
    with warnings.catch_warnings():  # 3 epochs may leave dimensions collapsed
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        report = posterior_checks(again, load_data(config).test, num_samples=10,
                                  train_sample=200, seed=0)
    assert 0.0 <= report.summary["coverage"][percent_key(0.9)] <= 1.0
    top = again.recommend(users[0], k=3)
    assert len(top) == 3 and top["mean"].is_monotonic_decreasing
    new_user = again.fold_in({movies[0]: 5, movies[1]: 1})
    assert np.isfinite(new_user.predict(movies[:2])["mean"]).all()


def test_metrics_summary_and_report_say_a_scale_per_pair(tmp_path):
    from deepfactor.check_report import PosteriorCollapseWarning, _markdown, posterior_checks
    from deepfactor.cli import _summary
    from deepfactor.fitting import fit, load_data

    config = small_config(**{"model.likelihood": "ordinal", "model.pair_scale": True})
    fitted = fit(config, progress=False)
    assert fitted.metrics["pair_scale"] is True
    assert "ordinal likelihood with a scale per pair" in _summary(fitted.metrics, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        report = posterior_checks(fitted, load_data(config).test, num_samples=4,
                                  train_sample=100, seed=0)
    assert report.summary["pair_scale"] is True
    assert "ordinal likelihood with a scale per pair" in _markdown(report).splitlines()[0]
    shared = fit(small_config(**{"model.likelihood": "ordinal"}), progress=False)
    assert shared.metrics["pair_scale"] is False
    assert "scale per pair" not in _summary(shared.metrics, "test")
