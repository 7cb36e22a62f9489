"""Command line: ``deepfactor fit | evaluate | predict | check | recommend``; a thin layer.

Every user error (a bad configuration, data file, checkpoint or id) ends with one line
``deepfactor: error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import os

# On a busy machine, OpenMP threads that spin-wait can make torch many times slower;
# the wait policy is read once, when torch loads, so it is set before any import of it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

__all__ = ["main"]

log = logging.getLogger("deepfactor")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfactor",
        description="Bayesian deep matrix factorization with amortized variational inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit a model and score its held-out split")
    fit.add_argument("config", nargs="?",
                     help="experiment configuration, e.g. models/gaussian.toml")
    fit.add_argument("--resume", metavar="RUN",
                     help="continue the interrupted run in RUN (no CONFIG needed)")
    fit.add_argument("--out", help="run directory to write (default: runs/<config>-<time>)")
    fit.add_argument("--seed", type=int, help="overrides train.seed")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one configuration key, e.g. --set model.latent_dim=50")
    fit.add_argument("--data", help="folder with the dataset's files, or for dataset 'file' "
                     "the rating file (overrides data.path)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace an existing run in --out")

    ev = sub.add_parser("evaluate", help="re-score a saved run")
    ev.add_argument("run", help="run directory written by fit")
    ev.add_argument("--split", help="score this split's test file (default: the run's)")
    ev.add_argument("--data", help="folder with the dataset's files")
    ev.add_argument("--ranking", action="store_true",
                    help="also Precision@10, Recall@10, nDCG@10 and MAP")
    ev.add_argument("--relevant", metavar="MIN|all",
                    help="with --ranking: a test rating >= MIN is relevant (default 4), or "
                         "'all': every test item (the Microsoft Recommenders benchmark)")

    pr = sub.add_parser("predict", help="posterior predictive summaries for (user, movie) pairs")
    pr.add_argument("run", help="run directory written by fit")
    pr.add_argument("--pairs", required=True,
                    help="file of user and movie raw ids, one pair a line (u1.test works)")
    pr.add_argument("--out", required=True, help="CSV file to write ('-': standard output)")
    pr.add_argument("--samples", type=int, help="posterior draws (default: eval.num_samples)")

    ck = sub.add_parser("check", help="posterior (or prior) predictive checks, calibration, "
                                      "LOO and collapse diagnostics, with a report")
    ck.add_argument("target", help="run directory written by fit; with --prior, a configuration")
    ck.add_argument("--prior", action="store_true",
                    help="prior predictive check of the configuration TARGET (no fit needed)")
    ck.add_argument("--out", help="folder to write (default: RUN/checks; with --prior "
                                  "runs/<config>-prior/checks)")
    ck.add_argument("--samples", type=int, default=100, help="predictive draws (default 100)")
    ck.add_argument("--train-sample", type=int, default=20000,
                    help="training ratings sampled for in-sample checks and PSIS-LOO "
                         "(default 20000)")
    ck.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    ck.add_argument("--data", help="folder with the dataset's files (overrides data.path)")
    ck.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --prior: override one configuration key")

    rc = sub.add_parser("recommend", help="top-k movies for a user, or for a new user from "
                                          "a ratings file (fold-in, no retraining)")
    rc.add_argument("run", help="run directory written by fit")
    who = rc.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="raw id of a user of the run, e.g. 196")
    who.add_argument("--ratings", help="a new user's ratings: movie id and rating per line")
    rc.add_argument("-k", type=int, default=10, help="how many movies (default 10)")
    rc.add_argument("--strategy", choices=("mean", "upper", "thompson"), default="mean",
                    help="rank by posterior mean, an upper quantile, or one posterior draw")
    rc.add_argument("--quantile", type=float, default=0.9,
                    help="for --strategy upper (default 0.9)")
    rc.add_argument("--include-seen", action="store_true",
                    help="also rank the movies the user has rated")
    rc.add_argument("--strict", action="store_true",
                    help="unknown movie ids in --ratings are an error (default: a warning)")
    rc.add_argument("--shortlist", type=_shortlist, default="auto",
                    help="score only this many movies, chosen by plug-in prediction; "
                         "'all' scores every movie (default 'auto': 5 k for --strategy "
                         "mean, all for the others)")
    rc.add_argument("--samples", type=int, help="posterior draws (default: eval.num_samples)")
    rc.add_argument("--seed", type=int, help="seed of the draws (default: the run's)")
    rc.add_argument("--data", help="folder with the dataset's files, for titles")
    rc.add_argument("--out", help="also write the table as CSV")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.datasets import DatasetIntegrityError, DatasetNotFoundError
    from .data.readers import DataFormatError
    from .train import TrainingDiverged
    return (ConfigError, DataFormatError, DatasetNotFoundError, DatasetIntegrityError,
            CheckpointError, TrainingDiverged, UsageError, KeyError)


class UsageError(ValueError):
    """A problem with the command's arguments that argparse cannot see."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="deepfactor: %(message)s")
    # Diagnostic warnings (posterior collapse, unknown fold-in ids) are for the user:
    # one line each, without the library's file and source line.
    warnings.formatwarning = lambda message, category, *_, **__: (
        f"deepfactor: warning: {message}\n")
    try:
        return {"fit": _fit, "evaluate": _evaluate, "predict": _predict,
                "check": _check, "recommend": _recommend}[args.command](args)
    except FileNotFoundError as err:  # a file named on the command line (DatasetNotFoundError
        # is one too, with its own message)
        message = str(err) if err.filename is None else f"{err.filename}: no such file"
        print(f"deepfactor: error: {message}", file=sys.stderr)
        return 2
    except _user_errors() as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"deepfactor: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepfactor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (`... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- fit --------------------------------------------------------------------------------


TRAINING_CHECKPOINT = "training.pt"


def _fit(args) -> int:
    from . import distributed

    # Under torchrun (WORLD_SIZE > 1) every rank trains; rank 0 reads the configuration
    # or the checkpoint, hands it to the others, and alone writes the run directory.
    world = distributed.init_from_environment()
    try:
        if world is None:
            return _fit_here(args, *_fit_setup(args), main=True)
        setup: tuple | BaseException
        try:
            setup = _fit_setup(args) if world.is_main else None
        except _user_errors() as err:  # rank 0 reports it; the others just stop
            setup = err
        if not world.is_main:  # one copy of each log line and warning: rank 0's
            log.setLevel(logging.ERROR)
        setup = distributed.broadcast_object(setup)
        if isinstance(setup, BaseException):
            if world.is_main:
                raise setup
            return 2
        return _fit_here(args, *setup, main=world.is_main, world_size=world.size)
    finally:
        distributed.shutdown()


def _compile_first(config, quiet: bool) -> None:
    """Compile a decoder of ``config``'s shapes for ``train.compile`` (the fit's own
    decoder then reuses the graph); a toolchain failure is a ConfigError here."""
    import time

    import torch

    from .fitted import build_decoder
    from .train import compile_decoder

    if not quiet:
        print("deepfactor: compiling the decoder for train.compile (12-18 s the first "
              "time, a few seconds once torch's cache holds it)", file=sys.stderr)
    start = time.perf_counter()
    with torch.random.fork_rng():  # building it draws weights (fit reseeds anyway)
        compile_decoder(build_decoder(config), config["train.precision"])
    if not quiet:
        print(f"deepfactor: decoder compiled in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)


def _fit_here(args, config, out, resume, data_dir, *, main: bool, world_size: int = 1) -> int:
    from .checkpoint import write_json, write_text
    from .fitting import fit, load_data
    from .reproducibility import environment
    from .train import TrainingInterrupted

    # The data first: a bad file stops the command before anything is written, so an
    # earlier run in ``out`` stays whole.
    data = load_data(config, data_dir)
    if main and config["train.compile"]:
        _compile_first(config, quiet=args.quiet)  # so does a missing or broken compiler
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            _clear_results(out)  # an earlier run's files (--overwrite) would not match
        write_text(out / "config.toml", config.to_toml())
    try:
        fitted = fit(config, data=data, progress=not args.quiet,
                     checkpoint_path=out / TRAINING_CHECKPOINT, resume=resume)
    except TrainingInterrupted as err:
        if main:
            again = (f"torchrun --nproc_per_node={world_size} -m deepfactor" if world_size > 1
                     else "deepfactor")
            print(f"deepfactor: stopped by {err}; checkpoint in {out / TRAINING_CHECKPOINT}; "
                  f"continue with: {again} fit --resume {out}", file=sys.stderr)
        return 128 + err.signum
    if not main:
        return 0

    fitted.save(out)
    write_json(out / "metrics.json", fitted.metrics)
    write_text(out / "trace.csv", _csv(fitted.history))
    write_json(out / "environment.json", {**environment(), "seed": config["train.seed"],
                                          "world_size": world_size, "command": sys.argv})
    if not args.quiet:
        print(_summary(fitted.metrics, f"{config['data.split']} test"))
        print(f"run written to {out}")
    return 0


#: What ``deepfactor fit``, ``evaluate`` and ``check`` write into a run directory.
RESULTS = ("model.pt", TRAINING_CHECKPOINT, "metrics.json", "trace.csv", "environment.json",
           "evaluation-*.json", "checks")


def _clear_results(out: Path) -> None:
    """Remove an earlier run's results from ``out`` (its other files stay)."""
    for pattern in RESULTS:
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _fit_setup(args):
    """(config, run directory, trainer state or None, data folder) for ``deepfactor fit``.

    The data folder is absolute (every rank gets rank 0's setup) and None when the
    configuration's data.path already says where the data are.
    """
    from .config import load_config
    from .fitting import read_training_checkpoint

    if args.resume:
        if args.config or args.set or args.seed is not None:
            raise UsageError("--resume continues a run as it was configured; "
                             "give no CONFIG, --set or --seed with it")
        out = Path(args.resume)
        config, state = read_training_checkpoint(out / TRAINING_CHECKPOINT)
        model = out / "model.pt"
        if model.exists() and model.stat().st_mtime >= (out / TRAINING_CHECKPOINT).stat().st_mtime:
            raise UsageError(f"{out} holds a finished run ({model.name} is newer than its "
                             f"{TRAINING_CHECKPOINT}); there is nothing to resume")
        return config, out, state, str(Path(args.data).resolve()) if args.data else None
    if not args.config:
        raise UsageError("fit needs a CONFIG file (or --resume RUN)")
    overrides = list(args.set) + ([f"train.seed={args.seed}"] if args.seed is not None else [])
    # --data goes into the configuration, which the run directory keeps
    config = _with_absolute_data_path(load_config(args.config, overrides), args.data)
    out = Path(args.out) if args.out else Path("runs") / (
        f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out / "model.pt").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a run; choose another --out or pass --overwrite")
    return config, out, None, None


def _with_absolute_data_path(config, data_arg):
    """``config`` with ``--data`` (or a relative ``data.path``) as an absolute data.path.

    The run directory's config.toml is then enough to find the data again from any
    working directory (evaluate, check, recommend's titles). An empty data.path (search
    $DEEPFACTOR_DATA, then the cache) stays empty.
    """
    from .config import Config

    path = data_arg or config["data.path"]
    if not path:
        return config
    nested = config.nested()
    nested["data"]["path"] = str(Path(path).expanduser().resolve())
    return Config.from_dict(nested, source=config.source)


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _summary(metrics: dict, label: str) -> str:
    """A small table: our held-out metrics beside the two reference predictors."""
    from .metrics import METRIC_KEYS

    test = metrics["test"]
    keys = [*METRIC_KEYS[metrics["likelihood"]], "lpd"]
    refs = metrics["reference"]
    scored = ("cells scored (held-out pairs and as many empty cells)"
              if metrics.get("implicit") else "ratings scored")
    lines = [f"{label}: {test['num_ratings']} {scored} ({test['num_cold']} cold start), "
             f"{metrics['likelihood']} likelihood"
             f"{' with a scale per pair' if metrics.get('pair_scale') else ''}",
             f"{'metric':<10}{'deepfactor':>12}{'global_mean':>13}{'bias':>10}"]
    for key in keys:
        cells = [test[key], refs["global_mean"][key], refs["bias"][key]]
        lines.append(f"{key:<10}" + "".join(
            f"{'-' if c is None else f'{c:.4f}':>{w}}" for c, w in zip(cells, (12, 13, 10))))
    if "fit" in metrics:
        fit = metrics["fit"]
        order = fit.get("batch_order")  # absent from runs saved before it was recorded
        groups = f", {fit['movie_groups']} movie groups" if fit.get("movie_groups") else ""
        mixed = ", bfloat16 steps" if fit.get("precision") == "bfloat16" else ""
        mixed += ", compiled decoder" if fit.get("compiled") else ""
        lines.append(f"fit: {fit['seconds']:.1f} s, {fit['epochs']} epochs (kept "
                     f"{fit['best_epoch']}), ELBO {fit['final_elbo_per_rating']:.4f} nats "
                     "per rating" + (f"; {order} batches{groups}{mixed}" if order else ""))
    return "\n".join(lines)


# -- evaluate ---------------------------------------------------------------------------


def _evaluate(args) -> int:
    from .checkpoint import write_json
    from .config import check_value
    from .fitted import load
    from .fitting import evaluate, load_data

    if args.relevant is not None and not args.ranking:
        raise UsageError("--relevant chooses the relevant items of --ranking; add --ranking")
    relevant = 4.0 if args.relevant is None else _relevance(args.relevant)
    fitted = load(args.run)
    fitted_split = fitted.config["data.split"]
    split = args.split or fitted_split
    if args.split:  # checked here, so that the error names the option, not model.pt
        check_value("data.split", split, f"--split {split!r}")
    config = fitted.config.replace(**{"data.split": split})
    data = load_data(config, args.data)
    if split != fitted_split:
        # Re-encode from this split's own training file: the encoders read it, and
        # never its test file. The decoder still learned from the run's split.
        fitted = fitted.reading(_observed(fitted, data.train), config)
        log.warning("the model was fitted on split %s; its decoder saw ratings that may "
                    "be in %s.test, so these scores can be optimistic", fitted_split, split)
    metrics = evaluate(fitted, data.test)
    if args.ranking:
        from .ranking import evaluate_ranking

        metrics["ranking"] = evaluate_ranking(fitted, data.test, threshold=relevant)
    path = Path(args.run) / f"evaluation-{split}.json"
    write_json(path, metrics)
    print(_summary(metrics, f"{split} test"))
    if args.ranking:
        print(_ranking_summary(metrics["ranking"]))
    print(f"written to {path}")
    return 0


def _observed(fitted, ratings):
    from .fitting import observed_training

    return observed_training(fitted.reindex(ratings), fitted.model.likelihood, fitted.config)


# -- predict ----------------------------------------------------------------------------


def _predict(args) -> int:
    from .checkpoint import write_text
    from .data.readers import read_pairs
    from .fitted import load

    _check_samples(args)
    fitted = load(args.run)
    users, movies = read_pairs(args.pairs)
    frame = fitted.predict(users, movies, num_samples=args.samples)
    if args.out == "-":
        sys.stdout.write(frame.to_csv(index=False))
        return 0
    write_text(args.out, frame.to_csv(index=False))
    log.info("wrote %d predictions to %s", len(frame), args.out)
    return 0


# -- check ------------------------------------------------------------------------------


def _check(args) -> int:
    from .check_report import check_prior, check_run

    if args.samples < 2 or args.train_sample < 2:
        raise UsageError("--samples and --train-sample must be at least 2")
    options = {"data_dir": args.data, "num_samples": args.samples,
               "train_sample": args.train_sample, "seed": args.seed}
    if args.prior:
        from .config import load_config

        config = load_config(args.target, list(args.set))
        out = args.out or Path("runs") / f"{Path(args.target).stem}-prior" / "checks"
        report, out = check_prior(config, out, **options)
    else:
        if args.set:
            raise UsageError("--set applies to --prior only; a run keeps its configuration")
        report, out = check_run(args.target, args.out, **options)
    coverage = report.summary["coverage"]
    if coverage:
        print("held-out coverage: " + ", ".join(f"{k}% -> {v:.1%}" for k, v in coverage.items()))
    print(f"report written to {Path(out) / 'report.md'}")
    return 0


# -- recommend --------------------------------------------------------------------------


def _shortlist(text: str) -> int | str | None:
    """``--shortlist``: a count, ``auto`` or ``all`` (None: score every movie)."""
    if text in ("auto", "all"):
        return None if text == "all" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count, 'auto' or 'all', got {text!r}") from None


def _check_samples(args) -> None:
    """``--samples`` of predict and recommend: at least 1 when given."""
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {args.samples}")


def _recommend(args) -> int:
    import warnings

    from .checkpoint import write_text
    from .fitted import load
    from .foldin import FoldInWarning, fold_in, read_fold_in_ratings
    from .recommend import movie_titles, recommend

    _check_samples(args)

    if args.k < 1 or not 0 < args.quantile < 1 or (
            isinstance(args.shortlist, int) and args.shortlist < args.k):
        raise UsageError("-k must be at least 1, --quantile in (0, 1) and --shortlist at "
                         "least k")
    fitted = load(args.run)
    if args.ratings:
        ratings = read_fold_in_ratings(args.ratings)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FoldInWarning)
            try:
                who = fold_in(fitted, ratings, name=Path(args.ratings).name,
                              unknown="error" if args.strict else "warn")
            except ValueError as err:  # a value the likelihood does not accept
                raise UsageError(str(err) if str(err).startswith(args.ratings)
                                 else f"{args.ratings}: {err}") from None
        for warning in caught:
            print(f"deepfactor: warning: {warning.message}", file=sys.stderr)
        label = f"a new user from {args.ratings} ({len(who.seen)} ratings read)"
    else:
        who, label = args.user, f"user {args.user}"
    frame = recommend(fitted, who, args.k, exclude_seen=not args.include_seen,
                      strategy=args.strategy, quantile=args.quantile,
                      titles=movie_titles(fitted, args.data), shortlist=args.shortlist,
                      num_samples=args.samples, seed=args.seed)
    print(f"top {len(frame)} for {label}, by {args.strategy}"
          f"{f' (quantile {args.quantile})' if args.strategy == 'upper' else ''}:")
    print(_table(frame))
    if args.out:
        write_text(args.out, frame.to_csv(index=False))
        log.info("wrote %d recommendations to %s", len(frame), args.out)
    return 0


def _table(frame) -> str:
    """Rank, id, title (cut to 48 characters; none without titles), mean, sd, score."""
    titles = [t if isinstance(t, str) else "" for t in frame["title"]]
    titles = [t if len(t) <= 48 else t[:47] + "~" for t in titles]
    title_width = max(len(t) for t in ["title", *titles]) if any(titles) else 0
    what = frame.columns[1]
    width = max([len(what), *(len(str(i)) for i in frame[what])])
    scored = "score" in frame

    def line(rank, entity, title, *numbers) -> str:
        text = f"{rank:>4}  {entity:<{width}}"
        text += f"  {title:<{title_width}}" if title_width else ""
        return text + "".join(f"{n:>8}" for n in numbers)

    lines = [line("rank", what, "title", "mean", "sd", *(["score"] if scored else []))]
    for row, title in zip(frame.to_dict("records"), titles):
        numbers = [row["mean"], row["sd"], *([row["score"]] if scored else [])]
        lines.append(line(row["rank"], row[what], title, *(f"{n:.3f}" for n in numbers)))
    return "\n".join(lines)


def _relevance(text: str) -> float | None:
    """``--relevant``: a number, or ``all`` for None (every test item relevant)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--relevant: expected a rating or 'all', got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"--relevant: expected a finite rating, got {text!r}")
    return value


def _ranking_summary(ranking: dict) -> str:
    """One line per ranking metric, after the rating metrics."""
    k = ranking["k"]
    relevant = ("every test item" if ranking["threshold"] is None
                else f"test rating >= {ranking['threshold']:g}")
    lines = [f"ranking: top {k} of the movies each user did not rate in training, "
             f"{ranking['num_users']} users; relevant = {relevant}"]
    for key, name in (("precision_at_k", f"precision@{k}"), ("recall_at_k", f"recall@{k}"),
                      ("ndcg_at_k", f"ndcg@{k}"), ("map", "map")):
        value = ranking[key]
        lines.append(f"{name:<12}{'-' if value is None else f'{value:.4f}':>10}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
