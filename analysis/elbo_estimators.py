"""Trace_ELBO against TraceMeanField_ELBO on MovieLens 100K: same bound, how much noise?

Question
    The two estimators target the same ELBO; TraceMeanField_ELBO computes the
    Normal-Normal KL in closed form instead of by one Monte Carlo draw. How much lower
    is its variance on our model, at the same parameters, for the loss and its gradient?
Data and split
    MovieLens 100K u1.base (the fit part after the validation carve), or the built-in
    synthetic data with ``--quick``.
Model
    ``models/gaussian.toml``, trained for a few epochs so that the posterior is not the
    prior; then both estimators are evaluated repeatedly on the same minibatches.
Simplified
    One parameter setting (after a short fit), not the whole trajectory.

Run: ``python analysis/elbo_estimators.py [--quick] [--repeats 50]``; prints a table.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--repeats", "5"]

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepfactor.config import load_config  # noqa: E402
from deepfactor.fitting import fit  # noqa: E402
from deepfactor.batching import RatingBatcher  # noqa: E402
from deepfactor.data.splits import carve_validation  # noqa: E402
from deepfactor.train import make_elbo  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    overrides = ["train.epochs=8", "train.kl_warmup_epochs=0", "train.patience=0"]
    if args.quick:
        overrides += ["data.dataset=synthetic", "data.split=random", "data.synthetic_movies=100",
                      "data.synthetic_users=80", "data.synthetic_ratings=3000",
                      "train.batch_size=500", "train.epochs=3"]
    config = load_config(os.path.join(REPO, "models", "gaussian.toml"), overrides)
    fitted = fit(config, progress=False)

    # the fit part the model was trained on, with the encoders reading it
    train = fitted.encoder_ratings
    fit_part, _ = carve_validation(train, config["data.validation_fraction"],
                                   config["train.seed"])
    batcher = RatingBatcher(fit_part, fit_part.rating, fitted.inputs,
                            config["train.batch_size"], np.random.default_rng(1))
    batches = list(batcher.epoch())[:4]
    fitted.model.train()
    fitted.guide.train()

    print(f"{'estimator':<22}{'loss sd (nats)':>16}{'grad sd / |mean grad|':>24}")
    rows = {}
    for kind in ("trace", "meanfield"):
        loss_fn = make_elbo(kind)(fitted.model, fitted.guide)
        sds, rel = [], []
        for batch in batches:
            losses, grads = [], []
            for _ in range(args.repeats):
                loss_fn.zero_grad()
                loss = loss_fn(batch)
                loss.backward()
                losses.append(loss.item())
                grads.append(torch.cat([p.grad.to_dense().flatten()  # first layers: sparse
                                        for p in loss_fn.parameters()
                                        if p.grad is not None]).clone())
            g = torch.stack(grads)
            sds.append(np.std(losses, ddof=1))
            rel.append(float(g.std(0).norm() / g.mean(0).norm()))
        rows[kind] = (float(np.mean(sds)), float(np.mean(rel)))
        name = {"trace": "Trace_ELBO", "meanfield": "TraceMeanField_ELBO"}[kind]
        print(f"{name:<22}{rows[kind][0]:>16.2f}{rows[kind][1]:>24.3f}")
    print(f"ratio Trace / MeanField: loss sd {rows['trace'][0] / rows['meanfield'][0]:.1f}x, "
          f"gradient noise {rows['trace'][1] / rows['meanfield'][1]:.2f}x")


if __name__ == "__main__":
    main()
