"""The checks of a run and their report: sections, readings, report.md and summary.json.

:func:`posterior_checks` and :func:`prior_checks` draw the predictive through
:mod:`deepfactor.checks`, build one :class:`CheckReport` section by section
(calibration, predictive accuracy, PPCs, posterior collapse, the 2017 figure), and
:func:`write_report` writes it to ``RUN/checks/``. :func:`check_run` and
:func:`check_prior` are what ``deepfactor check`` calls.

It does **not** draw anything itself nor import ArviZ: the draws, the ``InferenceData``,
its netCDF file and PSIS-LOO are in :mod:`deepfactor.checks`. The statistics and their
wording are in :mod:`deepfactor.diagnostics`, the figures in :mod:`deepfactor.plots`.

:func:`latent_collapse` and :class:`PosteriorCollapseWarning` live here rather than in
:mod:`deepfactor.checks`: they read the parameters of q, not predictive draws, need no
ArviZ, and the collapse section of the report is their one caller.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import diagnostics as dg
from .checkpoint import atomic_write, write_json, write_text
from .checks import (NETCDF_NAME, RATING_TRAIN, InferenceData, PredictiveDraws,
                     draw_predictive, psis_loo, save_netcdf, to_inference_data)
from .config import Config
from .data.ratings import Ratings
from .likelihoods import Likelihood
from .predict import Posterior

__all__ = ["PosteriorCollapseWarning", "CheckReport", "latent_collapse",
           "posterior_checks", "prior_checks", "write_report", "check_run", "check_prior",
           "completion_block", "BLOCK_MOVIES", "BLOCK_USERS"]

log = logging.getLogger(__name__)

#: The 2017 notebook's block: movies 4-20 x users 6-16, 1-based raw ids.
BLOCK_MOVIES = tuple(str(i) for i in range(4, 21))
BLOCK_USERS = tuple(str(i) for i in range(6, 17))


class PosteriorCollapseWarning(UserWarning):
    """Most latent dimensions have a posterior equal to the prior: they carry nothing."""


@dataclass
class CheckReport:
    """Everything a check produced, before it is written to disk.

    Attributes
    ----------
    kind : {"posterior", "prior"}
    summary : dict
        The content of ``summary.json`` (keys documented in the README).
    idata : InferenceData
        From :func:`checks.to_inference_data`.
    figures : dict of file name -> Figure
    tables : dict of file name -> DataFrame
    items : list of (section, file name, reading)
        What ``report.md`` lists, in order, each with one line of interpretation.
    """

    kind: str
    summary: dict
    idata: InferenceData
    figures: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    items: list = field(default_factory=list)

    def add(self, section: str, name: str, content, reading: str) -> None:
        (self.tables if isinstance(content, pd.DataFrame) else self.figures)[name] = content
        self.items.append((section, name, reading))


# -- the checks of a run ------------------------------------------------------------------


def _train_sample(ratings: Ratings, size: int, seed: int) -> Ratings:
    """A seeded uniform sample of ``size`` ratings (all of them if fewer), in order."""
    if size >= len(ratings):
        return ratings
    rng = np.random.default_rng(seed)
    return ratings.subset(np.sort(rng.choice(len(ratings), size=size, replace=False)))


def _empty_summary(kind: str, config: Config, num_samples: int, seed: int) -> dict:
    return {"kind": kind, "likelihood": config["model.likelihood"],
            "pair_scale": config["model.pair_scale"], "implicit": config["data.implicit"],
            "dataset": config["data.dataset"], "split": config["data.split"],
            "num_samples": num_samples, "seed": seed, "num_heldout": None,
            "num_train": None, "num_train_sample": None, "coverage": None,
            "coverage_sd": None, "pit": None, "reliability": None, "elpd_heldout": None,
            "loo": None, "p_values": {}, "collapse": None, "files": []}


def posterior_checks(fitted, test: Ratings, *, num_samples: int = 100,
                     train_sample: int = 20_000, seed: int = 0) -> CheckReport:
    """Posterior predictive checks, calibration, ELPD, PSIS-LOO and collapse of a fit.

    Parameters
    ----------
    fitted : FittedModel
    test : Ratings
        The held-out ratings (raw values; mapped to the likelihood's targets here), on
        any id maps whose ids the model knows.
    num_samples : int
        ``S`` posterior draws.
    train_sample : int
        Training ratings drawn (uniformly, seeded) for the in-sample checks and LOO.
    seed : int

    Returns
    -------
    CheckReport
    """
    from .fitting import observed_test

    likelihood = fitted.model.likelihood
    # the likelihood's targets; for an implicit fit, the held-out cells its metrics score
    test = observed_test(fitted.reindex(test), fitted.seen, likelihood, fitted.config)
    heldout_y = test.rating
    train = _train_sample(fitted.encoder_ratings, train_sample, seed)
    draws = draw_predictive(fitted.model, fitted.posterior,
                            {"heldout": (test.movie, test.user, heldout_y),
                             "train": (train.movie, train.user, train.rating)},
                            num_samples=num_samples, seed=seed)
    sigma = _sigma(likelihood)
    idata = to_inference_data(draws, fitted.movie_ids, fitted.user_ids, sigma=sigma)

    summary = _empty_summary("posterior", fitted.config, num_samples, seed)
    summary.update(num_heldout=len(test), num_train=len(fitted.encoder_ratings),
                   num_train_sample=len(train))
    report = CheckReport("posterior", summary, idata)
    _calibration(report, draws["heldout"], likelihood.name)
    _predictive_accuracy(report, draws["heldout"], idata, len(fitted.encoder_ratings))
    num_movies, num_users = len(fitted.movie_ids), len(fitted.user_ids)
    for name, label in (("heldout", "held-out ratings"), ("train", "training sample")):
        _ppc(report, draws[name], name, label, num_movies, num_users, "posterior")
    _collapse(report, fitted)
    _completion(report, fitted, test, heldout_y, num_samples, seed)
    return report


def _sigma(likelihood: Likelihood) -> float | None:
    sigma = getattr(likelihood, "sigma", None)
    return None if sigma is None else float(torch.as_tensor(sigma).detach())


def prior_checks(config: Config, data, *, num_samples: int = 100,
                 train_sample: int = 20_000, seed: int = 0) -> CheckReport:
    """Prior predictive check: what ratings the model implies before seeing any.

    Latents are drawn from N(0, I) and the decoder is at its seeded initialization,
    with the output bias set from the training mean as :func:`fitting.fit` starts it
    (the Normal ``sigma`` starts at 1). The replications are compared with the training
    ratings (a sample of ``train_sample``) by the same plots and p-values as the
    posterior check.

    Parameters
    ----------
    config : Config
    data : SplitData
        From :func:`fitting.load_data`.
    """
    model, train = _prior_model(config, data)
    dim = model.total_dim
    prior = Posterior(torch.zeros(train.num_movies, dim), torch.ones(train.num_movies, dim),
                      torch.zeros(train.num_users, dim), torch.ones(train.num_users, dim))
    sample = _train_sample(train, train_sample, seed)
    draws = draw_predictive(model, prior, {"train": (sample.movie, sample.user, sample.rating)},
                            num_samples=num_samples, seed=seed)
    idata = to_inference_data(draws, train.movie_ids, train.user_ids, prior=True,
                              sigma=_sigma(model.likelihood))
    summary = _empty_summary("prior", config, num_samples, seed)
    summary.update(num_train=len(train), num_train_sample=len(sample))
    report = CheckReport("prior", summary, idata)
    _ppc(report, draws["train"], "train", "training ratings", train.num_movies,
         train.num_users, "prior")
    return report


def _prior_model(config: Config, data):
    """The model as a fit starts it, and the training ratings as its targets."""
    from .data.splits import carve_validation
    from .fitted import build_modules
    from .reproducibility import set_seed

    set_seed(config["train.seed"])
    model, _ = build_modules(config, data.train.num_movies, data.train.num_users)
    model.eval()
    from .fitting import observed_training

    # the likelihood's targets (for data.implicit, the cells), as a fit observes them
    train = observed_training(data.train, model.likelihood, config)
    fit_part, _ = carve_validation(train, config["data.validation_fraction"],
                                   config["train.seed"])
    model.start_from(fit_part.rating)  # where a fit starts
    return model, train


# -- sections of the report -------------------------------------------------------------


def _calibration(report: CheckReport, d: PredictiveDraws, family: str) -> None:
    section = "Calibration on held-out ratings"
    _coverage(report, section, d, family)
    _pit(report, section, d, family)
    if family == "bernoulli":
        _reliability(report, section, d)


def _coverage(report: CheckReport, section: str, d: PredictiveDraws, family: str) -> None:
    n = len(d.observed)
    coverage = dg.interval_coverage(d.pit)
    sd = {a: dg.coverage_tolerance(a, n, z=1.0) for a in coverage}
    report.summary["coverage"] = {dg.percent_key(a): c for a, c in coverage.items()}
    report.summary["coverage_sd"] = {dg.percent_key(a): s for a, s in sd.items()}
    table = pd.DataFrame({"level": list(coverage), "coverage": list(coverage.values()),
                          "difference": [c - a for a, c in coverage.items()],
                          "binomial_sd": list(sd.values())})
    table["within_2sd"] = table["difference"].abs() <= 2 * table["binomial_sd"]
    report.add(section, "coverage.csv", table,
               dg.read_coverage(coverage, sd, randomized=family != "normal"))
    report.add(section, "coverage.png",
               _plots().plot_coverage(list(coverage), list(coverage.values()),
                                      [2 * s for s in sd.values()]),
               "Dots on the dashed line are calibrated; below it the intervals are too "
               "narrow (over-confident), above it too wide. Band: 2 binomial sds.")


def _pit(report: CheckReport, section: str, d: PredictiveDraws, family: str) -> None:
    hist = dg.pit_histogram(d.pit, bins=20)
    report.summary["pit"] = {"mean": float(np.mean(d.pit)),
                             "below_05": float(np.mean(d.pit < 0.05)),
                             "above_95": float(np.mean(d.pit > 0.95)),
                             "counts": hist["counts"].tolist(),
                             "randomized": family != "normal"}
    integers = family == "normal" and dg.value_grid(d.observed) is not None
    report.add(section, "pit.png",
               _plots().plot_pit(hist["edges"], hist["counts"],
                                 (hist["band_low"], hist["band_high"])),
               dg.read_pit(d.pit, integers))


def _reliability(report: CheckReport, section: str, d: PredictiveDraws) -> None:
    rel = dg.reliability(d.mean, d.observed)
    report.summary["reliability"] = {"ece": rel["ece"], "brier": rel["brier"]}
    table = pd.DataFrame({"bin_low": rel["edges"][:-1], "bin_high": rel["edges"][1:],
                          "count": rel["count"], "mean_prob": rel["mean_prob"],
                          "frequency": rel["frequency"]})
    report.add(section, "reliability.csv", table,
               f"Expected calibration error {rel['ece']:.3f} (0 is perfect), Brier "
               f"score {rel['brier']:.3f} (always predicting the base rate gives "
               f"{np.mean(d.observed) * (1 - np.mean(d.observed)):.3f}).")
    report.add(section, "reliability.png",
               _plots().plot_reliability(rel["mean_prob"], rel["frequency"],
                                         rel["count"]),
               "Points on the diagonal: a predicted probability p comes true a share p "
               "of the time.")


def _predictive_accuracy(report: CheckReport, d: PredictiveDraws, idata, num_train: int
                         ) -> None:
    section = "Predictive accuracy: held-out ELPD and PSIS-LOO"
    elpd = dg.elpd_from_log_lik(d.log_lik)
    report.summary["elpd_heldout"] = {k: v for k, v in elpd.items() if k != "pointwise"}
    loo = psis_loo(idata, RATING_TRAIN, num_total=num_train)
    report.summary["loo"] = {k: v for k, v in loo.items() if k != "pointwise_k"}
    table = pd.DataFrame([
        {"estimate": "held-out elpd", "ratings": elpd["num_ratings"],
         "per_rating": elpd["per_rating"],
         "per_rating_se": elpd["se"] / max(elpd["num_ratings"], 1), "total": elpd["elpd"],
         "total_se": elpd["se"]},
        {"estimate": "PSIS-LOO (training sample)", "ratings": loo["num_ratings"],
         "per_rating": loo["per_rating"], "per_rating_se": loo["per_rating_se"],
         "total": loo["total_estimate"], "total_se": loo["total_se"]}])
    report.add(section, "elpd.csv", table,
               f"Held-out log predictive density {elpd['per_rating']:.3f} nats per rating; "
               f"PSIS-LOO on {loo['num_ratings']} training ratings "
               f"{loo['per_rating']:.3f} ± {loo['per_rating_se']:.3f} (total over all "
               f"{num_train} extrapolated: {loo['total_estimate']:.0f} ± "
               f"{loo['total_se']:.0f}). A LOO value far above the held-out one means the "
               f"fit reads its training ratings better than new ones.")
    _pareto_k(report, section, loo)


def _pareto_k(report: CheckReport, section: str, loo: dict) -> None:
    counts = loo["pareto_k"]
    table = pd.DataFrame([{"band": band, "range": rng, "count": counts[band],
                           "share": counts[band] / max(loo["num_ratings"], 1)}
                          for band, rng in (("good", f"k <= {loo['good_k']:.2f}"),
                                            ("ok", f"{loo['good_k']:.2f} < k <= 0.7"),
                                            ("bad", "0.7 < k <= 1"),
                                            ("very_bad", "k > 1"))])
    report.add(section, "pareto_k.csv", table,
               dg.read_pareto(counts, loo["num_ratings"], loo["good_k"]))
    report.add(section, "pareto_k.png", _plots().plot_pareto_k(loo["pointwise_k"],
                                                               loo["good_k"]),
               "Each dot is one training rating; above the solid line (k > 1) its LOO "
               "estimate is unreliable.")


def _ppc(report: CheckReport, d: PredictiveDraws, name: str, label: str, num_movies: int,
         num_users: int, source: str) -> None:
    section = f"{source.capitalize()} predictive checks: {label}"
    grid = dg.value_grid(d.observed)
    _ppc_values(report, section, d, name, label, f"{source} predictive", grid)
    _ppc_user_means(report, section, d, name, label, num_users)
    _ppc_movie_variance(report, section, d, name, label, num_movies)
    _ppc_statistics(report, section, d, name, label, num_users, grid)


def _ppc_values(report: CheckReport, section: str, d: PredictiveDraws, name: str,
                label: str, what: str, grid: np.ndarray | None) -> None:
    plots = _plots()
    if grid is not None:
        observed = dg.value_shares(d.observed, grid)  # (K + 2,)
        replicated = dg.value_shares(d.replicated, grid)  # (S, K + 2)
        labels = [f"{g:g}" for g in grid] + [f"<{grid[0]:g}", f">{grid[-1]:g}"]
        keep = np.r_[np.ones(len(grid), bool), replicated[:, -2:].max(0) > 0]
        outside = float(replicated[:, -2:].sum(1).mean())
        fig = plots.plot_value_distribution([lb for lb, k in zip(labels, keep) if k],
                                            observed[keep], replicated[:, keep],
                                            title=f"Rating values: {label}")
        gap = np.abs(np.median(replicated[:, :len(grid)], 0) - observed[:len(grid)])
        worst = int(np.argmax(gap))
        reading = (f"Largest gap at rating {grid[worst]:g}: observed share "
                   f"{observed[worst]:.3f}, replicated median "
                   f"{np.median(replicated[:, worst]):.3f}. The {what} puts "
                   f"{outside:.1%} of ratings outside the observed range"
                   + (" (Normal draws read as the nearest integer)."
                      if d.replicated.dtype.kind == "f" else "."))
    else:
        edges = dg.common_edges(d.observed, d.replicated, bins=30)
        observed = dg.binned_shares(d.observed, edges)  # (K,)
        replicated = dg.binned_shares(d.replicated, edges)  # (S, K)
        fig = plots.plot_binned_ppc(edges, observed, replicated, xlabel="rating",
                                    title=f"Rating values: {label}")
        reading = "Bars: observed values; band: where 90% of replicated histograms lie."
    report.add(section, f"ppc_values_{name}.png", fig, reading)


def _ppc_user_means(report: CheckReport, section: str, d: PredictiveDraws, name: str,
                    label: str, num_users: int) -> None:
    kept = _per_entity(dg.entity_means, d, d.user, num_users, dg.MIN_USER_RATINGS)
    if kept is None:
        return
    means_obs, means_rep, counts = kept
    edges = dg.common_edges(means_obs, means_rep, bins=25)
    fig = _plots().plot_binned_ppc(edges, dg.binned_shares(means_obs, edges),
                                   dg.binned_shares(means_rep, edges),
                                   xlabel="mean rating of a user",
                                   title=f"Per-user mean rating: {label}")
    report.add(section, f"ppc_user_means_{name}.png", fig,
               f"{len(counts)} users with at least {dg.MIN_USER_RATINGS} ratings: "
               f"observed spread of their means {np.std(means_obs):.3f}, "
               f"replicated {np.mean(np.std(means_rep, axis=1)):.3f}.")


def _ppc_movie_variance(report: CheckReport, section: str, d: PredictiveDraws, name: str,
                        label: str, num_movies: int) -> None:
    kept = _per_entity(dg.entity_variances, d, d.movie, num_movies, 2)
    if kept is None:
        return
    var_obs, var_rep, counts = kept
    fig = _plots().plot_movie_variance(counts, var_obs, var_rep,
                                       title=f"Per-movie rating variance: {label}")
    report.add(section, f"ppc_movie_variance_{name}.png", fig,
               f"{len(counts)} movies with at least 2 ratings: mean within-movie "
               f"variance observed {np.nanmean(var_obs):.3f}, replicated "
               f"{np.nanmean(var_rep):.3f}.")


def _per_entity(statistic, d: PredictiveDraws, entity: np.ndarray, num_entities: int,
                min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``statistic`` per entity of the observed and the replicated ratings.

    ``statistic`` is :func:`diagnostics.entity_means` or ``entity_variances``. Only the
    ``E`` entities with at least ``min_count`` ratings are kept; returns observed (E,),
    replicated (S, E) and counts (E,), or None when fewer than two are kept.
    """
    observed, counts = statistic(d.observed, entity, num_entities)
    keep = counts >= min_count
    if keep.sum() < 2:
        return None
    replicated = statistic(d.replicated, entity, num_entities)[0][:, keep]  # (S, E)
    return observed[keep], replicated, counts[keep]


def _ppc_statistics(report: CheckReport, section: str, d: PredictiveDraws, name: str,
                    label: str, num_users: int, grid: np.ndarray | None) -> None:
    rows = dg.ppc_statistics(d.observed, d.replicated, d.user, num_users, grid)
    report.summary["p_values"][name] = {r["statistic"]: r["p_value"] for r in rows}
    shown = [r for r in rows if r["statistic"] in ("mean", "sd", "user_mean_sd")]
    fig = _plots().plot_test_statistics([r["statistic"] for r in shown],
                                        [r["observed"] for r in shown],
                                        [r["replicated"] for r in shown],
                                        [r["p_value"] for r in shown],
                                        title=f"Test statistics: {label}")
    report.add(section, f"ppc_statistics_{name}.png", fig,
               "Histogram: the statistic over replications; line: its observed value.")
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "replicated"} for r in rows])
    table["reading"] = [dg.read_p_value(r["p_value"]) for r in rows]
    extreme = [r["statistic"] for r in rows if not 0.025 <= r["p_value"] <= 0.975]
    report.add(section, f"p_values_{name}.csv", table,
               (f"{len(extreme)} of {len(rows)} statistics fall outside the central 95% of "
                f"their replications ({', '.join(extreme)})." if extreme else
                f"All {len(rows)} statistics lie within the central 95% of their "
                f"replications.") + " p = P(T(y_rep) >= T(y)).")


def _collapse(report: CheckReport, fitted) -> None:
    section = "Posterior collapse"
    train = fitted.encoder_ratings
    latent_dim = fitted.config["model.latent_dim"]
    collapse = latent_collapse(fitted.posterior, train.movie_counts(), train.user_counts(),
                               latent_dim)
    report.summary["collapse"] = collapse
    kl_movie, kl_user = np.asarray(collapse["kl_movie"]), np.asarray(collapse["kl_user"])
    table = pd.DataFrame({
        "dimension": [str(i) if i < latent_dim else "bias" for i in range(len(kl_movie))],
        "kl_movie": kl_movie, "kl_user": kl_user,
        "active_movie": kl_movie > dg.ACTIVE_KL_NATS,
        "active_user": kl_user > dg.ACTIVE_KL_NATS})
    reading = (f"{collapse['active']} of {latent_dim} latent dimensions are active (mean "
               f"KL above {dg.ACTIVE_KL_NATS} nats for both movies and users; "
               f"{collapse['active_movie']} for movies, {collapse['active_user']} for "
               f"users).")
    if collapse["warning"]:
        reading += (" Most dimensions have collapsed to the prior: they carry no "
                    "information and the decoder ignores them.")
    report.add(section, "kl.csv", table, reading)
    report.add(section, "kl.png", _plots().plot_kl(kl_movie, kl_user, dg.ACTIVE_KL_NATS),
               "Bars below the dashed line are dimensions whose posterior is the prior.")


def latent_collapse(posterior: Posterior, movie_counts: np.ndarray, user_counts: np.ndarray,
                    latent_dim: int, *, warn: bool = True) -> dict:
    """KL(q || prior) per latent dimension, averaged over movies and over users.

    A dimension is **active** for an entity type when its mean KL exceeds
    :data:`diagnostics.ACTIVE_KL_NATS` (0.01 nats), and active for the model when it is
    active for both movies and users (the decoder reads their elementwise product). A
    bias coordinate (``model.bias_latent``) is reported but not counted.

    Parameters
    ----------
    posterior : Posterior
    movie_counts, user_counts : ndarray of int, shapes (num_movies,), (num_users,)
        Training ratings per entity; unrated entities (q = prior) are left out.
    latent_dim : int
        ``D``; columns beyond it are the bias coordinate.
    warn : bool
        Emit :class:`PosteriorCollapseWarning` when more than half of the ``D``
        dimensions are inactive.

    Returns
    -------
    dict
        ``kl_movie``, ``kl_user`` (lists, nats per dimension), ``active_movie``,
        ``active_user``, ``active`` (counts), ``latent_dim``, ``threshold_nats``,
        ``warning`` (bool).
    """
    kl_movie = dg.kl_per_dimension(posterior.z_movie_loc.numpy(),
                                   posterior.z_movie_scale.numpy(), movie_counts)
    kl_user = dg.kl_per_dimension(posterior.z_user_loc.numpy(),
                                  posterior.z_user_scale.numpy(), user_counts)
    on_movie = kl_movie[:latent_dim] > dg.ACTIVE_KL_NATS
    on_user = kl_user[:latent_dim] > dg.ACTIVE_KL_NATS
    active = int(np.sum(on_movie & on_user))
    out = {"kl_movie": kl_movie.tolist(), "kl_user": kl_user.tolist(),
           "active_movie": int(on_movie.sum()), "active_user": int(on_user.sum()),
           "active": active, "latent_dim": int(latent_dim),
           "threshold_nats": dg.ACTIVE_KL_NATS, "warning": active < latent_dim / 2}
    if out["warning"] and warn:
        warnings.warn(
            f"posterior collapse: only {active} of {latent_dim} latent dimensions carry "
            f"information (mean KL(q || prior) above {dg.ACTIVE_KL_NATS} nats for both "
            f"movies and users); the others equal the prior and the decoder ignores them. "
            f"Try a smaller model.latent_dim, a longer KL warm-up (train.kl_warmup_epochs) "
            f"or more epochs.", PosteriorCollapseWarning, stacklevel=2)
    return out


def completion_block(fitted, test: Ratings, test_y: np.ndarray, *, num_samples: int,
                     seed: int) -> dict | None:
    """The 2017 notebook's block (:data:`BLOCK_MOVIES` x :data:`BLOCK_USERS`), completed.

    Parameters
    ----------
    fitted : FittedModel
    test : Ratings
        Held-out ratings on ``fitted``'s id maps; ``test_y`` their targets, shape
        ``(len(test),)``.
    num_samples, seed : int
        Posterior draws for the predictive mean and sd, and their seed.

    Returns
    -------
    dict or None
        ``movies``, ``users`` (raw ids of the rows and columns present in the data),
        ``observed`` (NaN where unrated), ``heldout`` (bool), ``mean``, ``sd``, each of
        shape ``(len(movies), len(users))``; None when the data has none of the block.
    """
    movies = [m for m in BLOCK_MOVIES if m in fitted.movie_ids]
    users = [u for u in BLOCK_USERS if u in fitted.user_ids]
    if not movies or not users:
        return None
    movie_index = fitted.movie_ids.index_of(movies)
    user_index = fitted.user_ids.index_of(users)
    cells_m = np.repeat(movie_index, len(users))  # (block movies * block users,)
    cells_u = np.tile(user_index, len(movies))
    out = fitted.summaries(cells_m, cells_u, num_samples=num_samples, seed=seed)
    shape = (len(movies), len(users))
    observed, heldout = _observed_block(fitted.encoder_ratings, test, test_y, movie_index,
                                        user_index)
    return {"movies": movies, "users": users, "observed": observed, "heldout": heldout,
            "mean": out["mean"].reshape(shape), "sd": out["sd"].reshape(shape)}


def _completion(report: CheckReport, fitted, test: Ratings, test_y: np.ndarray,
                num_samples: int, seed: int) -> None:
    block = completion_block(fitted, test, test_y, num_samples=num_samples, seed=seed)
    if block is None:
        log.info("no movie 4-20 or user 6-16 in this data: the 2017 figure is skipped")
        return
    movies, users, observed = block["movies"], block["users"], block["observed"]
    heldout, sd = block["heldout"], block["sd"].ravel()
    fig = _plots().plot_completion(observed, block["mean"], block["sd"], movies, users,
                                   heldout=heldout,
                                   title=f"Movies {movies[0]}-{movies[-1]} x users "
                                         f"{users[0]}-{users[-1]} ({fitted.likelihood} "
                                         f"likelihood)")
    seen = np.isfinite(observed)
    report.add("The 2017 figure", "completion.png", fig,
               f"{int(seen.sum())} of {seen.size} cells observed ({int(heldout.sum())} held "
               f"out, dotted); predictive sd {np.mean(sd[seen.ravel()]):.2f} on "
               f"observed cells, {np.mean(sd[~seen.ravel()]):.2f} on the others."
               if seen.any() and (~seen).any() else
               f"{int(seen.sum())} of {seen.size} cells observed.")


def _observed_block(train: Ratings, test: Ratings, test_y: np.ndarray,
                    movie_index: np.ndarray, user_index: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Observed values of the block (NaN where unrated) and which cells are held out.

    Both of shape (len(movie_index), len(user_index)); a test rating overwrites a
    training rating of the same cell.
    """
    shape = (len(movie_index), len(user_index))
    observed, heldout = np.full(shape, np.nan), np.zeros(shape, bool)
    row = {m: i for i, m in enumerate(movie_index)}
    col = {u: j for j, u in enumerate(user_index)}
    for m, u, y, is_test in [*zip(train.movie, train.user, train.rating, [False] * len(train)),
                             *zip(test.movie, test.user, test_y, [True] * len(test))]:
        if m in row and u in col:
            observed[row[m], col[u]] = y
            heldout[row[m], col[u]] = is_test
    return observed, heldout


def _plots():
    from . import plots

    return plots


# -- writing ----------------------------------------------------------------------------


def write_report(report: CheckReport, out_dir: str | os.PathLike) -> list[Path]:
    """Write the data object, figures, tables, ``report.md`` and ``summary.json``.

    Every file is written atomically. Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [save_netcdf(report.idata, out / NETCDF_NAME)]
    for name, fig in report.figures.items():
        written.append(_save_figure(fig, out / name))
    for name, table in report.tables.items():
        write_text(out / name, table.to_csv(index=False))
        written.append(out / name)
    write_text(out / "report.md", _markdown(report))
    written.append(out / "report.md")
    report.summary["files"] = sorted(p.name for p in written) + ["summary.json"]
    write_json(out / "summary.json", _jsonable(report.summary))
    written.append(out / "summary.json")
    return written


def _save_figure(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    return path


def _markdown(report: CheckReport) -> str:
    s = report.summary
    title = "Prior predictive check" if report.kind == "prior" else "Posterior checks"
    scaled = " with a scale per pair" if s.get("pair_scale") else ""
    lines = [f"# {title}: {s['likelihood']} likelihood{scaled}, {s['dataset']} {s['split']}",
             "",
             f"{s['num_samples']} draws (seed {s['seed']}); "
             + (f"{s['num_heldout']} held-out ratings; " if s["num_heldout"] else "")
             + f"a sample of {s['num_train_sample']} of {s['num_train']} training ratings. "
             f"The ArviZ data object is [{NETCDF_NAME}]({NETCDF_NAME}); the numbers are in "
             f"[summary.json](summary.json).", ""]
    if s.get("implicit") and report.kind == "posterior":
        lines += ["An implicit fit (data.implicit): the ratings checked are 0/1 cells. Half "
                  "the held-out cells are 1s by construction, each a cell the fit read as 0, "
                  "so the held-out calibration below is expected to look over-confident and "
                  "too low; it does not measure the model's calibration on its own cells "
                  "(the training checks do).", ""]
    section = None
    for sec, name, reading in report.items:
        if sec != section:
            lines += ["", f"## {sec}", ""]
            section = sec
        lines.append(f"- [{name}]({name}): {reading}")
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN or infinity
    return obj


# -- entry points for the command line ----------------------------------------------------


def check_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
              data_dir: str | os.PathLike | None = None, num_samples: int = 100,
              train_sample: int = 20_000, seed: int = 0) -> tuple[CheckReport, Path]:
    """Load a run, check it against its own split's held-out ratings, write RUN/checks/."""
    from .fitted import load
    from .fitting import load_data

    fitted = load(run_dir)
    data = load_data(fitted.config, data_dir)
    report = posterior_checks(fitted, data.test, num_samples=num_samples,
                              train_sample=train_sample, seed=seed)
    out = Path(out) if out else Path(run_dir) / "checks"
    write_report(report, out)
    return report, out


def check_prior(config: Config, out: str | os.PathLike, *,
                data_dir: str | os.PathLike | None = None, num_samples: int = 100,
                train_sample: int = 20_000, seed: int = 0) -> tuple[CheckReport, Path]:
    """Prior predictive check of ``config`` on its training ratings; writes ``out``."""
    from .fitting import load_data

    data = load_data(config, data_dir)
    report = prior_checks(config, data, num_samples=num_samples, train_sample=train_sample,
                          seed=seed)
    write_report(report, Path(out))
    return report, Path(out)
