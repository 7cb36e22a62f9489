"""Tests of deepfactor.data.tables (large rating files) and data.movies (movie files).

Every file is written by the test itself, in the layout of the MovieLens release it
stands for: ``ratings.dat`` (1M, 10M), ``ratings.csv`` (20M, 25M, latest-small),
``movies.dat`` and ``movies.csv``.
"""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from deepfactor.data.movies import read_movie_table, read_movies_csv, read_movies_dat
from deepfactor.data.ratings import IdIndex
from deepfactor.data.readers import DataFormatError
from deepfactor.data.tables import read_rating_table

HEADER = "userId,movieId,rating,timestamp\n"


def write(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def error_at(path: Path, line: int, problem: str) -> str:
    return "^" + re.escape(f"{path}:{line}: ") + problem


def read_csv(path: Path, **kwargs):
    return read_rating_table(path, sep=",", header=True, **kwargs)


# ------------------------------------------------------------------ good files


def test_ratings_dat_with_double_colons(tmp_path):
    path = write(tmp_path / "ratings.dat",
                 "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    ratings = read_rating_table(path, sep="::")

    assert ratings.user_ids.raw == ["1", "2"]
    assert ratings.movie_ids.raw == ["1193", "661"]
    assert ratings.movie_ids.raw_of(ratings.movie).tolist() == ["1193", "661", "1193"]
    np.testing.assert_array_equal(ratings.rating, [5.0, 3.0, 4.0])
    np.testing.assert_array_equal(ratings.line, [1, 2, 3])
    assert ratings.source == str(path)


def test_ratings_csv_with_header_keeps_half_stars(tmp_path):
    path = write(tmp_path / "ratings.csv",
                 HEADER + "1,296,5.0,1147880044\n1,306,3.5,1147868817\n2,296,0.5,1147868828\n")
    ratings = read_csv(path)

    np.testing.assert_array_equal(ratings.rating, [5.0, 3.5, 0.5])
    np.testing.assert_array_equal(ratings.line, [2, 3, 4])  # line 1 is the header
    assert ratings.rating.dtype == np.float64


def test_line_numbers_skip_blank_lines_crlf_and_bom(tmp_path):
    path = write(tmp_path / "ratings.csv",
                 "\ufeff" + HEADER.replace("\n", "\r\n") + "1,2,4,0\r\n\r\n   \r\n3,4,5,0\r\n"
                 "\n5,6,1,0")  # no final newline
    ratings = read_csv(path)
    np.testing.assert_array_equal(ratings.line, [2, 5, 7])
    np.testing.assert_array_equal(ratings.rating, [4.0, 5.0, 1.0])


@pytest.mark.parametrize("block_bytes", [1, 2, 5, 13, 1 << 26])
@pytest.mark.parametrize("seed", range(4))
def test_line_numbers_agree_with_a_line_by_line_count(tmp_path, monkeypatch, block_bytes,
                                                      seed):
    """Blank lines anywhere, across scan blocks of any size: the numbers are the lines'."""
    from deepfactor.data import tables

    monkeypatch.setattr(tables, "_SCAN_BYTES", block_bytes)
    rng = np.random.default_rng(seed)
    lines = [HEADER.strip()]
    blank_share = 0.3 if seed < 2 else 0.0  # seeds 2, 3: no blank line, the quick path
    for k in range(40):
        lines.append(str(rng.choice(["", " ", "\t", " \r"])) if rng.random() < blank_share
                     else f"{k},{k % 7},{1 + k % 5},{k}")
    text = "\n".join(lines) + ("\n" if seed % 2 else "")
    path = write(tmp_path / "ratings.csv", text)
    expected = [n for n, line in enumerate(text.split("\n"), start=1)
                if n > 1 and line.strip(" \t\r")]

    np.testing.assert_array_equal(read_csv(path).line, expected)


def test_generic_file_with_column_mapping_and_skipped_fields(tmp_path):
    path = write(tmp_path / "log.tsv", "10\tx\tu1\t2.5\n20\ty\tu2\t4\n")
    ratings = read_rating_table(path, sep="\t", columns=["movie", "note", "user", "rating"])

    assert ratings.user_ids.raw == ["u1", "u2"]
    assert ratings.movie_ids.raw == ["10", "20"]
    np.testing.assert_array_equal(ratings.rating, [2.5, 4.0])


def test_ids_near_2_to_the_31_and_beyond_int64_are_remapped(tmp_path):
    big = [2**31 - 1, 2**31, 2**31 + 1]
    huge = "123456789012345678901234567890"  # past int64: read as text
    text = "".join(f"{u},{m},3,0\n" for u, m in zip(big, [7, 2**40, 7]))
    path = write(tmp_path / "r.csv", text + f"{huge},7,4,0\n")
    ratings = read_rating_table(path)

    assert ratings.num_users == 4 and ratings.num_movies == 2
    assert ratings.user_ids.raw == [str(b) for b in big] + [huge]
    assert ratings.movie_ids.raw == ["7", str(2**40)]
    assert ratings.user.max() == 3 and ratings.movie.max() == 1  # contiguous 0..n-1


def test_string_ids_are_exact_tokens_stripped(tmp_path):
    path = write(tmp_path / "r.csv", "alice, tt0111161 ,4,0\nbob,tt0111161,2,0\n"
                 "Alice,tt0068646,5,0\n")
    ratings = read_rating_table(path)
    assert ratings.user_ids.raw == ["alice", "bob", "Alice"]
    assert ratings.movie_ids.raw == ["tt0111161", "tt0068646"]


def test_text_ids_after_many_integer_lines(tmp_path):
    """The first lines suggest integer ids; a later text id still reads, as text."""
    rows = "".join(f"{k},{k % 9},3,0\n" for k in range(1500))
    path = write(tmp_path / "r.csv", rows + "guest-1,3,4,0\n")
    ratings = read_rating_table(path)
    assert len(ratings) == 1501 and ratings.user_ids.raw[-1] == "guest-1"
    assert ratings.user_ids.raw[:3] == ["0", "1", "2"]


def test_memory_does_not_grow_with_the_largest_id(tmp_path):
    """Peak traced memory with ids up to 2**62 is that of ids up to 100."""
    def peak(scale: int) -> int:
        rows = "".join(f"{(u * scale) % (2**62)},{m * scale},3,0\n"
                       for u, m in zip(range(1, 2001), range(100, 2100)))
        path = write(tmp_path / f"r{scale}.csv", rows)
        tracemalloc.start()
        read_rating_table(path)
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    small, large = peak(1), peak(2**40)
    # a dense array indexed by the largest id would need 2**62 entries
    assert large < 2 * small + 1_000_000


def test_extends_given_id_maps(tmp_path):
    path = write(tmp_path / "r.csv", "5,50,3,0\n9,90,4,0\n")
    movies, users = IdIndex(["90", "70"]), IdIndex(["9"])
    ratings = read_rating_table(path, movie_ids=movies, user_ids=users)

    assert ratings.movie_ids.raw == ["90", "70", "50"]
    assert ratings.user_ids.raw == ["9", "5"]
    assert ratings.movie_ids.raw_of(ratings.movie).tolist() == ["50", "90"]
    assert ratings.user_ids.raw_of(ratings.user).tolist() == ["5", "9"]


def test_duplicates_latest_keeps_the_newest(tmp_path):
    path = write(tmp_path / "r.csv", HEADER + "1,2,3,100\n1,2,5,50\n1,3,4,1\n")
    with pytest.raises(DataFormatError, match=error_at(path, 3, "1 duplicate")):
        read_csv(path)
    ratings = read_csv(path, duplicates="latest")
    np.testing.assert_array_equal(ratings.rating, [3.0, 4.0])
    np.testing.assert_array_equal(ratings.line, [2, 4])


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize("bad, line, problem", [
    ("1,2,3.5,9,7", 3, "expected 4 comma-separated fields, found 5"),
    ("1,2,3.5", 3, "expected 4 comma-separated fields, found 3"),
    ("1,2,four,9", 3, "rating 'four' is not a number"),
    ("1,2,nan,9", 3, "rating 'nan' is not finite"),
    ("1,2,inf,9", 3, "rating 'inf' is not finite"),
    ("1,,3,9", 3, "empty movie id"),
    (" ,2,3,9", 3, "empty user id"),
    ("1,2,3,9.5", 3, "timestamp '9.5' is not an integer"),
])
def test_malformed_csv_line_is_named(tmp_path, bad, line, problem):
    path = write(tmp_path / "ratings.csv", HEADER + "7,8,4,1\n" + bad + "\n9,9,1,1\n")
    with pytest.raises(DataFormatError, match=error_at(path, line, re.escape(problem))):
        read_csv(path)


@pytest.mark.parametrize("bad, problem", [
    ("2::10:x:5::7", "expected 4 '::'-separated fields, found 3"),
    ("2::10::5::7::1", "expected 4 '::'-separated fields, found 5"),
    ("2::10::5:::7", "field 4 holds a lone ':'"),
    ("2::10::x::7", "rating 'x' is not a number"),
])
def test_malformed_dat_line_is_named(tmp_path, bad, problem):
    path = write(tmp_path / "ratings.dat", "1::10::3::9\n\n" + bad + "\n")
    with pytest.raises(DataFormatError, match=error_at(path, 3, re.escape(problem))):
        read_rating_table(path, sep="::")


def test_bad_line_after_string_ids_is_found(tmp_path):
    path = write(tmp_path / "r.csv", "a,b,3,0\nc,d,x,0\n")
    with pytest.raises(DataFormatError, match=error_at(path, 2, "rating 'x'")):
        read_rating_table(path)


def test_undecodable_text_names_the_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"a,b,3,0\nc\xff,d,4,0\n")
    with pytest.raises(DataFormatError, match=error_at(path, 2, "not valid utf-8")):
        read_rating_table(path)
    assert read_rating_table(path, encoding="latin-1").user_ids.raw == ["a", "c\xff"]


@pytest.mark.parametrize("text", ["", "\n\n", HEADER])
def test_file_without_ratings(tmp_path, text):
    path = write(tmp_path / "r.csv", text)
    with pytest.raises(DataFormatError, match="no ratings"):
        read_csv(path)


def test_bad_arguments_are_value_errors(tmp_path):
    path = write(tmp_path / "r.csv", "1,2,3,4\n")
    with pytest.raises(ValueError, match="repeat one character"):
        read_rating_table(path, sep=", ")
    with pytest.raises(ValueError, match="'rating' exactly once"):
        read_rating_table(path, columns=["user", "movie", "stars", "timestamp"])
    with pytest.raises(ValueError, match="needs columns to name 'timestamp'"):
        read_rating_table(path, columns=["user", "movie", "rating", "t"],
                          duplicates="latest")
    with pytest.raises(FileNotFoundError):
        read_rating_table(tmp_path / "missing.csv")


# ------------------------------------------------------------------ movie files


def test_movies_dat_titles_with_colons_latin1(tmp_path):
    path = write(tmp_path / "movies.dat",
                 "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                 "260::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
                 "9::Caf\xe9: Part 2:::Drama\n", encoding="latin-1")
    table = read_movies_dat(path)

    assert table.titles == {"1": "Toy Story (1995)",
                            "260": "Star Wars: Episode IV - A New Hope (1977)",
                            "9": "Caf\xe9: Part 2:"}
    assert table.genres["1"] == ("Animation", "Children's", "Comedy")
    assert table.genres["9"] == ("Drama",)


def test_movies_dat_of_unknown_encoding_tries_utf8_then_latin1(tmp_path):
    utf8 = write(tmp_path / "a.dat", "1::Am\xe9lie (2001)::Comedy\n")
    latin = write(tmp_path / "b.dat", "1::Am\xe9lie (2001)::Comedy\n", encoding="latin-1")
    assert read_movies_dat(utf8, encoding=None).titles["1"] == "Am\xe9lie (2001)"
    assert read_movies_dat(latin, encoding=None).titles["1"] == "Am\xe9lie (2001)"
    with pytest.raises(DataFormatError, match=error_at(latin, 1, "not valid utf-8")):
        read_movies_dat(latin, encoding="utf-8")


def test_movies_csv_quoted_titles_and_no_genres(tmp_path):
    path = write(tmp_path / "movies.csv",
                 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                 '11,"American President, The (1995)",Comedy|Drama\n'
                 '12,"Say ""Hi"", Bob (2001)",(no genres listed)\n')
    table = read_movie_table(path)

    assert table.titles["11"] == "American President, The (1995)"
    assert table.titles["12"] == 'Say "Hi", Bob (2001)'
    assert table.genres["12"] == ()
    assert list(table.titles) == ["1", "11", "12"]


@pytest.mark.parametrize("body, line, problem", [
    ('1,A,Drama\n"2","B\nC",Drama\n3,D\n', 5, "expected 3 comma-separated fields"),
    ("1,A,Drama\n1,B,Drama\n", 3, "movie id '1' already on line 2"),
    (",A,Drama\n", 2, "empty movie id"),
])
def test_movies_csv_bad_record_is_named(tmp_path, body, line, problem):
    path = write(tmp_path / "movies.csv", "movieId,title,genres\n" + body)
    with pytest.raises(DataFormatError, match=error_at(path, line, problem)):
        read_movies_csv(path)


def test_movies_dat_bad_line_is_named(tmp_path):
    path = write(tmp_path / "movies.dat", "1::A::Drama\n2::B\n")
    with pytest.raises(DataFormatError, match=error_at(path, 2, "expected 'id::title")):
        read_movies_dat(path)
