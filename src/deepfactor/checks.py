"""Predictive draws and the ArviZ data object built from them: the ArviZ side of the checks.

This is the only module that imports ArviZ (0.23, ``InferenceData``), so the move to
ArviZ 1.x (``xarray.DataTree``, Python 3.12) stays a local change. Pyro's ArviZ converter
needs an MCMC object; SVI draws are independent, so they are stored as **one chain of
S draws**, built with ``az.from_dict``.

It holds :func:`draw_predictive` (with :class:`PredictiveDraws`),
:func:`to_inference_data`, :func:`save_netcdf` and :func:`psis_loo`. It does **not** hold
the checks of a run, their sections, figures and readings, the other files of
``RUN/checks/``, or posterior collapse: those are in :mod:`deepfactor.check_report`,
which calls this module and imports no ArviZ.

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
    scored as held-out data directly. Discrete families with whole-number values store
    int64 draws, so ArviZ plots them as discrete; ordinal levels that are not whole
    numbers (half stars) are stored as floats, which ArviZ plots as continuous. A prior
    check writes ``prior`` and ``prior_predictive`` instead, on the training sample,
    under the name ``rating``.

Simplified
    * PSIS-LOO treats the draws of q as posterior draws; q is an amortized
      approximation whose encoders read the left-out rating itself. High Pareto k flags
      where that matters.
    * LOO runs on a sample of the training ratings (``train_sample``, 20,000 by
      default) because ArviZ 0.23 has no subsampled LOO; the total is extrapolated
      with its sampling standard error.
    * ``sigma`` (Normal) is a learned point estimate, constant over the draws. With a
      scale per pair (``model.pair_scale``) it is the shared factor only: a pair's sd is
      ``sigma s``, and ``s`` is not exported.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import diagnostics as dg
from .data.ratings import IdIndex
from .likelihoods import Likelihood, NormalLikelihood
from .model import MatrixFactorization
from .predict import DEFAULT_CHUNK, Posterior

with warnings.catch_warnings():
    # arviz 0.23 announces its 1.x refactor on import, once a day (the message starts
    # with a newline); nothing for a user of `deepfactor check` to act on
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor",
                            category=FutureWarning)
    import arviz as az

__all__ = ["PredictiveDraws", "InferenceData", "draw_predictive", "to_inference_data",
           "save_netcdf", "psis_loo", "RATING", "RATING_TRAIN", "NETCDF_NAME"]

#: The data object's type; the one name to change for ArviZ 1.x (``xarray.DataTree``).
InferenceData = az.InferenceData

RATING, RATING_TRAIN = "rating", "rating_train"
SET_DIMS = {"heldout": "heldout", "train": "train"}
#: Draws decoded together; with the pair chunk, this bounds the memory of the draws.
DRAW_BLOCK = 25
NETCDF_NAME = "predictive.nc"


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
        ``y_rep[s, k] ~ p(r | eta[s, k])`` (int64 for discrete families whose values are
        whole numbers; half-star ordinal levels stay floats).
    log_lik : ndarray of float64, shape (S, N)
        ``log p(observed[k] | eta[s, k])``.
    pit : ndarray of float64, shape (N,)
        PIT of each observed value under the S-draw predictive mixture; randomized for
        the discrete families (see :func:`diagnostics.randomized_pit`).
    mean, sd : ndarray of float64, shape (N,)
        Predictive mean (Bernoulli: probability of a like) and sd of the mixture.
    mean_eta : ndarray of float64, shape (S,)
        Mean of ``eta`` (of ``mu``, with a scale per pair) over these ratings, per draw.
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
    levels = getattr(model.likelihood, "levels", None)  # ordinal: may be half stars
    acc = _Accumulator(num_samples, len(movie_all), len(names),
                       discrete=not isinstance(model.likelihood, NormalLikelihood),
                       whole=levels is None or bool(torch.all(levels == levels.round())))

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

    def __init__(self, num_samples: int, n: int, num_sets: int, discrete: bool,
                 whole: bool = True):
        self.num_samples, self.discrete = num_samples, discrete
        # int64 would truncate half-star levels (3.5 -> 3)
        self.replicated = np.empty((num_samples, n),
                                   np.int64 if discrete and whole else np.float32)
        self.log_lik = np.empty((num_samples, n))
        self.eta_sum = np.zeros((num_samples, num_sets))  # sum of eta per draw and set
        # sums over draws, per rating: CDF below and at y, mixture moments
        self.sums = {k: np.zeros(n) for k in ("below", "at", "mean", "mean_sq", "var")}

    def add(self, likelihood: Likelihood, block: slice, part: slice, eta: torch.Tensor,
            y: torch.Tensor, set_of: torch.Tensor) -> None:
        """Record draws ``block`` of pairs ``part``: ``eta`` (b, c) (or (b, c, 2) with a
        scale per pair), ``y`` and ``set_of`` (c,)."""
        location = likelihood.location(eta)  # (b, c): eta, or mu
        y = y.expand_as(location)
        d = likelihood.distribution(eta)
        self.replicated[block, part] = d.sample().numpy()
        self.log_lik[block, part] = d.log_prob(y).double().numpy()
        below, at = likelihood.cdf_below_at(eta, y)
        for key, value in (("below", below), ("at", at), ("mean", d.mean),
                           ("mean_sq", d.mean**2), ("var", d.variance)):
            self.sums[key][part] += value.double().sum(0).numpy()
        eta_sets = torch.zeros(eta.shape[0], self.eta_sum.shape[1], dtype=torch.float64)
        self.eta_sum[block] += eta_sets.index_add_(1, set_of, location.double()).numpy()

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
    _assign_raw_ids(idata, variables.values(), movie_ids, user_ids)
    return idata


def _assign_raw_ids(idata: az.InferenceData, dims_draws, movie_ids: IdIndex,
                    user_ids: IdIndex) -> None:
    """Raw ids as coords ``<dim>_movie``, ``<dim>_user`` in every group with ``dim``.

    ``dims_draws`` holds (dim, PredictiveDraws) pairs; ``idata`` is changed in place.
    """
    raw = {dim: {"movie": movie_ids.raw_of(d.movie).astype(str),
                 "user": user_ids.raw_of(d.user).astype(str)}
           for dim, d in dims_draws}
    for group in idata.groups():
        ds = getattr(idata, group)
        extra = {f"{dim}_{kind}": (dim, values) for dim, kinds in raw.items()
                 if dim in ds.dims for kind, values in kinds.items()}
        if extra:
            setattr(idata, group, ds.assign_coords(extra))


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
