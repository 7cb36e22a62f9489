"""The 2017 notebook's three experiments, plus held-out metrics, uncertainty and the leak.

Question
    Normal, Poisson and Bernoulli likelihoods on MovieLens 100K: how well does each
    complete the rating matrix on held-out ratings, how uncertain is the completion, and
    how much does the notebook's easy mistake flatter the error? The mistake: building
    the encoders' inputs from the whole ratings file (u1.base + u1.test), so that every
    held-out rating is read by the encoders that then predict it.
Data and split
    MovieLens 100K u1.base / u1.test (``--split``). With ``--quick``: the built-in
    synthetic data (100 movies x 80 users, a seeded 80/20 split), seconds.
Model
    ``models/gaussian.toml``, ``poisson.toml``, ``bernoulli.toml``, each fitted once
    by :func:`deepfactor.fit` (encoders read u1.base only: the honest fit).
The leak
    **Same fitted weights**, only the encoders' inputs change: the honest run encodes
    every movie and user from u1.base; the leaked run re-encodes them from u1.base +
    u1.test (with the same standardization) and predicts u1.test again. Same weights,
    because that isolates the one thing the mistake changes at prediction time; a refit
    on leaked inputs would add a second effect (encoders trained to copy what they
    read) and is not run here, so the figure is a lower bound on what the full mistake
    costs.
Outputs (under ``--out``)
    ``completion_<likelihood>.png`` (the notebook's figure: movies 4-20 x users 6-16,
    observed beside predictive mean and predictive sd, held-out cells dotted),
    ``completion_<likelihood>_leaked.png`` (the same block under leaked inputs),
    ``leak.png`` and ``metrics.csv``/``.md`` (honest, leaked, the bias and global-mean
    references).
Simplified
    One seed, one split; fits use the shipped configs (``--epochs`` shortens them).
References
    The 2017 deepfactor notebook (Normal/Poisson/Bernoulli on ML-100K); Kingma & Welling
    (2014) for the amortized guide; Koren, Bell & Volinsky (2009) for the bias baseline.

Run: ``python analysis/notebook_2017.py [--quick] [--out runs/notebook_2017]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--out", "out"]

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deepfactor.check_report import completion_block  # noqa: E402
from deepfactor.data.ratings import Ratings  # noqa: E402
from deepfactor.fitted import FittedModel  # noqa: E402
from deepfactor.fitting import load_data, with_targets  # noqa: E402
from deepfactor.metrics import METRIC_KEYS, rating_metrics  # noqa: E402
from deepfactor.plots import plot_completion  # noqa: E402


def leaked_copy(fitted: FittedModel, test: Ratings) -> FittedModel:
    """``fitted`` with its encoders reading training *and* test ratings (the mistake).

    Same parameters and standardization; ``test`` is on ``fitted``'s id maps with the
    likelihood's targets as values.
    """
    train = fitted.encoder_ratings
    both = Ratings(np.concatenate([train.movie, test.movie]),
                   np.concatenate([train.user, test.user]),
                   np.concatenate([train.rating, test.rating]),
                   fitted.movie_ids, fitted.user_ids, source="train+test")
    return fitted.reading(both)


def completion_figure(fitted, test, num_samples, seed, title):
    block = completion_block(fitted, test, test.rating, num_samples=num_samples, seed=seed)
    if block is None:
        return None
    return plot_completion(block["observed"], block["mean"], block["sd"], block["movies"],
                           block["users"], heldout=block["heldout"], title=title)


def one_likelihood(likelihood: str, args, out) -> list[dict]:
    config = _common.config_for(likelihood, args, [f"data.split={args.split}"]
                                if not args.quick else [])
    data = load_data(config)
    fitted, seconds = _common.fit_quietly(config, data=data)
    test = with_targets(fitted.reindex(data.test), fitted.model.likelihood, config)
    leaked = leaked_copy(fitted, test)
    draws, seed = config["eval.num_samples"], config["train.seed"]
    out_leak = leaked.summaries(test.movie, test.user, target=test.rating)
    scores = {"honest": fitted.metrics["test"],
              "leaked": rating_metrics(likelihood, test.rating, out_leak["mean"],
                                       out_leak["lpd"]),
              **fitted.metrics["reference"]}

    for model, tag in ((fitted, ""), (leaked, "_leaked")):
        fig = completion_figure(model, test, draws, seed,
                                f"{likelihood} likelihood, encoders read "
                                f"{'training + test' if tag else 'training'} ratings")
        if fig is not None:
            _common.save_figure(fig, out, f"completion_{likelihood}{tag}.png")
    honest_sd = fitted.summaries(test.movie, test.user)["sd"]
    print(f"{likelihood}: fit {seconds:.1f} s; predictive sd on test ratings "
          f"{np.mean(honest_sd):.3f} honest, {np.mean(out_leak['sd']):.3f} leaked")
    rows = []
    for metric in (*METRIC_KEYS[likelihood], "lpd"):
        row = {"likelihood": likelihood, "metric": metric,
               **{name: s[metric] for name, s in scores.items()}}
        row["leaked / honest"] = row["leaked"] / row["honest"]
        rows.append(row)
    rows[0]["fit_seconds"] = seconds
    return rows


def leak_figure(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    first = table.groupby("likelihood", sort=False).head(1)  # rmse, rmse, auc
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(first))
    for k, name in enumerate(("global_mean", "bias", "honest", "leaked")):
        ax.bar(x + (k - 1.5) * 0.2, first[name], width=0.2, label=name)
    ax.set_xticks(x, [f"{lik}\n{m}" for lik, m in zip(first["likelihood"], first["metric"])])
    ax.set(title="Held-out error: honest inputs against the leak", ylabel="metric value")
    ax.legend(fontsize=8)
    return fig


def main() -> None:
    p = _common.parser(__doc__, "runs/notebook_2017")
    p.add_argument("--split", default="u1", help="MovieLens split (not with --quick)")
    p.add_argument("--likelihoods", nargs="+", default=list(_common.LIKELIHOODS),
                   choices=_common.LIKELIHOODS)
    args = p.parse_args()
    _common.quiet_logs()
    out = _common.out_dir(args)
    rows = [row for lik in args.likelihoods for row in one_likelihood(lik, args, out)]
    table = pd.DataFrame(rows)
    _common.save_figure(leak_figure(table), out, "leak.png")
    _common.save_table(table, out, "metrics")


if __name__ == "__main__":
    main()
