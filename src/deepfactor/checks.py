"""Posterior and prior predictive checks, calibration and PSIS-LOO, with an ArviZ data object.

This is the only module that imports ArviZ (0.23, ``InferenceData``), so the move to
ArviZ 1.x (``xarray.DataTree``, Python 3.12) stays a local change. Pyro's ArviZ converter
needs an MCMC object; SVI draws are independent, so they are stored as **one chain of
S draws**, built with ``az.from_dict``.

Draws
    Each posterior draw ``s`` samples one latent per movie and per user from q, shared
    by all the pairs of that entity, for every rating checked (held-out and training
    sample alike), then decodes the pairs in chunks: memory is bounded by
    ``draw block x entities x latent_dim + draw block x chunk x decoder width`` floats.

The data object (``checks/predictive.nc``)
    ========================  =========================================  ===============
    group                     variables, shapes                          meaning
    ========================  =========================================  ===============
    ``posterior``             ``mean_eta`` (1, S); normal ``sigma``      per-draw values
    ``posterior_predictive``  ``rating`` (1, S, N), ``rating_train``     replications
                              (1, S, n)
    ``observed_data``         ``rating`` (N,), ``rating_train`` (n,)     the targets
    ``log_likelihood``        ``rating`` (1, S, N), ``rating_train``     log p(y | s)
                              (1, S, n)
    ========================  =========================================  ===============

    ``rating`` holds every **held-out** rating (dim ``heldout``), ``rating_train`` a
    seeded uniform sample of ``n`` **training** ratings (dim ``train``). Each dim carries
    the raw ids of its ratings as coords ``<dim>_movie`` and ``<dim>_user``
    (``heldout_movie``, ``heldout_user``, ``train_movie``, ``train_user``). PSIS-LOO runs
    on ``rating_train`` (``az.loo(idata, var_name="rating_train")``); ``rating`` is
    scored as held-out data directly. Discrete families store int64 draws, so ArviZ
    plots them as discrete. A prior check writes ``prior`` and ``prior_predictive``
    instead, on the training sample, under the name ``rating``.

Simplified
    * PSIS-LOO treats the draws of q as posterior draws; q is an amortized
      approximation whose encoders read the left-out rating itself. High Pareto k flags
      where that matters.
    * LOO runs on a sample of the training ratings (``train_sample``, 20,000 by
      default) because ArviZ 0.23 has no subsampled LOO; the total is extrapolated
      with its sampling standard error.
    * ``sigma`` (Normal) is a learned point estimate, constant over the draws.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import diagnostics as dg
from .checkpoint import write_json, write_text
from .config import Config
from .data.ratings import IdIndex, Ratings
from .likelihoods import Likelihood, NormalLikelihood
from .model import MatrixFactorization
from .predict import DEFAULT_CHUNK, Posterior

with warnings.catch_warnings():
    # arviz 0.23 announces its 1.x refactor on import, once a day (the message starts
    # with a newline); nothing for a user of `deepfactor check` to act on
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor",
                            category=FutureWarning)
    import arviz as az

__all__ = ["PosteriorCollapseWarning", "PredictiveDraws", "CheckReport", "draw_predictive",
           "to_inference_data", "save_netcdf", "psis_loo", "latent_collapse",
           "posterior_checks", "prior_checks", "write_report", "check_run", "check_prior",
           "BLOCK_MOVIES", "BLOCK_USERS"]

log = logging.getLogger(__name__)

RATING, RATING_TRAIN = "rating", "rating_train"
SET_DIMS = {"heldout": "heldout", "train": "train"}
#: Draws decoded together; with the pair chunk, this bounds the memory of the draws.
DRAW_BLOCK = 25
#: The 2017 notebook's block: movies 4-20 x users 6-16, 1-based raw ids.
BLOCK_MOVIES = tuple(str(i) for i in range(4, 21))
BLOCK_USERS = tuple(str(i) for i in range(6, 17))
NETCDF_NAME = "predictive.nc"


class PosteriorCollapseWarning(UserWarning):
    """Most latent dimensions have a posterior equal to the prior: they carry nothing."""


# -- predictive draws -------------------------------------------------------------------


@dataclass(frozen=True)
class PredictiveDraws:
    """Predictive draws at ``N`` ratings, and what the checks need from them.

    Attributes
    ----------
    movie, user : ndarray of int64, shape (N,)
        Indices in the model's id maps.
    observed : ndarray of float64, shape (N,)
        The likelihood's targets.
    replicated : ndarray, shape (S, N)
        ``y_rep[s, k] ~ p(r | eta[s, k])`` (int64 for discrete families).
    log_lik : ndarray of float64, shape (S, N)
        ``log p(observed[k] | eta[s, k])``.
    pit : ndarray of float64, shape (N,)
        PIT of each observed value under the S-draw predictive mixture; randomized for
        the discrete families (see :func:`diagnostics.randomized_pit`).
    mean, sd : ndarray of float64, shape (N,)
        Predictive mean (Bernoulli: probability of a like) and sd of the mixture.
    mean_eta : ndarray of float64, shape (S,)
        Mean of ``eta`` over these ratings, per draw.
    """

    movie: np.ndarray
    user: np.ndarray
    observed: np.ndarray
    replicated: np.ndarray
    log_lik: np.ndarray
    pit: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    mean_eta: np.ndarray

    @property
    def num_samples(self) -> int:
        return self.replicated.shape[0]


def _draw_latents(loc: torch.Tensor, scale: torch.Tensor, rows: np.ndarray, num: int
                  ) -> torch.Tensor:
    """``num`` draws of q for ``rows``; shape (num, len(rows), total_dim)."""
    rows_t = torch.from_numpy(rows)
    eps = torch.randn((num, len(rows), loc.shape[-1]), dtype=loc.dtype)
    return loc[rows_t] + scale[rows_t] * eps


@torch.no_grad()
def draw_predictive(model: MatrixFactorization, posterior: Posterior,
                    sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                    num_samples: int = 100, seed: int = 0,
                    chunk: int = DEFAULT_CHUNK) -> dict[str, PredictiveDraws]:
    """Posterior predictive draws at several sets of ratings from one set of latent draws.

    Parameters
    ----------
    model : MatrixFactorization
    posterior : Posterior
        q per entity. A prior check passes loc 0 and scale 1; a check against known
        truth passes the true latents with scale 0.
    sets : dict of name -> (movie, user, observed)
        Index arrays and targets, each of shape (N_set,).
    num_samples : int
        ``S``.
    seed : int
        Seeds the latents, the replications and the randomized PIT (torch's global
        generator is forked, so the caller's random state is left as it was).
    chunk : int
        Pairs decoded at once.

    Returns
    -------
    dict of name -> PredictiveDraws
    """
    names = list(sets)
    movie_all, user_all, observed_all = (
        np.concatenate([np.asarray(sets[name][i], dtype) for name in names])
        for i, dtype in ((0, np.int64), (1, np.int64), (2, np.float64)))
    movies, movie_local = np.unique(movie_all, return_inverse=True)
    users, user_local = np.unique(user_all, return_inverse=True)
    sizes = [len(sets[name][0]) for name in names]
    set_of = torch.from_numpy(np.repeat(np.arange(len(names)), sizes))  # (n,) set of each
    y_all = torch.as_tensor(observed_all, dtype=posterior.z_movie_loc.dtype)
    acc = _Accumulator(num_samples, len(movie_all), len(names),
                       discrete=not isinstance(model.likelihood, NormalLikelihood))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, num_samples, DRAW_BLOCK):
            block = slice(start, min(start + DRAW_BLOCK, num_samples))
            size = block.stop - block.start
            z_movie = _draw_latents(posterior.z_movie_loc, posterior.z_movie_scale, movies,
                                    size)  # (b, distinct movies, total_dim)
            z_user = _draw_latents(posterior.z_user_loc, posterior.z_user_scale, users, size)
            for part in (slice(s, min(s + chunk, len(y_all))) for s in range(0, len(y_all),
                                                                               chunk)):
                eta = model.decoder(z_movie[:, torch.from_numpy(movie_local[part])],
                                    z_user[:, torch.from_numpy(user_local[part])])  # (b, c)
                acc.add(model.likelihood, block, part, eta, y_all[part], set_of[part])
        pit = acc.pit(np.random.default_rng(seed))

    mean, sd = acc.mean_sd()
    out, offset = {}, 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        k = slice(offset, offset + size)
        offset = k.stop
        out[name] = PredictiveDraws(movie_all[k], user_all[k], observed_all[k],
                                    acc.replicated[:, k], acc.log_lik[:, k], pit[k], mean[k],
                                    sd[k], acc.eta_sum[:, i] / max(size, 1))
    return out


class _Accumulator:
    """Outputs of :func:`draw_predictive` filled block by block, chunk by chunk."""

    def __init__(self, num_samples: int, n: int, num_sets: int, discrete: bool):
        self.num_samples, self.discrete = num_samples, discrete
        self.replicated = np.empty((num_samples, n), np.int64 if discrete else np.float32)
        self.log_lik = np.empty((num_samples, n))
        self.eta_sum = np.zeros((num_samples, num_sets))  # sum of eta per draw and set
        # sums over draws, per rating: CDF below and at y, mixture moments
        self.sums = {k: np.zeros(n) for k in ("below", "at", "mean", "mean_sq", "var")}

    def add(self, likelihood: Likelihood, block: slice, part: slice, eta: torch.Tensor,
            y: torch.Tensor, set_of: torch.Tensor) -> None:
        """Record draws ``block`` of pairs ``part``: ``eta`` (b, c), ``y`` and ``set_of`` (c,)."""
        y = y.expand_as(eta)
        d = likelihood.distribution(eta)
        self.replicated[block, part] = d.sample().numpy()
        self.log_lik[block, part] = d.log_prob(y).double().numpy()
        below, at = likelihood.cdf_below_at(eta, y)
        for key, value in (("below", below), ("at", at), ("mean", d.mean),
                           ("mean_sq", d.mean**2), ("var", d.variance)):
            self.sums[key][part] += value.double().sum(0).numpy()
        eta_sets = torch.zeros(eta.shape[0], self.eta_sum.shape[1], dtype=torch.float64)
        self.eta_sum[block] += eta_sets.index_add_(1, set_of, eta.double()).numpy()

    def pit(self, rng: np.random.Generator) -> np.ndarray:
        """PIT under the S-draw mixture, randomized for discrete families; shape (n,)."""
        below, at = self.sums["below"] / self.num_samples, self.sums["at"] / self.num_samples
        return dg.randomized_pit(below, at, rng) if self.discrete else at

    def mean_sd(self) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and sd per rating (law of total variance over the S components)."""
        mean = self.sums["mean"] / self.num_samples
        var = (self.sums["var"] + self.sums["mean_sq"]) / self.num_samples - mean**2
        return mean, np.sqrt(np.maximum(var, 0.0))


# -- the ArviZ data object ----------------------------------------------------------------


def to_inference_data(draws: dict[str, PredictiveDraws], movie_ids: IdIndex,
                      user_ids: IdIndex, *, prior: bool = False,
                      sigma: float | None = None) -> az.InferenceData:
    """The ArviZ data object of the module docstring (one chain of S draws).

    Parameters
    ----------
    draws : dict
        ``"heldout"`` and/or ``"train"`` sets from :func:`draw_predictive`.
    movie_ids, user_ids : IdIndex
        For the raw-id coords.
    prior : bool
        Store prior and prior predictive groups (training set only, as ``rating``).
    sigma : float, optional
        The Normal noise scale, stored per draw.
    """
    names = {"heldout": RATING, "train": RATING_TRAIN}
    if prior:
        names = {"train": RATING}
    variables = {names[k]: (SET_DIMS[k], d) for k, d in draws.items() if k in names}
    if not variables:
        raise ValueError(f"no set to store among {sorted(draws)}")
    first = next(iter(variables.values()))[1]
    num_samples = first.num_samples
    params = {"mean_eta": first.mean_eta[None]}  # (1, S)
    if sigma is not None:
        params["sigma"] = np.full((1, num_samples), float(sigma))
    predictive = {v: d.replicated[None] for v, (_, d) in variables.items()}  # (1, S, N)
    observed = {v: (d.observed.astype(np.int64) if d.replicated.dtype.kind == "i"
                    else d.observed) for v, (_, d) in variables.items()}
    dims = {v: [dim] for v, (dim, _) in variables.items()}
    coords = {dim: np.arange(len(d.observed)) for dim, d in variables.values()}
    if prior:
        idata = az.from_dict(prior=params, prior_predictive=predictive,
                             observed_data=observed, dims=dims, coords=coords)
    else:
        log_lik = {v: d.log_lik[None] for v, (_, d) in variables.items()}
        idata = az.from_dict(posterior=params, posterior_predictive=predictive,
                             observed_data=observed, log_likelihood=log_lik, dims=dims,
                             coords=coords)

    # raw ids as coords beside each observation dim, in every group that has it
    raw = {dim: {"movie": movie_ids.raw_of(d.movie).astype(str),
                 "user": user_ids.raw_of(d.user).astype(str)}
           for dim, d in variables.values()}
    for group in idata.groups():
        ds = getattr(idata, group)
        extra = {f"{dim}_{kind}": (dim, values) for dim, kinds in raw.items()
                 if dim in ds.dims for kind, values in kinds.items()}
        if extra:
            setattr(idata, group, ds.assign_coords(extra))
    return idata


def save_netcdf(idata: az.InferenceData, path: str | os.PathLike) -> Path:
    """Write ``idata`` to ``path`` as netCDF, atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def psis_loo(idata: az.InferenceData, var_name: str = RATING_TRAIN,
             num_total: int | None = None) -> dict:
    """PSIS-LOO of ``var_name`` with a Pareto k summary, extrapolated to ``num_total``.

    Parameters
    ----------
    idata : InferenceData
        With ``log_likelihood[var_name]`` of shape (1, S, n) and a posterior group.
    var_name : str
    num_total : int, optional
        Size of the population the ``n`` ratings are a uniform sample of (default n).

    Returns
    -------
    dict
        ``elpd_loo``, ``se``, ``p_loo`` (ArviZ's, over the n ratings); ``per_rating``
        and ``per_rating_se`` (mean over the sample and its standard error);
        ``total_estimate`` and ``total_se`` (``num_total`` times the mean, with the
        sampling error, finite-population corrected); ``num_ratings``, ``num_total``,
        ``good_k``, ``pareto_k`` (counts per band, :func:`diagnostics.pareto_k_counts`),
        ``warning`` (ArviZ's flag: some k above good_k) and ``pointwise_k`` (n,).
    """
    with warnings.catch_warnings(record=True) as caught:
        # ArviZ warns when some k is high; the counts below carry that, in words
        warnings.simplefilter("always")
        result = az.loo(idata, var_name=var_name, pointwise=True)
    for w in caught:
        if "Pareto" not in str(w.message):
            warnings.warn(w.message, w.category, stacklevel=2)
    loo_i = np.asarray(result["loo_i"]).ravel()
    k = np.asarray(result["pareto_k"]).ravel()
    n = loo_i.size
    total = num_total or n
    per_rating_se = float(loo_i.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"elpd_loo": float(result["elpd_loo"]), "se": float(result["se"]),
            "p_loo": float(result["p_loo"]), "per_rating": float(loo_i.mean()),
            "per_rating_se": per_rating_se, "num_ratings": int(n), "num_total": int(total),
            "total_estimate": float(total * loo_i.mean()),
            "total_se": float(total * per_rating_se * np.sqrt(max(1 - n / total, 0.0))),
            "good_k": float(result["good_k"]),
            "pareto_k": dg.pareto_k_counts(k, float(result["good_k"])),
            "warning": bool(result["warning"]), "pointwise_k": k}


# -- posterior collapse -------------------------------------------------------------------


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




# -- the checks of a run ------------------------------------------------------------------


@dataclass
class CheckReport:
    """Everything a check produced, before it is written to disk.

    Attributes
    ----------
    kind : {"posterior", "prior"}
    summary : dict
        The content of ``summary.json`` (keys documented in the README).
    idata : InferenceData
    figures : dict of file name -> Figure
    tables : dict of file name -> DataFrame
    items : list of (section, file name, reading)
        What ``report.md`` lists, in order, each with one line of interpretation.
    """

    kind: str
    summary: dict
    idata: az.InferenceData
    figures: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    items: list = field(default_factory=list)

    def add(self, section: str, name: str, content, reading: str) -> None:
        (self.tables if isinstance(content, pd.DataFrame) else self.figures)[name] = content
        self.items.append((section, name, reading))


def _train_sample(ratings: Ratings, size: int, seed: int) -> Ratings:
    """A seeded uniform sample of ``size`` ratings (all of them if fewer), in order."""
    if size >= len(ratings):
        return ratings
    rng = np.random.default_rng(seed)
    return ratings.subset(np.sort(rng.choice(len(ratings), size=size, replace=False)))


def _empty_summary(kind: str, config: Config, num_samples: int, seed: int) -> dict:
    return {"kind": kind, "likelihood": config["model.likelihood"],
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
    likelihood = fitted.model.likelihood
    test = fitted.reindex(test)
    heldout_y = likelihood.prepare(test.rating, source=test.source, lines=test.line)
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
    from .data.splits import carve_validation
    from .fitted import build_modules
    from .reproducibility import set_seed

    set_seed(config["train.seed"])
    model, _ = build_modules(config, data.train.num_movies, data.train.num_users)
    model.eval()
    likelihood = model.likelihood
    targets = likelihood.prepare(data.train.rating, source=data.train.source,
                                 lines=data.train.line)
    train = Ratings(data.train.movie, data.train.user, targets, data.train.movie_ids,
                    data.train.user_ids, data.train.source)
    fit_part, _ = carve_validation(train, config["data.validation_fraction"],
                                   config["train.seed"])
    with torch.no_grad():
        model.decoder.output_bias.fill_(likelihood.link_inverse_of_mean(
            float(np.mean(fit_part.rating))))

    dim = model.total_dim
    prior = Posterior(torch.zeros(train.num_movies, dim), torch.ones(train.num_movies, dim),
                      torch.zeros(train.num_users, dim), torch.ones(train.num_users, dim))
    sample = _train_sample(train, train_sample, seed)
    draws = draw_predictive(model, prior, {"train": (sample.movie, sample.user, sample.rating)},
                            num_samples=num_samples, seed=seed)
    idata = to_inference_data(draws, train.movie_ids, train.user_ids, prior=True,
                              sigma=_sigma(likelihood))
    summary = _empty_summary("prior", config, num_samples, seed)
    summary.update(num_train=len(train), num_train_sample=len(sample))
    report = CheckReport("prior", summary, idata)
    _ppc(report, draws["train"], "train", "training ratings", train.num_movies,
         train.num_users, "prior")
    return report


# -- sections of the report -------------------------------------------------------------


def _calibration(report: CheckReport, d: PredictiveDraws, family: str) -> None:
    section = "Calibration on held-out ratings"
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

    if family == "bernoulli":
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
    plots = _plots()
    section = f"{source.capitalize()} predictive checks: {label}"
    what = f"{source} predictive"
    grid = dg.value_grid(d.observed)
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

    means_obs, counts = dg.entity_means(d.observed, d.user, num_users)
    keep = counts >= dg.MIN_USER_RATINGS
    if keep.sum() >= 2:
        means_rep = dg.entity_means(d.replicated, d.user, num_users)[0][:, keep]
        edges = dg.common_edges(means_obs[keep], means_rep, bins=25)
        fig = plots.plot_binned_ppc(edges, dg.binned_shares(means_obs[keep], edges),
                                    dg.binned_shares(means_rep, edges),
                                    xlabel="mean rating of a user",
                                    title=f"Per-user mean rating: {label}")
        report.add(section, f"ppc_user_means_{name}.png", fig,
                   f"{int(keep.sum())} users with at least {dg.MIN_USER_RATINGS} ratings: "
                   f"observed spread of their means {np.std(means_obs[keep]):.3f}, "
                   f"replicated {np.mean(np.std(means_rep, axis=1)):.3f}.")

    var_obs, movie_counts = dg.entity_variances(d.observed, d.movie, num_movies)
    keep = movie_counts >= 2
    if keep.sum() >= 2:
        var_rep = dg.entity_variances(d.replicated, d.movie, num_movies)[0][:, keep]
        fig = plots.plot_movie_variance(movie_counts[keep], var_obs[keep], var_rep,
                                        title=f"Per-movie rating variance: {label}")
        report.add(section, f"ppc_movie_variance_{name}.png", fig,
                   f"{int(keep.sum())} movies with at least 2 ratings: mean within-movie "
                   f"variance observed {np.nanmean(var_obs[keep]):.3f}, replicated "
                   f"{np.nanmean(var_rep):.3f}.")

    rows = dg.ppc_statistics(d.observed, d.replicated, d.user, num_users, grid)
    report.summary["p_values"][name] = {r["statistic"]: r["p_value"] for r in rows}
    shown = [r for r in rows if r["statistic"] in ("mean", "sd", "user_mean_sd")]
    fig = plots.plot_test_statistics([r["statistic"] for r in shown],
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


def _completion(report: CheckReport, fitted, test: Ratings, test_y: np.ndarray,
                num_samples: int, seed: int) -> None:
    movies = [m for m in BLOCK_MOVIES if m in fitted.movie_ids]
    users = [u for u in BLOCK_USERS if u in fitted.user_ids]
    if not movies or not users:
        log.info("no movie 4-20 or user 6-16 in this data: the 2017 figure is skipped")
        return
    movie_index = fitted.movie_ids.index_of(movies)
    user_index = fitted.user_ids.index_of(users)
    cells_m = np.repeat(movie_index, len(users))  # (block movies * block users,)
    cells_u = np.tile(user_index, len(movies))
    out = fitted.summaries(cells_m, cells_u, num_samples=num_samples, seed=seed)
    shape = (len(movies), len(users))

    observed, heldout = np.full(shape, np.nan), np.zeros(shape, bool)
    row = {m: i for i, m in enumerate(movie_index)}
    col = {u: j for j, u in enumerate(user_index)}
    train = fitted.encoder_ratings
    for m, u, y, is_test in [*zip(train.movie, train.user, train.rating, [False] * len(train)),
                             *zip(test.movie, test.user, test_y, [True] * len(test))]:
        if m in row and u in col:
            observed[row[m], col[u]] = y
            heldout[row[m], col[u]] = is_test
    fig = _plots().plot_completion(observed, out["mean"].reshape(shape),
                                   out["sd"].reshape(shape), movies, users,
                                   heldout=heldout,
                                   title=f"Movies {movies[0]}-{movies[-1]} x users "
                                         f"{users[0]}-{users[-1]} ({fitted.likelihood} "
                                         f"likelihood)")
    seen = np.isfinite(observed)
    report.add("The 2017 figure", "completion.png", fig,
               f"{int(seen.sum())} of {seen.size} cells observed ({int(heldout.sum())} held "
               f"out, dotted); predictive sd {np.mean(out['sd'][seen.ravel()]):.2f} on "
               f"observed cells, {np.mean(out['sd'][~seen.ravel()]):.2f} on the others."
               if seen.any() and (~seen).any() else
               f"{int(seen.sum())} of {seen.size} cells observed.")


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _markdown(report: CheckReport) -> str:
    s = report.summary
    title = "Prior predictive check" if report.kind == "prior" else "Posterior checks"
    lines = [f"# {title}: {s['likelihood']} likelihood, {s['dataset']} {s['split']}", "",
             f"{s['num_samples']} draws (seed {s['seed']}); "
             + (f"{s['num_heldout']} held-out ratings; " if s["num_heldout"] else "")
             + f"a sample of {s['num_train_sample']} of {s['num_train']} training ratings. "
             f"The ArviZ data object is [{NETCDF_NAME}]({NETCDF_NAME}); the numbers are in "
             f"[summary.json](summary.json).", ""]
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
