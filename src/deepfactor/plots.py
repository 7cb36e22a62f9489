"""Figures of the predictive checks. Each takes computed data and returns a Figure.

No function here computes a statistic (that is :mod:`deepfactor.diagnostics`) or shows a
figure: they build a :class:`matplotlib.figure.Figure` directly, without pyplot, so no
global figure state is touched and any backend (Agg in tests) can save it. The caller
saves it with ``fig.savefig(path)``.

Colours: observed data in dark grey, replications in blue, reference lines dashed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_value_distribution", "plot_binned_ppc", "plot_movie_variance",
           "plot_test_statistics", "plot_coverage", "plot_pit", "plot_reliability",
           "plot_kl", "plot_pareto_k", "plot_completion"]

OBSERVED, REPLICATED, REFERENCE = "0.25", "tab:blue", "tab:red"
#: Central band of the replications drawn around their median.
BAND = (0.05, 0.95)


def _figure(width: float = 6.0, height: float = 4.0, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _band(replicated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and the BAND quantiles over draws (axis 0) of ``replicated`` (S, K)."""
    lo, mid, hi = np.nanquantile(replicated, [BAND[0], 0.5, BAND[1]], axis=0)
    return lo, mid, hi


def plot_value_distribution(labels: Sequence[str], observed: np.ndarray,
                            replicated: np.ndarray, *, title: str = "Rating values") -> Figure:
    """Share of each rating value, observed (bars) against replicated (median and band).

    Parameters
    ----------
    labels : sequence of str, length K
        The value of each category (for example ``"1"``..``"5"``, ``"<1"``, ``">5"``).
    observed : ndarray, shape (K,)
    replicated : ndarray, shape (S, K)
        Share of each category in each replication.
    """
    fig, (ax,) = _figure()
    x = np.arange(len(labels))
    ax.bar(x, observed, color=OBSERVED, width=0.6, label="observed")
    lo, mid, hi = _band(replicated)
    ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", color=REPLICATED,
                capsize=4, label=f"replicated (median, {BAND[0]:.0%}-{BAND[1]:.0%})")
    ax.set_xticks(x, labels)
    ax.set(xlabel="rating", ylabel="share of ratings", title=title)
    ax.legend()
    return fig


def plot_binned_ppc(edges: np.ndarray, observed: np.ndarray, replicated: np.ndarray, *,
                    xlabel: str, title: str) -> Figure:
    """A histogram of observed values (bars) against replicated ones (median and band).

    Parameters
    ----------
    edges : ndarray, shape (K + 1,)
    observed : ndarray, shape (K,)
        Share of observed values in each bin.
    replicated : ndarray, shape (S, K)
        Share in each bin for each replication.
    """
    fig, (ax,) = _figure()
    centers, widths = (edges[1:] + edges[:-1]) / 2, np.diff(edges)
    ax.bar(centers, observed, width=widths, color=OBSERVED, alpha=0.6, label="observed")
    lo, mid, hi = _band(replicated)
    ax.fill_between(centers, lo, hi, step="mid", color=REPLICATED, alpha=0.25,
                    label=f"replicated {BAND[0]:.0%}-{BAND[1]:.0%}")
    ax.step(centers, mid, where="mid", color=REPLICATED, label="replicated median")
    ax.set(xlabel=xlabel, ylabel="share", title=title)
    ax.legend()
    return fig


def plot_movie_variance(counts: np.ndarray, observed: np.ndarray, replicated: np.ndarray,
                        *, title: str = "Per-movie rating variance") -> Figure:
    """Each movie's rating variance against its number of ratings, observed and replicated.

    Parameters
    ----------
    counts : ndarray of int, shape (M,)
        Ratings per movie in the checked set (movies with at least two).
    observed : ndarray, shape (M,)
    replicated : ndarray, shape (S, M)
        The variance per movie in each replication; the plot shows its mean over draws.
    """
    fig, (ax,) = _figure()
    ax.scatter(counts, observed, s=8, color=OBSERVED, alpha=0.6, label="observed")
    ax.scatter(counts, np.nanmean(replicated, axis=0), s=8, color=REPLICATED, alpha=0.6,
               label="replicated (mean over draws)")
    ax.set_xscale("log")
    ax.set(xlabel="ratings of the movie", ylabel="variance of its ratings", title=title)
    ax.legend()
    return fig


def plot_test_statistics(names: Sequence[str], observed: Sequence[float],
                         replicated: Sequence[np.ndarray], p_values: Sequence[float], *,
                         title: str = "Test statistics") -> Figure:
    """One panel per statistic: the replicated distribution and the observed value.

    Parameters
    ----------
    names : sequence of str, length T
    observed : sequence of float, length T
    replicated : sequence of ndarray, each of shape (S,)
    p_values : sequence of float, length T
    """
    fig, axes = _figure(width=3.2 * len(names), height=3.0, ncols=len(names))
    for ax, name, t_obs, t_rep, p in zip(axes, names, observed, replicated, p_values):
        ax.hist(t_rep, bins=20, color=REPLICATED, alpha=0.6)
        ax.axvline(t_obs, color=OBSERVED, linewidth=2)
        ax.set(title=f"{name}  (p = {p:.2f})", xlabel="T(y_rep); line: T(y)")
    fig.suptitle(title)
    return fig


def plot_coverage(levels: Sequence[float], coverage: Sequence[float],
                  tolerance: Sequence[float], *,
                  title: str = "Central predictive interval coverage") -> Figure:
    """Empirical against nominal coverage, with the binomial tolerance around nominal.

    Parameters
    ----------
    levels, coverage, tolerance : sequences of float, length L
    """
    fig, (ax,) = _figure(5.0, 4.5)
    levels, coverage, tolerance = map(np.asarray, (levels, coverage, tolerance))
    ax.plot([0, 1], [0, 1], "--", color=REFERENCE, label="nominal")
    ax.fill_between(levels, levels - tolerance, levels + tolerance, color=REFERENCE,
                    alpha=0.15, label="binomial tolerance")
    ax.plot(levels, coverage, "o-", color=REPLICATED, label="held-out")
    lo = max(0.0, float(min(levels.min(), coverage.min())) - 0.1)
    ax.set(xlim=(lo, 1), ylim=(lo, 1), xlabel="nominal level", ylabel="share inside",
           title=title)
    ax.legend()
    return fig


def plot_pit(edges: np.ndarray, counts: np.ndarray, band: tuple[float, float], *,
             title: str = "PIT of held-out ratings") -> Figure:
    """PIT histogram with the band a uniform PIT stays in.

    Parameters
    ----------
    edges : ndarray, shape (K + 1,)
    counts : ndarray, shape (K,)
    band : (low, high)
        Count band per bin under uniformity.
    """
    fig, (ax,) = _figure()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=REPLICATED,
           alpha=0.7, label="held-out ratings")
    ax.axhspan(band[0], band[1], color=REFERENCE, alpha=0.15, label="uniform band")
    ax.axhline((band[0] + band[1]) / 2, linestyle="--", color=REFERENCE)
    ax.set(xlim=(0, 1), xlabel="PIT  u = F(y)", ylabel="ratings", title=title)
    ax.legend()
    return fig


def plot_reliability(mean_prob: np.ndarray, frequency: np.ndarray, count: np.ndarray, *,
                     title: str = "Reliability of P(like)") -> Figure:
    """Observed frequency of likes against predicted probability, per bin.

    Parameters
    ----------
    mean_prob, frequency : ndarray, shape (K,)
        NaN for empty bins (not drawn).
    count : ndarray, shape (K,)
    """
    fig, (ax, ax_count) = _figure(9.0, 4.0, ncols=2)
    keep = count > 0
    ax.plot([0, 1], [0, 1], "--", color=REFERENCE, label="perfect calibration")
    ax.plot(mean_prob[keep], frequency[keep], "o-", color=REPLICATED, label="held-out")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability of a like",
           ylabel="observed frequency", title=title)
    ax.legend()
    ax_count.bar(np.arange(len(count)), count, color=OBSERVED)
    ax_count.set(xlabel="probability bin", ylabel="ratings", title="ratings per bin")
    return fig


def plot_kl(kl_movie: np.ndarray, kl_user: np.ndarray, threshold: float, *,
            title: str = "KL(q || prior) per latent dimension") -> Figure:
    """Mean KL per dimension for movies and users, on a log scale, with the threshold.

    Parameters
    ----------
    kl_movie, kl_user : ndarray, shape (total_dim,)
    threshold : float
        The activity threshold (nats).
    """
    fig, (ax,) = _figure(max(6.0, 0.35 * len(kl_movie)), 4.0)
    x = np.arange(len(kl_movie))
    floor = threshold / 100  # a collapsed dimension still shows as a stub
    for shift, kl, name, colour in ((-0.2, kl_movie, "movies", OBSERVED),
                                    (0.2, kl_user, "users", REPLICATED)):
        ax.bar(x + shift, np.maximum(kl, floor), width=0.4, color=colour, label=name)
    ax.axhline(threshold, linestyle="--", color=REFERENCE, label=f"active: > {threshold} nats")
    ax.set_yscale("log")
    ax.set_xticks(x, [str(d) for d in x])
    ax.set(xlabel="latent dimension", ylabel="mean KL (nats)", title=title)
    ax.legend()
    return fig


def plot_pareto_k(pareto_k: np.ndarray, good_k: float, *,
                  title: str = "PSIS-LOO Pareto k of training ratings") -> Figure:
    """Pareto k of each rating with the good_k, 0.7 and 1 thresholds.

    Parameters
    ----------
    pareto_k : ndarray, shape (n,)
    good_k : float
    """
    fig, (ax,) = _figure()
    ax.scatter(np.arange(len(pareto_k)), pareto_k, s=4, color=REPLICATED, alpha=0.5)
    for value, style in ((good_k, ":"), (0.7, "--"), (1.0, "-")):
        ax.axhline(value, linestyle=style, color=REFERENCE, label=f"k = {value:.2f}")
    ax.set(xlabel="training rating (sample)", ylabel="Pareto k", title=title)
    ax.legend()
    return fig


def plot_completion(observed: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                    movie_labels: Sequence[str], user_labels: Sequence[str], *,
                    heldout: np.ndarray | None = None, title: str = "") -> Figure:
    """A block of the rating matrix: observed, its predictive mean, its predictive sd.

    Parameters
    ----------
    observed : ndarray, shape (num_block_movies, num_block_users)
        Observed ratings, NaN where missing.
    mean, sd : ndarray, same shape
        Posterior predictive mean and sd of every cell.
    movie_labels, user_labels : sequences of str
        Raw ids of the rows (movies) and columns (users).
    heldout : ndarray of bool, same shape, optional
        Cells whose observed rating is held out (marked with a dot).
    """
    fig, axes = _figure(13.0, 4.8, ncols=3)
    finite = np.concatenate([observed[np.isfinite(observed)], mean.ravel()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0, 1)
    panels = ((observed, "observed", vmin, vmax, "viridis"),
              (mean, "posterior predictive mean", vmin, vmax, "viridis"),
              (sd, "posterior predictive sd", None, None, "magma"))
    for ax, (values, name, lo, hi, cmap) in zip(axes, panels):
        image = ax.imshow(np.ma.masked_invalid(values), vmin=lo, vmax=hi, cmap=cmap,
                          aspect="auto")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_xticks(np.arange(len(user_labels)), user_labels, fontsize=7)
        ax.set_yticks(np.arange(len(movie_labels)), movie_labels, fontsize=7)
        ax.set(xlabel="user id", ylabel="movie id", title=name)
    if heldout is not None and heldout.any():
        rows, cols = np.nonzero(heldout)
        axes[0].scatter(cols, rows, s=10, color="white", edgecolors="black",
                        label="held out")
        axes[0].legend(loc="upper right", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
