"""Minibatches of ratings, and the per-entity weights that keep the minibatch ELBO unbiased.

The full-data ELBO of the model is

.. math::

    \\mathcal{L} = \\sum_{(i,j) \\in \\Omega} E_q[\\log p(r_{ij} | z_i, z_j)]
        - \\sum_i KL(q(z_i) \\| p(z_i)) - \\sum_j KL(q(z_j) \\| p(z_j)),

with ``i`` over movies, ``j`` over users and ``Omega`` the ``N`` observed pairs.
A batch is a uniformly random subset ``b`` of ``B`` ratings (a slice of a random
permutation). Scaling its likelihood terms by ``N / B`` is unbiased for the first
sum. For the KL terms only the movies and users present in the batch are touched;
movie ``i``, with ``n_i`` ratings in total and ``c_i`` in the batch, gets weight

.. math::  w_i = c_i N / (B n_i),  \\qquad E[c_i] = B n_i / N \\Rightarrow E[w_i] = 1,

so every movie's KL is counted once in expectation however popular it is (the plain
plate scale ``M / |movies in b|`` over-counts rare movies and under-counts popular
ones). Users are treated the same way. The weights enter model and guide alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .data.ratings import Ratings, SparseRows
from .sparse import SparseMatrix

__all__ = ["SparseBag", "Batch", "EncoderInputs", "RatingBatcher", "make_batch"]


@dataclass(frozen=True, eq=False)
class SparseBag:
    """Observed ratings of a set of entities, as one sparse matrix for the encoders.

    For entity ``e`` with ``n_e`` ratings ``{(k, v_ek)}`` over ``K`` columns (the
    other entity type) the row of ``matrix`` holds two channels::

        column k      presence:  n_e^-p            (entity k was rated)
        column K + k  value:     v_ek * n_e^-p     (its standardized rating)

    with pooling power ``p`` (1: mean, 0.5: the 1/sqrt(n) of SVD++).

    Attributes
    ----------
    matrix : SparseMatrix, shape (num_entities, 2 K)
    counts : Tensor, shape (num_entities,)
        Number of ratings of each entity (0 for an entity with none).
    """

    matrix: SparseMatrix
    counts: torch.Tensor


class EncoderInputs:
    """What the encoders may read: the training ratings, by movie and by user.

    Only ratings passed here ever reach an encoder, so building it from training
    ratings alone is what keeps held-out ratings out of the fit.

    Parameters
    ----------
    ratings : Ratings
        The ratings the encoders read, with ``num_movies``/``num_users`` covering
        every entity that will be encoded.
    targets : ndarray, shape (len(ratings),)
        The likelihood's targets for those ratings.
    center, spread : float
        Standardization of the targets, computed from training data only.
    pooling_power : float
        ``p`` of :class:`SparseBag`.
    """

    def __init__(self, ratings: Ratings, targets: np.ndarray, center: float, spread: float,
                 pooling_power: float = 0.5):
        standardized = (np.asarray(targets, dtype=np.float64) - center) / spread
        view = Ratings(ratings.movie, ratings.user, standardized, ratings.movie_ids,
                       ratings.user_ids, ratings.source)
        self.by_movie: SparseRows = view.by_movie()
        self.by_user: SparseRows = view.by_user()
        self.center, self.spread = float(center), float(spread)
        self.pooling_power = float(pooling_power)
        self._all: dict[str, SparseBag] = {}

    def movie_bag(self, movies: np.ndarray | None = None) -> SparseBag:
        """The bag of ``movies`` (indices, shape ``(num_selected,)``; None: all, cached)."""
        return self._bag("movie", self.by_movie, self.by_user.num_rows, movies)

    def user_bag(self, users: np.ndarray | None = None) -> SparseBag:
        """The bag of ``users`` (indices, shape ``(num_selected,)``; None: all, cached)."""
        return self._bag("user", self.by_user, self.by_movie.num_rows, users)

    def _bag(self, kind: str, rows: SparseRows, num_cols: int, selected) -> SparseBag:
        if selected is None:
            if kind not in self._all:
                self._all[kind] = self._build(rows, np.arange(rows.num_rows), num_cols)
            return self._all[kind]
        return self._build(rows, np.asarray(selected), num_cols)

    def _build(self, rows: SparseRows, selected: np.ndarray, num_cols: int) -> SparseBag:
        indices, values, offsets = rows.gather(selected)
        counts = rows.counts[selected]
        weight = np.repeat(np.maximum(counts, 1) ** -self.pooling_power, counts)  # (nnz,)
        # interleave the two channels of each entry, keeping each row's entries together
        both_indices = np.stack([indices, indices + num_cols], axis=1).reshape(-1)
        both_values = np.stack([weight, values * weight], axis=1).reshape(-1)
        indptr = np.concatenate([2 * offsets, [2 * len(indices)]])
        matrix = SparseMatrix.from_csr_arrays(indptr, both_indices, both_values, 2 * num_cols)
        return SparseBag(matrix, torch.as_tensor(counts, dtype=torch.get_default_dtype()))


@dataclass(frozen=True)
class Batch:
    """One minibatch: ratings, the entities they touch, their weights and encoder inputs.

    Attributes
    ----------
    rating_index : LongTensor, shape (B,)
        Positions of the batch's ratings among the ``num_ratings`` the ELBO covers.
    num_ratings : int
        ``N``, the number of ratings the full-data ELBO sums over.
    movies, users : LongTensor, shapes (num_batch_movies,), (num_batch_users,)
        Global indices of the distinct movies and users of the batch.
    movie_local, user_local : LongTensor, shape (B,)
        Each rating's movie as a position in ``movies`` (and user in ``users``).
    target : Tensor, shape (B,), or None
        Observed values; None asks the model to sample them.
    movie_scale, user_scale : Tensor, shapes (num_batch_movies,), (num_batch_users,)
        The factor that, times the plate's own ``num_movies / num_batch_movies``,
        gives each entity its weight ``w_i`` (see the module docstring), times the
        KL annealing factor.
    movie_bag, user_bag : SparseBag
        The encoders' inputs: either exactly ``movies`` (``users``), or every entity
        (the cached bag, cheaper when a batch touches most of them).
    movie_rows, user_rows : LongTensor, shapes (num_batch_movies,), (num_batch_users,)
        Row of the bag that belongs to each of ``movies`` (``users``).
    """

    rating_index: torch.Tensor
    num_ratings: int
    movies: torch.Tensor
    users: torch.Tensor
    movie_local: torch.Tensor
    user_local: torch.Tensor
    target: torch.Tensor | None
    movie_scale: torch.Tensor
    user_scale: torch.Tensor
    movie_bag: SparseBag
    user_bag: SparseBag
    movie_rows: torch.Tensor
    user_rows: torch.Tensor

    def __len__(self) -> int:
        return len(self.rating_index)

    def without_target(self) -> Batch:
        """The same batch with ``target=None`` (for sampling from the model)."""
        return Batch(**{**self.__dict__, "target": None})


def _entity_weights(local: np.ndarray, entities: np.ndarray, totals: np.ndarray,
                    num_entities: int, batch_size: int, num_ratings: int) -> np.ndarray:
    """``w_i * len(entities) / num_entities`` for each batch entity; see module docstring."""
    in_batch = np.bincount(local, minlength=len(entities))
    weight = in_batch * num_ratings / (batch_size * totals[entities])
    return weight * len(entities) / num_entities  # cancels the plate's own scale


def make_batch(
    ratings: Ratings,
    targets: np.ndarray | None,
    positions: np.ndarray,
    inputs: EncoderInputs,
    *,
    kl_weight: float = 1.0,
    totals: tuple[np.ndarray, np.ndarray] | None = None,
) -> Batch:
    """The batch of ``ratings`` at ``positions``, weighted for the ELBO over all of ``ratings``.

    Parameters
    ----------
    ratings : Ratings
        The ``N`` ratings the ELBO covers.
    targets : ndarray, shape (N,), or None
    positions : ndarray of int, shape (B,)
    inputs : EncoderInputs
    kl_weight : float
        Annealing factor on the latent terms (1 gives the true ELBO).
    totals : (movie_counts, user_counts), optional
        Ratings per movie and per user in ``ratings``; computed when omitted.
    """
    movie_counts, user_counts = totals or (ratings.movie_counts(), ratings.user_counts())
    movie_of, user_of = ratings.movie[positions], ratings.user[positions]
    movies, movie_local = np.unique(movie_of, return_inverse=True)
    users, user_local = np.unique(user_of, return_inverse=True)
    n, b = len(ratings), len(positions)
    movie_scale = _entity_weights(movie_local, movies, movie_counts, ratings.num_movies, b, n)
    user_scale = _entity_weights(user_local, users, user_counts, ratings.num_users, b, n)
    dtype = torch.get_default_dtype()
    return Batch(
        rating_index=torch.from_numpy(np.asarray(positions, dtype=np.int64)),
        num_ratings=n,
        movies=torch.from_numpy(movies),
        users=torch.from_numpy(users),
        movie_local=torch.from_numpy(movie_local.astype(np.int64)),
        user_local=torch.from_numpy(user_local.astype(np.int64)),
        target=None if targets is None else torch.as_tensor(targets[positions], dtype=dtype),
        movie_scale=torch.as_tensor(movie_scale * kl_weight, dtype=dtype),
        user_scale=torch.as_tensor(user_scale * kl_weight, dtype=dtype),
        **_bag_fields("movie", inputs.movie_bag, movies, ratings.num_movies),
        **_bag_fields("user", inputs.user_bag, users, ratings.num_users),
    )


#: Above this share of all entities, a batch reads the cached bag of every entity
#: instead of building its own: encoding a few extra rows costs less than the build.
FULL_BAG_SHARE = 0.5


def _bag_fields(kind: str, bag_of, selected: np.ndarray, num_entities: int) -> dict:
    if len(selected) >= FULL_BAG_SHARE * num_entities:
        return {f"{kind}_bag": bag_of(None), f"{kind}_rows": torch.from_numpy(selected)}
    return {f"{kind}_bag": bag_of(selected), f"{kind}_rows": torch.arange(len(selected))}


class RatingBatcher:
    """Epochs of minibatches: slices of a fresh random permutation of the ratings.

    Each slice is marginally a uniform random subset of its size, which is what the
    weights of :func:`make_batch` assume; the last, shorter slice uses its own size.

    Parameters
    ----------
    ratings : Ratings
        The ratings the ELBO covers (the fit part of the training split).
    targets : ndarray, shape (len(ratings),)
    inputs : EncoderInputs
    batch_size : int
    generator : numpy.random.Generator
        Draws the permutations (seeded by the caller, for reproducibility).
    """

    def __init__(self, ratings: Ratings, targets: np.ndarray, inputs: EncoderInputs,
                 batch_size: int, generator: np.random.Generator):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.ratings, self.targets, self.inputs = ratings, targets, inputs
        self.batch_size = min(batch_size, len(ratings))
        self.generator = generator
        self._totals = (ratings.movie_counts(), ratings.user_counts())

    def __len__(self) -> int:
        return -(-len(self.ratings) // self.batch_size)

    def permutation(self) -> np.ndarray:
        """A fresh random order of the ratings for one epoch; shape ``(num_ratings,)``."""
        return self.generator.permutation(len(self.ratings))

    def epoch(self, kl_weight: float = 1.0) -> Iterator[Batch]:
        order = self.permutation()
        for start in range(0, len(order), self.batch_size):
            yield self.batch(order[start:start + self.batch_size], kl_weight)

    def batch(self, positions: np.ndarray, kl_weight: float = 1.0) -> Batch:
        return make_batch(self.ratings, self.targets, positions, self.inputs,
                          kl_weight=kl_weight, totals=self._totals)

    def full(self) -> Batch:
        """All ratings in one batch: every weight is exactly 1."""
        return self.batch(np.arange(len(self.ratings)))
