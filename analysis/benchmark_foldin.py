"""How well and how fast is a new user folded in, against fitting its posterior by SVI?

Question
    A user who was not in the training data rates a few movies. The amortized user
    encoder gives its q(z_user) in one pass (:func:`deepfactor.foldin.fold_in`); then
    :func:`deepfactor.recommend.recommend` ranks the catalogue. How close are its
    predictions to those for users the fit did see, and is fold-in plus top-10 within
    the 10 ms goal?
Reference
    Without amortization, the new user's ``q(z_user) = N(loc, diag scale^2)`` is fitted
    by Pyro's SVI (``AutoNormal``, ``TraceMeanField_ELBO``, Adam, ``--svi-steps`` steps)
    against the same decoder, with the movies drawn from their fitted posteriors, then
    ranked by the same top-10. Both are timed per user in the same run; the table ends
    with the ratio ours / reference, and the time also against the 10 ms goal.
Data and split
    MovieLens 100K u1: ``--held-out`` users with at least 40 ratings in u1.base are left
    out of training entirely. Each is folded in from a seeded 80% of its u1.base ratings
    and scored on the other 20%. Users seen in training are scored on their u1.test
    ratings. With ``--quick``: the built-in synthetic data at 80 movies x 100 users
    (the setting of the fast faithfulness test), 20 held-out users.
Model
    ``models/gaussian.toml``, fitted here without the held-out users (``--epochs`` to
    shorten; the config's own number by default).
Measured
    RMSE of the posterior predictive mean on the held-out 20%, beside the training mean,
    the movie-bias model (``mu + b_movie``) and the user-and-movie bias model with the
    user's bias estimated from its 80% (the bias model's own fold-in). Times: median
    over the held-out users of ``fold_in`` and of ``recommend(k=10)`` (each after one
    warm-up call), with ``eval.num_samples`` draws, exact and with plug-in shortlists
    of ``--shortlist`` movies (50, ``SHORTLIST_PER_K * k``, is ``recommend``'s default),
    and how many of the exact top-10 each shortlist keeps
    (beside how many the exact top-10 with another seed's draws keeps: Monte Carlo noise).
Simplified
    One thread (the machine is shared; ``--threads`` to change). The reference's step
    count and learning rate are not tuned per user; its convergence is only checked by
    the printed change of its loss over the last tenth of steps. ``--quick`` gives it
    50 steps only, to stay a smoke run.

Run: ``python analysis/benchmark_foldin.py [--quick] [--epochs 100] [--held-out 50]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick"]

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_MS = 10.0
QUICK = ["data.dataset=synthetic", "data.split=random", "data.synthetic_movies=80",
         "data.synthetic_users=100", "data.synthetic_ratings=6000", "data.test_fraction=0.1",
         "train.epochs=40", "train.batch_size=1000", "train.kl_warmup_epochs=20",
         "train.kl_warmup_start=0.01", "train.lr_final=0.0", "model.latent_dim=3",
         "model.decoder_hidden=[32]", "guide.encoder_hidden=[64]",
         "model.decoder_inputs='product'", "train.patience=0", "data.validation_fraction=0.1"]


def _setup(args):
    """Fit without the held-out users; return the fit, their ratings and the references."""
    from deepfactor.baselines import BiasModel
    from deepfactor.config import load_config
    from deepfactor.fitting import SplitData, fit, load_data

    overrides = list(QUICK) if args.quick else []
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    config = load_config(os.path.join(REPO, "models", "gaussian.toml"), overrides)
    data = load_data(config)
    rng = np.random.default_rng(args.seed)
    eligible = np.flatnonzero(data.train.user_counts() >= (10 if args.quick else 40))
    held = rng.choice(eligible, size=min(args.held_out, len(eligible)), replace=False)
    is_held = np.isin(data.train.user, held)
    train = data.train.subset(~is_held)
    seen_test = data.test.subset(~np.isin(data.test.user, held))
    start = time.perf_counter()
    fitted = fit(config, data=SplitData(train, seen_test, data.name), progress=False)
    fit_seconds = time.perf_counter() - start
    bias = BiasModel().fit(train.movie, train.user, train.rating, train.num_movies,
                           train.num_users)
    return fitted, held, data.train.subset(is_held), bias, fit_seconds


def _svi_fold_in(fitted, rated, targets, steps, lr, seed):
    """The reference: q(z_user) of one new user fitted by SVI; (loc, scale, loss change)."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro import poutine
    from pyro.infer import SVI, TraceMeanField_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.optim import Adam

    pyro.set_rng_seed(seed)
    post = fitted.posterior
    movie_loc, movie_scale = post.z_movie_loc[rated], post.z_movie_scale[rated]  # (n, D)
    decoder, likelihood = fitted.model.decoder, fitted.model.likelihood
    y = torch.as_tensor(targets, dtype=movie_loc.dtype)

    def model():
        z_user = pyro.sample("z_user", dist.Normal(movie_loc.new_zeros(movie_loc.shape[-1]),
                                                   1.0).to_event(1))
        z_movie = movie_loc + movie_scale * torch.randn_like(movie_loc)  # fitted q, fixed
        eta = decoder(z_movie, z_user.expand_as(z_movie))  # (n,)
        with poutine.block(hide_types=["param"]):  # the likelihood's sigma stays fitted
            observed = likelihood.distribution(eta)
        with pyro.plate("ratings", len(y)):
            pyro.sample("rating", observed, obs=y)

    guide = AutoNormal(model, init_scale=0.1)
    svi = SVI(model, guide, Adam({"lr": lr}), TraceMeanField_ELBO())
    losses = [svi.step() for _ in range(steps)]
    tail = max(1, steps // 10)
    change = float(np.mean(losses[-2 * tail:-tail]) - np.mean(losses[-tail:]))
    return guide.locs.z_user.detach(), guide.scales.z_user.detach(), change


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run(args) -> dict:
    import torch

    from deepfactor.foldin import FoldIn, fold_in
    from deepfactor.recommend import recommend

    torch.set_num_threads(args.threads)
    fitted, held, ratings, bias, fit_seconds = _setup(args)
    rng = np.random.default_rng(args.seed)
    movies = ratings.movie_ids.raw_of(ratings.movie)
    errors: dict[str, list] = {k: [] for k in ("fold_in", "svi", "global_mean", "movie_bias",
                                                "user_and_movie_bias")}
    times: dict[str, list] = {k: [] for k in ("fold_in", "top10", "svi",
                                               *(f"shortlist {c}" for c in args.shortlist))}
    kept: dict[int, list] = {c: [] for c in args.shortlist}
    changes, kept_again = [], []
    for n, j in enumerate(held):
        rows = rng.permutation(np.flatnonzero(ratings.user == j))
        cut = int(round(0.8 * len(rows)))
        given, scored = rows[:cut], rows[cut:]
        mine = dict(zip(movies[given], ratings.rating[given]))
        truth = ratings.rating[scored]

        if n == 0:  # warm-up calls, not timed
            recommend(fitted, fold_in(fitted, mine), k=10, shortlist=None)
        new, t_fold = _timed(fold_in, fitted, mine)
        exact, t_top = _timed(recommend, fitted, new, k=10, shortlist=None)
        again = recommend(fitted, new, k=10, shortlist=None,
                          seed=fitted.config["train.seed"] + 1)
        kept_again.append(len(set(exact["movie"]) & set(again["movie"])))
        (loc, scale, change), t_svi = _timed(_svi_fold_in, fitted, new.rated, new.targets,
                                             args.svi_steps, args.svi_lr, args.seed + n)
        reference = FoldIn(fitted, "user", "svi", loc, scale, new.rated, new.targets)
        times["fold_in"].append(t_fold)
        times["top10"].append(t_top)
        times["svi"].append(t_svi)
        for c in args.shortlist:
            short, t_short = _timed(recommend, fitted, new, k=10, shortlist=c)
            times[f"shortlist {c}"].append(t_short)
            kept[c].append(len(set(exact["movie"]) & set(short["movie"])))
        changes.append(change)

        movie_bias = bias.mu + bias.b_movie[ratings.movie[scored]]
        user_bias = (np.sum(ratings.rating[given] - bias.mu - bias.b_movie[ratings.movie[given]])
                     / (len(given) + bias.lam))
        errors["fold_in"].append(new.predict(movies[scored], quantiles=())["mean"] - truth)
        errors["svi"].append(reference.predict(movies[scored], quantiles=())["mean"] - truth)
        errors["global_mean"].append(bias.mu - truth)
        errors["movie_bias"].append(movie_bias - truth)
        errors["user_and_movie_bias"].append(movie_bias + user_bias - truth)

    rmse = {k: float(np.sqrt(np.mean(np.concatenate(v) ** 2))) for k, v in errors.items()}
    median_ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    return {"rmse": rmse, "ms": median_ms, "seen_rmse": fitted.metrics["test_warm"]["rmse"],
            "num_held": len(held), "num_scored": len(np.concatenate(errors["fold_in"])),
            "kept": {c: float(np.mean(v)) for c, v in kept.items()},
            "kept_again": float(np.mean(kept_again)), "svi_change": float(np.median(changes)),
            "fit_seconds": fit_seconds, "num_samples": fitted.config["eval.num_samples"],
            "threads": torch.get_num_threads(), "epochs": fitted.metrics["fit"]["epochs"]}


def report(args, r: dict) -> None:
    from deepfactor.recommend import SHORTLIST_PER_K

    data = "synthetic 80 x 100 (--quick)" if args.quick else "MovieLens 100K u1.base"
    print(f"{r['num_held']} users held out of training ({data}), each folded in from 80% of "
          f"its ratings, {r['num_scored']} ratings scored; fit {r['fit_seconds']:.0f} s, "
          f"{r['epochs']} epochs; {r['threads']} torch thread(s), "
          f"{r['num_samples']} posterior draws")
    rm = r["rmse"]
    print(f"\n{'RMSE on the held-out 20%':<36}{'fold_in':>10}{'per-user SVI':>14}{'ratio':>8}")
    print(f"{'new users':<36}{rm['fold_in']:>10.4f}{rm['svi']:>14.4f}"
          f"{rm['fold_in'] / rm['svi']:>7.3f}x")
    print(f"{'users seen in training (test split)':<36}{r['seen_rmse']:>10.4f}")
    for name in ("global_mean", "movie_bias", "user_and_movie_bias"):
        print(f"{'reference: ' + name:<36}{rm[name]:>10.4f}{'':>14}"
              f"{rm['fold_in'] / rm[name]:>7.3f}x")

    ms = r["ms"]
    header = f"{'time per new user (median, ms)':<36}{'fold_in':>10}{'per-user SVI':>14}"
    print(f"\n{header}{'ratio':>8}")
    print(f"{'posterior of the new user':<36}{ms['fold_in']:>10.2f}{ms['svi']:>14.1f}"
          f"{ms['fold_in'] / ms['svi']:>7.4f}x")
    ours, ref = ms["fold_in"] + ms["top10"], ms["svi"] + ms["top10"]
    print(f"{'+ exact top-10':<36}{ours:>10.2f}{ref:>14.1f}{ours / ref:>7.4f}x")
    print(f"\n{'fold_in + top-10 against the goal':<36}{'ms':>10}{'goal':>14}{'ratio':>8}"
          f"{'  keeps of the exact top-10':>28}")
    print(f"{'exact':<36}{ours:>10.2f}{GOAL_MS:>14.1f}{ours / GOAL_MS:>7.2f}x{10.0:>28.1f}")
    print(f"{'exact, draws of another seed':<36}{'':>32}{r['kept_again']:>28.1f}")
    for c in args.shortlist:
        short = ms["fold_in"] + ms[f"shortlist {c}"]
        name = f"shortlist of {c}{' (default)' if c == SHORTLIST_PER_K * 10 else ''}"
        print(f"{name:<36}{short:>10.2f}{GOAL_MS:>14.1f}"
              f"{short / GOAL_MS:>7.2f}x{r['kept'][c]:>28.1f}")
    print(f"\nthe reference's loss fell by a median {r['svi_change']:.3f} nats over its last "
          f"tenth of steps (about 0 or below: converged to within its noise)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    parser.add_argument("--held-out", type=int, default=None,
                        help="users left out of training (default 50; --quick 20)")
    parser.add_argument("--shortlist", type=int, nargs="+", default=[20, 50],
                        help="shortlist sizes to time beside the exact top-10")
    parser.add_argument("--svi-steps", type=int, default=None,
                        help="reference SVI steps (default 300; --quick 50)")
    parser.add_argument("--svi-lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.held_out = args.held_out or (20 if args.quick else 50)
    args.svi_steps = args.svi_steps or (50 if args.quick else 300)
    report(args, run(args))


if __name__ == "__main__":
    main()
