"""The fitted object: model, guide, id maps and posterior, with save, load and predict.

A :class:`FittedModel` needs no data files once built: it keeps the training ratings
its encoders read (as index arrays), so a fresh process can load a run directory and
predict, re-encode, or score new pairs.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .batching import EncoderInputs
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError
from .data.ratings import IdIndex, Ratings, SparseRows
from .guide import AmortizedGuide, Encoder
from .likelihoods import make_likelihood
from .model import Decoder, MatrixFactorization
from .predict import Posterior, draw_count, encode_posterior, predictive_summaries
from .sketch import Sketch

__all__ = ["FittedModel", "build_decoder", "build_modules", "load"]

CHECKPOINT_NAME = "model.pt"


def build_decoder(config: Config) -> Decoder:
    """The decoder of ``config`` (parameters freshly initialized, from torch's generator)."""
    return Decoder(config["model.latent_dim"], tuple(config["model.decoder_hidden"]),
                   inputs=config["model.decoder_inputs"],
                   bias_latent=config["model.bias_latent"],
                   activation=config["model.decoder_activation"],
                   outputs=2 if config["model.pair_scale"] else 1)


def build_modules(config: Config, num_movies: int, num_users: int
                  ) -> tuple[MatrixFactorization, AmortizedGuide]:
    """Model and guide with the sizes of ``config`` (parameters freshly initialized)."""
    threshold = None if config["model.binary_ratings"] else config["model.like_threshold"]
    likelihood = make_likelihood(config["model.likelihood"], threshold=threshold,
                                 levels=config["model.ordinal_levels"],
                                 pair_scale=config["model.pair_scale"])
    model = MatrixFactorization(num_movies, num_users, build_decoder(config), likelihood)
    hidden = tuple(config["guide.encoder_hidden"])
    sketched = config["guide.inputs"] == "sketch"  # then both read 2 d sketch coordinates
    guide = AmortizedGuide(
        Encoder(config["guide.sketch_dim"] if sketched else num_users, model.total_dim, hidden),
        Encoder(config["guide.sketch_dim"] if sketched else num_movies, model.total_dim, hidden),
        num_movies, num_users)
    return model, guide


class FittedModel:
    """A fitted deepfactor model.

    Attributes
    ----------
    config : Config
    model : MatrixFactorization
    guide : AmortizedGuide
    movie_ids, user_ids : IdIndex
    encoder_ratings : Ratings
        The ratings the encoders read (the whole training split); values are the
        likelihood's targets. For an implicit fit (``data.implicit``), its 0/1 cells.
    implicit : bool
        ``data.implicit``: the model observes which movies each user rated.
    seen : Ratings
        The (movie, user) pairs known to be rated, which recommendations leave out:
        ``encoder_ratings``, or for an implicit fit its positive cells.
    inputs : EncoderInputs
    posterior : Posterior
        q for every movie and user, from ``encoder_ratings``; recomputed on load,
        since the encoders are deterministic.
    metrics : dict
        As written to ``metrics.json`` (empty until evaluated).
    history : list of dict
        The per-epoch trace of training (empty after :meth:`load`).
    """

    def __init__(self, config: Config, model: MatrixFactorization, guide: AmortizedGuide,
                 encoder_ratings: Ratings, center: float, spread: float,
                 metrics: dict | None = None, history: list[dict] | None = None,
                 sketch: Sketch | None = None):
        if mismatch := _sketch_mismatch(config, sketch):
            raise ValueError(mismatch)
        self.config, self.model, self.guide = config, model, guide
        self.encoder_ratings = encoder_ratings
        self.implicit = bool(config["data.implicit"])
        self.seen = (encoder_ratings.subset(encoder_ratings.rating > 0) if self.implicit
                     else encoder_ratings)
        self.movie_ids, self.user_ids = encoder_ratings.movie_ids, encoder_ratings.user_ids
        self.inputs = EncoderInputs(encoder_ratings, encoder_ratings.rating, center, spread,
                                    sketch=sketch)
        self.model.eval()
        self.guide.eval()
        self.posterior: Posterior = encode_posterior(guide, self.inputs, len(self.movie_ids),
                                                     len(self.user_ids))
        self.metrics = metrics or {}
        self.history = history or []
        self._titles: dict[str, str] | None = None  # read on first recommend()

    @functools.cached_property
    def seen_by_user(self) -> SparseRows:
        """:attr:`seen` as one CSR row of movie indices per user."""
        return self.inputs.by_user if not self.implicit else self.seen.by_user()

    @property
    def likelihood(self) -> str:
        return self.config["model.likelihood"]

    # -- prediction ---------------------------------------------------------------------

    def summaries(self, movie: np.ndarray, user: np.ndarray, *, target: np.ndarray | None = None,
                  quantiles: tuple[float, ...] = (0.05, 0.95), num_samples: int | None = None,
                  seed: int | None = None) -> dict[str, np.ndarray]:
        """Posterior predictive summaries at index pairs; see :func:`predictive_summaries`."""
        return predictive_summaries(
            self.model, self.posterior, np.asarray(movie), np.asarray(user),
            num_samples=draw_count(num_samples, self.config["eval.num_samples"]),
            seed=self.config["train.seed"] if seed is None else seed,
            target=target, quantiles=quantiles)

    def predict(self, users, movies, *, quantiles: tuple[float, ...] = (0.05, 0.95),
                num_samples: int | None = None, seed: int | None = None) -> pd.DataFrame:
        """Posterior predictive mean, sd and quantiles for (user, movie) raw-id pairs.

        Parameters
        ----------
        users, movies : sequence of raw ids, length N
            Compared as strings: ``196`` and ``"196"`` are the same user.
        quantiles : tuple of float
        num_samples, seed : int, optional
            Posterior draws and their seed (defaults: the run's configuration).

        Returns
        -------
        DataFrame
            One row per pair, in input order: ``user``, ``movie``, ``mean``, ``sd`` and
            one column per quantile (``q05``, ``q95``). For Bernoulli, ``mean`` is the
            probability of a like.

        Raises
        ------
        KeyError
            Naming the user or movie ids that the model does not know.
        """
        users, movies = [str(u) for u in users], [str(m) for m in movies]
        if len(users) != len(movies):
            raise ValueError(f"{len(users)} users but {len(movies)} movies")
        user_index, movie_index = _both_indices(self, users, movies)
        out = self.summaries(movie_index, user_index, quantiles=quantiles,
                             num_samples=num_samples, seed=seed)
        frame = pd.DataFrame({"user": users, "movie": movies})
        for key, value in out.items():
            frame[key] = value
        return frame

    def fold_in(self, ratings, **options):
        """A new user's (or movie's) posterior from its ratings.

        See :func:`deepfactor.foldin.fold_in`.
        """
        from .foldin import fold_in

        return fold_in(self, ratings, **options)

    def recommend(self, user, k: int = 10, **options) -> pd.DataFrame:
        """Top-``k`` movies for a user or a fold-in; see :func:`deepfactor.recommend.recommend`.

        Without ``titles=``, the titles come from the dataset's movie file when it is
        found (:func:`deepfactor.recommend.movie_titles`, read once per fitted model).
        """
        from .recommend import movie_titles, recommend

        if "titles" not in options:
            if self._titles is None:
                self._titles = movie_titles(self)
            options["titles"] = self._titles
        return recommend(self, user, k, **options)

    def complete(self, users=None, movies=None, **options):
        """Completed mean and sd matrices in chunks; see :func:`deepfactor.recommend.complete`."""
        from .recommend import complete

        return complete(self, users, movies, **options)

    def reading(self, ratings: Ratings, config: Config | None = None) -> FittedModel:
        """The same fitted modules with the encoders reading ``ratings`` instead.

        ``ratings`` (on this model's id maps, values the likelihood's targets) go
        through the same standardization and sketch basis as the training ratings;
        another split's training file, say. Nothing is refitted.
        """
        return FittedModel(config or self.config, self.model, self.guide, ratings,
                           self.inputs.center, self.inputs.spread, sketch=self.inputs.sketch)

    def reindex(self, ratings: Ratings) -> Ratings:
        """``ratings`` expressed against this model's id maps (all ids must be known)."""
        if ratings.movie_ids == self.movie_ids and ratings.user_ids == self.user_ids:
            return ratings
        return Ratings(self.movie_ids.index_of(ratings.movie_ids.raw_of(ratings.movie),
                                               what="movie id"),
                       self.user_ids.index_of(ratings.user_ids.raw_of(ratings.user),
                                              what="user id"),
                       ratings.rating, self.movie_ids, self.user_ids, ratings.source,
                       ratings.line)

    # -- persistence --------------------------------------------------------------------

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``model.pt`` into ``run_dir`` (atomically); returns its path."""
        path = Path(run_dir) / CHECKPOINT_NAME
        r = self.encoder_ratings
        save_checkpoint(path, {
            "config": self.config.nested(),
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "movie_ids": self.movie_ids.raw,
            "user_ids": self.user_ids.raw,
            "encoder_ratings": {"movie": torch.from_numpy(r.movie),
                                "user": torch.from_numpy(r.user),
                                "target": torch.from_numpy(r.rating)},
            "input_standardization": {"center": self.inputs.center, "spread": self.inputs.spread},
            "sketch": self.inputs.sketch.state() if self.inputs.sketch is not None else None,
        })
        return path

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> FittedModel:
        """Load a run directory (or a ``model.pt`` path) written by :meth:`save`."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        elif not path.exists():
            raise CheckpointError(f"{path}: no such run directory")
        elif path.suffix.lower() in (".toml", ".json", ".csv", ".md"):
            raise CheckpointError(f"{path}: not a run; load reads the folder that "
                                  f"`deepfactor fit --out` wrote (or its {CHECKPOINT_NAME})")
        state = load_checkpoint(path)
        try:
            config = Config.from_saved(state["config"], source=str(path))
        except ConfigError as err:
            raise CheckpointError(f"{path}: its configuration is not valid for this version "
                                  f"of deepfactor: {err}") from None
        movie_ids, user_ids = IdIndex(state["movie_ids"]), IdIndex(state["user_ids"])
        model, guide = build_modules(config, len(movie_ids), len(user_ids))
        try:
            model.load_state_dict(state["model"])
            guide.load_state_dict(state["guide"])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: parameters do not fit its configuration "
                                  f"({str(err).splitlines()[0]})") from None
        try:  # a file that unpickles safely may still be damaged inside
            r = state["encoder_ratings"]
            ratings = Ratings(r["movie"].numpy(), r["user"].numpy(), r["target"].numpy(),
                              movie_ids, user_ids, source=str(path))
            center = float(state["input_standardization"]["center"])
            spread = float(state["input_standardization"]["spread"])
            sketch = state.get("sketch")
            if sketch is not None:
                sketch = Sketch.from_state(sketch)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path}: damaged: {type(err).__name__}: {err}") from None
        if mismatch := _sketch_mismatch(config, sketch):
            raise CheckpointError(f"{path}: {mismatch}")
        if sketch is not None:
            d = config["guide.sketch_dim"]
            for basis, columns in ((sketch.movie, len(user_ids)), (sketch.user, len(movie_ids))):
                if (tuple(basis.directions.shape) != (columns, d)
                        or tuple(basis.value_scale.shape) != (d,)):
                    raise CheckpointError(
                        f"{path}: damaged: a sketch basis of shape "
                        f"{tuple(basis.directions.shape)}, expected ({columns}, {d})")
        return cls(config, model, guide, ratings, center, spread, sketch=sketch)


def _sketch_mismatch(config: Config, sketch: Sketch | None) -> str | None:
    """Why ``sketch`` does not go with ``config``'s ``guide.inputs`` (None: it does)."""
    if (sketch is None) == (config["guide.inputs"] == "sketch"):
        return (f"guide.inputs is {config['guide.inputs']!r} but there is "
                f"{'no' if sketch is None else 'a'} sketch basis")
    return None


def _both_indices(fitted: FittedModel, users: list[str], movies: list[str]):
    """Indices of users and movies; a KeyError names the unknown ones of both."""
    problems, found = [], []
    for ids, raw, what in ((fitted.user_ids, users, "user id"),
                           (fitted.movie_ids, movies, "movie id")):
        try:
            found.append(ids.index_of(raw, what=what))
        except KeyError as err:
            problems.append(err.args[0])
    if problems:
        raise KeyError("; ".join(problems))
    return found


def load(run_dir: str | os.PathLike) -> FittedModel:
    """Load a fitted model from a run directory; see :meth:`FittedModel.load`.

    ``metrics`` is read from the run's ``metrics.json`` when it is there.
    """
    fitted = FittedModel.load(run_dir)
    metrics = Path(run_dir) / "metrics.json"
    if Path(run_dir).is_dir() and metrics.is_file():
        fitted.metrics = json.loads(metrics.read_text(encoding="utf-8"))
    return fitted

