"""Observation models: from the decoder's output ``eta`` to a distribution of ratings.

Each family maps the real number ``eta_ij`` that the decoder gives for a
(movie, user) pair to the distribution of the observed value ``r_ij``:

======================  ==============================  ===========================
family                  p(r | eta)                      data it accepts
======================  ==============================  ===========================
``normal``              Normal(eta, sigma), sigma > 0   any finite real (star ratings)
                        learned
``poisson``             Poisson(softplus(eta))          non-negative integers (counts)
``bernoulli``           Bernoulli(logits=eta)           r > threshold is a "like"
``ordinal``             P(r <= l_k) = sigmoid(c_k-eta)  one of K ordered levels
                        cut points c learned            l_1 < ... < l_K (stars)
======================  ==============================  ===========================

A likelihood also says how observed values are prepared (validated, and for
Bernoulli thresholded), and how a set of posterior draws of ``eta`` becomes a
posterior predictive summary (mean, sd, quantiles) and a log predictive density.

A scale per pair (``model.pair_scale``, Normal and ordinal only)
    The decoder then gives each pair two numbers, ``eta_ij = (mu_ij, rho_ij)``, so
    ``eta`` has a trailing dimension of 2. ``mu`` takes the place of ``eta`` in the
    table, and ``s_ij = softplus(rho_ij) / log 2`` (1 at ``rho = 0``) multiplies the
    family's spread: the Normal is ``Normal(mu, sigma s)``, the ordinal
    ``P(r <= l_k) = sigmoid((c_k - mu) / s)``. Some users spread their ratings over
    all five stars and others keep to two, and some movies divide opinion more than
    others; one shared ``sigma`` (or one set of cut points) cannot say so. Code that
    needs ``mu`` alone reads :meth:`Likelihood.location`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pyro import distributions as dist
from pyro.nn import PyroModule, PyroParam
from pyro.distributions import constraints

__all__ = ["Likelihood", "NormalLikelihood", "PoissonLikelihood", "BernoulliLikelihood",
           "OrdinalLikelihood", "OrdinalLevels", "make_likelihood", "LIKELIHOODS"]

# The Poisson rate softplus(eta) underflows to 0 for eta below about -100, which
# would make log p(r > 0) = -inf; a floor far below any count scale keeps it finite.
_MIN_POISSON_RATE = 1e-6

# softplus(rho) reaches 0 (a zero scale, an infinite density) as rho falls; the floor
# s >= 1e-3 (rho below about -7.6) is far below any spread ratings have: on MovieLens
# u1 the fitted s lies between 0.46 and 1.22 for 90% of the pairs (README, Results).
_MIN_PAIR_SCALE = 1e-3
_LOG_2 = math.log(2.0)


class Likelihood(PyroModule):
    """Base class: a family of observation distributions indexed by ``eta``.

    ``pair_scale``: whether ``eta`` carries a scale per pair (a trailing dimension of
    2, see the module docstring); only the families with a spread parameter accept it.
    """

    name: str = ""
    has_spread: bool = False  # whether pair_scale is meaningful for the family

    def __init__(self, pair_scale: bool = False):
        super().__init__()
        if pair_scale and not self.has_spread:
            raise ValueError(f"the {self.name} likelihood has no spread parameter for a "
                             "scale per pair (model.pair_scale); only normal and ordinal do")
        self.pair_scale = bool(pair_scale)

    def location(self, eta: torch.Tensor) -> torch.Tensor:
        """``mu``, one number per pair: ``eta`` itself, or ``eta[..., 0]`` with a scale."""
        return eta[..., 0] if self.pair_scale else eta

    def pair_scale_factor(self, eta: torch.Tensor) -> torch.Tensor | None:
        """``s = softplus(rho) / log 2`` per pair (shape of :meth:`location`), or None."""
        if not self.pair_scale:
            return None
        return (F.softplus(eta[..., 1]) / _LOG_2).clamp(min=_MIN_PAIR_SCALE)

    def distribution(self, eta: torch.Tensor) -> dist.Distribution:
        """p(r | eta), batch shape ``location(eta).shape`` (``eta.shape`` without a scale
        per pair)."""
        raise NotImplementedError

    def prepare(self, values: np.ndarray, *, source: str = "ratings",
                lines: np.ndarray | None = None) -> np.ndarray:
        """Check observed ``values`` (shape ``(num_ratings,)``) and map them to targets.

        ``lines`` (1-based line of each value in ``source``) lets errors name the line.
        """
        values = np.asarray(values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(f"{_where(source, lines, bad[0])}: rating {values[bad[0]]:g} "
                             "is not finite")
        return values

    def link_inverse_of_mean(self, mean: float) -> float:
        """The ``eta`` whose predictive mean is ``mean``, to start the decoder there."""
        return mean

    def initialize(self, targets: np.ndarray) -> None:
        """Set data-dependent starting values from training ``targets`` (default: none)."""

    def mean(self, eta: torch.Tensor) -> torch.Tensor:
        """E[r | eta], shape ``location(eta).shape``."""
        return self.distribution(eta).mean

    def log_predictive_density(self, eta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log (1/S) sum_s p(r | eta_s) for draws ``eta`` of shape ``(S, N)``; shape ``(N,)``."""
        log_p = self.distribution(eta).log_prob(target)  # (S, N)
        return torch.logsumexp(log_p, dim=0) - math.log(eta.shape[0])

    def cdf_below_at(self, eta: torch.Tensor, y: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``P(r < y)`` and ``P(r <= y)`` under each draw; shapes of ``eta`` (S, N).

        The two differ for discrete families; the randomized PIT draws between them.
        """
        raise NotImplementedError(f"no predictive CDF for the {self.name!r} likelihood")

    def predictive_summary(
        self, eta: torch.Tensor, quantiles: tuple[float, ...] = (0.05, 0.95)
    ) -> dict[str, torch.Tensor]:
        """Mean, sd and quantiles of the posterior predictive, from draws ``eta`` (S, N).

        The predictive is the mixture (1/S) sum_s p(r | eta_s). Returns a dict of
        ``(N,)`` tensors with keys ``mean``, ``sd`` and ``q05``-style quantile names.
        """
        raise NotImplementedError


def _where(source: str, lines: np.ndarray | None, row: int) -> str:
    """``file:line`` of ``row`` when lines are known, else ``file, row k``."""
    return f"{source}:{int(lines[row])}" if lines is not None else f"{source}, row {int(row)}"


def quantile_key(q: float) -> str:
    """Column name of quantile ``q``: 0.05 -> ``q05``, 0.975 -> ``q975``."""
    digits = f"{q:.4f}".split(".")[1].rstrip("0")
    return "q" + digits.ljust(2, "0")


class NormalLikelihood(Likelihood):
    """r ~ Normal(eta, sigma) with one learned noise scale ``sigma > 0``.

    With ``pair_scale``, r ~ Normal(mu, sigma s) for ``eta = (mu, rho)``.
    """

    name = "normal"
    has_spread = True

    def __init__(self, init_scale: float = 1.0, pair_scale: bool = False):
        super().__init__(pair_scale)
        self.sigma = PyroParam(torch.tensor(float(init_scale)), constraint=constraints.positive)

    def noise_scale(self, eta: torch.Tensor) -> torch.Tensor:
        """The sd of each pair's Normal: ``sigma``, or ``sigma s`` (shape of ``mu``)."""
        factor = self.pair_scale_factor(eta)
        return self.sigma if factor is None else self.sigma * factor

    def distribution(self, eta):
        return dist.Normal(self.location(eta), self.noise_scale(eta))

    def cdf_below_at(self, eta, y):
        at = self.distribution(eta).cdf(y)
        return at, at

    def predictive_summary(self, eta, quantiles=(0.05, 0.95)):
        loc = self.location(eta)  # (S, N)
        scale = self.noise_scale(eta).detach()  # () or (S, N)
        mean = loc.mean(0)
        # law of total variance over the S mixture components
        sd = torch.sqrt(loc.var(0, unbiased=False) + (scale**2).expand_as(loc).mean(0))
        out = {"mean": mean, "sd": sd}
        for q in quantiles:
            out[quantile_key(q)] = _normal_mixture_quantile(loc, scale, q)
        return out


def _normal_mixture_quantile(loc: torch.Tensor, scale: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` of the equal-weight mixture of Normal(loc[s], scale[s]); shape (N,).

    ``loc`` has shape (S, N); ``scale`` is one number or has that shape. Bisection on
    the mixture CDF, which is monotone; 50 halvings of a bracket a few tens of sds wide
    reach float precision. It runs in float64, so that a bracket of a huge but finite
    float32 ``scale`` (a diverging fit) does not overflow to inf.
    """
    loc = loc.double()
    scale = scale.double().expand_as(loc)
    lo = (loc - 10 * scale).min(0).values
    hi = (loc + 10 * scale).max(0).values
    for _ in range(50):
        mid = (lo + hi) / 2
        below = torch.special.ndtr((mid - loc) / scale).mean(0) < q
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return ((lo + hi) / 2).to(torch.get_default_dtype())


class PoissonLikelihood(Likelihood):
    """r ~ Poisson(rate), rate = softplus(eta): positive, and linear for large eta."""

    name = "poisson"

    def rate(self, eta):
        return F.softplus(eta).clamp(min=_MIN_POISSON_RATE)

    def distribution(self, eta):
        return dist.Poisson(self.rate(eta))

    def prepare(self, values, *, source="ratings", lines=None):
        values = super().prepare(values, source=source, lines=lines)
        bad = np.flatnonzero((values < 0) | (values != np.round(values)))
        if bad.size:
            raise ValueError(
                f"{_where(source, lines, bad[0])}: rating {values[bad[0]]:g} is not a "
                f"non-negative integer count, which the Poisson likelihood needs "
                f"({bad.size} such ratings)"
            )
        return values

    def link_inverse_of_mean(self, mean):
        # inverse softplus: log(exp(m) - 1)
        return float(mean + math.log(-math.expm1(-mean)))

    def cdf_below_at(self, eta, y):
        rate = self.rate(eta)
        at = torch.special.gammaincc(y + 1, rate)  # P(r <= y) for integer y
        below = torch.where(y >= 1, torch.special.gammaincc(y.clamp(min=1), rate), 0.0)
        return below, at

    def predictive_summary(self, eta, quantiles=(0.05, 0.95)):
        rate = self.rate(eta)
        mean = rate.mean(0)
        # Var[r] = E[Var(r|rate)] + Var[E(r|rate)] = E[rate] + Var[rate]
        sd = torch.sqrt(mean + rate.var(0, unbiased=False))
        out = {"mean": mean, "sd": sd}
        for q in quantiles:
            out[quantile_key(q)] = _poisson_mixture_quantile(rate, q)
        return out


def _poisson_mixture_quantile(rate: torch.Tensor, q: float) -> torch.Tensor:
    """Smallest integer k with mixture CDF(k) >= q, for rates (S, N); shape (N,)."""
    # The mixture's quantile lies between the components' extreme quantiles; bisect
    # on integers inside a generous bracket around the largest rate.
    lo = torch.zeros(rate.shape[1], dtype=rate.dtype)
    hi = (rate.max(0).values + 10 * rate.max(0).values.sqrt() + 10).ceil()
    while bool((hi - lo > 0).any()):
        mid = ((lo + hi) / 2).floor()
        cdf = torch.special.gammaincc(mid + 1, rate).mean(0)  # P(r <= mid)
        enough = cdf >= q
        hi = torch.where(enough, mid, hi)
        lo = torch.where(enough, lo, mid + 1)
    return lo


class BernoulliLikelihood(Likelihood):
    """r ~ Bernoulli(logits=eta); observed values above ``threshold`` are likes (1)."""

    name = "bernoulli"

    def __init__(self, threshold: float | None = 3.0, pair_scale: bool = False):
        super().__init__(pair_scale)
        self.threshold = threshold

    def distribution(self, eta):
        return dist.Bernoulli(logits=eta)

    def prepare(self, values, *, source="ratings", lines=None):
        values = super().prepare(values, source=source, lines=lines)
        if self.threshold is not None:
            return (values > self.threshold).astype(np.float64)
        bad = np.flatnonzero((values != 0) & (values != 1))
        if bad.size:
            raise ValueError(
                f"{_where(source, lines, bad[0])}: rating {values[bad[0]]:g} is not 0 or "
                "1, which the Bernoulli likelihood needs for 0/1 data "
                "(model.binary_ratings = true: no threshold)"
            )
        return values

    def link_inverse_of_mean(self, mean):
        mean = min(max(mean, 1e-3), 1 - 1e-3)
        return math.log(mean / (1 - mean))

    def cdf_below_at(self, eta, y):
        p0 = 1 - torch.sigmoid(eta)  # P(r = 0)
        one = y >= 1
        return torch.where(one, p0, 0.0), torch.where(one, 1.0, p0)

    def predictive_summary(self, eta, quantiles=(0.05, 0.95)):
        p = torch.sigmoid(eta).mean(0)  # predictive probability of a like
        out = {"mean": p, "sd": torch.sqrt(p * (1 - p))}
        for q in quantiles:
            # quantile q of Bernoulli(p) is 1 exactly when P(r = 0) = 1 - p < q
            out[quantile_key(q)] = (1 - p < q).to(p.dtype)
        return out


def ordinal_log_probs(eta: torch.Tensor, cutpoints: torch.Tensor,
                      scale: torch.Tensor | None = None) -> torch.Tensor:
    """log P(r = level k | eta) of the cumulative-logit model; shape ``eta.shape + (K,)``.

    ``scale`` (None, or the shape of ``eta``): a logistic scale ``s`` per pair, so that
    ``P(r <= k) = sigmoid((c_k - eta) / s)`` (``model.pair_scale``).

    With ``P(r <= k) = sigmoid(c_k - eta)`` for cut points ``c_1 < ... < c_{K-1}``,
    the mass of level ``k`` is a difference of two sigmoids. Differencing them in
    probability space (as ``pyro.distributions.OrderedLogistic`` does) rounds the mass
    of a far tail to 0; here each term is formed in log space instead, from

    .. math::  \\sigma(a) - \\sigma(b) = \\sigma(a)\\, \\sigma(-b)\\, (1 - e^{b - a}),
               \\qquad a = c_k - \\eta > b = c_{k-1} - \\eta,

    with ``log sigma(a) = -softplus(-a)``, so every level keeps a finite log mass.
    """
    a = cutpoints - eta.unsqueeze(-1)  # (..., K-1): log-odds of r <= k
    if scale is not None:
        a = a / scale.unsqueeze(-1)
    log_below = -F.softplus(-a)  # log P(r <= k)
    log_above = -F.softplus(a)  # log P(r > k)
    gap = (a[..., 1:] - a[..., :-1]).clamp(min=1e-12)  # c_k - c_{k-1} > 0
    middle = log_below[..., 1:] + log_above[..., :-1] + torch.log(-torch.expm1(-gap))
    return torch.cat([log_below[..., :1], middle, log_above[..., -1:]], dim=-1)


class OrdinalLevels(dist.TorchDistribution):
    """A categorical distribution over the ordered values ``levels`` (not 0..K-1).

    It holds ``log_probs`` over the ``K`` levels and reads and writes rating values
    themselves (1..5 stars, or 0.5..5 in half stars), so the model's observed site,
    the predictions and the metrics all stay on the rating scale.

    Parameters
    ----------
    log_probs : Tensor, shape (..., K)
        Normalized log masses.
    levels : Tensor, shape (K,)
        The increasing rating values.
    """

    arg_constraints: dict = {}
    support = constraints.real  # a finite subset; prepare() checks observed values
    has_enumerate_support = False

    def __init__(self, log_probs: torch.Tensor, levels: torch.Tensor, validate_args=None):
        self.log_probs, self.levels = log_probs, levels
        super().__init__(log_probs.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return OrdinalLevels(self.log_probs.expand(batch_shape + self.log_probs.shape[-1:]),
                             self.levels)

    def level_index(self, value: torch.Tensor) -> torch.Tensor:
        """Position of each value among the levels (nearest level), as a long tensor."""
        index = torch.searchsorted(self.levels, value.to(self.levels.dtype).contiguous())
        index = index.clamp(1, len(self.levels) - 1)
        nearer_left = (value - self.levels[index - 1]) < (self.levels[index] - value)
        return torch.where(nearer_left, index - 1, index)

    def log_prob(self, value):
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        index = self.level_index(value).expand(shape)
        log_probs = self.log_probs.expand(shape + self.log_probs.shape[-1:])
        return log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def sample(self, sample_shape=torch.Size()):
        index = dist.Categorical(logits=self.log_probs).sample(sample_shape)
        return self.levels[index]

    @property
    def mean(self):
        return self.log_probs.exp() @ self.levels

    @property
    def variance(self):
        return self.log_probs.exp() @ self.levels**2 - self.mean**2


class OrdinalLikelihood(Likelihood):
    """Cumulative-logit (ordered logistic) likelihood over ``K`` ordered rating levels.

    ``P(r <= l_k | eta) = sigmoid(c_k - eta)`` for ``k = 1..K-1``, with ``K - 1``
    learned cut points ``c_1 < ... < c_{K-1}`` shared by all pairs. A larger ``eta``
    moves mass to higher levels; the cut points fix how far apart the levels lie on
    the logit scale, so the model puts mass only on the levels that exist (a Normal
    puts it on 3.7 and 6.2) and can be skewed near the ends of the scale. With
    ``pair_scale``, ``P(r <= l_k) = sigmoid((c_k - mu) / s)`` for ``eta = (mu, rho)``:
    a small ``s`` concentrates the pair's mass on one or two levels.

    Parameters
    ----------
    levels : sequence of float
        The allowed rating values, strictly increasing (``[1, 2, 3, 4, 5]`` for
        MovieLens stars; ``[0.5, 1, ..., 5]`` for half stars).
    pair_scale : bool
    """

    name = "ordinal"
    has_spread = True

    def __init__(self, levels=(1.0, 2.0, 3.0, 4.0, 5.0), pair_scale: bool = False):
        super().__init__(pair_scale)
        levels = [float(v) for v in levels]
        if len(levels) < 2 or any(b <= a for a, b in zip(levels[:-1], levels[1:])):
            raise ValueError(f"ordinal levels must be at least two strictly increasing "
                             f"numbers, got {levels}")
        self.register_buffer("levels", torch.tensor(levels))
        # as configured: data are checked against these, not their float32 rounding
        self._levels64 = np.asarray(levels, dtype=np.float64)
        k = len(levels) - 1
        self.cutpoints = PyroParam(torch.linspace(-2.0, 2.0, k) if k > 1 else torch.zeros(1),
                                   constraint=constraints.ordered_vector)

    def log_probs(self, eta: torch.Tensor, cutpoints: torch.Tensor) -> torch.Tensor:
        """log P(r = level k) per pair; shape ``location(eta).shape + (K,)``."""
        return ordinal_log_probs(self.location(eta), cutpoints, self.pair_scale_factor(eta))

    def distribution(self, eta):
        return OrdinalLevels(self.log_probs(eta, self.cutpoints), self.levels)

    def prepare(self, values, *, source="ratings", lines=None):
        values = super().prepare(values, source=source, lines=lines)
        levels = self._levels64
        known = np.isclose(values[:, None], levels[None, :], rtol=0, atol=1e-9).any(axis=1)
        bad = np.flatnonzero(~known)
        if bad.size:
            raise ValueError(
                f"{_where(source, lines, bad[0])}: rating {values[bad[0]]:g} is not one of "
                f"the ordinal levels {[float(v) for v in levels]} (model.ordinal_levels; "
                f"{bad.size} such ratings)"
            )
        return values

    def link_inverse_of_mean(self, mean):
        return 0.0  # the cut points carry the location; see initialize

    def initialize(self, targets):
        """Cut points at the logits of the training ratings' cumulative shares.

        With ``eta = 0`` the model then reproduces the marginal distribution of the
        training ratings; a share of 0 or 1 is smoothed (add-one) to keep them finite
        and increasing.
        """
        counts = np.array([np.isclose(targets, v, rtol=0, atol=1e-9).sum()
                           for v in self._levels64]) + 1.0
        cumulative = np.cumsum(counts)[:-1] / counts.sum()
        self.cutpoints = torch.tensor(np.log(cumulative / (1 - cumulative)),
                                      dtype=torch.get_default_dtype())

    def _mixture_probs(self, eta):
        """Predictive mass of each level, averaged over the draws; (N, K) from (S, N)."""
        return self.log_probs(eta, self.cutpoints.detach()).exp().mean(0)

    def cdf_below_at(self, eta, y):
        cumulative = self.log_probs(eta, self.cutpoints.detach()).exp().cumsum(-1)
        index = self.distribution(eta).level_index(y).expand(cumulative.shape[:-1])
        at = cumulative.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        below = torch.where(index > 0, cumulative.gather(
            -1, (index - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
        return below, at.clamp(max=1.0)

    def predictive_summary(self, eta, quantiles=(0.05, 0.95)):
        probs = self._mixture_probs(eta)  # (N, K)
        levels = self.levels.to(probs.dtype)
        mean = probs @ levels
        sd = torch.sqrt((probs @ levels**2 - mean**2).clamp(min=0.0))
        out = {"mean": mean, "sd": sd}
        cumulative = probs.cumsum(-1)
        for q in quantiles:
            # smallest level whose predictive CDF reaches q
            index = (cumulative < q - 1e-12).sum(-1).clamp(max=len(levels) - 1)
            out[quantile_key(q)] = levels[index]
        return out


LIKELIHOODS = {"normal": NormalLikelihood, "poisson": PoissonLikelihood,
               "bernoulli": BernoulliLikelihood, "ordinal": OrdinalLikelihood}


def make_likelihood(name: str, *, threshold: float | None = 3.0,
                    levels=(1.0, 2.0, 3.0, 4.0, 5.0), pair_scale: bool = False) -> Likelihood:
    """Build the likelihood called ``name`` (one of :data:`LIKELIHOODS`).

    ``threshold`` is Bernoulli's like threshold, ``levels`` the ordinal rating values,
    ``pair_scale`` a scale per pair (Normal and ordinal only; ValueError otherwise).
    """
    if name == "bernoulli":
        return BernoulliLikelihood(threshold, pair_scale=pair_scale)
    if name == "ordinal":
        return OrdinalLikelihood(levels, pair_scale=pair_scale)
    try:
        return LIKELIHOODS[name](pair_scale=pair_scale)
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; "
                         f"choose from {sorted(LIKELIHOODS)}") from None
