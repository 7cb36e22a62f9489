"""The amortized guide: one encoder per entity type, reading that entity's training ratings.

.. math::

    q(z_i^{movie} \\mid r_{i\\cdot}) = \\mathcal{N}(\\mu_\\phi(r_{i\\cdot}),
                                             \\mathrm{diag}\\, \\sigma_\\phi(r_{i\\cdot})^2),
    \\qquad
    q(z_j^{user} \\mid r_{\\cdot j}) = \\mathcal{N}(\\mu_\\psi(r_{\\cdot j}),
                                             \\mathrm{diag}\\, \\sigma_\\psi(r_{\\cdot j})^2)

where ``r_i.`` is movie ``i``'s row of observed training ratings (a sparse vector over
users) and ``r_.j`` user ``j``'s column. Both encoders are the same class,
:class:`Encoder`, instantiated twice.

Sparse first layer
    The first layer of an encoder is linear in the sparse row. For entity ``i``
    with ratings ``{(k, v_ik)}`` (``v`` standardized from training data), it is

    .. math::  a_i = n_i^{-p} \\sum_k (P_k + v_{ik} V_k) + c \\log(1 + n_i) + b

    with one presence vector ``P_k`` and one value vector ``V_k`` per column ``k``:
    one sparse-dense product (:class:`~deepfactor.sparse.SparseMatrix`), so its cost
    is proportional to the number of ratings read and no dense ``movies x users``
    matrix is ever built. The pooling power ``p`` (0.5 by default, as in SVD++)
    keeps the input on one scale for entities with 1 or 500 ratings; the
    ``log(1 + n)`` term tells the encoder how much evidence it has, which the
    posterior scale should reflect.

Entities with no training ratings (cold start) get the prior, ``N(0, I)``: their
predictions come from the prior predictive.

Bounded inputs in training (``guide.max_inputs = K``)
    During training an entity with ``n > K`` ratings is encoded from a uniformly
    random subset ``S`` of ``K`` of them, drawn afresh at each step, with the sum
    rescaled by ``n / K`` so that ``E_S[a_i(S)] = a_i`` (the ``log(1 + n)`` term keeps
    the true ``n``); see :class:`~deepfactor.batching.SparseBag`. For each fixed
    ``S`` the encoders define a valid guide ``q_S``, so the objective optimized is

    .. math::  \\mathcal{L}_K(\\theta, \\phi) = E_S[\\mathrm{ELBO}(\\theta, q_{\\phi, S})]
               \\le \\log p_\\theta(r),

    an average of lower bounds, hence a lower bound itself. The subsets are drawn
    independently of the rating minibatch, so the weighted minibatch estimator of
    :mod:`deepfactor.batching` stays unbiased for ``L_K``. ``L_K`` is not the ELBO of
    the guide that reads all ratings (``tanh`` is not linear, so an unbiased input
    does not give unbiased ``loc``/``scale``); prediction, checks and fold-in read all
    ratings, which is that guide. With ``K`` above the largest count the two agree.

    Gradient of the first layer. Only the weight rows of the columns a bag touches
    are gathered (``columns``), with a sparse gradient: a step updates those rows only
    (:class:`~deepfactor.optim.RowSparseAdam`), so its cost does not grow with the
    number of columns.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from .batching import Batch, SparseBag

__all__ = ["Encoder", "AmortizedGuide"]

# A posterior scale of exactly zero makes log q infinite; this floor is far below any
# scale the data can support (the prior's is 1).
_MIN_SCALE = 1e-4


class Encoder(nn.Module):
    """Amortized q(z | observed ratings of one entity) = Normal(loc, diag(scale^2)).

    Parameters
    ----------
    num_inputs : int
        ``K``, the number of columns of the rows it reads (``num_users`` for the
        movie encoder); its sparse layer has ``2 K`` input channels.
    latent_dim : int
        Length of the latent it outputs (``total_dim`` of the model).
    hidden : sequence of int
        Widths of the hidden layers; the first is the sparse layer's width.
    sparse_grad : bool
        Give the first-layer weight a sparse gradient (rows of the touched columns
        only). Optimizers that take dense gradients only need False.
    """

    def __init__(self, num_inputs: int, latent_dim: int, hidden=(128,),
                 sparse_grad: bool = True):
        super().__init__()
        self.sparse_grad = sparse_grad
        if not hidden:
            raise ValueError("an encoder needs at least one hidden layer")
        width = hidden[0]
        # rows 0..K-1: presence vectors P_k; rows K..2K-1: value vectors V_k
        self.first = nn.Parameter(torch.randn(2 * num_inputs, width) / width**0.5)
        self.evidence = nn.Parameter(torch.zeros(width))
        self.first_bias = nn.Parameter(torch.zeros(width))
        layers: list[nn.Module] = []
        for w_in, w_out in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(w_in, w_out), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.loc = nn.Linear(hidden[-1], latent_dim)
        self.scale = nn.Linear(hidden[-1], latent_dim)

    def forward(self, bag: SparseBag) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters for the entities of ``bag``.

        Returns
        -------
        loc, scale : Tensor, shape (num_entities, latent_dim)
        """
        sparse = self.sparse_grad and not bag.dense_grad
        weight = F.embedding(bag.columns, self.first, sparse=sparse)  # (C, width)
        a = bag.matrix.matmul(weight)  # (E, width): pooled P_k + v_k V_k
        a = a + self.evidence * torch.log1p(bag.counts).unsqueeze(-1) + self.first_bias
        h = self.body(torch.tanh(a))  # (E, hidden[-1]); bfloat16 under train.precision
        with torch.autocast(h.device.type, enabled=False):  # loc and scale in float32
            h = h.float()
            loc = self.loc(h)
            scale = F.softplus(self.scale(h)) + _MIN_SCALE

        # Cold-start entities have read nothing: their posterior is the prior.
        cold = (bag.counts == 0).unsqueeze(-1)
        return torch.where(cold, 0.0, loc), torch.where(cold, 1.0, scale)


class AmortizedGuide(PyroModule):
    """q(z_movie, z_user | training ratings), mean-field over entities given the data.

    The sites, plates and per-entity scales mirror :class:`~deepfactor.model.MatrixFactorization`
    exactly: a scale in one and not the other silently biases the ELBO.

    Parameters
    ----------
    movie_encoder, user_encoder : Encoder
    num_movies, num_users : int
    """

    def __init__(self, movie_encoder: Encoder, user_encoder: Encoder,
                 num_movies: int, num_users: int):
        super().__init__()
        self.movie_encoder, self.user_encoder = movie_encoder, user_encoder
        self.num_movies, self.num_users = num_movies, num_users

    def forward(self, batch: Batch) -> None:
        z_movie_loc, z_movie_scale = _rows(self.movie_encoder(batch.movie_bag),
                                           batch.movie_rows)  # (batch movies, D) each
        with pyro.plate("movies", self.num_movies, subsample=batch.movies, dim=-1), \
                poutine.scale(scale=batch.movie_scale):
            pyro.sample("z_movie", dist.Normal(z_movie_loc, z_movie_scale).to_event(1))

        z_user_loc, z_user_scale = _rows(self.user_encoder(batch.user_bag),
                                         batch.user_rows)  # (batch users, D) each
        with pyro.plate("users", self.num_users, subsample=batch.users, dim=-1), \
                poutine.scale(scale=batch.user_scale):
            pyro.sample("z_user", dist.Normal(z_user_loc, z_user_scale).to_event(1))


def _rows(loc_scale: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor | None):
    """The batch's rows of an encoder output over every entity (None: already those)."""
    loc, scale = loc_scale
    if rows is None:
        return loc, scale
    return loc.index_select(0, rows), scale.index_select(0, rows)  # a fixed-order gradient
