"""Recommendations (mean, upper quantile, Thompson), the completed matrix, titles."""

import logging
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from deepfactor.fitted import FittedModel, build_modules
from deepfactor.fitting import fit, load_data
from deepfactor.foldin import fold_in
from deepfactor.likelihoods import NormalLikelihood
from deepfactor.recommend import (_score, complete, iter_complete, movie_titles, recommend,
                                  top_k_movies)

from conftest import small_config


@pytest.fixture(scope="module")
def fitted():
    return fit(small_config(**{"train.epochs": 4}), progress=False)


def _seen(fitted, user: str) -> set[str]:
    r = fitted.encoder_ratings
    j = fitted.user_ids.index_of([user])[0]
    return set(fitted.movie_ids.raw_of(r.movie[r.user == j]))


def _busy_user(fitted) -> str:
    return fitted.user_ids.raw[int(np.argmax(fitted.encoder_ratings.user_counts()))]


# -- recommend -------------------------------------------------------------------------------


def test_recommend_layout_order_and_seen_movies(fitted):
    user = _busy_user(fitted)
    top = recommend(fitted, user, k=5)
    assert list(top.columns) == ["rank", "movie", "title", "mean", "sd"]
    assert list(top["rank"]) == [1, 2, 3, 4, 5]
    assert (np.diff(top["mean"]) <= 0).all() and (top["sd"] > 0).all()
    assert not set(top["movie"]) & _seen(fitted, user)
    assert top["title"].isna().all()

    everything = recommend(fitted, user, k=len(fitted.movie_ids), exclude_seen=False)
    rated = fitted.movie_ids.raw_of(np.flatnonzero(fitted.encoder_ratings.movie_counts()))
    assert set(everything["movie"]) == set(rated)  # every movie with a training rating


def test_recommend_means_agree_with_predict_within_monte_carlo_error(fitted):
    user = _busy_user(fitted)
    top = recommend(fitted, user, k=8, num_samples=4000)
    pred = fitted.predict([user] * 8, list(top["movie"]), num_samples=4000, seed=9)
    # two independent estimates of the same mean, each with error below sd / sqrt(S)
    bound = 5 * np.sqrt(2) * top["sd"].to_numpy() / np.sqrt(4000)
    assert (np.abs(top["mean"].to_numpy() - pred["mean"].to_numpy()) < bound).all()
    np.testing.assert_allclose(top["sd"], pred["sd"], rtol=0.05)


def test_ids_as_strings_candidates_exclude_and_titles(fitted):
    user = _busy_user(fitted)
    a = recommend(fitted, int(user), k=3, seed=1)
    b = recommend(fitted, user, k=3, seed=1)
    assert a.equals(b)
    pool = [m for m in fitted.movie_ids.raw if m not in _seen(fitted, user)][:6]
    picked = recommend(fitted, user, k=10, candidates=pool, exclude=pool[:2])
    assert set(picked["movie"]) == set(pool[2:])
    titled = recommend(fitted, user, k=3, candidates=pool,
                       titles={m: f"Movie {m}" for m in pool[1:]})
    assert [t if m != pool[0] else None for m, t in zip(titled["movie"], titled["title"])] \
        == [None if m == pool[0] else f"Movie {m}" for m in titled["movie"]]
    assert titled["title"][titled["movie"] == pool[0]].isna().all()


def test_unknown_ids_are_named(fitted):
    with pytest.raises(KeyError, match="unknown user id: '99999'"):
        recommend(fitted, 99999)
    with pytest.raises(KeyError, match="unknown movie ids: 'x', 'y'"):
        recommend(fitted, _busy_user(fitted), candidates=["1", "x", "y"])


@pytest.mark.parametrize("options, message", [
    ({"strategy": "best"}, "strategy must be one of"), ({"k": 0}, "k must be at least 1"),
    ({"strategy": "upper", "quantile": 1.0}, "quantile must be in"),
    ({"k": 5, "shortlist": 4}, "shortlist"), ({"shortlist": "some"}, "shortlist must be"),
])
def test_bad_options(fitted, options, message):
    with pytest.raises(ValueError, match=message):
        recommend(fitted, _busy_user(fitted), **options)


def test_a_folded_in_user_gets_recommendations_without_its_rated_movies(fitted):
    new = fold_in(fitted, {"1": 5.0, "2": 4.0, "3": 1.0}, name="me")
    top = recommend(fitted, new, k=4, strategy="upper")
    assert list(top.columns) == ["rank", "movie", "title", "mean", "sd", "score"]
    assert not set(top["movie"]) & {"1", "2", "3"}
    assert (np.diff(top["score"]) <= 0).all()
    assert new.recommend(k=4, strategy="upper").equals(top)


def test_a_shortlist_scores_only_the_best_plug_in_predictions(fitted):
    from deepfactor.recommend import _plug_in

    user = _busy_user(fitted)
    exact = recommend(fitted, user, k=5, seed=4, shortlist=None)
    assert recommend(fitted, user, k=5, seed=4, shortlist=len(fitted.movie_ids)).equals(exact)
    rated = fitted.movie_ids.raw_of(np.flatnonzero(fitted.encoder_ratings.movie_counts()))
    pool = [m for m in rated if m not in _seen(fitted, user)]
    j = fitted.user_ids.index_of([user])[0]
    index = fitted.movie_ids.index_of(pool)
    plug_in = _plug_in(fitted.model, fitted.posterior.z_user_loc[j], True,
                       fitted.posterior.z_movie_loc[index]).numpy()
    best = {pool[i] for i in np.argsort(-plug_in, kind="stable")[:6]}
    assert set(recommend(fitted, user, k=5, shortlist=6)["movie"]) <= best


def test_the_default_shortlist_is_5_k_for_the_mean_and_off_for_the_others(fitted):
    counts = fitted.encoder_ratings.user_counts()
    user = fitted.user_ids.raw[int(np.argmin(np.where(counts > 0, counts, counts.max())))]
    assert len(fitted.movie_ids) - len(_seen(fitted, user)) > 10  # so 10 is a cut
    assert recommend(fitted, user, k=2, seed=4).equals(
        recommend(fitted, user, k=2, seed=4, shortlist=10))
    for strategy in ("upper", "thompson"):
        assert recommend(fitted, user, k=2, seed=4, strategy=strategy).equals(
            recommend(fitted, user, k=2, seed=4, strategy=strategy, shortlist=None))


# -- the three strategies on a case with a known answer --------------------------------------


def _two_movies():
    """eta = z_movie . z_user; the user is known (z = 1), movie A is sure, B is not."""
    model = SimpleNamespace(decoder=lambda zm, zu: (zm * zu).sum(-1),
                            likelihood=NormalLikelihood(0.5))
    user = (torch.ones(1), torch.full((1,), 1e-6))
    movies = (torch.tensor([[1.0], [0.9]]), torch.tensor([[0.01], [1.0]]))
    return model, user, movies


def test_mean_prefers_the_sure_movie_and_the_upper_quantile_the_uncertain_one():
    model, (u_loc, u_scale), (m_loc, m_scale) = _two_movies()
    mean = _score(model, u_loc, u_scale, True, m_loc, m_scale, "mean", 0.9, 4000, 0)
    upper = _score(model, u_loc, u_scale, True, m_loc, m_scale, "upper", 0.9, 4000, 0)
    assert mean.score[0] > mean.score[1]
    # the 0.9 quantile of eta: 1.0 + 1.28 * 0.01 for A, 0.9 + 1.28 * 1.0 for B
    np.testing.assert_allclose(upper.score, [1.0128, 2.1816], atol=0.08)
    np.testing.assert_allclose(mean.sd, np.sqrt([0.5**2 + 0.01**2, 0.5**2 + 1.0]), rtol=0.05)


def test_thompson_picks_each_movie_as_often_as_it_is_the_better_one():
    # P(B > A) = P(N(0.9, 1) > N(1.0, 0.01^2)) = 0.46; over 400 seeds the share of B
    # lies within 3.3 binomial sds of it except with probability 1e-3.
    model, (u_loc, u_scale), (m_loc, m_scale) = _two_movies()
    p = 1 - stats.norm.cdf(0.1 / np.hypot(1.0, 0.01))
    picks_b = [bool(_score(model, u_loc, u_scale, True, m_loc, m_scale, "thompson", 0.9, 1,
                           seed).score.argmax() == 1) for seed in range(400)]
    assert abs(np.mean(picks_b) - p) < 3.3 * np.sqrt(p * (1 - p) / 400)


def test_thompson_is_seeded(fitted):
    user = _busy_user(fitted)
    runs = [recommend(fitted, user, k=5, strategy="thompson", seed=s) for s in (1, 1, 2)]
    assert runs[0].equals(runs[1]) and not runs[0]["score"].equals(runs[2]["score"])


# -- the completed matrix --------------------------------------------------------------------


def test_complete_matches_predict_within_monte_carlo_error(fitted):
    users, movies = fitted.user_ids.raw[:5], fitted.movie_ids.raw[:7]
    done = complete(fitted, users, movies, num_samples=4000)
    assert done.mean.shape == done.sd.shape == (5, 7) and done.mean.dtype == np.float32
    assert done.users == users and done.movies == movies
    pred = fitted.predict(np.repeat(users, 7), np.tile(movies, 5), num_samples=4000)
    bound = 5 * np.sqrt(2) * pred["sd"].to_numpy() / np.sqrt(4000)
    assert (np.abs(done.mean.reshape(-1) - pred["mean"].to_numpy()) < bound).all()
    assert done.frame("sd").loc[users[1], movies[2]] == done.sd[1, 2]


def test_complete_writes_into_given_arrays_in_blocks(fitted, tmp_path):
    shape = (len(fitted.user_ids), len(fitted.movie_ids))
    out = tuple(np.lib.format.open_memmap(tmp_path / f"{n}.npy", mode="w+", dtype=np.float64,
                                          shape=shape) for n in ("mean", "sd"))
    done = complete(fitted, out=out, chunk=64, seed=2)
    assert done.mean is out[0] and done.sd is out[1] and np.isfinite(out[0]).all()
    blocks = list(iter_complete(fitted, chunk=64, seed=2))
    assert all(mean.shape[0] * mean.shape[1] <= max(64, shape[1]) for _, mean, _ in blocks)
    np.testing.assert_allclose(np.concatenate([m for _, m, _ in blocks]), out[0], rtol=1e-6)
    with pytest.raises(ValueError, match="must have shape"):
        complete(fitted, out=(out[0][:2], out[1][:2]))


def test_complete_allocates_no_dense_array_beyond_its_outputs():
    # An untrained model at 400 movies x 300 users: a float64 matrix is 960 KB, and
    # complete() must not hold one (nor S of them) besides the outputs it was given.
    # What it does hold scales with the chunk (index arrays of 512 pairs, np.unique's
    # temporaries): a few tens of KB.
    config = small_config(**{"data.synthetic_movies": 400, "data.synthetic_users": 300,
                             "data.synthetic_ratings": 10000})
    train = load_data(config).train
    model, guide = build_modules(config, train.num_movies, train.num_users)
    untrained = FittedModel(config, model, guide, train, 3.5, 1.0)
    out = (np.empty((300, 400), np.float32), np.empty((300, 400), np.float32))
    tracemalloc.start()
    try:
        complete(untrained, out=out, num_samples=20, chunk=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300 * 400 * 8 / 8  # numpy allocations; torch's are bounded by chunks


def test_top_k_movies_is_the_top_of_the_completed_matrix(fitted):
    users = np.arange(6)
    top = top_k_movies(fitted, users, k=4, seed=5)
    pool = np.flatnonzero(fitted.encoder_ratings.movie_counts() > 0)
    done = complete(fitted, fitted.user_ids.raw_of(users), fitted.movie_ids.raw_of(pool),
                    seed=5)
    for row, j in enumerate(users):
        seen = set(fitted.encoder_ratings.movie[fitted.encoder_ratings.user == j])
        ranked = [pool[c] for c in np.argsort(-done.mean[row], kind="stable")
                  if pool[c] not in seen]
        assert list(top[row]) == ranked[:4]


# -- titles ----------------------------------------------------------------------------------


def test_titles_come_from_u_item_in_latin_1(fitted, tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t0\n")
    (tmp_path / "u.item").write_bytes("1|Café Society (1995)|x\n2|Toy Story (1995)|y\n"
                                      .encode("latin-1"))
    config = fitted.config.replace(**{"data.dataset": "ml-100k", "data.path": str(tmp_path)})
    titles = movie_titles(SimpleNamespace(config=config))
    assert titles == {"1": "Café Society (1995)", "2": "Toy Story (1995)"}


def test_no_titles_is_a_logged_note(fitted, tmp_path, caplog):
    config = fitted.config.replace(**{"data.dataset": "ml-100k",
                                      "data.path": str(tmp_path / "absent")})
    with caplog.at_level(logging.INFO, logger="deepfactor.recommend"):
        assert movie_titles(SimpleNamespace(config=config)) == {}
    assert "no movie titles" in caplog.text
    assert movie_titles(fitted) == {}  # synthetic data has none


# -- the command line ------------------------------------------------------------------------

SMALL = ["--set", "data.dataset=synthetic", "--set", "data.split=random",
         "--set", "data.synthetic_movies=40", "--set", "data.synthetic_users=30",
         "--set", "data.synthetic_ratings=600", "--set", "model.latent_dim=3",
         "--set", "train.epochs=2", "--set", "train.batch_size=200",
         "--set", "train.kl_warmup_epochs=0", "--set", "eval.num_samples=10"]


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "deepfactor", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import REPO

    out = tmp_path_factory.mktemp("run")
    done = _cli("fit", REPO / "models" / "gaussian.toml", "--out", out, "--quiet", *SMALL)
    assert done.returncode == 0, done.stderr
    return out


def _rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.strip().splitlines()[2:]]


def test_cli_recommends_for_a_user_of_the_run(run_dir, tmp_path):
    done = _cli("recommend", run_dir, "--user", "3", "-k", "4", "--out", tmp_path / "top.csv")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("top 4 for user 3") and lines[1].split() == ["rank", "movie",
                                                                            "mean", "sd"]
    assert [r[0] for r in _rows(done.stdout)] == ["1", "2", "3", "4"]
    import pandas as pd

    frame = pd.read_csv(tmp_path / "top.csv", dtype={"movie": str})
    assert list(frame["movie"]) == [r[1] for r in _rows(done.stdout)]


def test_cli_folds_in_a_ratings_file_and_warns_of_unknown_movies(run_dir, tmp_path):
    mine = tmp_path / "mine.tsv"
    mine.write_text("movie\trating\n1\t5\n2\t4\nzzz\t3\n")
    done = _cli("recommend", run_dir, "--ratings", mine, "-k", "3", "--strategy", "upper")
    assert done.returncode == 0, done.stderr
    assert "ignored 1 unknown movie id: 'zzz'" in done.stderr
    assert "2 ratings read" in done.stdout and "score" in done.stdout.splitlines()[1]
    assert not {"1", "2"} & {r[1] for r in _rows(done.stdout)}

    strict = _cli("recommend", run_dir, "--ratings", mine, "--strict")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert strict.stderr.strip() == "deepfactor: error: unknown movie id: 'zzz'"


@pytest.mark.parametrize("args, message", [
    (["--user", "99999"], "unknown user id: '99999'"),
    (["--user", "3", "-k", "0"], "-k must be at least 1"),
    (["--ratings", "/nonexistent/mine.tsv"], "no such file"),
])
def test_cli_recommend_errors_are_one_line(run_dir, args, message):
    done = _cli("recommend", run_dir, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_cli_evaluate_adds_the_ranking_metrics(run_dir):
    import json

    done = _cli("evaluate", run_dir, "--ranking")
    assert done.returncode == 0, done.stderr
    assert "ndcg@10" in done.stdout and "relevant = test rating >= 4" in done.stdout
    saved = json.loads((run_dir / "evaluation-random.json").read_text())
    assert {"precision_at_k", "recall_at_k", "ndcg_at_k", "map"} <= set(saved["ranking"])
    assert saved["ranking"]["k"] == 10 and "rmse" in saved["test"]


@pytest.mark.data
@pytest.mark.slow
def test_cli_recommends_movielens_titles(ml100k_dir, tmp_path):
    from conftest import REPO

    out = tmp_path / "run"
    fitted = _cli("fit", REPO / "models" / "gaussian.toml", "--out", out, "--quiet",
                  "--data", ml100k_dir, "--set", "train.epochs=1", "--set",
                  "train.kl_warmup_epochs=0", "--set", "eval.num_samples=10")
    assert fitted.returncode == 0, fitted.stderr
    done = _cli("recommend", out, "--user", "196", "-k", "5", "--data", ml100k_dir)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[1].split()
    assert header[:3] == ["rank", "movie", "title"]
    assert all(len(line.split()) > 4 for line in done.stdout.splitlines()[2:])  # titled


def test_the_fitted_object_offers_fold_in_recommend_and_complete():
    import pandas as pd

    from deepfactor.recommend import complete, recommend

    from conftest import small_config

    fitted = fit(small_config(), progress=False)
    user = fitted.user_ids.raw[0]
    pd.testing.assert_frame_equal(fitted.recommend(user, 3), recommend(fitted, user, 3))
    new = fitted.fold_in({fitted.movie_ids.raw[0]: 4.0, fitted.movie_ids.raw[1]: 2.0})
    assert len(fitted.recommend(new, 2)) == 2
    a, b = fitted.complete(users=[user]), complete(fitted, users=[user])
    np.testing.assert_array_equal(a.mean, b.mean)


def test_the_fitted_models_recommend_reads_titles_once_by_itself(fitted, tmp_path):
    import copy

    ids = fitted.movie_ids.raw
    (tmp_path / "u.data").write_text("1\t1\t5\t0\n")
    (tmp_path / "u.item").write_bytes("".join(f"{m}|Film {m} (1995)|x\n" for m in ids)
                                      .encode("latin-1"))
    other = copy.copy(fitted)
    other.config = fitted.config.replace(**{"data.dataset": "ml-100k",
                                            "data.path": str(tmp_path)})
    other._titles = None
    user = fitted.user_ids.raw[0]
    top = other.recommend(user, k=3)
    assert all(t == f"Film {m} (1995)" for m, t in zip(top["movie"], top["title"]))
    (tmp_path / "u.item").unlink()  # read once: the second call does not need the file
    assert list(other.recommend(user, k=3)["title"]) == list(top["title"])
    assert top["title"].notna().all()
