"""Do the faster settings for large data fit as well as the shipped ones?

Question
    ``analysis/benchmark_scaling.py`` times a step; this asks what the time buys. On
    MovieLens-like data large enough for blocked batches, does a fit with
    ``train.precision = "bfloat16"``, with ``train.batch_size = 40000``, or with both
    (and ``train.compile = true``), reach the same held-out error, predictive density
    and bound as the shipped ``models/gaussian.toml`` in the same number of epochs, and
    how long does each take?
Data
    :func:`deepfactor.synthetic.simulate_movielens` at ``--ratings`` (default 1,000,000;
    Zipf-like popularity and activity, MovieLens entity counts), drawn from the
    benchmark's truth (a decoder of 40 tanh units on the product, signal sd 1, Normal
    noise sd 0.5, so no predictor beats RMSE 0.5). The ratings are written to
    ``ratings.csv`` under ``--out`` and read back as ``data.dataset = "file"`` with a
    random 10% test split and the usual 5% validation carve, so every fit is the
    command line's own (``deepfactor fit``), from reading the file to scoring the test.
Model
    ``models/gaussian.toml``, ``--epochs`` epochs (default 20) with the KL warm-up over
    the first half, and each row's overrides; seed ``--seed``.
Output
    One row per setting: held-out RMSE and lpd, the final ELBO per fit rating, the
    kept epoch, the whole fit's seconds and the training seconds per epoch; the RMSE
    and the seconds per epoch as ratios to the shipped row's, the lpd as a difference;
    ``large_settings.csv`` / ``.md`` under ``--out``, and each row's per-epoch history
    (validation scores, seconds) as ``trace_<row>.csv``.
Simplified
    One seed and one data size; the learning-rate schedule is the shipped one whatever
    the batch size (a batch of 40,000 takes a quarter of the steps). Times are one run's
    on a shared machine: read their ratios, not their values.

Run: ``python analysis/large_settings.py [--ratings N] [--epochs E] [--threads 2]``
(``--quick``: 20,000 ratings, 2 epochs, two rows, in seconds).
"""

from __future__ import annotations

QUICK_ARGS = ["--quick", "--out", "large"]

#: --quick: ratings, epochs and rows (seconds, what tests/test_analysis.py runs)
QUICK = (20_000, 2, ["shipped", "bfloat16"])

import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import pandas as pd  # noqa: E402

from _common import REPO, fit_quietly, out_dir, parser, quiet_logs, save_table  # noqa: E402

ROWS = {
    "shipped": [],
    "bfloat16": ["train.precision=bfloat16"],
    "batch40000": ["train.batch_size=40000"],
    "bfloat16_batch40000": ["train.precision=bfloat16", "train.batch_size=40000"],
    # a quarter of the steps: twice the learning rate (Adam's square-root rule for 4x)
    "bfloat16_batch40000_lr2x": ["train.precision=bfloat16", "train.batch_size=40000",
                                 "train.lr=0.02", "train.lr_final=0.001"],
    # the fastest epochs of benchmark_scaling.py: the same plus the compiled decoder
    "bfloat16_batch40000_compiled": ["train.precision=bfloat16", "train.batch_size=40000",
                                     "train.compile=true"],
}


def write_ratings(path, num_ratings: int, seed: int) -> float:
    """Simulate MovieLens-like ratings into ``path`` (CSV); returns the noise sd."""
    from deepfactor.checkpoint import write_text
    from deepfactor.config import load_config
    from deepfactor.fitted import build_modules
    from deepfactor.reproducibility import set_seed
    from deepfactor.synthetic import movielens_shape, simulate_movielens

    set_seed(seed)  # the truth's decoder is drawn from torch's generator
    truth_config = load_config(REPO / "models" / "gaussian.toml",
                               ["model.decoder_hidden=[40]", "model.decoder_inputs=product"])
    model, _ = build_modules(truth_config, *movielens_shape(num_ratings))
    ratings, _ = simulate_movielens(model, num_ratings, seed=seed, output_bias=3.5)
    frame = pd.DataFrame({"user": ratings.user + 1, "movie": ratings.movie + 1,  # raw ids
                          "rating": ratings.rating.round(4)})
    write_text(path, frame.to_csv(index=False))
    return float(model.likelihood.sigma.detach())


def main() -> None:
    p = parser(__doc__, "large_settings")
    p.add_argument("--ratings", type=int, default=1_000_000)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.set_defaults(epochs=20)  # not the shipped 60: twenty 1M epochs take minutes a row
    next(a for a in p._actions if a.dest == "epochs").help = "default 20; 2 with --quick"
    args = p.parse_args()
    if args.quick:
        args.ratings, args.epochs, args.rows = QUICK
    quiet_logs()
    folder = out_dir(args)
    csv = folder / "ratings.csv"
    noise_sd = write_ratings(csv, args.ratings, args.seed)
    epochs = args.epochs  # the warm-up takes the first half
    print(f"{args.ratings:,} MovieLens-like ratings in {csv}; noise sd {noise_sd} "
          f"(the best possible RMSE); {epochs} epochs, torch threads: {args.threads}")

    from deepfactor.checkpoint import write_text
    from deepfactor.config import load_config

    base = ["data.dataset=file", f"data.path={csv}", "data.split=random",
            "data.test_fraction=0.1", 'data.columns=["user","movie","rating"]',
            "data.rating_scale=[]", f"train.epochs={epochs}",
            f"train.kl_warmup_epochs={epochs // 2}", f"train.seed={args.seed}",
            f"train.num_threads={args.threads}", *args.set]
    rows = []
    for name in args.rows:
        config = load_config(REPO / "models" / "gaussian.toml", [*base, *ROWS[name]])
        fitted, seconds = fit_quietly(config)
        m = fitted.metrics
        # each epoch's validation scores and seconds: accuracy against training time
        write_text(folder / f"trace_{name}.csv", pd.DataFrame(fitted.history).to_csv(index=False))
        rows.append({"row": name, "precision": config["train.precision"],
                     "batch": config["train.batch_size"], "compiled": config["train.compile"],
                     "order": m["fit"]["batch_order"],
                     "test RMSE": m["test"]["rmse"], "test lpd": m["test"]["lpd"],
                     "ELBO per rating": m["fit"]["final_elbo_per_rating"],
                     "kept epoch": m["fit"]["best_epoch"], "fit s": seconds,
                     "train s per epoch": m["fit"]["train_seconds"] / m["fit"]["epochs"]})
        print(json.dumps(rows[-1]), flush=True)
        # The next fit must not run beside this one's data and posterior: at 25M ratings
        # the second of two rows was killed for memory (24 GB resident) while the name
        # still held the first.
        del fitted, m
        gc.collect()
    table = pd.DataFrame(rows)
    if "shipped" in args.rows:
        ref = table.set_index("row").loc["shipped"]
        for column in ("test RMSE", "train s per epoch"):
            table[f"{column} / shipped"] = table[column] / ref[column]
        table["lpd - shipped"] = table["test lpd"] - ref["test lpd"]
    save_table(table, folder, "large_settings")


if __name__ == "__main__":
    sys.exit(main())
