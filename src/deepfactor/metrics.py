"""Held-out metrics of a predictive distribution, by likelihood family.

Every function takes aligned arrays of shape ``(N,)``: the observed targets, the
posterior predictive mean (for Bernoulli, the probability of a like) and, when
available, the log predictive density of each target. The keys of the returned
dicts are the stable names documented in the README, read by other programs.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

__all__ = ["rating_metrics", "poisson_deviance", "METRIC_KEYS"]

#: Metric keys per likelihood (``lpd`` and ``num_ratings`` are always present).
METRIC_KEYS = {
    "normal": ("rmse", "mae"),
    "poisson": ("rmse", "deviance"),
    "bernoulli": ("auc", "log_loss", "accuracy"),
    "ordinal": ("rmse", "mae"),
}

# log_loss and the reference predictors' lpd need probabilities strictly inside (0, 1).
_PROBABILITY_FLOOR = 1e-6


def poisson_deviance(target: np.ndarray, mean: np.ndarray) -> float:
    """Mean Poisson deviance, 2 [y log(y / mu) - (y - mu)] with 0 log 0 = 0."""
    mean = np.maximum(mean, _PROBABILITY_FLOOR)
    ratio_term = np.where(target > 0, target * np.log(np.where(target > 0, target, 1) / mean), 0.0)
    return float(np.mean(2 * (ratio_term - (target - mean))))


def rating_metrics(likelihood: str, target: np.ndarray, mean: np.ndarray,
                   lpd: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Metrics of one predictor on one set of ratings.

    Parameters
    ----------
    likelihood : {"normal", "poisson", "bernoulli", "ordinal"}
    target, mean : ndarray, shape (N,)
    lpd : ndarray, shape (N,), optional
        log p(r_k | training data) per rating, nats.

    Returns
    -------
    dict
        ``num_ratings``, the family's keys of :data:`METRIC_KEYS`, and ``lpd``: the
        mean log predictive density per rating (None without ``lpd``). A metric that is
        undefined on these ratings (AUC with one class, anything on zero ratings) is None.
    """
    target = np.asarray(target, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    out: dict[str, float | int | None] = {"num_ratings": int(len(target))}
    if len(target) == 0:
        out.update({k: None for k in METRIC_KEYS[likelihood]}, lpd=None)
        return out
    error = mean - target
    if likelihood in ("normal", "poisson", "ordinal"):
        out["rmse"] = float(np.sqrt(np.mean(error**2)))
    if likelihood in ("normal", "ordinal"):
        out["mae"] = float(np.mean(np.abs(error)))
    elif likelihood == "poisson":
        out["deviance"] = poisson_deviance(target, mean)
    elif likelihood == "bernoulli":
        p = np.clip(mean, _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
        both = len(np.unique(target)) == 2
        out["auc"] = float(roc_auc_score(target, p)) if both else None
        out["log_loss"] = float(log_loss(target, p, labels=[0.0, 1.0]))
        out["accuracy"] = float(np.mean((p > 0.5) == (target > 0.5)))
    out["lpd"] = None if lpd is None else float(np.mean(lpd))
    return out
