"""How fast is data-parallel SVI with 1 and 2 processes here, and what does a step send?

Question
    ``torchrun -m deepfactor fit`` splits every minibatch over the ranks and sums the
    gradients with one all-reduce per step (:mod:`deepfactor.distributed`). What
    throughput do 1 and 2 processes reach on this machine, and how many bytes does each
    step move between them?
Data and split
    The built-in synthetic data (ratings simulated from the model's prior) at MovieLens
    100K's shape by default, ``random`` split and the usual validation carve; nothing is
    read from files, so every rank simulates the same data from the seed.
Model
    ``models/gaussian.toml`` with ``--batch`` ratings per global step. Each process runs
    the package's own training loop (:class:`deepfactor.train.SVITrainer`) for
    ``--epochs`` epochs without validation; 1 process is the ordinary single-process
    loop, 2 processes join a gloo group bound to 127.0.0.1 and take half of each batch.
Measured
    Seconds per global step (median over the epochs after the first, which warms up),
    ratings per second (``batch / seconds``), the ratio 2 processes / 1 process; the
    numbers in the all-reduce buffer (every parameter's gradient plus 3 flags), its bytes,
    the bytes a ring all-reduce sends per rank, ``2 (W - 1) / W`` times the buffer, and
    the measured time of that all-reduce alone (median of 20).
Simplified
    Both processes share this machine's cores with each other and with other jobs: with
    2 cores the 2-process figure shows the cost of the extra collective and of each
    rank preparing its own batch, not a speed-up one would see with a core (or a machine)
    per rank. Throughput counts training steps only (no validation or scoring). Each
    process uses ``--threads`` torch threads.
References
    PyTorch, "Writing distributed applications with PyTorch" and the ``torchrun``
    documentation (gloo backend, ``all_reduce``).

Run: ``python analysis/benchmark_distributed.py [--ratings N] [--batch B] [--epochs E]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--ratings", "3000", "--movies", "100", "--users", "80", "--batch", "500",
              "--epochs", "3"]

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see README)

from deepfactor.checkpoint import write_json  # noqa: E402  (loads torch)


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000, help="synthetic ratings")
    parser.add_argument("--movies", type=int, default=1682)
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--batch", type=int, default=10_000, help="ratings per global step")
    parser.add_argument("--epochs", type=int, default=4, help="the first one is not timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. guide.inputs=sketch (repeatable)")
    parser.add_argument("--out", default="benchmark_distributed",
                        help="folder for results.json")
    return parser.parse_args(argv)


def _rank(rank: int, size: int, port: int, args, out: Path) -> None:
    """One process: build the fit of ``fitting.fit`` without validation, train, time."""
    import numpy as np
    import pyro
    import torch

    from deepfactor import distributed
    from deepfactor.batching import RatingBatcher
    from deepfactor.config import load_config
    from deepfactor.fitted import build_modules
    from deepfactor.fitting import load_data, training_inputs
    from deepfactor.reproducibility import set_seed
    from deepfactor.train import SVITrainer, TrainSettings, make_elbo

    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)
    world = distributed.init_loopback(rank, size, port) if size > 1 else None
    config = load_config(REPO / "models" / "gaussian.toml", [
        "data.dataset=synthetic", "data.split=random", f"data.synthetic_ratings={args.ratings}",
        f"data.synthetic_movies={args.movies}", f"data.synthetic_users={args.users}",
        f"train.batch_size={args.batch}", *args.set])
    set_seed(0)
    data = load_data(config)
    model, guide = build_modules(config, data.train.num_movies, data.train.num_users)
    r = data.train
    inputs = training_inputs(config, r, float(r.rating.mean()), float(r.rating.std()), world)
    batcher = RatingBatcher(r, r.rating, inputs, args.batch, np.random.default_rng(0))
    loss_fn = make_elbo(config["train.elbo"])(model, guide)
    settings = TrainSettings(lr=config["train.lr"], epochs=args.epochs, patience=0)
    trainer = SVITrainer(loss_fn, batcher, dict, settings, progress=False, world=world)
    history = trainer.run().history
    epoch_seconds = np.diff([0.0] + [row["seconds"] for row in history])[1:]

    numbers = distributed.communication_numbers(
        loss_fn, row_sparse=not batcher.every_entity and inputs.sketch is None)
    reduce_ms = None
    if world is not None:
        buffer = torch.zeros(numbers)
        times = []
        for _ in range(21):
            start = time.perf_counter()
            torch.distributed.all_reduce(buffer)
            times.append(time.perf_counter() - start)
        reduce_ms = 1000 * statistics.median(times[1:])
        distributed.shutdown()
    if rank == 0:
        result = {"processes": size, "steps_per_epoch": len(batcher),
                  "seconds_per_step": float(np.median(epoch_seconds)) / len(batcher),
                  "numbers_per_step": numbers, "allreduce_ms": reduce_ms,
                  "bytes_per_number": torch.zeros(()).element_size()}
        write_json(out / f"processes-{size}.json", result)


def main(argv=None) -> None:
    import torch.multiprocessing as mp

    from deepfactor.distributed import free_loopback_port

    args = _arguments(argv)
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the first is not timed)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in (1, 2):
        mp.spawn(_rank, args=(size, free_loopback_port(), args, out), nprocs=size, join=True)
        results[size] = json.loads((out / f"processes-{size}.json").read_text())

    one, two = results[1], results[2]
    print(f"synthetic {args.ratings} ratings ({args.movies} movies x {args.users} users), "
          f"global batch {args.batch}, {one['steps_per_epoch']} steps per epoch, "
          f"{args.threads} torch thread(s) per process, {os.cpu_count()} cores")
    print(f"{'processes':>9} {'s/step':>9} {'ratings/s':>11} {'ratio to 1':>11}")
    for size, row in results.items():
        rate = args.batch / row["seconds_per_step"]
        row["ratings_per_second"] = rate
        ratio = rate / (args.batch / one["seconds_per_step"])
        print(f"{size:>9} {row['seconds_per_step']:>9.4f} {rate:>11.0f} {ratio:>11.2f}")
    size_bytes = two["numbers_per_step"] * two["bytes_per_number"]
    ring = 2 * (2 - 1) / 2 * size_bytes
    print(f"all-reduce per step: {two['numbers_per_step']} numbers = {size_bytes / 1e6:.2f} MB; "
          f"a ring all-reduce sends {ring / 1e6:.2f} MB per rank with 2 ranks "
          f"(2 (W-1)/W x the buffer); measured {two['allreduce_ms']:.2f} ms alone, "
          f"{two['allreduce_ms'] / 1000 / two['seconds_per_step']:.0%} of a 2-process step")
    summary = {"args": vars(args), "results": results, "allreduce_bytes": size_bytes,
               "ring_bytes_per_rank": ring}
    write_json(out / "results.json", summary)


if __name__ == "__main__":
    main()
