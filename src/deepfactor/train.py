"""The SVI loop: Adam on the negative ELBO, KL warm-up, early stopping, NaN guard, progress.

The loss minimized is the **negative ELBO of the full training set, in nats**, estimated
from one minibatch per step (:mod:`deepfactor.batching` gives the weights that make the
estimate unbiased). It is a total, not a per-rating average: divide by the number of
ratings for a per-rating figure. Model and guide are held as ``PyroModule``\\ s with
module-local parameters and wrapped by Pyro's ELBO into one ``nn.Module``, so plain
``torch.optim`` and ``state_dict`` checkpoints work (no global param store).

KL warm-up multiplies the latent sites of model and guide by ``beta`` rising linearly
from ``kl_warmup_start`` to 1 over ``kl_warmup_epochs``. That is not the ELBO until
``beta = 1``, so early stopping only considers epochs at the true ELBO.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from .batching import RatingBatcher

__all__ = ["TrainingDiverged", "TrainResult", "kl_weight", "make_elbo", "run_svi"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or a parameter became NaN or infinite; the message names the step."""


@dataclass
class TrainResult:
    """What the loop did.

    Attributes
    ----------
    history : list of dict
        One row per epoch: ``epoch``, ``kl_weight``, ``loss`` (mean of the epoch's
        minibatch estimates of -ELBO, nats), ``loss_per_rating``, ``seconds`` and the
        validation scores (``val_lpd``, ``val_rmse``, ...).
    best_epoch : int
        Epoch whose parameters were kept (1-based).
    stop_reason : str
    seconds : float
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stop_reason: str = ""
    seconds: float = 0.0


def make_elbo(kind: str) -> pyro.infer.ELBO:
    """``trace`` -> Trace_ELBO; ``meanfield`` -> TraceMeanField_ELBO (analytic KL)."""
    if kind == "trace":
        return pyro.infer.Trace_ELBO()
    if kind == "meanfield":
        return pyro.infer.TraceMeanField_ELBO()
    raise ValueError(f"unknown ELBO {kind!r}; choose 'trace' or 'meanfield'")


def kl_weight(epoch: int, warmup_epochs: int, start: float) -> float:
    """beta at 1-based ``epoch``: linear from ``start`` to 1 over ``warmup_epochs``."""
    if warmup_epochs <= 0 or epoch > warmup_epochs:
        return 1.0
    return start + (1.0 - start) * (epoch - 1) / warmup_epochs


def _first_nonfinite(module: torch.nn.Module) -> str | None:
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            return name
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"the gradient of {name}"
    return None


def run_svi(
    loss_fn: torch.nn.Module,
    batcher: RatingBatcher,
    *,
    lr: float,
    epochs: int,
    lr_final: float = 0.0,
    validate: Callable[[], dict[str, float]],
    monitor: str = "lpd",
    patience: int = 20,
    kl_warmup_epochs: int = 0,
    kl_warmup_start: float = 0.1,
    time_limit: float = 0.0,
    progress: bool = True,
) -> TrainResult:
    """Fit the parameters of ``loss_fn`` (an ELBO module over model and guide) in place.

    Parameters
    ----------
    loss_fn : nn.Module
        ``elbo(model, guide)``; called on a :class:`~deepfactor.batching.Batch` it
        returns a minibatch estimate of -ELBO.
    batcher : RatingBatcher
    validate : callable
        Returns validation scores for the current parameters, keyed ``lpd``,
        ``rmse``, ...; higher ``lpd`` and lower ``rmse`` are better. An empty dict
        (no validation set) keeps the last epoch.
    lr_final : float
        Learning rate at the last epoch; the rate decays geometrically from ``lr``
        (0 keeps it constant).
    monitor : {"lpd", "rmse"}
        The score early stopping follows.
    patience : int
        Epochs at the true ELBO without a better ``monitor`` before stopping (0: never).
    time_limit : float
        Seconds after which training stops at the end of an epoch (0: none).

    Returns
    -------
    TrainResult
        The parameters of ``loss_fn`` are left at the best validated epoch.

    Raises
    ------
    TrainingDiverged
        At the first step whose loss, or any parameter or gradient, is not finite.
    """
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=lr)
    decay = (lr_final / lr) ** (1 / max(epochs - 1, 1)) if lr_final else 1.0
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    sign = 1.0 if monitor == "lpd" else -1.0  # compare "higher is better"
    result, best_score, best_state = TrainResult(), -math.inf, None
    since_best, step, start = 0, 0, time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc="fit", unit="epoch", disable=not progress)
    for epoch in bar:
        beta = kl_weight(epoch, kl_warmup_epochs, kl_warmup_start)
        losses = []
        for batch in batcher.epoch(beta):
            step += 1
            optimizer.zero_grad()
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss is {loss.item()} at step {step} (epoch {epoch}); "
                    "try a smaller train.lr"
                )
            loss.backward()
            optimizer.step()
            bad = _first_nonfinite(loss_fn)
            if bad is not None:
                raise TrainingDiverged(f"{bad} is not finite after step {step} "
                                       f"(epoch {epoch}); try a smaller train.lr")
            losses.append(loss.item())

        loss_fn.eval()
        scores = validate()
        loss_fn.train()
        row = {"epoch": epoch, "kl_weight": beta, "lr": schedule.get_last_lr()[0],
               "loss": float(np.mean(losses)),
               "loss_per_rating": float(np.mean(losses)) / len(batcher.ratings),
               "seconds": time.perf_counter() - start,
               **{f"val_{k}": v for k, v in scores.items()}}
        result.history.append(row)
        score = scores.get(monitor)  # None when there is no validation set
        bar.set_postfix(loss=f"{row['loss_per_rating']:.4f}",
                        **({monitor: f"{score:.4f}"} if score is not None else {}))
        log.debug("epoch %d: %s", epoch, row)

        if beta == 1.0 and (score is None or sign * score > best_score):
            best_score = -math.inf if score is None else sign * score
            best_state, since_best = copy.deepcopy(loss_fn.state_dict()), 0
            result.best_epoch = epoch
        elif beta == 1.0:
            since_best += 1
        schedule.step()
        if patience and since_best >= patience:
            result.stop_reason = f"no validation gain in {patience} epochs"
            break
        if time_limit and row["seconds"] >= time_limit:
            result.stop_reason = f"time limit of {time_limit:g} s reached"
            break
    else:
        result.stop_reason = f"reached {epochs} epochs"
    bar.close()

    if best_state is not None:
        loss_fn.load_state_dict(best_state)
    else:  # the run ended inside the warm-up: keep the last parameters, and say so
        result.best_epoch = len(result.history)
        log.warning("training ended before the KL warm-up finished; the parameters "
                    "kept do not maximize the true ELBO")
    result.seconds = time.perf_counter() - start
    log.info("stopped after %d epochs (%s); kept epoch %d", len(result.history),
             result.stop_reason, result.best_epoch)
    return result
