"""File formats: delimited rating files and the MovieLens 100K movie table.

Every reader reports a problem as a :class:`DataFormatError` whose message starts
with ``file:line:`` (1-based physical line), the way compilers do, so that a bad
line can be found with an editor.

A rating file holds one rating per line, fields split by ``sep``. Which field is
which is given by ``columns``; the fields named ``"user"``, ``"movie"`` and
``"rating"`` are read, a ``"timestamp"`` field is read (as integers) only to keep
the latest of duplicate ratings, and any other field is only counted. A first line
whose rating field is the word ``rating`` (any case) is a header and is skipped, so
``userId,movieId,rating,timestamp`` files read as they are. Windows line endings, a
UTF-8 byte-order mark, a missing final newline and blank lines are accepted.

Notes
-----
Lines are tokenised in pure Python (about a million lines per second) and then
checked as whole columns; only when a check fails are lines looked at one by one,
to name the first bad one.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from deepfactor.data.ratings import IdIndex, Ratings

__all__ = [
    "DataFormatError",
    "guess_separator",
    "read_movie_genres",
    "read_movie_titles",
    "read_pairs",
    "read_ratings_file",
    "split_line",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: The fields of MovieLens 100K ``u.data`` and its split files, in file order.
MOVIELENS_COLUMNS = ("user", "movie", "rating", "timestamp")

#: How many duplicate (user, movie) pairs an error message lists.
_SHOWN_DUPLICATES = 3

_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}


class DataFormatError(ValueError):
    """A data file that cannot be read; the message starts with ``file:line:``."""


def _where(source: str, line: int) -> str:
    return f"{source}:{line}"


def _separator_name(sep: str) -> str:
    return _SEPARATOR_NAMES.get(sep, repr(sep))


# --------------------------------------------------------------------------- text


def _read_text(path: Path, encoding: str) -> str:
    """The file's text with ``\\r\\n`` turned into ``\\n``; a UTF-8 BOM is dropped."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataFormatError(
            f"{_where(str(path), line)}: not valid {encoding} text "
            f"(byte 0x{data[err.start]:02x})"
        ) from None
    return text.replace("\r\n", "\n")


def _content_lines(text: str) -> tuple[list[str], np.ndarray]:
    """Non-blank lines and their 1-based line numbers, shape ``(num_lines,)``."""
    numbered = [(n, s) for n, s in enumerate(text.split("\n"), start=1) if s.strip()]
    lines = [s for _, s in numbered]
    numbers = np.fromiter((n for n, _ in numbered), dtype=np.int64, count=len(numbered))
    return lines, numbers


def _split_fields(
    lines: list[str], numbers: np.ndarray, sep: str, num_fields: int, source: str
) -> list[str]:
    """All fields of all lines laid end to end, ``num_fields`` per line.

    Raises
    ------
    DataFormatError
        At the first line with another number of fields.
    """
    # One trailing separator ("1<TAB>2<TAB>5<TAB>0<TAB>", as spreadsheets write) ends the
    # line rather than opening an empty field.
    lines = [s[: -len(sep)] if s.endswith(sep) and s.count(sep) == num_fields else s
             for s in lines]
    found = np.fromiter((s.count(sep) for s in lines), dtype=np.int64, count=len(lines))
    bad = np.flatnonzero(found != num_fields - 1)
    if len(bad):
        first = bad[0]
        raise DataFormatError(
            f"{_where(source, numbers[first])}: expected {num_fields} "
            f"{_separator_name(sep)}-separated fields, found {found[first] + 1}"
        )
    # every line has exactly num_fields fields, so field k of line i sits at
    # position i * num_fields + k of the joined tokens
    return sep.join(lines).split(sep) if lines else []


# ------------------------------------------------------------------------- columns


def _id_column(
    tokens: list[str], numbers: np.ndarray, what: str, source: str
) -> list[str]:
    """Raw ids with surrounding whitespace stripped; an empty id is an error."""
    ids = list(map(str.strip, tokens))
    if "" in ids:
        first = ids.index("")
        raise DataFormatError(f"{_where(source, numbers[first])}: empty {what} id")
    return ids


def _rating_column(tokens: list[str], numbers: np.ndarray, source: str) -> np.ndarray:
    """Ratings as float64, shape ``(num_ratings,)``; each must be a finite number."""
    try:
        # map(float) rather than numpy's parser, so that _is_number agrees with it
        rating = np.array(list(map(float, tokens)), dtype=np.float64)
    except ValueError:
        first = next(i for i, token in enumerate(tokens) if not _is_number(token))
        raise DataFormatError(
            f"{_where(source, numbers[first])}: rating {tokens[first].strip()!r} "
            "is not a number"
        ) from None

    checks = (("is NaN", np.isnan(rating)), ("is infinite", np.isinf(rating)))
    for problem, mask in checks:
        if mask.any():
            first = int(np.argmax(mask))
            raise DataFormatError(
                f"{_where(source, numbers[first])}: rating {tokens[first].strip()!r} "
                f"{problem}"
            )
    return rating


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_header(line: str, sep: str, rating_position: int) -> bool:
    """Whether ``line`` names the columns: its rating field is the word ``rating``."""
    fields = line.split(sep)
    if len(fields) <= rating_position:
        return False
    return fields[rating_position].strip().lower() in ("rating", "ratings")


def _column_positions(columns: Sequence[str]) -> dict[str, int]:
    """Position of the ``user``, ``movie`` and ``rating`` fields in ``columns``."""
    positions = {}
    for name in ("user", "movie", "rating"):
        if list(columns).count(name) != 1:
            raise ValueError(
                f"columns must name {name!r} exactly once, got {tuple(columns)!r}"
            )
        positions[name] = list(columns).index(name)
    return positions


# ----------------------------------------------------------------------- duplicates


def _duplicate_positions(ratings: Ratings) -> np.ndarray:
    """Positions of ratings whose (user, movie) pair occurred earlier, ascending."""
    key = ratings.movie * max(ratings.num_users, 1) + ratings.user  # (num_ratings,)
    _, first = np.unique(key, return_index=True)
    repeated = np.ones(len(key), dtype=bool)
    repeated[first] = False
    return np.flatnonzero(repeated)


def _duplicate_message(ratings: Ratings, repeated: np.ndarray) -> str:
    """Name the first few duplicates with the lines of every copy of their pair."""
    key = ratings.movie * max(ratings.num_users, 1) + ratings.user
    lines = ratings.line if ratings.line is not None else np.arange(1, len(key) + 1)
    shown = []
    for position in repeated[:_SHOWN_DUPLICATES]:
        copies = lines[key == key[position]]
        user = ratings.user_ids.raw_of(ratings.user[position])
        movie = ratings.movie_ids.raw_of(ratings.movie[position])
        where = ", ".join(str(n) for n in copies)
        shown.append(f"user {user!r} movie {movie!r} on lines {where}")
    more = "; ..." if len(repeated) > _SHOWN_DUPLICATES else ""
    plural = "s" if len(repeated) > 1 else ""
    return (
        f"{_where(ratings.source, lines[repeated[0]])}: {len(repeated)} duplicate "
        f"(user, movie) pair{plural}: {'; '.join(shown)}{more}"
    )


def _timestamp_column(
    tokens: list[str], numbers: np.ndarray, source: str
) -> np.ndarray:
    """Timestamps as int64, shape ``(num_ratings,)``; each must be a decimal integer."""
    stamps = list(map(str.strip, tokens))
    bad = next((i for i, s in enumerate(stamps) if not _is_integer(s)), None)
    if bad is None:
        try:
            return np.array(list(map(int, stamps)), dtype=np.int64)
        except OverflowError:
            bad = next(i for i, s in enumerate(stamps) if not _fits_int64(int(s)))
            problem = "is out of range"
    else:
        problem = "is not an integer"
    raise DataFormatError(
        f"{_where(source, numbers[bad])}: timestamp {stamps[bad]!r} {problem}"
    )


def _is_integer(token: str) -> bool:
    digits = token[1:] if token[:1] in "+-" else token
    return digits.isascii() and digits.isdigit()


def _fits_int64(value: int) -> bool:
    return -(2**63) <= value < 2**63


def _older_positions(ratings: Ratings, timestamp: np.ndarray) -> np.ndarray:
    """Positions of ratings whose pair has a later one (by timestamp, then by line)."""
    key = ratings.movie * max(ratings.num_users, 1) + ratings.user  # (num_ratings,)
    position = np.arange(len(key))
    # sorted by pair, then time, then file position: each pair's last is its latest
    order = np.lexsort((position, timestamp, key))
    latest = np.ones(len(key), dtype=bool)
    latest[:-1] = key[order[1:]] != key[order[:-1]]
    return np.sort(order[~latest])


def _handle_duplicates(
    ratings: Ratings, duplicates: str, timestamp: np.ndarray | None = None
) -> Ratings:
    if duplicates == "keep":
        return ratings
    if duplicates == "latest":
        assert timestamp is not None, "keeping the latest needs the timestamps"
        drop = _older_positions(ratings, timestamp)
    elif duplicates == "last":
        # the last copy of a pair is the first copy of the reversed file
        reversed_positions = _duplicate_positions(ratings.subset(np.s_[::-1]))
        drop = len(ratings) - 1 - reversed_positions
    else:
        drop = _duplicate_positions(ratings)
    if not len(drop):
        return ratings
    if duplicates == "error":
        raise DataFormatError(_duplicate_message(ratings, drop))
    logger.info("%s: dropped %d duplicate ratings", ratings.source, len(drop))
    keep = np.ones(len(ratings), dtype=bool)
    keep[drop] = False
    return ratings.subset(keep)


# ---------------------------------------------------------------------- public API


def read_ratings_file(
    path: PathLike,
    *,
    sep: str = "\t",
    columns: Sequence[str] = MOVIELENS_COLUMNS,
    movie_ids: IdIndex | None = None,
    user_ids: IdIndex | None = None,
    duplicates: Literal["error", "first", "last", "latest", "keep"] = "error",
    encoding: str = "utf-8-sig",
) -> Ratings:
    """Read a delimited ratings file such as MovieLens ``u.data`` or ``u1.base``.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Its name, as given, is used in messages and as ``Ratings.source``.
    sep : str, default "\\t"
        Field separator (``"::"`` for MovieLens 1M/10M, ``","`` for CSV).
    columns : sequence of str, default ("user", "movie", "rating", "timestamp")
        Name of each field in file order. ``"user"``, ``"movie"`` and ``"rating"``
        must each appear once; other fields are counted but not read.
    movie_ids, user_ids : IdIndex, optional
        Existing id maps to extend. Ids already in them keep their index; new ids
        are appended in order of first appearance.
    duplicates : {"error", "first", "last", "latest", "keep"}, default "error"
        What to do when a (user, movie) pair occurs more than once: raise, keep
        its first or its last rating in the file, keep the rating with the largest
        timestamp (of equal timestamps, the later line; ``columns`` must then name
        a ``"timestamp"`` field of integers), or keep every copy.
    encoding : str, default "utf-8-sig"
        Text encoding; the default also accepts a UTF-8 byte-order mark.

    Returns
    -------
    Ratings
        ``num_ratings`` = the number of non-blank lines, less a header line and
        dropped duplicates.
        Raw ids are the exact tokens of the file, stripped of surrounding
        whitespace, so ``"007"`` and ``"7"`` are different ids. ``rating`` is
        float64 and ``line`` holds each rating's 1-based line in the file.

    Raises
    ------
    DataFormatError
        ``file:line: problem`` for a wrong number of fields, an empty id, a rating
        that is not a finite number, text that does not decode, duplicate pairs
        (listing the lines of the first few), a timestamp that is not an integer
        (with ``duplicates="latest"``), or a file without ratings.
    ValueError
        When ``columns`` or ``sep`` is malformed.

    Examples
    --------
    >>> train = read_ratings_file("ml-100k/u1.base")  # doctest: +SKIP
    >>> test = read_ratings_file(
    ...     "ml-100k/u1.test", movie_ids=train.movie_ids, user_ids=train.user_ids
    ... )  # doctest: +SKIP
    """
    if not sep or "\n" in sep or "\r" in sep:
        raise ValueError(f"sep must be non-empty and without line breaks, got {sep!r}")
    if duplicates not in ("error", "first", "last", "latest", "keep"):
        raise ValueError(
            f"duplicates must be error, first, last, latest or keep, got {duplicates!r}"
        )
    positions = _column_positions(columns)
    if duplicates == "latest" and list(columns).count("timestamp") != 1:
        raise ValueError(
            "duplicates='latest' needs columns to name 'timestamp' exactly once, "
            f"got {tuple(columns)!r}"
        )
    path, source = Path(path), str(path)

    lines, numbers = _content_lines(_read_text(path, encoding))
    if lines and _is_header(lines[0], sep, positions["rating"]):
        lines, numbers = lines[1:], numbers[1:]
    if not lines:
        raise DataFormatError(f"{source}: no ratings (the file is empty or blank)")
    tokens = _split_fields(lines, numbers, sep, len(columns), source)

    def field(name: str) -> list[str]:
        return tokens[positions[name] :: len(columns)]

    ratings = Ratings.from_raw(
        _id_column(field("movie"), numbers, "movie", source),
        _id_column(field("user"), numbers, "user", source),
        _rating_column(field("rating"), numbers, source),
        movie_ids=movie_ids,
        user_ids=user_ids,
        source=source,
        line=numbers,
    )
    timestamp = None
    if duplicates == "latest":
        stamps = tokens[list(columns).index("timestamp") :: len(columns)]
        timestamp = _timestamp_column(stamps, numbers, source)
    ratings = _handle_duplicates(ratings, duplicates, timestamp)
    logger.debug(
        "%s: %d ratings, %d movies, %d users",
        source,
        len(ratings),
        ratings.num_movies,
        ratings.num_users,
    )
    return ratings


# ------------------------------------------------------------------ movie metadata


def _movie_rows(path: Path, min_fields: int) -> tuple[list[list[str]], np.ndarray]:
    """The ``|``-separated rows of ``u.item`` (Latin-1) with their line numbers."""
    lines, numbers = _content_lines(_read_text(path, "latin-1"))
    if not lines:
        raise DataFormatError(f"{_where(str(path), 1)}: no movies in the file")
    rows = [s.split("|") for s in lines]
    for row, number in zip(rows, numbers):
        if len(row) < min_fields:
            raise DataFormatError(
                f"{_where(str(path), number)}: expected at least {min_fields} "
                f"'|'-separated fields, found {len(row)}"
            )
        if not row[0].strip():
            raise DataFormatError(f"{_where(str(path), number)}: empty movie id")
    return rows, numbers


def _check_distinct(ids: list[str], numbers: np.ndarray, source: str) -> None:
    seen: dict[str, int] = {}
    for movie, number in zip(ids, numbers):
        if movie in seen:
            raise DataFormatError(
                f"{_where(source, number)}: movie id {movie!r} already on line "
                f"{seen[movie]}"
            )
        seen[movie] = int(number)


def read_movie_titles(path: PathLike) -> dict[str, str]:
    """Movie titles from MovieLens 100K ``u.item`` (Latin-1, ``|``-separated).

    Parameters
    ----------
    path : str or os.PathLike
        The ``u.item`` file: ``movie id|title|release date|video date|url|flags...``.

    Returns
    -------
    dict of str to str
        Raw movie id (as in the rating files) to title, in file order.

    Raises
    ------
    DataFormatError
        ``file:line:`` for a line with fewer than two fields, an empty or repeated
        movie id, or a file with no movies.
    """
    rows, numbers = _movie_rows(Path(path), min_fields=2)
    ids = [row[0].strip() for row in rows]
    _check_distinct(ids, numbers, str(path))
    return {movie: row[1].strip() for movie, row in zip(ids, rows)}


def _read_genre_names(path: Path) -> list[str]:
    """Genre names from ``u.genre`` (``name|index`` lines), in index order."""
    lines, numbers = _content_lines(_read_text(path, "latin-1"))
    by_index: dict[int, str] = {}
    for text, number in zip(lines, numbers):
        name, _, index = text.rpartition("|")
        if not name or not index.strip().isdigit():
            raise DataFormatError(
                f"{_where(str(path), number)}: expected 'name|index', found {text!r}"
            )
        by_index[int(index)] = name.strip()
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise DataFormatError(
            f"{path}: genre indices must be 0..n-1, found {sorted(by_index)}"
        )
    return [by_index[k] for k in range(len(by_index))]


def read_movie_genres(
    path: PathLike, *, genre_path: PathLike | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """Genre flags of each movie from MovieLens 100K ``u.item``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``u.item`` file; its last ``num_genres`` fields are 0/1 genre flags.
    genre_path : str or os.PathLike, optional
        The ``u.genre`` file naming the genres. Defaults to ``u.genre`` beside
        ``path``; when that does not exist the genres are named ``genre_0``, ...
        and their number is taken from the first line (fields after the fifth).

    Returns
    -------
    movie_ids : list of str, length num_movies
        Raw movie ids in file order.
    genres : list of str, length num_genres
        Genre names, in flag order.
    flags : ndarray of int64, shape (num_movies, num_genres)
        ``flags[i, g] == 1`` when movie ``movie_ids[i]`` has genre ``genres[g]``.

    Raises
    ------
    DataFormatError
        ``file:line:`` for a line with too few fields, a flag other than 0 or 1,
        or an empty or repeated movie id.
    """
    path = Path(path)
    if genre_path is None:
        genre_path = path.with_name("u.genre")
    genre_path = Path(genre_path)
    if genre_path.exists():
        genres = _read_genre_names(genre_path)
    else:
        rows, _ = _movie_rows(path, min_fields=6)
        genres = [f"genre_{k}" for k in range(len(rows[0]) - 5)]
        logger.debug("%s not found; genres named by position", genre_path)

    rows, numbers = _movie_rows(path, min_fields=len(genres) + 2)
    ids = [row[0].strip() for row in rows]
    _check_distinct(ids, numbers, str(path))
    flags = np.array(
        [_genre_flags(row, len(genres), path, n) for row, n in zip(rows, numbers)],
        dtype=np.int64,
    )
    return ids, genres, flags.reshape(len(ids), len(genres))  # (num_movies, num_genres)


def _genre_flags(row: list[str], num_genres: int, path: Path, number: int) -> list[int]:
    tokens = [token.strip() for token in row[len(row) - num_genres :]]
    for token in tokens:
        if token not in ("0", "1"):
            raise DataFormatError(
                f"{_where(str(path), number)}: genre flag {token!r} is not 0 or 1"
            )
    return [int(token) for token in tokens]


# -------------------------------------------------------------------- query pairs

#: First fields that mark a header line in a pairs file.
_USER_HEADERS = ("user", "userid", "user_id")


def guess_separator(first_line: str) -> str | None:
    """The separator of a small id file from its first line: tab, ``::``, comma, or None.

    None means any run of whitespace.
    """
    return next((s for s in ("\t", "::", ",") if s in first_line), None)


def split_line(line: str, sep: str | None) -> list[str]:
    """The stripped fields of ``line``; tab- and comma-separated ones may be quoted.

    ``csv`` undoes the quoting a spreadsheet writes (``"242","5"``). Never empty: a
    blank line gives ``[""]``.
    """
    if sep in ("\t", ","):
        fields = next(csv.reader([line], delimiter=sep, skipinitialspace=True), [])
    else:
        fields = line.split(sep) if sep else line.split()
    return [f.strip() for f in fields] or [""]


def read_pairs(path: PathLike, *, encoding: str = "utf-8-sig") -> tuple[list[str], list[str]]:
    """Read (user, movie) raw-id pairs: the first two fields of each line.

    The separator is taken from the first line (tab, ``::``, comma, else any
    whitespace), a header whose first field is ``user`` (or ``userId``, ``user_id``)
    is skipped, and further fields are ignored, so a MovieLens split file such as
    ``u1.test`` is accepted as it is; fields may be quoted (:func:`split_line`).

    Returns
    -------
    users, movies : list of str, length num_pairs
        In file order.

    Raises
    ------
    DataFormatError
        ``file:line:`` for a line with fewer than two fields, or a file without pairs.
    """
    source = str(path)
    lines, numbers = _content_lines(_read_text(Path(path), encoding))
    if not lines:
        raise DataFormatError(f"{source}: no pairs (the file is empty or blank)")
    sep = guess_separator(lines[0])
    users, movies = [], []
    for text, number in zip(lines, numbers):
        fields = split_line(text, sep)
        if number == numbers[0] and fields[0].lower() in _USER_HEADERS:
            continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise DataFormatError(f"{_where(source, int(number))}: expected a user and a "
                                  f"movie id, found {text.strip()!r}")
        users.append(fields[0])
        movies.append(fields[1])
    if not users:
        raise DataFormatError(f"{source}: no pairs after the header")
    return users, movies
