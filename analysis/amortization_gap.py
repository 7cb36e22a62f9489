"""How much do the amortized encoders lose against a per-entity posterior fitted directly?

Question
    The guide's encoders map each entity's ratings to q(z). A per-entity q with its own
    loc and scale, started at the encoders' output and fitted by SVI with the decoder
    held fixed, can only raise the ELBO; how much it does is the amortization gap. Does
    closing it (the "non-amortized refinement" of issue 9) improve held-out accuracy?
Data and split
    MovieLens 100K u1: the fit part of u1.base (after the validation carve) is what the
    encoders read and what the ELBO sums over; validation RMSE and lpd on the carve, and
    u1.test once at the end. With ``--quick``: built-in synthetic data, seconds.
Model
    A fitted run (``--run``, e.g. from ``deepfactor fit models/gaussian.toml``) or, without
    one, ``models/gaussian.toml`` fitted here (``--fit-epochs``). Refinement: Trace_ELBO,
    Adam (``--lr``) on every movie's and user's loc and softplus-scale, ``--epochs``
    passes over the fit part in the run's batch size, decoder and noise scale frozen;
    with ``--train-decoder`` they are trained too, at the same learning rate (a
    semi-amortized fit: the refined posteriors and the model move together).
Measured
    The ELBO per fit rating (one pass of minibatch estimates, averaged) and validation
    RMSE and lpd before refinement and after every ``--every`` epochs; then u1.test.
Simplified
    Without ``--train-decoder`` the decoder stays fixed, so this measures the inference
    gap only. With it, the model may also move away from the amortized fit's local
    optimum, but only as far as ``--epochs`` of small steps take it.
References
    Cremer, Li and Duvenaud (2018), Inference suboptimality in variational autoencoders;
    Kim et al. (2018), Semi-amortized variational autoencoders.

Run: ``python analysis/amortization_gap.py --run RUN [--epochs 20] [--lr 0.01]
[--train-decoder]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick"]

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pyro import poutine  # noqa: E402

from deepfactor import load  # noqa: E402
from deepfactor.batching import EncoderInputs, RatingBatcher  # noqa: E402
from deepfactor.config import load_config  # noqa: E402
from deepfactor.data.splits import carve_validation  # noqa: E402
from deepfactor.fitting import fit, load_data, with_targets  # noqa: E402
from deepfactor.predict import Posterior, encode_posterior, predictive_summaries  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PerEntityGuide(torch.nn.Module):
    """q(z) with a free loc and scale per movie and per user, started from ``start``.

    The sites, plates and per-entity weights are those of the amortized guide, so the
    ELBO is the same bound; only where q's parameters come from differs.
    """

    def __init__(self, start: Posterior, num_movies: int, num_users: int):
        super().__init__()
        self.num_movies, self.num_users = num_movies, num_users

        def inverse_softplus(s):
            return torch.log(torch.expm1(s.clamp(min=1e-4)))

        self.movie_loc = torch.nn.Parameter(start.z_movie_loc.clone())
        self.user_loc = torch.nn.Parameter(start.z_user_loc.clone())
        self.movie_scale_raw = torch.nn.Parameter(inverse_softplus(start.z_movie_scale))
        self.user_scale_raw = torch.nn.Parameter(inverse_softplus(start.z_user_scale))

    def posterior(self) -> Posterior:
        return Posterior(self.movie_loc.detach(), F.softplus(self.movie_scale_raw).detach(),
                         self.user_loc.detach(), F.softplus(self.user_scale_raw).detach())

    def forward(self, batch) -> None:
        m, u = torch.as_tensor(batch.movies), torch.as_tensor(batch.users)
        with pyro.plate("movies", self.num_movies, subsample=batch.movies, dim=-1), \
                poutine.scale(scale=batch.movie_scale):
            pyro.sample("z_movie", dist.Normal(self.movie_loc[m],
                                               F.softplus(self.movie_scale_raw[m])).to_event(1))
        with pyro.plate("users", self.num_users, subsample=batch.users, dim=-1), \
                poutine.scale(scale=batch.user_scale):
            pyro.sample("z_user", dist.Normal(self.user_loc[u],
                                              F.softplus(self.user_scale_raw[u])).to_event(1))


def scores(model, posterior: Posterior, ratings, seed: int) -> tuple[float, float]:
    """RMSE and mean lpd of the posterior predictive on ``ratings``."""
    out = predictive_summaries(model, posterior, ratings.movie, ratings.user, num_samples=100,
                               seed=seed, target=ratings.rating)
    return float(np.sqrt(np.mean((out["mean"] - ratings.rating) ** 2))), float(np.mean(out["lpd"]))


def elbo_per_rating(model, guide, batcher, num_ratings: int) -> float:
    """One pass of minibatch ELBO estimates, averaged, per fit rating (nats)."""
    loss = pyro.infer.Trace_ELBO()
    with torch.no_grad():
        values = [loss.loss(model, guide, batch) for batch in batcher.epoch()]
    return -float(np.mean(values)) / num_ratings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument("--run", help="a fitted run directory (default: fit one here)")
    parser.add_argument("--fit-epochs", type=int, help="epochs of the fit made here")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-decoder", action="store_true",
                        help="train the decoder and likelihood with the refined posteriors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.run:
        fitted = load(args.run)
    else:
        overrides = [f"train.num_threads={args.threads}"]
        if args.fit_epochs:
            overrides.append(f"train.epochs={args.fit_epochs}")
        if args.quick:
            overrides += ["data.dataset=synthetic", "data.split=random",
                          "data.synthetic_movies=80", "data.synthetic_users=60",
                          "data.synthetic_ratings=3000", "train.batch_size=500",
                          "train.epochs=4", "train.kl_warmup_epochs=1"]
            args.epochs, args.every = 2, 1
        fitted = fit(load_config(os.path.join(REPO, "models", "gaussian.toml"), overrides),
                     progress=False)
    config, model = fitted.config, fitted.model
    seed = config["train.seed"]
    train = fitted.encoder_ratings
    fit_part, val_part = carve_validation(train, config["data.validation_fraction"], seed)
    inputs = EncoderInputs(fit_part, fit_part.rating, fitted.inputs.center, fitted.inputs.spread,
                           sketch=fitted.inputs.sketch)
    amortized = encode_posterior(fitted.guide, inputs, train.num_movies, train.num_users)
    guide = PerEntityGuide(amortized, train.num_movies, train.num_users)
    trained = list(guide.parameters())
    if args.train_decoder:
        trained += list(model.parameters())
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    batcher = RatingBatcher(fit_part, fit_part.rating, inputs, config["train.batch_size"],
                            np.random.default_rng(seed))
    optimizer = torch.optim.Adam(trained, lr=args.lr)
    elbo = pyro.infer.Trace_ELBO()
    # scored before seeding the refinement: --train-decoder changes the model below
    data = load_data(config) if not args.run or config["data.dataset"] != "synthetic" else None
    if data is not None:
        test = with_targets(fitted.reindex(data.test), model.likelihood, config)
        before = scores(model, amortized, test, seed)

    pyro.set_rng_seed(seed)

    rows = []

    def record(epoch: int, seconds: float) -> None:
        rmse, lpd = scores(model, guide.posterior(), val_part, seed)
        rows.append((epoch, elbo_per_rating(model, guide, batcher, len(fit_part)), rmse, lpd,
                     seconds))
        print(f"epoch {epoch:3d}: ELBO/rating {rows[-1][1]:.4f}, validation RMSE {rmse:.4f}, "
              f"lpd {lpd:.4f}  ({seconds:.0f} s)", flush=True)

    start = time.perf_counter()
    record(0, 0.0)
    for epoch in range(1, args.epochs + 1):
        for batch in batcher.epoch():
            optimizer.zero_grad()
            elbo.differentiable_loss(model, guide, batch).backward()
            optimizer.step()
        if epoch % args.every == 0 or epoch == args.epochs:
            record(epoch, time.perf_counter() - start)

    if data is not None:
        after = scores(model, guide.posterior(), test, seed)
        print(f"\ntest RMSE amortized {before[0]:.4f} -> refined {after[0]:.4f} "
              f"(ratio {after[0] / before[0]:.4f}); lpd {before[1]:.4f} -> {after[1]:.4f}")
    first, last = rows[0], rows[-1]
    print(f"ELBO gain per rating: {last[1] - first[1]:+.4f} nats; validation RMSE ratio "
          f"refined / amortized {last[2] / first[2]:.4f}; decoder "
          f"{'trained' if args.train_decoder else 'fixed'}; threads {args.threads}")


if __name__ == "__main__":
    main()
