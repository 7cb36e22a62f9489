"""Large delimited rating files: MovieLens 1M/10M (``::``), 20M/25M (CSV), any log.

:func:`read_rating_table` reads a file of tens of millions of ratings in seconds:
pandas' C parser converts whole columns with fixed dtypes, ids are remapped to
``0..n-1`` with :func:`pandas.factorize` (a hash table, so memory follows the
number of distinct ids, never the largest id), and line numbers come from one
vectorized scan of the bytes. No Python code runs per line on a good file.

When the parser or a column check fails, the file is read again line by line,
only to name the first bad line as ``file:line: problem`` with the same rules as
:func:`deepfactor.data.readers.read_ratings_file`; that pass stops at the bad line.

Notes
-----
Known differences from :func:`~deepfactor.data.readers.read_ratings_file` (the
MovieLens 100K reader), for speed:

* An id column whose tokens are all decimal integers is read as int64, so ``007``
  and ``7`` are one id here (MovieLens ids have no leading zeros). A column with any
  other token (a letter, an id beyond int64) is read as text, exact tokens stripped
  of surrounding spaces.
* A header is not guessed: the caller says whether line 1 is one.
* A multi-character separator must repeat one character (``::``); the file is then
  split on that character and the empty fields in between are checked to be empty.
* When ``columns`` names fields that are not read (not user, movie, rating or
  timestamp), a line with extra or missing trailing fields of that kind is not
  detected: pandas reads only the named fields then.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.data.readers import (
    MOVIELENS_COLUMNS,
    DataFormatError,
    _handle_duplicates,
    _is_integer,
    _separator_name,
)

__all__ = ["read_rating_table"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: The fields whose values are read; any other name in ``columns`` is skipped.
ROLES = ("user", "movie", "rating", "timestamp")

#: Bytes per block of the line-number scan.
_SCAN_BYTES = 1 << 26

#: Bytes that may fill a line pandas skips as blank (unless one is the separator).
_BLANK_BYTES = b" \t\r"


@dataclass(frozen=True)
class _Layout:
    """How ``columns`` and ``sep`` map onto the fields pandas sees."""

    parser_sep: str  # one character
    stride: int  # fields per column: 2 for "::" split on ":"
    num_columns: int
    positions: dict[str, int]  # role -> column position in the file
    read_all: bool  # every column has a role: read them all, so field counts are checked

    @property
    def num_fields(self) -> int:
        return (self.num_columns - 1) * self.stride + 1

    def field(self, role: str) -> int:
        return self.positions[role] * self.stride


def _layout(sep: str, columns: Sequence[str]) -> _Layout:
    if not sep or "\n" in sep or "\r" in sep:
        raise ValueError(f"sep must be non-empty and without line breaks, got {sep!r}")
    if len(set(sep)) != 1:
        raise ValueError(f"a separator of several characters must repeat one character "
                         f"(such as '::'), got {sep!r}")
    columns = list(columns)
    positions = {}
    for role in ROLES:
        count = columns.count(role)
        if count > 1 or (count == 0 and role != "timestamp"):
            raise ValueError(f"columns must name {role!r} exactly once"
                             f"{' or not at all' if role == 'timestamp' else ''}, "
                             f"got {tuple(columns)!r}")
        if count:
            positions[role] = columns.index(role)
    return _Layout(sep[0], len(sep), len(columns), positions,
                   read_all=len(positions) == len(columns))


# ----------------------------------------------------------------------- parsing


def _parse(path: Path, layout: _Layout, header: bool, encoding: str,
           ids_as_text: bool) -> pd.DataFrame:
    """The role columns (and, for ``::``, the gaps) as a frame; raises on a bad file."""
    id_dtype = str if ids_as_text else "int64"
    dtype = {layout.field("user"): id_dtype, layout.field("movie"): id_dtype,
             layout.field("rating"): "float64"}
    if "timestamp" in layout.positions:
        dtype[layout.field("timestamp")] = "int64"
    if layout.read_all:
        # Every field is read, so pandas refuses a line with too many. The fields
        # between "::"-halves must be empty; float64 reads empty as NaN.
        usecols = None
        dtype.update({k: "float64" for k in range(layout.num_fields) if k not in dtype})
    else:
        usecols = sorted(dtype)  # pandas then ignores any further fields
    return pd.read_csv(
        path, sep=layout.parser_sep, header=None, names=list(range(layout.num_fields)),
        usecols=usecols, dtype=dtype, skiprows=1 if header else 0, engine="c",
        quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""],
        skip_blank_lines=True, encoding=encoding,
    )


def _read_frame(path: Path, layout: _Layout, header: bool, encoding: str,
                source: str) -> pd.DataFrame:
    """Integer ids if the first lines have them, else text ids; a bad file is located.

    When parsing fails, the line-by-line scan runs at once: it names the bad line of
    a malformed file. Only a file it finds no fault in (integer ids at first, text
    further on) is parsed again with text ids.
    """
    ids_as_text = not _ids_look_integer(path, layout, header, encoding)
    try:
        return _parse(path, layout, header, encoding, ids_as_text)
    except (ValueError, OverflowError, pd.errors.ParserError) as err:
        # UnicodeDecodeError is a ValueError; pandas.errors.EmptyDataError too
        problem = err
    located = _first_bad_line(path, layout, header, encoding, source)
    if located is not None:
        raise located
    if not ids_as_text:
        try:
            return _parse(path, layout, header, encoding, ids_as_text=True)
        except (ValueError, OverflowError, pd.errors.ParserError) as err:
            problem = err
    raise _unreadable(path, layout, source, problem)


def _ids_look_integer(path: Path, layout: _Layout, header: bool, encoding: str,
                      num_lines: int = 1000) -> bool:
    """Whether the ids on the first ``num_lines`` lines are all int64 integers."""
    sep = layout.parser_sep * layout.stride
    blanks = _blank_chars(sep) + "\n"
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number > num_lines:
                break
            text = raw.decode(encoding, errors="replace")
            if (header and number == 1) or not text.strip(blanks):
                continue
            fields = text.split(sep)
            for role in ("user", "movie"):
                token = fields[layout.positions[role]].strip() if (
                    len(fields) > layout.positions[role]) else ""
                if not _is_integer(token) or not -(2**63) <= int(token) < 2**63:
                    return False
    return True


# ------------------------------------------------------------------ line numbers


def _line_numbers(path: Path, header: bool, num_rows: int, sep: str,
                  source: str) -> np.ndarray:
    """1-based line of each row pandas read, shape ``(num_rows,)``, int64.

    pandas skips blank lines (empty, or only spaces, tabs and ``\\r`` that are not
    the separator). When a substring search finds no possible blank line, rows are
    lines. Otherwise the bytes are scanned in blocks for newlines, and only a line
    that starts with a blank byte is looked at further.
    """
    first = 2 if header else 1  # pandas skips physical line 1 for a header, blank or not
    num_lines = _lines_if_none_blank(path, sep)
    if num_lines is not None:  # the common case: no blank line, rows are lines
        if num_lines - first + 1 != num_rows:
            raise _row_count_error(source, num_lines - first + 1, num_rows)
        return np.arange(first, first + num_rows, dtype=np.int64)
    fills = np.ones(256, dtype=bool)  # fills[b]: byte b makes a line non-blank
    fills[[b for b in _BLANK_BYTES if chr(b) not in sep]] = False
    fills[10] = False
    blank_parts, num_lines, tail_filled, tail_bytes = [], 0, False, 0
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BYTES):
            data = np.frombuffer(block, dtype=np.uint8)  # (block_bytes,)
            newline = np.flatnonzero(data == 10)  # (newlines_in_block,)
            if not len(newline):
                tail_filled |= bool(fills[data].any())
                tail_bytes += len(data)
                continue
            # line k of the block runs from just after newline k-1 to newline k
            starts = np.concatenate([[0], newline[:-1] + 1])  # (newlines_in_block,)
            maybe = np.flatnonzero(~fills[data[starts]])  # lines opening with a blank byte
            blank = [k for k in maybe.tolist()
                     if not fills[data[starts[k]:newline[k]]].any()
                     and not (k == 0 and tail_filled)]  # line 0 continues the last tail
            blank_parts.append(num_lines + 1 + np.asarray(blank, dtype=np.int64))
            num_lines += len(newline)
            tail_filled = bool(fills[data[newline[-1] + 1:]].any())
            tail_bytes = len(data) - newline[-1] - 1
    if tail_bytes:  # a last line without a final newline
        num_lines += 1
        if not tail_filled:
            blank_parts.append(np.array([num_lines]))

    blank = np.concatenate(blank_parts) if blank_parts else np.zeros(0, np.int64)
    if len(blank):
        keep = np.ones(num_lines + 1, dtype=bool)  # keep[n]: line n holds a row
        keep[blank] = False
        keep[:first] = False
        numbers = np.flatnonzero(keep).astype(np.int64)
    else:
        numbers = np.arange(first, num_lines + 1, dtype=np.int64)
    if len(numbers) != num_rows:
        raise _row_count_error(source, len(numbers), num_rows)
    return numbers


def _row_count_error(source: str, num_lines: int, num_rows: int) -> DataFormatError:
    return DataFormatError(f"{source}: {num_lines} non-blank lines but the parser read "
                           f"{num_rows} rows (a lone \\r line break?)")


def _lines_if_none_blank(path: Path, sep: str) -> int | None:
    """The number of lines when none can be blank, else None; a substring search.

    A blank line shows as a newline followed by a newline or a blank byte (line 1 is
    checked as if a newline preceded it). A file that does not end in a newline is left
    to the full scan.
    """
    blanks = [b for b in (b" ", b"\t", b"\r") if b.decode() not in sep]
    last, count = b"\n", 0
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BYTES):
            data = last + block
            if b"\n\n" in data or any(b"\n" + b in data for b in blanks):
                return None
            count += block.count(b"\n")
            last = block[-1:]
    return count if last == b"\n" else None


# ----------------------------------------------------------------- locating errors


def _line_problem(text: str, layout: _Layout, sep: str) -> str | None:
    """What is wrong with one non-blank data line, or None (same rules as the reader)."""
    fields = text.split(sep)
    if len(fields) != layout.num_columns:
        return (f"expected {layout.num_columns} {_separator_name(sep)}-separated "
                f"fields, found {len(fields)}")
    if layout.stride > 1:
        lone = next((k for k, f in enumerate(fields) if sep[0] in f), None)
        if lone is not None:
            return f"field {lone + 1} holds a lone {sep[0]!r} (the separator is {sep!r})"
    for role in ("user", "movie"):
        if not fields[layout.positions[role]].strip():
            return f"empty {role} id"
    rating = fields[layout.positions["rating"]].strip()
    try:
        if not math.isfinite(float(rating)):
            return f"rating {rating!r} is not finite"
    except ValueError:
        return f"rating {rating!r} is not a number"
    if "timestamp" in layout.positions:
        stamp = fields[layout.positions["timestamp"]].strip()
        if not _is_integer(stamp):
            return f"timestamp {stamp!r} is not an integer"
        if not -(2**63) <= int(stamp) < 2**63:
            return f"timestamp {stamp!r} is out of range"
    return None


def _first_bad_line(path: Path, layout: _Layout, header: bool, encoding: str,
                    source: str) -> DataFormatError | None:
    """Scan ``path`` line by line; the error for its first bad line, or None."""
    sep = layout.parser_sep * layout.stride
    blanks = _blank_chars(sep)
    with open(path, "rb") as f:  # bytes, decoded per line, so a bad byte has its line
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as err:
                return DataFormatError(f"{source}:{number}: not valid {encoding} text "
                                       f"(byte 0x{raw[err.start]:02x})")
            if number == 1:
                text = text.removeprefix("\ufeff")
            if (header and number == 1) or not text.strip(blanks):
                continue
            why = _line_problem(text, layout, sep)
            if why is not None:
                return DataFormatError(f"{source}:{number}: {why}")
    return None


def _blank_chars(sep: str) -> str:
    """What a line pandas skips as blank may hold: spaces, tabs, ``\\r`` not in ``sep``."""
    return "".join(c for c in " \t\r" if c not in sep)


def _unreadable(path: Path, layout: _Layout, source: str,
                problem: BaseException | None) -> DataFormatError:
    """The error for a file pandas refused though no line is at fault: pandas' reason."""
    if isinstance(problem, pd.errors.EmptyDataError) or not path.stat().st_size:
        return DataFormatError(f"{source}: no ratings (the file is empty or blank)")
    reason = " ".join(str(problem).split()) if problem else "unreadable"
    sep = layout.parser_sep * layout.stride
    return DataFormatError(f"{source}: cannot be read as a {_separator_name(sep)}-"
                           f"separated rating file: {reason}")


# ------------------------------------------------------------------------ ids


def _remap(values: np.ndarray, known: IdIndex | None) -> tuple[np.ndarray, IdIndex]:
    """Indices of raw ``values`` (shape ``(num_ratings,)``) in ``known`` extended.

    New ids are appended in order of first appearance. Work and memory follow the
    number of ratings and of distinct ids, whatever the ids' magnitude.
    """
    codes, uniques = pd.factorize(values, sort=False)  # (num_ratings,), (num_distinct,)
    raw = [str(u) for u in np.asarray(uniques).tolist()]
    index = (known or IdIndex([])).extended(raw)
    if known is None or not len(known):
        return codes.astype(np.int64, copy=False), index  # extended() kept their order
    return index.index_of(raw)[codes], index  # (num_ratings,)


def _text_ids(column: pd.Series, numbers: np.ndarray, role: str,
              source: str) -> np.ndarray:
    """Text ids stripped of surrounding spaces; an empty one is an error."""
    ids = column.str.strip()
    empty = ids.isna().to_numpy() | (ids == "").to_numpy()
    if empty.any():
        raise DataFormatError(f"{source}:{numbers[np.argmax(empty)]}: empty {role} id")
    return ids.to_numpy(dtype=object)


# ---------------------------------------------------------------------- public API


def read_rating_table(
    path: PathLike,
    *,
    sep: str = ",",
    columns: Sequence[str] = MOVIELENS_COLUMNS,
    header: bool = False,
    encoding: str = "utf-8",
    duplicates: str = "error",
    movie_ids: IdIndex | None = None,
    user_ids: IdIndex | None = None,
) -> Ratings:
    """Read a large delimited rating file, one rating per line, vectorized.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its name as given is ``Ratings.source`` and starts every message.
    sep : str, default ","
        Field separator: one character, or one character repeated (``"::"``).
    columns : sequence of str, default ("user", "movie", "rating", "timestamp")
        Role of each field in file order. ``"user"``, ``"movie"`` and ``"rating"``
        appear once, ``"timestamp"`` at most once (integers); any other name marks a
        field that is skipped.
    header : bool, default False
        Whether line 1 names the columns (it is skipped, whatever it says).
    encoding : str, default "utf-8"
        Text encoding (a UTF-8 byte-order mark is accepted).
    duplicates : {"error", "first", "last", "latest", "keep"}, default "error"
        A (user, movie) pair on several lines: raise (listing lines), keep its
        first or last line, keep the largest timestamp, or keep every copy.
    movie_ids, user_ids : IdIndex, optional
        Id maps to extend; new ids are appended in order of first appearance.

    Returns
    -------
    Ratings
        ``num_ratings`` = data lines less dropped duplicates; ``rating`` float64 as
        written (half stars stay 3.5), ``line`` the 1-based line of each rating.

    Raises
    ------
    DataFormatError
        ``file:line: problem`` for a wrong number of fields, an empty id, a rating
        that is not a finite number, a timestamp that is not an integer, text that
        does not decode, or duplicate pairs; ``file: ...`` for a file with no ratings.
    ValueError
        For a malformed ``sep``, ``columns`` or ``duplicates``.
    """
    layout = _layout(sep, columns)
    if duplicates not in ("error", "first", "last", "latest", "keep"):
        raise ValueError(f"duplicates must be error, first, last, latest or keep, "
                         f"got {duplicates!r}")
    if duplicates == "latest" and "timestamp" not in layout.positions:
        raise ValueError("duplicates='latest' needs columns to name 'timestamp'")
    path, source = Path(path), str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such rating file")

    frame = _read_frame(path, layout, header, encoding, source)
    if not len(frame):
        raise DataFormatError(f"{source}: no ratings (the file is empty or blank)")
    numbers = _line_numbers(path, header, len(frame), sep, source)  # (num_ratings,)
    _check_columns(frame, layout, path, header, encoding, source, numbers)

    columns_of = {role: frame[layout.field(role)] for role in layout.positions}
    raw = {}
    for role in ("movie", "user"):
        column = columns_of[role]
        raw[role] = (column.to_numpy() if pd.api.types.is_integer_dtype(column)
                     else _text_ids(column, numbers, role, source))
    movie, movie_ids = _remap(raw["movie"], movie_ids)
    user, user_ids = _remap(raw["user"], user_ids)
    ratings = Ratings(movie, user, columns_of["rating"].to_numpy(np.float64),
                      movie_ids, user_ids, source, numbers)
    timestamp = (columns_of["timestamp"].to_numpy(np.int64)
                 if duplicates == "latest" else None)
    if duplicates != "keep" and _has_repeated_pair(ratings):
        ratings = _handle_duplicates(ratings, duplicates, timestamp)
    logger.info("%s: %d ratings, %d movies, %d users", source, len(ratings),
                ratings.num_movies, ratings.num_users)
    return ratings


def _has_repeated_pair(ratings: Ratings) -> bool:
    """Whether a (user, movie) pair repeats, by one sort.

    Ten times cheaper than the stable ``np.unique`` that then finds which pairs do
    (at 5M ratings: 0.2 s against 3 s), and files rarely have any.
    """
    # (num_ratings,) keys, sorted
    key = np.sort(ratings.movie * max(ratings.num_users, 1) + ratings.user)
    return bool((key[1:] == key[:-1]).any())


def _check_columns(frame: pd.DataFrame, layout: _Layout, path: Path, header: bool,
                   encoding: str, source: str, numbers: np.ndarray) -> None:
    """Vectorized checks of what the parser let through; the first bad line is named."""
    rating = frame[layout.field("rating")].to_numpy()
    bad = ~np.isfinite(rating)  # NaN: a missing field or "nan"; also "inf"
    if layout.read_all and layout.stride > 1:
        gaps = [k for k in range(layout.num_fields) if k % layout.stride]
        bad |= frame[gaps].notna().to_numpy().any(axis=1)  # a lone ':' split a field
    if bad.any():
        located = _first_bad_line(path, layout, header, encoding, source)
        first = int(np.argmax(bad))
        raise located or DataFormatError(
            f"{source}:{numbers[first]}: rating {rating[first]:g} is not finite")
