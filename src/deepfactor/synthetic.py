"""MovieLens-like synthetic ratings at any size, drawn from the model with a known truth.

The built-in ``synthetic`` dataset (:mod:`deepfactor.simulate`) imitates MovieLens 100K;
this module scales the same idea to tens of millions of ratings for the scale tests and
``analysis/benchmark_scaling.py``, in time and memory linear in the number of ratings
(no dense movies x users array, no Python loop over entities or ratings).

Pattern
    * User activity: user of activity rank ``k`` rates
      ``n_k = min_per_user + (N - min_per_user U) w_k / sum w`` movies, with
      Zipf-Mandelbrot weights ``w_k = (k + c_u U)^-a`` (MovieLens keeps users with at
      least 20 ratings), at most half of all movies.
    * Movie popularity: each of a user's movies is drawn with probability
      ``p_k ∝ (k + c_m M)^-b`` over popularity ranks ``k``, without repeating a movie
      for the same user. Repeats are redrawn from ``p`` for a few rounds, then
      uniformly: a very heavy user can exhaust the popular head, and uniform redraws
      always finish (at least half of the movies are left to such a user). This
      flattens the tail of the heaviest users only.
    * Ranks are assigned to entity indices by a random permutation.

    Measured with seed 0 at 25M ratings (62,000 movies, 162,000 users): users have 41 to
    10,836 ratings, median 63; the most popular movie has 48,962, the median movie 45
    (MovieLens 25M, figures recalled from its documentation and not checked here, as no
    copy is at hand: users from 20 to about 32,000, median about 71; the top movie about
    81,000, the median about 6). At 100K, users have 34 to 841 ratings, median 57; movie
    median 27, top 943 (MovieLens 100K's u.data, counted: users 20 to 737, median 65;
    movie median 27, top 583). The least active users get more than MovieLens's 20, and
    the tail of rarely rated movies is thinner.

Values
    ``z_movie``, ``z_user ~ N(0, I)``; ``eta`` from the given model's decoder with its
    last layer rescaled so that ``eta`` has sd :data:`~deepfactor.simulate.SIGNAL_SD`
    (measured on a sample of pairs), the output bias set, the Normal noise sd set to
    :data:`~deepfactor.simulate.NOISE_SD`; the rating site's distribution is then
    sampled in chunks. All of it is returned as the truth.

Simplified: the pattern is independent of the values (real ratings are not missing at
random), and the values are the model's (continuous for the Normal family), not stars.
"""

from __future__ import annotations

import numpy as np
import torch

from .data.ratings import IdIndex, Ratings
from .model import MatrixFactorization
from .simulate import NOISE_SD, SIGNAL_SD, SyntheticTruth

__all__ = ["MOVIELENS_SHAPES", "movielens_shape", "sample_movielens_pattern",
           "simulate_movielens"]

#: (num_movies, num_users) of MovieLens releases near these sizes (5M: between 10M's
#: and 20M's); :func:`movielens_shape` interpolates between them.
MOVIELENS_SHAPES = {100_000: (1_682, 943), 1_000_000: (3_706, 6_040),
                    5_000_000: (15_000, 35_000), 25_000_000: (62_000, 162_000)}
#: Zipf-Mandelbrot exponents and offsets (as shares of the entity count), chosen so the
#: 25M pattern's head and median resemble MovieLens 25M (module docstring).
ACTIVITY_EXPONENT, ACTIVITY_OFFSET = 1.0, 0.002
POPULARITY_EXPONENT, POPULARITY_OFFSET = 1.9, 0.004
MIN_PER_USER = 20
#: Rounds of redrawing repeats from the popularity law before drawing them uniformly.
POPULAR_ROUNDS = 6
#: Pairs decoded at once when drawing values.
CHUNK = 1 << 20


def movielens_shape(num_ratings: int) -> tuple[int, int]:
    """(num_movies, num_users) for ``num_ratings``, log-log interpolated in the table."""
    sizes = np.array(sorted(MOVIELENS_SHAPES), dtype=float)
    shapes = np.log(np.array([MOVIELENS_SHAPES[int(s)] for s in sizes], dtype=float))
    x = np.log(num_ratings)
    movies, users = (np.exp(np.interp(x, np.log(sizes), shapes[:, i])) for i in (0, 1))
    if num_ratings < sizes[0]:  # below the table: 100K's ratings per user, fewer movies
        scale = num_ratings / sizes[0]
        movies, users = (MOVIELENS_SHAPES[100_000][0] * np.sqrt(scale),
                         MOVIELENS_SHAPES[100_000][1] * scale)
    if num_ratings > sizes[-1]:
        scale = np.sqrt(num_ratings / sizes[-1])
        movies, users = (v * scale for v in MOVIELENS_SHAPES[25_000_000])
    return max(int(round(movies)), 2), max(int(round(users)), 1)


def _zipf(num: int, exponent: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ``∝ (rank + offset num)^-exponent``, ranks randomly permuted; (num,)."""
    weight = (np.arange(1, num + 1) + offset * num) ** -exponent
    return rng.permutation(weight / weight.sum())


def _user_counts(num_ratings: int, num_movies: int, num_users: int, min_per_user: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Ratings per user, shape (num_users,): >= min_per_user, <= num_movies // 2, sum N."""
    cap = max(num_movies // 2, min(min_per_user, num_movies))
    if min_per_user * num_users > num_ratings or cap * num_users < num_ratings:
        raise ValueError(
            f"{num_ratings} ratings do not fit {num_users} users with {min_per_user} to "
            f"{cap} ratings each (half of {num_movies} movies at most)")
    weight = _zipf(num_users, ACTIVITY_EXPONENT, ACTIVITY_OFFSET, rng)
    counts = min_per_user + np.floor((num_ratings - min_per_user * num_users) * weight)
    counts = np.minimum(counts.astype(np.int64), cap)
    while (deficit := num_ratings - int(counts.sum())) > 0:  # floors and the cap
        room = counts < cap
        extra = rng.choice(np.flatnonzero(room), size=deficit,
                           p=weight[room] / weight[room].sum())
        counts = np.minimum(counts + np.bincount(extra, minlength=num_users), cap)
    return counts


def sample_movielens_pattern(num_ratings: int, num_movies: int, num_users: int,
                             rng: np.random.Generator, min_per_user: int = MIN_PER_USER
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (movie, user) pairs with the module's margins, sorted by user then movie.

    Returns
    -------
    movie, user : ndarray of int64, shape (num_ratings,)
    """
    counts = _user_counts(num_ratings, num_movies, num_users, min_per_user, rng)
    popularity_cdf = np.cumsum(_zipf(num_movies, POPULARITY_EXPONENT, POPULARITY_OFFSET, rng))

    def draw(size: int, uniform: bool) -> np.ndarray:
        if uniform:
            return rng.integers(0, num_movies, size=size)
        found = np.searchsorted(popularity_cdf, rng.random(size) * popularity_cdf[-1],
                                side="right")
        return np.minimum(found, num_movies - 1)

    user = np.repeat(np.arange(num_users, dtype=np.int64), counts)  # (N,)
    keys = np.unique(user * num_movies + draw(num_ratings, uniform=False))  # sorted pairs
    # users still owed a rating: one entry per missing pair
    owed = np.repeat(np.arange(num_users), counts - np.bincount(keys // num_movies,
                                                                minlength=num_users))
    rounds = 0
    while len(owed):
        rounds += 1
        candidate = owed * num_movies + draw(len(owed), uniform=rounds > POPULAR_ROUNDS)
        fresh, first = np.unique(candidate, return_index=True)
        at = np.searchsorted(keys, fresh)
        new = fresh[keys[np.minimum(at, len(keys) - 1)] != fresh]  # not rated already
        keys = np.insert(keys, np.searchsorted(keys, new), new)
        accepted = np.zeros(len(owed), dtype=bool)
        accepted[first[np.isin(fresh, new, assume_unique=True)]] = True
        owed = owed[~accepted]
    return keys % num_movies, keys // num_movies


def simulate_movielens(model: MatrixFactorization, num_ratings: int, seed: int,
                       output_bias: float | None = None,
                       min_per_user: int = MIN_PER_USER) -> tuple[Ratings, SyntheticTruth]:
    """MovieLens-like ratings from ``model``'s prior at its plate sizes.

    Parameters
    ----------
    model : MatrixFactorization
        Gives the plate sizes (use :func:`movielens_shape`) and the decoder; modified in
        place to hold the truth.
    num_ratings : int
    seed : int
        Same seed, same ratings and truth.
    output_bias : float, optional
        The truth's output bias (for example 3.5 for star-like values).
    min_per_user : int

    Returns
    -------
    ratings : Ratings
        Raw ids ``"1".."M"`` and ``"1".."U"``; ``line`` numbers the ratings.
    truth : SyntheticTruth
    """
    rng = np.random.default_rng(seed)
    movie, user = sample_movielens_pattern(num_ratings, model.num_movies, model.num_users,
                                           rng, min_per_user)
    generator = torch.Generator().manual_seed(seed)
    z_movie = torch.randn(model.num_movies, model.total_dim, generator=generator)
    z_user = torch.randn(model.num_users, model.total_dim, generator=generator)

    eta = torch.empty(num_ratings, *([2] if model.likelihood.pair_scale else []))
    values = np.empty(num_ratings)
    with torch.no_grad():
        probe = rng.choice(num_ratings, size=min(num_ratings, 100_000), replace=False)
        last = model.decoder.net[-1]
        probe_eta = model.decoder(z_movie[movie[probe]], z_user[user[probe]])
        # row 0 of the last layer gives eta (mu, with a scale per pair)
        last.weight[0].mul_(SIGNAL_SD / float(model.likelihood.location(probe_eta).std()))
        if output_bias is not None:
            model.decoder.output_bias.fill_(output_bias)
        if hasattr(model.likelihood, "sigma"):
            model.likelihood.sigma = torch.tensor(NOISE_SD)
        for start in range(0, num_ratings, CHUNK):
            part = slice(start, start + CHUNK)
            eta[part] = model.decoder(z_movie[movie[part]], z_user[user[part]])
            noise = model.likelihood.distribution(eta[part])
            with torch.random.fork_rng():
                torch.manual_seed(seed + start)
                values[part] = noise.sample().double().numpy()
    threshold = getattr(model.likelihood, "threshold", None)
    if threshold is not None:  # stored so that the threshold maps them back (simulate)
        values = np.where(values > 0.5, threshold + 1.0, threshold)
    ratings = Ratings(movie, user, values, IdIndex(range(1, model.num_movies + 1)),
                      IdIndex(range(1, model.num_users + 1)), source="synthetic",
                      line=np.arange(1, num_ratings + 1))
    return ratings, SyntheticTruth(z_movie, z_user, eta)
