"""Fold in a new user (or movie) from its ratings, without retraining.

The guide is amortized: an encoder maps *any* entity's observed ratings to its
approximate posterior. A user who was not in the training data, with ratings
``{(i, r_i)}`` of known movies, gets

.. math::  q(z^{user}_{*} \\mid r_{\\cdot *}) = \\mathcal{N}\\big(\\mu_\\psi(r_{\\cdot *}),
    \\mathrm{diag}\\, \\sigma_\\psi(r_{\\cdot *})^2\\big)

from the same user encoder, reading the same sparse input as during the fit: the
likelihood's targets, standardized with the training ``center`` and ``spread``, pooled
with the same power (it is built by :class:`~deepfactor.batching.EncoderInputs`
itself). A user folded in from exactly their training ratings therefore gets exactly
the posterior the fit gave them; a test checks this. A new movie is folded in the same
way from ``{user id: rating}`` by the movie encoder. It is one sparse product and a
small MLP, so it takes well under a millisecond.

Simplified: the other side's posteriors are kept as they are. In the model, a new
user's ratings are also evidence about the movies they rated; only a refit lets the
movie encoders read them. With one new user among hundreds this is a small change to
each movie's input, and it is not measured here.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from .batching import EncoderInputs
from .data.ratings import IdIndex, Ratings
from .data.readers import DataFormatError, guess_separator, split_line
from .predict import Posterior, predictive_summaries

if TYPE_CHECKING:
    from .fitted import FittedModel

__all__ = ["FoldIn", "FoldInWarning", "RatingsFile", "fold_in", "read_fold_in_ratings"]

log = logging.getLogger(__name__)

Kind = Literal["user", "movie"]
_OTHER = {"user": "movie", "movie": "user"}


class FoldInWarning(UserWarning):
    """Some given ratings could not be used (unknown ids), or none could."""


class RatingsFile(dict):
    """Ratings read from a file: a dict of raw id to rating that knows each one's line.

    :func:`fold_in` takes it like any mapping; when a rating is refused (outside the
    rating scale, not a level of the likelihood), its error names ``source:line``.

    Attributes
    ----------
    source : str
        The file as it was named.
    lines : dict of str to int
        The 1-based line of each id's rating.
    """

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self.lines: dict[str, int] = {}


@dataclass(frozen=True, eq=False)
class FoldIn:
    """A new user (or movie) folded into a fitted model: its q(z) and what it read.

    Attributes
    ----------
    fitted : FittedModel
    kind : {"user", "movie"}
        What the new entity is; its ratings are of entities of the other kind.
    name : str
        The new entity's label in outputs (its raw id, if it has one).
    z_loc, z_scale : Tensor, shape (total_dim,)
        Parameters of ``q(z) = Normal(z_loc, diag(z_scale^2))``.
    rated : ndarray of int64, shape (num_read,)
        Indices (in the fitted model's id map of the other kind) of the ratings read;
        for an implicit fit, every cell of the new entity's row (see :func:`fold_in`).
    targets : ndarray of float64, shape (num_read,)
        Those ratings as the likelihood's targets (for Bernoulli, 0/1 likes).
    ignored : tuple of str
        Given ids that the model does not know, left out.
    """

    fitted: FittedModel
    kind: Kind
    name: str
    z_loc: torch.Tensor
    z_scale: torch.Tensor
    rated: np.ndarray
    targets: np.ndarray
    ignored: tuple[str, ...] = ()

    @property
    def seen(self) -> np.ndarray:
        """Indices of the entities this one rated: ``rated``, less an implicit fit's 0s."""
        return self.rated[self.targets > 0] if self.fitted.implicit else self.rated

    @property
    def other_kind(self) -> Kind:
        return _OTHER[self.kind]  # type: ignore[return-value]

    @property
    def other_ids(self) -> IdIndex:
        """Raw ids of the entities this one can be paired with."""
        return self.fitted.movie_ids if self.kind == "user" else self.fitted.user_ids

    def posterior(self) -> Posterior:
        """The fitted posterior with this entity as the only row of its kind.

        Its index in the returned :class:`~deepfactor.predict.Posterior` is 0; the
        other kind keeps the fitted model's rows.
        """
        post = self.fitted.posterior
        one_loc, one_scale = self.z_loc.unsqueeze(0), self.z_scale.unsqueeze(0)  # (1, D)
        if self.kind == "user":
            return Posterior(post.z_movie_loc, post.z_movie_scale, one_loc, one_scale)
        return Posterior(one_loc, one_scale, post.z_user_loc, post.z_user_scale)

    def predict(self, ids: Sequence[object] | None = None, *,
                quantiles: tuple[float, ...] = (0.05, 0.95), num_samples: int | None = None,
                seed: int | None = None) -> pd.DataFrame:
        """Posterior predictive mean, sd and quantiles for this entity's pairs.

        Parameters
        ----------
        ids : sequence of raw ids, length N, optional
            Movies (for a new user) or users (for a new movie); None: every one the
            model knows. Compared as strings.
        quantiles : tuple of float
        num_samples, seed : int, optional
            Posterior draws and their seed (defaults: the run's configuration).

        Returns
        -------
        DataFrame
            The layout of :meth:`FittedModel.predict`: ``user``, ``movie``, ``mean``,
            ``sd`` and one column per quantile, one row per id in input order.

        Raises
        ------
        KeyError
            Naming the ids the model does not know.
        """
        others = self.other_ids
        ids = others.raw if ids is None else [str(i) for i in ids]
        index = others.index_of(ids, what=f"{self.other_kind} id")
        one = np.zeros(len(index), dtype=np.int64)
        movie, user = (index, one) if self.kind == "user" else (one, index)
        config = self.fitted.config
        out = predictive_summaries(
            self.fitted.model, self.posterior(), movie, user,
            num_samples=num_samples or config["eval.num_samples"],
            seed=config["train.seed"] if seed is None else seed, quantiles=quantiles)
        names = [self.name] * len(ids)
        frame = pd.DataFrame({"user": names, "movie": ids} if self.kind == "user"
                             else {"user": ids, "movie": names})
        for key, value in out.items():
            frame[key] = value
        return frame

    def recommend(self, k: int = 10, **options) -> pd.DataFrame:
        """Top-``k`` movies for a new user (users for a new movie); see
        :func:`deepfactor.recommend.recommend` for ``options`` and the columns."""
        from .recommend import recommend

        return recommend(self.fitted, self, k, **options)


def fold_in(fitted: FittedModel, ratings: Mapping[object, float], *, kind: Kind = "user",
            name: str = "new", unknown: Literal["warn", "error", "ignore"] = "warn") -> FoldIn:
    """The posterior of a new user (or movie) from its ratings, by the fitted encoder.

    Parameters
    ----------
    fitted : FittedModel
    ratings : mapping of raw id to float, length n
        For a new user, ``{movie id: rating}``; for a new movie, ``{user id: rating}``.
        Ratings are on the data file's scale (stars for MovieLens); the likelihood
        maps them to its targets (for Bernoulli, above ``like_threshold`` is a like).
        Ids are compared as strings: ``242`` and ``"242"`` are one movie. For an
        implicit fit (``data.implicit``) only which ids are given counts (any finite
        value): the row read is a 1 for each of them and a 0 for every other entity of
        the fit's grid, or for as many drawn ones as ``data.implicit_negatives`` asks,
        as the fit's cells hold them.
    kind : {"user", "movie"}
        What the new entity is.
    name : str
        Its label in predictions and recommendations.
    unknown : {"warn", "error", "ignore"}
        What to do with ids the model does not know: leave them out with a
        :class:`FoldInWarning` naming them, raise a ``KeyError`` naming them, or leave
        them out silently.

    Returns
    -------
    FoldIn
        With ``z_loc``, ``z_scale`` of shape ``(total_dim,)``; ``predict`` and
        ``recommend`` work on it. With no known rating, q is the prior N(0, I) (for an
        implicit fit, q of a row of zeros).

    Raises
    ------
    KeyError
        With ``unknown="error"``, naming the unknown ids.
    ValueError
        For a rating that is not a finite number, an id given twice (``242`` and
        ``"242"``), a value the likelihood does not accept, or a bad ``kind``.

    Examples
    --------
    >>> new = fold_in(fitted, {"50": 5, "172": 5, "181": 4})  # doctest: +SKIP
    >>> new.recommend(k=10)                                    # doctest: +SKIP
    """
    if kind not in _OTHER:
        raise ValueError(f"kind must be 'user' or 'movie', got {kind!r}")
    if unknown not in ("warn", "error", "ignore"):
        raise ValueError(f"unknown must be 'warn', 'error' or 'ignore', got {unknown!r}")
    other = _OTHER[kind]
    others = fitted.movie_ids if kind == "user" else fitted.user_ids
    ids, values = _checked(ratings, other)
    if isinstance(ratings, RatingsFile) and all(i in ratings.lines for i in ids):
        # errors name file:line (unless entries were added after reading)
        source, lines = ratings.source, np.array([ratings.lines[i] for i in ids])
    else:
        source, lines = f"fold-in of {kind} {name!r}", None
    # the scale is checked as for the training files: not for simulated data, nor for an
    # implicit fit, which reads only which ids are given
    if fitted.config["data.dataset"] != "synthetic" and not fitted.implicit:
        _check_scale(ids, values, other, fitted.config["data.rating_scale"], source, lines)

    known = np.fromiter((i in others for i in ids), dtype=bool, count=len(ids))
    missing = [i for i, ok in zip(ids, known) if not ok]
    if missing and unknown == "error":
        others.index_of(missing, what=f"{other} id")  # raises, naming them
    if missing and unknown == "warn":
        shown = ", ".join(repr(m) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        warnings.warn(f"fold-in of {kind} {name!r}: ignored {len(missing)} unknown {other} "
                      f"id{'s' if len(missing) > 1 else ''}: {shown}{more}",
                      FoldInWarning, stacklevel=2)
    ids = [i for i, ok in zip(ids, known) if ok]
    rated = others.index_of(ids, what=f"{other} id")  # (n,)
    if not len(rated) and unknown != "ignore":
        warnings.warn(f"fold-in of {kind} {name!r}: no rating of a known {other}, so its "
                      + ("row holds no 1: it chose nothing the model knows" if fitted.implicit
                         else "posterior is the prior N(0, I)"), FoldInWarning, stacklevel=2)
    if fitted.implicit:  # a 1 for each chosen id, 0s beside them as in the fit's cells
        chosen = rated
        rated = _implicit_row(fitted, kind, chosen)
        targets = np.isin(rated, chosen).astype(np.float64)
    else:
        targets = fitted.model.likelihood.prepare(
            values[known], source=source, lines=None if lines is None else lines[known])

    z_loc, z_scale = encode_one(fitted, kind, rated, targets)
    log.debug("folded in %s %r from %d ratings (%d ignored)", kind, name, len(rated),
              len(missing))
    return FoldIn(fitted, kind, str(name), z_loc, z_scale, rated, targets, tuple(missing))


def _implicit_row(fitted: FittedModel, kind: Kind, chosen: np.ndarray) -> np.ndarray:
    """Other-kind indices of an implicit fit's row for a new entity that chose ``chosen``,
    sorted: ``chosen`` and the zeros beside them, as the fit's cells hold them.

    Every other entity of the fit's grid (those with a training cell), or, for a fit
    with ``data.implicit_negatives = r``, ``round(r n)`` of them drawn as
    :func:`~deepfactor.implicit.implicit_cells` draws a user's zeros (seeded with
    ``train.seed``, so a fold-in is reproducible).
    """
    from .implicit import row_zeros

    rows = fitted.inputs.by_movie if kind == "user" else fitted.inputs.by_user
    grid = np.flatnonzero(rows.counts > 0)
    chosen = np.unique(chosen)
    config = fitted.config
    zeros = row_zeros(grid, chosen, config["data.implicit_negatives"] or None,
                      np.random.default_rng(config["train.seed"]))
    return np.union1d(zeros, chosen)


def _check_scale(ids: list[str], values: np.ndarray, other: str, scale: list, source: str,
                 lines: np.ndarray | None) -> None:
    """The fit's ``data.rating_scale`` holds for fold-in ratings too."""
    if not scale:
        return
    outside = np.flatnonzero((values < scale[0]) | (values > scale[1]))
    if outside.size:
        k = outside[0]
        where = source if lines is None else f"{source}:{lines[k]}"
        raise ValueError(f"{where}: the rating of {other} {ids[k]!r}, {values[k]:g}, is "
                         f"outside the declared scale [{scale[0]:g}, {scale[1]:g}] "
                         "(data.rating_scale)")


def _checked(ratings: Mapping[object, float], other: str) -> tuple[list[str], np.ndarray]:
    """Ids as strings and values as floats, refusing repeats and non-finite values."""
    if not isinstance(ratings, Mapping):
        raise TypeError(f"ratings must be a mapping of {other} id to rating, got "
                        f"{type(ratings).__name__}")
    ids, values, first = [], [], {}
    for raw, value in ratings.items():
        key = str(raw)
        if key in first:
            raise ValueError(f"{other} id {key!r} is given twice (as {first[key]!r} and "
                             f"{raw!r})")
        first[key] = raw
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the rating of {other} {key!r} is not a number: "
                             f"{value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"the rating of {other} {key!r} is not finite: {number}")
        ids.append(key)
        values.append(number)
    return ids, np.asarray(values, dtype=np.float64)


@torch.no_grad()
def encode_one(fitted: FittedModel, kind: Kind, rated: np.ndarray,
               targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z) of one entity of ``kind`` that rated ``rated`` (other-kind indices) ``targets``.

    The input is built by :class:`EncoderInputs`, with the fitted model's
    standardization and pooling, as a one-entity ratings set.

    Returns
    -------
    loc, scale : Tensor, shape (total_dim,)
    """
    one = np.zeros(len(rated), dtype=np.int64)
    inputs = fitted.inputs
    if kind == "user":
        view = Ratings(rated, one, targets, fitted.movie_ids, IdIndex(["new"]))
    else:
        view = Ratings(one, rated, targets, IdIndex(["new"]), fitted.user_ids)
    encoder_inputs = EncoderInputs(view, targets, inputs.center, inputs.spread,
                                   inputs.pooling_power, sketch=inputs.sketch)
    guide = fitted.guide
    if kind == "user":
        loc, scale = guide.user_encoder(encoder_inputs.user_bag(np.zeros(1, np.int64)))
    else:
        loc, scale = guide.movie_encoder(encoder_inputs.movie_bag(np.zeros(1, np.int64)))
    return loc[0], scale[0]


#: First fields that mark a header line in a fold-in ratings file.
_HEADERS = ("movie", "movieid", "movie_id", "item", "itemid", "item_id", "user", "userid",
            "user_id", "id")


def read_fold_in_ratings(path: str | os.PathLike, *,
                         encoding: str = "utf-8-sig") -> RatingsFile:
    """Read a new entity's ratings: an id and a rating per line.

    The separator is taken from the first line (tab, ``::``, comma, else any
    whitespace); tab- and comma-separated fields may be quoted as a spreadsheet writes
    them (``"242","5"``); a header whose first field is ``movie`` (``movieId``,
    ``item``, ...) is skipped, blank lines and lines starting with ``#`` are ignored,
    and further fields are ignored.

    Returns
    -------
    RatingsFile
        A dict of raw id (as written) to rating, in file order, that also holds each
        rating's line, so that :func:`fold_in` can name it.

    Raises
    ------
    DataFormatError
        ``file:line:`` for a line without two fields, a rating that is not a finite
        number, an id given twice, or a file without ratings.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataFormatError(f"{source}: no such file") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{source}: not {encoding} text ({err.reason})") from None
    lines = [(n, t.strip()) for n, t in enumerate(text.splitlines(), 1)]
    lines = [(n, t) for n, t in lines if t and not t.startswith("#")]
    if not lines:
        raise DataFormatError(f"{source}: no ratings (the file is empty or blank)")
    sep = guess_separator(lines[0][1])

    out = RatingsFile(source)
    for number, line in lines:
        fields = split_line(line, sep)
        if number == lines[0][0] and fields[0].lower() in _HEADERS:
            continue
        if len(fields) < 2 or not fields[0]:
            raise DataFormatError(f"{source}:{number}: expected an id and a rating, found "
                                  f"{line!r}")
        try:
            value = float(fields[1])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataFormatError(f"{source}:{number}: rating {fields[1]!r} is not a finite "
                                  "number")
        if fields[0] in out:
            raise DataFormatError(f"{source}:{number}: id {fields[0]!r} already rated on "
                                  f"line {out.lines[fields[0]]}")
        out[fields[0]], out.lines[fields[0]] = value, number
    if not out:
        raise DataFormatError(f"{source}: no ratings after the header")
    return out
