"""Implicit-feedback cells, the held-out cells that score them, and lists that skip only
the rated movies."""

import warnings

import numpy as np
import pytest

from deepfactor import implicit
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.implicit import held_out_cells, implicit_cells


def _ratings(seed=0, movies=12, users=9, n=40):
    rng = np.random.default_rng(seed)
    cells = rng.choice(movies * users, n, replace=False)
    return Ratings(cells % movies, cells // movies, rng.integers(1, 6, n).astype(float),
                   IdIndex([f"m{i}" for i in range(movies)]),
                   IdIndex([f"u{j}" for j in range(users)]), source="toy")


def _codes(r: Ratings) -> np.ndarray:
    return r.user.astype(np.int64) * r.num_movies + r.movie


def test_every_cell_of_the_rated_grid_once_with_the_rated_ones_set():
    r = _ratings()
    cells = implicit_cells(r)
    movies, users = np.unique(r.movie), np.unique(r.user)
    assert len(cells) == len(movies) * len(users)
    assert len(np.unique(_codes(cells))) == len(cells)
    assert set(np.unique(cells.movie)) == set(movies)
    assert set(np.unique(cells.user)) == set(users)
    ones = set(_codes(cells)[cells.rating == 1.0])
    assert ones == set(_codes(r)) and set(np.unique(cells.rating)) == {0.0, 1.0}
    assert cells.movie_ids is r.movie_ids and cells.user_ids is r.user_ids


def test_drawn_zeros_are_unrated_movies_in_the_asked_number_per_user():
    r = _ratings(n=30)
    cells = implicit_cells(r, negatives=2.0, seed=3)
    rated_movies = np.unique(r.movie)
    for j in np.unique(r.user):
        mine = cells.movie[cells.user == j]
        value = cells.rating[cells.user == j]
        rated = r.movie[r.user == j]
        assert set(mine[value == 1.0]) == set(rated)
        zeros = mine[value == 0.0]
        assert len(set(zeros)) == len(zeros) and not set(zeros) & set(rated)
        assert set(zeros) <= set(rated_movies)
        assert len(zeros) == min(2 * len(rated), len(rated_movies) - len(rated))
    again = implicit_cells(r, negatives=2.0, seed=3)
    assert np.array_equal(_codes(again), _codes(cells))
    other = implicit_cells(r, negatives=2.0, seed=4)
    assert not np.array_equal(_codes(other), _codes(cells))


def test_bad_input_is_refused(monkeypatch):
    r = _ratings()
    twice = Ratings(np.r_[r.movie, r.movie[:1]], np.r_[r.user, r.user[:1]],
                    np.r_[r.rating, 3.0], r.movie_ids, r.user_ids, source="toy")
    with pytest.raises(ValueError, match="toy: repeated"):
        implicit_cells(twice)
    with pytest.raises(ValueError, match="negatives must be at least 0"):
        implicit_cells(r, negatives=-1.0)
    monkeypatch.setattr(implicit, "MAX_CELLS", 10)
    with pytest.raises(ValueError, match="draw zeros with negatives="):
        implicit_cells(r)
    assert len(implicit_cells(r, negatives=0.0)) == len(r)  # the positives alone


def test_held_out_cells_are_the_test_pairs_and_as_many_empty_cells():
    everything = _ratings(n=60)
    train, test = everything.subset(np.arange(45)), everything.subset(np.arange(45, 60))
    cells = held_out_cells(train, test, seed=1)
    n = len(test)
    assert len(cells) == 2 * n
    assert np.array_equal(_codes(cells)[:n], _codes(test))
    assert (cells.rating[:n] == 1.0).all() and (cells.rating[n:] == 0.0).all()
    zeros = _codes(cells)[n:]
    assert len(np.unique(zeros)) == n
    assert not set(zeros) & (set(_codes(train)) | set(_codes(test)))
    assert set(cells.movie[n:]) <= set(train.movie) and set(cells.user[n:]) <= set(train.user)
    elsewhere = Ratings.from_raw(test.movie_ids.raw_of(test.movie),
                                 test.user_ids.raw_of(test.user), test.rating,
                                 user_ids=IdIndex(list(reversed(test.user_ids.raw))))
    with pytest.raises(ValueError, match="not on the same id maps"):
        held_out_cells(train, elsewhere)


def test_an_implicit_fit_lists_unrated_movies_only_and_scores_the_benchmark_way():
    from deepfactor.fitting import HeldOutOverlapWarning, SplitData, fit
    from deepfactor.ranking import evaluate_ranking
    from deepfactor.recommend import recommend, top_k_movies

    from conftest import small_config

    everything = _ratings(movies=30, users=20, n=200)
    train = everything.subset(np.arange(150))
    test = everything.subset(np.arange(150, 200))
    config = small_config(**{"model.likelihood": "bernoulli", "model.binary_ratings": True,
                             "data.rating_scale": [0, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeldOutOverlapWarning)  # test pairs are zeros here
        fitted = fit(config, data=SplitData(implicit_cells(train), held_out_cells(train, test),
                                            "toy"), progress=False)
    users = np.unique(train.user)
    # the encoders read every cell: excluding what they read leaves nothing to list
    assert (top_k_movies(fitted, users, 5) == -1).all()
    lists = top_k_movies(fitted, users, 5, seen=train)
    for j, row in zip(users, lists):
        assert not set(row) & set(train.movie[train.user == j])
        assert (row >= 0).sum() == min(5, len(np.unique(train.movie))
                                       - len(train.movie[train.user == j]))
    # seen on other id maps is re-indexed, not read as if it were on the model's
    shuffled = Ratings.from_raw(train.movie_ids.raw_of(train.movie),
                                train.user_ids.raw_of(train.user), train.rating,
                                user_ids=IdIndex(list(reversed(train.user_ids.raw))))
    assert np.array_equal(top_k_movies(fitted, users, 5, seen=shuffled), lists)
    # the default list of an implicit fit is empty, with a warning that says why
    with pytest.warns(UserWarning, match="implicit fit reads every cell"):
        assert recommend(fitted, train.user_ids.raw_of(users[:1])[0], k=3).empty
    # one user's list, as the README says: leave out the rated movies by name
    j = users[0]
    rated = list(train.movie_ids.raw_of(train.movie[train.user == j]))
    top = recommend(fitted, train.user_ids.raw_of([j])[0], k=3, exclude_seen=False,
                    exclude=rated)
    assert len(top) == 3 and not set(top["movie"]) & set(rated)
    scores = evaluate_ranking(fitted, test, threshold=None, seen=train)
    assert scores["num_users"] == len(np.intersect1d(np.unique(test.user), users))
    assert 0.0 <= scores["ndcg_at_k"] <= 1.0
