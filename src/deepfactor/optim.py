"""Adam that updates only the touched rows of a parameter with a row-sparse gradient.

The encoders' first-layer weights have one row per movie or user (two channels each):
at 25 million ratings, about 450,000 rows of width 256. A step reads a few thousand of
them. Dense Adam would write every row at every step (the gradient, both moments and
the weight: ``O(rows x width)`` per step, which makes an epoch grow faster than the
ratings); :class:`RowSparseAdam` gives a parameter whose gradient is a sparse COO
tensor (``F.embedding(..., sparse=True)``) the "lazy" Adam update of
``torch.optim.SparseAdam``: the touched rows' moments and values are updated with the
usual bias correction, untouched rows are left as they are. Every other parameter gets
torch's fused Adam, exactly as before.

Simplified: lazy Adam differs from dense Adam in the rows a step does not touch (dense
Adam keeps moving them with their decaying first moment). The README's "Large datasets"
section reports the held-out effect on MovieLens 100K.
"""

from __future__ import annotations

import torch

__all__ = ["RowSparseAdam"]


class RowSparseAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` for dense gradients, lazy Adam for sparse ones.

    Parameters
    ----------
    params : iterable of Tensor or dict
    lr : float
    betas : (float, float)
    eps : float

    Notes
    -----
    For a sparse gradient with rows ``R`` and values ``g`` (shape ``(|R|, width)``),
    at step ``t``::

        m[R] = b1 m[R] + (1 - b1) g          v[R] = b2 v[R] + (1 - b2) g^2
        p[R] -= lr / (1 - b1^t) * m[R] / (sqrt(v[R] / (1 - b2^t)) + eps)

    The state has Adam's keys (``step``, ``exp_avg``, ``exp_avg_sq``), so
    ``state_dict``/``load_state_dict`` and checkpoints work unchanged.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=True)

    @torch.no_grad()
    def step(self, closure=None):
        set_aside = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = p.grad.coalesce()  # once, for this step and the NaN guard
                    self._lazy_step(p, group)
                    set_aside.append((p, p.grad))
                    p.grad = None  # fused Adam takes dense gradients only; it skips None
        try:
            return super().step(closure)
        finally:
            for p, grad in set_aside:
                p.grad = grad

    def _lazy_step(self, p: torch.Tensor, group: dict) -> None:
        rows, g = p.grad.indices()[0], p.grad.values()  # (|R|,), (|R|, width); coalesced
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = float(state["step"])
        beta1, beta2 = group["betas"]
        lr = group["lr"].item() if torch.is_tensor(group["lr"]) else group["lr"]

        # index_select / index_copy_: about twice as fast as t[rows] and t[rows] = x here
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m_rows = m.index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
        v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        m.index_copy_(0, rows, m_rows)
        v.index_copy_(0, rows, v_rows)
        denom = (v_rows / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.index_add_(0, rows, m_rows / denom, alpha=-lr / (1 - beta1**t))
