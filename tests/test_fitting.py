"""End-to-end fits on small synthetic data: held-out isolation, metrics, determinism."""

import numpy as np
import pytest

from deepfactor.data.ratings import Ratings
from deepfactor.fitting import SplitData, fit, load_data

from conftest import small_config


def _perturbed(test: Ratings, rng) -> Ratings:
    return Ratings(test.movie, test.user, rng.uniform(-50, 50, len(test)), test.movie_ids,
                   test.user_ids, test.source, test.line)


def _untimed(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("inputs", ["sparse", "sketch"])
def test_held_out_values_change_no_prediction(rng, inputs):
    config = small_config(**{"guide.inputs": inputs, "guide.sketch_dim": 8})
    data = load_data(config)
    changed = SplitData(data.train, _perturbed(data.test, rng), data.name)
    a = fit(config, data=data, progress=False)
    b = fit(config, data=changed, progress=False)

    pairs = (np.arange(20) % a.posterior.z_movie_loc.shape[0],
             np.arange(20) % a.posterior.z_user_loc.shape[0])
    np.testing.assert_array_equal(a.summaries(*pairs)["mean"], b.summaries(*pairs)["mean"])
    users, movies = a.user_ids.raw_of(data.test.user), a.movie_ids.raw_of(data.test.movie)
    assert a.predict(users, movies).equals(b.predict(users, movies))
    assert _untimed(a.history) == _untimed(b.history)  # training never saw them either
    assert a.metrics["test"]["rmse"] != b.metrics["test"]["rmse"]  # but they are scored


def test_same_seed_same_numbers_other_seed_other_numbers():
    runs = [fit(small_config(**{"train.seed": s}), progress=False) for s in (3, 3, 4)]
    assert _untimed(runs[0].history) == _untimed(runs[1].history)
    assert runs[0].metrics["test"] == runs[1].metrics["test"]
    assert runs[0].metrics["test"]["lpd"] != runs[2].metrics["test"]["lpd"]


@pytest.mark.parametrize("likelihood, keys", [
    ("normal", ("rmse", "mae")),
    ("poisson", ("rmse", "deviance")),
    ("bernoulli", ("auc", "log_loss", "accuracy")),
    ("ordinal", ("rmse", "mae")),
])
def test_metrics_layout(likelihood, keys):
    fitted = fit(small_config(**{"model.likelihood": likelihood}), progress=False)
    m = fitted.metrics
    for key in (*keys, "lpd", "num_ratings"):
        assert key in m["test"] and key in m["reference"]["bias"]
        assert key in m["reference"]["global_mean"]
    assert m["test"]["num_ratings"] == m["test_warm"]["num_ratings"] + m["test_cold"]["num_ratings"]
    assert set(m["ratio_to_reference"]["bias"]) == {*keys, "lpd_difference"}
    assert m["fit"]["epochs"] == len(fitted.history) == 3
    assert m["fit"]["num_fit_ratings"] + m["fit"]["num_validation_ratings"] == \
        m["fit"]["num_train_ratings"]
    assert np.isfinite(m["fit"]["final_elbo"])
    if likelihood == "bernoulli":  # one probability per pair: log-loss is minus the lpd
        for scores in (m["test"], m["reference"]["bias"], m["reference"]["global_mean"]):
            assert scores["log_loss"] == pytest.approx(-scores["lpd"], rel=1e-6)


def test_cold_start_ratings_are_scored_from_the_prior():
    config = small_config()
    data = load_data(config)
    # make one test movie cold: drop its training ratings
    movie = data.test.movie[0]
    train = data.train.subset(data.train.movie != movie)
    fitted = fit(config, data=SplitData(train, data.test, data.name), progress=False)
    assert fitted.metrics["test"]["num_cold"] >= (data.test.movie == movie).sum()
    assert fitted.metrics["test_cold"]["num_ratings"] == fitted.metrics["test"]["num_cold"]
    np.testing.assert_array_equal(fitted.posterior.z_movie_loc[movie], 0.0)
    np.testing.assert_array_equal(fitted.posterior.z_movie_scale[movie], 1.0)


def test_training_diverges_with_a_named_step():
    from deepfactor.train import TrainingDiverged

    config = small_config(**{"train.lr": 1e6, "train.epochs": 20})
    with pytest.raises(TrainingDiverged, match=r"at step \d+|after step \d+"):
        fit(config, progress=False)


@pytest.mark.slow
def test_fit_recovers_the_noise_scale_of_simulated_data():
    # Data drawn from the model itself, eta with sd SIGNAL_SD and noise NOISE_SD. Not
    # learning anything leaves sigma at hypot(SIGNAL_SD, NOISE_SD) = 1.12; learning all
    # of eta gives NOISE_SD. A fit must land near the truth, and not below the noise.
    from deepfactor.simulate import NOISE_SD, SIGNAL_SD

    config = small_config(**{"data.synthetic_movies": 200, "data.synthetic_users": 150,
                             "data.synthetic_ratings": 8000, "train.epochs": 60,
                             "train.batch_size": 1000, "train.patience": 0,
                             "model.latent_dim": 3})
    fitted = fit(config, progress=False)
    sigma = float(fitted.model.likelihood.sigma.detach())
    unexplained = (sigma**2 - NOISE_SD**2) / SIGNAL_SD**2
    assert 0.9 * NOISE_SD < sigma and unexplained < 0.25
    # and it predicts held-out ratings clearly better than the training mean does
    assert fitted.metrics["ratio_to_reference"]["global_mean"]["rmse"] < 0.75


def test_synthetic_bernoulli_data_survive_the_configured_threshold():
    data = load_data(small_config(**{"model.likelihood": "bernoulli"}))
    from deepfactor.likelihoods import make_likelihood

    liked = make_likelihood("bernoulli", threshold=3.0).prepare(data.train.rating)
    assert 0.1 < liked.mean() < 0.9  # both classes present, as the model drew them


def test_scoring_ratings_the_encoders_read_warns():
    from deepfactor.fitting import HeldOutOverlapWarning, evaluate

    config = small_config()
    data = load_data(config)
    fitted = fit(config, data=data, progress=False)
    some_train = data.train.subset(np.arange(15))
    leaky = Ratings(np.concatenate([data.test.movie, some_train.movie]),
                    np.concatenate([data.test.user, some_train.user]),
                    np.concatenate([data.test.rating, some_train.rating]),
                    data.test.movie_ids, data.test.user_ids)
    with pytest.warns(HeldOutOverlapWarning, match=r"^15 of the \d+ test ratings"):
        evaluate(fitted, leaky)
    evaluate(fitted, data.test)  # the split's own test file: no warning (warnings are errors)


def test_bernoulli_reference_log_loss_is_minus_its_lpd_when_the_bias_model_overshoots(
        monkeypatch):
    # the linear bias model can predict outside [0, 1] (it does on MovieLens); its
    # log-loss and lpd must then use the same clipped probability
    from deepfactor.baselines import BiasModel

    original = BiasModel.predict

    def overshooting(self, movie, user):
        p = original(self, movie, user).copy()
        p[::3], p[1::3] = 1.3, -0.2
        return p

    monkeypatch.setattr(BiasModel, "predict", overshooting)
    fitted = fit(small_config(**{"model.likelihood": "bernoulli", "train.epochs": 1}),
                 progress=False)
    bias = fitted.metrics["reference"]["bias"]
    assert bias["log_loss"] == pytest.approx(-bias["lpd"], rel=1e-9)
