"""Bounded random samples of each entity's ratings, drawn without replacement, vectorized.

An encoder reads an entity's ratings through a sum over them. Reading all ``n`` of a
movie with 80,000 ratings at every step that touches it makes an epoch cost far more
than the number of ratings (a popular movie is in nearly every batch). During training
an entity with ``n > K`` ratings is therefore read from ``K`` of them, a uniformly
random subset drawn afresh at each step; :class:`~deepfactor.batching.EncoderInputs`
rescales the sum by ``n / K`` so that it is unbiased for the full one.

The draw costs ``O(K)`` per entity whatever ``n`` is (no ``O(n)`` shuffle of a long
row), and no Python loop runs over entities:

* ``n <= K``: every entry;
* ``K < n <= 2K``: random keys for the ``n`` entries, the ``K`` smallest per row (a
  uniform K-subset; costs ``O(n) <= O(2K)``);
* ``n > 2K``: ``K`` positions drawn with replacement, then every repeated value
  redrawn until none is left. Each round replaces duplicates with fresh uniform draws,
  so the procedure commutes with any relabelling of the ``n`` entries and its result
  is a uniformly random K-subset; at most ``K / (2n) <= 1/4`` of the draws repeat per
  round, so few rounds run.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_rows", "concat_ranges"]


def sample_rows(starts: np.ndarray, counts: np.ndarray, cap: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``min(n_e, cap)`` entries of each row, without replacement.

    Parameters
    ----------
    starts : ndarray of int, shape (num_rows,)
        Position of each row's first entry in the flat entry arrays.
    counts : ndarray of int, shape (num_rows,)
        ``n_e``, the number of entries of each row.
    cap : int
        ``K >= 1``.
    rng : numpy.random.Generator

    Returns
    -------
    positions : ndarray of int64, shape (sum of min(n_e, cap),)
        Entry positions, the rows laid end to end in the order given.
    taken : ndarray of int64, shape (num_rows,)
        ``min(n_e, cap)``.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
    taken = np.minimum(counts, cap)
    offsets = np.cumsum(taken) - taken  # (num_rows,): where each row's output starts
    positions = np.empty(int(taken.sum()), dtype=np.int64)

    whole = np.flatnonzero(counts <= cap)
    positions[concat_ranges(offsets[whole], taken[whole])] = concat_ranges(starts[whole],
                                                                         counts[whole])

    mid = np.flatnonzero((counts > cap) & (counts <= 2 * cap))
    if len(mid):
        entries = concat_ranges(starts[mid], counts[mid])  # (sum n,)
        # by row, in random order within each row: one sort of row + U(0, 1) keys
        order = np.argsort(np.repeat(np.arange(len(mid)), counts[mid])
                           + rng.random(len(entries)))
        rank = np.arange(len(entries)) - np.repeat(np.cumsum(counts[mid]) - counts[mid],
                                                   counts[mid])
        kept = entries[order][rank < cap]  # cap per row, rows in order
        positions[concat_ranges(offsets[mid], taken[mid])] = kept

    big = np.flatnonzero(counts > 2 * cap)
    if len(big):
        n = counts[big][:, None]  # (num_big, 1)
        draw = rng.integers(0, n, size=(len(big), cap))  # (num_big, cap)
        while True:
            draw.sort(axis=1)
            r, c = np.nonzero(draw[:, 1:] == draw[:, :-1])
            if len(r) == 0:
                break
            draw[r, c + 1] = rng.integers(0, n[r, 0])
        positions[concat_ranges(offsets[big], taken[big])] = (starts[big][:, None] + draw).ravel()
    return positions, taken


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + l) for s, l in zip(starts, lengths))``, vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    begins = np.cumsum(lengths) - lengths
    return np.repeat(starts - begins, lengths) + np.arange(total)
