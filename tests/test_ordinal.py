"""The ordinal (cumulative-logit) likelihood: its masses, draws, summaries and checks."""

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from deepfactor.likelihoods import OrdinalLikelihood, make_likelihood, ordinal_log_probs

LEVELS = (1.0, 2.0, 3.0, 4.0, 5.0)


def _likelihood(cutpoints=(-2.0, -0.5, 0.7, 2.1), levels=LEVELS):
    lik = OrdinalLikelihood(levels)
    lik.cutpoints = torch.tensor(cutpoints)
    return lik


def test_masses_match_pyros_ordered_logistic_and_sum_to_one(rng):
    lik = _likelihood()
    eta = torch.as_tensor(rng.normal(0, 2, size=(6, 9)), dtype=torch.float32)
    ours = ordinal_log_probs(eta, lik.cutpoints)
    pyros = dist.OrderedLogistic(eta, lik.cutpoints).probs
    torch.testing.assert_close(ours.exp(), pyros, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.exp().sum(-1), torch.ones(6, 9))


def test_tail_masses_stay_finite_and_have_gradients():
    # Pyro's OrderedLogistic differences sigmoids and clamps the far tail's mass;
    # the log-space form keeps every level's log mass finite and differentiable.
    lik = _likelihood()
    eta = torch.tensor([-40.0, 40.0], requires_grad=True)
    log_p = ordinal_log_probs(eta, lik.cutpoints)
    assert torch.isfinite(log_p).all()
    assert log_p[0, -1] < -35 and log_p[1, 0] < -35
    log_p[0, -1].backward()
    assert torch.isfinite(eta.grad).all() and eta.grad[0] > 0


def test_larger_eta_moves_mass_up():
    lik = _likelihood()
    means = lik.distribution(torch.linspace(-3, 3, 7)).mean
    assert torch.all(means[1:] > means[:-1])


def test_draws_follow_the_masses():
    lik = _likelihood(levels=(0.5, 1.0, 1.5, 2.0, 2.5))
    d = lik.distribution(torch.tensor([0.3]))
    torch.manual_seed(0)
    n = 40_000
    draws = d.sample((n,)).squeeze(-1)
    p = d.log_probs.exp().squeeze(0).double()
    shares = torch.stack([(draws == v).double().mean() for v in d.levels])
    # each share is Binomial(n, p_k) / n: 5 binomial sds
    assert torch.all((shares - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n))
    assert torch.allclose(d.log_prob(d.levels), d.log_probs.squeeze(0))


def test_summary_is_the_exact_mixture(rng):
    lik = _likelihood()
    eta = torch.as_tensor(rng.normal(0.5, 1.0, size=(40, 6)), dtype=torch.float32)
    out = lik.predictive_summary(eta, quantiles=(0.05, 0.5, 0.95))
    probs = ordinal_log_probs(eta, lik.cutpoints).exp().mean(0).double()  # (N, K)
    levels = torch.tensor(LEVELS, dtype=torch.float64)
    mean = probs @ levels
    torch.testing.assert_close(out["mean"].double(), mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["sd"].double() ** 2, probs @ levels**2 - mean**2,
                               atol=1e-5, rtol=1e-4)
    cdf = probs.cumsum(-1)
    for key, q in (("q05", 0.05), ("q50", 0.5), ("q95", 0.95)):
        k = torch.searchsorted(levels, out[key].double())  # level position of the quantile
        assert torch.all(cdf.gather(-1, k[:, None]).squeeze(-1) >= q - 1e-6)
        below = torch.where(k > 0, cdf.gather(-1, (k - 1).clamp(min=0)[:, None]).squeeze(-1),
                            torch.zeros_like(mean))
        assert torch.all(below < q)


def test_cdf_steps_are_the_masses(rng):
    lik = _likelihood()
    eta = torch.as_tensor(rng.normal(size=(3, 8)), dtype=torch.float32)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 1.0, 3.0])
    below, at = lik.cdf_below_at(eta, y)
    torch.testing.assert_close(at - below, lik.distribution(eta).log_prob(y).exp(),
                               atol=1e-6, rtol=1e-5)
    assert torch.all(below[:, y == 1.0] == 0) and torch.allclose(at[:, y == 5.0],
                                                                 torch.ones(3, 2))


def test_values_off_the_levels_name_the_line():
    lik = make_likelihood("ordinal", levels=LEVELS)
    with pytest.raises(ValueError, match=r"u\.data:7: rating 3\.5 is not one of the ordinal"):
        lik.prepare(np.array([1.0, 3.5, 2.0]), source="u.data", lines=np.array([3, 7, 9]))
    np.testing.assert_array_equal(lik.prepare(np.array([1.0, 5.0])), [1.0, 5.0])


def test_levels_float32_cannot_store_are_still_the_levels():
    levels = (0.1, 0.2, 0.3)  # none is exact in float32
    lik = OrdinalLikelihood(levels)
    np.testing.assert_array_equal(lik.prepare(np.array([0.3, 0.1, 0.2])), [0.3, 0.1, 0.2])
    lik.initialize(np.repeat(levels, [2, 5, 3]))
    p = ordinal_log_probs(torch.zeros(()), lik.cutpoints).exp().detach().numpy()
    np.testing.assert_allclose(p, np.array([3, 6, 4]) / 13, rtol=1e-5)  # add-one shares


@pytest.mark.parametrize("levels", [(1.0,), (1.0, 3.0, 2.0), (2.0, 2.0)])
def test_levels_must_increase(levels):
    with pytest.raises(ValueError, match="strictly increasing"):
        OrdinalLikelihood(levels)


def test_initialized_cut_points_reproduce_the_training_shares():
    targets = np.repeat(LEVELS, [600, 1100, 2700, 3400, 2200])
    lik = OrdinalLikelihood(LEVELS)
    lik.initialize(targets)
    p = ordinal_log_probs(torch.zeros(()), lik.cutpoints).exp().detach().numpy()
    # add-one smoothing moves each share by at most 5 / 10000
    np.testing.assert_allclose(p, [0.06, 0.11, 0.27, 0.34, 0.22], atol=5e-4)


def test_reference_plugin_mass_sums_to_one_over_the_levels():
    from deepfactor.baselines import plugin_lpd

    levels = np.array(LEVELS)
    for prediction in (0.2, 3.3, 4.9, 7.0):
        lpd = plugin_lpd("ordinal", levels, np.full(5, prediction), 0.9, levels=levels)
        assert np.exp(lpd).sum() == pytest.approx(1.0, abs=1e-9)
    # the level nearest the prediction gets the most mass
    lpd = plugin_lpd("ordinal", levels, np.full(5, 3.3), 0.9, levels=levels)
    assert int(np.argmax(lpd)) == 2


def test_an_ordinal_fit_saves_loads_folds_in_and_recommends(tmp_path):
    from conftest import small_config

    from deepfactor import load
    from deepfactor.fitting import fit

    fitted = fit(small_config(**{"model.likelihood": "ordinal", "train.epochs": 2}),
                 progress=False)
    assert fitted.metrics["likelihood"] == "ordinal"
    cut = fitted.model.likelihood.cutpoints.detach().clone()
    fitted.save(tmp_path / "run")
    again = load(tmp_path / "run")
    torch.testing.assert_close(again.model.likelihood.cutpoints.detach(), cut)
    users, movies = fitted.user_ids.raw[:3], fitted.movie_ids.raw[:3]
    a, b = fitted.predict(users, movies), again.predict(users, movies)
    np.testing.assert_array_equal(a["mean"], b["mean"])
    assert set(np.unique(a["q05"])) <= set(LEVELS) and a["mean"].between(1, 5).all()
    top = again.recommend(users[0], k=4)
    assert len(top) == 4 and top["mean"].is_monotonic_decreasing
    new_user = again.fold_in({movies[0]: 5, movies[1]: 1})
    assert new_user.predict(movies[:2])["mean"].between(1, 5).all()
