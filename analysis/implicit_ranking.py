"""Top-10 lists from the implicit model on the Microsoft Recommenders split, against BiVAE.

Question
    The explicit models rank movies predicted to be *rated highly*, and lose even to
    popularity on top-10 lists (README, "Ranking"). Does the same model, observing
    *which* movies each user rated (``deepfactor.implicit``: a Bernoulli 0/1 for every
    cell), reach BiVAE on BiVAE's own benchmark?
Data and split
    MovieLens 100K ``u.data`` in file order, split 75/25 per user as the Microsoft
    Recommenders benchmark splits it (``deepfactor.ranking.stratified_split``, seed 42);
    or, with ``--protocol u1``, the shipped u1.base / u1.test (where Cornac's BiVAE
    reached nDCG@10 about 0.34 with ratings >= 4 relevant, issue 4). ``--validate``
    tunes on the training part only: it is split again, 80/20 per user (seed 7), and
    the test part is not read. With ``--quick``: synthetic ratings.
Model
    ``models/implicit.toml`` (``data.implicit``): fit() builds the cells of the training
    part (``implicit_cells``; every cell, or ``--negatives`` zeros per positive). The
    fit's own test metrics (AUC, log-loss) use the held-out positives and as many cells
    drawn from those rated in neither part (``held_out_cells``, seeded by each fit's
    seed, so several fits' AUCs are on different empty cells). The validation carve for
    early stopping is taken from the cells, as in every fit. ``--members K`` fits seeds
    ``seed .. seed + K - 1`` and ranks by their mixture's predictive mean
    (``evaluate_rankings`` with a list of fits); ``--each`` also ranks by each alone.
Measured
    Precision@10, Recall@10, nDCG@10, MAP and MAP@10 with every test item relevant (the
    benchmark's convention) and with ratings >= 4 relevant, each user's training movies
    left out; beside them the popularity list (most-rated training movies) and BiVAE's
    published figures from the benchmark's table, with the ratio ours / BiVAE. Fit and
    ranking seconds.
Simplified
    BiVAE's numbers are copied from the Recommenders benchmark table, not run here. A
    held-out positive is a training zero (the user had not rated the movie in the
    training part): that is the benchmark's setting, and no held-out value is read.
References
    Truong, Salah & Lauw (2021), "Bilateral Variational Autoencoder for Collaborative
    Filtering"; Microsoft Recommenders, ``examples/06_benchmarks/movielens.ipynb``
    (MovieLens 100K, top-k table).

Run: ``python analysis/implicit_ranking.py [--validate] [--epochs N] [--negatives R]``.
"""

from __future__ import annotations

# What tests/test_analysis.py runs: the quick mode, in seconds.
QUICK_ARGS = ["--quick", "--out", "out"]

import json  # noqa: E402
import time  # noqa: E402

import _common  # noqa: E402  (sets the Agg backend and OMP policy first)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from deepfactor.checkpoint import write_text  # noqa: E402

#: BiVAE on MovieLens 100K, stratified 75/25, k = 10: the Recommenders benchmark table.
BIVAE = {"precision_at_k": 0.412, "recall_at_k": 0.219, "ndcg_at_k": 0.475, "map": 0.146}


def train_and_test(args):
    """The protocol's training and test ratings (see the module docstring)."""
    from deepfactor.data.datasets import resolve_dataset
    from deepfactor.data.splits import load_split
    from deepfactor.ranking import stratified_split

    if args.protocol == "u1" and not args.quick:
        split = load_split(resolve_dataset("ml-100k", None), "u1")
        return split.train, split.test
    return stratified_split(every_rating(args), 0.75, 42)


def every_rating(args):
    """All ratings in file order (MovieLens 100K, or synthetic ones with ``--quick``)."""
    from deepfactor.data.datasets import resolve_dataset
    from deepfactor.data.ratings import Ratings
    from deepfactor.data.splits import load_split
    from deepfactor.fitting import load_data

    if not args.quick:
        return load_split(resolve_dataset("ml-100k", None), "all").train
    data = load_data(_common.config_for("implicit", args, ["model.binary_ratings=false",
                                                            "data.implicit=false"]))
    both = [data.train, data.test]
    return Ratings(*(np.concatenate([getattr(r, f) for r in both])
                     for f in ("movie", "user", "rating")),
                   data.train.movie_ids, data.train.user_ids, source="synthetic")


def popularity(train, test, k: int, threshold) -> dict:
    """Ranking metrics of the most-rated training movies each user has not rated."""
    from deepfactor.ranking import ranking_metrics

    order = np.argsort(-train.movie_counts(), kind="stable")
    order = order[train.movie_counts()[order] > 0]
    seen: dict[int, set] = {}
    for m, u in zip(train.movie, train.user):
        seen.setdefault(int(u), set()).add(int(m))
    keep = np.ones(len(test), bool) if threshold is None else test.rating >= threshold
    relevant: dict[int, set] = {}
    for m, u in zip(test.movie[keep], test.user[keep]):
        if int(u) in seen:  # users with training ratings, as evaluate_ranking scores
            relevant.setdefault(int(u), set()).add(int(m))
    lists = {}
    for u in relevant:
        mine = seen[u]
        lists[u] = [int(m) for m in order if int(m) not in mine][:k]
    return ranking_metrics(lists, relevant, k)


def main() -> None:
    from deepfactor.fitting import SplitData
    from deepfactor.ranking import RANKING_KEYS, evaluate_rankings, stratified_split

    p = _common.parser(__doc__, "runs/implicit_ranking")
    p.add_argument("--protocol", choices=("stratified", "u1"), default="stratified",
                   help="the Recommenders 75/25 split (default) or u1.base / u1.test")
    p.add_argument("--validate", action="store_true",
                   help="score a validation part of the training split, not its test part")
    p.add_argument("--negatives", type=float, default=None,
                   help="zeros drawn per positive (default: every cell)")
    p.add_argument("--samples", type=int, default=None,
                   help="posterior draws per score (default: eval.num_samples)")
    p.add_argument("--members", type=int, default=1,
                   help="fits with seeds seed, seed+1, ...; lists rank by their mixture")
    p.add_argument("--each", action="store_true",
                   help="with --members: also rank by each fit alone")
    args = p.parse_args()
    _common.quiet_logs()
    out = _common.out_dir(args)
    config = _common.config_for("implicit", args)

    train, test = train_and_test(args)
    part = "test part"
    if args.validate:
        train, test = stratified_split(train, 0.8, 7)
        part = "validation part (20% of the training part)"
    if args.negatives is not None:
        config = config.replace(**{"data.implicit_negatives": args.negatives})
    members, fit_seconds = [], []
    for seed in range(args.seed, args.seed + args.members):
        # data.implicit: fit() builds the cells from the training ratings, and scores
        # the test pairs against as many empty cells
        fitted, seconds = _common.fit_quietly(config.replace(**{"train.seed": seed}),
                                              data=SplitData(train, test, args.protocol))
        members.append(fitted)
        fit_seconds.append(seconds)
    cells = members[0].encoder_ratings

    thresholds = (None, 4.0)
    start = time.perf_counter()
    ours = evaluate_rankings(members, test, thresholds=thresholds,
                             num_samples=args.samples)
    ranking_seconds = time.perf_counter() - start
    name = ("deepfactor implicit" if args.members == 1
            else f"deepfactor implicit, {args.members} seeds")
    alone = {}
    if args.each and args.members > 1:
        for seed, member in zip(range(args.seed, args.seed + args.members), members):
            alone[f"deepfactor implicit, seed {seed} alone"] = evaluate_rankings(
                member, test, thresholds=thresholds, num_samples=args.samples)
    rows = []
    for number, (threshold, scores) in enumerate(zip(thresholds, ours)):
        relevance = "every test item" if threshold is None else "rating >= 4"
        popular = popularity(train, test, 10, threshold)
        methods = [(name, scores)] + [(key, value[number]) for key, value in alone.items()]
        for method, values in methods + [("popularity", popular)]:
            rows.append({"relevance": relevance, "model": method,
                         "users": values["num_users"],
                         **{key: values[key] for key in RANKING_KEYS}})
        if threshold is None and not (args.validate or args.quick) \
                and args.protocol == "stratified":
            rows.append({"relevance": relevance, "model": "BiVAE (Recommenders' table)",
                         "users": None, **{key: BIVAE.get(key) for key in RANKING_KEYS}})
    table = pd.DataFrame(rows)
    _common.save_table(table, out, "ranking")

    data = "synthetic ratings (--quick)" if args.quick else "MovieLens 100K"
    protocol = ("stratified 75/25 (seed 42)" if args.protocol == "stratified" or args.quick
                else "u1.base / u1.test")
    print(f"\n{data}, {protocol}, scored on the {part}; "
          f"{len(cells):,} training cells ({int(cells.rating.sum()):,} positives); "
          f"{args.members} fit(s) of {members[0].metrics['fit']['epochs']} epochs, "
          f"{sum(fit_seconds):.0f} s; ranking {ranking_seconds:.0f} s; held-out AUC "
          + ", ".join(f"{m.metrics['test']['auc']:.4f}" for m in members))
    if not (args.validate or args.quick) and args.protocol == "stratified":
        ours = table[(table.model == name)
                     & (table.relevance == "every test item")].iloc[0]
        print(f"\n{'every test item relevant':<24}{'ours':>8}{'BiVAE':>8}{'ratio':>8}")
        for key, reference in BIVAE.items():
            print(f"{key:<24}{ours[key]:>8.4f}{reference:>8.3f}{ours[key] / reference:>7.3f}x")
    summary = {"args": vars(args), "part": part, "num_cells": len(cells),
               "fit_seconds": fit_seconds, "ranking_seconds": ranking_seconds,
               "epochs": [m.metrics["fit"]["epochs"] for m in members],
               "test_metrics": [m.metrics["test"] for m in members], "rows": rows}
    write_text(out / "results.json", json.dumps(summary, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
