"""Posterior predictive draws and summaries for (movie, user) pairs.

After fitting, the encoders give every entity its approximate posterior
``q(z) = N(loc, diag(scale^2))`` (:class:`Posterior`). The posterior predictive of
a pair is the mixture

.. math::

    p(r_{ij} \\mid \\text{data}) \\approx
    \\frac{1}{S} \\sum_{s=1}^S p(r \\mid \\eta^{(s)}_{ij}),
    \\qquad \\eta^{(s)}_{ij} = f_\\theta(z_i^{(s)} \\odot z_j^{(s)}),\\; z^{(s)} \\sim q.

Draws are made per entity, not per pair, so within one chunk of pairs and one draw a
movie has one latent shared by all its pairs, as in the model. Pairs are processed in
chunks, which bounds memory at about ``S x chunk x decoder width`` floats whatever the
number of pairs; each chunk draws afresh, which is right for the per-pair summaries made
here but not for statistics over many pairs at once (``deepfactor.checks`` draws each
latent once for all chunks for those).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .batching import EncoderInputs
from .guide import AmortizedGuide
from .likelihoods import quantile_key
from .model import MatrixFactorization

__all__ = ["Posterior", "encode_posterior", "draw_eta", "predictive_summaries", "draw_count"]

#: Pairs decoded at once; 4096 pairs x 100 draws x 40 hidden units is about 65 MB.
DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class Posterior:
    """Per-entity parameters of q, for every movie and user of the id maps.

    Attributes
    ----------
    z_movie_loc, z_movie_scale : Tensor, shape (num_movies, total_dim)
    z_user_loc, z_user_scale : Tensor, shape (num_users, total_dim)
    """

    z_movie_loc: torch.Tensor
    z_movie_scale: torch.Tensor
    z_user_loc: torch.Tensor
    z_user_scale: torch.Tensor


@torch.no_grad()
def encode_posterior(guide: AmortizedGuide, inputs: EncoderInputs, num_movies: int,
                     num_users: int, chunk: int = 8192) -> Posterior:
    """Run both encoders over every entity, reading only ``inputs``."""
    def run(encoder, bag_of, n):
        parts = [encoder(bag_of(np.arange(s, min(s + chunk, n)))) for s in range(0, n, chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    zm_loc, zm_scale = run(guide.movie_encoder, inputs.movie_bag, num_movies)
    zu_loc, zu_scale = run(guide.user_encoder, inputs.user_bag, num_users)
    return Posterior(zm_loc, zm_scale, zu_loc, zu_scale)


@torch.no_grad()
def draw_eta(model: MatrixFactorization, posterior: Posterior, movie: np.ndarray,
             user: np.ndarray, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Draws of ``eta`` for pairs (movie[k], user[k]); shape ``(num_samples, len(movie))``,
    or ``(num_samples, len(movie), 2)`` with a scale per pair (``model.pair_scale``)."""
    movies, movie_local = np.unique(movie, return_inverse=True)
    users, user_local = np.unique(user, return_inverse=True)
    z_movie = _draw(posterior.z_movie_loc, posterior.z_movie_scale, movies, num_samples,
                    generator)  # (S, distinct movies, total_dim)
    z_user = _draw(posterior.z_user_loc, posterior.z_user_scale, users, num_samples, generator)
    return model.decoder(z_movie[:, torch.from_numpy(movie_local)],  # (S, chunk, total_dim)
                         z_user[:, torch.from_numpy(user_local)])


def _draw(loc, scale, rows, num_samples, generator):
    rows = torch.from_numpy(rows)
    eps = torch.randn((num_samples, len(rows), loc.shape[-1]), generator=generator,
                      dtype=loc.dtype)
    return loc[rows] + scale[rows] * eps


def draw_count(num_samples: int | None, default: int) -> int:
    """``num_samples`` posterior draws, or ``default`` for None; at least 1.

    Raises
    ------
    ValueError
        For 0 or a negative number (0 once meant "the default" by accident).
    """
    if num_samples is None:
        return default
    if num_samples < 1:
        raise ValueError(f"the number of posterior draws must be at least 1, "
                         f"got {num_samples}")
    return int(num_samples)


def chunks(n: int, size: int = DEFAULT_CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def predictive_summaries(model: MatrixFactorization, posterior: Posterior, movie: np.ndarray,
                         user: np.ndarray, *, num_samples: int, seed: int,
                         target: np.ndarray | None = None,
                         quantiles: tuple[float, ...] = (0.05, 0.95),
                         chunk: int = DEFAULT_CHUNK) -> dict[str, np.ndarray]:
    """Posterior predictive mean, sd and quantiles per pair, and the lpd if ``target`` is given.

    Parameters
    ----------
    movie, user : ndarray of int, shape (N,)
        Index pairs.
    num_samples : int
        ``S``, posterior draws per chunk.
    seed : int
        Seeds the draws, so the same call gives the same numbers.
    target : ndarray, shape (N,), optional
        Observed values (the likelihood's targets) for the log predictive density.

    Returns
    -------
    dict of ndarray, each of shape (N,)
        ``mean``, ``sd``, one key per quantile (``q05``, ``q95``), and ``lpd`` (log
        predictive density per pair, nats) when ``target`` is given.
    """
    generator = torch.Generator().manual_seed(seed)
    likelihood = model.likelihood
    parts: dict[str, list[torch.Tensor]] = {}
    for part in chunks(len(movie), chunk):
        eta = draw_eta(model, posterior, movie[part], user[part], num_samples, generator)
        out = likelihood.predictive_summary(eta, quantiles)
        if target is not None:
            t = torch.as_tensor(target[part], dtype=eta.dtype)
            out["lpd"] = likelihood.log_predictive_density(eta, t)
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
    if not parts:  # no pairs: the same keys, empty
        keys = ["mean", "sd", *map(quantile_key, quantiles)] + (["lpd"] if target is not None
                                                                 else [])
        return {key: np.empty(0) for key in keys}
    return {key: torch.cat(v).numpy().astype(np.float64) for key, v in parts.items()}
