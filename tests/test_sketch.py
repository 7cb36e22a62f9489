"""Sketched encoder inputs: the projection, its basis, and the paths that read it."""

import numpy as np
import pytest
import torch

from deepfactor.batching import EncoderInputs, make_batch
from deepfactor.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from deepfactor.data.ratings import IdIndex, Ratings
from deepfactor.fitted import load
from deepfactor.fitting import fit
from deepfactor.sketch import Sketch

from conftest import small_config


def _ratings(rng, num_movies=30, num_users=20, n=240) -> Ratings:
    cells = rng.choice(num_movies * num_users, size=n, replace=False)
    return Ratings(cells // num_users, cells % num_users, rng.integers(1, 6, n).astype(float),
                   IdIndex(range(num_movies)), IdIndex(range(num_users)))


def _dense_pooled(ratings: Ratings, center, spread, power=0.5):
    """Pooled presence and value rows of every user, written out densely."""
    counts = np.bincount(ratings.user, minlength=ratings.num_users).astype(float)
    weight = np.maximum(counts, 1)[ratings.user] ** -power
    presence = np.zeros((ratings.num_users, ratings.num_movies))
    value = np.zeros_like(presence)
    np.add.at(presence, (ratings.user, ratings.movie), weight)
    np.add.at(value, (ratings.user, ratings.movie), weight * (ratings.rating - center) / spread)
    return presence, value


def test_the_sketch_is_each_pooled_row_projected_onto_the_basis(rng):
    ratings = _ratings(rng)
    plain = EncoderInputs(ratings, ratings.rating, 3.0, 1.2)
    sketch = Sketch.fit(plain.by_movie, plain.by_user, 6, 0.5, seed=1)
    inputs = plain.with_sketch(sketch)
    users = np.array([0, 4, 7])

    bag = inputs.user_bag(users)
    presence, value = _dense_pooled(ratings, 3.0, 1.2)
    basis = sketch.user.directions.double().numpy()  # (num_movies, d)
    expected = np.hstack([presence[users] @ basis,
                          value[users] @ basis / sketch.user.value_scale.double().numpy()])
    np.testing.assert_allclose(bag.matrix.values.double().numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    assert bag.dense_grad and bag.matrix.shape == (3, 12)
    np.testing.assert_array_equal(bag.counts.numpy(), np.bincount(ratings.user)[users])
    # the batch path and the every-entity path read the same rows
    every = inputs.every_user().matrix.values
    torch.testing.assert_close(every[torch.from_numpy(users)], bag.matrix.values)
    # the original inputs are untouched
    assert plain.sketch is None and plain.user_bag(users).matrix.shape[1] != 12


def test_a_basis_as_wide_as_the_columns_keeps_every_row(rng):
    """With d >= number of columns the directions span them all: rows are recoverable."""
    ratings = _ratings(rng, num_movies=12, num_users=25, n=150)
    plain = EncoderInputs(ratings, ratings.rating, 3.0, 1.0)
    sketch = Sketch.fit(plain.by_movie, plain.by_user, 16, 0.5, seed=0)
    basis = sketch.user.directions.double().numpy()  # (12 movies, 16); 4 columns zero
    assert np.all(basis[:, 12:] == 0)
    presence, _ = _dense_pooled(ratings, 3.0, 1.0)
    coordinates = plain.with_sketch(sketch).every_user().matrix.values.double().numpy()[:, :16]
    recovered = np.linalg.lstsq(basis.T, coordinates.T, rcond=None)[0].T
    np.testing.assert_allclose(recovered, presence, atol=1e-4)


def test_a_narrow_basis_keeps_the_top_directions_and_unit_scale(rng):
    ratings = _ratings(rng, num_movies=40, num_users=60, n=900)
    plain = EncoderInputs(ratings, ratings.rating, 3.0, 1.2)
    d = 5
    sketch = Sketch.fit(plain.by_movie, plain.by_user, d, 0.5, seed=0)
    unit = sketch.user.directions.double().numpy()
    unit = unit / np.linalg.norm(unit, axis=0)
    np.testing.assert_allclose(unit.T @ unit, np.eye(d), atol=1e-6)  # orthonormal

    # the subspace is (up to the randomized SVD's error) the top-d right singular space
    presence, value = _dense_pooled(ratings, 3.0, 1.2)
    top = np.linalg.svd(np.vstack([presence, value]), full_matrices=False)[2][:d].T
    cosines = np.linalg.svd(top.T @ unit, compute_uv=False)
    assert cosines.min() > 0.95, cosines

    coordinates = plain.with_sketch(sketch).every_user().matrix.values.double().numpy()
    rms = np.sqrt(np.mean(coordinates ** 2, axis=0))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-4)  # every user here has ratings


def test_the_same_seed_gives_the_same_basis(rng):
    ratings = _ratings(rng)
    plain = EncoderInputs(ratings, ratings.rating, 3.0, 1.0)
    a, b = (Sketch.fit(plain.by_movie, plain.by_user, 6, 0.5, seed=3) for _ in range(2))
    torch.testing.assert_close(a.movie.directions, b.movie.directions, rtol=0, atol=0)


def test_batches_read_sketches_and_the_first_layer_is_dense():
    config = small_config(**{"guide.inputs": "sketch", "guide.sketch_dim": 4})
    fitted = fit(config, progress=False)
    first = fitted.guide.movie_encoder.first
    assert first.shape == (2 * 4, 16)  # 2 d inputs, no weight per user
    r = fitted.encoder_ratings
    batch = make_batch(r, r.rating, np.arange(50), fitted.inputs)
    loc, _ = fitted.guide.movie_encoder(batch.movie_bag)
    torch.testing.assert_close(loc, fitted.posterior.z_movie_loc[batch.movies])


def test_a_checkpoint_without_its_basis_is_refused(tmp_path):
    fitted = fit(small_config(**{"guide.inputs": "sketch", "guide.sketch_dim": 4}),
                 progress=False)
    path = fitted.save(tmp_path)
    state = load_checkpoint(path)
    state["sketch"] = None
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="'sketch' but there is no sketch basis"):
        load(tmp_path)


def test_a_run_saved_before_guide_inputs_existed_loads_as_sparse(tmp_path):
    """Runs saved by earlier versions read sparse rows; their configs lack the key."""
    fitted = fit(small_config(), progress=False)  # guide.inputs = "sparse"
    path = fitted.save(tmp_path)
    state = load_checkpoint(path)
    del state["config"]["guide"]["inputs"], state["sketch"]
    save_checkpoint(path, state)
    again = load(tmp_path)
    assert again.config["guide.inputs"] == "sparse"
    torch.testing.assert_close(again.posterior.z_user_loc, fitted.posterior.z_user_loc)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s["sketch"]["movie"].update(directions=s["sketch"]["movie"]["directions"][:, :2]),
     r"damaged: a sketch basis of shape \(\d+, 2\), expected \(\d+, 4\)"),
    (lambda s: s.pop("input_standardization"), "damaged: KeyError"),
    (lambda s: s["encoder_ratings"].update(movie=s["encoder_ratings"]["movie"] + 10_000),
     "damaged: ValueError"),
])
def test_a_checkpoint_damaged_inside_is_a_clear_error(tmp_path, damage, message):
    fitted = fit(small_config(**{"guide.inputs": "sketch", "guide.sketch_dim": 4}),
                 progress=False)
    path = fitted.save(tmp_path)
    state = load_checkpoint(path)
    damage(state)
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=message):
        load(tmp_path)
