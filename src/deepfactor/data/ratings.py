"""The ratings container: observed (movie, user, rating) triples, sparse by entity.

A rating matrix of ``num_movies x num_users`` is mostly missing, so it is never
stored densely. :class:`Ratings` keeps the observed triples as three aligned
arrays, and :meth:`Ratings.by_movie` / :meth:`Ratings.by_user` give compressed
sparse rows (CSR) for the encoders, whose cost is then proportional to the
number of observed ratings.

Raw ids are kept as the strings that appeared in the data file, so ``"007"`` and
``"7"`` stay distinct while ``196`` and ``"196"`` name the same user.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["IdIndex", "Ratings", "SparseRows"]


class IdIndex:
    """A bijection between raw ids (strings) and contiguous indices ``0..n-1``.

    Parameters
    ----------
    raw_ids : iterable of str
        Distinct raw ids, in index order.
    """

    def __init__(self, raw_ids: Iterable[object]):
        self._raw = [str(r) for r in raw_ids]
        self._index = {r: i for i, r in enumerate(self._raw)}
        if len(self._index) != len(self._raw):
            raise ValueError("IdIndex needs distinct raw ids")

    @classmethod
    def from_first_appearance(cls, *columns: Iterable[object]) -> IdIndex:
        """Index the distinct values of ``columns`` in order of first appearance."""
        seen: dict[str, None] = {}
        for column in columns:
            for r in column:
                seen.setdefault(str(r), None)
        return cls(seen)

    def extended(self, raw_ids: Iterable[object]) -> IdIndex:
        """A new index with the unseen ``raw_ids`` appended after the current ones."""
        extra = [r for r in dict.fromkeys(str(r) for r in raw_ids) if r not in self._index]
        return IdIndex(self._raw + extra) if extra else self

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, raw_id: object) -> bool:
        return str(raw_id) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdIndex) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash(tuple(self._raw))

    def __repr__(self) -> str:
        head = ", ".join(self._raw[:3])
        return f"IdIndex({len(self)} ids: {head}{', ...' if len(self) > 3 else ''})"

    @property
    def raw(self) -> list[str]:
        """The raw ids in index order (a copy)."""
        return list(self._raw)

    def raw_of(self, index: np.ndarray) -> np.ndarray:
        """Raw ids of integer ``index`` (any shape); an object array of str."""
        return np.asarray(self._raw, dtype=object)[np.asarray(index)]

    def index_of(self, raw_ids: Iterable[object], *, what: str = "id") -> np.ndarray:
        """Indices of ``raw_ids``, shape ``(len(raw_ids),)``, int64.

        Raises
        ------
        KeyError
            Naming (up to ten of) the ids that are not in the index.
        """
        keys = [str(r) for r in raw_ids]
        missing = [k for k in dict.fromkeys(keys) if k not in self._index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise KeyError(f"unknown {what}{'s' if len(missing) > 1 else ''}: {shown}{more}")
        return np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))


@dataclass(frozen=True)
class SparseRows:
    """Compressed sparse rows of a ratings matrix (one row per entity).

    Attributes
    ----------
    indptr : ndarray of int64, shape (num_rows + 1,)
        Row ``i`` holds entries ``indptr[i]:indptr[i+1]``.
    indices : ndarray of int64, shape (nnz,)
        Column (the other entity) of each entry.
    values : ndarray of float64, shape (nnz,)
        The rating of each entry.
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def counts(self) -> np.ndarray:
        """Number of entries per row, shape ``(num_rows,)``."""
        return np.diff(self.indptr)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries of ``rows`` laid end to end, for ``nn.EmbeddingBag``.

        Parameters
        ----------
        rows : ndarray of int, shape (num_selected,)

        Returns
        -------
        indices : ndarray of int64, shape (nnz_selected,)
        values : ndarray of float64, shape (nnz_selected,)
        offsets : ndarray of int64, shape (num_selected,)
            Start of each selected row within ``indices``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # position k of the output reads entry starts[row(k)] + (k - offsets[row(k)])
        flat = np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
        return self.indices[flat], self.values[flat], offsets


@dataclass(frozen=True)
class Ratings:
    """Observed ratings as aligned arrays, with the id indices they refer to.

    Attributes
    ----------
    movie : ndarray of int64, shape (num_ratings,)
        Index of each rating's movie in ``movie_ids``.
    user : ndarray of int64, shape (num_ratings,)
        Index of each rating's user in ``user_ids``.
    rating : ndarray of float64, shape (num_ratings,)
        The observed value.
    movie_ids, user_ids : IdIndex
        Raw ids. They may hold entities with no rating here (for example a test
        split's index covers movies that only the test file has).
    source : str
        Where the ratings came from, for messages.
    line : ndarray of int64, shape (num_ratings,), optional
        1-based line of each rating in ``source``.
    """

    movie: np.ndarray
    user: np.ndarray
    rating: np.ndarray
    movie_ids: IdIndex
    user_ids: IdIndex
    source: str = "<memory>"
    line: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.rating)
        for name in ("movie", "user") + (("line",) if self.line is not None else ()):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Ratings.{name} has {len(getattr(self, name))} entries, expected {n}"
                )
        if n and (self.movie.max() >= len(self.movie_ids) or self.user.max() >= len(self.user_ids)):
            raise ValueError("Ratings refer to an index outside their id maps")

    @classmethod
    def from_raw(
        cls,
        movie_raw: Iterable[object],
        user_raw: Iterable[object],
        rating: Iterable[float],
        *,
        movie_ids: IdIndex | None = None,
        user_ids: IdIndex | None = None,
        source: str = "<memory>",
        line: Iterable[int] | None = None,
    ) -> Ratings:
        """Build from raw-id columns; id indices are extended with unseen ids."""
        movie_raw, user_raw = list(movie_raw), list(user_raw)
        movie_ids = (movie_ids or IdIndex([])).extended(movie_raw)
        user_ids = (user_ids or IdIndex([])).extended(user_raw)
        return cls(
            movie=movie_ids.index_of(movie_raw),
            user=user_ids.index_of(user_raw),
            rating=np.asarray(list(rating), dtype=np.float64),
            movie_ids=movie_ids,
            user_ids=user_ids,
            source=source,
            line=None if line is None else np.asarray(list(line), dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.rating)

    @property
    def num_movies(self) -> int:
        return len(self.movie_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def subset(self, index: np.ndarray) -> Ratings:
        """The ratings at ``index`` (int positions or a boolean mask), same id maps."""
        return Ratings(
            movie=self.movie[index],
            user=self.user[index],
            rating=self.rating[index],
            movie_ids=self.movie_ids,
            user_ids=self.user_ids,
            source=self.source,
            line=None if self.line is None else self.line[index],
        )

    def with_ids(self, movie_ids: IdIndex, user_ids: IdIndex) -> Ratings:
        """The same ratings re-indexed against larger id maps that extend ours."""
        return Ratings.from_raw(
            self.movie_ids.raw_of(self.movie),
            self.user_ids.raw_of(self.user),
            self.rating,
            movie_ids=movie_ids,
            user_ids=user_ids,
            source=self.source,
            line=self.line,
        )

    def movie_counts(self) -> np.ndarray:
        """Ratings per movie, shape ``(num_movies,)``."""
        return np.bincount(self.movie, minlength=self.num_movies)

    def user_counts(self) -> np.ndarray:
        """Ratings per user, shape ``(num_users,)``."""
        return np.bincount(self.user, minlength=self.num_users)

    def by_movie(self) -> SparseRows:
        """CSR with one row per movie, columns are users."""
        return _csr(self.movie, self.user, self.rating, self.num_movies)

    def by_user(self) -> SparseRows:
        """CSR with one row per user, columns are movies."""
        return _csr(self.user, self.movie, self.rating, self.num_users)


def _csr(row: np.ndarray, col: np.ndarray, value: np.ndarray, num_rows: int) -> SparseRows:
    order = np.lexsort((col, row))  # by row, then column: deterministic layout
    counts = np.bincount(row, minlength=num_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SparseRows(indptr, col[order].astype(np.int64), value[order].astype(np.float64))
