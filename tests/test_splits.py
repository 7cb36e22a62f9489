"""Tests of deepfactor.data.splits: canonical split files and the validation carve."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfactor.data.ratings import Ratings
from deepfactor.data.readers import DataFormatError, read_ratings_file
from deepfactor.data.splits import SPLIT_NAMES, SPLITS, carve_validation, load_split


def write_ratings(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    path.write_text("".join(f"{u}\t{m}\t{r}\t0\n" for u, m, r in rows))
    return path


BASE = [("u1", "m1", 4), ("u2", "m1", 3), ("u1", "m2", 5), ("u3", "m3", 1)]
TEST = [("u2", "m2", 2), ("u9", "m1", 4), ("u1", "m7", 3), ("u8", "m8", 5)]


@pytest.fixture
def split_dir(tmp_path) -> Path:
    write_ratings(tmp_path / "u1.base", BASE)
    write_ratings(tmp_path / "u1.test", TEST)
    write_ratings(tmp_path / "u.data", BASE + TEST)
    return tmp_path


# ---------------------------------------------------------------------- load_split


def test_split_names():
    assert SPLITS == ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
    assert SPLIT_NAMES == SPLITS + ("all",)


def test_train_and_test_share_id_maps(split_dir):
    split = load_split(split_dir, "u1")

    assert split.name == "u1"
    assert split.train.movie_ids is split.test.movie_ids
    assert split.train.user_ids is split.test.user_ids
    # base ids in order of first appearance, then the ids only the test file has
    assert split.train.movie_ids.raw == ["m1", "m2", "m3", "m7", "m8"]
    assert split.train.user_ids.raw == ["u1", "u2", "u3", "u9", "u8"]


def test_reading_test_changes_nothing_but_appended_ids(split_dir):
    alone = read_ratings_file(split_dir / "u1.base")
    train = load_split(split_dir, "u1").train

    for name in ("movie", "user", "rating", "line"):
        np.testing.assert_array_equal(getattr(train, name), getattr(alone, name))
    assert train.source == alone.source
    assert train.movie_ids.raw[: alone.num_movies] == alone.movie_ids.raw
    assert train.user_ids.raw[: alone.num_users] == alone.user_ids.raw


def test_cold_start_test_rows_are_kept(split_dir):
    split = load_split(split_dir, "u1")
    test = split.test

    assert len(test) == len(TEST)
    triples = list(
        zip(
            test.user_ids.raw_of(test.user),
            test.movie_ids.raw_of(test.movie),
            test.rating,
        )
    )
    assert triples == [(u, m, float(r)) for u, m, r in TEST]
    # u9, u8, m7, m8 have no training ratings
    assert split.train.user_counts().tolist() == [2, 1, 1, 0, 0]
    assert split.train.movie_counts().tolist() == [2, 1, 1, 0, 0]


def test_all_has_no_test_part(split_dir):
    split = load_split(split_dir, "all")
    assert split.test is None and split.name == "all"
    assert len(split.train) == len(BASE) + len(TEST)
    assert split.train.source == str(split_dir / "u.data")


def test_split_sharing_pairs_is_an_error(tmp_path):
    write_ratings(tmp_path / "u2.base", BASE)
    write_ratings(tmp_path / "u2.test", [("u5", "m1", 1), BASE[2], BASE[0]])
    expected = re.escape(f"{tmp_path / 'u2.test'}:2: 2 (user, movie) pairs are also in")

    with pytest.raises(DataFormatError, match=expected) as info:
        load_split(tmp_path, "u2")
    assert "line 3 (user 'u1', movie 'm1')" in str(info.value)


def test_unknown_split_and_missing_file(split_dir):
    with pytest.raises(ValueError, match="unknown split 'u6'"):
        load_split(split_dir, "u6")
    with pytest.raises(FileNotFoundError):
        load_split(split_dir, "ua")


def test_bad_test_file_is_reported_as_file_line(split_dir):
    (split_dir / "u1.test").write_text("u1\tm9\t4\t0\nu2\tm9\tfour\t0\n")
    expected = re.escape(f"{split_dir / 'u1.test'}:2: rating 'four' is not a number")
    with pytest.raises(DataFormatError, match=expected):
        load_split(split_dir, "u1")


def test_duplicate_policy_applies_to_both_files(tmp_path):
    (tmp_path / "u1.base").write_text("u1\tm1\t4\t10\nu1\tm1\t2\t20\nu2\tm1\t3\t5\n")
    (tmp_path / "u1.test").write_text("u3\tm1\t5\t9\nu3\tm1\t1\t8\n")

    with pytest.raises(DataFormatError, match="u1.base:2: 1 duplicate"):
        load_split(tmp_path, "u1")
    split = load_split(tmp_path, "u1", duplicates="latest")
    assert split.train.rating.tolist() == [2.0, 3.0]
    assert split.test.rating.tolist() == [5.0]  # timestamp 9 beats 8


# ------------------------------------------------------------------ carve_validation


def many_users(num_users: int = 40, seed: int = 0) -> Ratings:
    """Ratings of users with 1..num_users ratings each, in shuffled file order."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(num_users), np.arange(1, num_users + 1))
    movie = np.concatenate([np.arange(k) for k in range(1, num_users + 1)])
    order = rng.permutation(len(user))
    return Ratings.from_raw(
        movie[order],
        user[order],
        rng.integers(1, 6, len(user)).astype(float),
        line=np.arange(1, len(user) + 1),
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_carve_takes_rounded_share_of_each_user(seed, fraction):
    train = many_users()
    fit, validation = carve_validation(train, fraction, seed)

    counts = train.user_counts()
    wanted = np.minimum(np.rint(fraction * counts), np.maximum(counts - 1, 0))
    np.testing.assert_array_equal(validation.user_counts(), wanted)
    np.testing.assert_array_equal(fit.user_counts() + validation.user_counts(), counts)
    assert (fit.user_counts() >= 1).all()  # every user keeps a rating to fit on


@pytest.mark.parametrize("seed", range(8))
def test_carve_partitions_train_and_keeps_id_maps(seed):
    train = many_users()
    fit, validation = carve_validation(train, 0.2, seed)

    assert fit.movie_ids is train.movie_ids and validation.user_ids is train.user_ids
    lines = np.concatenate([fit.line, validation.line])
    np.testing.assert_array_equal(np.sort(lines), train.line)
    # each part keeps the original order, and each rating keeps its values
    assert (np.diff(fit.line) > 0).all() and (np.diff(validation.line) > 0).all()
    for part in (fit, validation):
        position = part.line - 1
        np.testing.assert_array_equal(part.rating, train.rating[position])
        np.testing.assert_array_equal(part.user, train.user[position])


def test_carve_is_deterministic_for_a_seed():
    train = many_users()
    first = carve_validation(train, 0.3, 123)[1]
    again = carve_validation(train, 0.3, 123)[1]
    other = carve_validation(train, 0.3, 124)[1]

    np.testing.assert_array_equal(first.line, again.line)
    assert not np.array_equal(first.line, other.line)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_carve_refuses_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        carve_validation(many_users(3), fraction, 0)


# --------------------------------------------------------------------- real files


def pandas_split(folder: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The base and test files read independently of deepfactor, ids as strings."""
    names = ["user", "movie", "rating", "timestamp"]
    base, test = (
        pd.read_csv(folder / f"{name}.{part}", sep="\t", names=names, dtype=str)
        for part in ("base", "test")
    )
    return base, test


@pytest.mark.data
def test_real_u1_split(ml100k_dir):
    split = load_split(ml100k_dir, "u1")
    base, test = pandas_split(ml100k_dir, "u1")
    cold = ~test["movie"].isin(base["movie"]) | ~test["user"].isin(base["user"])

    assert (len(split.train), len(split.test)) == (80_000, 20_000)
    assert split.train.num_users == 943
    assert split.train.num_movies == len(set(base["movie"]) | set(test["movie"]))

    train_movies = np.bincount(split.train.movie, minlength=split.test.num_movies)
    train_users = np.bincount(split.train.user, minlength=split.test.num_users)
    ours = (train_movies[split.test.movie] == 0) | (train_users[split.test.user] == 0)
    assert ours.sum() == cold.sum()
    assert cold.sum() == 32  # 32 movies are rated only in u1.test; no user is new


@pytest.mark.data
@pytest.mark.parametrize("name", SPLITS)
def test_real_splits_partition_u_data(ml100k_dir, name):
    split = load_split(ml100k_dir, name)
    assert len(split.train) + len(split.test) == 100_000
    assert split.train.num_users == 943
    if name in ("ua", "ub"):
        assert (split.test.user_counts() == 10).all()  # ten ratings of every user


@pytest.mark.data
def test_real_validation_carve(ml100k_dir):
    train = load_split(ml100k_dir, "u1").train
    fit, validation = carve_validation(train, 0.1, seed=0)

    assert len(fit) + len(validation) == len(train)
    assert abs(len(validation) - 0.1 * len(train)) < 0.01 * len(train)
    assert (fit.user_counts() >= 1).all()


def test_random_split_is_seeded_disjoint_and_complete():
    from deepfactor.data.ratings import IdIndex, Ratings
    from deepfactor.data.splits import random_split

    r = Ratings(np.arange(50) % 7, np.arange(50) % 5, np.arange(50, dtype=float),
                IdIndex(range(7)), IdIndex(range(5)))
    train, test = random_split(r, 0.2, seed=3)
    assert len(test) == 10 and len(train) == 40
    assert sorted(np.concatenate([train.rating, test.rating])) == list(range(50))
    again = random_split(r, 0.2, seed=3)[1]
    assert list(again.rating) == list(test.rating)
    assert list(random_split(r, 0.2, seed=4)[1].rating) != list(test.rating)
