"""Movie titles and genres of the larger MovieLens releases.

* ``movies.dat`` (1M, 10M): ``MovieID::Title::Genres``, one movie a line. Titles may
  hold a single ``:`` ("Star Wars: Episode IV ..."), so a line is cut at its first
  and its last ``::``. ML-1M's file is Latin-1; ML-10M's is read as UTF-8 when it
  decodes as such, else as Latin-1.
* ``movies.csv`` (20M, 25M, latest-small): ``movieId,title,genres`` with a header,
  UTF-8, titles in double quotes when they hold a comma. Read with the ``csv``
  module, which does the quoting.

Genres are ``|``-separated names; MovieLens writes ``(no genres listed)`` for none,
which is read as no genres. These files are small (under 100,000 movies), so they
are read line by line.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deepfactor.data.readers import DataFormatError

__all__ = ["MovieTable", "read_movie_table", "read_movies_csv", "read_movies_dat"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: What MovieLens writes in the genres field of a movie without genres.
NO_GENRES = "(no genres listed)"


@dataclass(frozen=True)
class MovieTable:
    """Titles and genres by raw movie id (the ids of the rating files), in file order.

    Attributes
    ----------
    titles : dict of str to str
    genres : dict of str to tuple of str
    """

    titles: dict[str, str]
    genres: dict[str, tuple[str, ...]]


def _genres(field: str) -> tuple[str, ...]:
    field = field.strip()
    if not field or field == NO_GENRES:
        return ()
    return tuple(g.strip() for g in field.split("|") if g.strip())


def _decode(path: Path, encoding: str | None) -> str:
    """The text of ``path``; ``encoding=None`` tries UTF-8, then Latin-1."""
    data = path.read_bytes()
    for name in ([encoding] if encoding else ["utf-8-sig", "latin-1"]):
        try:
            return data.decode(name)
        except UnicodeDecodeError as err:
            if encoding:  # a declared encoding that fails is an error, with its line
                line = data.count(b"\n", 0, err.start) + 1
                raise DataFormatError(f"{path}:{line}: not valid {encoding} text "
                                      f"(byte 0x{data[err.start]:02x})") from None
            logger.debug("%s is not UTF-8; reading it as Latin-1", path)
    raise AssertionError("latin-1 decodes any bytes")


class _Collector:
    """Adds movies one at a time, refusing an empty or repeated id."""

    def __init__(self, source: str):
        self.source, self.titles, self.genres, self.first_line = source, {}, {}, {}

    def add(self, number: int, movie: str, title: str, genres: str) -> None:
        movie = movie.strip()
        if not movie:
            raise DataFormatError(f"{self.source}:{number}: empty movie id")
        if movie in self.titles:
            raise DataFormatError(f"{self.source}:{number}: movie id {movie!r} already on "
                                  f"line {self.first_line[movie]}")
        self.titles[movie], self.genres[movie] = title.strip(), _genres(genres)
        self.first_line[movie] = number

    def table(self) -> MovieTable:
        if not self.titles:
            raise DataFormatError(f"{self.source}: no movies in the file")
        return MovieTable(self.titles, self.genres)


def read_movies_dat(path: PathLike, *, encoding: str | None = "latin-1") -> MovieTable:
    """Titles and genres from a ``MovieID::Title::Genres`` file (ML-1M, ML-10M).

    Parameters
    ----------
    path : str or os.PathLike
    encoding : str or None, default "latin-1"
        ML-1M's encoding; None tries UTF-8 first, then Latin-1 (ML-10M).

    Raises
    ------
    DataFormatError
        ``file:line:`` for a line without two ``::``, an empty or repeated movie id,
        text that does not decode, or a file without movies.
    """
    out = _Collector(str(path))
    for number, text in enumerate(_decode(Path(path), encoding).split("\n"), start=1):
        text = text.rstrip("\r")
        if not text.strip():
            continue
        movie, sep, rest = text.partition("::")
        title, sep2, genres = rest.rpartition("::")
        if not sep or not sep2:
            raise DataFormatError(f"{path}:{number}: expected 'id::title::genres', "
                                  f"found {text.strip()!r}")
        out.add(number, movie, title, genres)
    return out.table()


def read_movies_csv(path: PathLike, *, encoding: str = "utf-8-sig") -> MovieTable:
    """Titles and genres from a ``movieId,title,genres`` CSV with a header (20M, 25M).

    Raises
    ------
    DataFormatError
        ``file:line:`` for a record without three fields, an empty or repeated movie
        id, text that does not decode, or a file without movies. The line is the
        record's first line (a quoted title may span lines).
    """
    out = _Collector(str(path))
    text = _decode(Path(path), encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0  # physical line where the previous record ended
    try:
        for row in reader:
            number, end = end + 1, reader.line_num
            if number == 1 or not any(field.strip() for field in row):
                continue  # the header, or a blank line
            if len(row) != 3:
                raise DataFormatError(f"{path}:{number}: expected 3 comma-separated "
                                      f"fields (movieId,title,genres), found {len(row)}")
            out.add(number, *row)
    except csv.Error as err:
        raise DataFormatError(f"{path}:{end + 1}: {err}") from None
    return out.table()


def read_movie_table(path: PathLike, *, encoding: str | None = None) -> MovieTable:
    """``movies.csv`` or ``movies.dat`` by the file's suffix (see the readers)."""
    path = Path(path)
    if path.suffix == ".csv":
        return read_movies_csv(path, encoding=encoding or "utf-8-sig")
    return read_movies_dat(path, encoding=encoding)
