"""Which files of each named dataset hold its ratings and movies, and in what format.

=================  ===============  =====  ======  ===========  =====================
dataset            ratings file     sep    header  ratings      movies file
=================  ===============  =====  ======  ===========  =====================
ml-100k            ``u.data``       tab    no      1..5         ``u.item`` (Latin-1)
ml-1m              ``ratings.dat``  ``::`` no      1..5         ``movies.dat`` (Latin-1)
ml-10m             ``ratings.dat``  ``::`` no      0.5..5 by ½  ``movies.dat``
ml-20m, ml-25m     ``ratings.csv``  ``,``  yes     0.5..5 by ½  ``movies.csv`` (UTF-8)
ml-latest-small    ``ratings.csv``  ``,``  yes     0.5..5 by ½  ``movies.csv`` (UTF-8)
=================  ===============  =====  ======  ===========  =====================

Every file's fields are ``user, movie, rating, timestamp``. Only ML-100K ships
canonical train/test splits (``u1``..``u5``, ``ua``, ``ub``); the others are split
at random (``data.split = "random"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepfactor.data.movies import MovieTable, read_movie_table
from deepfactor.data.ratings import Ratings
from deepfactor.data.readers import MOVIELENS_COLUMNS, read_movie_titles
from deepfactor.data.tables import read_rating_table

__all__ = ["LAYOUTS", "Layout", "read_dataset_movies", "read_dataset_ratings"]


@dataclass(frozen=True)
class Layout:
    """The files of one dataset folder.

    Attributes
    ----------
    ratings : str
        The file of all ratings, ``user, movie, rating, timestamp`` per line.
    sep : str
    header : bool
        Whether line 1 of ``ratings`` names the columns.
    movies : str
        The file of titles (and genres).
    movies_encoding : str or None
        Its text encoding; None tries UTF-8, then Latin-1.
    splits : tuple of str
        Canonical split names shipped as ``<name>.base``/``<name>.test`` files.
    """

    ratings: str
    sep: str
    header: bool
    movies: str
    movies_encoding: str | None
    splits: tuple[str, ...] = ()


_CSV = Layout("ratings.csv", ",", True, "movies.csv", "utf-8-sig")

#: The layout of every named dataset with files.
LAYOUTS: dict[str, Layout] = {
    "ml-100k": Layout("u.data", "\t", False, "u.item", "latin-1",
                      splits=("u1", "u2", "u3", "u4", "u5", "ua", "ub")),
    "ml-1m": Layout("ratings.dat", "::", False, "movies.dat", "latin-1"),
    # ML-10M's README does not name the encoding of movies.dat
    "ml-10m": Layout("ratings.dat", "::", False, "movies.dat", None),
    "ml-20m": _CSV,
    "ml-25m": _CSV,
    "ml-latest-small": _CSV,
}


def read_dataset_ratings(folder: str | os.PathLike, name: str, *,
                         duplicates: str = "error") -> Ratings:
    """All ratings of dataset ``name`` from its ``folder``, with the vectorized reader."""
    layout = LAYOUTS[name]
    return read_rating_table(Path(folder) / layout.ratings, sep=layout.sep,
                             columns=MOVIELENS_COLUMNS, header=layout.header,
                             duplicates=duplicates)


def read_dataset_movies(folder: str | os.PathLike, name: str) -> MovieTable:
    """Titles (and genres, where the format has them) of dataset ``name``.

    ML-100K's genres are 0/1 flags (:func:`.readers.read_movie_genres`); only its
    titles are returned here.
    """
    layout = LAYOUTS[name]
    path = Path(folder) / layout.movies
    if name == "ml-100k":
        return MovieTable(read_movie_titles(path), {})
    return read_movie_table(path, encoding=layout.movies_encoding)
