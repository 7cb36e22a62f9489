"""Sketched encoder inputs: every entity's ratings projected once onto a fixed basis.

The encoders' first layer is linear in an entity's sparse rating row (see
:mod:`deepfactor.guide`): with the pooled presence and value rows ``x_i^P`` and
``x_i^V`` over the ``K`` columns (the other entity type),

.. math::  a_i = P^T x_i^P + V^T x_i^V + c \\log(1 + n_i) + b,

with learned ``P`` and ``V`` of shape ``(K, width)``. At scale that layer is the whole
cost of a step: a popular movie is re-read from its ratings in nearly every batch,
and ``P``, ``V`` have a row per user and movie, each updated by Adam.

``guide.inputs = "sketch"`` restricts ``P`` and ``V`` to a fixed ``d``-dimensional
subspace of the columns, ``P = B L^P`` and ``V = B L^V`` with a basis ``B`` of shape
``(K, d)`` fitted once before training and learned ``L`` of shape ``(d, width)``:

.. math::  a_i = (L^P)^T s_i^P + (L^V)^T s_i^V + c \\log(1 + n_i) + b,
           \\qquad s_i^P = B^T x_i^P, \\quad s_i^V = B^T x_i^V.

The sketch ``s_i = [s_i^P, s_i^V]`` (``2 d`` numbers) depends on the ratings and
``B`` only, so it is computed once for every entity, in ``O(nnz x d)``; a training step
then costs ``O(B + entities in the batch)`` dense work, with no term in the number of
ratings of those entities and no per-user or per-movie parameter. The guide is still
``q(z_i | r_i)``, a deterministic function of the entity's training ratings, so the
objective is the ELBO itself (no subsampling of inputs, ``guide.max_inputs`` has no
effect) and the minibatch estimator of :mod:`deepfactor.batching` is unchanged.

The basis ``B`` spans the top ``d`` right singular vectors of the stacked pooled
presence and value rows of the **fit** ratings (randomized SVD, seeded: the principal
directions of which columns an entity rated and how), each direction scaled so that
its sketch coordinate has unit root mean square over the fit entities. Validation,
prediction, checks and fold-in project their rows onto the same ``B``; no held-out
rating shapes it. What is given up: an encoder can no longer tell two entities apart
whose rows differ only outside the top-``d`` subspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.extmath import randomized_svd

from .data.ratings import SparseRows

__all__ = ["RowBasis", "Sketch", "DenseRows", "pooled_rows"]

#: Power iterations of the randomized SVD: enough to find a good subspace (not exact
#: singular vectors, which the encoder does not need), and each costs two passes over
#: the ratings.
POWER_ITERATIONS = 2


def pooled_rows(rows: SparseRows, num_cols: int, pooling_power: float
                ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The pooled presence and value rows, ``n_i^-p`` and ``v_ik n_i^-p`` per entry.

    Returns
    -------
    presence, value : scipy CSR, shape (num_rows, num_cols)
    """
    counts = rows.counts
    weight = np.repeat(np.maximum(counts, 1).astype(np.float64) ** -pooling_power, counts)
    shape = (rows.num_rows, num_cols)
    # float32 entries: a basis needs no more, and at 25M ratings the copies are large
    presence = sp.csr_matrix((weight.astype(np.float32), rows.indices, rows.indptr),
                             shape=shape)
    value = sp.csr_matrix(((weight * rows.values).astype(np.float32), rows.indices,
                           rows.indptr), shape=shape)
    return presence, value


@dataclass(frozen=True, eq=False)
class RowBasis:
    """The fixed basis of one entity type's rows, and the sketch it gives.

    Attributes
    ----------
    directions : Tensor, shape (num_cols, d)
        ``B``: orthonormal directions, each divided by the RMS of its presence
        coordinate over the fit entities.
    value_scale : Tensor, shape (d,)
        Divisor of the value channel's coordinates (their RMS over the fit entities
        under ``directions``), so that both channels enter on a unit scale.
    """

    directions: torch.Tensor
    value_scale: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.directions.shape[1])

    @classmethod
    def fit(cls, rows: SparseRows, num_cols: int, dim: int, pooling_power: float,
            seed: int) -> RowBasis:
        """The top-``dim`` directions of ``rows``' pooled presence and value channels.

        Fewer columns or rows than ``dim`` leave the missing directions at zero, so
        the sketch keeps its length ``2 dim`` whatever the data.
        """
        presence, value = pooled_rows(rows, num_cols, pooling_power)
        stacked = sp.vstack([presence, value]).tocsr()
        rank = min(dim, *stacked.shape)
        directions = np.zeros((num_cols, dim), dtype=np.float32)
        if rank > 0 and stacked.nnz:
            _, _, vt = randomized_svd(stacked, rank, n_iter=POWER_ITERATIONS,
                                      random_state=seed)
            directions[:, :rank] = vt.T
        # Unit RMS per coordinate over the entities that have ratings, per channel.
        rated = rows.counts > 0
        directions = directions / _rms(presence[rated] @ directions)
        value_rms = _rms(value[rated] @ directions)
        dtype = torch.get_default_dtype()
        return cls(torch.as_tensor(directions, dtype=dtype),
                   torch.as_tensor(value_rms, dtype=dtype))

    def project(self, rows: SparseRows, pooling_power: float) -> torch.Tensor:
        """The sketch ``[s^P, s^V]`` of every row; shape ``(num_rows, 2 d)``."""
        presence, value = pooled_rows(rows, self.directions.shape[0], pooling_power)
        basis = self.directions.numpy().astype(np.float32)  # as the rows: no float64 copy
        value_scale = self.value_scale.numpy().astype(np.float32)
        sketch = np.hstack([presence @ basis, (value @ basis) / value_scale])
        return torch.as_tensor(sketch, dtype=torch.get_default_dtype())

    def state(self) -> dict[str, torch.Tensor]:
        return {"directions": self.directions, "value_scale": self.value_scale}


def _rms(coordinates: np.ndarray) -> np.ndarray:
    """Root mean square per column (1 where a column is all zero or empty); shape (d,)."""
    if len(coordinates) == 0:
        return np.ones(coordinates.shape[1])
    rms = np.sqrt(np.mean(np.square(coordinates), axis=0))
    return np.where(rms > 0, rms, 1.0)


@dataclass(frozen=True, eq=False)
class Sketch:
    """The two bases: movies' rows (over users) and users' rows (over movies)."""

    movie: RowBasis
    user: RowBasis

    @property
    def dim(self) -> int:
        return self.movie.dim

    @classmethod
    def fit(cls, by_movie: SparseRows, by_user: SparseRows, dim: int,
            pooling_power: float, seed: int) -> Sketch:
        """Fit both bases from the (standardized) rows the encoders read in training."""
        return cls(RowBasis.fit(by_movie, by_user.num_rows, dim, pooling_power, seed),
                   RowBasis.fit(by_user, by_movie.num_rows, dim, pooling_power, seed + 1))

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors only, for a ``weights_only`` checkpoint."""
        return {"movie": self.movie.state(), "user": self.user.state()}

    @classmethod
    def from_state(cls, state: dict[str, dict[str, torch.Tensor]]) -> Sketch:
        return cls(RowBasis(**state["movie"]), RowBasis(**state["user"]))


@dataclass(frozen=True, eq=False)
class DenseRows:
    """Dense encoder inputs with the ``matmul`` of :class:`~deepfactor.sparse.SparseMatrix`.

    Attributes
    ----------
    values : Tensor, shape (num_rows, num_cols)
    """

    values: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def matmul(self, weight: torch.Tensor) -> torch.Tensor:
        """``values @ weight`` for ``weight`` of shape (num_cols, width)."""
        return self.values @ weight
