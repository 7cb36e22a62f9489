"""From a configuration to a fitted, evaluated model: data, modules, SVI, metrics.

:func:`fit` is the one entry point the CLI and the analysis scripts call. It keeps
the held-out ratings away from everything the fit touches:

* the **test** ratings of the split are read only by :func:`evaluate`, after training;
* the **validation** ratings, carved from the training split with the seed, are
  scored during training for early stopping, and are hidden from the encoders then;
* the encoder inputs, their standardization and the decoder's starting bias come from
  the remaining **fit** ratings only.

After training, the encoders read the whole training split (fit plus validation) to
give the posterior that predictions use: no test rating is ever read by an encoder.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
import torch

from .baselines import BiasModel, GlobalMean, as_probability, plugin_lpd
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .batching import EncoderInputs, RatingBatcher
from .config import Config, ConfigError
from .data.datasets import resolve_dataset
from .data.layouts import LAYOUTS, read_dataset_ratings
from .data.ratings import Ratings
from .data.readers import DataFormatError
from .data.splits import carve_validation, load_split, random_split
from .data.tables import read_rating_table
from .distributed import broadcast_object, current_world
from .fitted import FittedModel, build_modules
from .metrics import METRIC_KEYS, rating_metrics
from .predict import encode_posterior, predictive_summaries
from .reproducibility import configure_threads, set_seed
from .simulate import SyntheticTruth, simulate
from .sketch import Sketch
from .train import SVITrainer, TrainSettings, make_elbo

__all__ = ["SplitData", "load_data", "fit", "evaluate", "read_training_checkpoint",
           "training_inputs", "HeldOutOverlapWarning"]

log = logging.getLogger(__name__)

#: Posterior draws per validation score: enough to rank epochs, cheap every epoch.
VALIDATION_DRAWS = 20


@dataclass(frozen=True)
class SplitData:
    """Training and test ratings sharing id maps; ``truth`` is set for synthetic data."""

    train: Ratings
    test: Ratings
    name: str
    truth: SyntheticTruth | None = None


def load_data(config: Config, data_dir: str | os.PathLike | None = None) -> SplitData:
    """The training and test ratings named by ``config`` (``data_dir`` overrides data.path)."""
    name, split, seed = config["data.dataset"], config["data.split"], config["train.seed"]
    if name == "synthetic":
        if split != "random":
            raise ConfigError(f"{config.source}: the synthetic dataset has only the "
                              f"'random' split, not {split!r}")
        set_seed(seed)  # the truth depends on the seed alone, wherever it is loaded
        model, _ = build_modules(config, config["data.synthetic_movies"],
                                 config["data.synthetic_users"])
        bias = {"normal": 3.5, "poisson": 1.0, "bernoulli": 0.0,
                "ordinal": 0.0}[config["model.likelihood"]]
        ratings, truth = simulate(model, config["data.synthetic_ratings"], seed, output_bias=bias)
        train, test = random_split(ratings, config["data.test_fraction"], seed)
        return SplitData(train, test, "random", truth)

    duplicates = config["data.duplicates"]
    if name == "file" or LAYOUTS[name].splits == ():
        if split != "random":
            has = "a rating file" if name == "file" else f"dataset {name!r}"
            raise ConfigError(
                f"{config.source}: {has} ships no {split!r} split files (only MovieLens "
                "100K has u1..u5, ua, ub); set data.split = 'random' (with "
                "data.test_fraction)")
        everything = _read_all(config, name, data_dir, duplicates)
        train, test = random_split(everything, config["data.test_fraction"], seed)
        return SplitData(train, test, split)

    folder = resolve_dataset(name, data_dir or config["data.path"] or None)
    if split == "random":
        everything = load_split(folder, "all", duplicates=duplicates).train
        train, test = random_split(everything, config["data.test_fraction"], seed)
        return SplitData(train, test, split)
    loaded = load_split(folder, split, duplicates=duplicates)
    return SplitData(loaded.train, loaded.test, split)


def _read_all(config: Config, name: str, data_dir: str | os.PathLike | None,
              duplicates: str) -> Ratings:
    """Every rating of a dataset without split files, or of the file data.path names."""
    if name != "file":
        folder = resolve_dataset(name, data_dir or config["data.path"] or None)
        return read_dataset_ratings(folder, name, duplicates=duplicates)
    path = data_dir or config["data.path"]
    if not path:
        raise ConfigError(f"{config.source}: dataset 'file' needs data.path, the rating "
                          "file (or --data FILE)")
    return read_rating_table(path, sep=config["data.separator"],
                             columns=config["data.columns"], header=config["data.header"],
                             encoding=config["data.encoding"], duplicates=duplicates)


def fit(config: Config, *, data: SplitData | None = None,
        data_dir: str | os.PathLike | None = None, progress: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        resume: dict | None = None,
        record: Callable[..., dict[str, float]] | None = None) -> FittedModel:
    """Fit the model of ``config`` on its training split and score its test split.

    Parameters
    ----------
    config : Config
    data : SplitData, optional
        Ratings to use instead of loading those named by the configuration.
    data_dir : path, optional
        Folder of the dataset's files (overrides ``data.path``).
    progress : bool
        Show a tqdm progress bar.
    checkpoint_path : path, optional
        Where to write the resumable training state (atomically): every
        ``train.checkpoint_every`` epochs, at the end, and on SIGINT/SIGTERM.
    resume : dict, optional
        A training state read from such a checkpoint (:func:`read_training_checkpoint`);
        training continues from it and ends as an uninterrupted run would.
    record : callable, optional
        ``record(model, guide, batcher)`` after each epoch; the numbers it returns join
        that epoch's row of ``history`` (e.g. :func:`deepfactor.elbo_parts.elbo_recorder`).

    Returns
    -------
    FittedModel
        With ``metrics`` (the content of ``metrics.json``) and ``history`` filled in.

    Raises
    ------
    TrainingInterrupted
        When SIGINT or SIGTERM stopped training (after writing the checkpoint).

    Notes
    -----
    Called on every rank of an initialized ``torch.distributed`` process group (as the
    CLI does under ``torchrun``), it trains data-parallel: every rank loads the same
    data, takes its shard of each minibatch, and ends with the same parameters. Rank 0
    alone validates, writes ``checkpoint_path`` and computes the metrics, which every
    rank then returns.
    """
    start = time.perf_counter()
    configure_threads(config["train.num_threads"])
    data = data or load_data(config, data_dir)
    # seeded after the data, so that passing ``data`` or loading it gives the same fit
    set_seed(config["train.seed"])
    pyro.settings.set(module_local_params=True)
    model, guide = build_modules(config, data.train.num_movies, data.train.num_users)
    likelihood = model.likelihood

    # Targets, the validation carve and every statistic come from training ratings only
    # (for data.implicit, from the 0/1 cells built from them).
    train = observed_training(data.train, likelihood, config)
    # A malformed test file fails now rather than after training; its values stay unused
    # until scoring.
    observed_test(data.test, data.train, likelihood, config)
    fit_part, val_part = carve_validation(train, config["data.validation_fraction"],
                                          config["train.seed"])
    center, spread = float(np.mean(fit_part.rating)), float(np.std(fit_part.rating)) or 1.0
    world = current_world()
    fit_inputs = training_inputs(config, fit_part, center, spread, world)
    model.start_from(fit_part.rating)
    log.info("fitting on %d ratings (%d held for validation) of %d movies x %d users",
             len(fit_part), len(val_part), train.num_movies, train.num_users)

    loss_fn = make_elbo(config["train.elbo"])(model, guide)
    batcher = RatingBatcher(fit_part, fit_part.rating, fit_inputs, config["train.batch_size"],
                            np.random.default_rng(config["train.seed"]),
                            order=config["train.batch_order"],
                            movie_groups=config["train.movie_groups"])

    def validate() -> dict[str, float]:
        if len(val_part) == 0:
            return {}
        posterior = encode_posterior(guide, fit_inputs, train.num_movies, train.num_users)
        out = predictive_summaries(model, posterior, val_part.movie, val_part.user,
                                   num_samples=VALIDATION_DRAWS, seed=config["train.seed"],
                                   target=val_part.rating)
        return {"lpd": float(np.mean(out["lpd"])),
                "rmse": float(np.sqrt(np.mean((out["mean"] - val_part.rating) ** 2)))}

    def checkpoint(state: dict) -> None:
        save_checkpoint(checkpoint_path, {"kind": "training", "config": config.nested(),
                                          "trainer": state})

    trainer = SVITrainer(loss_fn, batcher, validate, TrainSettings.from_config(config),
                         checkpoint=checkpoint if checkpoint_path else None, progress=progress,
                         world=world,
                         record=(lambda: record(model, guide, batcher)) if record else None)
    if resume is not None:
        trainer.load_state_dict(resume)
    result = trainer.run()

    fitted = FittedModel(config, model, guide, train, center, spread, history=result.history,
                         sketch=fit_inputs.sketch)
    if world is None or world.is_main:  # the ranks hold the same parameters: score once
        fitted.metrics = _metrics(fitted, data, loss_fn, batcher, result, start, val_part)
    if world is not None:
        fitted.metrics = broadcast_object(fitted.metrics)
    return fitted


class HeldOutOverlapWarning(UserWarning):
    """Ratings scored as held out are among those the encoders read."""


def _pairs_read(test: Ratings, read: Ratings) -> int:
    """How many (movie, user) pairs of ``test`` are in ``read`` (same id maps)."""
    def keys(r: Ratings) -> np.ndarray:
        return r.movie.astype(np.int64) * r.num_users + r.user
    return int(np.isin(keys(test), keys(read)).sum())


def training_inputs(config: Config, fit_part: Ratings, center: float, spread: float,
                    world=None) -> EncoderInputs:
    """What the encoders read in training: ``fit_part``'s targets, standardized.

    With ``guide.inputs = "sketch"`` the sketch basis is fitted here, from these ratings
    only; under data-parallel training (``world``) rank 0 fits it and sends it to the
    others, so every rank reads the very same inputs whatever its LAPACK.
    """
    inputs = EncoderInputs(fit_part, fit_part.rating, center, spread,
                           max_inputs=config["guide.max_inputs"])
    if config["guide.inputs"] != "sketch":
        return inputs
    sketch = None
    if world is None or world.is_main:
        sketch = Sketch.fit(inputs.by_movie, inputs.by_user, config["guide.sketch_dim"],
                            inputs.pooling_power, config["train.seed"])
    if world is not None:
        sketch = broadcast_object(sketch)
    return inputs.with_sketch(sketch)


def _metrics(fitted: FittedModel, data: SplitData, loss_fn, batcher: RatingBatcher,
             result, start: float, val_part: Ratings) -> dict:
    """The content of ``metrics.json`` for a fit that ended with ``result``."""
    fit_part = batcher.ratings
    final_elbo = _final_elbo(loss_fn, batcher)
    metrics = evaluate(fitted, data.test)
    metrics["fit"] = {
        "seconds": time.perf_counter() - start,
        "train_seconds": result.seconds,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "final_elbo": final_elbo,
        "final_elbo_per_rating": final_elbo / len(fit_part),
        # what the model observed: ratings, or for data.implicit the cells (and the
        # ratings they came from beside them)
        "num_train_ratings": len(fitted.encoder_ratings),
        "num_fit_ratings": len(fit_part),
        "num_validation_ratings": len(val_part),
        "batch_order": batcher.order,  # "random" on small data whatever was asked
        "movie_groups": batcher.movie_groups,
        "precision": fitted.config["train.precision"],  # of the training steps only
        "compiled": fitted.config["train.compile"],  # the training steps' decoder
    }
    if fitted.implicit:
        metrics["fit"]["num_rated_pairs"] = len(fitted.seen)
    best = result.history[result.best_epoch - 1] if result.history else {}
    metrics["validation"] = {k[4:]: v for k, v in best.items() if k.startswith("val_")}
    return metrics


def read_training_checkpoint(path: str | os.PathLike) -> tuple[Config, dict]:
    """The configuration and trainer state saved by :func:`fit` at ``checkpoint_path``."""
    state = load_checkpoint(path)
    if state.get("kind") != "training":
        raise CheckpointError(f"{path}: not a training checkpoint (nothing to resume)")
    return Config.from_saved(state["config"], source=str(path)), state["trainer"]


def observed_training(ratings: Ratings, likelihood, config: Config) -> Ratings:
    """What the model observes of training ``ratings``, and its encoders read.

    The likelihood's targets (:func:`with_targets`); with ``data.implicit``, the 0/1
    cells of :func:`~deepfactor.implicit.implicit_cells` (every cell, or
    ``data.implicit_negatives`` zeros per positive drawn with ``train.seed``), after
    the file's values are checked against ``data.rating_scale``.
    """
    if not config["data.implicit"]:
        return with_targets(ratings, likelihood, config)
    from .implicit import implicit_cells

    _check_scale(ratings, config)
    cells = implicit_cells(ratings, negatives=config["data.implicit_negatives"] or None,
                           seed=config["train.seed"])
    return with_targets(cells, likelihood)


def observed_test(test: Ratings, seen: Ratings, likelihood, config: Config) -> Ratings:
    """The held-out counterpart of :func:`observed_training` for ``test`` ratings.

    With ``data.implicit``: the test pairs as 1 and as many cells drawn (``train.seed``)
    from those in neither ``seen`` (the training pairs, on the same id maps) nor
    ``test``, as 0 (:func:`~deepfactor.implicit.held_out_cells`).
    """
    if not config["data.implicit"]:
        return with_targets(test, likelihood, config)
    from .implicit import held_out_cells

    _check_scale(test, config)
    if test.movie_ids != seen.movie_ids or test.user_ids != seen.user_ids:
        test = test.with_ids(seen.movie_ids, seen.user_ids)  # as evaluate() re-indexes
    return with_targets(held_out_cells(seen, test, seed=config["train.seed"]), likelihood)


def with_targets(ratings: Ratings, likelihood, config: Config | None = None) -> Ratings:
    """``ratings`` with values replaced by the likelihood's (checked) targets.

    With ``config``, file ratings must also lie in its ``data.rating_scale`` (synthetic
    data is not checked). A bad value is a :class:`DataFormatError` naming file:line.
    """
    if config is not None:
        _check_scale(ratings, config)
    try:
        targets = likelihood.prepare(ratings.rating, source=ratings.source,
                                     lines=ratings.line)
    except ValueError as err:  # a value the family cannot take: bad input, not a bug
        raise DataFormatError(str(err)) from None
    return Ratings(ratings.movie, ratings.user, targets, ratings.movie_ids, ratings.user_ids,
                   ratings.source, ratings.line)


def _check_scale(ratings: Ratings, config: Config) -> None:
    """File ratings lie in ``data.rating_scale`` (synthetic data is not checked)."""
    scale = config["data.rating_scale"]
    if scale and config["data.dataset"] != "synthetic":
        outside = np.flatnonzero((ratings.rating < scale[0]) | (ratings.rating > scale[1]))
        if outside.size:
            k = outside[0]
            where = (f"{ratings.source}:{ratings.line[k]}" if ratings.line is not None
                     else f"{ratings.source}, row {k}")
            raise DataFormatError(
                f"{where}: rating {ratings.rating[k]:g} is outside the declared scale "
                f"[{scale[0]:g}, {scale[1]:g}] ({outside.size} such ratings; see "
                "data.rating_scale)")


@torch.no_grad()
def _final_elbo(loss_fn: torch.nn.Module, batcher: RatingBatcher) -> float:
    """ELBO (nats, total over the fit ratings) at the kept parameters: one epoch's mean.

    Each batch's estimate is weighted by its size: over the epoch's partition that is
    the full-data value but for the draws, whereas a plain mean would give a short last
    batch (9 ratings on u1 at batch 2000, scaled by ``N / 9``) the weight of a full one.
    """
    total = 0.0
    for batch in batcher.epoch():  # streamed: at scale an epoch's batches fill memory
        total += loss_fn(batch).item() * len(batch)
    return -total / len(batcher.ratings)


def evaluate(fitted: FittedModel, test: Ratings) -> dict:
    """Score ``fitted`` on held-out ``test`` ratings, beside the two reference predictors.

    Every test rating is scored. A rating whose movie or user has no training rating
    (cold start) is predicted from the prior predictive for that entity, and the metrics
    are also given separately for the ``warm`` and ``cold`` parts. Test pairs that the
    encoders read (another split's test file scored by a model reading this split's
    training file, say) raise a :class:`HeldOutOverlapWarning`: their scores flatter.

    Returns
    -------
    dict
        The ``metrics.json`` layout documented in the README.
    """
    name = fitted.likelihood
    test = observed_test(fitted.reindex(test), fitted.seen, fitted.model.likelihood,
                         fitted.config)
    # (for an implicit fit, a held-out 1 is a cell the encoders read as 0 by design;
    # only a pair read as rated would flatter)
    read = _pairs_read(test.subset(test.rating > 0) if fitted.implicit else test, fitted.seen)
    if read:
        warnings.warn(f"{read} of the {len(test)} test ratings are (movie, user) pairs the "
                      "encoders read, so their scores are optimistic; score a split's test "
                      "file with the encoders reading that split's training file",
                      HeldOutOverlapWarning, stacklevel=2)
    out = fitted.summaries(test.movie, test.user, target=test.rating)
    train = fitted.encoder_ratings
    cold = (train.movie_counts()[test.movie] == 0) | (train.user_counts()[test.user] == 0)

    metrics = {
        "dataset": fitted.config["data.dataset"],
        "split": fitted.config["data.split"],
        "likelihood": name,
        "pair_scale": fitted.config["model.pair_scale"],
        "implicit": fitted.implicit,
        "test": {**rating_metrics(name, test.rating, out["mean"], out["lpd"]),
                 "num_cold": int(cold.sum())},
        "test_warm": rating_metrics(name, test.rating[~cold], out["mean"][~cold],
                                    out["lpd"][~cold]),
        "test_cold": rating_metrics(name, test.rating[cold], out["mean"][cold], out["lpd"][cold]),
        "reference": {},
        "ratio_to_reference": {},
    }
    for reference in (GlobalMean(), BiasModel()):
        if isinstance(reference, BiasModel):
            reference.fit(train.movie, train.user, train.rating, train.num_movies, train.num_users)
        else:
            reference.fit(train.movie, train.user, train.rating)
        pred = reference.predict(test.movie, test.user)
        if name == "bernoulli":
            pred = as_probability(pred)
        lpd = plugin_lpd(name, test.rating, pred, reference.residual_sd,
                         levels=fitted.config["model.ordinal_levels"])
        scores = rating_metrics(name, test.rating, pred, lpd)
        metrics["reference"][reference.name] = scores
        metrics["ratio_to_reference"][reference.name] = {
            key: (metrics["test"][key] / scores[key]
                  if metrics["test"][key] is not None and scores[key] else None)
            for key in METRIC_KEYS[name]
        } | {"lpd_difference": (metrics["test"]["lpd"] - scores["lpd"]
                                if metrics["test"]["lpd"] is not None else None)}
    return metrics
