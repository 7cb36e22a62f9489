"""The ELBO taken apart: expected log-likelihood, the KL of the movies and of the users.

.. math::

    \\mathcal{L} = \\underbrace{\\sum_{(i,j) \\in \\Omega} E_q[\\log p(r_{ij} \\mid z_i, z_j)]}
                   _{\\text{expected log-likelihood}}
                 - \\underbrace{\\sum_i KL(q(z_i) \\| p(z_i))}_{\\text{movies}}
                 - \\underbrace{\\sum_j KL(q(z_j) \\| p(z_j))}_{\\text{users}}

The training loss (:mod:`deepfactor.train`) estimates :math:`-\\mathcal{L}` from one
minibatch; here each part is computed over all the ratings the ELBO covers: the first
by Monte Carlo over ``num_samples`` draws of every latent, the two KL sums in closed
form (both q and p are diagonal Normals). :func:`elbo_recorder` hands this to
:func:`deepfactor.fitting.fit` so that every epoch of a fit records its parts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import diagnostics as dg
from .batching import EncoderInputs, RatingBatcher
from .data.ratings import Ratings
from .guide import AmortizedGuide
from .model import MatrixFactorization
from .predict import chunks, draw_eta, encode_posterior

__all__ = ["elbo_parts", "elbo_recorder"]


@torch.no_grad()
def elbo_parts(model: MatrixFactorization, guide: AmortizedGuide, inputs: EncoderInputs,
               ratings: Ratings, targets: np.ndarray, *, num_samples: int = 4,
               seed: int = 0) -> dict[str, float]:
    """The parts of the full-data ELBO over ``ratings``, in nats (totals, not per rating).

    Parameters
    ----------
    model, guide
        At their current parameters.
    inputs : EncoderInputs
        What the encoders read (during training: the fit part).
    ratings : Ratings
        The ``N`` ratings the ELBO covers.
    targets : ndarray, shape (N,)
        The likelihood's targets of ``ratings``.
    num_samples : int
        Draws of every latent for the expected log-likelihood.
    seed : int
        Seeds those draws.

    Returns
    -------
    dict
        ``expected_loglik``, ``kl_movie``, ``kl_user``, ``elbo`` (the first less the
        other two), ``active`` (latent dimensions whose mean KL exceeds
        :data:`deepfactor.diagnostics.ACTIVE_KL_NATS` for both movies and users).
    """
    posterior = encode_posterior(guide, inputs, ratings.num_movies, ratings.num_users)
    generator = torch.Generator().manual_seed(seed)
    loglik = 0.0
    for part in chunks(len(ratings)):
        eta = draw_eta(model, posterior, ratings.movie[part], ratings.user[part], num_samples,
                       generator)  # (S, chunk)
        target = torch.as_tensor(targets[part], dtype=eta.dtype)
        loglik += float(model.likelihood.distribution(eta).log_prob(target).mean(0).sum())

    # mean KL per dimension over rated entities (cold ones have q = p: KL 0)
    kl_m = dg.kl_per_dimension(posterior.z_movie_loc.numpy(), posterior.z_movie_scale.numpy(),
                               ratings.movie_counts())
    kl_u = dg.kl_per_dimension(posterior.z_user_loc.numpy(), posterior.z_user_scale.numpy(),
                               ratings.user_counts())
    kl_movie = float(kl_m.sum() * np.count_nonzero(ratings.movie_counts()))
    kl_user = float(kl_u.sum() * np.count_nonzero(ratings.user_counts()))
    d = model.decoder.latent_dim
    active = int(np.sum((kl_m[:d] > dg.ACTIVE_KL_NATS) & (kl_u[:d] > dg.ACTIVE_KL_NATS)))
    return {"expected_loglik": loglik, "kl_movie": kl_movie, "kl_user": kl_user,
            "elbo": loglik - kl_movie - kl_user, "active": active}


def elbo_recorder(num_samples: int = 4, seed: int = 0
                  ) -> Callable[[MatrixFactorization, AmortizedGuide, RatingBatcher], dict]:
    """A ``record`` callback for :func:`deepfactor.fitting.fit`: the ELBO's parts per epoch.

    Each epoch then costs one more pass of the decoder over the fit ratings per draw.
    """
    def record(model, guide, batcher: RatingBatcher) -> dict[str, float]:
        return elbo_parts(model, guide, batcher.inputs, batcher.ratings, batcher.targets,
                          num_samples=num_samples, seed=seed)

    return record
