"""Shrinkage: fewer ratings, wider posteriors and wider predictive intervals?

Question
    The Bayesian story says that an entity with few ratings keeps a posterior close to
    the prior N(0, I), so its latent is uncertain and so are its predictions. Does the
    fitted amortized guide show this? We plot, against the number of training ratings
    of each user (and movie):
    * the posterior sd of the user's latent, averaged over the active dimensions;
    * the posterior predictive sd of that user's held-out ratings, and the sd of the
      predicted mean ``E[r | eta]`` alone, labelled "sd of the predicted mean" (the
      part that is posterior uncertainty, without the observation noise);
    * the same predictive sds against the movie's number of ratings.
Data and split
    MovieLens 100K u1.base / u1.test (``--split``); ``--quick``: the built-in synthetic
    data (100 movies x 80 users), seconds.
Model
    ``models/gaussian.toml`` fitted by :func:`deepfactor.fit`.
Outputs (under ``--out``)
    ``shrinkage.png`` and ``shrinkage.csv``/``.md``: medians in bins of the number of
    ratings, with Spearman's rank correlation of each relationship.
Simplified
    One fit and one seed. The guide is amortized, so an encoder's sd is a learned
    function of the entity's ratings: it need not shrink as the exact posterior would,
    and that is what the figure checks. Active dimensions are those whose mean KL
    exceeds 0.05 nats for both movies and users (:func:`deepfactor.check_report.latent_collapse`).
References
    Gelman et al., Bayesian Data Analysis (3rd ed.), ch. 5 (hierarchical shrinkage);
    Salakhutdinov & Mnih (2008), Bayesian probabilistic matrix factorization.

Run: ``python analysis/shrinkage.py [--quick] [--out runs/shrinkage]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--out", "out"]

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from deepfactor.predict import chunks, draw_eta  # noqa: E402

EDGES = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200, 500, np.inf])


@torch.no_grad()
def mean_sd(fitted, movie, user, num_samples, seed) -> np.ndarray:
    """Posterior sd of E[r | eta] per pair: the predictive sd without observation noise."""
    generator = torch.Generator().manual_seed(seed)
    model = fitted.model
    parts = [model.likelihood.mean(draw_eta(model, fitted.posterior, movie[s], user[s],
                                            num_samples, generator)).std(0)
             for s in chunks(len(movie))]
    return torch.cat(parts).numpy()


def panel(ax, x, y, label, ylabel):
    ax.scatter(x + 1, y, s=3, alpha=0.3, color="#4477aa")
    bins = _common.binned_medians(x, y, EDGES)
    ax.plot(np.sqrt(bins["from"] * np.minimum(bins["to"], x.max() + 1)) + 1, bins["median"],
            "o-", color="#cc3311", label="median per bin")
    ax.set(xscale="log", xlabel=f"{label} (+1)", ylabel=ylabel)
    ax.legend(fontsize=8)
    return bins


def main() -> None:
    p = _common.parser(__doc__, "runs/shrinkage")
    p.add_argument("--split", default="u1")
    args = p.parse_args()
    _common.quiet_logs()
    out = _common.out_dir(args)
    config, data, fitted, seconds = _common.fit_on_split(args)
    test = fitted.reindex(data.test)
    n_user = fitted.encoder_ratings.user_counts()
    n_movie = fitted.encoder_ratings.movie_counts()
    dims = _common.active_dimensions(fitted)
    user_sd = fitted.posterior.z_user_scale.numpy()[:, dims].mean(axis=1)  # (num_users,)
    rated = n_user > 0
    pred_sd = fitted.summaries(test.movie, test.user)["sd"]
    epistemic = mean_sd(fitted, test.movie, test.user, config["eval.num_samples"],
                        config["train.seed"])

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    relations = [
        ("posterior sd of z_user (active dims)", "ratings of the user", n_user[rated],
         user_sd[rated]),
        ("predictive sd", "ratings of the user", n_user[test.user], pred_sd),
        ("sd of the predicted mean", "ratings of the user", n_user[test.user], epistemic),
        ("sd of the predicted mean", "ratings of the movie", n_movie[test.movie], epistemic),
    ]
    tables = []
    for ax, (what, against, x, y) in zip(axes, relations):
        bins = panel(ax, x.astype(float), y, against, what)
        rho = spearmanr(x, y).statistic
        ax.set_title(f"{what}\nSpearman {rho:+.2f}", fontsize=10)
        tables.append(bins.assign(quantity=what, against=against, spearman=rho))
    fig.suptitle(f"Shrinkage ({len(dims)} active dimensions; fit {seconds:.0f} s)")
    fig.tight_layout()
    _common.save_figure(fig, out, "shrinkage.png")
    table = pd.concat(tables)[["quantity", "against", "from", "to", "count", "median",
                               "spearman"]]
    _common.save_table(table, out, "shrinkage")


if __name__ == "__main__":
    main()
