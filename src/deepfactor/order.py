"""The order in which an epoch visits the ratings, and so which ratings share a batch.

A training step runs the encoders once for every distinct movie and user its batch
touches, so what a step costs is ``O(B)`` decoder work plus ``O(entities in the batch)``
encoder work. Which ratings share a batch changes that cost and the variance of a step,
not the objective. An epoch partitions the ``N`` ratings into ``F = floor(N / B)`` full
batches of ``B`` and, when ``B`` does not divide ``N``, one short batch of ``B' = N - F
B``. A batch ``b`` of ``B_b`` ratings is scored by :func:`~deepfactor.batching.make_batch`
with its likelihood times ``N / B_b`` and each entity's KL times ``c_i N / (B_b n_i)``
(``c_i`` of its ``n_i`` ratings in the batch), so the estimates weighted by ``B_b / N``
sum to the full-data ELBO exactly, whatever the partition (every rating is in one batch,
and every entity's ``c_i / n_i`` sum to one). Each single step is unbiased too, under
both orders below: its batch is a uniformly random subset of its size (``"random"``),
or (``"blocks"``) the short batch is one and the ``k``-th of the full batches visited
is a uniformly chosen cell of a partition of the remaining ratings. Steps within an
epoch are dependent (sampling without replacement), as with any reshuffling.

``"random"``
    Slices of a uniformly random permutation. At scale nearly every rating brings its
    own user and many their own movie: 12,358 distinct entities per batch of 10,000 on
    MovieLens-like data of 25 million ratings, so the encoders, not the decoder, are
    most of the work.

``"blocks"``
    Each epoch, the short batch (if any) is drawn first, uniformly at random, and
    visited last. The other ratings are blocked: the movies are dealt at random into
    ``G`` groups of equal numbers of movies, the users are shuffled, the ratings are
    sorted by the group of their movie, then by the user's position in the shuffle, and
    cut into the ``F`` full batches, which are visited in random order. A batch is then
    mostly the ratings of a few hundred consecutive users on one group of movies (a
    batch that straddles two groups holds two such runs): its users are few and its
    movies mostly a ``1 / G`` share. ``G = 1`` is batching by user (each user in one
    batch per epoch, but for users cut at a batch boundary, and the movies of every
    batch as numerous as ever); a large ``G`` moves the cost from movies to users. The
    cost of a batch is lowest in between, and :meth:`BlockedOrder.choose_groups`
    measures it on the data. Shuffling the visits is what makes each step a uniformly
    chosen batch (without it, step ``k`` would always come from the same stretch of the
    sort, and one group's batches would run consecutively). The price is variance:
    whole (user, movie group) cells enter a batch together, as in cluster sampling, so a
    step's estimate varies more than a random batch's; the README measures what that
    does to held-out accuracy.

Both orders are linear in ``N`` to build (no comparison sort: the blocked one is a
gather of users' rating ranges and a stable radix sort on 16-bit group labels).
"""

from __future__ import annotations

import logging

import numpy as np

from .data.ratings import Ratings
from .subsample import concat_ranges

__all__ = ["BATCH_ORDERS", "BlockedOrder", "distinct_entities"]

log = logging.getLogger(__name__)

BATCH_ORDERS = ("random", "blocks")

#: Largest number of movie groups :meth:`BlockedOrder.choose_groups` tries (a power of two).
MAX_MOVIE_GROUPS = 1024
#: Batches of each candidate order whose distinct entities are counted.
SAMPLED_BATCHES = 16


class BlockedOrder:
    """Epoch orders of ``"blocks"`` (module docstring) for fixed ratings.

    Parameters
    ----------
    ratings : Ratings
        The ``N`` ratings an epoch visits.
    batch_size : int
        ``B``, what the batches will be cut to (for the choice of ``G``).
    movie_groups : int
        ``G`` (at least 1; at most the number of movies is used), or 0: the ``G``
        whose batches touch the fewest entities, measured (:meth:`choose_groups`).
    seed : int
        Seeds the draws of that measurement alone.
    """

    def __init__(self, ratings: Ratings, batch_size: int, movie_groups: int = 0,
                 seed: int = 0):
        if movie_groups < 0:
            raise ValueError(f"movie_groups must be 0 (choose) or positive, got {movie_groups}")
        self.ratings, self.batch_size = ratings, int(batch_size)
        self._by_user = np.argsort(ratings.user, kind="stable")  # (N,): grouped by user
        counts = np.bincount(ratings.user, minlength=ratings.num_users)
        self._user_count = counts  # (num_users,)
        self._user_start = np.cumsum(counts) - counts  # (num_users,)
        self._max_groups = min(max(ratings.num_movies, 1), 2**16)
        if movie_groups > self._max_groups:
            log.info("movie_groups %d capped at %d, the number of movies", movie_groups,
                     self._max_groups)
        self.groups = (min(movie_groups, self._max_groups) if movie_groups
                       else self.choose_groups(seed))

    def __call__(self, generator: np.random.Generator, groups: int | None = None
                 ) -> np.ndarray:
        """One epoch's order, a permutation of ``range(N)`` (shape ``(N,)``), with
        ``groups`` movie groups (default :attr:`groups`).

        The first ``F B`` entries are the ``F`` full batches, each a slice of the blocked
        sort, in random order; the last ``N - F B`` the short batch, a uniformly random
        subset of the ratings (module docstring)."""
        users, group = self.deal(generator, groups)
        n, size = len(self.ratings), self.batch_size
        full = n // size
        short = generator.choice(n, size=n - full * size, replace=False)  # (B',)
        outside = np.ones(n, dtype=bool)
        outside[short] = False
        positions = self._by_user[concat_ranges(self._user_start[users],
                                                self._user_count[users])]
        positions = positions[outside[positions]]  # (F B,): users in shuffled order
        # a stable sort keeps the users' shuffled order inside each group; on 16-bit
        # keys numpy's stable sort is a radix sort, linear in N
        blocked = positions[np.argsort(group[self.ratings.movie[positions]], kind="stable")]
        visits = generator.permutation(full)  # the k-th step: a uniformly chosen batch
        return np.concatenate([blocked.reshape(full, size)[visits].reshape(-1), short])

    def deal(self, generator: np.random.Generator, groups: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's first random draws, as :meth:`__call__` makes them from ``generator``.

        Returns
        -------
        users : ndarray of int, shape (num_users,)
            The users in visiting order.
        group : ndarray of uint16, shape (num_movies,)
            Each movie's group, ``0 .. groups - 1`` (``groups`` capped at the number
            of movies), the groups of equal numbers of movies (+-1).
        """
        groups = min(self.groups if groups is None else groups, self._max_groups)
        if groups < 1:
            raise ValueError(f"groups must be at least 1, got {groups}")
        users = generator.permutation(len(self._user_count))
        dealt = generator.permutation(self.ratings.num_movies)  # movie -> place in the deal
        return users, (dealt % groups).astype(np.uint16)

    def choose_groups(self, seed: int = 0) -> int:
        """The ``G`` whose batches touch the fewest entities, measured on the data.

        Tries ``G = 1, 2, 4, ...`` (at most :data:`MAX_MOVIE_GROUPS` and the number of
        movies), counting the distinct movies and users of :data:`SAMPLED_BATCHES`
        batches of one epoch order each, and stops once two larger ``G`` in a row did
        worse than the best. The count is what a step's encoders cost; the decoder's
        ``O(B)`` does not depend on ``G``. The draws come from their own generator, so
        the choice takes nothing from the training generator's stream. Costs one epoch
        order per candidate (about a second each at 25 million ratings).
        """
        num_batches = -(-len(self.ratings) // self.batch_size)
        rng = np.random.default_rng(seed)
        sampled = rng.choice(num_batches, size=min(SAMPLED_BATCHES, num_batches),
                             replace=False)
        best_groups, best_cost, worse, groups = 1, np.inf, 0, 1
        while groups <= min(MAX_MOVIE_GROUPS, self._max_groups) and worse < 2:
            cost = distinct_entities(self.ratings, self(rng, groups), self.batch_size,
                                     sampled)
            log.debug("movie groups %d: %.0f distinct entities per batch", groups, cost)
            if cost < best_cost:
                best_groups, best_cost, worse = groups, cost, 0
            else:
                worse += 1
            groups *= 2
        log.info("blocked batches: %d movie groups (%.0f distinct entities per batch of %d)",
                 best_groups, best_cost, self.batch_size)
        return best_groups


def distinct_entities(ratings: Ratings, order: np.ndarray, batch_size: int,
                      batches: np.ndarray) -> float:
    """Mean number of distinct movies plus users over the given batches of ``order``
    (batch ``k`` is ``order[k B:(k + 1) B]``): what those steps' encoders run on."""
    total = 0
    for k in batches:
        positions = order[k * batch_size:(k + 1) * batch_size]
        total += (len(np.unique(ratings.movie[positions]))
                  + len(np.unique(ratings.user[positions])))
    return total / len(batches)
