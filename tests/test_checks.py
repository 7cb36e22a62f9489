"""Predictive checks: the ArviZ object, calibration against the true model, p-values, files.

The statistical tests use data simulated by the model's own rating site
(:func:`deepfactor.simulate.simulate`) and the **true** latents and decoder as the
"posterior" (a point mass: loc = truth, scale = 0). The predictive is then exactly the
distribution that generated the data, so every calibration statistic has a known law
and the tolerance follows from it, with no fitting error mixed in. A fit would add an
approximation error of unknown size, which is what the checks are for on real data.
"""

import json
import math
import subprocess
import sys
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from scipy import stats

from deepfactor import check_report, checks
from deepfactor import diagnostics as dg
from deepfactor.data.ratings import Ratings
from deepfactor.fitted import build_modules
from deepfactor.fitting import fit, load_data
from deepfactor.predict import Posterior
from deepfactor.simulate import simulate

from conftest import REPO, small_config

collapse_ok = pytest.mark.filterwarnings(
    "ignore::deepfactor.check_report.PosteriorCollapseWarning")
BIAS = {"normal": 3.5, "poisson": 1.0, "bernoulli": 0.0, "ordinal": 0.0}


def _truth(likelihood, seed, movies=120, users=90, ratings=3000, **dotted):
    """A model holding the true decoder, its simulated ratings, and q = the truth.

    With ``model.pair_scale`` in ``dotted`` the decoder's scale output gets random
    weights (sd 1), so that the pairs' scales differ by orders of magnitude.
    """
    config = small_config(**{"model.likelihood": likelihood,
                             "data.synthetic_movies": movies, "data.synthetic_users": users,
                             **dotted})
    torch.manual_seed(seed)
    model, _ = build_modules(config, movies, users)
    model.eval()
    if model.likelihood.pair_scale:
        with torch.no_grad():
            model.decoder.net[-1].weight[1].normal_(0.0, 1.0)
    data, truth = simulate(model, ratings, seed, output_bias=BIAS[likelihood])
    # simulate() stores Bernoulli draws as ratings around the threshold: back to targets
    data = Ratings(data.movie, data.user, model.likelihood.prepare(data.rating),
                   data.movie_ids, data.user_ids, data.source, data.line)
    point = Posterior(truth.z_movie, torch.zeros_like(truth.z_movie),
                      truth.z_user, torch.zeros_like(truth.z_user))
    return model, point, data


@pytest.fixture(scope="module")
def tiny_fit():
    """A 3-epoch fit of a small synthetic problem (about a second) and its test split."""
    config = small_config()
    return fit(config, progress=False), load_data(config).test


# -- the ArviZ object -------------------------------------------------------------------


def test_inference_data_groups_dims_and_raw_id_coords(tiny_fit, tmp_path):
    fitted, test = tiny_fit
    train = fitted.encoder_ratings
    draws = checks.draw_predictive(fitted.model, fitted.posterior,
                                   {"heldout": (test.movie, test.user, test.rating),
                                    "train": (train.movie, train.user, train.rating)},
                                   num_samples=7, seed=0)
    idata = checks.to_inference_data(draws, fitted.movie_ids, fitted.user_ids, sigma=0.5)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data",
                                   "log_likelihood"}
    n, m = len(test), len(train)
    for group in ("posterior_predictive", "log_likelihood"):
        ds = getattr(idata, group)
        assert ds["rating"].dims == ("chain", "draw", "heldout")
        assert ds["rating"].shape == (1, 7, n)
        assert ds["rating_train"].shape == (1, 7, m)
    assert idata.observed_data["rating"].dims == ("heldout",)
    np.testing.assert_array_equal(idata.observed_data["rating"], test.rating)
    assert idata.posterior["sigma"].shape == (1, 7)
    # raw ids ride along every observation
    obs = idata.observed_data
    assert list(obs["heldout_movie"].values) == list(fitted.movie_ids.raw_of(test.movie))
    assert list(obs["train_user"].values) == list(fitted.user_ids.raw_of(train.user))
    np.testing.assert_allclose(idata.log_likelihood["rating"].values[0],
                               draws["heldout"].log_lik)

    path = checks.save_netcdf(idata, tmp_path / "sub" / "p.nc")
    assert [p.name for p in path.parent.iterdir()] == ["p.nc"]  # no temporary left over
    again = az.from_netcdf(path)
    assert list(again.observed_data["heldout_user"].values) == \
        list(obs["heldout_user"].values)
    loo = checks.psis_loo(again, num_total=10 * m)
    assert sum(loo["pareto_k"][k] for k in ("good", "ok", "bad", "very_bad")) == m
    assert loo["total_estimate"] == pytest.approx(10 * m * loo["per_rating"])


def test_discrete_families_store_integer_draws_and_a_prior_object():
    model, point, data = _truth("poisson", seed=1, ratings=400)
    draws = checks.draw_predictive(model, point, {"train": (data.movie, data.user,
                                                            data.rating)}, num_samples=5)
    assert draws["train"].replicated.dtype == np.int64
    idata = checks.to_inference_data(draws, data.movie_ids, data.user_ids, prior=True)
    assert set(idata.groups()) == {"prior", "prior_predictive", "observed_data"}
    assert idata.prior_predictive["rating"].shape == (1, 5, 400)
    assert idata.observed_data["rating"].dtype == np.int64


def test_one_latent_per_entity_per_draw_across_chunks_and_sets(tiny_fit):
    fitted, _ = tiny_fit
    movie, user = np.array([3, 5, 3, 3]), np.array([2, 2, 2, 7])
    y = np.full(4, 4.0)
    draws = checks.draw_predictive(fitted.model, fitted.posterior,
                                   {"heldout": (movie, user, y), "train": (movie[:1], user[:1],
                                                                           y[:1])},
                                   num_samples=6, seed=3, chunk=1)  # every pair its own chunk
    ll = draws["heldout"].log_lik  # (S, 4)
    np.testing.assert_array_equal(ll[:, 0], ll[:, 2])  # the same pair: the same eta per draw
    np.testing.assert_array_equal(ll[:, 0], draws["train"].log_lik[:, 0])  # in both sets
    assert np.unique(ll[:, 0]).size == 6  # while draws differ
    assert not np.array_equal(ll[:, 0], ll[:, 3])


def test_draws_are_seeded_and_leave_the_global_generator_alone(tiny_fit):
    fitted, test = tiny_fit
    sets = {"heldout": (test.movie, test.user, test.rating)}
    state = torch.get_rng_state()
    a = checks.draw_predictive(fitted.model, fitted.posterior, sets, num_samples=4, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    b = checks.draw_predictive(fitted.model, fitted.posterior, sets, num_samples=4, seed=5)
    c = checks.draw_predictive(fitted.model, fitted.posterior, sets, num_samples=4, seed=6)
    np.testing.assert_array_equal(a["heldout"].replicated, b["heldout"].replicated)
    np.testing.assert_array_equal(a["heldout"].pit, b["heldout"].pit)
    assert not np.array_equal(a["heldout"].replicated, c["heldout"].replicated)


@pytest.mark.parametrize("likelihood", ["normal", "poisson", "bernoulli", "ordinal"])
def test_point_mass_predictive_has_the_exact_mean_and_sd(likelihood):
    model, point, data = _truth(likelihood, seed=0, ratings=300)
    d = checks.draw_predictive(model, point, {"t": (data.movie, data.user, data.rating)},
                               num_samples=3)["t"]
    with torch.no_grad():
        eta = model.decoder(point.z_movie_loc[data.movie], point.z_user_loc[data.user])
        dist = model.likelihood.distribution(eta)
    np.testing.assert_allclose(d.mean, dist.mean.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.sd, dist.variance.double().sqrt().numpy(), rtol=1e-4,
                               atol=1e-5)


# -- calibration under the true model ---------------------------------------------------

# With the true predictive, each rating is inside the central level-a interval independently
# with probability a (the randomized PIT makes this exact for discrete families too), so the
# share over N ratings is Binomial(N, a) / N with sd sqrt(a (1 - a) / N). The test allows 4
# sds: a two-sided false-failure probability of 6.3e-5 per level, at most 96 x 6.3e-5 = 0.6%
# for the 4 families x 5 seeds x 4 levels and the 2 x 2 x 4 with a scale per pair below
# (union bound).
Z_TOLERANCE = 4.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("likelihood", ["normal", "poisson", "bernoulli", "ordinal"])
def test_interval_coverage_matches_nominal_under_the_true_model(likelihood, seed):
    model, point, data = _truth(likelihood, seed)
    d = checks.draw_predictive(model, point, {"t": (data.movie, data.user, data.rating)},
                               num_samples=2, seed=seed)["t"]
    n = len(data)
    for level, share in dg.interval_coverage(d.pit).items():
        tolerance = dg.coverage_tolerance(level, n, z=Z_TOLERANCE)
        assert abs(share - level) <= tolerance, (level, share, tolerance)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("likelihood", ["normal", "ordinal"])
def test_interval_coverage_with_a_scale_per_pair_under_the_true_model(likelihood, seed):
    # PIT and intervals must use each pair's own scale: with the shared scale in the
    # PIT instead, the 50% interval covered 25-45% of these data (seeds 0, 1)
    model, point, data = _truth(likelihood, seed, **{"model.pair_scale": True})
    d = checks.draw_predictive(model, point, {"t": (data.movie, data.user, data.rating)},
                               num_samples=2, seed=seed)["t"]
    with torch.no_grad():
        eta = model.decoder(point.z_movie_loc[data.movie], point.z_user_loc[data.user])
    s = model.likelihood.pair_scale_factor(eta)
    assert float(s.max() / s.min()) > 10  # the scales really differ
    for level, share in dg.interval_coverage(d.pit).items():
        tolerance = dg.coverage_tolerance(level, len(data), z=Z_TOLERANCE)
        assert abs(share - level) <= tolerance, (level, share, tolerance)


def test_half_star_levels_keep_their_values_in_the_replications():
    levels = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    model, point, data = _truth("ordinal", seed=0, ratings=400,
                                **{"model.ordinal_levels": levels})
    draws = checks.draw_predictive(model, point, {"train": (data.movie, data.user,
                                                            data.rating)}, num_samples=5)
    replicated = draws["train"].replicated
    assert set(np.unique(replicated)) <= set(levels)
    assert np.any(replicated % 1 == 0.5)  # not truncated to whole stars
    idata = checks.to_inference_data(draws, data.movie_ids, data.user_ids, prior=True)
    np.testing.assert_array_equal(idata.observed_data["rating"].values, data.rating)


def test_coverage_check_detects_a_predictive_twice_too_wide():
    model, point, data = _truth("normal", seed=0)
    model.likelihood.sigma = torch.tensor(1.0)  # the truth is 0.5
    d = checks.draw_predictive(model, point, {"t": (data.movie, data.user, data.rating)},
                               num_samples=2)["t"]
    share = dg.interval_coverage(d.pit, [0.5])[0.5]
    assert share - 0.5 > dg.coverage_tolerance(0.5, len(data), z=Z_TOLERANCE)  # about 0.82


@pytest.mark.parametrize("likelihood", ["normal", "poisson"])
def test_p_values_are_uniform_under_the_true_model(likelihood):
    # Observed data drawn afresh from the truth and the S replications are exchangeable,
    # so P(T_rep > T_obs) is uniform on {0, 1/S, ..., 1} for a continuous statistic (for
    # ties, the mid-p value keeps its mean at 1/2). Pooled over R datasets, the counts in
    # 5 equal bins pass a chi-square test at false-failure rate 1e-4 per statistic.
    model, point, data = _truth(likelihood, seed=2, movies=60, users=40, ratings=400)
    with torch.no_grad():
        eta = model.decoder(point.z_movie_loc[data.movie], point.z_user_loc[data.user])
    rng_seeds, num_datasets, num_samples = range(100, 100 + 160), 160, 49
    p_values: dict[str, list[float]] = {}
    torch.manual_seed(0)
    for seed in rng_seeds[:num_datasets]:
        observed = model.likelihood.distribution(eta).sample().double().numpy()
        d = checks.draw_predictive(model, point, {"t": (data.movie, data.user, observed)},
                                   num_samples=num_samples, seed=seed)["t"]
        for row in dg.ppc_statistics(observed, d.replicated, data.user, data.num_users):
            p_values.setdefault(row["statistic"], []).append(row["p_value"])
    assert set(p_values) == {"mean", "sd", "user_mean_sd"}
    for name, values in p_values.items():
        counts = np.histogram(values, bins=5, range=(0, 1))[0]
        assert stats.chisquare(counts).pvalue > 1e-4, (name, counts)
        assert abs(np.mean(values) - 0.5) < 4 * math.sqrt(1 / 12 / num_datasets), name


# -- statistics -------------------------------------------------------------------------


def test_randomized_pit_and_coverage_by_hand():
    rng = np.random.default_rng(0)
    u = dg.randomized_pit(np.array([0.2, 0.5]), np.array([0.2, 0.9]), rng)
    assert u[0] == 0.2 and 0.5 <= u[1] <= 0.9
    cov = dg.interval_coverage(np.array([0.5, 0.3, 0.05, 0.99]), [0.5, 0.9])
    assert cov == {0.5: 0.5, 0.9: 0.75}
    assert dg.coverage_tolerance(0.5, 100, z=2) == pytest.approx(0.1)


def test_reliability_ece_and_brier_by_hand():
    prob = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    outcome = np.array([0, 1, 1, 1, 1])
    rel = dg.reliability(prob, outcome, bins=10)
    assert rel["count"].sum() == 5 and rel["count"][0] == 2 and rel["count"][9] == 2
    assert rel["frequency"][0] == 0.5 and np.isnan(rel["frequency"][3])
    # bins: |0.5 - 0.05| * 2/5 + |1 - 0.95| * 2/5 + |1 - 0.55| * 1/5
    assert rel["ece"] == pytest.approx(0.45 * 0.4 + 0.05 * 0.4 + 0.45 * 0.2)
    assert rel["brier"] == pytest.approx(np.mean((prob - outcome) ** 2))


def test_elpd_is_the_log_of_the_mean_density():
    log_lik = np.log(np.array([[0.1, 0.5], [0.3, 0.5]]))
    out = dg.elpd_from_log_lik(log_lik)
    np.testing.assert_allclose(out["pointwise"], np.log([0.2, 0.5]))
    assert out["elpd"] == pytest.approx(np.log(0.1))
    assert out["se"] == pytest.approx(math.sqrt(2) * np.std(np.log([0.2, 0.5]), ddof=1))


def test_p_value_counts_ties_half_and_statistics_match_pandas(rng):
    assert dg.bayesian_p_value(1.0, np.array([0.0, 1.0, 2.0, 3.0])) == 0.625
    observed = rng.integers(1, 6, 50).astype(float)
    replicated = rng.normal(3, 1, (4, 50))
    user = rng.integers(0, 6, 50)
    rows = {r["statistic"]: r for r in dg.ppc_statistics(observed, replicated, user, 8,
                                                         dg.value_grid(observed))}
    assert {"mean", "sd", "share_1", "share_5", "user_mean_sd"} <= set(rows)
    assert rows["share_3"]["observed"] == pytest.approx(np.mean(observed == 3))
    np.testing.assert_allclose(rows["share_3"]["replicated"],
                               np.mean(np.round(replicated) == 3, axis=1))
    means, counts = dg.entity_means(observed, user, 8)
    for u in range(8):
        expected = observed[user == u].mean() if counts[u] else np.nan
        np.testing.assert_allclose(means[u], expected)
    var, _ = dg.entity_variances(replicated, user, 8)
    np.testing.assert_allclose(var[2, 3], np.var(replicated[2, user == 3], ddof=1))


def test_value_grid_and_shares_outside_it():
    assert dg.value_grid(np.array([1.0, 3.0, 5.0])).tolist() == [1, 2, 3, 4, 5]
    assert dg.value_grid(np.array([1.5, 2.0])) is None
    shares = dg.value_shares(np.array([[0.2, 1.4, 2.6, 7.0]]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(shares, [[0.25, 0.0, 0.25, 0.25, 0.25]])


def test_kl_per_dimension_is_the_closed_form_over_rated_entities():
    loc = torch.tensor([[1.0, 0.0], [0.5, 0.0], [3.0, 3.0]])
    scale = torch.tensor([[0.5, 1.0], [1.0, 1.0], [0.1, 0.1]])
    counts = np.array([4, 1, 0])  # the third entity has no rating: left out
    kl = dg.kl_per_dimension(loc.numpy(), scale.numpy(), counts)
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(loc[:2], scale[:2]),
                                              torch.distributions.Normal(0.0, 1.0)).mean(0)
    np.testing.assert_allclose(kl, exact.numpy(), rtol=1e-6)
    assert kl[1] == 0.0


def test_collapse_warns_when_most_dimensions_are_the_prior():
    loc, scale = torch.zeros(5, 6), torch.ones(5, 6)
    loc[:, :2] = 1.0  # two active dimensions of six
    # A third whose posterior means wander 0.15 prior sds around 0 (KL 0.011 nats):
    # what encoders leave in a dimension the decoder ignores; not counted as active.
    loc[:, 2] = 0.15 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    posterior = Posterior(loc, scale, loc.clone(), scale.clone())
    counts = np.ones(5, int)
    with pytest.warns(check_report.PosteriorCollapseWarning, match="only 2 of 6"):
        out = check_report.latent_collapse(posterior, counts, counts, latent_dim=6)
    assert out["active"] == 2 and out["warning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = check_report.latent_collapse(posterior, counts, counts, latent_dim=3)
    assert quiet["active"] == 2 and not quiet["warning"]


def test_pareto_k_bands_add_up():
    counts = dg.pareto_k_counts(np.array([0.1, 0.45, 0.6, 0.8, 1.5, 0.7]), good_k=0.5)
    assert counts == {"good": 2, "ok": 2, "bad": 1, "very_bad": 1, "above_0_7": 2}


# -- the report -------------------------------------------------------------------------

SUMMARY_KEYS = {"kind", "likelihood", "pair_scale", "implicit", "dataset", "split",
                "num_samples", "seed", "num_heldout", "num_train", "num_train_sample",
                "coverage", "coverage_sd", "pit", "reliability", "elpd_heldout", "loo",
                "p_values", "collapse", "files"}
EVERY_RUN_FILE = {"predictive.nc", "report.md", "summary.json", "coverage.csv",
                  "coverage.png", "pit.png", "elpd.csv", "pareto_k.csv", "pareto_k.png",
                  "kl.csv", "kl.png", "completion.png",
                  *(f"{kind}_{s}.png" for s in ("heldout", "train")
                    for kind in ("ppc_values", "ppc_user_means", "ppc_movie_variance",
                                 "ppc_statistics")),
                  "p_values_heldout.csv", "p_values_train.csv"}


def _check_written(out, expected):
    names = {p.name for p in out.iterdir()}
    assert expected <= names and not any(n.startswith(".") for n in names)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["files"]) == names
    report = (out / "report.md").read_text()
    for name in names - {"report.md"}:
        assert f"]({name})" in report, f"report.md does not link {name}"
    return summary


@collapse_ok
def test_bernoulli_report_writes_every_promised_file(tmp_path):
    config = small_config(**{"model.likelihood": "bernoulli", "model.like_threshold": 0.5})
    fitted = fit(config, progress=False)
    report = check_report.posterior_checks(fitted, load_data(config).test,
                                           num_samples=20, train_sample=300)
    check_report.write_report(report, tmp_path)
    summary = _check_written(tmp_path, EVERY_RUN_FILE | {"reliability.csv",
                                                         "reliability.png"})
    assert set(summary["coverage"]) == {"50", "80", "90", "95"}
    assert set(summary["reliability"]) == {"ece", "brier"}
    assert summary["num_train_sample"] == 300 and summary["loo"]["num_total"] == 480
    assert set(summary["loo"]["pareto_k"]) == {"good", "ok", "bad", "very_bad", "above_0_7"}
    assert {"mean", "sd", "share_0", "share_1"} <= set(summary["p_values"]["heldout"])
    assert len(summary["collapse"]["kl_movie"]) == config["model.latent_dim"]


@collapse_ok
def test_prior_check_writes_its_files(tmp_path):
    config = small_config()
    report = check_report.prior_checks(config, load_data(config), num_samples=20)
    check_report.write_report(report, tmp_path)
    summary = _check_written(tmp_path, {"predictive.nc", "report.md", "summary.json",
                                        "ppc_values_train.png", "p_values_train.csv"})
    assert summary["kind"] == "prior" and summary["coverage"] is None
    assert set(report.idata.groups()) == {"prior", "prior_predictive", "observed_data"}


@pytest.mark.slow
def test_cli_check_writes_every_promised_file(tmp_path):
    small = ["--set", "data.dataset=synthetic", "--set", "data.split=random",
             "--set", "data.synthetic_movies=40", "--set", "data.synthetic_users=30",
             "--set", "data.synthetic_ratings=600", "--set", "model.latent_dim=3",
             "--set", "train.epochs=2", "--set", "train.batch_size=200"]

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "deepfactor", *args],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result

    run("fit", str(REPO / "models" / "gaussian.toml"), "--out", str(tmp_path / "run"),
        "--quiet", *small)
    result = run("check", str(tmp_path / "run"), "--samples", "20")
    assert "held-out coverage: 50% ->" in result.stdout
    _check_written(tmp_path / "run" / "checks", EVERY_RUN_FILE)
    run("check", "--prior", str(REPO / "models" / "gaussian.toml"), "--out",
        str(tmp_path / "prior"), "--samples", "20", *small)
    _check_written(tmp_path / "prior", {"predictive.nc", "report.md", "summary.json"})

    bad = subprocess.run([sys.executable, "-m", "deepfactor", "check", str(tmp_path / "run"),
                          "--set", "model.latent_dim=4"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("deepfactor: error: --set")


def test_summary_json_has_no_nan():
    clean = check_report._jsonable({"a": np.float64("nan"),
                                    "b": [float("inf"), np.int64(3)],
                                    0.5: {"c": np.float32(0.25)}})
    assert json.loads(json.dumps(clean, allow_nan=False)) == {"a": None, "b": [None, 3],
                                                              "0.5": {"c": 0.25}}
