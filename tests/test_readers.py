"""Tests of deepfactor.data.readers: rating files and the MovieLens movie table."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfactor.data.ratings import IdIndex
from deepfactor.data.readers import (
    DataFormatError,
    read_movie_genres,
    read_movie_titles,
    read_ratings_file,
)


def write(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def error_at(path: Path, line: int, problem: str) -> str:
    """A regex for a DataFormatError message about ``line`` of ``path``."""
    return "^" + re.escape(f"{path}:{line}: ") + problem


# ----------------------------------------------------------------- well-formed files


def test_reads_ids_ratings_and_lines(tmp_path):
    path = write(tmp_path / "r.tsv", "1\t10\t5\t111\n2\t10\t3.5\t112\n1\t20\t1\t113\n")
    ratings = read_ratings_file(path)

    assert len(ratings) == 3
    assert ratings.source == str(path)
    assert ratings.user_ids.raw == ["1", "2"]
    assert ratings.movie_ids.raw == ["10", "20"]
    assert ratings.user_ids.raw_of(ratings.user).tolist() == ["1", "2", "1"]
    assert ratings.movie_ids.raw_of(ratings.movie).tolist() == ["10", "10", "20"]
    assert ratings.rating.dtype == np.float64
    np.testing.assert_array_equal(ratings.rating, [5.0, 3.5, 1.0])
    np.testing.assert_array_equal(ratings.line, [1, 2, 3])


def test_ids_are_exact_tokens(tmp_path):
    path = write(tmp_path / "r.tsv", "007\t1\t4\t0\n7\t1\t3\t0\n  7 \t 01\t2\t0\n")
    ratings = read_ratings_file(path, duplicates="keep")

    assert ratings.user_ids.raw == ["007", "7"]
    assert ratings.movie_ids.raw == ["1", "01"]
    assert ratings.user_ids.raw_of(ratings.user).tolist() == ["007", "7", "7"]


@pytest.mark.parametrize(
    "text",
    [
        "1\t1\t4\t0\r\n2\t1\t3\t0\r\n",  # Windows line endings
        "\ufeff1\t1\t4\t0\n2\t1\t3\t0\n",  # UTF-8 byte-order mark
        "1\t1\t4\t0\n2\t1\t3\t0",  # no final newline
        "1\t1\t4\t0\r\n2\t1\t3\t0",  # both
    ],
    ids=["crlf", "bom", "no-final-newline", "crlf-no-final-newline"],
)
def test_line_endings_and_bom(tmp_path, text):
    ratings = read_ratings_file(write(tmp_path / "r.tsv", text))

    assert ratings.user_ids.raw == ["1", "2"]
    assert ratings.movie_ids.raw == ["1"]
    np.testing.assert_array_equal(ratings.rating, [4.0, 3.0])


def test_blank_lines_are_skipped_and_lines_still_counted(tmp_path):
    path = write(tmp_path / "r.tsv", "\n1\t1\t4\t0\n\n  \n\t\n2\t1\t3\t0\n\n")
    ratings = read_ratings_file(path)

    assert len(ratings) == 2
    np.testing.assert_array_equal(ratings.line, [2, 6])


@pytest.mark.parametrize(
    "header",
    [
        "user\tmovie\trating\ttimestamp",
        "userId\tmovieId\tRating\ttimestamp",
        "a\tb\t rating \t",
    ],
)
def test_a_header_line_is_skipped(tmp_path, header):
    text = f"\ufeff\n{header}\r\n1\t1\t4\t0\r\n2\t1\t3\t0\r\n"
    ratings = read_ratings_file(write(tmp_path / "r.tsv", text))
    np.testing.assert_array_equal(ratings.rating, [4.0, 3.0])
    np.testing.assert_array_equal(ratings.line, [3, 4])
    assert ratings.user_ids.raw == ["1", "2"]


def test_only_a_header_is_a_file_without_ratings(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: no ratings")):
        read_ratings_file(path, sep=",")


def test_a_header_like_line_later_in_the_file_is_an_error(tmp_path):
    text = "1\t1\t4\t0\nuser\tmovie\trating\ttimestamp\n"
    path = write(tmp_path / "r.tsv", text)
    expected = error_at(path, 2, "rating 'rating' is not a number")
    with pytest.raises(DataFormatError, match=expected):
        read_ratings_file(path)


def test_other_separator_and_column_order(tmp_path):
    path = write(tmp_path / "r.dat", "m1::4.5::u1\nm2::2::u1\n")
    ratings = read_ratings_file(path, sep="::", columns=("movie", "rating", "user"))

    assert ratings.movie_ids.raw == ["m1", "m2"]
    assert ratings.user_ids.raw == ["u1"]
    np.testing.assert_array_equal(ratings.rating, [4.5, 2.0])


def test_extends_existing_id_maps(tmp_path):
    movie_ids, user_ids = IdIndex(["5", "6"]), IdIndex(["9"])
    path = write(tmp_path / "r.tsv", "3\t6\t1\t0\n9\t7\t2\t0\n")
    ratings = read_ratings_file(path, movie_ids=movie_ids, user_ids=user_ids)

    assert ratings.movie_ids.raw == ["5", "6", "7"]
    assert ratings.user_ids.raw == ["9", "3"]
    np.testing.assert_array_equal(ratings.movie, [1, 2])
    np.testing.assert_array_equal(ratings.user, [1, 0])
    assert movie_ids.raw == ["5", "6"]  # the given maps are left as they were


def test_reads_100k_lines_quickly(tmp_path):
    rng = np.random.default_rng(0)
    num_ratings = 100_000
    pairs = rng.choice(2000 * 1000, size=num_ratings, replace=False)
    lines = [
        f"{p // 1000}\t{p % 1000}\t{r}\t881250949\n"
        for p, r in zip(pairs, rng.integers(1, 6, num_ratings))
    ]
    path = write(tmp_path / "big.tsv", "".join(lines))

    seconds = []
    for _ in range(3):  # the best of three, so that a busy machine does not fail it
        start = time.perf_counter()
        ratings = read_ratings_file(path)
        seconds.append(time.perf_counter() - start)
    assert len(ratings) == num_ratings
    assert min(seconds) < 1.0, f"reading 100k lines took {min(seconds):.2f} s"


# ----------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("3\t1\t4", "expected 4 tab-separated fields, found 3"),
        ("3\t1\t4\t0\t9", "expected 4 tab-separated fields, found 5"),
        ("3 1 4 0", "expected 4 tab-separated fields, found 1"),
        ("3\t1\tabc\t0", "rating 'abc' is not a number"),
        ("3\t1\t\t0", "rating '' is not a number"),
        ("3\t1\tnan\t0", "rating 'nan' is NaN"),
        ("3\t1\tinf\t0", "rating 'inf' is infinite"),
        ("3\t1\t-Infinity\t0", "rating '-Infinity' is infinite"),
        ("\t1\t4\t0", "empty user id"),
        ("3\t  \t4\t0", "empty movie id"),
    ],
)
def test_bad_line_is_named_with_file_and_line(tmp_path, bad_line, problem):
    text = "1\t1\t4\t0\n\n2\t1\t5\t0\n" + bad_line + "\n4\t1\t2\t0\n"
    path = write(tmp_path / "u1.base", text)

    with pytest.raises(DataFormatError, match=error_at(path, 4, re.escape(problem))):
        read_ratings_file(path)


def test_format_error_is_a_value_error():
    assert issubclass(DataFormatError, ValueError)


@pytest.mark.parametrize("text", ["", "\n\n", "\r\n  \n"], ids=["empty", "blank", "ws"])
def test_file_without_ratings_is_an_error(tmp_path, text):
    path = write(tmp_path / "empty.tsv", text)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: no ratings")):
        read_ratings_file(path)


def test_undecodable_text_names_the_line(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_bytes(b"1\t1\t4\t0\n2\t\xff\t4\t0\n")
    with pytest.raises(DataFormatError, match=error_at(path, 2, "not valid utf-8-sig")):
        read_ratings_file(path)


def test_duplicates_are_an_error_listing_their_lines(tmp_path):
    text = "1\t1\t4\t0\n2\t1\t3\t0\n1\t1\t5\t0\n1\t2\t5\t0\n2\t1\t1\t0\n1\t1\t2\t0\n"
    path = write(tmp_path / "r.tsv", text)

    with pytest.raises(DataFormatError) as info:
        read_ratings_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: 3 duplicate (user, movie) pairs")
    assert "user '1' movie '1' on lines 1, 3, 6" in message
    assert "user '2' movie '1' on lines 2, 5" in message


@pytest.mark.parametrize(
    ("duplicates", "kept"),
    [("first", [4.0, 3.0, 5.0]), ("last", [5.0, 2.0, 1.0]), ("keep", [4, 3, 5, 2, 1])],
)
def test_duplicates_can_be_resolved(tmp_path, duplicates, kept):
    text = "1\t1\t4\t0\n2\t1\t3\t0\n1\t2\t5\t0\n1\t1\t2\t0\n2\t1\t1\t0\n"
    ratings = read_ratings_file(write(tmp_path / "r.tsv", text), duplicates=duplicates)
    np.testing.assert_array_equal(np.sort(ratings.rating), np.sort(kept))


def test_latest_keeps_the_largest_timestamp_and_of_ties_the_later_line(tmp_path):
    text = (
        "1\t1\t4\t300\n"  # pair (1, 1): latest by timestamp, though not last
        "2\t1\t3\t100\n"  # pair (2, 1): tied at 100 with line 5
        "1\t1\t2\t200\n"
        "1\t2\t5\t50\n"  # pair (1, 2): no duplicate
        "2\t1\t1\t100\n"  # the later of the tie wins
        "1\t1\t3\t-7\n"
    )
    ratings = read_ratings_file(write(tmp_path / "r.tsv", text), duplicates="latest")

    np.testing.assert_array_equal(ratings.line, [1, 4, 5])  # file order kept
    np.testing.assert_array_equal(ratings.rating, [4.0, 5.0, 1.0])
    assert ratings.user_ids.raw_of(ratings.user).tolist() == ["1", "1", "2"]


def test_latest_reads_timestamps_in_any_column_order(tmp_path):
    text = "m1,50,u1,4\nm1,70,u1,2\nm1,60,u1,5\n"
    columns = ("movie", "timestamp", "user", "rating")
    path = write(tmp_path / "r.csv", text)
    ratings = read_ratings_file(path, sep=",", columns=columns, duplicates="latest")
    np.testing.assert_array_equal(ratings.rating, [2.0])
    np.testing.assert_array_equal(ratings.line, [2])


@pytest.mark.parametrize("stamp", ["12.5", "soon", "", "1e9", "0x10"])
def test_latest_needs_integer_timestamps_and_names_the_line(tmp_path, stamp):
    text = f"1\t1\t4\t881250949\n\n2\t1\t3\t{stamp}\n"
    path = write(tmp_path / "u1.base", text)
    problem = re.escape(f"timestamp {stamp!r} is not an integer")
    with pytest.raises(DataFormatError, match=error_at(path, 3, problem)):
        read_ratings_file(path, duplicates="latest")
    assert len(read_ratings_file(path)) == 2  # other policies do not read them


def test_latest_timestamp_beyond_int64_is_named(tmp_path):
    path = write(tmp_path / "r.tsv", "1\t1\t4\t1\n1\t2\t4\t" + "9" * 30 + "\n")
    expected = error_at(path, 2, "timestamp '9+' is out of range")
    with pytest.raises(DataFormatError, match=expected):
        read_ratings_file(path, duplicates="latest")


def test_latest_without_a_timestamp_column_is_refused(tmp_path):
    path = write(tmp_path / "r.tsv", "1\t1\t4\n")
    with pytest.raises(ValueError, match="needs columns to name 'timestamp'"):
        read_ratings_file(
            path, columns=("user", "movie", "rating"), duplicates="latest"
        )


@pytest.mark.parametrize(
    "columns",
    [("user", "movie"), ("user", "user", "rating"), ("a", "movie", "rating")],
)
def test_malformed_columns_are_refused(tmp_path, columns):
    path = write(tmp_path / "r.tsv", "1\t1\t4\t0\n")
    with pytest.raises(ValueError, match="columns must name"):
        read_ratings_file(path, columns=columns)


# ------------------------------------------------------------------ property tests

ID_ALPHABET = st.characters(
    categories=("L", "N"), include_characters="-_.@:", exclude_characters="\t"
)
raw_ids = st.text(ID_ALPHABET, min_size=1, max_size=6)
finite = st.floats(allow_nan=False, allow_infinity=False)
rows_strategy = st.lists(
    st.tuples(raw_ids, raw_ids, finite, st.integers(0, 2**40)),
    min_size=1,
    max_size=25,
    unique_by=lambda row: (row[0], row[1]),
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    rows=rows_strategy,
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    final_newline=st.booleans(),
    blank_before=st.lists(st.booleans(), min_size=25, max_size=25),
    pad=st.booleans(),
)
def test_well_formed_files_round_trip(
    rows, newline, bom, final_newline, blank_before, pad
):
    spaces = " " if pad else ""
    lines, expected_line = [], []
    for (user, movie, rating, stamp), blank in zip(rows, blank_before):
        if blank:
            lines.append(spaces)
        lines.append(f"{spaces}{user}{spaces}\t{movie}\t{rating!r}\t{stamp}")
        expected_line.append(len(lines))
    text = newline.join(lines) + (newline if final_newline else "")
    text = ("\ufeff" if bom else "") + text

    with tempfile.TemporaryDirectory() as folder:
        ratings = read_ratings_file(write(Path(folder) / "r.tsv", text))

    assert ratings.user_ids.raw_of(ratings.user).tolist() == [r[0] for r in rows]
    assert ratings.movie_ids.raw_of(ratings.movie).tolist() == [r[1] for r in rows]
    np.testing.assert_array_equal(ratings.rating, [r[2] for r in rows])
    np.testing.assert_array_equal(ratings.line, expected_line)


CORRUPTIONS = {
    "missing field": (lambda f: f[:3], "expected 4 tab-separated fields, found 3"),
    "extra field": (lambda f: f + ["x"], "expected 4 tab-separated fields, found 5"),
    "text rating": (lambda f: [f[0], f[1], "4 stars", f[3]], "rating '4 stars' is not"),
    "nan rating": (lambda f: [f[0], f[1], "NaN", f[3]], "rating 'NaN' is NaN"),
    "inf rating": (lambda f: [f[0], f[1], "inf", f[3]], "rating 'inf' is infinite"),
    "empty user": (lambda f: [" "] + f[1:], "empty user id"),
}


@settings(max_examples=150, deadline=None, database=None)
@given(
    rows=rows_strategy,
    where=st.integers(min_value=0),
    corruption=st.sampled_from(sorted(CORRUPTIONS)),
)
def test_single_corrupted_line_is_reported_with_its_line(rows, where, corruption):
    corrupt, problem = CORRUPTIONS[corruption]
    bad = where % len(rows)
    lines = [[u, m, repr(r), str(s)] for u, m, r, s in rows]
    lines[bad] = corrupt(lines[bad])
    text = "\n".join("\t".join(fields) for fields in lines) + "\n"

    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / "r.tsv", text)
        expected = error_at(path, bad + 1, re.escape(problem))
        with pytest.raises(DataFormatError, match=expected):
            read_ratings_file(path)


# ----------------------------------------------------------------------- movie table


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
    "2|Amélie (2001)|01-Jan-2001||http://y|1|0|1\n"
    "\n"
    "3|Heat (1995)|01-Jan-1995||http://z|0|1|0"
)


def test_movie_titles_are_read_as_latin1(tmp_path):
    titles = read_movie_titles(write(tmp_path / "u.item", U_ITEM, encoding="latin-1"))
    assert titles == {
        "1": "Toy Story (1995)",
        "2": "Amélie (2001)",
        "3": "Heat (1995)",
    }


def test_repeated_movie_id_is_an_error(tmp_path):
    text = U_ITEM + "\n2|Again|||u|0|0|0\n"
    path = write(tmp_path / "u.item", text, encoding="latin-1")
    expected = error_at(path, 5, "movie id '2' already on line 2")
    with pytest.raises(DataFormatError, match=expected):
        read_movie_titles(path)


def test_movie_genres_use_u_genre(tmp_path):
    write(tmp_path / "u.genre", "Drama|0\nAction|1\nComedy|2\n\n")
    path = write(tmp_path / "u.item", U_ITEM, encoding="latin-1")
    ids, genres, flags = read_movie_genres(path)

    assert ids == ["1", "2", "3"]
    assert genres == ["Drama", "Action", "Comedy"]
    assert flags.shape == (3, 3) and flags.dtype == np.int64
    np.testing.assert_array_equal(flags, [[0, 0, 1], [1, 0, 1], [0, 1, 0]])


def test_movie_genres_without_u_genre_are_named_by_position(tmp_path):
    path = write(tmp_path / "u.item", U_ITEM, encoding="latin-1")
    _, genres, flags = read_movie_genres(path)
    assert genres == ["genre_0", "genre_1", "genre_2"]
    assert flags.shape == (3, 3)


def test_bad_genre_flag_is_named(tmp_path):
    text = U_ITEM.replace("|1|0|1\n", "|1|2|1\n")
    path = write(tmp_path / "u.item", text, encoding="latin-1")
    with pytest.raises(DataFormatError, match=error_at(path, 2, "genre flag '2'")):
        read_movie_genres(path)


# --------------------------------------------------------------------- real files


@pytest.mark.data
def test_real_u_data(ml100k_dir):
    ratings = read_ratings_file(ml100k_dir / "u.data")
    assert len(ratings) == 100_000
    assert (ratings.num_movies, ratings.num_users) == (1682, 943)
    assert set(np.unique(ratings.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.data
def test_real_movie_table(ml100k_dir):
    titles = read_movie_titles(ml100k_dir / "u.item")
    ids, genres, flags = read_movie_genres(ml100k_dir / "u.item")

    assert len(titles) == 1682 and titles["1"] == "Toy Story (1995)"
    assert ids == list(titles)
    assert len(genres) == 19 and genres[0] == "unknown" and "Film-Noir" in genres
    assert flags.shape == (1682, 19)
    assert flags.sum(axis=1).min() >= 1  # every movie has a genre, if only "unknown"
