"""Implicit feedback: *which* movies a user rated, as a Bernoulli observation of every cell.

The explicit models see only the observed values, as if ratings were missing at random.
Top-``k`` lists are judged by the movies users *choose* to rate, which those models
never see: they rank obscure movies predicted to be rated highly. The implicit model
observes the choice itself. For every cell of the grid of rated movies x rated users,

.. math::  y_{ij} = 1 \\text{ if user } j \\text{ rated movie } i, \\text{ else } 0, \\qquad
    y_{ij} \\sim \\mathrm{Bernoulli}(\\sigma(\\eta_{ij})),

with the same latents, decoder and amortized guide as every other family: the model is
``model.likelihood = "bernoulli"`` with ``model.binary_ratings = true``, and the cells
built here are its data. Nothing else changes, so the ELBO, the minibatch estimator and
the checks hold as they are. Each user's list is then ranked by the posterior predictive
``P(y = 1)``, leaving out the movies the user rated (the positive cells, not every cell:
see ``seen`` in :func:`deepfactor.ranking.evaluate_ranking`).

Every cell costs memory and time: ``num_movies x num_users`` of them (1.56 million for
MovieLens 100K, an epoch 16 times as long as the explicit fit's). ``negatives=r`` keeps
every positive and draws ``r`` times as many zeros per user, uniformly among the movies
the user did not rate. That is a case-control sample, not a uniform subsample of the
cells: the predicted probabilities are then inflated (a ranking within a user is what it
serves), and a test cell can be drawn as a training zero.
"""

from __future__ import annotations

import numpy as np

from .data.ratings import Ratings

__all__ = ["MAX_CELLS", "held_out_cells", "implicit_cells", "row_zeros"]

#: :func:`implicit_cells` refuses grids larger than this without ``negatives``.
MAX_CELLS = 50_000_000


def implicit_cells(ratings: Ratings, *, negatives: float | None = None,
                   seed: int = 0) -> Ratings:
    """The 0/1 cells of the implicit model built from explicit ``ratings``.

    Parameters
    ----------
    ratings : Ratings
        ``N`` observed ratings; their values are ignored, only which pairs exist counts.
    negatives : float, optional
        None: every cell of the movies x users that have at least one rating. Else zeros
        per positive, drawn for each user without replacement among the rated movies it
        did not rate (all of them when it did not rate that many).
    seed : int
        Seeds the draw of zeros.

    Returns
    -------
    Ratings
        On ``ratings``' id maps, ``rating`` 1.0 for the ``N`` observed pairs and 0.0 for
        the others; user-major order. Shape: ``C`` cells, ``C = M' x U'`` for all cells
        (``M'`` movies and ``U'`` users with a rating) or about ``(1 + negatives) N``.

    Raises
    ------
    ValueError
        For negative ``negatives``, repeated pairs in ``ratings`` (one cell, one value),
        or more than :data:`MAX_CELLS` cells without ``negatives``.
    """
    if negatives is not None and not negatives >= 0:
        raise ValueError(f"negatives must be at least 0, got {negatives!r}")
    movies = np.flatnonzero(ratings.movie_counts() > 0)  # (M',)
    users = np.flatnonzero(ratings.user_counts() > 0)  # (U',)
    by_user = ratings.by_user()  # CSR: per user, the movie indices it rated, sorted
    cell = ratings.user.astype(np.int64) * ratings.num_movies + ratings.movie
    if len(np.unique(cell)) != len(ratings):
        raise ValueError(f"{ratings.source}: repeated (user, movie) pairs; a cell holds one "
                         "value (see data.duplicates)")
    if negatives is None and len(movies) * len(users) > MAX_CELLS:
        raise ValueError(f"{len(movies)} movies x {len(users)} users is "
                         f"{len(movies) * len(users):,} cells, more than {MAX_CELLS:,}; "
                         "draw zeros with negatives=")
    rng = np.random.default_rng(seed)
    movie_parts, user_parts, value_parts = [], [], []
    for j in users:
        rated = by_user.indices[by_user.indptr[j]:by_user.indptr[j + 1]]
        unrated = row_zeros(movies, rated, negatives, rng)
        movie_parts += [rated, unrated]
        value_parts += [np.ones(len(rated)), np.zeros(len(unrated))]
        user_parts.append(np.full(len(rated) + len(unrated), j, dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return Ratings(np.concatenate(movie_parts or [empty]).astype(np.int64),
                   np.concatenate(user_parts or [empty]),
                   np.concatenate(value_parts or [np.zeros(0)]),
                   ratings.movie_ids, ratings.user_ids,
                   source=f"implicit cells of {ratings.source}")


def row_zeros(movies: np.ndarray, rated: np.ndarray, negatives: float | None,
              rng: np.random.Generator) -> np.ndarray:
    """The 0 cells of one row of the grid: of ``movies`` (sorted), those not in ``rated``.

    Every one (``negatives`` None), or ``round(negatives * len(rated))`` of them drawn
    uniformly without replacement (all when there are fewer). Sorted. The rows of
    :func:`implicit_cells` and a fold-in into an implicit fit are built by it alike.
    """
    free = ~np.isin(movies, rated)
    if negatives is None:
        return movies[free]
    count = min(int(free.sum()), int(round(negatives * len(rated))))
    return _draw_unrated(movies, rated, count, rng)


def _draw_unrated(movies: np.ndarray, rated: np.ndarray, count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct movies of ``movies`` not in ``rated`` (sorted), uniformly.

    By rejection while most movies are unrated, so that a user costs about ``count``
    draws and not one test per movie of the catalogue.
    """
    if 2 * count > len(movies) - len(rated):  # a dense draw is as cheap
        return np.sort(rng.choice(movies[~np.isin(movies, rated)], count, replace=False))
    return np.sort(_draw_distinct(lambda n: rng.choice(movies, n), rated, count))


def _draw_distinct(draw, taken: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct values of ``draw(n)`` (n uniform draws) not in ``taken``.

    Rejection sampling, in the order drawn: uniform over the values left when most of
    them are left (the callers ensure that, or take a dense path).
    """
    chosen = np.zeros(0, dtype=np.int64)
    while len(chosen) < count:
        new = draw(2 * count)
        chosen = np.concatenate([chosen, new[~np.isin(new, taken)]])
        chosen = chosen[np.sort(np.unique(chosen, return_index=True)[1])][:count]
    return chosen


def held_out_cells(train: Ratings, test: Ratings, *, seed: int = 0) -> Ratings:
    """Cells to score an implicit model on: the held-out pairs and as many empty cells.

    The ``n`` pairs of ``test`` are 1; ``n`` cells drawn uniformly (without
    replacement) from the movies x users with a training rating, among the cells in
    neither ``train`` nor ``test``, are 0. Their AUC and log-loss say how well the model
    tells the held-out choices from cells never chosen.

    Parameters
    ----------
    train, test : Ratings
        On the same id maps; values are ignored.
    seed : int

    Returns
    -------
    Ratings
        ``2 n`` cells (fewer zeros only if the grid has fewer empty cells), test pairs
        first, on ``train``'s id maps.

    Raises
    ------
    ValueError
        When ``train`` and ``test`` are not on the same id maps.
    """
    if test.movie_ids != train.movie_ids or test.user_ids != train.user_ids:
        raise ValueError(f"{test.source} and {train.source} are not on the same id maps; "
                         "split one Ratings (or use with_ids) so that they share them")
    movies = np.flatnonzero(train.movie_counts() > 0)
    users = np.flatnonzero(train.user_counts() > 0)
    width = train.num_movies
    taken = np.union1d(train.user.astype(np.int64) * width + train.movie,
                       test.user.astype(np.int64) * width + test.movie)
    free_count = len(movies) * len(users) - np.count_nonzero(
        np.isin(taken // width, users) & np.isin(taken % width, movies))
    wanted = min(len(test), int(free_count))
    rng = np.random.default_rng(seed)
    # rejection is fast while most of the grid is free, as in rating data (a nearly
    # full grid would make it slow)
    chosen = _draw_distinct(lambda n: rng.choice(users, n) * width + rng.choice(movies, n),
                            taken, wanted)
    return Ratings(np.concatenate([test.movie, chosen % width]).astype(np.int64),
                   np.concatenate([test.user, chosen // width]).astype(np.int64),
                   np.concatenate([np.ones(len(test)), np.zeros(len(chosen))]),
                   train.movie_ids, train.user_ids,
                   source=f"held-out cells of {test.source}")
