"""Minibatches of ratings, and the per-entity weights that keep the minibatch ELBO unbiased.

The full-data ELBO of the model is

.. math::

    \\mathcal{L} = \\sum_{(i,j) \\in \\Omega} E_q[\\log p(r_{ij} | z_i, z_j)]
        - \\sum_i KL(q(z_i) \\| p(z_i)) - \\sum_j KL(q(z_j) \\| p(z_j)),

with ``i`` over movies, ``j`` over users and ``Omega`` the ``N`` observed pairs.
A batch ``b`` is ``B`` of the ratings, and an epoch's batches partition them
(:mod:`deepfactor.order` says which ratings share one). Its likelihood terms are
scaled by ``N / B``. For the KL terms only the movies and users present in the
batch are touched; movie ``i``, with ``n_i`` ratings in total and ``c_i`` in the
batch, gets weight

.. math::  w_i = c_i N / (B n_i),  \\qquad \\sum_{b \\in epoch} c_i = n_i
    \\Rightarrow \\sum_{b \\in epoch} \\frac{B_b}{N} w_i = 1

(``B_b``: the size of batch ``b``, ``B`` but for a last, shorter one), so over an epoch
every movie's KL is counted once however popular it is. For a uniformly random batch,
``E[c_i] = B n_i / N`` gives ``E[w_i] = 1`` at every step; the blocked order keeps each
step unbiased too (:mod:`deepfactor.order` says how). The plain
plate scale ``M / |movies in b|`` would over-count rare movies and under-count
popular ones. Users are treated the same way. The weights enter model and guide alike.

Bounded encoder inputs. With ``max_inputs = K > 0`` a training batch encodes each of
its entities from at most ``K`` of its ratings, drawn afresh per batch without
replacement (:mod:`deepfactor.subsample`) and pooled with the factor ``n / K`` that
makes the first-layer input unbiased for the full one (see :class:`SparseBag`). A
step then reads ``O(B + (entities in the batch) x K)`` entries, however many ratings
the popular entities have; the bag's columns are renumbered to the ones it touches,
so the first layer's gradient has one row per touched column, not per column. What
objective this optimizes is said in :mod:`deepfactor.guide`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .data.ratings import Ratings, SparseRows
from .order import BATCH_ORDERS, BlockedOrder
from .sketch import DenseRows, Sketch
from .sparse import SparseMatrix
from .subsample import concat_ranges, sample_rows

__all__ = ["SparseBag", "Batch", "EncoderInputs", "RatingBatcher", "make_batch",
           "renumber"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SparseBag:
    """Observed ratings of a set of entities, as one sparse matrix for the encoders.

    For entity ``e`` with ``n_e`` ratings ``{(k, v_ek)}`` over ``K`` columns (the
    other entity type), of which the set ``S_e`` is read (all of them, or a random
    ``m_e = |S_e|`` of them), the row of ``matrix`` holds two channels::

        column k      presence:  n_e^-p * n_e / m_e            (k in S_e)
        column K + k  value:     v_ek * n_e^-p * n_e / m_e

    with pooling power ``p`` (1: mean, 0.5: the 1/sqrt(n) of SVD++). For a uniform
    random ``S_e`` of size ``m_e`` each entry is read with probability ``m_e / n_e``,
    so the expected row is the full row: ``matrix @ W`` is unbiased for the input
    read from every rating.

    Only the columns the bag touches are kept: ``matrix`` column ``c`` stands for
    the encoder weight row ``columns[c]`` (both channels renumbered the same way).

    Attributes
    ----------
    matrix : SparseMatrix or DenseRows, shape (num_entities, num_touched)
        (:class:`~deepfactor.sketch.DenseRows` for sketched inputs: ``2 d`` columns.)
    columns : LongTensor, shape (num_touched,)
        Row of the encoder's first-layer weight (``0 .. 2K-1``) of each column.
    counts : Tensor, shape (num_entities,)
        ``n_e``, the number of ratings of each entity (0 for an entity with none),
        whether or not all were read.
    dense_grad : bool
        Ask the encoder for a dense first-layer gradient (a bag that touches about
        every column anyway, read at every step).
    """

    matrix: SparseMatrix
    columns: torch.Tensor
    counts: torch.Tensor
    dense_grad: bool = False

    @property
    def nnz(self) -> int:
        """Entries of ``matrix`` (both channels): what a step's first layer reads."""
        return self.matrix.nnz


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
    max_inputs : int
        ``K``: a bag built with a random generator reads at most ``K`` random
        ratings of each entity (0: all). Bags built without one read all.
    sketch : Sketch, optional
        Give the encoders each entity's sketch (:mod:`deepfactor.sketch`) instead of
        its sparse row: computed once for every entity, from all of its ratings
        (``max_inputs`` is then unused).
    """

    def __init__(self, ratings: Ratings, targets: np.ndarray, center: float, spread: float,
                 pooling_power: float = 0.5, max_inputs: int = 0,
                 sketch: Sketch | None = None):
        if max_inputs < 0:
            raise ValueError(f"max_inputs must be 0 (all) or positive, got {max_inputs}")
        standardized = (np.asarray(targets, dtype=np.float64) - center) / spread
        view = Ratings(ratings.movie, ratings.user, standardized, ratings.movie_ids,
                       ratings.user_ids, ratings.source)
        self.by_movie: SparseRows = view.by_movie()
        self.by_user: SparseRows = view.by_user()
        self.center, self.spread = float(center), float(spread)
        self.pooling_power = float(pooling_power)
        self.max_inputs = int(max_inputs)
        self._scratch: dict[int, np.ndarray] = {}
        self._cached: dict[str, SparseBag] = {}
        self.sketch: Sketch | None = None
        if sketch is not None:
            self._read_through(sketch)

    def with_sketch(self, sketch: Sketch) -> EncoderInputs:
        """The same inputs, read through ``sketch`` (the rows are shared, not copied)."""
        other = copy.copy(self)
        other._scratch, other._cached = {}, {}
        other._read_through(sketch)
        return other

    def _read_through(self, sketch: Sketch) -> None:
        self.sketch = sketch
        self._sketched: dict[str, torch.Tensor] = {}  # kind -> (num_entities, 2 d)

    def movie_bag(self, movies: np.ndarray, generator: np.random.Generator | None = None,
                  drawn_for: np.ndarray | None = None) -> SparseBag:
        """The bag of ``movies`` (indices, shape ``(num_selected,)``).

        With ``generator`` (training), each movie is read from at most ``max_inputs``
        random ratings; without it, from all of them (prediction, checks, fold-in).
        ``drawn_for`` (sorted, a superset of the sorted ``movies``): draw the subsets
        of all of those movies, exactly as a bag of ``drawn_for`` would, and keep the
        rows of ``movies``. Data-parallel ranks do so for the global batch, so that a
        movie in two shards is read from the same ratings on both, and each rank's
        generator advances as one process's does.
        """
        if self.sketch is not None:
            return self._sketch_bag("movie", self.by_movie, np.asarray(movies))
        return self._build(self.by_movie, np.asarray(movies), self.by_user.num_rows,
                           generator, drawn_for)

    def user_bag(self, users: np.ndarray, generator: np.random.Generator | None = None,
                 drawn_for: np.ndarray | None = None) -> SparseBag:
        """The bag of ``users``; see :meth:`movie_bag`."""
        if self.sketch is not None:
            return self._sketch_bag("user", self.by_user, np.asarray(users))
        return self._build(self.by_user, np.asarray(users), self.by_movie.num_rows,
                           generator, drawn_for)

    def every_movie(self) -> SparseBag:
        """The bag of every movie from all its ratings (built once; dense gradient)."""
        return self._every("movie", self.by_movie, self.by_user.num_rows)

    def every_user(self) -> SparseBag:
        """The bag of every user from all its ratings (built once; dense gradient)."""
        return self._every("user", self.by_user, self.by_movie.num_rows)

    def _every(self, kind: str, rows: SparseRows, num_cols: int) -> SparseBag:
        if kind not in self._cached:
            bag = (self._sketch_bag(kind, rows, None) if self.sketch is not None else
                   self._build(rows, np.arange(rows.num_rows), num_cols, None))
            self._cached[kind] = SparseBag(bag.matrix, bag.columns, bag.counts,
                                           dense_grad=True)
        return self._cached[kind]

    def _sketch_bag(self, kind: str, rows: SparseRows, selected: np.ndarray | None
                    ) -> SparseBag:
        """The sketches of ``selected`` (None: every entity); a small dense weight."""
        if kind not in self._sketched:  # once per kind, on first use (fold-in needs one)
            basis = self.sketch.movie if kind == "movie" else self.sketch.user
            self._sketched[kind] = basis.project(rows, self.pooling_power)
        features, counts = self._sketched[kind], rows.counts
        if selected is not None:
            features, counts = features[torch.from_numpy(selected)], counts[selected]
        return SparseBag(DenseRows(features), torch.arange(features.shape[1]),
                         torch.as_tensor(counts, dtype=torch.get_default_dtype()),
                         dense_grad=True)

    def _renumber(self, indices: np.ndarray, num_cols: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ``indices`` (in no particular order) and each entry's position among
        them: :func:`renumber` with a scratch array over the columns, allocated once."""
        scratch = self._scratch.get(num_cols)
        if scratch is None:
            scratch = self._scratch[num_cols] = np.zeros(num_cols, dtype=np.int64)
        return renumber(indices, scratch, sort=False)

    def _build(self, rows: SparseRows, selected: np.ndarray, num_cols: int,
               generator: np.random.Generator | None,
               drawn_for: np.ndarray | None = None) -> SparseBag:
        counts = rows.counts[selected]
        if generator is not None and self.max_inputs:
            drawn = selected if drawn_for is None else drawn_for
            flat, taken = sample_rows(rows.indptr[drawn], rows.counts[drawn],
                                      self.max_inputs, generator)
            if drawn_for is not None:  # keep the rows of ``selected``
                where = np.searchsorted(drawn_for, selected)  # (num_selected,)
                offsets = np.cumsum(taken) - taken
                flat = flat[concat_ranges(offsets[where], taken[where])]
                taken = taken[where]
        else:
            flat, taken = concat_ranges(rows.indptr[selected], counts), counts
        indices, values = rows.indices[flat], rows.values[flat]  # (nnz,) each
        pooled = np.maximum(counts, 1) ** -self.pooling_power * counts / np.maximum(taken, 1)
        weight = np.repeat(pooled, taken)  # (nnz,)

        touched, local = self._renumber(indices, num_cols)  # rows of W the step needs
        width = len(touched)
        # interleave the two channels of each entry, keeping each row's entries together
        both_indices = np.stack([local, local + width], axis=1).reshape(-1)
        both_values = np.stack([weight, values * weight], axis=1).reshape(-1)
        indptr = np.concatenate([[0], 2 * np.cumsum(taken)])
        matrix = SparseMatrix.from_csr_arrays(indptr, both_indices, both_values, 2 * width)
        columns = torch.from_numpy(np.concatenate([touched, touched + num_cols]))
        return SparseBag(matrix, columns,
                         torch.as_tensor(counts, dtype=torch.get_default_dtype()))


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
        The encoders' inputs: one row per entity of ``movies`` (``users``), in order,
        or, on a small dataset (:data:`SMALL_DATA_FACTOR`), every entity.
    movie_rows, user_rows : LongTensor or None
        With a bag of every entity, the row of each of ``movies`` (``users``) in it.
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
    movie_rows: torch.Tensor | None = None
    user_rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rating_index)

    def without_target(self) -> Batch:
        """The same batch with ``target=None`` (for sampling from the model)."""
        return Batch(**{**self.__dict__, "target": None})


def renumber(ids: np.ndarray, scratch: np.ndarray, sort: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``ids`` and each entry's position among them, without sorting ``ids``.

    With ``sort``, the same as ``np.unique(ids, return_inverse=True)`` for ids in
    ``[0, len(scratch))``: distinct ids ascending, shape ``(E,)``, and positions, shape
    ``(len(ids),)``, in ``O(len(ids) + E log E)`` instead of a sort of ``ids``; without
    it the distinct ids come in no particular order, in ``O(len(ids))``. ``scratch``
    (int64, one slot per possible id, contents ignored) is written at ``ids`` only and
    only slots written in this call are read, so one array serves every call; allocating
    it per call costs page faults that dominate when the ids range over millions. Known
    shortcoming: over ~10 million slots the scattered writes miss the cache and a small
    batch is faster through ``np.unique`` (1.78 against 0.94 ms for 10,000 ids); up to
    MovieLens 25M's 162,000 users it is the faster by far (README, Large datasets).
    """
    ids = np.asarray(ids)
    entry = np.arange(len(ids))
    scratch[ids] = entry  # one entry per id survives, whichever numpy keeps
    distinct = ids[scratch[ids] == entry]  # (E,): that entry's id
    if sort:
        distinct = np.sort(distinct)
    scratch[distinct] = np.arange(len(distinct))
    return distinct, scratch[ids]


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
    generator: np.random.Generator | None = None,
    every_entity: bool = False,
    drawn_for: tuple[np.ndarray, np.ndarray] | None = None,
    scratch: tuple[np.ndarray, np.ndarray] | None = None,
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
    generator : numpy.random.Generator, optional
        Draws the bounded samples of the encoders' inputs (``inputs.max_inputs``);
        without it the bags read every rating of the batch's entities.
    every_entity : bool
        Read the cached bags of every entity, all ratings, instead (small data only).
    drawn_for : (movies, users), optional
        Sorted supersets of the batch's movies and users (a data-parallel rank's global
        batch) whose input subsets are drawn; see :meth:`EncoderInputs.movie_bag`.
    scratch : (ndarray, ndarray), optional
        int64 arrays of ``num_movies`` and ``num_users`` slots for :func:`renumber`,
        reused across batches (a :class:`RatingBatcher` keeps them); without them the
        batch's distinct entities are found by sorting (``np.unique``), same result.
    """
    movie_counts, user_counts = totals or (ratings.movie_counts(), ratings.user_counts())
    movies_drawn, users_drawn = drawn_for if drawn_for is not None else (None, None)
    movie_of, user_of = ratings.movie[positions], ratings.user[positions]
    if scratch is None:  # a one-off batch: sorting it costs no more than a scratch array
        movies, movie_local = np.unique(movie_of, return_inverse=True)
        users, user_local = np.unique(user_of, return_inverse=True)
    else:
        movies, movie_local = renumber(movie_of, scratch[0])
        users, user_local = renumber(user_of, scratch[1])
    n, b = len(ratings), len(positions)
    movie_scale = _entity_weights(movie_local, movies, movie_counts, ratings.num_movies, b, n)
    user_scale = _entity_weights(user_local, users, user_counts, ratings.num_users, b, n)
    dtype = torch.get_default_dtype()
    return Batch(
        rating_index=torch.from_numpy(np.asarray(positions, dtype=np.int64)),
        num_ratings=n,
        movies=torch.from_numpy(movies),
        users=torch.from_numpy(users),
        movie_local=torch.from_numpy(np.asarray(movie_local, dtype=np.int64)),
        user_local=torch.from_numpy(np.asarray(user_local, dtype=np.int64)),
        target=None if targets is None else torch.as_tensor(targets[positions], dtype=dtype),
        movie_scale=torch.as_tensor(movie_scale * kl_weight, dtype=dtype),
        user_scale=torch.as_tensor(user_scale * kl_weight, dtype=dtype),
        **(_every_entity_fields(inputs, movies, users) if every_entity else
           {"movie_bag": inputs.movie_bag(movies, generator, movies_drawn),
            "user_bag": inputs.user_bag(users, generator, users_drawn)}),
    )


#: A dataset of at most this many batches' worth of ratings is encoded whole at each
#: step: every entity from all of its ratings, from a bag built once, with a dense
#: first-layer gradient. That costs at most ``SMALL_DATA_FACTOR x B`` entries per step
#: (so never ``O(all ratings)`` at scale) and on MovieLens 100K at batch 10000 it is the
#: cheaper path: no per-step build or sampling, fused Adam (the u1 fit took 64 s this way
#: against 139 s with per-batch sampled bags, one thread, similar load). The guide then
#: reads everything and ``guide.max_inputs`` has no effect.
SMALL_DATA_FACTOR = 16


def _every_entity_fields(inputs: EncoderInputs, movies: np.ndarray, users: np.ndarray):
    return {"movie_bag": inputs.every_movie(), "user_bag": inputs.every_user(),
            "movie_rows": torch.from_numpy(movies), "user_rows": torch.from_numpy(users)}


class RatingBatcher:
    """Epochs of minibatches: slices of a fresh order of the ratings each epoch.

    The order (:mod:`deepfactor.order`) is a uniformly random permutation, or blocks of
    a movie group by a run of shuffled users; either way an epoch's batches partition
    the ratings, so their estimators (:func:`make_batch`), weighted by their sizes,
    average to the full-data ELBO, and each is unbiased for it. The last, shorter slice
    uses its own size.

    Parameters
    ----------
    ratings : Ratings
        The ratings the ELBO covers (the fit part of the training split).
    targets : ndarray, shape (len(ratings),)
    inputs : EncoderInputs
    batch_size : int
    generator : numpy.random.Generator
        Draws the permutations (seeded by the caller, for reproducibility). The
        encoders' input samples come from a second generator, ``input_generator``,
        spawned from its seed, so that the permutations do not depend on how many
        samples were drawn: data-parallel ranks, which sample for different shards,
        keep drawing the same permutations. Both states are part of a training
        checkpoint.
    order : {"random", "blocks"}
        ``"blocks"`` (what :func:`~deepfactor.fitting.fit` asks for by default, through
        ``train.batch_order``) applies only to more than :data:`SMALL_DATA_FACTOR`
        batches of ratings; a smaller dataset encodes every entity at every step anyway,
        so it keeps the random order (which varies less). :attr:`order` says which is
        used.
    movie_groups : int
        ``G`` of :class:`~deepfactor.order.BlockedOrder` (0: measured on the data).
    """

    def __init__(self, ratings: Ratings, targets: np.ndarray, inputs: EncoderInputs,
                 batch_size: int, generator: np.random.Generator, order: str = "random",
                 movie_groups: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if order not in BATCH_ORDERS:
            raise ValueError(f"order must be one of {BATCH_ORDERS}, got {order!r}")
        self.ratings, self.targets, self.inputs = ratings, targets, inputs
        self.batch_size = min(batch_size, len(ratings))
        self.generator = generator
        self.input_generator = np.random.Generator(
            type(generator.bit_generator)(generator.bit_generator.seed_seq.spawn(1)[0]))
        self._totals = (ratings.movie_counts(), ratings.user_counts())
        # renumber's scratch, one slot per movie and per user: O(entities), once
        self._scratch = (np.empty(ratings.num_movies, dtype=np.int64),
                         np.empty(ratings.num_users, dtype=np.int64))
        self.every_entity = len(ratings) <= SMALL_DATA_FACTOR * self.batch_size
        self.order = "random" if self.every_entity else order
        if self.order != order:
            log.info("random batches: %d ratings are at most %d batches of %d, where every "
                     "entity is encoded at every step, so blocks would save nothing",
                     len(ratings), SMALL_DATA_FACTOR, self.batch_size)
        self._blocked = (BlockedOrder(ratings, self.batch_size, movie_groups)
                         if self.order == "blocks" else None)

    def __len__(self) -> int:
        return -(-len(self.ratings) // self.batch_size)

    @property
    def movie_groups(self) -> int | None:
        """``G`` of the blocked order; None for the random order."""
        return None if self._blocked is None else self._blocked.groups

    def permutation(self) -> np.ndarray:
        """A fresh order of the ratings for one epoch (:attr:`order`); shape ``(N,)``."""
        if self._blocked is not None:
            return self._blocked(self.generator)
        return self.generator.permutation(len(self.ratings))

    def epoch(self, kl_weight: float = 1.0) -> Iterator[Batch]:
        order = self.permutation()
        for start in range(0, len(order), self.batch_size):
            yield self.batch(order[start:start + self.batch_size], kl_weight)

    def batch(self, positions: np.ndarray, kl_weight: float = 1.0,
              drawn_for: tuple[np.ndarray, np.ndarray] | None = None) -> Batch:
        """The batch of ``positions``; ``drawn_for``: the distinct (sorted) movies and
        users of the global batch that ``positions`` are a shard of, whose encoder input
        subsets are drawn (see :meth:`EncoderInputs.movie_bag`)."""
        return make_batch(self.ratings, self.targets, positions, self.inputs,
                          kl_weight=kl_weight, totals=self._totals,
                          generator=self.input_generator,
                          every_entity=self.every_entity, drawn_for=drawn_for,
                          scratch=self._scratch)

    def distinct(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct movies and users, ascending, of the ratings at ``positions``."""
        return (renumber(self.ratings.movie[positions], self._scratch[0])[0],
                renumber(self.ratings.user[positions], self._scratch[1])[0])

    def full(self) -> Batch:
        """All ratings in one batch: every weight is exactly 1, every input read."""
        return make_batch(self.ratings, self.targets, np.arange(len(self.ratings)),
                          self.inputs, totals=self._totals, scratch=self._scratch)
