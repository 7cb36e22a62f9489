"""A sparse matrix that multiplies a dense weight, with a backward pass that reuses its transpose.

The encoders' first layer is ``X @ W`` for a sparse ``X`` (entities x columns) and a
dense weight ``W`` (columns x width). Its gradient is ``X^T @ grad``. Torch's own
``torch.sparse.mm`` rebuilds the transpose at every backward pass; the encoder inputs
are fixed during training, so :class:`SparseMatrix` builds ``X^T`` once. Measured on
MovieLens 100K's shape (1682 x 943, 76k entries, width 128, one thread):
``nn.EmbeddingBag`` forward+backward 9.8 ms, ``torch.sparse.mm`` 8.7 ms, this 3.7 ms.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SparseMatrix"]


@dataclass(frozen=True, eq=False)
class SparseMatrix:
    """``X`` in CSR form with its transpose, for ``X @ W`` with autograd w.r.t. ``W``.

    Attributes
    ----------
    csr : Tensor, sparse CSR, shape (num_rows, num_cols)
    csr_t : Tensor, sparse CSR, shape (num_cols, num_rows)
    """

    csr: torch.Tensor
    csr_t: torch.Tensor

    @classmethod
    def from_csr_arrays(cls, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                        num_cols: int) -> SparseMatrix:
        """Build from CSR arrays (shapes ``(rows+1,)``, ``(nnz,)``, ``(nnz,)``)."""
        num_rows = len(indptr) - 1
        dtype = torch.get_default_dtype()
        rows = np.repeat(np.arange(num_rows), np.diff(indptr))
        # by column, rows ascending within (torch's stable integer sort: a radix sort,
        # about 2.5x numpy's on a million entries)
        order = torch.sort(torch.from_numpy(np.asarray(indices, np.int64)),
                           stable=True)[1].numpy()
        indptr_t = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=num_cols))])
        with warnings.catch_warnings(), torch.sparse.check_sparse_tensor_invariants(False):
            # torch flags its CSR support as beta on every construction; the two
            # operations used here (CSR @ dense, forward and transposed) are stable.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support",
                                    category=UserWarning)
            csr = torch.sparse_csr_tensor(
                torch.from_numpy(np.asarray(indptr, np.int64)),
                torch.from_numpy(np.asarray(indices, np.int64)),
                torch.as_tensor(values, dtype=dtype), size=(num_rows, num_cols))
            csr_t = torch.sparse_csr_tensor(
                torch.from_numpy(indptr_t.astype(np.int64)),
                torch.from_numpy(rows[order].astype(np.int64)),
                torch.as_tensor(values[order], dtype=dtype), size=(num_cols, num_rows))
        return cls(csr, csr_t)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.csr.shape)

    @property
    def nnz(self) -> int:
        """Stored entries."""
        return int(self.csr.values().shape[0])

    def matmul(self, weight: torch.Tensor) -> torch.Tensor:
        """``X @ weight`` for ``weight`` of shape (num_cols, width); (num_rows, width).

        Always in float32, under ``train.precision = "bfloat16"`` too: torch has no
        bfloat16 kernel for sparse CSR products on the CPU.
        """
        with torch.autocast(weight.device.type, enabled=False):
            return _SparseMatmul.apply(weight.float(), self)


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(weight, matrix):
        return torch.sparse.mm(matrix.csr, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.matrix = inputs[1]

    @staticmethod
    def backward(ctx, grad_output):
        return torch.sparse.mm(ctx.matrix.csr_t, grad_output), None
