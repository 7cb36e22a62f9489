"""Does the OpenMP wait policy matter for training speed here?

Question
    torch's OpenMP threads spin-wait by default. On a shared 2-core machine that can
    make every step many times slower; the CLI therefore sets ``OMP_WAIT_POLICY=PASSIVE``
    before torch loads. How large is the effect on this machine, now?
Data
    Synthetic ratings at MovieLens 100K's shape (no files needed).
Model
    ``models/gaussian.toml``; the same SVI steps are timed in fresh processes, once with
    the policy unset (OpenMP's default) and once with PASSIVE, at 1 and 2 threads.
Simplified
    Timings depend on what else the machine runs: the figures are printed side by side
    with their reference (PASSIVE, same threads) as a ratio, from one interleaved run.

Run: ``python analysis/benchmark_threads.py [--quick] [--steps N] [--repeats R]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--repeats", "1"]

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys, time
import numpy as np, pyro, torch
from deepfactor.batching import RatingBatcher
from deepfactor.config import load_config
from deepfactor.fitted import build_modules
from deepfactor.fitting import load_data, training_inputs
from deepfactor.optim import RowSparseAdam
from deepfactor.train import make_elbo
steps, threads, ratings = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
pyro.settings.set(module_local_params=True)
config = load_config(sys.argv[4], ["data.dataset=synthetic", "data.split=random",
                                   f"data.synthetic_ratings={ratings}"])
data = load_data(config)
model, guide = build_modules(config, data.train.num_movies, data.train.num_users)
r = data.train
inputs = training_inputs(config, r, float(r.rating.mean()), float(r.rating.std()))
batcher = RatingBatcher(r, r.rating, inputs, config["train.batch_size"], np.random.default_rng(0))
loss_fn = make_elbo(config["train.elbo"])(model, guide)
optimizer = RowSparseAdam(loss_fn.parameters(), lr=1e-3)  # the trainer's optimizer
batches = list(batcher.epoch())
def step(b):
    optimizer.zero_grad(); loss_fn(b).backward(); optimizer.step()
for b in batches[:2]:
    step(b)
start = time.perf_counter()
for k in range(steps):
    step(batches[k % len(batches)])
print(json.dumps({"ms_per_step": 1000 * (time.perf_counter() - start) / steps}))
"""


def _time(policy: str | None, threads: int, steps: int, ratings: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", _CHILD, str(steps), str(threads), str(ratings),
                          os.path.join(REPO, "models", "gaussian.toml")],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["ms_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, small data")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    steps, ratings = (5, 5000) if args.quick else (args.steps, 100_000)

    print(f"SVI step time, ms (min of {args.repeats} interleaved runs, {ratings} ratings)")
    print(f"{'threads':>8}{'PASSIVE':>10}{'default':>10}{'default / PASSIVE':>20}")
    for threads in (1, 2):
        passive, default = [], []
        for _ in range(args.repeats):  # interleave so that background load hits both
            passive.append(_time("PASSIVE", threads, steps, ratings))
            default.append(_time(None, threads, steps, ratings))
        p, d = min(passive), min(default)
        print(f"{threads:>8}{p:>10.1f}{d:>10.1f}{d / p:>20.2f}")


if __name__ == "__main__":
    main()
