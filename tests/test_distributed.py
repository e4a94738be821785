"""Samplers for (seed, epoch)-determined, rank-sharded data, and a 2-process gloo DDP run on loopback."""
import csv
import os

import pytest
import torch
import torch.multiprocessing as mp

from avseg.checkpoint import read_checkpoint
from avseg.data.loaders import ContiguousShardSampler, EpochShuffleSampler
from test_trainer import TinyDataset, TinyEvaluator, TinyModel
from local_ports import free_port


def test_training_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch, world_size=1, rank=0):
        sampler = EpochShuffleSampler(23, seed=seed, world_size=world_size, rank=rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 3) == order(1, 3)
    assert order(1, 3) != order(1, 4) and order(1, 3) != order(2, 3)
    assert sorted(order(1, 3)) == list(range(23))
    shards = [order(1, 3, world_size=4, rank=rank) for rank in range(4)]
    assert all(len(shard) == 6 for shard in shards)  # padded to 24 so every rank runs the same steps
    assert set().union(*shards) == set(range(23))
    # The global permutation does not depend on the world size: rank r takes every world_size-th item.
    single = order(1, 3)
    assert shards[1] == single[1::4]


@pytest.mark.parametrize("length,batch_size,world_size", [(10, 4, 3), (10, 4, 4), (3, 4, 2), (17, 1, 5), (0, 4, 2)])
def test_evaluation_shards_are_whole_batches_in_order(length, batch_size, world_size):
    shards = [list(ContiguousShardSampler(length, batch_size, world_size, rank)) for rank in range(world_size)]
    assert sum(shards, []) == list(range(length))  # no padding, no duplicate, dataset order
    single_batches = [list(range(i, min(i + batch_size, length))) for i in range(0, length, batch_size)]
    local_batches = [shard[i : i + batch_size] for shard in shards for i in range(0, len(shard), batch_size)]
    assert local_batches == single_batches  # each rank forms exactly the single-process batches



def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    from test_trainer import TINY_RECORD, builders, tiny_config

    from avseg.engine.trainer import train
    from avseg.models import registry

    registry.register(TINY_RECORD)  # a fresh (spawned) process: the test's fixture does not reach here
    result = train(tiny_config("train.epochs=2", "train.batch_size=3", "train.sync_bn=true"), out=out_dir, **builders())
    torch.save({"rank": rank, "steps": result.steps}, os.path.join(os.path.dirname(out_dir), f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_set_of_files(tmp_path):
    out_dir = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)

    # 22 training items over 2 ranks of batch 3: 11 items per rank -> 4 steps per epoch on each rank.
    reports = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert [report["steps"] for report in reports] == [8, 8]
    names = sorted(path.name for path in out_dir.iterdir())
    assert names == ["best.pth", "config.yaml", "curves.png", "last.pth", "log.txt", "tensorboard", "train_log.csv"]
    assert len(list((out_dir / "tensorboard").iterdir())) == 1  # a single event file: rank 0 only
    last = read_checkpoint(out_dir / "last.pth")
    assert last["world_size"] == 2 and len(last["rng"]) == 2 and last["step"] == 8
    assert not any(key.startswith("module.") for key in last["model"])
    with open(out_dir / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(float(row["val_count"]) == 10 for row in rows)  # the evaluator saw every item exactly once
    # SyncBatchNorm needs CUDA with NCCL: on gloo the run says so and keeps per-process BatchNorm.
    assert "train.sync_bn is unavailable with the gloo backend on cpu" in (out_dir / "log.txt").read_text()

    # Validation under DDP scores what rank 0 saves (weights and BatchNorm statistics): it equals a
    # single-process evaluation of best.pth.
    best = read_checkpoint(out_dir / "best.pth")
    model = TinyModel()
    model.load_state_dict(best["model"])
    loader = torch.utils.data.DataLoader(TinyDataset(10, train=False), batch_size=4)
    single = TinyEvaluator().evaluate(model, loader, torch.device("cpu"))
    logged = float(rows[best["epoch"] - 1]["val_mse"])
    assert single["mse"] == pytest.approx(logged, rel=1e-6)
