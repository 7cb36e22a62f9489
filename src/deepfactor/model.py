"""The generative model: a latent vector per movie and per user, a neural decoder, a likelihood.

.. math::

    z_i^{movie} &\\sim \\mathcal{N}(0, I_D)            \\quad i = 1..M \\\\
    z_j^{user}  &\\sim \\mathcal{N}(0, I_D)            \\quad j = 1..U \\\\
    \\eta_{ij}  &= f_\\theta(z_i^{movie} \\odot z_j^{user}) \\\\
    r_{ij}      &\\sim p(r \\mid \\eta_{ij})          \\quad (i, j) \\in \\Omega

``f_theta`` is the :class:`Decoder`, ``p(r | eta)`` a :mod:`~deepfactor.likelihoods`
family, and ``Omega`` the observed pairs. Two optional extensions, both off by
default and both still this model with standard-normal latents:

* ``decoder_inputs = "product+latents"`` feeds ``[z_i * z_j, z_i, z_j]`` to the decoder;
* ``bias_latent = true`` adds one latent dimension per entity that enters
  ``eta`` additively, ``eta_ij = f(...) + z_i[D] + z_j[D]`` (a Bayesian movie and
  user bias).

With ``pair_scale = true`` (Normal and ordinal) the decoder's last layer gives two
numbers per pair, ``eta_ij = (mu_ij, rho_ij)``: a location and the unconstrained scale of
:mod:`~deepfactor.likelihoods`; ``eta`` then has a trailing dimension of 2.

Plates and shapes (``S`` is an optional leading sample dimension added by
vectorized prediction; plates all use ``dim=-1`` of the batch shape)::

    site      plate      batch shape        event shape
    z_movie   movies     (S, batch_movies)  (D [+1],)
    z_user    users      (S, batch_users)   (D [+1],)
    rating    ratings    (S, B)             ()

The decoder's output ``eta`` has shape ``(S, B)``, or ``(S, B, 2)`` with a scale per pair.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from .batching import Batch
from .likelihoods import Likelihood

__all__ = ["Decoder", "MatrixFactorization", "DECODER_INPUTS"]

DECODER_INPUTS = ("product", "product+latents")
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


class Decoder(nn.Module):
    """f_theta: from a movie's and a user's latents to ``eta`` for the pair.

    Parameters
    ----------
    latent_dim : int
        ``D``, the dimension multiplied elementwise.
    hidden : sequence of int
        Widths of the hidden layers (the 2017 notebook used one tanh layer of 40).
    inputs : {"product", "product+latents"}
    bias_latent : bool
        Whether each latent carries one more coordinate added to ``eta``.
    activation : {"tanh", "relu", "elu"}
    outputs : {1, 2}
        Numbers per pair: ``eta``, or ``(mu, rho)`` for a likelihood with a scale per
        pair (``model.pair_scale``; :mod:`~deepfactor.likelihoods`). The second output
        starts at exactly 0 (zero weights and bias), so a fit starts from the shared
        scale.
    """

    def __init__(self, latent_dim: int, hidden=(40,), inputs: str = "product",
                 bias_latent: bool = False, activation: str = "tanh", outputs: int = 1):
        super().__init__()
        if inputs not in DECODER_INPUTS:
            raise ValueError(f"decoder inputs must be one of {DECODER_INPUTS}, got {inputs!r}")
        if outputs not in (1, 2):
            raise ValueError(f"a decoder gives 1 or 2 numbers per pair, not {outputs}")
        self.latent_dim, self.inputs, self.bias_latent = latent_dim, inputs, bias_latent
        self.outputs = outputs
        widths = [latent_dim * (3 if inputs == "product+latents" else 1), *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], outputs))
        if outputs == 2:
            with torch.no_grad():  # rho = 0: every pair starts at the shared scale
                layers[-1].weight[1].zero_()
                layers[-1].bias[1].zero_()
        self.net = nn.Sequential(*layers)

    @property
    def output_bias(self) -> torch.Tensor:
        """The bias of ``eta`` (of ``mu`` with two outputs) in the last layer, shape (1,):
        its value where every hidden unit is zero. A view: filling it sets the layer's."""
        return self.net[-1].bias[:1]

    def forward(self, z_movie: torch.Tensor, z_user: torch.Tensor) -> torch.Tensor:
        """``eta`` for paired latents of shape ``(..., total_dim)``; returns ``(...)``,
        or ``(..., 2)`` with two outputs."""
        d = self.latent_dim
        zm, zu = z_movie[..., :d], z_user[..., :d]
        features = zm * zu
        if self.inputs == "product+latents":
            features = torch.cat([features, zm, zu], dim=-1)  # (..., 3D)
        *hidden_layers, output = self.net
        h = features
        for layer in hidden_layers:
            h = layer(h)  # (..., width); bfloat16 under train.precision = "bfloat16"
        with torch.autocast(h.device.type, enabled=False):  # eta in float32 regardless
            eta = output(h.float())  # (..., outputs)
        if self.outputs == 1:
            eta = eta.squeeze(-1)  # (...)
        if self.bias_latent:  # added to eta, or to mu
            bias = z_movie[..., d] + z_user[..., d]  # (...)
            eta = eta + bias if self.outputs == 1 else torch.cat(
                [eta[..., :1] + bias.unsqueeze(-1), eta[..., 1:]], dim=-1)
        return eta


class MatrixFactorization(PyroModule):
    """p(r, z_movie, z_user) of the module docstring, evaluated on a minibatch.

    Parameters
    ----------
    num_movies, num_users : int
        ``M`` and ``U``: sizes of the movie and user plates.
    decoder : Decoder
    likelihood : Likelihood
    """

    def __init__(self, num_movies: int, num_users: int, decoder: Decoder,
                 likelihood: Likelihood):
        super().__init__()
        self.num_movies, self.num_users = num_movies, num_users
        self.decoder = decoder
        self.likelihood = likelihood

    @torch.no_grad()
    def start_from(self, targets) -> None:
        """Starting values from the fit ratings' targets (shape ``(N,)``), before training.

        The likelihood's own parameters (the ordinal cut points at the ratings' shares)
        and the decoder's output bias at the link inverse of their mean, so that the
        first steps start from the marginal distribution of the ratings.
        """
        self.likelihood.initialize(targets)
        center = float(torch.as_tensor(targets, dtype=torch.float64).mean())
        self.decoder.output_bias.fill_(self.likelihood.link_inverse_of_mean(center))

    @property
    def total_dim(self) -> int:
        """Length of each latent vector: ``D``, plus one with a bias latent."""
        return self.decoder.latent_dim + int(self.decoder.bias_latent)

    def prior(self) -> dist.Distribution:
        """Normal(0, I) over one latent vector (event shape ``(total_dim,)``)."""
        zero = self.decoder.output_bias.new_zeros(self.total_dim)
        return dist.Normal(zero, 1.0).to_event(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Run the model on ``batch``; observes ``batch.target`` unless it is None.

        Returns the sampled or observed ratings, shape ``(B,)`` (``(S, B)`` under a
        vectorizing sample plate).
        """
        # Each entity's latent, weighted so its KL counts once in expectation.
        with pyro.plate("movies", self.num_movies, subsample=batch.movies, dim=-1), \
                poutine.scale(scale=batch.movie_scale):
            z_movie = pyro.sample("z_movie", self.prior())
        with pyro.plate("users", self.num_users, subsample=batch.users, dim=-1), \
                poutine.scale(scale=batch.user_scale):
            z_user = pyro.sample("z_user", self.prior())

        # One eta per observed pair; gathers index from the right so that a leading
        # sample dimension passes through.
        # index_select, not z[..., local, :]: its gradient is summed in a fixed order
        # (fancy indexing adds atomically on several threads, so runs differed)
        eta = self.decoder(z_movie.index_select(-2, batch.movie_local),  # (..., B, total_dim)
                           z_user.index_select(-2, batch.user_local))
        with pyro.plate("ratings", batch.num_ratings, subsample=batch.rating_index, dim=-1):
            return pyro.sample("rating", self.likelihood.distribution(eta), obs=batch.target)
