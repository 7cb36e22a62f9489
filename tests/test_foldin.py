"""Fold-in: the encoders give a new user (or movie) its posterior from its ratings alone."""

import warnings

import numpy as np
import pytest
import torch

from deepfactor.baselines import BiasModel
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.data.readers import DataFormatError
from deepfactor.fitting import SplitData, fit, load_data
from deepfactor.foldin import FoldInWarning, fold_in, read_fold_in_ratings

from conftest import small_config


@pytest.fixture(scope="module", params=["sparse", "sketch"])
def fitted(request):
    """A small fit whose encoders read sparse rows, or sketches of them."""
    return fit(small_config(**{"train.epochs": 4, "guide.inputs": request.param,
                               "guide.sketch_dim": 8}), progress=False)


def _ratings_of(fitted, user: int) -> dict[str, float]:
    r = fitted.encoder_ratings
    rows = r.user == user
    return dict(zip(fitted.movie_ids.raw_of(r.movie[rows]), r.rating[rows]))


def _busiest(counts: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-counts, kind="stable")[:n]


# -- the fold-in is the fit's own encoding ---------------------------------------------------


def test_a_user_folded_in_from_its_training_ratings_gets_its_fitted_posterior(fitted):
    counts = fitted.encoder_ratings.user_counts()
    for j in [*_busiest(counts, 2), int(np.flatnonzero(counts == counts[counts > 0].min())[0])]:
        new = fold_in(fitted, _ratings_of(fitted, j))
        torch.testing.assert_close(new.z_loc, fitted.posterior.z_user_loc[j])
        torch.testing.assert_close(new.z_scale, fitted.posterior.z_user_scale[j])


def test_a_movie_folded_in_from_its_training_ratings_gets_its_fitted_posterior(fitted):
    r = fitted.encoder_ratings
    i = int(_busiest(r.movie_counts(), 1)[0])
    rows = r.movie == i
    new = fold_in(fitted, dict(zip(fitted.user_ids.raw_of(r.user[rows]), r.rating[rows])),
                  kind="movie")
    torch.testing.assert_close(new.z_loc, fitted.posterior.z_movie_loc[i])
    torch.testing.assert_close(new.z_scale, fitted.posterior.z_movie_scale[i])


def test_bernoulli_fold_in_thresholds_raw_ratings_as_the_fit_did():
    config = small_config(**{"model.likelihood": "bernoulli", "train.epochs": 2})
    data = load_data(config)
    model = fit(config, data=data, progress=False)
    j = int(_busiest(data.train.user_counts(), 1)[0])
    rows = data.train.user == j  # the raw values, not the 0/1 targets
    raw = dict(zip(data.train.movie_ids.raw_of(data.train.movie[rows]), data.train.rating[rows]))
    new = fold_in(model, raw)
    torch.testing.assert_close(new.z_loc, model.posterior.z_user_loc[j])
    assert set(np.unique(new.targets)) <= {0.0, 1.0}


def test_fold_in_predictions_equal_the_fitted_users_predictions(fitted):
    j = int(_busiest(fitted.encoder_ratings.user_counts(), 1)[0])
    user = fitted.user_ids.raw[j]
    new = fold_in(fitted, _ratings_of(fitted, j), name=user)
    movies = fitted.movie_ids.raw[:7]
    ours, theirs = new.predict(movies, seed=3), fitted.predict([user] * 7, movies, seed=3)
    assert list(ours.columns) == list(theirs.columns)
    assert list(ours["movie"]) == movies and set(ours["user"]) == {user}
    np.testing.assert_allclose(ours[["mean", "sd", "q05", "q95"]].to_numpy(),
                               theirs[["mean", "sd", "q05", "q95"]].to_numpy(), rtol=1e-6)


def test_a_new_movie_predicts_and_recommends_users(fitted):
    new = fold_in(fitted, {"1": 5.0, "2": 1.0, "3": 4.0}, kind="movie", name="Brand New")
    frame = new.predict(["4", 5])
    assert list(frame["user"]) == ["4", "5"] and set(frame["movie"]) == {"Brand New"}
    top = new.recommend(k=3)
    assert list(top.columns) == ["rank", "user", "mean", "sd"] and len(top) == 3
    assert not set(top["user"]) & {"1", "2", "3"}  # its raters are seen


# -- ids, unknown ids and bad values ---------------------------------------------------------


def test_ids_compare_as_strings(fitted):
    a = fold_in(fitted, {1: 4.0, 2: 2.0})
    b = fold_in(fitted, {"1": 4.0, "2": 2.0})
    torch.testing.assert_close(a.z_loc, b.z_loc)
    with pytest.raises(ValueError, match="movie id '1' is given twice"):
        fold_in(fitted, {1: 4.0, "1": 3.0})


def test_007_and_7_stay_distinct(fitted):
    raw = fitted.movie_ids.raw
    renamed = IdIndex(["007" if r == "1" else r for r in raw])
    assert "7" in renamed and "007" in renamed
    r = fitted.encoder_ratings
    relabeled = fitted.reading(Ratings(r.movie, r.user, r.rating, renamed, fitted.user_ids))
    as_007 = fold_in(relabeled, {"007": 5.0})
    as_7 = fold_in(relabeled, {"7": 5.0})
    assert list(as_007.rated) == [raw.index("1")] and list(as_7.rated) == [raw.index("7")]
    assert not torch.equal(as_007.z_loc, as_7.z_loc)


def test_unknown_ids_are_named_in_a_warning_and_ignored(fitted):
    with pytest.warns(FoldInWarning, match=r"ignored 2 unknown movie ids: 'nope', '99999'"):
        new = fold_in(fitted, {"1": 4.0, "nope": 3.0, 99999: 5.0})
    assert new.ignored == ("nope", "99999")
    torch.testing.assert_close(new.z_loc, fold_in(fitted, {"1": 4.0}).z_loc)


def test_unknown_ids_are_an_error_by_option(fitted):
    with pytest.raises(KeyError, match=r"unknown movie ids: 'nope', '99999'"):
        fold_in(fitted, {"1": 4.0, "nope": 3.0, 99999: 5.0}, unknown="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fold_in(fitted, {"1": 4.0, "nope": 3.0}, unknown="ignore").ignored == ("nope",)


def test_no_known_rating_gives_the_prior_with_a_warning(fitted):
    with pytest.warns(FoldInWarning) as record:
        new = fold_in(fitted, {"nope": 3.0})
    assert any("the prior" in str(w.message) for w in record)
    torch.testing.assert_close(new.z_loc, torch.zeros_like(new.z_loc))
    torch.testing.assert_close(new.z_scale, torch.ones_like(new.z_scale))
    with pytest.warns(FoldInWarning, match="the prior"):
        fold_in(fitted, {})


@pytest.mark.parametrize("ratings, message", [
    ({"1": float("nan")}, "rating of movie '1' is not finite"),
    ({"1": "four"}, "rating of movie '1' is not a number"),
])
def test_bad_values_are_errors_naming_the_id(fitted, ratings, message):
    with pytest.raises(ValueError, match=message):
        fold_in(fitted, ratings)


def test_poisson_fold_in_refuses_non_counts():
    model = fit(small_config(**{"model.likelihood": "poisson", "train.epochs": 1}),
                progress=False)
    with pytest.raises(ValueError, match="not a non-negative integer count"):
        fold_in(model, {"1": 2.5})


def test_unknown_movies_in_predict_are_named(fitted):
    new = fold_in(fitted, {"1": 4.0})
    with pytest.raises(KeyError, match="unknown movie id: 'zzz'"):
        new.predict(["2", "zzz"])


# -- the ratings file ------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "movie\trating\n242\t5\n302\t3.5\n",
    "# my ratings\n242,5\n\n302,3.5,extra\n",
    "242 5\n302   3.5\n",
    "movieId::rating\n242::5\n302::3.5\n",
    '"movie","rating"\n"242","5"\n"302",3.5\n',  # as a spreadsheet quotes them
    '242, "5"\n302, 3.5\n',  # a space after the comma
])
def test_ratings_file_formats(tmp_path, text):
    path = tmp_path / "mine.tsv"
    path.write_text(text)
    assert read_fold_in_ratings(path) == {"242": 5.0, "302": 3.5}


@pytest.mark.parametrize("text, message", [
    ("242\t5\n302\n", r"mine.tsv:2: expected an id and a rating"),
    ("242\t5\n302\tgood\n", r"mine.tsv:2: rating 'good' is not a finite number"),
    ("242\t5\n242\t4\n", r"mine.tsv:2: id '242' already rated on line 1"),
    ("\n# nothing\n", r"mine.tsv: no ratings"),
])
def test_ratings_file_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "mine.tsv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=message):
        read_fold_in_ratings(path)


# -- faithfulness: held-out users, folded in, predicted well ---------------------------------


def _hold_out_users(ratings: Ratings, num_users: int, min_ratings: int, seed: int):
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(ratings.user_counts() >= min_ratings)
    held = rng.choice(eligible, size=min(num_users, len(eligible)), replace=False)
    return held, np.isin(ratings.user, held)


def _fold_in_errors(fitted, held, ratings: Ratings, train: Ratings, seed: int) -> dict:
    """Errors on each held-out user's 20%, folded in from its 80%, and by the references."""
    rng = np.random.default_rng(seed)
    bias = BiasModel().fit(train.movie, train.user, train.rating, train.num_movies,
                           train.num_users)
    errors: dict[str, list] = {"fold_in": [], "global_mean": [], "movie_bias": [],
                               "user_and_movie_bias": []}
    for j in held:
        rows = rng.permutation(np.flatnonzero(ratings.user == j))
        given, scored = rows[: int(round(0.8 * len(rows)))], rows[int(round(0.8 * len(rows))):]
        movies = ratings.movie_ids.raw_of(ratings.movie)
        new = fold_in(fitted, dict(zip(movies[given], ratings.rating[given])))
        truth = ratings.rating[scored]
        movie_bias = bias.mu + bias.b_movie[ratings.movie[scored]]
        user_bias = (np.sum(ratings.rating[given] - bias.mu - bias.b_movie[ratings.movie[given]])
                     / (len(given) + bias.lam))  # the bias model's own fold-in
        errors["fold_in"].append(new.predict(movies[scored], quantiles=())["mean"] - truth)
        errors["global_mean"].append(bias.mu - truth)
        errors["movie_bias"].append(movie_bias - truth)
        errors["user_and_movie_bias"].append(movie_bias + user_bias - truth)
    return {k: float(np.sqrt(np.mean(np.concatenate(v) ** 2))) for k, v in errors.items()}


SYNTHETIC_FAITHFUL = {"data.synthetic_movies": 80, "data.synthetic_users": 100,
                      "data.synthetic_ratings": 6000, "data.test_fraction": 0.1,
                      "train.epochs": 40, "train.batch_size": 1000,
                      "train.kl_warmup_epochs": 20, "train.kl_warmup_start": 0.01,
                      "model.decoder_hidden": [32], "guide.encoder_hidden": [64]}


@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow)
                                       for s in range(1, 6))])
def test_held_out_users_folded_in_beat_the_references(seed):
    # 20 users are left out of training entirely, each folded in from 80% of its
    # ratings. The truth has a noise sd of 0.5, and almost no additive movie effect:
    # the references sit near 1.1, a fit that learned the interactions near 0.6.
    config = small_config(**SYNTHETIC_FAITHFUL, **{"train.seed": seed})
    data = load_data(config)
    held, is_held = _hold_out_users(data.train, 20, min_ratings=10, seed=seed)
    train = data.train.subset(~is_held)
    seen_test = data.test.subset(~np.isin(data.test.user, held))
    fitted = fit(config, data=SplitData(train, seen_test, data.name), progress=False)
    assert (fitted.encoder_ratings.user_counts()[held] == 0).all()

    rmse = _fold_in_errors(fitted, held, data.train.subset(is_held), train, seed)
    assert rmse["fold_in"] < 0.85 * rmse["global_mean"]
    assert rmse["fold_in"] < 0.85 * rmse["movie_bias"]
    # and a folded-in user is predicted about as well as a user seen in training
    assert rmse["fold_in"] < 1.25 * fitted.metrics["test_warm"]["rmse"]


@pytest.mark.data
@pytest.mark.slow
def test_held_out_movielens_users_folded_in_beat_the_references(ml100k_dir):
    from deepfactor.config import load_config

    from conftest import REPO

    config = load_config(REPO / "models" / "gaussian.toml",
                         ["train.epochs=20", "train.kl_warmup_epochs=6"])
    data = load_data(config, ml100k_dir)
    held, is_held = _hold_out_users(data.train, 50, min_ratings=40, seed=0)
    train = data.train.subset(~is_held)
    fitted = fit(config, data=SplitData(train, data.test, data.name), progress=False)
    rmse = _fold_in_errors(fitted, held, data.train.subset(is_held), train, 0)
    assert rmse["fold_in"] < 0.9 * rmse["global_mean"]
    assert rmse["fold_in"] < 0.95 * rmse["movie_bias"]


def test_fold_in_ratings_obey_the_declared_scale():
    from deepfactor.fitting import fit

    from conftest import small_config

    fitted = fit(small_config(**{"data.rating_scale": [1, 5]}), progress=False)
    # the check applies to file data; the fit used synthetic ratings, so say it was a file
    fitted.config = fitted.config.replace(**{"data.dataset": "ml-100k"})
    movie = fitted.movie_ids.raw[0]
    with pytest.raises(ValueError, match=r"outside the declared scale \[1, 5\]"):
        fold_in(fitted, {movie: 9})
    fold_in(fitted, {movie: 5})  # inside: accepted


def test_a_refused_rating_from_a_file_names_its_line(tmp_path):
    from deepfactor.fitting import fit

    from conftest import small_config

    fitted = fit(small_config(**{"data.rating_scale": [1, 5],
                                 "model.likelihood": "ordinal"}), progress=False)
    fitted.config = fitted.config.replace(**{"data.dataset": "ml-100k"})  # see above
    first, second = fitted.movie_ids.raw[:2]
    path = tmp_path / "mine.tsv"
    path.write_text(f"movie\trating\n{first}\t4\n# a comment\n{second}\t9\n")
    with pytest.raises(ValueError, match=rf"mine.tsv:4: the rating of movie '{second}', 9, "
                                         r"is outside the declared scale"):
        fold_in(fitted, read_fold_in_ratings(path))
    path.write_text(f"{first}\t4\n{second}\t3.5\n")  # not an ordinal level
    with pytest.raises(ValueError, match=r"mine.tsv:2: rating 3.5 is not one of the ordinal"):
        fold_in(fitted, read_fold_in_ratings(path))
