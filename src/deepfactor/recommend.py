"""Recommendations with uncertainty, and the completed rating matrix in chunks.

For a user ``j`` and each candidate movie ``i`` the posterior predictive is the mixture
of :mod:`deepfactor.predict`, from ``S`` joint draws ``(z_i^{(s)}, z_j^{(s)}) ~ q``. The
user's latent is drawn once per ``s`` and shared by every candidate, as in the model.
:func:`recommend` ranks the candidates by one of three scores:

``mean``
    the posterior predictive mean ``E[r_ij | data]`` (for Bernoulli, the
    probability of a like);
``upper``
    the ``quantile`` (0.9 by default) of the posterior of the expected rating
    ``E[r | eta_ij]`` over the draws: optimism in the face of uncertainty, as in
    Bayes-UCB (Kaufmann, Cappé and Garivier 2012). It leaves out the observation
    noise, which says nothing about which movie is better;
``thompson``
    ``E[r | eta_ij]`` under a single joint posterior draw (Thompson sampling): each
    call with another seed explores differently, in proportion to the uncertainty.

:func:`complete` fills the ``users x movies`` matrices of predictive means and sds a
block of rows at a time. The only dense arrays it allocates are the two outputs, in
the requested dtype (or the caller's own arrays, such as memory maps, via ``out``);
:func:`iter_complete` yields the blocks without keeping them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .foldin import FoldIn
from .predict import DEFAULT_CHUNK, chunks, draw_count, draw_eta

if TYPE_CHECKING:
    from .data.ratings import IdIndex, Ratings
    from .fitted import FittedModel

__all__ = ["SHORTLIST_PER_K", "STRATEGIES", "Completion", "complete", "iter_complete",
           "movie_titles", "recommend", "top_k_movies"]

log = logging.getLogger(__name__)

STRATEGIES = ("mean", "upper", "thompson")
Strategy = Literal["mean", "upper", "thompson"]

#: ``shortlist="auto"`` under ``strategy="mean"`` scores this many candidates per
#: recommended movie. Measured (``analysis/benchmark_foldin.py``, u1, 50 new users, k =
#: 10): a shortlist of 50 keeps 9.4 of the top 10 that scoring every movie gives, while
#: scoring every movie again with another seed's draws keeps 9.1, so what it misses is
#: within the Monte Carlo noise of the full ranking; fold-in plus top-10 then takes
#: about 7 ms instead of over 200 ms (README, "Recommend and fold in").
SHORTLIST_PER_K = 5


# -- one entity against many ---------------------------------------------------------------


@dataclass(frozen=True)
class _Scored:
    """Predictive mean, sd and ranking score per candidate; each of shape (num_candidates,)."""

    mean: torch.Tensor
    sd: torch.Tensor
    score: torch.Tensor


@torch.no_grad()
def _score(model, one_loc: torch.Tensor, one_scale: torch.Tensor, one_is_user: bool,
           other_loc: torch.Tensor, other_scale: torch.Tensor, strategy: Strategy,
           quantile: float, num_samples: int, seed: int,
           chunk: int = DEFAULT_CHUNK) -> _Scored:
    """Score every row of ``other_loc`` (num_candidates, D) against one entity (D,)."""
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn((num_samples, one_loc.shape[-1]), generator=generator,
                      dtype=one_loc.dtype)
    z_one = one_loc + one_scale * eps  # (S, D): one draw per s, shared by all candidates
    likelihood = model.likelihood
    parts: list[_Scored] = []
    for part in chunks(other_loc.shape[0], chunk):
        loc, scale = other_loc[part], other_scale[part]
        eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype)
        z_other = loc + scale * eps  # (S, n, D)
        z_pair = z_one.unsqueeze(1).expand_as(z_other)  # (S, n, D)
        eta = (model.decoder(z_other, z_pair) if one_is_user
               else model.decoder(z_pair, z_other))  # (S, n)
        summary = likelihood.predictive_summary(eta, quantiles=())
        if strategy == "mean":
            score = summary["mean"]
        elif strategy == "upper":
            score = torch.quantile(likelihood.mean(eta), quantile, dim=0)
        else:
            score = likelihood.mean(eta[0])  # the first joint draw
        parts.append(_Scored(summary["mean"], summary["sd"], score))
    return _Scored(*(torch.cat([getattr(p, f) for p in parts]) for f in ("mean", "sd", "score")))


@torch.no_grad()
def _plug_in(model, one_loc: torch.Tensor, one_is_user: bool,
             other_loc: torch.Tensor) -> torch.Tensor:
    """``E[r | eta]`` with both latents at their posterior means; shape (num_candidates,)."""
    one = one_loc.expand_as(other_loc)  # (n, D)
    eta = model.decoder(other_loc, one) if one_is_user else model.decoder(one, other_loc)
    return model.likelihood.mean(eta)


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first; ties by position."""
    k = min(k, len(score))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-score, k - 1)[:k] if k < len(score) else np.arange(len(score))
    return best[np.lexsort((best, -score[best]))]


def recommend(fitted: FittedModel, user: object | FoldIn, k: int = 10, *,
              exclude_seen: bool = True, strategy: Strategy = "mean", quantile: float = 0.9,
              candidates: Sequence[object] | None = None, exclude: Sequence[object] = (),
              titles: Mapping[str, str] | None = None,
              shortlist: int | Literal["auto"] | None = "auto",
              num_samples: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """The top-``k`` movies for a user, with the predictive mean and sd of each.

    Parameters
    ----------
    fitted : FittedModel
    user : raw id or FoldIn
        A user of the fitted model (``196`` and ``"196"`` are one user), or a new user
        from :func:`~deepfactor.foldin.fold_in`. A folded-in *movie* gets the top-``k``
        users instead.
    k : int, default 10
    exclude_seen : bool, default True
        Leave out what the user has rated: the training ratings the encoders read (for
        an implicit fit, the movies it rated, not every cell), or for a new user the
        ratings it was folded in from.
    strategy : {"mean", "upper", "thompson"}, default "mean"
        The ranking score; see the module docstring.
    quantile : float, default 0.9
        For ``strategy="upper"``.
    candidates : sequence of raw ids, optional
        The movies to rank. Default: every movie with at least one rating the
        encoders read (a movie no one rated would be ranked from the prior).
    exclude : sequence of raw ids
        Movies to leave out besides the seen ones.
    titles : mapping of raw id to str, optional
        Movie titles, e.g. from :func:`movie_titles`.
    shortlist : int, "auto" or None, default "auto"
        Score only this many candidates: those with the highest plug-in prediction
        ``E[r | eta(z_loc)]``, the decoder at the posterior means (one pass, no draws).
        Much faster for a large catalogue, but approximate: a movie whose posterior
        mean is high only through its uncertainty can be missed, which matters most
        for ``upper`` and ``thompson``. ``"auto"``: ``SHORTLIST_PER_K * k`` candidates
        under ``strategy="mean"`` (its misses are measured to lie within the Monte
        Carlo noise, see :data:`SHORTLIST_PER_K`), every candidate under the other
        strategies. None: every candidate is scored.
    num_samples, seed : int, optional
        Posterior draws and their seed (defaults: the run's configuration).

    Returns
    -------
    DataFrame
        ``min(k, num_candidates)`` rows, best first: ``rank`` (1..k), ``movie`` (raw
        id; ``user`` for a folded-in movie), ``title`` (movies only; missing where
        unknown), ``mean``, ``sd`` (posterior predictive; for Bernoulli the
        probability of a like and its Bernoulli sd) and, unless ``strategy="mean"``,
        ``score``.

    Raises
    ------
    KeyError
        Naming an unknown user, or unknown ids in ``candidates`` or ``exclude``.
    ValueError
        For a bad ``k``, ``strategy``, ``quantile`` or ``shortlist``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if shortlist == "auto":
        shortlist = SHORTLIST_PER_K * k if strategy == "mean" else None
    elif isinstance(shortlist, str):
        raise ValueError(f"shortlist must be an int, 'auto' or None, got {shortlist!r}")
    if shortlist is not None and shortlist < k:
        raise ValueError(f"shortlist ({shortlist}) must be at least k ({k})")
    one_loc, one_scale, one_is_user, seen = _the_one(fitted, user)
    other = "movie" if one_is_user else "user"
    others = fitted.movie_ids if one_is_user else fitted.user_ids
    post = fitted.posterior
    other_loc, other_scale = ((post.z_movie_loc, post.z_movie_scale) if one_is_user
                              else (post.z_user_loc, post.z_user_scale))

    pool = _pool(fitted, one_is_user, seen if exclude_seen else (), candidates, exclude)
    if shortlist is not None and shortlist < len(pool):
        plug_in = _plug_in(fitted.model, one_loc, one_is_user, other_loc[pool])
        pool = pool[_top(plug_in.numpy().astype(np.float64), shortlist)]

    config = fitted.config
    if len(pool) == 0:  # everything seen or excluded: an empty list, said once
        warnings.warn(f"no {other} left to recommend: every candidate is seen or "
                      "excluded", UserWarning, stacklevel=2)
        nothing = torch.zeros(0)
        scored = _Scored(nothing, nothing, nothing)
    else:
        scored = _score(fitted.model, one_loc, one_scale, one_is_user, other_loc[pool],
                        other_scale[pool], strategy, quantile,
                        draw_count(num_samples, config["eval.num_samples"]),
                        config["train.seed"] if seed is None else seed)
    score = scored.score.numpy().astype(np.float64)
    best = _top(score, k)
    ids = others.raw_of(pool[best])
    frame = pd.DataFrame({"rank": np.arange(1, len(best) + 1), other: list(ids)})
    if one_is_user:
        frame["title"] = [(titles or {}).get(i) for i in ids]
    frame["mean"] = scored.mean.numpy()[best].astype(np.float64)
    frame["sd"] = scored.sd.numpy()[best].astype(np.float64)
    if strategy != "mean":
        frame["score"] = score[best]
    return frame


def _pool(fitted: FittedModel, one_is_user: bool, seen, candidates, exclude) -> np.ndarray:
    """Indices of the candidates: rated by someone (or given), less seen and excluded."""
    other = "movie" if one_is_user else "user"
    others = fitted.movie_ids if one_is_user else fitted.user_ids
    if candidates is None:
        rows = fitted.inputs.by_movie if one_is_user else fitted.inputs.by_user
        keep = rows.counts > 0  # (num_others,)
    else:
        keep = np.zeros(len(others), dtype=bool)
        keep[others.index_of(candidates, what=f"{other} id")] = True
    keep[np.asarray(seen, dtype=np.int64)] = False
    keep[others.index_of(exclude, what=f"{other} id")] = False
    return np.flatnonzero(keep)  # (num_candidates,)


def _the_one(fitted: FittedModel, user: object | FoldIn):
    """(loc, scale, is_user, seen other-kind indices) of a raw user id or a fold-in."""
    if isinstance(user, FoldIn):
        if user.fitted is not fitted:
            raise ValueError("this FoldIn was made from another fitted model")
        return user.z_loc, user.z_scale, user.kind == "user", user.seen
    j = int(fitted.user_ids.index_of([user], what="user id")[0])
    rows = fitted.seen_by_user
    seen = rows.indices[rows.indptr[j]:rows.indptr[j + 1]]
    post = fitted.posterior
    return post.z_user_loc[j], post.z_user_scale[j], True, seen


# -- many users: top-k and the completed matrix ----------------------------------------------


@dataclass(frozen=True)
class Completion:
    """The completed matrix: posterior predictive mean and sd of every (user, movie) cell.

    Attributes
    ----------
    users : list of str, length num_users
    movies : list of str, length num_movies
    mean, sd : ndarray, shape (num_users, num_movies)
    """

    users: list[str]
    movies: list[str]
    mean: np.ndarray
    sd: np.ndarray

    def frame(self, what: Literal["mean", "sd"] = "mean") -> pd.DataFrame:
        """One of the matrices as a DataFrame indexed by user, with a column per movie."""
        return pd.DataFrame(getattr(self, what), index=pd.Index(self.users, name="user"),
                            columns=pd.Index(self.movies, name="movie"), copy=False)


def _indices(ids: IdIndex, wanted: Sequence[object] | None, what: str):
    """Indices and raw ids of ``wanted`` (None: all of ``ids``); unknown ids raise."""
    if wanted is None:
        return np.arange(len(ids), dtype=np.int64), ids.raw
    wanted = [str(w) for w in wanted]
    return ids.index_of(wanted, what=what), wanted


@torch.no_grad()
def iter_complete(fitted: FittedModel, users: Sequence[object] | None = None,
                  movies: Sequence[object] | None = None, *, num_samples: int | None = None,
                  seed: int | None = None, dtype=np.float32,
                  chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """The completed matrix a block of user rows at a time.

    Parameters
    ----------
    fitted : FittedModel
    users, movies : sequence of raw ids, optional
        Rows and columns (default: every user, every movie), in this order.
    num_samples, seed : int, optional
        Posterior draws and their seed (defaults: the run's configuration).
    dtype : numpy dtype, default float32
        Of the yielded blocks; the decoder computes in torch's default dtype, so
        float64 adds no information with the default float32 torch.
    chunk : int
        Pairs decoded at once (memory ``~ num_samples x chunk x decoder width``).

    Yields
    ------
    rows : slice
        The block's rows among ``users``.
    mean, sd : ndarray, shape (rows, num_movies)
        A block holds ``max(1, chunk // num_movies)`` users.
    """
    user_index, _ = _indices(fitted.user_ids, users, "user id")
    movie_index, _ = _indices(fitted.movie_ids, movies, "movie id")
    config = fitted.config
    num_samples = draw_count(num_samples, config["eval.num_samples"])
    generator = torch.Generator().manual_seed(config["train.seed"] if seed is None else seed)
    likelihood = fitted.model.likelihood
    num_movies = len(movie_index)
    rows_per_block = max(1, chunk // max(num_movies, 1))

    for block in chunks(len(user_index), rows_per_block):
        rows = user_index[block]
        mean = np.empty((len(rows), num_movies), dtype=dtype)
        sd = np.empty((len(rows), num_movies), dtype=dtype)
        flat_mean, flat_sd = mean.reshape(-1), sd.reshape(-1)  # views, C order
        movie = np.tile(movie_index, len(rows))  # (rows * num_movies,)
        user = np.repeat(rows, num_movies)
        for part in chunks(len(movie), chunk):
            eta = draw_eta(fitted.model, fitted.posterior, movie[part], user[part],
                           num_samples, generator)  # (S, pairs)
            summary = likelihood.predictive_summary(eta, quantiles=())
            flat_mean[part] = summary["mean"].numpy()
            flat_sd[part] = summary["sd"].numpy()
        yield block, mean, sd


def complete(fitted: FittedModel, users: Sequence[object] | None = None,
             movies: Sequence[object] | None = None, *, num_samples: int | None = None,
             seed: int | None = None, dtype=np.float32,
             out: tuple[np.ndarray, np.ndarray] | None = None,
             chunk: int = DEFAULT_CHUNK, progress: bool = True) -> Completion:
    """The completed ``users x movies`` matrices of posterior predictive mean and sd.

    Parameters
    ----------
    fitted : FittedModel
    users, movies : sequence of raw ids, optional
        Rows and columns (default: every user, every movie).
    num_samples, seed : int, optional
        Posterior draws and their seed (defaults: the run's configuration).
    dtype : numpy dtype, default float32
        Of the two matrices, when ``out`` is not given.
    out : (mean, sd), optional
        Arrays of shape ``(num_users, num_movies)`` to write into (for example
        ``numpy.memmap`` files, for a matrix larger than memory).
    chunk : int
        Pairs decoded at once.
    progress : bool
        Show a tqdm bar over the rows (the whole MovieLens 100K matrix takes minutes
        on two cores: ``num_samples`` draws for each of its 1.6 million cells).

    Returns
    -------
    Completion
        ``mean`` and ``sd`` of shape ``(num_users, num_movies)`` (the ``out`` arrays
        when given); observed cells are predicted too, from the posterior.

    Notes
    -----
    Memory: the two outputs, one block of ``max(1, chunk // num_movies)`` rows in
    ``dtype``, and the draws of one chunk of pairs; never a dense array over every
    cell beyond the outputs, and never ``S`` of them.
    """
    _, user_raw = _indices(fitted.user_ids, users, "user id")
    _, movie_raw = _indices(fitted.movie_ids, movies, "movie id")
    shape = (len(user_raw), len(movie_raw))
    if out is None:
        out = (np.empty(shape, dtype=dtype), np.empty(shape, dtype=dtype))
    for array in out:
        if array.shape != shape:
            raise ValueError(f"out arrays must have shape {shape} (users x movies), "
                             f"got {array.shape}")
    with tqdm(total=shape[0], desc="complete", unit="user", disable=not progress) as bar:
        for rows, mean, sd in iter_complete(fitted, users, movies, num_samples=num_samples,
                                            seed=seed, dtype=out[0].dtype, chunk=chunk):
            out[0][rows], out[1][rows] = mean, sd
            bar.update(rows.stop - rows.start)  # rows: a slice of the users
    return Completion(list(user_raw), list(movie_raw), out[0], out[1])


def top_k_movies(fitted: FittedModel | Sequence[FittedModel], users: np.ndarray,
                 k: int = 10, *, exclude_seen: bool = True, seen: Ratings | None = None,
                 num_samples: int | None = None, seed: int | None = None,
                 chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Top-``k`` movies by posterior predictive mean for many users at once.

    Candidates are the movies with at least one rating the encoders read, as in
    :func:`recommend`; with ``exclude_seen`` each user's own rated movies are left out.

    Parameters
    ----------
    fitted : FittedModel, or a sequence of them
        Several fits of the same training data (say, with different seeds) rank by the
        predictive mean of their equal-weight mixture, ``(1/K) sum_k E_k[r_ij]``. The
        first fit's id maps and encoder inputs decide the candidates; every fit must
        share its id maps.
    users : ndarray of int, shape (num_users,)
        User indices of the fitted model.
    seen : Ratings, optional
        The (movie, user) pairs ``exclude_seen`` leaves out, on the fitted model's id
        maps. Default: the fit's ``seen`` pairs (the ratings the encoders read; for an
        implicit fit, its positive cells).
    num_samples, seed : int, optional
        Posterior draws per fit, and their seed (default: each fit's own
        ``train.seed``, so the members of a mixture draw independently).

    Returns
    -------
    ndarray of int64, shape (num_users, k)
        Movie indices, best first; ``-1`` pads a row with fewer than ``k`` candidates.
    """
    members = _members(fitted)
    first = members[0]
    by_movie = first.inputs.by_movie
    by_user = first.seen_by_user if seen is None else first.reindex(seen).by_user()
    pool = np.flatnonzero(by_movie.counts > 0)  # (num_candidates,)
    column_of = np.full(by_movie.num_rows, -1, dtype=np.int64)
    column_of[pool] = np.arange(len(pool))
    raw_users = first.user_ids.raw_of(np.asarray(users, dtype=np.int64))
    raw_pool = first.movie_ids.raw_of(pool)
    blocks = zip(*(iter_complete(member, raw_users, raw_pool, num_samples=num_samples,
                                 seed=seed, chunk=chunk) for member in members))
    out = np.full((len(users), k), -1, dtype=np.int64)
    for parts in blocks:
        rows = parts[0][0]
        # (rows, num_candidates), one block only: the mixture's predictive mean
        score = np.mean([mean.astype(np.float64) for _, mean, _ in parts], axis=0)
        for r, j in enumerate(users[rows]):
            if exclude_seen:
                rated = column_of[by_user.indices[by_user.indptr[j]:by_user.indptr[j + 1]]]
                score[r, rated[rated >= 0]] = -np.inf
            allowed = np.isfinite(score[r])
            best = _top(np.where(allowed, score[r], -np.inf), k)
            best = best[allowed[best]]
            out[rows.start + r, :len(best)] = pool[best]
    return out


def _members(fitted: FittedModel | Sequence[FittedModel]) -> list[FittedModel]:
    """The fits of a mixture, checked to share the first one's id maps."""
    members = list(fitted) if isinstance(fitted, Sequence) else [fitted]
    if not members:
        raise ValueError("no fitted model given")
    first = members[0]
    pairs = _pair_codes(first.seen) if len(members) > 1 else None
    for number, member in enumerate(members[1:], start=2):
        if member.movie_ids != first.movie_ids or member.user_ids != first.user_ids:
            raise ValueError(f"fit {number} of the mixture has other movie or user ids than "
                             "fit 1: a mixture needs fits of the same training data")
        if not np.array_equal(_pair_codes(member.seen), pairs):
            raise ValueError(f"fit {number} of the mixture was trained on other rated pairs "
                             "than fit 1: a mixture needs fits of the same training data")
    return members


def _pair_codes(ratings: Ratings) -> np.ndarray:
    """Sorted (user, movie) codes of ``ratings``' pairs, to compare two pair sets."""
    return np.sort(ratings.user.astype(np.int64) * ratings.num_movies + ratings.movie)


# -- titles ----------------------------------------------------------------------------------


def movie_titles(fitted: FittedModel, data_dir: str | os.PathLike | None = None
                 ) -> dict[str, str]:
    """Movie titles from the dataset's movie file, or {} when it is not found.

    ``u.item`` for ML-100K, ``movies.dat`` for ML-1M/10M, ``movies.csv`` for ML-20M,
    ML-25M and ml-latest-small (see :mod:`deepfactor.data.layouts`). The folder is
    looked for as for fitting (``data_dir``, the run's ``data.path``,
    ``$DEEPFACTOR_DATA``, the cache), never downloaded. Without it a warning is
    logged, for the synthetic dataset or a generic rating file an info note, and
    there are no titles.
    """
    from .data.datasets import DatasetNotFoundError, resolve_dataset
    from .data.layouts import read_dataset_movies
    from .data.readers import DataFormatError

    name = fitted.config["data.dataset"]
    if name in ("synthetic", "file"):
        log.info("%s data has no movie titles", name)
        return {}
    try:
        folder = resolve_dataset(name, data_dir or fitted.config["data.path"] or None,
                                 download=False)
        return read_dataset_movies(folder, name).titles
    except (DatasetNotFoundError, DataFormatError, OSError) as err:
        log.warning("no movie titles: %s", err)
        return {}
