"""MAP by a Delta guide: its ELBO is the log joint density, and fit_map trains and scores."""

import numpy as np
import pyro
import torch

from deepfactor.batching import EncoderInputs, RatingBatcher
from deepfactor.fitted import build_modules
from deepfactor.fitting import load_data, with_targets
from deepfactor.pointfit import PointGuide, fit_map

from conftest import small_config


def test_delta_guide_elbo_is_the_log_joint_at_the_points():
    config = small_config()
    train = load_data(config).train
    model, _ = build_modules(config, train.num_movies, train.num_users)
    guide = PointGuide(train.num_movies, train.num_users, model.total_dim)
    inputs = EncoderInputs(train, train.rating, 3.0, 1.0)
    batch = RatingBatcher(train, train.rating, inputs, len(train),
                          np.random.default_rng(0)).full()
    with torch.no_grad():
        loss = pyro.infer.Trace_ELBO()(model, guide)(batch).item()
        zm = guide.points["movie"][batch.movies]
        zu = guide.points["user"][batch.users]
        eta = model.decoder(zm[batch.movie_local], zu[batch.user_local])
        log_joint = (model.likelihood.distribution(eta).log_prob(batch.target).sum()
                     + torch.distributions.Normal(0.0, 1.0).log_prob(zm).sum()
                     + torch.distributions.Normal(0.0, 1.0).log_prob(zu).sum())
    np.testing.assert_allclose(-loss, float(log_joint), rtol=1e-5)


def test_fit_map_scores_the_test_split_from_points():
    config = small_config(**{"train.epochs": 4})
    data = load_data(config)
    model, _ = build_modules(config, 1, 1)
    train, test = (with_targets(r, model.likelihood, config) for r in (data.train, data.test))
    point = fit_map(config, train, test)
    assert len(point.history) == 4
    assert point.metrics["num_ratings"] == len(test)
    assert np.isfinite(point.metrics["rmse"]) and np.isfinite(point.metrics["lpd"])
    assert float(point.posterior.z_movie_scale.abs().max()) == 0.0  # a point, no spread
    # the same seed gives the same numbers
    again = fit_map(config, train, test)
    assert again.metrics == point.metrics


def test_fit_map_starts_where_fit_does(monkeypatch):
    """The ordinal cut points start at the fit ratings' shares for MAP too."""
    from deepfactor.model import MatrixFactorization

    seen = []
    original = MatrixFactorization.start_from

    def spy(self, targets):
        seen.append(np.asarray(targets).copy())
        original(self, targets)
        seen.append(self.likelihood.cutpoints.detach().clone())

    monkeypatch.setattr(MatrixFactorization, "start_from", spy)
    config = small_config(**{"model.likelihood": "ordinal", "train.epochs": 1})
    data = load_data(config)
    model, _ = build_modules(config, 1, 1)
    train, test = (with_targets(r, model.likelihood, config) for r in (data.train, data.test))
    fit_map(config, train, test)
    targets, cutpoints = seen
    assert 0.8 * len(train) < len(targets) < len(train)  # the fit part
    shares = np.cumsum([np.sum(targets == v) + 1 for v in range(1, 6)])[:-1] / (len(targets) + 5)
    torch.testing.assert_close(cutpoints, torch.tensor(np.log(shares / (1 - shares)),
                                                       dtype=torch.float32))
