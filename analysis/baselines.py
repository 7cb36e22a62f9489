"""deepfactor against the classic baselines on the five u1..u5 splits, mean and sd over splits.

Question
    Does the Bayesian deep model beat what a student would try first: the global mean,
    a user + movie bias model, and classic matrix factorization with point estimates
    (MAP)? And by how much compared with the spread between splits?
Data and split
    MovieLens 100K, the five shipped cross-validation splits u1..u5 (``--splits``).
    With ``--quick``: two synthetic replicates (seeds 0 and 1), seconds.
Models
    * global mean and user + movie bias: :mod:`deepfactor.baselines`, fitted on each
      training split (as every run's ``metrics.json`` reports them);
    * MAP matrix factorization: the same model as ``models/gaussian.toml`` (Normal(0, I)
      priors, decoder, Normal likelihood) with a Delta guide per entity,
      :func:`deepfactor.pointfit.fit_map`, trained by the same loop;
    * deepfactor with each likelihood: ``models/gaussian.toml``, ``poisson.toml``,
      ``bernoulli.toml``.
    Each family is scored by its own metrics; the baselines are given the plug-in
    predictive of each family (see :mod:`deepfactor.baselines`). Bernoulli models
    predict likes (rating > 3), so their AUC is not comparable with an RMSE on stars.
Outputs (under ``--out``)
    ``per_split.csv`` (every number), ``summary.csv``/``.md`` (mean and sd over splits),
    ``baselines.png``; the fit time of each model is printed and in ``per_split.csv``.
Simplified
    One seed per split; the MAP model takes the shipped configuration unchanged (its
    prior is its only regularization; early stopping on the validation carve), no
    search over its settings. ``--epochs`` shortens every fit (the default is the
    configs' own 60).
References
    Koren, Bell & Volinsky (2009), "Matrix factorization techniques for recommender
    systems"; Salakhutdinov & Mnih (2008), "Probabilistic matrix factorization".

Run: ``python analysis/baselines.py [--quick] [--splits u1 u2 u3 u4 u5] [--epochs 60]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--out", "out"]

import time  # noqa: E402

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import pandas as pd  # noqa: E402

from deepfactor.fitting import load_data, with_targets  # noqa: E402
from deepfactor.metrics import METRIC_KEYS  # noqa: E402
from deepfactor.pointfit import fit_map  # noqa: E402

NAMES = {"global_mean": "global mean", "bias": "user + movie bias"}


def rows_of(split: str, family: str, method: str, scores: dict, seconds: float | None):
    return [{"split": split, "family": family, "method": method, "metric": metric,
             "value": scores[metric], "seconds": seconds}
            for metric in (*METRIC_KEYS[family], "lpd")]


def one_split(split: str, args) -> list[dict]:
    extra = ([f"train.seed={args.seed + int(split[-1])}"] if args.quick
             else [f"data.split={split}"])
    rows = []
    for family in _common.LIKELIHOODS:
        config = _common.config_for(family, args, extra)
        data = load_data(config)
        fitted, seconds = _common.fit_quietly(config, data=data)
        rows += rows_of(split, family, f"deepfactor ({family})", fitted.metrics["test"],
                        seconds)
        for name, scores in fitted.metrics["reference"].items():
            rows += rows_of(split, family, NAMES[name], scores, None)
        print(f"{split} {family}: {seconds:.1f} s")
        if family == "normal":
            model = fitted.model.likelihood
            train, test = (with_targets(r, model, config) for r in (data.train, data.test))
            start = time.perf_counter()
            point = fit_map(config, train, test)
            seconds = time.perf_counter() - start
            rows += rows_of(split, family, "MAP matrix factorization", point.metrics, seconds)
            print(f"{split} MAP: {seconds:.1f} s")
    return rows


def summarize(per_split: pd.DataFrame) -> pd.DataFrame:
    grouped = per_split.groupby(["family", "metric", "method"], sort=False)["value"]
    summary = grouped.agg(mean="mean", sd="std", splits="count").reset_index()
    return summary


def figure(summary: pd.DataFrame):
    import matplotlib.pyplot as plt

    panels = [("normal", "rmse", "RMSE on stars (normal family)"),
              ("bernoulli", "auc", "AUC of likes (bernoulli family)")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (family, metric, title) in zip(axes, panels):
        part = summary[(summary.family == family) & (summary.metric == metric)]
        ax.barh(part["method"], part["mean"], xerr=part["sd"].fillna(0), color="#4477aa")
        low = float((part["mean"] - part["sd"].fillna(0)).min())
        ax.set_xlim(low * 0.95, None)
        ax.set(title=title, xlabel=f"{metric}, mean and sd over splits")
    poisson = summary[(summary.family == "poisson") & (summary.metric == "rmse")]
    for _, row in poisson[poisson.method.str.startswith("deepfactor")].iterrows():
        axes[0].axvline(row["mean"], color="gray", ls="--", label="deepfactor (poisson)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    p = _common.parser(__doc__, "runs/baselines")
    p.add_argument("--splits", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    args = p.parse_args()
    if args.quick:
        args.splits = ["r0", "r1"]  # synthetic replicates, seeds 0 and 1
    _common.quiet_logs()
    out = _common.out_dir(args)
    start = time.perf_counter()
    rows = []
    for split in args.splits:  # written after each split, so a stopped run keeps its part
        rows += one_split(split, args)
        per_split = pd.DataFrame(rows)
        _common.save_table(per_split, out, "per_split", show=False)
    total = time.perf_counter() - start
    summary = summarize(per_split)
    _common.save_figure(figure(summary), out, "baselines.png")
    _common.save_table(summary, out, "summary")
    fits = per_split[per_split.seconds.notna()].groupby(["split", "method"]).ngroups
    print(f"{len(args.splits)} splits, {fits} fits: {total:.0f} s in all")


if __name__ == "__main__":
    main()
