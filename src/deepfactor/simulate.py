"""The built-in ``synthetic`` dataset: ratings drawn from the model's own prior, truth kept.

The sparsity pattern imitates MovieLens: movie popularity and user activity follow
power laws (a few blockbusters and heavy raters, a long tail), and the observed pairs
are drawn without replacement from the product of the two. The values are then drawn
by the rating site of :class:`~deepfactor.model.MatrixFactorization` itself, given
``z_movie``, ``z_user`` ~ N(0, I) and a decoder fixed as described in
:func:`simulate`; all of these are kept as the known truth.

Simplified: a real rating matrix is not missing at random (people rate what they
expect to like); this pattern is independent of the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from .batching import EncoderInputs, make_batch
from .data.ratings import IdIndex, Ratings
from .model import MatrixFactorization

__all__ = ["SyntheticTruth", "sample_pattern", "simulate"]

#: Power-law exponents of movie popularity and user activity (weight of rank k is
#: k^-exponent); chosen so the most rated movie has a few hundred of 100K ratings.
POPULARITY_EXPONENT = 0.9
ACTIVITY_EXPONENT = 0.6
#: Spread of the true eta over the pairs, and the Normal noise sd: a signal-to-noise
#: ratio of about 2, so that a fit has something to find.
SIGNAL_SD = 1.0
NOISE_SD = 0.5


@dataclass(frozen=True)
class SyntheticTruth:
    """The parameters that generated a synthetic dataset.

    Attributes
    ----------
    z_movie : Tensor, shape (num_movies, total_dim)
    z_user : Tensor, shape (num_users, total_dim)
    eta : Tensor, shape (num_ratings,), or (num_ratings, 2) with a scale per pair
        The decoder's output for each simulated pair.
    """

    z_movie: torch.Tensor
    z_user: torch.Tensor
    eta: torch.Tensor


def sample_pattern(num_movies: int, num_users: int, num_ratings: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (movie, user) index pairs with power-law margins; shapes ``(num_ratings,)``."""
    if num_ratings > num_movies * num_users:
        raise ValueError(f"cannot place {num_ratings} ratings in a {num_movies} x "
                         f"{num_users} matrix")
    p_movie = rng.permutation(np.arange(1, num_movies + 1) ** -POPULARITY_EXPONENT)
    p_user = rng.permutation(np.arange(1, num_users + 1) ** -ACTIVITY_EXPONENT)
    p_movie, p_user = p_movie / p_movie.sum(), p_user / p_user.sum()
    cells = np.empty(0, dtype=np.int64)
    while len(cells) < num_ratings:  # top up until enough distinct cells
        need = 2 * (num_ratings - len(cells)) + 16
        m = rng.choice(num_movies, size=need, p=p_movie)
        u = rng.choice(num_users, size=need, p=p_user)
        cells = np.unique(np.concatenate([cells, m * num_users + u]))
    cells = rng.choice(cells, size=num_ratings, replace=False)
    return cells // num_users, cells % num_users


def simulate(model: MatrixFactorization, num_ratings: int, seed: int,
             output_bias: float | None = None) -> tuple[Ratings, SyntheticTruth]:
    """Draw a dataset from ``model``'s prior at its plate sizes.

    The truth is the decoder at its seeded initialization with its last layer rescaled
    so that ``eta`` has standard deviation :data:`SIGNAL_SD` over the pairs (a random
    small network is otherwise nearly constant), its output bias set to
    ``output_bias``, and, for the Normal family, ``sigma = NOISE_SD``.

    Parameters
    ----------
    model : MatrixFactorization
        Modified in place to hold the truth.
    num_ratings : int
    seed : int

    Returns
    -------
    ratings : Ratings
        Raw ids are ``"1".."M"`` and ``"1".."U"``. For a Bernoulli likelihood with a
        threshold ``t``, a like is stored as ``t + 1`` and a dislike as ``t``.
    truth : SyntheticTruth
    """
    rng = np.random.default_rng(seed)
    movie, user = sample_pattern(model.num_movies, model.num_users, num_ratings, rng)
    pattern = Ratings(movie, user, np.zeros(num_ratings),
                      IdIndex(range(1, model.num_movies + 1)),
                      IdIndex(range(1, model.num_users + 1)), source="synthetic")
    batch = make_batch(pattern, None, np.arange(num_ratings),
                       EncoderInputs(pattern, pattern.rating, 0.0, 1.0))
    generator = torch.Generator().manual_seed(seed)
    z_movie = torch.randn(model.num_movies, model.total_dim, generator=generator)
    z_user = torch.randn(model.num_users, model.total_dim, generator=generator)

    with torch.no_grad():
        last = model.decoder.net[-1]
        eta = model.decoder(z_movie[movie], z_user[user])
        # row 0 of the last layer gives eta (mu, with a scale per pair)
        last.weight[0].mul_(SIGNAL_SD / float(model.likelihood.location(eta).std()))
        if output_bias is not None:
            model.decoder.output_bias.fill_(output_bias)
        if hasattr(model.likelihood, "sigma"):
            model.likelihood.sigma = torch.tensor(NOISE_SD)
        eta = model.decoder(z_movie[movie], z_user[user])

        # the rating site of the model itself, with the latents fixed to the truth
        conditioned = poutine.condition(model, data={"z_movie": z_movie[batch.movies],
                                                     "z_user": z_user[batch.users]})
        torch.manual_seed(seed)
        values = conditioned(batch).double().numpy()
    threshold = getattr(model.likelihood, "threshold", None)
    if threshold is not None:
        # Stored as ratings that the configured threshold maps back to the draws: a
        # like (1) just above it, a dislike (0) at it.
        values = np.where(values > 0.5, threshold + 1.0, threshold)
    ratings = Ratings(movie, user, values, pattern.movie_ids, pattern.user_ids,
                      source="synthetic", line=np.arange(1, num_ratings + 1))
    return ratings, SyntheticTruth(z_movie, z_user, eta)
