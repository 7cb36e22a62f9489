import numpy as np
import pytest
import torch
from scipy import stats

from deepfactor.likelihoods import make_likelihood, quantile_key


def test_quantile_keys():
    assert [quantile_key(q) for q in (0.05, 0.95, 0.5, 0.975)] == ["q05", "q95", "q50", "q975"]


def test_normal_mixture_summary_matches_closed_form(rng):
    lik = make_likelihood("normal")
    with torch.no_grad():
        lik.sigma = torch.tensor(0.7)
    eta = torch.as_tensor(rng.normal(3.0, 0.5, size=(50, 4)), dtype=torch.float32)
    out = lik.predictive_summary(eta, quantiles=(0.05, 0.5, 0.95))
    e = eta.double().numpy()
    np.testing.assert_allclose(out["mean"], e.mean(0), rtol=1e-5)
    np.testing.assert_allclose(out["sd"], np.sqrt(e.var(0) + 0.49), rtol=1e-5)
    for q in (0.05, 0.5, 0.95):  # the mixture CDF at the quantile equals q
        cdf = stats.norm.cdf((out[quantile_key(q)].numpy()[None] - e) / 0.7).mean(0)
        np.testing.assert_allclose(cdf, q, atol=1e-5)


def test_poisson_quantile_is_smallest_integer_reaching_the_level(rng):
    lik = make_likelihood("poisson")
    eta = torch.as_tensor(rng.normal(1.0, 0.8, size=(30, 5)), dtype=torch.float32)
    rate = lik.rate(eta).double().numpy()
    out = lik.predictive_summary(eta)
    for key, q in (("q05", 0.05), ("q95", 0.95)):
        k = out[key].numpy()
        assert np.all(stats.poisson.cdf(k[None], rate).mean(0) >= q - 1e-6)
        below = np.maximum(k - 1, -1)
        assert np.all((k == 0) | (stats.poisson.cdf(below[None], rate).mean(0) < q))
    np.testing.assert_allclose(out["sd"] ** 2, rate.mean(0) + rate.var(0), rtol=1e-4)


def test_bernoulli_threshold_and_summary():
    lik = make_likelihood("bernoulli", threshold=3.0)
    np.testing.assert_array_equal(lik.prepare(np.array([1, 3, 3.5, 5])), [0, 0, 1, 1])
    p = torch.full((10, 2), 0.0)
    p[:, 1] = 4.0  # sigmoid(4) = 0.982 > 0.95
    out = lik.predictive_summary(p)
    np.testing.assert_allclose(out["mean"], [0.5, torch.sigmoid(torch.tensor(4.0))], rtol=1e-6)
    assert list(out["q05"]) == [0.0, 1.0] and list(out["q95"]) == [1.0, 1.0]


@pytest.mark.parametrize("name, values, match", [
    ("poisson", [1, 2.5], r"f\.tsv:8: rating 2\.5 is not a non-negative integer count"),
    ("poisson", [-1, 2], r"f\.tsv:7: rating -1 is not a non-negative"),
    ("normal", [1, float("nan")], r"f\.tsv:8: rating nan is not finite"),
])
def test_prepare_refuses_values_outside_the_family(name, values, match):
    with pytest.raises(ValueError, match=match):
        make_likelihood(name).prepare(np.array(values, dtype=float), source="f.tsv",
                                      lines=np.array([7, 8]))


def test_bernoulli_without_threshold_needs_zero_one():
    lik = make_likelihood("bernoulli", threshold=None)
    assert list(lik.prepare(np.array([0, 1, 1]))) == [0, 1, 1]
    with pytest.raises(ValueError, match="f, row 1: rating 4 is not 0 or 1"):
        lik.prepare(np.array([0, 4]), source="f")


def test_lpd_is_log_mean_density(rng):
    lik = make_likelihood("normal")
    eta = torch.as_tensor(rng.normal(size=(20, 3)), dtype=torch.float64)
    target = torch.tensor([0.1, -0.3, 2.0], dtype=torch.float64)
    sigma = float(lik.sigma.detach())
    expected = np.log(stats.norm.pdf(target.numpy()[None], eta.numpy(), sigma).mean(0))
    with torch.no_grad():
        lpd = lik.log_predictive_density(eta, target)
    np.testing.assert_allclose(lpd, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["normal", "poisson", "bernoulli"])
def test_link_inverse_gives_the_mean(name):
    lik = make_likelihood(name)
    for mean in (0.3, 0.7, 3.5):
        if name == "bernoulli" and mean > 1:
            continue
        eta = torch.tensor(lik.link_inverse_of_mean(mean))
        assert float(lik.mean(eta)) == pytest.approx(mean, rel=1e-4)
