"""Data-parallel training: 2 gloo ranks on 127.0.0.1 against 1 process, same seed.

The ranks are spawned processes that join a process group listening on 127.0.0.1 only
(:func:`deepfactor.distributed.init_loopback`) and call the ordinary
:func:`deepfactor.fit`, as the CLI does under ``torchrun``.
"""

import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepfactor.config import Config
from deepfactor.distributed import (World, free_loopback_port, init_loopback, shard,
                                    shutdown)
from deepfactor.fitting import fit, read_training_checkpoint
from deepfactor.train import SVITrainer, TrainingInterrupted

from conftest import small_config

#: 461 fit ratings in batches of 115: four full steps and one of a single rating, so
#: that rank 1's shard of the last step is empty. Small data: every entity is encoded
#: from all of its ratings at each step.
CONFIG = {"data.synthetic_ratings": 640, "train.batch_size": 115, "train.epochs": 2,
          "train.kl_warmup_epochs": 1, "train.kl_warmup_start": 0.5, "train.patience": 1}

#: More than SMALL_DATA_FACTOR batches: each step draws at most 3 ratings per entity
#: for the encoders, and their first layers take row-sparse (lazy Adam) steps.
SAMPLED = {**CONFIG, "data.synthetic_movies": 60, "data.synthetic_users": 50,
           "data.synthetic_ratings": 1500, "train.batch_size": 60, "guide.max_inputs": 3}

#: Sketched encoder inputs (one basis, sent by rank 0).
SKETCHED = {**SAMPLED, "guide.inputs": "sketch", "guide.sketch_dim": 6}

PATHS = pytest.mark.parametrize("path", [CONFIG, SAMPLED, SKETCHED],
                                ids=["every-entity", "sampled", "sketch"])


def _rank(rank, world_size, port, nested, out, stop_at_step):
    """One rank: join the group on loopback, fit, save what it ended with.

    With ``stop_at_step``, fit once straight, then again with a SIGINT raised on rank 1
    alone before that step, then resume from the checkpoint.
    """
    torch.set_num_threads(1)
    init_loopback(rank, world_size, port)
    (out / f"listening{rank}.txt").write_text(" ".join(_listening_addresses()))
    try:
        config = Config.from_dict(nested, source="<test>")
        _save(fit(config, progress=False), out / f"rank{rank}.pt")
        if not stop_at_step:
            return
        step, path = SVITrainer._shard_step, out / "training.pt"

        def signal_once(self, positions, beta):
            if self.step == stop_at_step - 1 and rank == 1:
                signal.raise_signal(signal.SIGINT)
            return step(self, positions, beta)

        SVITrainer._shard_step = signal_once
        try:
            fit(config, progress=False, checkpoint_path=path)
        except TrainingInterrupted as err:
            (out / f"stopped{rank}.txt").write_text(str(err))
        SVITrainer._shard_step = step
        (out / f"checkpoint-step{rank}.txt").write_text(
            str(read_training_checkpoint(path)[1]["step"]))
        resumed = fit(config, progress=False, checkpoint_path=path,
                      resume=read_training_checkpoint(path)[1])
        _save(resumed, out / f"resumed{rank}.pt")
    finally:
        dist.destroy_process_group()


def _listening_addresses() -> list[str]:
    """IPv4/IPv6 addresses this process listens on, from /proc (Linux)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        for fields in (line.split() for line in lines):
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN, one of ours
                raw = bytes.fromhex(fields[1].split(":")[0])
                # /proc prints each 32-bit word of the address in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if table == "tcp" else socket.AF_INET6
                addresses.append(socket.inet_ntop(family, words))
    return addresses


def _save(fitted, path):
    torch.save({"model": fitted.model.state_dict(), "guide": fitted.guide.state_dict(),
                "history": fitted.history, "metrics": fitted.metrics}, path)


def _run_two_ranks(config, out, stop_at_step=0):
    out.mkdir(exist_ok=True)
    mp.spawn(_rank, args=(2, free_loopback_port(), config.nested(), out, stop_at_step),
             nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _assert_same_parameters(a, b, atol):
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, rtol=0, atol=atol, msg=key)


def _untimed(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _leave(rank, world_size, port, out):
    """Join, build an optimizer (it imports torch._dynamo), all-reduce, leave."""
    torch.set_num_threads(1)
    init_loopback(rank, world_size, port)
    torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    dist.all_reduce(torch.ones(3))
    group = dist.group.WORLD
    shutdown()
    (out / f"references{rank}.txt").write_text(str(sys.getrefcount(group)))


def test_leaving_frees_the_process_group(tmp_path):
    # A group still referenced after shutdown keeps its gloo threads into interpreter
    # exit, where the process can abort (distributed._load_dynamo_first); after
    # shutdown only the local name and getrefcount's argument may refer to it.
    mp.spawn(_leave, args=(2, free_loopback_port(), tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"references{r}.txt").read_text() for r in range(2)] == ["2", "2"]


def test_shards_partition_the_global_batch():
    positions = np.arange(11) * 3
    parts = [shard(positions, World(r, 4)) for r in range(4)]
    assert np.array_equal(np.concatenate(parts), positions)
    assert [len(p) for p in parts] == [3, 3, 3, 2]
    assert [len(shard(positions[:1], World(r, 2))) for r in range(2)] == [1, 0]


@pytest.mark.slow
@PATHS
def test_two_gloo_ranks_match_one_process_and_each_other(tmp_path, path):
    config = small_config(**path)
    single = fit(config, progress=False)
    assert len(single.history) == 2
    assert single.metrics["fit"]["num_fit_ratings"] > 16 * config["train.batch_size"] or (
        path is CONFIG)  # SMALL_DATA_FACTOR: the sampled paths are really taken

    rank0, rank1 = _run_two_ranks(config, tmp_path / "two")
    for rank in range(2):  # the store and gloo listened on loopback only
        listening = (tmp_path / "two" / f"listening{rank}.txt").read_text().split()
        assert listening and set(listening) == {"127.0.0.1"}
    _assert_same_parameters(rank0, rank1, atol=0)  # bit for bit
    reference = {"model": single.model.state_dict(), "guide": single.guide.state_dict()}
    _assert_same_parameters(reference, rank0, atol=1e-5)

    # the global losses, validation scores and the decisions taken from them agree too
    assert rank0["history"] == rank1["history"] and rank0["metrics"] == rank1["metrics"]
    for ours, theirs in zip(_untimed(rank0["history"]), _untimed(single.history)):
        assert ours == pytest.approx(theirs, rel=1e-5)
    assert rank0["metrics"]["fit"]["best_epoch"] == single.metrics["fit"]["best_epoch"]


@pytest.mark.slow
@PATHS
def test_a_signal_on_one_rank_stops_both_and_resume_matches_an_unstopped_run(tmp_path, path):
    straight = _run_two_ranks(small_config(**path), tmp_path, stop_at_step=7)[0]
    epoch = 2 if path is CONFIG else 1  # 5 steps an epoch, or more than 16
    for rank in range(2):  # both stopped after step 7, where rank 0 saved the state
        assert (tmp_path / f"stopped{rank}.txt").read_text() == f"SIGINT at step 7 (epoch {epoch})"
        assert (tmp_path / f"checkpoint-step{rank}.txt").read_text() == "7"
    resumed = [torch.load(tmp_path / f"resumed{r}.pt", weights_only=True) for r in range(2)]
    _assert_same_parameters(resumed[0], resumed[1], atol=0)
    _assert_same_parameters(straight, resumed[0], atol=0)
    assert _untimed(resumed[0]["history"]) == _untimed(straight["history"])


@pytest.mark.slow
def test_two_ranks_in_bfloat16_agree_with_each_other_and_with_one_process(tmp_path):
    """Each rank rounds its gradients of the bfloat16 products before they are summed,
    where one process rounds the sum once, so the two runs part by rounding, and Adam
    turns a rounding that flips a near-zero gradient's sign into a step of ``lr``: no
    useful absolute bound follows. The check is relative, on the Euclidean distance
    over all parameters: each bfloat16 run sits about bfloat16's displacement ``d`` from
    the float32 run, so the two-rank and one-process runs sit at most about ``2 d``
    apart (measured: 1.6e-3 against d = 1.2e-3). A wrong weight or a lost shard would
    move them far more."""
    config = small_config(**SKETCHED, **{"train.precision": "bfloat16"})
    single = fit(config, progress=False)
    exact = fit(config.replace(**{"train.precision": "float32"}), progress=False)
    rank0, rank1 = _run_two_ranks(config, tmp_path / "two")
    _assert_same_parameters(rank0, rank1, atol=0)  # the ranks share every sum

    def gap(a, b):  # relative Euclidean distance over all parameters
        diff = sum(float(((a[part][key] - value) ** 2).sum())
                   for part in ("model", "guide") for key, value in b[part].items())
        norm = sum(float((value ** 2).sum())
                   for part in ("model", "guide") for value in b[part].values())
        return (diff / norm) ** 0.5

    def params(fitted):
        return {"model": fitted.model.state_dict(), "guide": fitted.guide.state_dict()}

    sharding, precision = gap(rank0, params(single)), gap(params(exact), params(single))
    assert 0 < sharding <= 2 * precision
