"""Classic matrix factorization by MAP: the same model, a point estimate per entity.

The model is :class:`~deepfactor.model.MatrixFactorization` unchanged (Normal(0, I)
priors, decoder, likelihood). Only the guide differs: :class:`PointGuide` puts a
Delta distribution at a free vector per movie and per user, so that ``Trace_ELBO``
(whose ``log q`` term is 0 for a Delta) maximizes

.. math::

    \\sum_{(i,j) \\in \\Omega} \\log p(r_{ij} \\mid z_i, z_j)
      + \\sum_i \\log p(z_i) + \\sum_j \\log p(z_j),

the log posterior density: MAP, with the prior acting as an L2 penalty of weight 1/2
on each latent. Training is the library's own loop (same minibatch weights, warm-up,
early stopping on the validation carve), so the comparison with the Bayesian fit
changes the guide and nothing else.

Simplified: there is no encoder, so an entity's vector is learned from its fit-part
ratings only; an entity with none (its ratings all in the validation carve, or a test-only
entity) is put at the prior mode 0. Its predictive distribution is the likelihood at
the point estimate: no posterior uncertainty, which is what "point estimate" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from .batching import Batch, EncoderInputs, RatingBatcher
from .config import Config
from .data.splits import carve_validation
from .fitted import build_modules
from .metrics import rating_metrics
from .model import MatrixFactorization
from .predict import Posterior, predictive_summaries
from .reproducibility import configure_threads, set_seed
from .train import SVITrainer, TrainSettings, make_elbo

__all__ = ["PointGuide", "PointFit", "fit_map"]


class PointGuide(PyroModule):
    """q(z_movie, z_user) = Delta(point_i) x Delta(point_j): one free vector per entity.

    Parameters
    ----------
    num_movies, num_users : int
    total_dim : int
        Length of each latent (``total_dim`` of the model).
    init_scale : float
        Starting points are Normal(0, init_scale^2): small, but not the symmetric 0.
    """

    def __init__(self, num_movies: int, num_users: int, total_dim: int,
                 init_scale: float = 0.1):
        super().__init__()
        self.num_movies, self.num_users = num_movies, num_users
        self.points = nn.ParameterDict({
            "movie": nn.Parameter(init_scale * torch.randn(num_movies, total_dim)),
            "user": nn.Parameter(init_scale * torch.randn(num_users, total_dim))})

    def forward(self, batch: Batch) -> None:
        # the same plates and per-entity scales as the model's, as in AmortizedGuide
        with pyro.plate("movies", self.num_movies, subsample=batch.movies, dim=-1), \
                poutine.scale(scale=batch.movie_scale):
            pyro.sample("z_movie", dist.Delta(self.points["movie"][batch.movies], event_dim=1))
        with pyro.plate("users", self.num_users, subsample=batch.users, dim=-1), \
                poutine.scale(scale=batch.user_scale):
            pyro.sample("z_user", dist.Delta(self.points["user"][batch.users], event_dim=1))

    @torch.no_grad()
    def posterior(self, movie_counts: np.ndarray, user_counts: np.ndarray) -> Posterior:
        """The points as a :class:`Posterior` of scale 0; entities without ratings at 0."""
        def point(kind, counts):
            rated = torch.from_numpy(np.asarray(counts) > 0).unsqueeze(-1)
            return torch.where(rated, self.points[kind], 0.0).detach().clone()

        movie, user = point("movie", movie_counts), point("user", user_counts)
        return Posterior(movie, torch.zeros_like(movie), user, torch.zeros_like(user))


@dataclass
class PointFit:
    """A MAP fit: the model, its points, held-out metrics and the training history."""

    model: MatrixFactorization
    posterior: Posterior
    metrics: dict
    history: list[dict] = field(default_factory=list)


def fit_map(config: Config, train, test, *, progress: bool = False) -> PointFit:
    """Fit the model of ``config`` by MAP on ``train`` and score ``test``.

    Parameters
    ----------
    config : Config
        As for :func:`deepfactor.fitting.fit`; ``guide.*`` keys are not used.
    train, test : Ratings
        On shared id maps, values the likelihood's targets
        (:func:`deepfactor.fitting.with_targets`).

    Returns
    -------
    PointFit
        ``metrics`` holds :func:`deepfactor.metrics.rating_metrics` of ``test``.
    """
    set_seed(config["train.seed"])
    configure_threads(config["train.num_threads"])
    pyro.settings.set(module_local_params=True)
    model, _ = build_modules(config, train.num_movies, train.num_users)
    guide = PointGuide(train.num_movies, train.num_users, model.total_dim)
    fit_part, val_part = carve_validation(train, config["data.validation_fraction"],
                                          config["train.seed"])
    center = float(np.mean(fit_part.rating))
    model.start_from(fit_part.rating)  # as fit() does
    # the batcher wants encoder inputs; the point guide never reads them
    inputs = EncoderInputs(fit_part, fit_part.rating, center, 1.0)
    # random batches: blocks save encoder work, and this guide has no encoders
    batcher = RatingBatcher(fit_part, fit_part.rating, inputs, config["train.batch_size"],
                            np.random.default_rng(config["train.seed"]), order="random")
    counts = (fit_part.movie_counts(), fit_part.user_counts())

    def scores(ratings) -> dict[str, np.ndarray]:
        return predictive_summaries(model, guide.posterior(*counts), ratings.movie, ratings.user,
                                    num_samples=1, seed=0, target=ratings.rating)

    def validate() -> dict[str, float]:
        if len(val_part) == 0:
            return {}
        out = scores(val_part)
        return {"lpd": float(np.mean(out["lpd"])),
                "rmse": float(np.sqrt(np.mean((out["mean"] - val_part.rating) ** 2)))}

    loss_fn = make_elbo("trace")(model, guide)
    result = SVITrainer(loss_fn, batcher, validate, TrainSettings.from_config(config),
                        progress=progress).run()
    model.eval()
    out = scores(test)
    metrics = rating_metrics(config["model.likelihood"], test.rating, out["mean"], out["lpd"])
    return PointFit(model, guide.posterior(*counts), metrics, result.history)
