"""Normal or ordinal likelihood for star ratings: which predicts held-out stars better?

Question
    MovieLens ratings are five ordered categories. The Normal likelihood treats them as
    real numbers (it puts mass on 3.7 and on 6.2); the ordinal (cumulative-logit)
    likelihood puts mass on the five levels only. Which gives the better point
    predictions, the better predictive distribution, and the better calibrated
    intervals, on the same split with the same network and training budget?
Data and split
    MovieLens 100K, the canonical splits (``--splits u1 u2 u3 u4 u5`` by default); the
    encoders read the split's base file only, early stopping uses the validation carve
    of it, and each test file is scored once per likelihood. With ``--quick``: synthetic
    ratings on the five levels (drawn from the ordinal model's prior), 100 x 80.
Model
    ``models/gaussian.toml`` and ``models/ordinal.toml``: the same decoder, encoders,
    ELBO and schedule, differing only in the likelihood.
Measured
    RMSE and MAE of the predictive mean; the log predictive density in each family's
    own units (a density for the Normal, a probability for the ordinal: not comparable)
    and on the star scale for both: the predictive probability of the observed star,
    for the Normal the mass of the bin between the midpoints to the neighbouring stars
    (the lowest and highest stars take the tails). Calibration: the share of test
    ratings inside the central 50/80/90/95% predictive intervals, read from the
    (randomized, for the ordinal) PIT of ``deepfactor.checks``; and the shares below
    the 5% and above the 95% quantile. Per split, then mean and sd over splits.
Simplified
    One seed per split; seed-to-seed sd of u1 RMSE is about 0.005 (README "Results").
    The star-scale lpd of the Normal uses 100 posterior draws per rating.
References
    McCullagh (1980), Regression models for ordinal data, JRSS B 42(2); Chu and
    Ghahramani (2005), Gaussian processes for ordinal regression, JMLR 6.

Run: ``python analysis/compare_likelihoods.py [--splits u1 ...] [--epochs N] [--out DIR]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick"]

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from deepfactor import checks  # noqa: E402
from deepfactor.baselines import level_bins  # noqa: E402
from deepfactor.checkpoint import write_json, write_text  # noqa: E402
from deepfactor.config import load_config  # noqa: E402
from deepfactor.diagnostics import interval_coverage  # noqa: E402
from deepfactor.fitting import fit, load_data, with_targets  # noqa: E402
from deepfactor.predict import chunks, draw_eta  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"normal": "gaussian.toml", "ordinal": "ordinal.toml"}
LEVELS = (0.5, 0.8, 0.9, 0.95)
DRAWS = 100


def star_scale_lpd(fitted, test, levels: np.ndarray, seed: int = 0) -> np.ndarray:
    """log P(observed star) under the fitted predictive, per test rating; shape (N,)."""
    likelihood = fitted.model.likelihood
    if likelihood.name == "ordinal":  # its lpd already is the probability of the star
        return fitted.summaries(test.movie, test.user, target=test.rating)["lpd"]
    # Normal: the predictive mass of the bin around the observed star
    lower, upper = (torch.as_tensor(edge) for edge in level_bins(test.rating, levels))
    generator = torch.Generator().manual_seed(seed)
    out = np.empty(len(test))
    for part in chunks(len(test)):
        eta = draw_eta(fitted.model, fitted.posterior, test.movie[part], test.user[part],
                       DRAWS, generator).double()  # (S, chunk), or (S, chunk, 2)
        loc = likelihood.location(eta)  # (S, chunk)
        sigma = likelihood.noise_scale(eta).detach()  # () or, with a scale per pair, (S, chunk)
        mass = (torch.special.ndtr((upper[part] - loc) / sigma)
                - torch.special.ndtr((lower[part] - loc) / sigma)).mean(0)
        out[part] = torch.log(mass.clamp(min=1e-300)).numpy()
    return out


def score(fitted, test_raw, levels: np.ndarray, seed: int) -> dict:
    """Every figure of one fitted model on one test file."""
    test = with_targets(fitted.reindex(test_raw), fitted.model.likelihood, fitted.config)
    out = fitted.summaries(test.movie, test.user, target=test.rating)
    error = out["mean"] - test.rating
    draws = checks.draw_predictive(fitted.model, fitted.posterior,
                                   {"t": (test.movie, test.user, test.rating)},
                                   num_samples=DRAWS, seed=seed)["t"]
    coverage = interval_coverage(draws.pit, list(LEVELS))
    row = {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error))),
           "lpd_own_units": float(np.mean(out["lpd"])),
           "lpd_star": float(np.mean(star_scale_lpd(fitted, test, levels, seed)))}
    row |= {f"cover{round(100 * a)}": float(c) for a, c in coverage.items()}
    row |= {"below_q05": float(np.mean(draws.pit < 0.05)),
            "above_q95": float(np.mean(draws.pit > 0.95))}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument("--splits", nargs="+", default=["u1", "u2", "u3", "u4", "u5"])
    parser.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="compare_likelihoods")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both families (repeatable)")
    args = parser.parse_args()

    overrides = [f"train.num_threads={args.threads}", *args.set]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if args.quick:
        overrides += ["data.dataset=synthetic", "data.split=random", "data.synthetic_movies=100",
                      "data.synthetic_users=80", "data.synthetic_ratings=4000",
                      "train.batch_size=1000", "train.epochs=4", "train.kl_warmup_epochs=2",
                      "eval.num_samples=20"]
        args.splits = ["random"]
    rows = []
    for split in args.splits:
        configs = {name: load_config(os.path.join(REPO, "models", file),
                                     [*overrides, f"data.split={split}"])
                   for name, file in CONFIGS.items()}
        # One data set for both fits (for synthetic data: drawn from the ordinal prior).
        data = load_data(configs["ordinal"])
        levels = np.asarray(configs["ordinal"]["model.ordinal_levels"], dtype=float)
        for name, config in configs.items():
            start = time.perf_counter()
            fitted = fit(config, data=data, progress=False)
            seconds = time.perf_counter() - start
            rows.append({"split": split, "likelihood": name,
                         **score(fitted, data.test, levels, config["train.seed"]),
                         "fit_seconds": seconds})
            print(f"{split} {name}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in rows[-1].items() if isinstance(v, float)),
                flush=True)

    table = pd.DataFrame(rows)
    summary = table.drop(columns="split").groupby("likelihood").agg(["mean", "std"])
    os.makedirs(args.out, exist_ok=True)
    write_text(os.path.join(args.out, "per_split.csv"), table.to_csv(index=False))
    write_text(os.path.join(args.out, "summary.csv"), summary.to_csv())
    write_json(os.path.join(args.out, "per_split.json"), rows)
    pd.set_option("display.width", 200)
    print(f"\nthreads: {args.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(table.round(4).to_string(index=False))
    print("\nmean and sd over splits:")
    print(summary.round(4).to_string())
    means = table.groupby("likelihood").mean(numeric_only=True)
    print("\nordinal / normal:", ", ".join(
        f"{k} {means.loc['ordinal', k] / means.loc['normal', k]:.4f}"
        for k in ("rmse", "mae", "fit_seconds")),
        f"; star-scale lpd difference ordinal - normal: "
        f"{means.loc['ordinal', 'lpd_star'] - means.loc['normal', 'lpd_star']:+.4f} nats")


if __name__ == "__main__":
    main()
