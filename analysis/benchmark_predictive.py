"""How long do 100 posterior draws for all 20,000 u1.test ratings take, and how much memory?

Question
    ``deepfactor check`` needs, for every held-out rating, S = 100 posterior predictive
    draws and the pointwise log-likelihood (the ArviZ object), plus the PIT and the
    predictive mean and sd. The goal is under 10 s on 2 cores with memory bounded by
    chunked decoding. How does :func:`deepfactor.checks.draw_predictive` compare with
    the way Pyro's own tools give the same arrays?
Reference
    ``pyro.infer.Predictive(model, guide=guide, num_samples=S, parallel=True,
    return_sites=["rating"])`` on one batch holding every test pair, for the replicated
    ratings, then ``get_vectorized_trace`` and ``compute_log_prob`` for the pointwise
    log-likelihood (its ``unscaled_log_prob``; see notes/library-facts.md section 5).
    It decodes all pairs of all draws at once. Both sides are timed in the same run;
    each table row ends with the ratio ours / reference, and the time also against
    the 10 s goal.
Data and split
    MovieLens 100K u1: the encoders read u1.base, the draws are for u1.test. With
    ``--quick``, the built-in synthetic data (400 movies x 300 users, 10,000 ratings).
Model
    ``models/gaussian.toml``. Without ``--run`` the weights are at their seeded
    initialization: the cost does not depend on their values. ``--run RUN`` times a
    fitted run instead.
Measured
    Wall time: the best of ``--repeats`` calls (the machine is shared). Peak memory: the
    rise of the process's peak resident set (VmHWM, reset through
    ``/proc/self/clear_refs`` before the call) over its resident set before it, in a
    fresh process per method so that neither inherits the other's freed heap.
Simplified
    Our side also computes the PIT and the mixture moments, which the reference does
    not: the comparison is, if anything, in the reference's favour. Linux only (procfs).

Run: ``python analysis/benchmark_predictive.py [--quick] [--run RUN] [--repeats 3]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--repeats", "1"]

import argparse
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_SECONDS = 10.0
METHODS = ("deepfactor", "pyro")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _setup(args):
    """The fitted model and the held-out pairs with their targets."""
    import pyro

    from deepfactor.config import load_config
    from deepfactor.fitted import FittedModel, build_modules, load
    from deepfactor.fitting import load_data, training_inputs

    pyro.settings.set(module_local_params=True)
    if args.run:
        fitted = load(args.run)
        data = load_data(fitted.config)
    else:
        overrides = ["data.dataset=synthetic", "data.split=random",
                     "data.synthetic_movies=400", "data.synthetic_users=300",
                     "data.synthetic_ratings=10000"] if args.quick else []
        config = load_config(os.path.join(REPO, "models", "gaussian.toml"), overrides)
        data = load_data(config)
        model, guide = build_modules(config, data.train.num_movies, data.train.num_users)
        train = data.train
        center, spread = float(np.mean(train.rating)), float(np.std(train.rating))
        fitted = FittedModel(config, model, guide, train, center, spread,
                             sketch=training_inputs(config, train, center, spread).sketch)
    test = fitted.reindex(data.test)
    target = fitted.model.likelihood.prepare(test.rating)
    return fitted, test, target


def _ours(fitted, test, target, num_samples):
    from deepfactor.checks import draw_predictive

    out = draw_predictive(fitted.model, fitted.posterior,
                          {"heldout": (test.movie, test.user, target)},
                          num_samples=num_samples, seed=0)["heldout"]
    return out.replicated, out.log_lik


def _pyro(fitted, test, target, num_samples):
    import torch
    from pyro.infer import Predictive

    from deepfactor.batching import make_batch

    batch = make_batch(test, target, np.arange(len(test)), fitted.inputs)
    predictive = Predictive(fitted.model, guide=fitted.guide, num_samples=num_samples,
                            return_sites=["rating"], parallel=True)
    with torch.no_grad():
        replicated = predictive(batch.without_target())["rating"]  # (S, N)
        trace = predictive.get_vectorized_trace(batch)
        trace.compute_log_prob()
        log_lik = trace.nodes["rating"]["unscaled_log_prob"]  # (S, N)
    return replicated.numpy(), log_lik.numpy()


def worker(args) -> None:
    """Time one method in this process; print one JSON line."""
    import torch

    fitted, test, target = _setup(args)
    method = {"deepfactor": _ours, "pyro": _pyro}[args.worker]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_kb("VmRSS")
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        replicated, log_lik = method(fitted, test, target, args.samples)
        seconds.append(time.perf_counter() - start)
        assert replicated.shape == log_lik.shape == (args.samples, len(test))
        assert np.isfinite(log_lik).all()
        del replicated, log_lik
    print(json.dumps({"seconds": min(seconds), "peak_mb": (_status_kb("VmHWM") - before) / 1024,
                      "num_ratings": len(test), "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, seconds")
    parser.add_argument("--run", help="time a fitted run directory instead")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    passed = sys.argv[1:]
    results = {}
    for method in METHODS:
        done = subprocess.run([sys.executable, __file__, *passed, "--worker", method],
                              capture_output=True, text=True, check=True)
        results[method] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, ref = results["deepfactor"], results["pyro"]
    data = "synthetic (--quick)" if args.quick else (args.run or "ml-100k u1, initial weights")
    print(f"{args.samples} posterior draws x {ours['num_ratings']} held-out ratings: {data}; "
          f"{ours['threads']} torch threads, best of {args.repeats}")
    print(f"{'':<28}{'deepfactor.checks':>18}{'Pyro Predictive':>17}{'ratio':>8}")
    print(f"{'time (s)':<28}{ours['seconds']:>18.2f}{ref['seconds']:>17.2f}"
          f"{ours['seconds'] / ref['seconds']:>7.2f}x")
    print(f"{'peak memory rise (MB)':<28}{ours['peak_mb']:>18.0f}{ref['peak_mb']:>17.0f}"
          f"{ours['peak_mb'] / max(ref['peak_mb'], 1e-9):>7.2f}x")
    print(f"{'time against the 10 s goal':<28}{ours['seconds']:>18.2f}{GOAL_SECONDS:>17.2f}"
          f"{ours['seconds'] / GOAL_SECONDS:>7.2f}x")


if __name__ == "__main__":
    main()
