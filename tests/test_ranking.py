"""Ranking metrics on hand-computed cases, and the benchmark's stratified split."""

import math

import numpy as np
import pandas as pd
import pytest

from deepfactor.data.ratings import Ratings
from deepfactor.fitting import fit
from deepfactor.ranking import RANKING_KEYS, evaluate_ranking, ranking_metrics, stratified_split
from deepfactor.recommend import top_k_movies

from conftest import small_config


# -- metrics -----------------------------------------------------------------------------


def test_two_users_by_hand():
    # a: list 1 2 3, relevant {2, 5}: one hit, at rank 2.
    # b: list 4 5 6, relevant {4, 6, 7, 8, 9}: hits at ranks 1 and 3.
    # c has no relevant item and d no list: neither is averaged over.
    recommended = {"a": [1, 2, 3], "b": [4, 5, 6], "d": []}
    relevant = {"a": {2, 5}, "b": {4, 6, 7, 8, 9}, "c": set()}
    del recommended["d"]
    relevant["d"] = {1}
    m = ranking_metrics(recommended, relevant, k=3)
    assert m["num_users"] == 2 and m["k"] == 3

    ln = math.log
    ndcg_a = (1 / ln(3)) / (1 / ln(2) + 1 / ln(3))  # ideal: 2 relevant items in 3 slots
    ndcg_b = (1 / ln(2) + 1 / ln(4)) / (1 / ln(2) + 1 / ln(3) + 1 / ln(4))
    assert m["precision_at_k"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["recall_at_k"] == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert m["ndcg_at_k"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    # average precision: precision at each hit, over |R| (map) or min(k, |R|) (map_at_k)
    assert m["map"] == pytest.approx(((1 / 2) / 2 + (1 + 2 / 3) / 5) / 2)
    assert m["map_at_k"] == pytest.approx(((1 / 2) / 2 + (1 + 2 / 3) / 3) / 2)
    assert all(type(m[key]) is float for key in RANKING_KEYS)  # plain floats, for JSON


def test_only_the_first_k_count_and_a_perfect_list_scores_one():
    m = ranking_metrics({"u": ["x", "y", "z", "w"]}, {"u": {"x", "y", "w"}}, k=2)
    assert m["precision_at_k"] == 1 and m["ndcg_at_k"] == pytest.approx(1)
    assert m["recall_at_k"] == pytest.approx(2 / 3)
    assert m["map"] == pytest.approx(2 / 3) and m["map_at_k"] == pytest.approx(1)


def test_a_short_list_still_divides_precision_by_k():
    m = ranking_metrics({"u": [7]}, {"u": {7}}, k=10)
    assert m["precision_at_k"] == pytest.approx(0.1) and m["ndcg_at_k"] == pytest.approx(1)


def test_no_user_gives_none():
    m = ranking_metrics({"u": [1]}, {"v": {1}})
    assert m["num_users"] == 0 and all(m[key] is None for key in RANKING_KEYS)


# -- the stratified split --------------------------------------------------------------------


def _ratings(num_users: int, seed: int) -> Ratings:
    """Each user rates 1..29 distinct movies of 60; rows interleaved, as in a data file."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=num_users)
    user = np.repeat(np.arange(num_users), counts)
    movie = np.concatenate([rng.permutation(60)[:c] for c in counts])
    order = rng.permutation(len(user))
    return Ratings.from_raw(movie[order], user[order], rng.integers(1, 6, size=len(user)))


def _their_split(ratings: Ratings, ratio: float, seed: int) -> np.ndarray:
    """Recommenders' pandas algorithm, step by step: the training mask."""
    data = pd.DataFrame({"userID": ratings.user, "itemID": ratings.movie})
    np.random.seed(seed)
    data["random"] = np.random.rand(data.shape[0])
    data = data.sort_values(["userID", "random"])
    groups = data.groupby("userID")
    data["count"] = groups["userID"].transform("count")
    data["rank"] = (groups.cumcount() + 1) / data["count"]
    return np.isin(np.arange(len(ratings)), data.index[data["rank"] <= ratio])


@pytest.mark.parametrize("seed", [42, 7])
def test_stratified_split_gives_the_rows_of_the_recommenders_algorithm(seed):
    ratings = _ratings(50, seed)
    train, test = stratified_split(ratings, 0.75, seed)
    mask = _their_split(ratings, 0.75, seed)
    assert len(train) + len(test) == len(ratings)
    pairs = lambda r: set(zip(r.user.tolist(), r.movie.tolist()))  # noqa: E731
    assert pairs(train) == pairs(ratings.subset(mask))
    assert pairs(test) == pairs(ratings.subset(~mask))


def test_stratified_split_takes_each_users_share():
    ratings = _ratings(80, 0)
    train, test = stratified_split(ratings, 0.75, 42)
    n = ratings.user_counts()
    # rank r of n goes to training when r / n <= 0.75: 3 of 4, 3 of 5, none of 1
    np.testing.assert_array_equal(train.user_counts(), np.floor(0.75 * n + 1e-9))
    np.testing.assert_array_equal(test.user_counts(), n - train.user_counts())
    again, _ = stratified_split(ratings, 0.75, 42)
    other, _ = stratified_split(ratings, 0.75, 43)
    np.testing.assert_array_equal(again.movie, train.movie)
    assert not np.array_equal(other.movie, train.movie)


@pytest.mark.data
def test_stratified_split_of_movielens(ml100k_dir):
    from deepfactor.data.readers import read_ratings_file

    ratings = read_ratings_file(ml100k_dir / "u.data")
    train, test = stratified_split(ratings)
    assert len(train) + len(test) == 100_000
    assert (test.user_counts() > 0).all() and 0.74 < len(train) / 1e5 < 0.76


# -- evaluation of a fitted model ------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    return fit(small_config(**{"train.epochs": 3}), progress=False)


def test_evaluate_ranking_is_the_metrics_of_the_top_k_lists(fitted):
    from deepfactor.fitting import load_data

    test = load_data(fitted.config).test
    out = evaluate_ranking(fitted, test, k=5, threshold=4.0, seed=1)
    assert set(RANKING_KEYS) <= set(out) and out["threshold"] == 4.0

    warm = fitted.encoder_ratings.user_counts() > 0
    relevant: dict = {}
    for m, u, r in zip(test.movie, test.user, test.rating):
        if r >= 4.0 and warm[u]:
            relevant.setdefault(int(u), set()).add(int(m))
    # every warm test user is ranked; the metrics average over those with a relevant item
    users = np.unique(test.user[warm[test.user]])
    top = top_k_movies(fitted, users, 5, seed=1)
    expected = ranking_metrics({int(u): list(row[row >= 0]) for u, row in zip(users, top)},
                               relevant, 5)
    for key in RANKING_KEYS:
        assert out[key] == pytest.approx(expected[key])
    assert out["num_users"] == expected["num_users"] == len(relevant) < len(users)

    everything = evaluate_ranking(fitted, test, k=5, threshold=None, seed=1)
    assert everything["num_users"] == len(np.unique(test.user[warm[test.user]]))


def test_several_thresholds_rank_once_and_score_each(fitted, monkeypatch):
    import deepfactor.recommend as recommend
    from deepfactor.fitting import load_data
    from deepfactor.ranking import evaluate_rankings

    test = load_data(fitted.config).test
    calls = []
    real = recommend.top_k_movies
    monkeypatch.setattr(recommend, "top_k_movies",
                        lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    every, liked = evaluate_rankings(fitted, test, k=5, thresholds=(None, 4.0), seed=1)
    assert len(calls) == 1  # one set of lists for both thresholds
    assert (every["threshold"], liked["threshold"]) == (None, 4.0)
    # every test item relevant: the same users, so the very lists of evaluate_ranking
    alone = evaluate_ranking(fitted, test, k=5, threshold=None, seed=1)
    assert {key: every[key] for key in alone} == alone
    # ratings >= 4: the metrics of those lists against the liked items only
    lists = {int(u): list(row[row >= 0]) for u, row in
             zip(calls[0], real(fitted, calls[0], 5, seed=1))}
    relevant: dict = {}
    for m, u, r in zip(test.movie, test.user, test.rating):
        if r >= 4.0 and int(u) in lists:
            relevant.setdefault(int(u), set()).add(int(m))
    expected = ranking_metrics({u: lists[u] for u in relevant}, relevant, 5)
    for key in RANKING_KEYS:
        assert liked[key] == pytest.approx(expected[key])
    assert liked["num_users"] == len(relevant) < every["num_users"]
    # and a threshold's metrics do not depend on which others were asked for
    assert evaluate_rankings(fitted, test, k=5, thresholds=(4.0,), seed=1)[0] == liked


@pytest.fixture(scope="module")
def other_seed(fitted):
    from deepfactor.fitting import load_data

    # the same data (synthetic data follow the seed), fitted with another seed
    data = load_data(fitted.config)
    return fit(fitted.config.replace(**{"train.seed": fitted.config["train.seed"] + 1}),
               data=data, progress=False)


def test_a_mixture_ranks_by_the_mean_of_its_fits_means(fitted, other_seed):
    from deepfactor.recommend import complete

    users = np.arange(8)
    pool = np.flatnonzero(fitted.encoder_ratings.movie_counts() > 0)
    means = [complete(f, fitted.user_ids.raw_of(users), fitted.movie_ids.raw_of(pool),
                      seed=5, progress=False).mean.astype(np.float64)
             for f in (fitted, other_seed)]
    mixture = (means[0] + means[1]) / 2
    top = top_k_movies([fitted, other_seed], users, 4, seed=5)
    for row, j in enumerate(users):
        seen = set(fitted.encoder_ratings.movie[fitted.encoder_ratings.user == j])
        ranked = [pool[c] for c in np.argsort(-mixture[row], kind="stable")
                  if pool[c] not in seen]
        assert list(top[row]) == ranked[:4]
    # the two fits disagree somewhere, so the mixture is not either of them
    singles = [top_k_movies(f, users, 4, seed=5) for f in (fitted, other_seed)]
    assert not np.array_equal(singles[0], singles[1])
    assert np.array_equal(top_k_movies([fitted], users, 4, seed=5), singles[0])


def test_a_mixture_needs_fits_of_the_same_ids(fitted):
    config = fitted.config.replace(**{"data.synthetic_movies": 50, "train.epochs": 1})
    elsewhere = fit(config, progress=False)
    with pytest.raises(ValueError, match="fit 2 of the mixture has other movie or user ids"):
        top_k_movies([fitted, elsewhere], np.arange(3), 4)
    with pytest.raises(ValueError, match="no fitted model"):
        top_k_movies([], np.arange(3), 4)
    # the same ids, other ratings: synthetic data drawn with another seed
    redrawn = fit(fitted.config.replace(**{"train.seed": 9, "train.epochs": 1}),
                  progress=False)
    assert redrawn.movie_ids == fitted.movie_ids and redrawn.user_ids == fitted.user_ids
    with pytest.raises(ValueError, match="fit 2 of the mixture was trained on other rated"):
        top_k_movies([fitted, redrawn], np.arange(3), 4)


def test_a_threshold_no_test_rating_reaches_is_said(fitted, caplog):
    from deepfactor.fitting import load_data

    test = load_data(fitted.config).test
    with caplog.at_level("WARNING", logger="deepfactor.ranking"):
        out = evaluate_ranking(fitted, test, k=5, threshold=99.0, seed=1)
    assert out["num_users"] == 0 and out["ndcg_at_k"] is None
    assert "no warm test user has a test rating >= 99" in caplog.text
