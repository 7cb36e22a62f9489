"""The SVI loop: Adam on the negative ELBO, KL warm-up, early stopping, checkpoints, NaN guard.

The loss minimized is the **negative ELBO of the full training set, in nats**, estimated
from one minibatch per step (:mod:`deepfactor.batching` gives the weights that make the
estimate unbiased). It is a total, not a per-rating average: divide by the number of
ratings for a per-rating figure. Model and guide are held as ``PyroModule``\\ s with
module-local parameters and wrapped by Pyro's ELBO into one ``nn.Module``, so plain
``torch.optim`` and ``state_dict`` checkpoints work (no global param store).

KL warm-up multiplies the latent sites of model and guide by ``beta`` rising linearly
from ``kl_warmup_start`` to ``kl_weight`` (1 by default) over ``kl_warmup_epochs``. That
is not the ELBO until ``beta = 1``, so early stopping only considers epochs after the
warm-up. ``kl_weight < 1`` keeps a tempered bound for good (the beta-VAE objective of
Higgins et al. 2017 with beta < 1): each rating then counts ``1 / kl_weight`` times
against the prior. That is a change of objective, offered to measure it; the loss
column of the history is then that bound, and the fit reports the true ELBO beside it.

Resuming. :meth:`SVITrainer.state_dict` holds everything the loop depends on (parameters,
optimizer and schedule, the epoch's permutation and position in it, every random state,
the best state so far), so a run stopped between two steps and resumed from that state
ends with the same parameters as a run that was never stopped. SIGINT and SIGTERM stop
the loop between steps, after a last checkpoint.

Data-parallel. Given a :class:`~deepfactor.distributed.World` (several processes, e.g.
under ``torchrun``), each step scores this rank's shard of the global minibatch and sums
every gradient over the ranks before the Adam step (:mod:`deepfactor.distributed` says
why that is exactly the single-process gradient). Rank 0 alone validates, writes
checkpoints and shows progress; its validation scores and clock, and a flag for a
caught signal, are shared so that every rank stops after the same step or epoch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from . import distributed
from .batching import Batch, RatingBatcher
from .config import ConfigError
from .distributed import World
from .optim import RowSparseAdam
from .reproducibility import cxx_compiler, native_bfloat16

__all__ = ["TrainingDiverged", "TrainingInterrupted", "TrainSettings", "TrainResult",
           "SVITrainer", "kl_weight", "make_elbo", "training_precision", "compile_decoder"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or a parameter became NaN or infinite; the message names the step."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a checkpoint; ``signal`` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass(frozen=True)
class TrainSettings:
    """The loop's settings; see the ``train.*`` keys of :mod:`deepfactor.config`."""

    lr: float = 0.01
    lr_final: float = 0.0
    epochs: int = 100
    monitor: str = "lpd"
    patience: int = 20
    kl_warmup_epochs: int = 0
    kl_warmup_start: float = 0.1
    kl_weight: float = 1.0
    time_limit: float = 0.0
    checkpoint_every: int = 0
    precision: str = "float32"
    compile: bool = False

    @classmethod
    def from_config(cls, config) -> TrainSettings:
        return cls(**{name: config[f"train.{name}"] for name in cls.__dataclass_fields__})


@dataclass
class TrainResult:
    """What the loop did.

    Attributes
    ----------
    history : list of dict
        One row per epoch: ``epoch``, ``kl_weight``, ``lr``, ``loss`` (the epoch's
        minibatch estimates of -ELBO, nats, averaged with weights proportional to their
        batch sizes, so that a short last batch counts for its ratings),
        ``loss_per_rating``, ``seconds`` and the validation scores (``val_lpd``,
        ``val_rmse``, ...).
    best_epoch : int
        Epoch whose parameters were kept (1-based).
    stop_reason : str
    seconds : float
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stop_reason: str = ""
    seconds: float = 0.0


def training_precision(precision: str) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass runs in (``train.precision``).

    ``"float32"``: none. ``"bfloat16"``: :func:`torch.autocast` on the CPU, so the
    dense matrix products of the model and guide compute in bfloat16: the decoder's
    hidden layers and their activations; in the encoders, the product of the sketched
    inputs with the first layer (the sum that follows promotes back to float32, so the
    first ``tanh`` is float32) and any further hidden layers. Sparse inputs' CSR
    product has no bfloat16 kernel and stays float32
    (:meth:`~deepfactor.sparse.SparseMatrix.matmul`). The modules return ``eta``,
    ``loc`` and ``scale`` in float32 (:class:`~deepfactor.model.Decoder`,
    :class:`~deepfactor.guide.Encoder`), so the parameters, the latent draws, the
    likelihood and the KL terms all stay float32; so do validation, the final ELBO and
    every prediction, which run outside this context. Backward follows the forward's
    dtypes. It pays only where the CPU multiplies bfloat16 natively (AVX512-BF16 or
    AMX, :func:`~deepfactor.reproducibility.native_bfloat16`); elsewhere it is
    emulated and slower.
    """
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"train.precision must be 'float32' or 'bfloat16', got {precision!r}")


def compile_decoder(decoder: torch.nn.Module, precision: str = "float32") -> Callable:
    """``train.compile``: the decoder's forward compiled by :func:`torch.compile`.

    The decoder is where a step's time goes at scale: per rating, a hidden layer of
    width ``H``, its activation and the output layer, each one pass over a ``(B, H)``
    tensor in eager mode (and under bfloat16, casts between them). TorchInductor fuses
    those passes into generated C++ loops. Compiled with symbolic batch sizes
    (``dynamic=True``: the shorter last batch reuses the graph). The result computes
    the same function; only the order of floating-point roundings may differ.

    The compilation happens here, not at the first step: one forward and backward pass
    on zeros under ``precision``, shaped and passed as a step passes its latents so
    that the steps reuse the graph (no random numbers drawn; the parameters' gradients
    are as before), so that a compiler that is missing or broken stops the fit with a
    :class:`ConfigError` before training. Measured here: 12-18 s with an empty cache,
    2.5-3 s once TorchInductor's on-disk cache (``/tmp/torchinductor_$USER``, or
    ``$TORCHINDUCTOR_CACHE_DIR``) holds the graph; a decoder of the same shapes in the
    same process reuses it at once.

    Only training steps call the result (:class:`SVITrainer` swaps it in per step), so
    validation, prediction and checks, whose shapes differ, stay eager.

    Known limit: torch keeps at most ``torch._dynamo.config.recompile_limit`` (8)
    graphs per function in one process, and each decoder shape and precision takes one
    (more for a last batch of at most 24 ratings); beyond that (a sweep over widths in one
    Python session) the decoder runs eager, with a warning from torch, while the run
    still records ``compiled``.
    """
    if cxx_compiler() is None:
        raise ConfigError("train.compile = true needs a C++ compiler for torch.compile "
                          "(g++, or clang++ on macOS, or the one $CXX names) and none "
                          "was found on PATH; install one, or set train.compile = false "
                          "(a run continued with --resume keeps its setting: resume it "
                          "where a compiler works)")
    compiled = torch.compile(decoder.forward, dynamic=True)

    @functools.wraps(decoder.forward)
    def forward(*args, **kwargs):
        # Tracing reads .grad of the (non-leaf) latents and torch warns about that;
        # under warnings-as-errors (pytest -W error) the warning would abort tracing.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor "
                                    "that is not a leaf Tensor", category=UserWarning)
            return compiled(*args, **kwargs)

    start = time.perf_counter()
    log.info("compiling the decoder (train.compile)")
    # Inputs as a training step passes them (the graph is guarded on their kind): two
    # distinct tensors (one tensor passed twice gets a graph guarded on the two being
    # the same), gathered by index_select (not leaves, not views: a view's base is
    # guarded too), with 256 rows: batches of up to 24 ratings get a graph of their own
    # (Inductor writes their products out elementwise), as do sizes 0 and 1.
    width = decoder.latent_dim + int(decoder.bias_latent)
    latents, rows = torch.zeros(256, width, requires_grad=True), torch.arange(256)
    z_movie, z_user = latents.index_select(0, rows), latents.index_select(0, rows)
    parameters = list(decoder.parameters())
    saved = [p.grad for p in parameters]
    for p in parameters:
        p.grad = None  # backward would add the probe's gradient into an existing one
    try:
        with torch.enable_grad(), training_precision(precision):
            eta = forward(z_movie, z_user)
        eta.sum().backward()
    except Exception as err:  # noqa: BLE001 - whatever torch raises, said in one line
        log.debug("torch.compile failed on the decoder", exc_info=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"train.compile = true: torch.compile failed on the decoder "
                          f"({type(err).__name__}: {first[:300]}); the usual cause is a "
                          f"missing or broken C++ compiler ($CXX, else g++); deepfactor -v "
                          f"logs the whole error; or set train.compile = false") from err
    finally:
        for p, grad in zip(parameters, saved):
            p.grad = grad
    log.info("decoder compiled in %.1f s", time.perf_counter() - start)
    return forward


@contextmanager
def _swapped_forward(module: torch.nn.Module, forward: Callable | None):
    """Calls of ``module`` go to ``forward`` inside the block (None: no change)."""
    if forward is None:
        yield
        return
    module.forward = forward  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        del module.forward


def make_elbo(kind: str) -> pyro.infer.ELBO:
    """``trace`` -> Trace_ELBO; ``meanfield`` -> TraceMeanField_ELBO (analytic KL)."""
    if kind == "trace":
        return pyro.infer.Trace_ELBO()
    if kind == "meanfield":
        return pyro.infer.TraceMeanField_ELBO()
    raise ValueError(f"unknown ELBO {kind!r}; choose 'trace' or 'meanfield'")


def kl_weight(epoch: int, warmup_epochs: int, start: float, final: float = 1.0) -> float:
    """beta at 1-based ``epoch``: linear from ``start`` to ``final`` over ``warmup_epochs``."""
    if warmup_epochs <= 0 or epoch > warmup_epochs:
        return final
    return start + (final - start) * (epoch - 1) / warmup_epochs


class SVITrainer:
    """Fits the parameters of an ELBO module in place, one minibatch per step.

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
    settings : TrainSettings
    checkpoint : callable, optional
        Called with :meth:`state_dict` every ``settings.checkpoint_every`` epochs, at
        the end, and when a signal stops the run.
    progress : bool
        Show a tqdm bar (epochs, running loss per rating, validation score).
    world : World, optional
        Train data-parallel with these ranks (the process group is initialized);
        ``validate``, ``checkpoint``, ``record`` and the bar are then used on rank 0 only.
    record : callable, optional
        Called after each epoch (in eval mode, without gradients); the numbers it
        returns are added to that epoch's history row under their own names (the
        analysis scripts record the ELBO's parts this way). Not saved in checkpoints.
    """

    def __init__(self, loss_fn: torch.nn.Module, batcher: RatingBatcher,
                 validate: Callable[[], dict[str, float]], settings: TrainSettings,
                 checkpoint: Callable[[dict], None] | None = None, progress: bool = True,
                 world: World | None = None,
                 record: Callable[[], dict[str, float]] | None = None):
        self.loss_fn, self.batcher, self.validate = loss_fn, batcher, validate
        self.settings, self.world = settings, world
        if settings.kl_weight < 1.0:
            log.info("train.kl_weight = %g: training maximizes a tempered bound, not the "
                     "ELBO", settings.kl_weight)
        self.is_main = world is None or world.is_main
        if settings.precision == "bfloat16" and self.is_main and native_bfloat16() is False:
            log.warning("train.precision = 'bfloat16' on a CPU without native bfloat16 "
                        "arithmetic (AVX512-BF16 or AMX): it is emulated, and likely slower "
                        "than float32")
        self._compiled = (compile_decoder(loss_fn.model.decoder, settings.precision)
                          if settings.compile else None)
        self.checkpoint = checkpoint if self.is_main else None
        self.progress = progress and self.is_main
        self.record = record if self.is_main else None
        s = settings
        # fused Adam (3 ms instead of 10 ms per step here); lazy rows for sparse gradients
        self.optimizer = RowSparseAdam(loss_fn.parameters(), lr=s.lr)
        decay = (s.lr_final / s.lr) ** (1 / max(s.epochs - 1, 1)) if s.lr_final else 1.0
        self.schedule = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=decay)
        self.result = TrainResult()
        self.epoch, self.step = 0, 0  # completed epochs; steps taken
        self.order: np.ndarray | None = None  # the current epoch's permutation
        self.position, self.epoch_losses = 0, []  # within the current epoch
        self.best_score, self.best_state, self.since_best = -math.inf, None, 0
        self.elapsed = 0.0  # seconds of training before this process (resumed runs)
        self._start = time.perf_counter()  # reset when run() starts
        self._signal: int | None = None  # caught by this process
        self._agreed_signal: int | None = None  # caught by some rank, known to all

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: tensors and plain types only."""
        return {
            "loss_fn": self.loss_fn.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "epoch": self.epoch, "step": self.step,
            "order": None if self.order is None else torch.from_numpy(self.order),
            "position": self.position, "epoch_losses": list(self.epoch_losses),
            "best_score": self.best_score, "best_state": self.best_state,
            "since_best": self.since_best, "history": self.result.history,
            "best_epoch": self.result.best_epoch, "elapsed": self._seconds(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "batcher": self.batcher.generator.bit_generator.state,
                    "batcher_inputs": self.batcher.input_generator.bit_generator.state},
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss_fn.load_state_dict(state["loss_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.order = None if state["order"] is None else state["order"].numpy()
        self.position, self.epoch_losses = state["position"], list(state["epoch_losses"])
        self.best_score, self.best_state = state["best_score"], state["best_state"]
        self.since_best = state["since_best"]
        self.result.history, self.result.best_epoch = state["history"], state["best_epoch"]
        self.elapsed = state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_as_tuple(state["rng"]["python"]))
        self.batcher.generator.bit_generator.state = state["rng"]["batcher"]
        if "batcher_inputs" in state["rng"]:  # absent in checkpoints of 0.1 before it
            self.batcher.input_generator.bit_generator.state = state["rng"]["batcher_inputs"]

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until the epochs, patience or time limit run out; returns the result.

        The parameters of ``loss_fn`` are left at the best validated epoch.

        Raises
        ------
        TrainingDiverged
            At the first step whose loss, or any parameter or gradient, is not finite,
            or after an epoch whose validation scores are not.
        TrainingInterrupted
            When SIGINT or SIGTERM arrived; a checkpoint was written first.
        """
        self._start = time.perf_counter()
        if self.world is not None:  # identical already when seeded alike; now certainly
            distributed.broadcast_module(self.loss_fn)
        bar = tqdm(total=self.settings.epochs, initial=self.epoch, desc="fit", unit="epoch",
                   disable=not self.progress)
        if self.result.history and self.position == 0:
            # resumed from the state of a finished run: its stop decision stands
            self.result.stop_reason = self._stop_reason(self.result.history[-1])
        with bar, self._signals_caught():
            while not self.result.stop_reason:
                self._train_epoch()
                self._end_epoch(bar)
        self._restore_best()
        self.result.seconds = self._seconds()
        log.info("stopped after %d epochs (%s); kept epoch %d", len(self.result.history),
                 self.result.stop_reason, self.result.best_epoch)
        return self.result

    def _train_epoch(self) -> None:
        beta = self._beta()
        if self.order is None:
            self.order = self.batcher.permutation()
        size = self.batcher.batch_size
        while self.position < len(self.order):
            self._stop_if_signalled()
            positions = self.order[self.position:self.position + size]
            if self.world is None:
                self.epoch_losses.append(self._step(self.batcher.batch(positions, beta)))
            else:
                self.epoch_losses.append(self._shard_step(positions, beta))
            self.position += len(positions)

    @contextmanager
    def _forward_pass(self):
        """What a step's forward pass runs under: ``train.precision``, ``train.compile``."""
        with training_precision(self.settings.precision), \
                _swapped_forward(self.loss_fn.model.decoder, self._compiled):
            yield

    def _step(self, batch: Batch) -> float:
        self.step += 1
        self.optimizer.zero_grad()
        with self._forward_pass():
            loss = self.loss_fn(batch)
        if not torch.isfinite(loss):
            with training_precision(self.settings.precision):  # eager: the same function
                site = _first_nonfinite_site(self.loss_fn, batch)
            raise TrainingDiverged(
                f"the loss is {loss.item()} at step {self.step} (epoch {self.epoch + 1})"
                f"{f', first at site {site!r}' if site else ''}; try a smaller train.lr")
        loss.backward()
        self.optimizer.step()
        bad = _first_nonfinite_parameter(self.loss_fn)
        if bad is not None:
            raise TrainingDiverged(f"{bad} is not finite after step {self.step} "
                                   f"(epoch {self.epoch + 1}); try a smaller train.lr")
        return loss.item()

    def _shard_step(self, positions: np.ndarray, beta: float) -> float:
        """One data-parallel step on this rank's shard of the global batch ``positions``.

        Returns the global batch's loss (the sum of the ranks' terms), as :meth:`_step`.
        """
        self.step += 1
        self.optimizer.zero_grad()
        with self._forward_pass():
            loss, batch = distributed.shard_loss(self.loss_fn, self.batcher, positions,
                                                 beta, self.world)
        mine = 0.0 if loss is None else loss.item()
        if loss is not None and math.isfinite(mine):
            loss.backward()
        # the signal flags ride with the gradients: every rank learns of any signal at once
        total, sigint, sigterm = distributed.all_reduce_gradients(
            self.loss_fn.parameters(),
            [mine, float(self._signal == signal.SIGINT), float(self._signal == signal.SIGTERM)])
        if sigint or sigterm:
            self._agreed_signal = signal.SIGINT if sigint else signal.SIGTERM
        if not math.isfinite(total):
            with training_precision(self.settings.precision):  # eager: the same function
                site = (_first_nonfinite_site(self.loss_fn, batch)
                        if batch is not None and not math.isfinite(mine) else None)
            raise TrainingDiverged(
                f"the loss is {total} at step {self.step} (epoch {self.epoch + 1})"
                f"{f', first at site {site!r}' if site else ''}; try a smaller train.lr")
        self.optimizer.step()
        bad = _first_nonfinite_parameter(self.loss_fn)
        if bad is not None:
            raise TrainingDiverged(f"{bad} is not finite after step {self.step} "
                                   f"(epoch {self.epoch + 1}); try a smaller train.lr")
        return total

    def _validate(self) -> tuple[dict[str, float], float]:
        """Validation scores and the training clock; rank 0's on every rank."""
        scores: dict[str, float] = {}
        if self.is_main:
            self.loss_fn.eval()
            scores = self.validate()
            self.loss_fn.train()
        seconds = self._seconds()
        if self.world is not None:  # one early-stopping and time-limit decision for all
            scores, seconds = distributed.broadcast_object((scores, seconds))
        return scores, seconds

    def _end_epoch(self, bar) -> None:
        self.epoch += 1
        beta = self._beta(self.epoch)
        # every batch is full but the last, which holds the rest of the N ratings
        sizes = np.full(len(self.epoch_losses), self.batcher.batch_size)
        sizes[-1] = len(self.batcher.ratings) - self.batcher.batch_size * (len(sizes) - 1)
        loss = float(np.average(self.epoch_losses, weights=sizes))
        scores, seconds = self._validate()
        recorded = self._record()
        bad = [k for k, v in scores.items() if not math.isfinite(v)]
        if bad:  # finite loss and parameters, but the predictive overflowed
            raise TrainingDiverged(f"the validation {bad[0]} is {scores[bad[0]]} after epoch "
                                   f"{self.epoch} (step {self.step}); try a smaller train.lr")
        row = {"epoch": self.epoch, "kl_weight": beta, "lr": self.schedule.get_last_lr()[0],
               "loss": loss, "loss_per_rating": loss / len(self.batcher.ratings),
               "seconds": seconds, **{f"val_{k}": v for k, v in scores.items()},
               **recorded}
        self.result.history.append(row)
        self._track_best(scores.get(self.settings.monitor))
        self.schedule.step()
        self.order, self.position, self.epoch_losses = None, 0, []

        score = scores.get(self.settings.monitor)  # None when there is no validation set
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss_per_rating']:.4f}",
                        **({self.settings.monitor: f"{score:.4f}"} if score is not None else {}))
        log.debug("epoch %d: %s", self.epoch, row)
        self.result.stop_reason = self._stop_reason(row)
        every = self.settings.checkpoint_every
        if self.checkpoint and (self.result.stop_reason or (every and self.epoch % every == 0)):
            self.checkpoint(self.state_dict())

    def _record(self) -> dict[str, float]:
        if self.record is None:
            return {}
        self.loss_fn.eval()
        try:
            with torch.no_grad():
                return dict(self.record())
        finally:
            self.loss_fn.train()

    def _track_best(self, score: float | None) -> None:
        if self._beta(self.epoch) != self.settings.kl_weight:
            return  # inside the warm-up: not yet the objective
        sign = 1.0 if self.settings.monitor == "lpd" else -1.0  # "higher is better"
        if score is None or sign * score > self.best_score:
            self.best_score = -math.inf if score is None else sign * score
            self.best_state = copy.deepcopy(self.loss_fn.state_dict())
            self.since_best, self.result.best_epoch = 0, self.epoch
        else:
            self.since_best += 1

    def _stop_reason(self, row: dict) -> str:
        s = self.settings
        if s.patience and self.since_best >= s.patience:
            return f"no validation gain in {s.patience} epochs"
        if s.time_limit and row["seconds"] >= s.time_limit:
            return f"time limit of {s.time_limit:g} s reached"
        if self.epoch >= s.epochs:
            return f"reached {s.epochs} epochs"
        return ""

    def _restore_best(self) -> None:
        if self.best_state is not None:
            self.loss_fn.load_state_dict(self.best_state)
            return
        # the run ended inside the warm-up: keep the last parameters, and say so
        self.result.best_epoch = len(self.result.history)
        log.warning("training ended before the KL warm-up finished; the parameters "
                    "kept do not maximize the training objective (train.kl_weight)")

    def _beta(self, epoch: int | None = None) -> float:
        s = self.settings
        return kl_weight(self.epoch + 1 if epoch is None else epoch, s.kl_warmup_epochs,
                         s.kl_warmup_start, s.kl_weight)

    def _seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self._start

    # -- signals --------------------------------------------------------------------------

    @contextmanager
    def _signals_caught(self):
        """Turn SIGINT/SIGTERM into a stop between two steps (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def _stop_if_signalled(self) -> None:
        # Data-parallel ranks act on the signal they all know of after the same step.
        signum = self._signal if self.world is None else self._agreed_signal
        if signum is None:
            return
        if self.checkpoint:
            self.checkpoint(self.state_dict())
        if self.world is not None:  # no rank leaves while rank 0 is still writing
            distributed.barrier()
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"{name} at step {self.step} (epoch {self.epoch + 1})",
                                  signum)


def _as_tuple(state):
    """``random.getstate()`` comes back from a checkpoint with lists for tuples."""
    return tuple(_as_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state


def _first_nonfinite_parameter(module: torch.nn.Module) -> str | None:
    for name, p in module.named_parameters():
        grad = p.grad
        if grad is not None and grad.is_sparse:
            # Row-sparse (encoders' first layers): only the gradient's rows changed, and
            # Adam moves a row by a bounded step given a finite gradient, so checking the
            # gradient's values covers the step without reading all rows.
            if not torch.isfinite(grad.coalesce().values()).all():
                return f"the gradient of {name}"
            continue
        if not torch.isfinite(p).all():
            return f"parameter {name}"
        if grad is not None and not torch.isfinite(grad).all():
            return f"the gradient of {name}"
    return None


@torch.no_grad()
def _first_nonfinite_site(loss_fn: torch.nn.Module, batch: Batch) -> str | None:
    """Name of the first guide or model site whose log-density is not finite."""
    model, guide = loss_fn.model, loss_fn.guide
    guide_trace = poutine.trace(guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    for trace in (guide_trace, model_trace):
        for name, node in trace.nodes.items():
            if node["type"] != "sample":
                continue
            value = node["fn"].log_prob(node["value"])
            if not torch.isfinite(value).all() or not torch.isfinite(node["value"]).all():
                return name
    return None
