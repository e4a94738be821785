"""The trainer's hooks, failed checkpoint writes, stale temporary files, the dataset registry and loaders."""
import errno
import os
import shutil

import pytest
import torch

import avseg.data
import avseg.evaluation
import avseg.models
from avseg.checkpoint import read_checkpoint
from avseg.cli.common import run_cli
from avseg.cli.train import main as train_main
from avseg.data import DATASETS, build_dataset
from avseg.data.loaders import build_eval_loader, build_train_loader, to_device
from avseg.engine.distributed import DistContext, gather_to_main, get_rank
from avseg.engine.hooks import Hook, default_hooks
from avseg.engine.trainer import Trainer, training_inputs
from avseg.errors import ConfigError
from avseg.vae.data import VAE_DATASETS
from test_trainer import TINY_RECORD, TinyDataset, TinyEvaluator, TinyModel, builders, tiny_config
from test_trainer import tiny_model_registered  # noqa: F401  (autouse fixture: model.name=tiny is TinyModel)


class RecordingHook(Hook):
    """Writes down every call; placed last, it sees each epoch row as the other hooks left it."""

    def __init__(self):
        self.calls, self.rows = [], []

    def before_train(self, trainer):
        self.calls.append("before_train")

    def before_epoch(self, trainer, epoch):
        self.calls.append(f"before_epoch {epoch}")

    def after_step(self, trainer, terms, lr):
        self.calls.append(f"after_step {trainer.step}")

    def after_epoch(self, trainer, row):
        self.calls.append(f"after_epoch {row['epoch']}")
        self.rows.append(dict(row))

    def after_train(self, trainer):
        self.calls.append("after_train")

    def close(self, trainer):
        self.calls.append("close")


def tiny_trainer(tmp_path, cfg, hook, **model_kwargs):
    ctx = DistContext()
    fakes = builders(**model_kwargs)
    train_loader = build_train_loader(fakes["build_dataset"](cfg, "train", True), cfg, ctx)
    val_loader = build_eval_loader(fakes["build_dataset"](cfg, "val", False), cfg.eval.batch_size, cfg, ctx)
    evaluator = TinyEvaluator()
    hooks = default_hooks(evaluator, val_loader) + [hook]
    return Trainer(cfg, fakes["build_model"](cfg), train_loader, val_loader, evaluator, tmp_path, ctx, hooks=hooks)


# ----------------------------------------------------------------------------- hooks
def test_hooks_are_called_in_order_and_complete_the_epoch_row(tmp_path):
    hook = RecordingHook()
    cfg = tiny_config("train.epochs=2", "train.max_steps_per_epoch=2", "train.tensorboard=false")
    result = tiny_trainer(tmp_path, cfg, hook).fit()
    assert hook.calls == [
        "before_train",
        "before_epoch 1", "after_step 1", "after_step 2", "after_epoch 1",
        "before_epoch 2", "after_step 3", "after_step 4", "after_epoch 2",
        "after_train", "close",
    ]
    columns = ["epoch", "step", "lr", "train_loss", "train_mse", "train_l1", "train_grad_norm",
               "val_mse", "val_count", "time_train_s", "time_val_s", "time_epoch_s"]
    assert [list(row) for row in hook.rows] == [columns, columns]  # the order of train_log.csv's columns
    assert hook.rows == result.history
    row = hook.rows[0]
    assert row["time_epoch_s"] == pytest.approx(row["time_train_s"] + row["time_val_s"])
    assert (tmp_path / "train_log.csv").read_text().splitlines()[0] == ",".join(columns)


def test_close_runs_after_an_error_and_after_train_does_not(tmp_path):
    hook = RecordingHook()
    trainer = tiny_trainer(tmp_path, tiny_config(), hook, nan_at_call=2)
    with pytest.raises(Exception, match="non-finite loss"):
        trainer.fit()
    assert hook.calls == ["before_train", "before_epoch 1", "after_step 1", "close"]


# ----------------------------------------------------------------------------- failed checkpoint writes
def _resume_through_cli(monkeypatch, run_dir, *overrides):
    fakes = builders()
    monkeypatch.setattr(avseg.data, "build_dataset", fakes["build_dataset"])
    monkeypatch.setattr(avseg.models, "build_model", fakes["build_model"])
    monkeypatch.setattr(avseg.evaluation, "build_evaluator", fakes["build_evaluator"], raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(train_main, ["--out", str(run_dir), "--resume", *overrides])
    return info.value.code


@pytest.mark.parametrize("failure", ["oserror", "torch_writer"])
def test_disk_full_during_a_checkpoint_write_is_one_logged_line_and_exit_2(tmp_path, monkeypatch, capsys, failure):
    from avseg.engine.trainer import train

    run_dir = tmp_path / "run"
    train(tiny_config("train.epochs=1", "train.val_every=0"), out=str(run_dir), **builders())
    before = (run_dir / "last.pth").read_bytes()

    def full_disk_save(obj, target, *args, **kwargs):
        target.write(b"partial")  # avseg saves into an open file object
        if failure == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        # what torch.save(obj, path) raises on a full disk: no errno, no file name
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 0))
    assert _resume_through_cli(monkeypatch, run_dir, "train.epochs=2") == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err and "inline_container" not in err
    assert f"cannot write checkpoint {run_dir / 'last.pth'}: no space left on device" in err
    log_lines = [line for line in (run_dir / "log.txt").read_text().splitlines() if "cannot write checkpoint" in line]
    assert len(log_lines) == 1 and "no space left on device" in log_lines[0] and "ERROR" in log_lines[0]
    assert (run_dir / "last.pth").read_bytes() == before  # the previous checkpoint is intact
    assert read_checkpoint(run_dir / "last.pth")["epoch"] == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []  # no temporary file left


# ----------------------------------------------------------------------------- stale temporary files
def test_temporary_files_of_a_killed_write_are_removed_at_the_next_start(tmp_path, monkeypatch):
    from avseg.engine.trainer import train

    run_dir = tmp_path / "run"
    train(tiny_config("train.epochs=1", "train.val_every=0"), out=str(run_dir), **builders())
    # What a kill during the writes of the next epoch leaves behind (avseg.fileio.atomic_path names).
    stale = [".last.pth.k3_x9a2q.tmp", ".best.pth.abcdefgh.tmp", ".train_log.csv.0123abcd.tmp", ".curves.png.zz_zz_zz.png"]
    for name in stale:
        (run_dir / name).write_bytes(b"\0" * 4096)
    unrelated = [".notes.abcdefgh.tmp", "last.pth.abcdefgh.tmp", ".last.pth.short.tmp"]
    for name in unrelated:
        (run_dir / name).write_text("not ours")

    assert _resume_through_cli(monkeypatch, run_dir, "train.epochs=2") == 0
    names = {path.name for path in run_dir.iterdir()}
    assert not names & set(stale)
    assert set(unrelated) <= names
    assert read_checkpoint(run_dir / "last.pth")["epoch"] == 2
    log_text = (run_dir / "log.txt").read_text()
    assert all(f"removed {name}" in log_text for name in stale)

    # A new run in a folder with a stale file (the first write was killed) cleans up as well.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".last.pth.abcdefgh.tmp").write_bytes(b"\0" * 4096)
    train(tiny_config("train.epochs=1", "train.val_every=0"), out=str(fresh), **builders())
    assert not (fresh / ".last.pth.abcdefgh.tmp").exists() and (fresh / "last.pth").is_file()


# ----------------------------------------------------------------------------- datasets, inputs, collectives
def test_dataset_registry_covers_every_schema_name_and_refuses_others():
    assert set(DATASETS) == {"avsbench", *VAE_DATASETS}
    cfg = tiny_config()
    cfg.data.name = "imagenet"
    with pytest.raises(ConfigError, match="data.name.*imagenet.*avsbench"):
        build_dataset(cfg, "train")


def test_training_inputs_come_from_the_registry_record():
    batch = {"x": torch.ones(2, 4), "y": torch.zeros(2, 1), "video_id": ["a", "b"], "extra": torch.ones(1)}
    inputs = training_inputs(TINY_RECORD, batch, torch.device("cpu"))
    assert list(inputs) == list(TinyModel.batch_keys) and inputs["video_id"] == ["a", "b"]
    with pytest.raises(ConfigError, match="no 'y' entry, which model 'tiny' needs"):
        training_inputs(TINY_RECORD, {"x": torch.ones(2, 4), "video_id": ["a", "b"]}, torch.device("cpu"))
    moved = to_device({"t": torch.ones(1), "ids": ["a"]}, torch.device("cpu"))
    assert torch.equal(moved["t"], torch.ones(1)) and moved["ids"] == ["a"]


def test_collectives_without_a_process_group_are_the_single_process_answer():
    assert get_rank() == 0
    assert gather_to_main({"clips": [1, 2]}) == [{"clips": [1, 2]}]


def test_eval_loader_keeps_dataset_order(tmp_path):
    loader = build_eval_loader(TinyDataset(10, train=False), 4, tiny_config(), DistContext())
    assert [batch["video_id"] for batch in loader] == [
        [f"clip{i:03d}" for i in range(0, 4)], [f"clip{i:03d}" for i in range(4, 8)], ["clip008", "clip009"],
    ]
