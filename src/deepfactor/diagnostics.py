"""Statistics of predictive checks in NumPy: coverage, PIT, p-values, reliability, KL, words.

Every function takes arrays already computed from posterior (or prior) predictive
draws, so it can be tested without a model. The draws live in :mod:`deepfactor.checks`,
the figures in :mod:`deepfactor.plots`. Shapes use ``S`` for draws and ``N`` for the
ratings checked. The ``read_*`` functions turn the numbers into the one-line readings of
``report.md``.

Conventions
    * A **Bayesian p-value** is ``P(T(y_rep) >= T(y))`` with ties counted half (the
      mid-p value), so that for a discrete statistic it is not biased upward. A value
      near 0 means the observed statistic is larger than nearly all replications; near 1,
      smaller.
    * **Coverage** of the central ``level`` interval is read from the probability integral
      transform ``u = F(y)`` of each observed rating under its predictive: ``y`` lies in
      the central interval exactly when ``|u - 1/2| <= level / 2``. For a discrete
      predictive ``u`` is the randomized PIT (below), which makes the coverage exactly
      nominal for a calibrated model; for a continuous one it is the plain interval
      coverage.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "COVERAGE_LEVELS", "ACTIVE_KL_NATS", "MIN_USER_RATINGS", "randomized_pit",
    "interval_coverage", "coverage_tolerance", "pit_histogram", "reliability",
    "elpd_from_log_lik", "bayesian_p_value", "value_grid", "value_shares",
    "entity_means", "entity_variances", "ppc_statistics", "kl_per_dimension",
    "pareto_k_counts", "common_edges", "binned_shares", "percent_key", "read_coverage",
    "read_pit", "read_pareto", "read_p_value",
]

#: Central interval levels whose coverage is reported.
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
#: A latent dimension with a mean KL(q || prior) below this (nats) is counted collapsed.
#: KL 0.05 is a posterior mean that moves about 0.3 prior sds across entities (at unit
#: scale, KL = mu^2 / 2). It was 0.01 until the sketched encoder inputs: their encoders
#: leave a dimension the decoder ignores at 0.003-0.015 nats, against 0.25 nats and more
#: for the dimensions in use (Normal model, u1), so 0.01 counted 18 of 20 as active.
ACTIVE_KL_NATS = 0.05
#: Users with fewer ratings in the checked set are left out of per-user statistics.
MIN_USER_RATINGS = 5
#: At most this many distinct integer values make data "discrete" for bar plots and shares.
MAX_DISCRETE_VALUES = 20


def randomized_pit(cdf_below: np.ndarray, cdf_at: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """The randomized probability integral transform ``u = F(y-) + V (F(y) - F(y-))``.

    Parameters
    ----------
    cdf_below, cdf_at : ndarray, shape (N,)
        ``P(Y < y)`` and ``P(Y <= y)`` under each rating's predictive. For a continuous
        predictive the two are equal and ``u = F(y)``.
    rng : numpy.random.Generator
        Draws ``V ~ Uniform(0, 1)``, one per rating.

    Returns
    -------
    ndarray, shape (N,)
        Uniform on (0, 1) when ``y`` comes from its predictive, discrete or not.

    References
    ----------
    Czado, Gneiting and Held (2009), Predictive model assessment for count data,
    Biometrics 65(4).
    """
    cdf_below, cdf_at = np.asarray(cdf_below, float), np.asarray(cdf_at, float)
    if cdf_below.shape != cdf_at.shape:
        raise ValueError(f"cdf_below has shape {cdf_below.shape}, cdf_at {cdf_at.shape}")
    return cdf_below + rng.uniform(size=cdf_at.shape) * (cdf_at - cdf_below)


def interval_coverage(pit: np.ndarray, levels=COVERAGE_LEVELS) -> dict[float, float]:
    """Share of ratings inside each central predictive interval; see the module notes.

    Parameters
    ----------
    pit : ndarray, shape (N,)
    levels : sequence of float in (0, 1)

    Returns
    -------
    dict
        ``{level: share}``.
    """
    pit = np.asarray(pit, float)
    return {float(a): float(np.mean(np.abs(pit - 0.5) <= a / 2)) for a in levels}


def coverage_tolerance(level: float, num_ratings: int, z: float = 4.0) -> float:
    """``z`` binomial standard errors of a coverage share: ``z sqrt(a (1 - a) / N)``.

    Under a calibrated predictive each rating is inside the central ``a`` interval
    independently with probability ``a`` (given the predictive), so the share over
    ``N`` ratings is Binomial(N, a) / N. ``z = 4`` leaves a two-sided false-alarm
    probability of about 6e-5 per level (normal approximation).
    """
    return z * math.sqrt(level * (1 - level) / max(num_ratings, 1))


def pit_histogram(pit: np.ndarray, bins: int = 20, z: float = 2.0) -> dict[str, np.ndarray]:
    """Counts of the PIT in equal bins, with the band a uniform PIT stays in.

    Returns
    -------
    dict
        ``edges`` (bins + 1,), ``counts`` (bins,), and ``expected``, ``band_low``,
        ``band_high`` (floats): the uniform count per bin and ``z`` binomial sds about it.
    """
    pit = np.asarray(pit, float)
    counts, edges = np.histogram(pit, bins=bins, range=(0.0, 1.0))
    expected = len(pit) / bins
    half = z * math.sqrt(len(pit) * (1 / bins) * (1 - 1 / bins))
    return {"edges": edges, "counts": counts, "expected": expected,
            "band_low": expected - half, "band_high": expected + half}


def reliability(prob: np.ndarray, outcome: np.ndarray, bins: int = 10) -> dict:
    """Reliability diagram data, expected calibration error and Brier score for 0/1 data.

    Parameters
    ----------
    prob : ndarray, shape (N,)
        Predictive probability of a 1 (a like).
    outcome : ndarray, shape (N,)
        Observed 0/1.
    bins : int
        Equal-width bins of ``prob`` on [0, 1].

    Returns
    -------
    dict
        ``edges``, and per bin ``count``, ``mean_prob``, ``frequency`` (NaN for an empty
        bin); ``ece = sum_b (n_b / N) |frequency_b - mean_prob_b|``;
        ``brier = mean (prob - outcome)^2``.
    """
    prob, outcome = np.asarray(prob, float), np.asarray(outcome, float)
    if prob.shape != outcome.shape:
        raise ValueError(f"prob has shape {prob.shape}, outcome {outcome.shape}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)  # bin of each rating
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, weights=prob, minlength=bins) / count
        frequency = np.bincount(which, weights=outcome, minlength=bins) / count
    gap = np.where(count > 0, np.abs(frequency - mean_prob), 0.0)
    return {"edges": edges, "count": count, "mean_prob": mean_prob, "frequency": frequency,
            "ece": float(np.sum(count / max(len(prob), 1) * gap)),
            "brier": float(np.mean((prob - outcome) ** 2))}


def elpd_from_log_lik(log_lik: np.ndarray) -> dict[str, float | np.ndarray]:
    """Expected log pointwise predictive density of held-out ratings from draws.

    Parameters
    ----------
    log_lik : ndarray, shape (S, N)
        ``log p(y_k | theta_s)`` for draw ``s`` and held-out rating ``k``.

    Returns
    -------
    dict
        ``pointwise`` (N,): ``log (1/S) sum_s p(y_k | theta_s)``; ``elpd`` (sum, nats),
        ``se`` (``sqrt(N) sd(pointwise)``), ``per_rating`` (mean) and ``num_ratings``.
    """
    log_lik = np.asarray(log_lik, float)
    top = log_lik.max(axis=0)
    pointwise = top + np.log(np.mean(np.exp(log_lik - top), axis=0))  # (N,)
    n = pointwise.size
    return {"pointwise": pointwise, "elpd": float(pointwise.sum()),
            "se": float(math.sqrt(n) * pointwise.std(ddof=1)) if n > 1 else float("nan"),
            "per_rating": float(pointwise.mean()) if n else float("nan"), "num_ratings": n}


def bayesian_p_value(t_observed: float, t_replicated: np.ndarray) -> float:
    """Mid-p value ``P(T_rep > T_obs) + P(T_rep = T_obs) / 2`` over the draws ``(S,)``."""
    t_replicated = np.asarray(t_replicated, float)
    return float(np.mean(t_replicated > t_observed) + 0.5 * np.mean(t_replicated == t_observed))


def value_grid(observed: np.ndarray) -> np.ndarray | None:
    """Every integer from the smallest to the largest of integer-valued data, else None.

    None also when that range holds more than :data:`MAX_DISCRETE_VALUES` values: the
    data are then treated as continuous (histograms instead of shares per value).
    """
    observed = np.asarray(observed, float)
    if observed.size == 0 or np.any(observed != np.round(observed)):
        return None
    lo, hi = observed.min(), observed.max()
    return np.arange(lo, hi + 1) if hi - lo + 1 <= MAX_DISCRETE_VALUES else None


def value_shares(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Share of each grid value, then below and above the grid, in each row.

    Values are rounded to the nearest integer first, so that continuous replications
    of star ratings (Normal likelihood) are read as the nearest star.

    Parameters
    ----------
    values : ndarray, shape (N,) or (S, N)
    grid : ndarray, shape (K,)
        Sorted integer values.

    Returns
    -------
    ndarray, shape (K + 2,) or (S, K + 2)
        Columns: each grid value, then "below the smallest", "above the largest".
    """
    values = np.round(np.asarray(values, float))
    shares = [np.mean(values == g, axis=-1) for g in grid]
    shares += [np.mean(values < grid[0], axis=-1), np.mean(values > grid[-1], axis=-1)]
    return np.stack(shares, axis=-1)


def entity_means(values: np.ndarray, entity: np.ndarray, num_entities: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean value per entity (NaN with no rating) and the count per entity.

    Parameters
    ----------
    values : ndarray, shape (N,) or (S, N)
    entity : ndarray of int, shape (N,)

    Returns
    -------
    means : ndarray, shape (num_entities,) or (S, num_entities)
    counts : ndarray of int, shape (num_entities,)
    """
    counts = np.bincount(entity, minlength=num_entities)
    rows = np.atleast_2d(np.asarray(values, float))
    sums = np.stack([np.bincount(entity, weights=r, minlength=num_entities) for r in rows])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts  # (S, num_entities)
    return (means[0] if np.ndim(values) == 1 else means), counts


def entity_variances(values: np.ndarray, entity: np.ndarray, num_entities: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Sample variance (ddof 1) per entity, NaN below two ratings; and the counts."""
    means, counts = entity_means(values, entity, num_entities)
    squares, _ = entity_means(np.asarray(values, float) ** 2, entity, num_entities)
    with np.errstate(invalid="ignore", divide="ignore"):
        variances = (squares - means**2) * counts / (counts - 1)
    return np.where(counts >= 2, np.maximum(variances, 0.0), np.nan), counts


def ppc_statistics(observed: np.ndarray, replicated: np.ndarray, user: np.ndarray,
                   num_users: int, grid: np.ndarray | None = None) -> list[dict]:
    """Test statistics of observed and replicated ratings, with Bayesian p-values.

    Statistics: ``mean``; ``sd``; ``share_<v>`` for each value ``v`` of ``grid`` (the
    share of ratings equal to ``v``, replications rounded to the nearest integer);
    ``user_mean_sd``, the spread (sd) of the per-user mean rating over users with at
    least :data:`MIN_USER_RATINGS` ratings in the set.

    Parameters
    ----------
    observed : ndarray, shape (N,)
    replicated : ndarray, shape (S, N)
    user : ndarray of int, shape (N,)
    num_users : int
    grid : ndarray, optional
        Values for the shares (:func:`value_grid` of ``observed``); None: no shares.

    Returns
    -------
    list of dict
        One per statistic: ``statistic``, ``observed``, ``replicated_mean``,
        ``replicated_q05``, ``replicated_q95``, ``p_value``; and ``replicated`` (S,).
    """
    observed, replicated = np.asarray(observed, float), np.asarray(replicated, float)
    if replicated.ndim != 2 or replicated.shape[1] != observed.shape[0]:
        raise ValueError(f"replicated must be (S, {observed.shape[0]}), got {replicated.shape}")
    pairs = {"mean": (observed.mean(), replicated.mean(axis=1)),
             "sd": (observed.std(), replicated.std(axis=1))}
    if grid is not None:
        shares_obs, shares_rep = value_shares(observed, grid), value_shares(replicated, grid)
        for k, g in enumerate(grid):
            pairs[f"share_{g:g}"] = (shares_obs[k], shares_rep[:, k])

    obs_means, counts = entity_means(observed, user, num_users)
    keep = counts >= MIN_USER_RATINGS
    if keep.sum() >= 2:
        rep_means, _ = entity_means(replicated, user, num_users)
        pairs["user_mean_sd"] = (obs_means[keep].std(), rep_means[:, keep].std(axis=1))

    rows = []
    for name, (t_obs, t_rep) in pairs.items():
        rows.append({"statistic": name, "observed": float(t_obs),
                     "replicated_mean": float(t_rep.mean()),
                     "replicated_q05": float(np.quantile(t_rep, 0.05)),
                     "replicated_q95": float(np.quantile(t_rep, 0.95)),
                     "p_value": bayesian_p_value(t_obs, t_rep), "replicated": t_rep})
    return rows


def kl_per_dimension(loc: np.ndarray, scale: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over rated entities of KL(N(loc, scale^2) || N(0, 1)) per latent dimension.

    .. math::  KL_d = \\tfrac12 (\\sigma_d^2 + \\mu_d^2 - 1) - \\log \\sigma_d

    Parameters
    ----------
    loc, scale : ndarray, shape (num_entities, total_dim)
        Each entity's q.
    counts : ndarray, shape (num_entities,)
        Training ratings per entity; entities with none have q = prior and are left out,
        so that cold entities do not dilute the average.

    Returns
    -------
    ndarray, shape (total_dim,)
        In nats; NaN if no entity has a rating.
    """
    loc, scale = np.asarray(loc, float), np.asarray(scale, float)
    if loc.shape != scale.shape or loc.shape[0] != len(counts):
        raise ValueError(f"loc {loc.shape}, scale {scale.shape} and counts "
                         f"({len(counts)},) do not match")
    rated = np.asarray(counts) > 0
    kl = 0.5 * (scale**2 + loc**2 - 1.0) - np.log(scale)  # (num_entities, total_dim)
    if not rated.any():
        return np.full(loc.shape[1], np.nan)
    return kl[rated].mean(axis=0)


def pareto_k_counts(pareto_k: np.ndarray, good_k: float) -> dict[str, int]:
    """How many Pareto k fall in each reliability band of PSIS.

    ``good`` (k <= good_k: the importance-sampling estimate is reliable; ArviZ sets
    ``good_k = min(1 - 1/log10(S), 0.7)``, 0.5 for S = 100), ``ok`` (good_k < k <= 0.7:
    usable with more draws), ``bad`` (0.7 < k <= 1: that rating's LOO estimate is
    unreliable), ``very_bad`` (k > 1: its importance ratios have no finite mean); and
    ``above_0_7`` (bad + very bad).
    """
    k = np.asarray(pareto_k, float)
    return {"good": int(np.sum(k <= good_k)),
            "ok": int(np.sum((k > good_k) & (k <= 0.7))),
            "bad": int(np.sum((k > 0.7) & (k <= 1.0))),
            "very_bad": int(np.sum(k > 1.0)),
            "above_0_7": int(np.sum(k > 0.7))}


# -- histograms shared by observed and replicated data ----------------------------------


def common_edges(observed: np.ndarray, replicated: np.ndarray, bins: int) -> np.ndarray:
    """Equal bins covering the observed values and 99.8% of the replicated ones."""
    lo, hi = np.nanquantile(replicated, [0.001, 0.999])
    lo, hi = min(lo, np.nanmin(observed)), max(hi, np.nanmax(observed))
    return np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of each row's finite values per bin (values beyond the edges go to the end bins).

    Parameters
    ----------
    values : ndarray, shape (N,) or (S, N)
    edges : ndarray, shape (K + 1,)

    Returns
    -------
    ndarray, shape (K,) or (S, K)
    """
    rows = np.atleast_2d(np.asarray(values, float))
    shares = []
    for r in rows:
        r = np.clip(r[np.isfinite(r)], edges[0], edges[-1])
        shares.append(np.histogram(r, bins=edges)[0] / max(r.size, 1))
    out = np.stack(shares)
    return out[0] if np.ndim(values) == 1 else out


# -- plain-words readings of the numbers above --------------------------------------------


def percent_key(level: float) -> str:
    """The key of a coverage level in ``summary.json``: 0.9 -> ``"90"``."""
    return f"{round(level * 100):d}"


def read_coverage(coverage: dict[float, float], sd: dict[float, float],
                  randomized: bool) -> str:
    """One sentence on interval coverage; a level is off beyond 2 binomial sds."""
    parts = ", ".join(f"{percent_key(a)}%: {c:.1%}" for a, c in coverage.items())
    narrow = [percent_key(a) + "%" for a, c in coverage.items() if c < a - 2 * sd[a]]
    wide = [percent_key(a) + "%" for a, c in coverage.items() if c > a + 2 * sd[a]]
    verdicts = ([f"too narrow (over-confident) at {', '.join(narrow)}"] if narrow else []) + \
        ([f"too wide (under-confident) at {', '.join(wide)}"] if wide else [])
    verdict = "; ".join(verdicts) if verdicts else "every level within 2 binomial sds of nominal"
    note = " (randomized PIT, exact for discrete data)" if randomized else ""
    return f"Share of held-out ratings inside central intervals{note}: {parts}; {verdict}."


def read_pit(pit: np.ndarray, integers_under_continuous: bool) -> str:
    """One sentence on a PIT histogram: its two 5% tails and its mean.

    Under calibration 5% of the PIT lies below 0.05 and 5% above 0.95. More than that
    (by over 2 binomial sds) in a tail means the observed values fall beyond the
    predictive's quantile more often than it allows (too narrow on that side); less, that
    it reaches further than the data (too wide, or mass where no data can be, such as
    above 5 stars).
    """
    pit = np.asarray(pit, float)
    low, high, mean = float(np.mean(pit < 0.05)), float(np.mean(pit > 0.95)), float(pit.mean())

    sd = math.sqrt(0.05 * 0.95 / max(pit.size, 1))

    def tail(share: float, where: str) -> str:
        verdict = ("too many: that tail of the predictive is too light"
                   if share > 0.05 + 2 * sd else
                   "too few: that tail reaches further than the data"
                   if share < 0.05 - 2 * sd else "about right")
        return f"{share:.1%} {where} ({verdict})"

    bias = ("predictions too low" if mean > 0.53 else
            "predictions too high" if mean < 0.47 else "no overall bias")
    extra = (" The ratings are integers under a continuous predictive, which reaches past "
             "the ends of the rating scale." if integers_under_continuous else "")
    return (f"Flat if calibrated. Of the held-out ratings, "
            f"{tail(low, 'fall below their predictive 5% quantile')} and "
            f"{tail(high, 'above the 95% quantile')}, 5% each if calibrated; mean PIT "
            f"{mean:.3f} (0.5), {bias}.{extra}")


def read_pareto(counts: dict[str, int], num_ratings: int, good_k: float) -> str:
    """One sentence on Pareto k counts (from :func:`pareto_k_counts`)."""
    n = max(num_ratings, 1)
    return (f"{counts['above_0_7']} of {num_ratings} training ratings "
            f"({counts['above_0_7'] / n:.1%}) have Pareto k > 0.7: for them, leaving the "
            f"rating out changes the posterior so much that importance sampling from the "
            f"full-data draws cannot estimate its leave-one-out density, so the LOO total "
            f"is unreliable there ({counts['very_bad']} have k > 1). {counts['good']} are "
            f"at or below good_k = {good_k:.2f}, reliable with this number of draws.")


def read_p_value(p: float) -> str:
    """Plain words for a Bayesian p-value ``P(T(y_rep) >= T(y))``."""
    if p < 0.025:
        return "observed higher than almost all replications: not reproduced"
    if p > 0.975:
        return "observed lower than almost all replications: not reproduced"
    return "consistent with the replications"
