"""Reference predictors fitted on the same training ratings, so every run reports a ratio.

* :class:`GlobalMean`: every pair gets the training mean.
* :class:`BiasModel`: ``mu + b_movie[i] + b_user[j]``, the biases fitted by ridge
  regression (penalty ``lam`` on each bias) with a few rounds of exact alternating
  updates, as in the classic baseline predictors of collaborative filtering.

Both are point predictors. To give them a log predictive density they are turned into
plug-in predictive distributions of the run's family: Normal with the training
residual sd, Poisson with the predicted mean as rate, Bernoulli with the predicted
mean clipped into ``[0.001, 0.999]`` (:func:`as_probability`) as probability, ordinal
with that Normal discretized onto the levels (each level gets the Normal's mass between
the midpoints to its neighbours; the lowest and highest levels take the tails).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["GlobalMean", "BiasModel", "plugin_lpd", "level_bins", "as_probability"]

_PROBABILITY_FLOOR = 1e-3  # a point predictor of 0 or 1 would give lpd = -inf
_MIN_RATE = 1e-3


def as_probability(prediction: np.ndarray) -> np.ndarray:
    """A point prediction of a 0/1 rating as the plug-in Bernoulli's probability.

    The bias model is linear, so it can predict below 0 or above 1; clipped into
    ``[0.001, 0.999]`` (0 or 1 would make the log-loss of a miss infinite). The same
    probability feeds the reference's log-loss, AUC and accuracy and its lpd, so that
    its log-loss is exactly minus its lpd, as for the fitted model.
    """
    return np.clip(prediction, _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)


class GlobalMean:
    """Predicts the mean of the training targets for every pair."""

    name = "global_mean"

    def fit(self, movie: np.ndarray, user: np.ndarray, target: np.ndarray) -> GlobalMean:
        self.mu = float(np.mean(target))
        self.residual_sd = float(np.std(target - self.mu))
        return self

    def predict(self, movie: np.ndarray, user: np.ndarray) -> np.ndarray:
        return np.full(len(movie), self.mu)


class BiasModel:
    """mu + b_movie + b_user, ridge-penalized biases, fitted by alternating exact updates.

    Parameters
    ----------
    lam : float
        Ridge penalty on each bias (in units of squared rating), shrinking the biases
        of entities with few ratings towards zero.
    iterations : int
        Rounds of alternating updates; the objective is convex, and a handful suffice.
    """

    name = "bias"

    def __init__(self, lam: float = 5.0, iterations: int = 10):
        self.lam, self.iterations = lam, iterations

    def fit(self, movie, user, target, num_movies: int | None = None,
            num_users: int | None = None) -> BiasModel:
        num_movies = num_movies or int(movie.max()) + 1
        num_users = num_users or int(user.max()) + 1
        self.mu = float(np.mean(target))
        self.b_movie, self.b_user = np.zeros(num_movies), np.zeros(num_users)
        n_movie = np.bincount(movie, minlength=num_movies)
        n_user = np.bincount(user, minlength=num_users)
        for _ in range(self.iterations):
            residual = target - self.mu - self.b_user[user]
            self.b_movie = np.bincount(movie, residual, num_movies) / (n_movie + self.lam)
            residual = target - self.mu - self.b_movie[movie]
            self.b_user = np.bincount(user, residual, num_users) / (n_user + self.lam)
        self.residual_sd = float(np.std(target - self._raw(movie, user)))
        return self

    def _raw(self, movie, user):
        def bias(b, idx):  # entities beyond the fitted ones (cold start) get 0
            inside = idx < len(b)
            return np.where(inside, b[np.where(inside, idx, 0)], 0.0)
        return self.mu + bias(self.b_movie, movie) + bias(self.b_user, user)

    def predict(self, movie: np.ndarray, user: np.ndarray) -> np.ndarray:
        return self._raw(movie, user)


def plugin_lpd(likelihood: str, target: np.ndarray, prediction: np.ndarray,
               residual_sd: float, levels=None) -> np.ndarray:
    """log p(target | point prediction) under the family's plug-in distribution; (N,).

    ``levels`` (the ordinal rating values, increasing) is used by ``"ordinal"`` only.
    """
    if likelihood == "ordinal":
        return _discretized_normal_lpd(target, prediction, residual_sd, np.asarray(levels, float))
    if likelihood == "normal":
        return stats.norm.logpdf(target, loc=prediction, scale=residual_sd)
    if likelihood == "poisson":
        return stats.poisson.logpmf(target, np.maximum(prediction, _MIN_RATE))
    p = as_probability(prediction)
    return np.where(target > 0.5, np.log(p), np.log1p(-p))


def level_bins(target: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bin of each target's level: from the midpoint to the level below to the one above.

    The outer bins reach to minus and plus infinity, so that the bins cover the real line
    and a continuous predictive's masses over them sum to one.

    Returns
    -------
    lower, upper : ndarray, shape (N,) each
    """
    edges = np.concatenate([[-np.inf], (levels[:-1] + levels[1:]) / 2, [np.inf]])
    index = np.clip(np.searchsorted(levels, np.asarray(target) - 1e-9), 0, len(levels) - 1)
    return edges[index], edges[index + 1]


def _discretized_normal_lpd(target: np.ndarray, prediction: np.ndarray, sd: float,
                            levels: np.ndarray) -> np.ndarray:
    """log of the Normal(prediction, sd) mass of the bin around each target's level."""
    lower, upper = level_bins(target, levels)
    mass = (stats.norm.cdf(upper, loc=prediction, scale=sd)
            - stats.norm.cdf(lower, loc=prediction, scale=sd))
    return np.log(np.maximum(mass, 1e-12))
