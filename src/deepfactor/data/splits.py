"""Train/test splits: the canonical MovieLens 100K split files and a validation carve.

MovieLens 100K ships seven splits of ``u.data``: five folds ``u1``..``u5`` (each
``uN.test`` holds a fifth of the ratings) and ``ua``/``ub`` (ten ratings of each
user in the test part). :func:`load_split` reads one of them, or ``"all"`` for the
whole of ``u.data`` with no test part.

Train and test share their id maps, so a movie has the same index in both. Ids that
only the test file has are appended after the training ids: these are cold-start
movies or users, with no training ratings, and their test rows are kept.

:func:`carve_validation` then holds out a seeded, per-user share of the training
ratings for early stopping and model choice, so that the test part stays unseen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfactor.data.ratings import Ratings
from deepfactor.data.readers import DataFormatError, read_ratings_file

__all__ = ["SPLITS", "SPLIT_NAMES", "Split", "carve_validation", "load_split",
           "random_split"]

logger = logging.getLogger(__name__)

#: The canonical splits of MovieLens 100K, files ``<name>.base`` and ``<name>.test``.
SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

#: Every name :func:`load_split` accepts; ``"all"`` is ``u.data`` without a test part.
SPLIT_NAMES = SPLITS + ("all",)

#: How many shared (user, movie) pairs an overlap error names.
_SHOWN_OVERLAPS = 3


@dataclass(frozen=True)
class Split:
    """Training ratings and, for a canonical split, test ratings on the same id maps.

    Attributes
    ----------
    train : Ratings
        ``num_train`` ratings. Its ``movie_ids``/``user_ids`` are the very objects
        of ``test``'s, so they may list test-only (cold-start) ids with no ratings.
    test : Ratings or None
        ``num_test`` ratings, or None for ``"all"``.
    name : str
        The split's name, one of :data:`SPLIT_NAMES`.
    """

    train: Ratings
    test: Ratings | None
    name: str


def _split_files(data_dir: Path, name: str) -> tuple[Path, Path | None]:
    if name == "all":
        return data_dir / "u.data", None
    if name in SPLITS:
        return data_dir / f"{name}.base", data_dir / f"{name}.test"
    raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")


def _check_disjoint(train: Ratings, test: Ratings) -> None:
    """Raise :class:`DataFormatError` when the files share (user, movie) pairs."""
    assert train.movie_ids is test.movie_ids and train.user_ids is test.user_ids
    num_users = max(train.num_users, 1)
    train_key = train.movie * num_users + train.user  # (num_train,)
    test_key = test.movie * num_users + test.user  # (num_test,)
    shared = np.flatnonzero(np.isin(test_key, train_key))
    if not len(shared):
        return

    lines = test.line if test.line is not None else np.arange(1, len(test) + 1)
    shown = ", ".join(
        f"line {lines[k]} (user {test.user_ids.raw_of(test.user[k])!r}, "
        f"movie {test.movie_ids.raw_of(test.movie[k])!r})"
        for k in shared[:_SHOWN_OVERLAPS]
    )
    raise DataFormatError(
        f"{test.source}:{lines[shared[0]]}: {len(shared)} (user, movie) pairs are "
        f"also in {train.source}, e.g. {shown}"
    )


def _share_ids(train: Ratings, test: Ratings) -> Ratings:
    """``train`` on ``test``'s id maps, which extend train's own by appending."""
    pairs = ((train.movie_ids, test.movie_ids), (train.user_ids, test.user_ids))
    for ours, theirs in pairs:
        assert theirs.raw[: len(ours)] == ours.raw, "test ids must extend train ids"
    # appending keeps every training index valid, so the arrays stay as they are
    return dataclasses.replace(train, movie_ids=test.movie_ids, user_ids=test.user_ids)


def load_split(
    data_dir: str | os.PathLike, name: str, *, duplicates: str = "error"
) -> Split:
    """Read a canonical MovieLens 100K split, or all of ``u.data``.

    Parameters
    ----------
    data_dir : str or os.PathLike
        The folder holding ``u.data`` and the split files (see
        :func:`deepfactor.data.datasets.resolve_dataset`).
    name : str
        One of :data:`SPLITS` (``"u1"``..``"u5"``, ``"ua"``, ``"ub"``), which reads
        ``<name>.base`` and ``<name>.test``, or ``"all"``, which reads ``u.data``.
    duplicates : {"error", "latest"} or another policy of read_ratings_file
        What to do with a (user, movie) pair repeated within one file: raise
        (listing the lines), or keep its rating with the largest timestamp.

    Returns
    -------
    Split
        ``train`` and ``test`` share one ``movie_ids`` and one ``user_ids``. They
        list the training ids in order of first appearance in the base file, then
        the ids that only the test file has. Apart from those appended ids, the
        training ratings are exactly what reading the base file alone gives.

    Raises
    ------
    DataFormatError
        For a malformed file (see :func:`.read_ratings_file`), or when the test
        file repeats (user, movie) pairs of the base file.
    FileNotFoundError
        When a file of the split is missing.
    ValueError
        For an unknown split name.
    """
    train_path, test_path = _split_files(Path(data_dir), name)
    train = read_ratings_file(train_path, duplicates=duplicates)
    if test_path is None:
        return Split(train=train, test=None, name=name)

    test = read_ratings_file(
        test_path,
        movie_ids=train.movie_ids,
        user_ids=train.user_ids,
        duplicates=duplicates,
    )
    logger.info(
        "split %s: %d train, %d test ratings; %d test-only movies, %d test-only users",
        name,
        len(train),
        len(test),
        test.num_movies - train.num_movies,
        test.num_users - train.num_users,
    )
    train = _share_ids(train, test)
    _check_disjoint(train, test)
    return Split(train=train, test=test, name=name)


def _validation_counts(user_counts: np.ndarray, fraction: float) -> np.ndarray:
    """Ratings to hold out per user, shape ``(num_users,)``.

    ``round(fraction * n_u)`` (ties to even, as Python's ``round``), capped so that
    every user keeps at least one rating to fit on.
    """
    wanted = np.rint(fraction * user_counts).astype(np.int64)
    return np.minimum(wanted, np.maximum(user_counts - 1, 0))


def carve_validation(
    train: Ratings, fraction: float, seed: int
) -> tuple[Ratings, Ratings]:
    """Hold out a random, per-user share of the training ratings for validation.

    Parameters
    ----------
    train : Ratings
        ``num_train`` training ratings.
    fraction : float
        Share of each user's ratings to hold out, ``0 <= fraction < 1``.
    seed : int
        Seed of the :class:`numpy.random.Generator` that picks the ratings.

    Returns
    -------
    fit : Ratings
        The ``num_train - num_validation`` ratings left to fit on, in their
        original order.
    validation : Ratings
        The ``num_validation`` held-out ratings, in their original order.
        Both keep ``train``'s id maps.

    Notes
    -----
    A user with :math:`n_u` ratings gives :math:`\\mathrm{round}(f\\, n_u)` of them,
    drawn without replacement, but never all of them: each user keeps at least one
    rating in ``fit``, so a user with a single rating keeps it. The same ``train``
    and ``seed`` always give the same carve.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)

    # order ratings by user, and within a user at random; a rating's rank is then
    # its position among its user's ratings in that random order
    order = np.lexsort((rng.random(len(train)), train.user))  # (num_train,)
    counts = train.user_counts()  # (num_users,)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (num_users,)
    rank = np.empty(len(train), dtype=np.int64)
    rank[order] = np.arange(len(train)) - starts[train.user[order]]

    held_out = rank < _validation_counts(counts, fraction)[train.user]  # (num_train,)
    return train.subset(~held_out), train.subset(held_out)


def random_split(ratings: Ratings, test_fraction: float, seed: int) -> tuple[Ratings, Ratings]:
    """A seeded uniform split of ``ratings`` into (train, test), same id maps."""
    order = np.random.default_rng(seed).permutation(len(ratings))
    num_test = int(round(test_fraction * len(ratings)))
    return ratings.subset(np.sort(order[num_test:])), ratings.subset(np.sort(order[:num_test]))
