"""Fitting the larger MovieLens layouts and generic rating files: splits, scales, families.

The files are small ones written by the tests in each release's layout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepfactor.config import ConfigError
from deepfactor.data.readers import DataFormatError
from deepfactor.fitting import fit, load_data, with_targets
from deepfactor.likelihoods import make_likelihood

from conftest import REPO, small_config

HALF_STARS = np.arange(1, 11) / 2  # 0.5, 1.0, ..., 5.0


def ratings_rows(num_users: int = 30, num_movies: int = 20, seed: int = 0,
                 stars=HALF_STARS) -> list[tuple[int, int, float, int]]:
    """Distinct (user, movie, rating, timestamp) rows; every user rates 8 movies."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        for movie in rng.choice(num_movies, size=8, replace=False):
            rows.append((user + 1, int(movie) * 7 + 1, float(rng.choice(stars)),
                         978300000 + len(rows)))
    return rows


def write_ml_folder(folder: Path, layout: str, rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "dat":
        lines = [f"{u}::{m}::{r:g}::{t}" for u, m, r, t in rows]
        (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    else:
        lines = ["userId,movieId,rating,timestamp"] + [f"{u},{m},{r},{t}" for u, m, r, t in rows]
        (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    return folder


def config_for(**dotted):
    return small_config(**{"data.split": "random", **dotted})


# ------------------------------------------------------------------------ splits


@pytest.mark.parametrize("name, layout", [("ml-1m", "dat"), ("ml-10m", "dat"),
                                          ("ml-20m", "csv"), ("ml-25m", "csv"),
                                          ("ml-latest-small", "csv")])
def test_named_release_loads_with_the_random_split(tmp_path, name, layout):
    rows = ratings_rows()
    folder = write_ml_folder(tmp_path / name, layout, rows)
    config = config_for(**{"data.dataset": name, "data.test_fraction": 0.25})
    data = load_data(config, folder)

    assert len(data.train) + len(data.test) == len(rows)
    assert len(data.test) == round(0.25 * len(rows))
    assert data.train.movie_ids is data.test.movie_ids
    assert data.train.source == str(folder / f"ratings.{layout}")
    again = load_data(config, folder)
    np.testing.assert_array_equal(again.test.line, data.test.line)  # seeded


@pytest.mark.parametrize("name", ["ml-1m", "ml-25m", "file"])
def test_canonical_split_on_a_release_without_split_files_is_a_config_error(tmp_path, name):
    folder = write_ml_folder(tmp_path / "d", "csv", ratings_rows())
    config = small_config(**{"data.dataset": name, "data.split": "u1",
                             "data.path": str(folder / "ratings.csv")})
    with pytest.raises(ConfigError, match="no 'u1' split files.*data.split = 'random'"):
        load_data(config, folder if name != "file" else None)


# ------------------------------------------------------------------- half stars


def half_star_file(tmp_path) -> Path:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,1,4.0,0\n1,2,0.5,0\n2,1,3.5,0\n")
    return path


def file_config(path: Path, **dotted):
    return config_for(**{"data.dataset": "file", "data.path": str(path), **dotted})


def test_normal_takes_half_stars_as_they_are(tmp_path):
    ratings = load_data(file_config(half_star_file(tmp_path)), None)
    everything = np.concatenate([ratings.train.rating, ratings.test.rating])
    config = file_config(half_star_file(tmp_path), **{"data.rating_scale": [0.5, 5]})
    targets = with_targets(ratings.train, make_likelihood("normal"), config)
    np.testing.assert_array_equal(targets.rating, ratings.train.rating)
    assert sorted(everything) == [0.5, 3.5, 4.0]


def test_poisson_refuses_a_half_star_naming_its_line(tmp_path):
    path = half_star_file(tmp_path)
    data = load_data(file_config(path, **{"data.test_fraction": 0.0}), None)
    with pytest.raises(DataFormatError, match=f"^{path}:3: rating 0.5 is not a "
                                              "non-negative integer count"):
        with_targets(data.train, make_likelihood("poisson"))


def test_bernoulli_thresholds_half_stars(tmp_path):
    data = load_data(file_config(half_star_file(tmp_path), **{"data.test_fraction": 0.0}),
                     None)
    targets = with_targets(data.train, make_likelihood("bernoulli", threshold=3.0))
    np.testing.assert_array_equal(targets.rating, [1.0, 0.0, 1.0])


def test_default_scale_one_to_five_names_the_half_star_below_it(tmp_path):
    path = half_star_file(tmp_path)
    config = file_config(path, **{"data.rating_scale": [1, 5], "data.test_fraction": 0.0})
    data = load_data(config, None)
    with pytest.raises(DataFormatError, match=rf"^{path}:3: rating 0.5 is outside the "
                                              r"declared scale \[1, 5\]"):
        with_targets(data.train, make_likelihood("normal"), config)


# ------------------------------------------------------------------ end to end


def test_fit_a_generic_file_through_the_cli(tmp_path):
    """A tab-separated log with string ids and an extra field, fitted for one epoch."""
    rows = ratings_rows(seed=1)
    path = tmp_path / "log.tsv"
    path.write_text("".join(f"{t}\tu{u}\tm{m}\tweb\t{r}\n" for u, m, r, t in rows))
    config = tmp_path / "mine.toml"
    config.write_text((REPO / "models" / "gaussian.toml").read_text())
    overrides = {
        "data.dataset": '"file"', "data.path": json.dumps(str(path)),
        "data.split": '"random"', "data.columns": '["timestamp","user","movie","via","rating"]',
        "data.separator": '"\\t"', "data.header": "false", "data.rating_scale": "[0.5, 5]",
        "train.epochs": "1", "train.batch_size": "64", "train.num_threads": "1",
        "model.latent_dim": "3", "eval.num_samples": "5",
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "deepfactor", "fit", str(config),
                             "--out", str(out), "--quiet", *sets],
                            capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "file" and metrics["fit"]["epochs"] == 1
    assert metrics["test"]["num_ratings"] == round(0.2 * len(rows))
    assert np.isfinite(metrics["test"]["rmse"])


def test_fit_a_ratings_dat_folder_in_process(tmp_path):
    folder = write_ml_folder(tmp_path / "ml-1m", "dat",
                             ratings_rows(stars=np.arange(1, 6.0)))
    config = config_for(**{"data.dataset": "ml-1m", "data.path": str(folder),
                           "model.likelihood": "poisson", "train.epochs": 1})
    (folder / "movies.dat").write_bytes("1::Toy Story (1995)::Animation\n"
                                        "8::Star Wars: Episode IV (1977)::Action\n"
                                        .encode("latin-1"))
    fitted = fit(config, progress=False)
    assert fitted.metrics["fit"]["epochs"] == 1
    assert fitted.metrics["test"]["num_ratings"] == round(0.2 * 240)

    from deepfactor.recommend import movie_titles
    assert movie_titles(fitted) == {"1": "Toy Story (1995)",
                                    "8": "Star Wars: Episode IV (1977)"}


def test_titles_of_each_layout_for_recommend(tmp_path):
    from deepfactor.data.layouts import read_dataset_movies

    one = tmp_path / "ml-1m"
    one.mkdir()
    (one / "movies.dat").write_bytes("1::Toy Story (1995)::Animation\n"
                                     "2::Am\xe9lie: A Tale (2001)::Comedy|Romance\n"
                                     .encode("latin-1"))
    twenty = tmp_path / "ml-20m"
    twenty.mkdir()
    (twenty / "movies.csv").write_text('movieId,title,genres\n'
                                       '11,"American President, The (1995)",Drama\n')

    ml1m = read_dataset_movies(one, "ml-1m")
    assert ml1m.titles == {"1": "Toy Story (1995)", "2": "Am\xe9lie: A Tale (2001)"}
    assert ml1m.genres["2"] == ("Comedy", "Romance")
    assert read_dataset_movies(twenty, "ml-20m").titles == {
        "11": "American President, The (1995)"}
