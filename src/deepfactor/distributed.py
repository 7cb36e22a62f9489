"""Data-parallel SVI over ``torch.distributed``: shards, shared noise and the collectives.

Launched with ``torchrun``, every process (rank) runs the same program on the same
data: it reads the rating files itself, makes the same split and validation carve from
the seed, and draws the same permutation, so at every step all ranks know the same
*global* minibatch ``b`` of ``B`` ratings. Rank ``k`` scores only its shard ``b_k``, a
contiguous part of about ``B / W`` of those ratings (``W`` ranks); the gradients of
all parameters are then summed across ranks, so every rank takes the same Adam step
and the parameters stay identical. Only :mod:`deepfactor.train` and
:mod:`deepfactor.fitting` call this module; the model and the guide never see it.

Why the summed gradient is exactly the single-process gradient
    Write ``L(b)`` for the minibatch loss of :mod:`deepfactor.batching`: the likelihood
    of each rating of ``b`` scaled by ``N / |b|``, and the KL terms of each entity ``i``
    of ``b`` weighted by ``c_i(b) N / (|b| n_i)``. Rank ``k`` computes

    .. math::  \\ell_k = \\frac{B_k}{B} L(b_k), \\qquad B_k = |b_k|,

    which puts ``N / B`` on each of its ratings and ``c_i(b_k) N / (B n_i)`` on each of
    its entities. The shards partition ``b``, so ``sum_k c_i(b_k) = c_i(b)`` and
    ``sum_k ell_k`` has every term of ``L(b)`` with its single-process weight: the
    per-rank loss is the single-process estimator restricted to the shard, and the
    gradients must be **summed** (not averaged) across ranks. This holds only if each
    latent ``z_i = loc_i + eps_i * scale_i`` takes the same value on every rank that
    touches entity ``i``, and the value the single process would draw; otherwise an
    entity shared by two shards would get two draws, and the sum would be a different
    (still unbiased, but not equal) estimator.

Shared noise
    One process draws, inside the guide, ``eps`` of shape ``(num_batch_movies, D)`` from
    torch's global generator for ``z_movie`` (``Normal.rsample``), then the users'. With
    :class:`SharedNoise` every rank makes the very same call, for the global batch's
    movies and users, at the same point, and keeps the rows of its own entities. All
    ranks are seeded alike and consume the generator alike (validation uses its own
    seeded generator), so the draws match the single process's bit for bit, and
    ``sum_k ell_k`` equals ``L(b)`` up to the order of floating-point sums. A test
    checks 2 ranks against 1 process to 1e-5, and the ranks against each other exactly.

Decisions taken once for all ranks
    Rank 0 validates and its scores and clock are broadcast, so early stopping and the
    time limit stop every rank after the same epoch; a SIGINT/SIGTERM flag travels with
    the gradients, so all ranks stop after the same step; only rank 0 writes checkpoints
    and the run directory.
"""

from __future__ import annotations

import datetime
import importlib
import os
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from pyro.poutine.messenger import Messenger

__all__ = ["World", "current_world", "init_from_environment", "init_loopback",
           "free_loopback_port", "shutdown", "shard",
           "SharedNoise", "shard_loss", "all_reduce_gradients", "broadcast_module",
           "broadcast_object", "barrier", "communication_numbers"]

#: The backend used: the package keeps every tensor on the CPU (see README, GPUs).
BACKEND = "gloo"


@dataclass(frozen=True)
class World:
    """This process's place among the ``size`` ranks of the process group."""

    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: validates, writes the run directory, shows progress."""
        return self.rank == 0


def current_world() -> World | None:
    """The initialized process group as a :class:`World`; None for a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return World(dist.get_rank(), dist.get_world_size())
    return None


def init_from_environment() -> World | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), with gloo.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
    without them (or with one process) nothing is initialized and None is returned.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        _load_dynamo_first()
        dist.init_process_group(backend=BACKEND)
    return current_world()


def _load_dynamo_first() -> None:
    """Import ``torch._dynamo`` before a process group exists, so that it holds none.

    Known shortcoming of torch (seen with 2.13): when ``torch._dynamo`` is first imported
    after ``init_process_group`` (building a ``torch.optim`` optimizer imports it), its
    cached tracing rules keep references to the default group, and
    ``destroy_process_group`` then cannot free it. The group's gloo threads live on into
    interpreter shutdown, where releasing their last all-reduce needs the GIL and the
    process aborts ("terminate called without an active exception"), now and then. When
    the import comes first, ``init_process_group`` clears those caches itself.
    """
    importlib.import_module("torch._dynamo")


def init_loopback(rank: int, size: int, port: int) -> World:
    """Join a group of ``size`` processes of this machine that listens on 127.0.0.1 only.

    For tests and benchmarks. ``tcp://`` and ``env://`` initialization let the
    rendezvous store listen on every interface; here rank 0 binds the store's socket to
    loopback itself, and ``GLOO_SOCKET_IFNAME=lo`` keeps gloo's own sockets there (Linux).

    Parameters
    ----------
    rank, size : int
    port : int
        A free port of 127.0.0.1, the same for every rank.
    """
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    listen_fd = None
    if rank == 0:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listen_fd = listener.detach()  # the store owns the socket from now on
    _load_dynamo_first()
    store = dist.TCPStore("127.0.0.1", port, size, rank == 0, master_listen_fd=listen_fd,
                          timeout=datetime.timedelta(seconds=120))
    dist.init_process_group(BACKEND, store=store, rank=rank, world_size=size)
    return World(rank, size)


def free_loopback_port() -> int:
    """A port of 127.0.0.1 free now (another process could take it before it is used)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(positions: np.ndarray, world: World) -> np.ndarray:
    """This rank's contiguous part of the global batch ``positions`` (may be empty)."""
    return np.array_split(positions, world.size)[world.rank]


class SharedNoise(Messenger):
    """Guide sites draw the global batch's standard-normal noise and keep their own rows.

    For each named site the messenger draws ``eps`` of shape ``(num_global, *event)``
    with the call ``Normal.rsample`` would make, and sets the site's value to
    ``loc + eps[rows] * scale``: reparameterized, so gradients flow through ``loc`` and
    ``scale`` as with ``rsample``. Sites whose value is already set (the model's
    latents, replayed from the guide) and other sites are left alone.

    Parameters
    ----------
    sites : dict of str to (int, LongTensor)
        For each site name, ``num_global`` (entities of the global batch) and ``rows``,
        shape ``(num_local,)``: the position of each of the site's entities among them.
    """

    def __init__(self, sites: dict[str, tuple[int, torch.Tensor]]):
        super().__init__()
        self.sites = sites

    def _pyro_sample(self, msg) -> None:
        if msg["name"] not in self.sites or msg["is_observed"] or msg["value"] is not None:
            return
        normal = msg["fn"]
        while hasattr(normal, "base_dist"):  # Independent (to_event) and Expanded wrappers
            normal = normal.base_dist
        if not isinstance(normal, torch.distributions.Normal):
            raise NotImplementedError(f"shared noise needs a Normal at site {msg['name']!r}, "
                                      f"not {type(normal).__name__}")
        num_global, rows = self.sites[msg["name"]]
        eps = torch.empty((num_global, *msg["fn"].event_shape), dtype=normal.loc.dtype,
                          device=normal.loc.device).normal_()  # as Normal.rsample draws
        msg["value"] = normal.loc + eps[rows] * normal.scale  # (num_local, latent_dim)


def _noise_for(batch, movies: np.ndarray, users: np.ndarray) -> SharedNoise:
    def rows(of_global: np.ndarray, local: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(of_global, local.numpy()))

    return SharedNoise({"z_movie": (len(movies), rows(movies, batch.movies)),
                        "z_user": (len(users), rows(users, batch.users))})


def shard_loss(loss_fn: torch.nn.Module, batcher, positions: np.ndarray, kl_weight: float,
               world: World):
    """This rank's term ``(B_k / B) L(b_k)`` of the global batch's loss (module docstring).

    Parameters
    ----------
    loss_fn : ELBOModule
    batcher : RatingBatcher
    positions : ndarray of int, shape (B,)
        The global batch, the same on every rank.
    kl_weight : float
    world : World

    Returns
    -------
    loss : Tensor, shape (), or None
        None when the shard is empty (a global batch smaller than the world); the
        global batch's noise is drawn all the same, to keep the generators in step.
    batch : Batch or None
        The shard's batch.
    """
    movies, users = batcher.distinct(positions)
    mine = shard(positions, world)
    if len(mine) == 0:
        every = batcher.batch(positions, kl_weight)
        with torch.no_grad(), _noise_for(every, movies, users):
            loss_fn.guide(every)
        return None, None
    batch = batcher.batch(mine, kl_weight, drawn_for=(movies, users))
    with _noise_for(batch, movies, users):
        loss = loss_fn(batch)
    return loss * (len(mine) / len(positions)), batch


def all_reduce_gradients(parameters, extras: list[float]) -> list[float]:
    """Sum every parameter's gradient, and ``extras``, over the ranks.

    A parameter without a gradient counts as zeros (and gets them). A row-sparse
    gradient (the encoders' first layer on large data, see ``guide.Encoder``) is
    summed as a dense one, since ranks touch different rows, together with a mask of
    the rows each rank touched; it comes back row-sparse on the union of those rows,
    which are the rows one process's step touches, so the optimizer takes the same
    lazy step. Known shortcoming: the dense sum sends every row at scale, which a
    sparse all-gather of the touched rows would avoid.

    Two collectives: one number per parameter (is any rank's gradient sparse?), then
    one buffer of ``sum(p.numel()) + len(extras)`` numbers, plus one per row of each
    row-sparse parameter: that is the communication volume per step. Returns the
    summed ``extras``.
    """
    parameters = [p for p in parameters if p.requires_grad]
    sparse = torch.tensor([float(p.grad is not None and p.grad.is_sparse) for p in parameters])
    dist.all_reduce(sparse, op=dist.ReduceOp.SUM)
    parts = []
    for p, is_sparse in zip(parameters, sparse.tolist()):
        grad = p.grad.coalesce() if p.grad is not None and p.grad.is_sparse else p.grad
        parts.append((torch.zeros_like(p) if grad is None else
                      grad.to_dense() if grad.is_sparse else grad).reshape(-1))
        if is_sparse:  # (rows,): 1 where this rank touched the row
            touched = torch.zeros(p.shape[0], dtype=p.dtype)
            if grad is not None and grad.is_sparse:
                touched[grad.indices()[0]] = 1.0
            parts.append(touched)
    dtype = parameters[0].dtype
    flat = torch.cat(parts + [torch.tensor(extras, dtype=dtype)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    start = 0
    for p, is_sparse in zip(parameters, sparse.tolist()):
        summed = flat[start:start + p.numel()].view_as(p)
        start += p.numel()
        if is_sparse:
            rows = torch.nonzero(flat[start:start + p.shape[0]]).reshape(-1)  # the union
            start += p.shape[0]
            p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), summed[rows], p.shape,
                                             is_coalesced=True)
        elif p.grad is None or p.grad.is_sparse:
            p.grad = summed.clone()
        else:
            p.grad.copy_(summed)
    return flat[start:].tolist()


def communication_numbers(module: torch.nn.Module, num_extras: int = 3,
                          row_sparse: bool = False) -> int:
    """Numbers all-reduced per step by :func:`all_reduce_gradients` for ``module``.

    ``row_sparse``: the encoders' first layers get row-sparse gradients (large data),
    which adds their row masks.
    """
    parameters = [p for p in module.parameters() if p.requires_grad]
    masks = sum(p.shape[0] for name, p in module.named_parameters()
                if row_sparse and name.endswith("encoder.first"))
    return sum(p.numel() for p in parameters) + len(parameters) + masks + num_extras


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer with rank 0's (one broadcast)."""
    tensors = [*module.parameters(), *module.buffers()]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])
    dist.broadcast(flat, src=0)
    start = 0
    for t in tensors:
        t.copy_(flat[start:start + t.numel()].view_as(t))
        start += t.numel()


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (pickled: small, trusted, in-process objects)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()
