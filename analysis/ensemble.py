"""Seed ensembles: does averaging several fits' predictive distributions predict better?

Question
    Issue 9 lists ensembles over seeds among the untried ideas toward u1.test RMSE 0.889.
    Fits that differ only in their seed (initial weights, batch order, Monte Carlo
    draws) end in different local optima of the ELBO. Their equal-weight mixture

    .. math::  p_{ens}(r) = \\frac{1}{K} \\sum_{k=1}^{K} p_k(r \\mid \\text{training data})

    has the average of the members' predictive means as its mean, and log density
    ``log mean_k exp(lpd_k)`` per rating. How much does it gain in RMSE, MAE and lpd as
    members are added?
Data and split
    MovieLens 100K u1.base / u1.test (``--split``); ``--quick``: the built-in synthetic
    data, seconds.
Model
    ``models/ordinal.toml`` (``--likelihood normal`` for ``models/gaussian.toml``), fitted
    with seeds ``seed, seed + 1, ..., seed + K - 1`` (``--members K``).
Outputs (under ``--out``)
    ``ensemble.csv``/``.md``: each member's test metrics and fit seconds, then the
    mixture of the first ``k`` members for ``k = 2..K``.
Simplified
    Equal weights, not stacking; each member carves its own validation set from its
    seed. The package does not offer ensembles: fold-in, recommend and the checks work
    on one fit. Test ratings are scored once per member and mixture, never used to pick.
References
    Lakshminarayanan, Pritzel and Blundell (2017), deep ensembles; Yao, Vehtari, Simpson
    and Gelman (2018), stacking of predictive distributions.

Run: ``python analysis/ensemble.py [--quick] [--members 5] [--likelihood ordinal]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--members", "2", "--out", "out"]

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from deepfactor.fitting import load_data, with_targets  # noqa: E402
from deepfactor.metrics import rating_metrics  # noqa: E402


def member_scores(fitted, test_raw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, predictive means, lpd per rating) of one fit on the test ratings."""
    test = with_targets(fitted.reindex(test_raw), fitted.model.likelihood, fitted.config)
    out = fitted.summaries(test.movie, test.user, target=test.rating)
    return test.rating, out["mean"], out["lpd"]


def mixture(means: list[np.ndarray], lpds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and lpd per rating of the equal-weight mixture of the members given."""
    lpd = logsumexp(np.stack(lpds), axis=0) - np.log(len(lpds))
    return np.mean(means, axis=0), lpd


def main(argv=None) -> None:
    p = _common.parser(__doc__, "runs/ensemble")
    p.add_argument("--split", default="u1")
    p.add_argument("--members", type=int, default=5, help="K, fits with consecutive seeds")
    p.add_argument("--likelihood", default="ordinal", choices=["ordinal", "normal"])
    args = p.parse_args(argv)
    if args.members < 1:
        p.error("--members must be at least 1")
    _common.quiet_logs()
    out = _common.out_dir(args)
    split = [] if args.quick else [f"data.split={args.split}"]
    data = load_data(_common.config_for(args.likelihood, args, split))  # one split for all

    rows, means, lpds = [], [], []
    for k in range(args.members):
        seed = args.seed + k
        config = _common.config_for(args.likelihood, args, [*split, f"train.seed={seed}"])
        fitted, seconds = _common.fit_quietly(config, data=data)
        target, mean, lpd = member_scores(fitted, data.test)
        means.append(mean)
        lpds.append(lpd)
        scores = rating_metrics(args.likelihood, target, mean, lpd)
        rows.append({"model": f"seed {seed}", "members": 1, "rmse": scores["rmse"],
                     "mae": scores["mae"], "lpd": scores["lpd"], "fit_seconds": seconds})
        print(f"seed {seed}: rmse {scores['rmse']:.4f}, lpd {scores['lpd']:.4f}, "
              f"{seconds:.1f} s", flush=True)
    for k in range(2, args.members + 1):
        mean, lpd = mixture(means[:k], lpds[:k])
        scores = rating_metrics(args.likelihood, target, mean, lpd)
        rows.append({"model": f"mixture of seeds {args.seed}..{args.seed + k - 1}",
                     "members": k, "rmse": scores["rmse"], "mae": scores["mae"],
                     "lpd": scores["lpd"], "fit_seconds": float("nan")})
    table = pd.DataFrame(rows)
    _common.save_table(table, out, "ensemble")
    single = table[table["members"] == 1]
    print(f"members: mean rmse {single['rmse'].mean():.4f} (sd {single['rmse'].std():.4f}); "
          f"mixture of {args.members}: rmse {table['rmse'].iloc[-1]:.4f}, "
          f"lpd {table['lpd'].iloc[-1]:.4f}")


if __name__ == "__main__":
    main()
