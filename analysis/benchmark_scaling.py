"""Does an epoch cost time linear in the number of ratings, and what does Pyro cost on top?

Question
    With sketched encoder inputs (the default) a training step should cost
    ``O(B + entities in the batch)`` after a one-off ``O(ratings x d)`` projection
    (timed apart, with the building of the inputs, as ``inputs s``); with sparse inputs
    (``--set guide.inputs=sparse``), bounded reads (``guide.max_inputs``) and a row-sparse
    first layer, ``O(B + (entities in the batch) x K)``. Either way seconds per epoch
    should grow linearly in the ratings (slope of log(epoch time) against log(ratings)
    at most 1.1). How fast is it at 100K, 1M, 5M and 25M ratings on 2 threads, how much
    memory does it hold, and how does the Pyro path compare with the same minibatch
    computation written in plain PyTorch?
Data
    MovieLens-like synthetic ratings (:mod:`deepfactor.synthetic`: Zipf-like movie
    popularity and user activity, at least 20 ratings per user, MovieLens entity counts),
    drawn from a small truth model (decoder 40 tanh units on the product); no files.
Model
    ``models/gaussian.toml`` (its batch size and order, widths and encoder inputs),
    Normal likelihood, ``Trace_ELBO``. The Pyro path is the trainer's own step
    (``SVITrainer._step``: loss, backward, :class:`~deepfactor.optim.RowSparseAdam`,
    NaN guard) on batches from :class:`~deepfactor.batching.RatingBatcher`, in the
    config's ``train.batch_order`` (blocked by default; ``--set
    train.batch_order=random`` for the comparison); its ``movie_groups`` choice is timed
    apart (``choose_groups_s`` in the JSON). The plain
    path copies the same decoder and encoders and writes the same estimator by hand:
    reparameterized draws, ``log q - log p`` of each latent weighted as the plates and
    ``poutine.scale`` weight them, the Normal log-likelihood times ``N / B``; same
    optimizer, same batches (batch building is timed in both), and the same
    ``train.precision`` (``--set train.precision=bfloat16`` runs both paths' forward
    passes under :func:`deepfactor.train.training_precision`) and the same
    ``train.compile`` (both run :func:`deepfactor.train.compile_decoder`'s decoder;
    the trainer compiles it when built, timed apart as ``trainer_setup_s``).
Simplified
    * Each size is timed on ``--max-steps`` steps at most, spread evenly over one
      epoch's order, and the epoch time is extrapolated (steps per epoch x mean step
      time, batch building included, plus building the epoch's order once); the output
      says when. Only training steps are timed: no validation, no scoring.
    * The two paths are timed in interleaved blocks in one process, so that a change in
      the machine's load hits both; their ratio is the figure to read, not the absolute
      times, on a shared machine. The load average is printed before and after.
    * Peak resident memory is the child process's peak after data generation and the Pyro
      path's first steps, before the plain path's copy of the parameters is made (what a
      fit holds, without the predictive pass at the end). Generation's own temporaries
      are included, so it is an upper bound.

Run: ``python analysis/benchmark_scaling.py [--sizes N ...] [--threads 2] [--out FILE]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: tiny sizes, a few steps, in seconds.
QUICK_ARGS = ["--sizes", "3000", "20000", "--max-steps", "4", "--out", "scaling.json"]

import argparse
import json
import math
import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SIZES = [100_000, 1_000_000, 5_000_000, 25_000_000]
TARGETS = {"slope": 1.1, "ratings_per_s_largest": 500_000, "epoch_s_largest": 60.0,
           "peak_gib": 4.0, "epoch_s_100k": 1.0, "pyro_over_plain": 0.7}


def _child(num_ratings: int, threads: int, max_steps: int, config_path: str,
           overrides: list[str]) -> dict:
    """Time one size in this process; returns the row of the table."""
    import copy
    import resource
    import time

    import pyro

    from deepfactor.batching import RatingBatcher
    from deepfactor.config import load_config
    from deepfactor.fitted import build_modules
    from deepfactor.fitting import training_inputs
    from deepfactor.optim import RowSparseAdam
    from deepfactor.order import distinct_entities
    from deepfactor.synthetic import movielens_shape, simulate_movielens
    from deepfactor.train import (SVITrainer, TrainSettings, compile_decoder, make_elbo,
                                  training_precision)

    torch.set_num_threads(threads)
    pyro.settings.set(module_local_params=True)
    pyro.set_rng_seed(0)
    config = load_config(config_path, overrides)
    num_movies, num_users = movielens_shape(num_ratings)

    start = time.perf_counter()
    truth_config = load_config(config_path, [*overrides, "model.decoder_hidden=[40]",
                                             "model.decoder_inputs=product"])
    truth, _ = build_modules(truth_config, num_movies, num_users)
    ratings, _ = simulate_movielens(truth, num_ratings, seed=0, output_bias=3.5)
    del truth
    generate_s = time.perf_counter() - start

    center, spread = float(ratings.rating.mean()), float(ratings.rating.std())
    start = time.perf_counter()
    inputs = training_inputs(config, ratings, center, spread)  # with the sketch, if any
    inputs_s = time.perf_counter() - start
    start = time.perf_counter()
    batcher = RatingBatcher(ratings, ratings.rating, inputs, config["train.batch_size"],
                            np.random.default_rng(0), order=config["train.batch_order"],
                            movie_groups=config["train.movie_groups"])
    batcher_s = time.perf_counter() - start  # the blocked order's choice of groups
    model, guide = build_modules(config, num_movies, num_users)
    with torch.no_grad():
        model.decoder.output_bias.fill_(center)
    loss_fn = make_elbo("trace")(model, guide)
    start = time.perf_counter()
    trainer = SVITrainer(loss_fn, batcher, dict, TrainSettings.from_config(config),
                         progress=False)
    setup_s = time.perf_counter() - start  # with train.compile, the decoder's compilation
    start = time.perf_counter()
    order = batcher.permutation()
    order_s = time.perf_counter() - start  # once per epoch
    size = batcher.batch_size
    steps_per_epoch = len(batcher)
    timed = min(max_steps, steps_per_epoch)
    # the timed steps are spread evenly over the epoch's order, repeated if it is short
    timed_batches = np.linspace(0, steps_per_epoch - 1, timed).round().astype(int)
    entities = distinct_entities(ratings, order, size, timed_batches)

    def positions(k: int) -> np.ndarray:
        k = timed_batches[k % timed]
        return order[k * size:(k + 1) * size]

    def pyro_step(k: int) -> None:
        trainer._step(batcher.batch(positions(k)))

    pyro_step(0)
    pyro_step(1)  # warm-up: allocations, optimizer state
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    plain = _PlainELBO(copy.deepcopy(model), copy.deepcopy(guide))
    plain_opt = RowSparseAdam(plain.parameters(), lr=config["train.lr"])
    if config["train.compile"]:  # the same compiled decoder as the trainer's steps
        plain.decoder.forward = compile_decoder(plain.decoder, config["train.precision"])

    def plain_step(k: int) -> None:
        batch = batcher.batch(positions(k))
        plain_opt.zero_grad()
        with training_precision(config["train.precision"]):  # as the trainer's step
            loss = plain(batch)
        loss.backward()
        plain_opt.step()

    plain_step(0)
    plain_step(1)
    seconds = {"pyro": 0.0, "plain": 0.0}
    block = max(1, min(10, timed // 4))
    done = 0
    while done < timed:  # interleaved blocks, alternating which path goes first
        n = min(block, timed - done)
        paths = [("pyro", pyro_step), ("plain", plain_step)]
        for name, step in paths if (done // block) % 2 == 0 else paths[::-1]:
            t = time.perf_counter()
            for k in range(2 + done, 2 + done + n):
                step(k)
            seconds[name] += time.perf_counter() - t
        done += n

    row = {"num_ratings": num_ratings, "num_movies": num_movies, "num_users": num_users,
           "batch_size": size, "max_inputs": config["guide.max_inputs"],
           "inputs": config["guide.inputs"], "inputs_s": inputs_s,
           "batch_order": batcher.order, "movie_groups": batcher.movie_groups,
           "precision": config["train.precision"], "compiled": config["train.compile"],
           "trainer_setup_s": setup_s,
           "choose_groups_s": batcher_s if batcher.movie_groups else None,
           "order_s": order_s, "small_data": batcher.every_entity,
           "entities_per_batch": entities,
           "steps_per_epoch": steps_per_epoch, "steps_timed": timed,
           "extrapolated": timed < steps_per_epoch, "generate_s": generate_s,
           "peak_rss_gib": peak_bytes / 2**30}
    for name, total in seconds.items():
        epoch = total / timed * steps_per_epoch + order_s
        row[f"{name}_ms_per_step"] = 1000 * total / timed
        row[f"{name}_epoch_s"] = epoch
        row[f"{name}_ratings_per_s"] = num_ratings / epoch
    row["pyro_over_plain"] = row["pyro_ratings_per_s"] / row["plain_ratings_per_s"]
    return row


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - _HALF_LOG_2PI


class _PlainELBO(nn.Module):
    """-ELBO minibatch estimate of deepfactor's model and guide, without Pyro."""

    def __init__(self, model, guide):
        super().__init__()
        self.decoder = model.decoder
        self.movie_encoder, self.user_encoder = guide.movie_encoder, guide.user_encoder
        self.num_movies, self.num_users = model.num_movies, model.num_users
        # PyroParam(positive) holds log(sigma) unconstrained, as here
        self.log_sigma = nn.Parameter(model.likelihood.sigma.detach().log().clone())

    def _latent(self, encoder, bag, rows, entities, entity_scale, num_entities):
        loc, scale = encoder(bag)  # (E, D) each
        if rows is not None:  # a bag of every entity (small data): the batch's rows
            loc, scale = loc.index_select(0, rows), scale.index_select(0, rows)
        z = loc + scale * torch.randn_like(loc)
        log_ratio = (_normal_log_prob(z, loc, scale)
                     - _normal_log_prob(z, torch.zeros_like(z), torch.ones_like(z)))
        # the plate's subsample scale times the per-entity scale, as Pyro weights them
        weight = entity_scale * (num_entities / len(entities))
        return z, (weight * log_ratio.sum(-1)).sum()

    def forward(self, batch):
        z_movie, kl_movie = self._latent(self.movie_encoder, batch.movie_bag,
                                         batch.movie_rows, batch.movies,
                                         batch.movie_scale, self.num_movies)
        z_user, kl_user = self._latent(self.user_encoder, batch.user_bag, batch.user_rows,
                                       batch.users, batch.user_scale, self.num_users)
        eta = self.decoder(z_movie.index_select(0, batch.movie_local),  # (B,), as the model
                           z_user.index_select(0, batch.user_local))
        log_lik = _normal_log_prob(batch.target, eta, self.log_sigma.exp()).sum()
        return kl_movie + kl_user - log_lik * (batch.num_ratings / len(batch))


def _threading() -> dict:
    from deepfactor.reproducibility import native_bfloat16

    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_num_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bfloat16": native_bfloat16()}


def _slope(rows: list[dict], key: str) -> float | None:
    if len(rows) < 2:
        return None  # null in the JSON: one size has no slope
    x = np.log([r["num_ratings"] for r in rows])
    return float(np.polyfit(x, np.log([r[key] for r in rows]), 1)[0])


def _report(rows: list[dict], threading: dict, load: tuple) -> dict:
    print(f"threads: {threading}")
    print(f"load average before: {load[0]:.2f}, after: {load[1]:.2f} (2 cores)")
    compiled = (", decoder compiled in both (building the trainer, compilation included: "
                + ", ".join(f"{r['trainer_setup_s']:.1f}" for r in rows) + " s)"
                if rows[0]["compiled"] else "")
    print(f"train.precision: {rows[0]['precision']} (both paths), batch size "
          f"{rows[-1]['batch_size']}{compiled}")
    head = (f"{'ratings':>11} {'movies':>7} {'users':>7} {'steps':>9} {'order':>9} "
            f"{'entities':>8} {'epoch s':>8} "
            f"{'ratings/s':>10} {'plain s':>8} {'plain r/s':>10} {'pyro/plain':>10} "
            f"{'peak GiB':>8} {'gen s':>6} {'inputs s':>8}")
    print(head)
    for r in rows:
        steps = f"{r['steps_timed']}/{r['steps_per_epoch']}"
        order = r["batch_order"] + (f" G={r['movie_groups']}" if r["movie_groups"] else
                                     " (small)" if r["small_data"] else "")
        print(f"{r['num_ratings']:>11,} {r['num_movies']:>7,} {r['num_users']:>7,} "
              f"{steps:>9} {order:>9} {r['entities_per_batch']:>8,.0f} "
              f"{r['pyro_epoch_s']:>8.2f} {r['pyro_ratings_per_s']:>10,.0f} "
              f"{r['plain_epoch_s']:>8.2f} {r['plain_ratings_per_s']:>10,.0f} "
              f"{r['pyro_over_plain']:>10.2f} {r['peak_rss_gib']:>8.2f} {r['generate_s']:>6.1f} "
              f"{r['inputs_s']:>8.1f}")
    if any(r["extrapolated"] for r in rows):
        print("epoch times marked steps k/n were timed on k of the epoch's n steps, spread "
              "over it, and extrapolated (n x mean step time, plus building the order)")
    print("entities: distinct movies + users per batch (what the encoders run on); "
          "G: movie groups of the blocked order; (small): at most 16 batches, random "
          "whatever was asked")
    slope, plain_slope = _slope(rows, "pyro_epoch_s"), _slope(rows, "plain_epoch_s")
    largest = rows[-1]
    checks = {
        "ratings_per_s_largest": (
            largest["pyro_ratings_per_s"],
            largest["pyro_ratings_per_s"] >= TARGETS["ratings_per_s_largest"]),
        "epoch_s_largest": (largest["pyro_epoch_s"],
                            largest["pyro_epoch_s"] <= TARGETS["epoch_s_largest"]),
        "peak_gib": (max(r["peak_rss_gib"] for r in rows),
                     max(r["peak_rss_gib"] for r in rows) < TARGETS["peak_gib"]),
        "pyro_over_plain": (min(r["pyro_over_plain"] for r in rows),
                            min(r["pyro_over_plain"] for r in rows) >= TARGETS["pyro_over_plain"]),
    }
    if len(rows) > 1:  # a slope needs two sizes
        checks = {"slope": (slope, slope <= TARGETS["slope"]), **checks}
    near_100k = [r for r in rows if r["num_ratings"] == 100_000]
    if near_100k:
        e = near_100k[0]["pyro_epoch_s"]
        checks["epoch_s_100k"] = (e, e < TARGETS["epoch_s_100k"])
    if len(rows) > 1:
        print(f"slope of log(epoch s) on log(ratings): Pyro {slope:.3f}, "
              f"plain {plain_slope:.3f}")
    if largest["num_ratings"] < 25_000_000:
        print(f"(the targets are set for 25,000,000 ratings; the largest size here is "
              f"{largest['num_ratings']:,})")
    for name, (value, ok) in checks.items():
        print(f"  {name:<24} {value:>12.3f}  target {TARGETS[name]:<9g} "
              f"{'met' if ok else 'NOT met'}")
    return {"rows": rows, "threading": threading, "load_average": list(load),
            "slope": slope, "plain_slope": plain_slope, "targets": TARGETS,
            "checks": {k: {"value": v, "met": ok} for k, (v, ok) in checks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=60,
                        help="steps timed per size at most (then extrapolated)")
    parser.add_argument("--config", default=os.path.join(REPO, "models", "gaussian.toml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for deepfactor fit (repeatable)")
    parser.add_argument("--out", default="benchmark_scaling.json", help="JSON file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.threads, args.max_steps, args.config,
                                args.set)))
        return

    from deepfactor.config import load_config

    config = load_config(args.config, args.set)
    if config["model.likelihood"] != "normal" or config["model.pair_scale"]:
        # _PlainELBO, the reference, writes out the shared-scale Normal model only
        sys.exit(f"{args.config}: the plain PyTorch reference implements the Normal "
                 "likelihood with one shared sigma; use model.likelihood = 'normal' and "
                 "model.pair_scale = false")
    load_before = os.getloadavg()[0]
    rows = []
    for n in sorted(args.sizes):  # one process per size: its own peak memory
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--threads",
                              str(args.threads), "--max-steps", str(args.max_steps),
                              "--config", args.config,
                              *(f"--set={kv}" for kv in args.set)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"size {n} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done {n:,} ratings: {rows[-1]['pyro_epoch_s']:.2f} s/epoch", flush=True)
    torch.set_num_threads(args.threads)
    from deepfactor.checkpoint import write_json

    print(f"config: {args.config} {' '.join(args.set)}")
    result = _report(rows, _threading(), (load_before, os.getloadavg()[0]))
    result["config"], result["overrides"] = args.config, args.set
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
