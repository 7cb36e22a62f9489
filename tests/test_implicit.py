"""Implicit-feedback cells, the held-out cells that score them, and lists that skip only
the rated movies."""

import warnings

import numpy as np
import pytest
import torch

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


def _implicit_config(**more):
    from conftest import small_config

    return small_config(**{"model.likelihood": "bernoulli", "model.binary_ratings": True,
                           "data.implicit": True, "data.rating_scale": [1, 5], **more})


@pytest.fixture(scope="module")
def implicit_fit():
    from deepfactor.fitting import HeldOutOverlapWarning, SplitData, fit

    everything = _ratings(movies=30, users=20, n=200)
    train = everything.subset(np.arange(150))
    test = everything.subset(np.arange(150, 200))
    with warnings.catch_warnings():
        # a held-out pair is a training 0 by design: not an overlap to warn about
        warnings.simplefilter("error", HeldOutOverlapWarning)
        fitted = fit(_implicit_config(), data=SplitData(train, test, "toy"), progress=False)
    return fitted, train, test


def test_an_implicit_fit_reads_the_cells_and_scores_held_out_cells(implicit_fit):
    fitted, train, test = implicit_fit
    cells = implicit_cells(train)
    read = fitted.encoder_ratings
    assert fitted.implicit and len(read) == len(cells)
    assert dict(zip(_codes(read), read.rating)) == dict(zip(_codes(cells), cells.rating))
    assert set(_codes(fitted.seen)) == set(_codes(train))  # the rated pairs only
    # the test pairs as 1s beside as many empty cells
    assert fitted.metrics["test"]["num_ratings"] == 2 * len(test)


def test_an_implicit_fit_lists_unrated_movies_only_and_scores_the_benchmark_way(implicit_fit):
    from deepfactor.ranking import evaluate_ranking
    from deepfactor.recommend import recommend, top_k_movies

    fitted, train, test = implicit_fit
    users = np.unique(train.user)
    lists = top_k_movies(fitted, users, 5)
    for j, row in zip(users, lists):
        assert not set(row) & set(train.movie[train.user == j])
        assert (row >= 0).sum() == min(5, len(np.unique(train.movie))
                                       - len(train.movie[train.user == j]))
    # an explicit seen on other id maps is re-indexed, not read as on the model's
    shuffled = Ratings.from_raw(train.movie_ids.raw_of(train.movie),
                                train.user_ids.raw_of(train.user), train.rating,
                                user_ids=IdIndex(list(reversed(train.user_ids.raw))))
    assert np.array_equal(top_k_movies(fitted, users, 5, seen=shuffled), lists)
    # one user's list leaves out the movies it rated, not every cell its encoder read
    j = users[0]
    rated = set(train.movie_ids.raw_of(train.movie[train.user == j]))
    top = recommend(fitted, train.user_ids.raw_of([j])[0], k=3)
    assert len(top) == 3 and not set(top["movie"]) & rated
    scores = evaluate_ranking(fitted, test, threshold=None)
    assert scores["num_users"] == len(np.intersect1d(np.unique(test.user), users))
    assert 0.0 <= scores["ndcg_at_k"] <= 1.0


def test_a_user_folded_in_from_its_rated_movies_gets_its_fitted_posterior(implicit_fit):
    fitted, train, _ = implicit_fit
    for j in np.unique(train.user)[:4]:
        chosen = train.movie_ids.raw_of(train.movie[train.user == j])
        # the values are not read: only which movies were chosen
        new = fitted.fold_in({m: 5 for m in chosen})
        assert set(new.seen) == set(train.movie[train.user == j])
        assert len(new.rated) == len(np.unique(train.movie))  # the whole row of the grid
        torch.testing.assert_close(new.z_loc, fitted.posterior.z_user_loc[j])
        torch.testing.assert_close(new.z_scale, fitted.posterior.z_user_scale[j])
        top = new.recommend(k=3)
        assert not set(top["movie"]) & set(chosen)


def test_an_implicit_run_loads_as_implicit(implicit_fit, tmp_path):
    from deepfactor.fitted import load

    fitted, train, _ = implicit_fit
    fitted.save(tmp_path)
    loaded = load(tmp_path)
    assert loaded.implicit and set(_codes(loaded.seen)) == set(_codes(fitted.seen))
    user = train.user_ids.raw_of(train.user[:1])[0]
    assert loaded.recommend(user, k=4).equals(fitted.recommend(user, k=4))


def test_implicit_needs_bernoulli_on_binary_values():
    from deepfactor.config import ConfigError

    with pytest.raises(ConfigError, match="'data.implicit' = true observes 0/1 cells"):
        _implicit_config(**{"model.binary_ratings": False})
    with pytest.raises(ConfigError, match="needs model.likelihood = 'bernoulli'"):
        _implicit_config(**{"model.likelihood": "normal"})

def test_the_checks_of_an_implicit_run_score_its_held_out_cells(implicit_fit):
    from deepfactor.check_report import PosteriorCollapseWarning, posterior_checks

    fitted, _, test = implicit_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosteriorCollapseWarning)  # a 3-epoch toy fit
        report = posterior_checks(fitted, test, num_samples=10, train_sample=100, seed=0)
    assert report.summary["num_heldout"] == fitted.metrics["test"]["num_ratings"] == 2 * len(test)
    from deepfactor.check_report import _markdown

    assert report.summary["implicit"] and "Half the held-out cells are 1s" in _markdown(report)


def test_a_fold_in_reads_what_the_fit_read_with_drawn_zeros_and_any_values():
    from deepfactor.fitting import SplitData, fit
    from deepfactor.foldin import FoldInWarning

    everything = _ratings(movies=30, users=20, n=200)
    train, test = everything.subset(np.arange(150)), everything.subset(np.arange(150, 200))
    fitted = fit(_implicit_config(**{"data.implicit_negatives": 1.0, "train.epochs": 1}),
                 data=SplitData(train, test, "toy"), progress=False)
    chosen = ["m1", "m4", "m7", "m9"]
    new = fitted.fold_in({m: 0 for m in chosen})  # values are not read, nor scale-checked
    assert len(new.rated) == 2 * len(chosen) and new.targets.sum() == len(chosen)
    assert set(fitted.movie_ids.raw_of(new.seen)) == set(chosen)
    again = fitted.fold_in({m: 1 for m in chosen})
    assert np.array_equal(again.rated, new.rated)  # the zeros are drawn with the seed
    with pytest.warns(FoldInWarning) as caught:
        fitted.fold_in({"nobody": 1})
    assert any("row holds no 1" in str(w.message) for w in caught)


def test_an_implicit_fit_takes_a_test_set_on_other_id_maps(implicit_fit):
    from deepfactor.fitting import SplitData, fit

    fitted, train, test = implicit_fit
    elsewhere = Ratings.from_raw(test.movie_ids.raw_of(test.movie),
                                 test.user_ids.raw_of(test.user), test.rating,
                                 user_ids=IdIndex(list(reversed(test.user_ids.raw))),
                                 movie_ids=test.movie_ids)
    again = fit(fitted.config, data=SplitData(train, elsewhere, "toy"), progress=False)
    assert again.metrics["test"] == fitted.metrics["test"]
