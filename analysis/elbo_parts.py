"""The ELBO and its parts over training: what the KL term and its warm-up do.

Question
    The ELBO is an expected log-likelihood minus the KL of every latent to its prior.
    How do the two parts move during training, and what changes when the KL is
    switched on gradually (warm-up), at once, or kept near zero? The KL is what keeps a
    latent dimension at its prior unless the data pay for it: we also count the
    *active* dimensions (mean KL above 0.05 nats for movies and users,
    ``deepfactor.diagnostics.ACTIVE_KL_NATS``) each epoch.
Data and split
    MovieLens 100K u1.base (the fit part after the validation carve), scored on u1.test
    (``--split``); ``--quick``: the built-in synthetic data, seconds.
Model
    ``models/gaussian.toml`` fitted three times by :func:`deepfactor.fit`, each epoch
    recording the parts through :func:`deepfactor.elbo_parts.elbo_recorder` (the
    expected log-likelihood by Monte Carlo over 4 draws, the KL in closed form, both
    over all fit ratings, at KL weight 1 whatever the run's weight):
    * ``warm-up``: the shipped schedule, KL weight from 0.01 to 1 over 30 epochs;
    * ``no warm-up``: KL weight 1 from the first step;
    * ``KL weight 0.01``: the weight held at 0.01 (not the ELBO: a demonstration).
Outputs (under ``--out``)
    ``elbo_parts.png``, ``trace.csv`` (every epoch of every run) and ``summary.csv``/
    ``.md`` (last epoch: parts per rating, active dimensions, validation and test RMSE).
Simplified
    One seed. The parts are evaluated on the fit ratings with 4 draws, so the
    log-likelihood part carries Monte Carlo noise of about its sd / sqrt(4 N).
References
    Bowman et al. (2016), "Generating sentences from a continuous space" (KL
    annealing); Hoffman & Johnson (2016), "ELBO surgery"; Kingma & Welling (2014).

Run: ``python analysis/elbo_parts.py [--quick] [--out runs/elbo_parts]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--out", "out"]

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import pandas as pd  # noqa: E402

from deepfactor.elbo_parts import elbo_recorder  # noqa: E402
from deepfactor.fitting import load_data  # noqa: E402

RUNS = {"warm-up": [], "no warm-up": ["train.kl_warmup_epochs=0"],
        # a warm-up longer than training never reaches weight 1
        "KL weight 0.01": ["train.kl_warmup_epochs=100000", "train.kl_warmup_start=0.01"]}
PANELS = (("expected_loglik", "expected log-likelihood"), ("kl", "KL(q || prior), both types"),
          ("elbo", "ELBO (KL weight 1)"), ("active", "active latent dimensions"))


def one_run(name: str, args) -> tuple[pd.DataFrame, dict]:
    extra = [] if args.quick else [f"data.split={args.split}"]
    config = _common.config_for("normal", args, [*extra, *RUNS[name]])
    fitted, seconds = _common.fit_quietly(config, data=load_data(config),
                                          record=elbo_recorder(num_samples=4,
                                                               seed=config["train.seed"]))
    trace = pd.DataFrame(fitted.history)
    n = fitted.metrics["fit"]["num_fit_ratings"]
    for column in ("expected_loglik", "kl_movie", "kl_user", "elbo"):
        trace[column] = trace[column] / n  # nats per fit rating
    trace["kl"] = trace["kl_movie"] + trace["kl_user"]
    trace.insert(0, "run", name)
    last = trace.iloc[-1]
    summary = {"run": name, "epochs": int(last["epoch"]), "kl_weight": last["kl_weight"],
               "expected_loglik": last["expected_loglik"], "kl_movie": last["kl_movie"],
               "kl_user": last["kl_user"], "elbo": last["elbo"], "active": int(last["active"]),
               "val_rmse": last["val_rmse"], "test_rmse": fitted.metrics["test"]["rmse"],
               "seconds": seconds}
    print(f"{name}: {seconds:.1f} s")
    return trace, summary


def figure(trace: pd.DataFrame, warmup_epochs: int):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(18, 4))
    for ax, (column, title) in zip(axes, PANELS):
        for name, run in trace.groupby("run", sort=False):
            ax.plot(run["epoch"], run[column], label=name)
        ax.axvline(warmup_epochs + 0.5, color="gray", ls=":", lw=1)
        ax.set(title=title, xlabel="epoch",
               ylabel="nats per rating" if column != "active" else "dimensions")
    axes[0].legend(fontsize=8)
    fig.suptitle("The ELBO's parts during training (dotted: end of the shipped warm-up)")
    fig.tight_layout()
    return fig


def main() -> None:
    p = _common.parser(__doc__, "runs/elbo_parts")
    p.add_argument("--split", default="u1")
    args = p.parse_args()
    _common.quiet_logs()
    out = _common.out_dir(args)
    traces, summaries = zip(*(one_run(name, args) for name in RUNS))
    trace = pd.concat(traces, ignore_index=True)
    warmup = _common.config_for("normal", args)["train.kl_warmup_epochs"]
    _common.save_figure(figure(trace, warmup), out, "elbo_parts.png")
    _common.save_table(trace, out, "trace", show=False)
    _common.save_table(pd.DataFrame(summaries), out, "summary")


if __name__ == "__main__":
    main()
