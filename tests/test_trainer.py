"""The training engine on a tiny stand-in model and dataset: resume equivalence, logs, errors, init_from."""
import csv
import math
import platform
import random

import numpy as np
import pytest
import torch
from torch import nn

import avseg.data
import avseg.evaluation
import avseg.models
from avseg.checkpoint import read_checkpoint, save_checkpoint
from avseg.cli.common import run_cli
from avseg.cli.train import main as train_main
from avseg.config import load_config
from avseg.engine.checkpointing import capture_rng_state, init_from_checkpoint, restore_rng_state
from avseg.weights import load_into
from avseg.engine.distributed import all_reduce_sum
from avseg.engine.run_setup import tune_cpu_allocator
from avseg.engine.optim import lr_factor, resolve_amp
from avseg.engine.trainer import NonFiniteLossError, train
from avseg.errors import CheckpointError, ConfigError
from avseg.models import registry


# ----------------------------------------------------------------------------- stand-ins
class TinyDataset(torch.utils.data.Dataset):
    """``x [4]`` -> ``y [1]``; training items get noise from torch, numpy and Python RNGs (all must resume)."""

    def __init__(self, size, train):
        generator = torch.Generator().manual_seed(7 if train else 8)
        self.x = torch.randn(size, 4, generator=generator)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.3
        self.train = train

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        x = self.x[index].clone()
        if self.train:
            x += 0.05 * torch.randn(4) + 0.05 * float(np.random.randn()) + 0.05 * random.random()
        return {"x": x, "y": self.y[index], "video_id": f"clip{index:03d}"}


class TinyModel(nn.Module):
    """Two linear layers with BatchNorm and dropout; returns named loss terms like the AVS models do."""

    batch_keys = ("x", "y", "video_id")

    def __init__(self, hidden=8, fail_at_call=None, nan_at_call=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(hidden, 1)
        self.calls = 0
        self.fail_at_call = fail_at_call
        self.nan_at_call = nan_at_call

    def forward(self, x, y=None, video_id=None):
        assert isinstance(video_id, list) and isinstance(video_id[0], str), "non-tensor entries pass through"
        self.calls += self.training
        if self.training and self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        logits = self.head(self.body(x))
        out = {"logits": logits}
        if y is not None:
            out["mse"] = ((logits - y) ** 2).mean()
            out["l1"] = (logits - y).abs().mean()
            if self.training and self.calls == self.nan_at_call:
                out["l1"] = out["l1"] * float("inf")
            out["loss"] = out["mse"] + 0.1 * out["l1"]
        return out


class TinyEvaluator:
    """Mean squared error over the loader, summed exactly across ranks; ``count`` shows what was seen."""

    primary_metric = "mse"
    higher_is_better = False

    @torch.no_grad()
    def evaluate(self, model, loader, device):
        model.eval()
        totals = torch.zeros(2)
        for batch in loader:
            logits = model(batch["x"].to(device), video_id=batch["video_id"])["logits"]
            totals += torch.stack([((logits.cpu() - batch["y"]) ** 2).sum(), torch.tensor(float(len(logits)))])
        all_reduce_sum(totals)
        return {"mse": float(totals[0] / totals[1]), "count": float(totals[1])}


TINY_RECORD = registry.ModelRecord("tiny", lambda cfg: TinyModel(), TinyModel.batch_keys, "image")


@pytest.fixture(autouse=True)
def tiny_model_registered(monkeypatch):
    """``model.name=tiny`` names TinyModel for the trainer, in this test only (the registry stays as it was)."""
    monkeypatch.setitem(registry._RECORDS, "tiny", TINY_RECORD)


def builders(**model_kwargs):
    return dict(
        build_dataset=lambda cfg, split, train: TinyDataset(22 if train else 10, train),
        build_model=lambda cfg: TinyModel(**model_kwargs),
        build_evaluator=lambda cfg: TinyEvaluator(),
    )


def tiny_config(*overrides):
    base = [
        "name=tiny", "device=cpu", "deterministic=true", "seed=5", "model.name=tiny",
        "data.num_workers=0", "train.epochs=2", "train.batch_size=4", "train.lr=0.01",
        "train.optimizer=adamw", "train.weight_decay=0.01", "train.lr_schedule=cosine", "train.warmup_epochs=1",
        "train.grad_clip=1.0", "train.log_every=2", "train.progress=false", "eval.batch_size=4",
    ]
    return load_config(None, base + list(overrides))


def weights(path):
    return read_checkpoint(path)["model"]


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("num_workers", [0, 1])
def test_killed_and_resumed_run_equals_straight_run(tmp_path, monkeypatch, num_workers):
    workers = f"data.num_workers={num_workers}"
    straight = train(tiny_config(workers), out=str(tmp_path / "straight"), **builders())

    # 6 steps per epoch: the kill comes in the middle of epoch 2, after last.pth of epoch 1 was written.
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(workers), out=str(tmp_path / "killed"), **builders(fail_at_call=9))
    assert read_checkpoint(tmp_path / "killed" / "last.pth")["epoch"] == 1

    # Resume through the command line, with the config stored in the checkpoint.
    fakes = builders()
    monkeypatch.setattr(avseg.data, "build_dataset", fakes["build_dataset"], raising=False)
    monkeypatch.setattr(avseg.models, "build_model", fakes["build_model"], raising=False)
    monkeypatch.setattr(avseg.evaluation, "build_evaluator", fakes["build_evaluator"], raising=False)
    assert train_main(["--out", str(tmp_path / "killed"), "--resume"]) == 0

    final_straight, final_resumed = weights(straight.last_checkpoint), weights(tmp_path / "killed" / "last.pth")
    assert final_straight.keys() == final_resumed.keys()
    for key in final_straight:
        assert torch.equal(final_straight[key], final_resumed[key]), key
    resumed = read_checkpoint(tmp_path / "killed" / "last.pth")
    assert (resumed["epoch"], resumed["step"]) == (2, 12)
    assert resumed["best_metric"] == straight.best_metric
    assert [row["train_loss"] for row in resumed["history"]] == [row["train_loss"] for row in straight.history]
    with open(tmp_path / "killed" / "train_log.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_run_folder_outputs_and_logs(tmp_path):
    result = train(tiny_config("train.val_every=1"), out=str(tmp_path), **builders())
    for name in ("config.yaml", "log.txt", "train_log.csv", "curves.png", "last.pth", "best.pth"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    with open(tmp_path / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for column in ("epoch", "step", "lr", "train_loss", "train_mse", "train_l1", "train_grad_norm", "val_mse", "val_count", "time_epoch_s"):
        assert column in rows[0], column
    assert float(rows[0]["val_count"]) == 10  # every validation item once
    assert result.best_metric == min(float(row["val_mse"]) for row in rows)
    best = read_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch and "optimizer" not in best  # best.pth holds weights + config only
    assert best["config"].model.name == "tiny"
    last = read_checkpoint(result.last_checkpoint)
    assert {"optimizer", "scheduler", "scaler", "rng", "history", "epoch", "step"} <= set(last)
    log_text = (tmp_path / "log.txt").read_text()
    assert "STEP] step 2:" in log_text and "epoch 2/2" in log_text and "ETA" in log_text


def test_sync_bn_in_one_process_changes_nothing(tmp_path):
    plain = train(tiny_config("train.val_every=0"), out=str(tmp_path / "plain"), **builders())
    synced = train(tiny_config("train.val_every=0", "train.sync_bn=true"), out=str(tmp_path / "synced"), **builders())
    assert "a single process already normalises over its whole batch" in (tmp_path / "synced" / "log.txt").read_text()
    for name, value in weights(plain.last_checkpoint).items():
        assert torch.equal(weights(synced.last_checkpoint)[name], value), name


def test_resume_of_finished_run_trains_nothing_more(tmp_path):
    cfg = tiny_config("train.epochs=1", "train.val_every=0")
    first = train(cfg, out=str(tmp_path), **builders())
    assert first.best_checkpoint is None and not (tmp_path / "best.pth").exists()
    again = train(tiny_config("train.epochs=1", "train.val_every=0"), out=str(tmp_path), resume=str(first.last_checkpoint), **builders())
    assert (again.epochs, again.steps) == (1, first.steps)


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# ----------------------------------------------------------------------------- errors
def test_non_finite_loss_names_step_and_terms(tmp_path):
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(), out=str(tmp_path), **builders(nan_at_call=3))
    message = str(info.value)
    assert "step 3 " in message and "batch 3/6" in message
    assert "l1=inf" in message and "loss=inf" in message and "mse=" in message


def _exit_status(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(train_main, argv)
    return info.value.code, capsys.readouterr().err


def test_cli_user_errors_exit_2(tmp_path, capsys):
    status, err = _exit_status(["--cfg", "s4.yaml", "train.not_a_key=1", "--out", str(tmp_path)], capsys)
    assert status == 2 and "train.not_a_key" in err and "Traceback" not in err
    status, err = _exit_status(["--resume", str(tmp_path / "missing.pth")], capsys)
    assert status == 2 and "checkpoint not found" in err and "missing.pth" in err
    status, err = _exit_status(["--cfg", "s4.yaml", f"train.init_from={tmp_path / 'nope.pth'}", "--out", str(tmp_path)], capsys)
    assert status == 2 and "train.init_from" in err and "nope.pth" in err
    status, err = _exit_status(["--cfg", "s4.yaml", "train.optimizer=lbfgs", "--print-config"], capsys)
    assert status == 2 and "train.optimizer" in err and "lbfgs" in err  # the schema refuses it at load time
    status, err = _exit_status([], capsys)
    assert status == 2 and "--cfg is required" in err


def test_bad_choice_and_wrong_model_resume(tmp_path):
    with pytest.raises(ConfigError, match="train.optimizer"):
        train(tiny_config("train.optimizer=lbfgs"), out=str(tmp_path / "a"), **builders())
    with pytest.raises(ConfigError, match="train.cpu_allocator"):
        train(tiny_config("train.cpu_allocator=jemalloc"), out=str(tmp_path / "b"), **builders())
    with pytest.raises(ConfigError, match="train.epochs"):
        train(tiny_config("train.epochs=0"), out=str(tmp_path / "a"), **builders())
    assert not (tmp_path / "a").exists()  # checked before anything is built or written
    run = train(tiny_config("train.epochs=1", "train.val_every=0"), out=str(tmp_path / "b"), **builders())
    with pytest.raises(CheckpointError, match="model 'tiny'.*trains 'other'"):
        train(tiny_config("model.name=other"), out=str(tmp_path / "c"), resume=str(run.last_checkpoint), **builders())
    with pytest.raises(CheckpointError, match="do not fit"):
        train(tiny_config(), out=str(tmp_path / "d"), resume=str(run.last_checkpoint), **builders(hidden=16))
    best_like = tmp_path / "weights_only.pth"
    save_checkpoint(best_like, TinyModel().state_dict(), tiny_config())
    with pytest.raises(CheckpointError, match="no training state"):
        train(tiny_config(), out=str(tmp_path / "e"), resume=str(best_like), **builders())


# ----------------------------------------------------------------------------- init_from
def test_init_from_reports_keys_and_loads_matching_tensors(tmp_path):
    source = TinyModel(hidden=8)
    source.extra = nn.Linear(2, 2)
    path = tmp_path / "source.pth"
    save_checkpoint(path, source.state_dict(), tiny_config())

    target = TinyModel(hidden=8)
    target.head = nn.Linear(8, 3)  # shape mismatch
    target.new_branch = nn.Conv2d(1, 1, 1)  # missing from the checkpoint
    report = init_from_checkpoint(target, str(path))
    assert torch.equal(target.body[0].weight, source.body[0].weight)
    assert sorted(report.loaded)[:2] == ["body.0.bias", "body.0.weight"] and len(report.loaded) == 7
    assert sorted(report.missing) == ["new_branch.bias", "new_branch.weight"]
    assert sorted(report.unexpected) == ["extra.bias", "extra.weight"]
    assert ("head.weight", (1, 8), (3, 8)) in report.shape_mismatched
    text = report.describe()
    assert "new_branch.bias (1)" in text and "extra.weight (1)" in text and "head.weight: checkpoint [1, 8] vs model [3, 8]" in text

    # Through the trainer: the report lands in log.txt.
    run_cfg = tiny_config("train.epochs=1", "train.val_every=0", f"train.init_from={path}")
    train(run_cfg, out=str(tmp_path / "run"), **builders(hidden=8))
    log_text = (tmp_path / "run" / "log.txt").read_text()
    assert "initialised from" in log_text and "unexpected (not in the model) (2): extra.weight (1), extra.bias (1)" in log_text


def test_init_from_without_any_match_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    save_checkpoint(path, {"something.else": torch.zeros(3)}, tiny_config())
    with pytest.raises(CheckpointError, match="no tensor of"):
        init_from_checkpoint(TinyModel(), str(path))


def test_module_prefix_is_stripped():
    model = TinyModel()
    state = {f"module.{key}": value + 1 for key, value in TinyModel().state_dict().items()}
    report = load_into(model, state, strict=False)
    assert not report.missing and not report.unexpected


# ----------------------------------------------------------------------------- schedules and AMP
def test_lr_schedules_follow_their_formulas():
    cfg = tiny_config("train.epochs=4", "train.warmup_epochs=1", "train.lr_schedule=cosine", "train.lr=0.1", "train.min_lr=0.01").train
    factor = lr_factor(cfg, steps_per_epoch=5)
    assert [factor(step) for step in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    for step in (5, 10, 19, 25):
        progress = min(1.0, (step - 5) / 15)
        assert factor(step) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    step_cfg = tiny_config("train.lr_schedule=step", "train.lr_step=2", "train.lr_gamma=0.5", "train.warmup_epochs=0").train
    factor = lr_factor(step_cfg, steps_per_epoch=3)
    assert [factor(step) for step in (0, 5, 6, 11, 12)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        lr_factor(tiny_config("train.lr_schedule=linear").train, 3)


def test_amp_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("fp16", cpu) is None and resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16  # an explicit opt-in: faster convolutions on AVX-512 BF16 CPUs
    with pytest.raises(ConfigError, match="train.amp"):
        resolve_amp("half", cpu)


def test_cpu_allocator_modes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not tune_cpu_allocator("system", cpu) and not tune_cpu_allocator("auto", cuda)
    with pytest.raises(ConfigError, match="train.cpu_allocator"):
        tune_cpu_allocator("jemalloc", cpu)
    if platform.libc_ver()[0] == "glibc":  # mallopt exists only there; elsewhere "tuned" is a no-op
        assert tune_cpu_allocator("tuned", cpu) and tune_cpu_allocator("auto", cpu)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_synthetic_tpavi_trains_resumes_and_evaluates(synthetic_s4_root, tmp_path):
    """configs/synthetic/s4_tpavi.yaml, shrunk: train one epoch, extend it by one with --resume, evaluate best.pth."""
    import json

    from avseg.cli.eval import main as eval_main

    run = tmp_path / "run"
    overrides = [
        f"data.root={synthetic_s4_root}", "data.image_size=64", "data.num_workers=0", "model.neck_channels=16",
        "train.epochs=1", "train.batch_size=2", "train.max_steps_per_epoch=1", "eval.batch_size=2", "device=cpu",
        "train.progress=false",
    ]
    assert train_main(["--cfg", "configs/synthetic/s4_tpavi.yaml", "--out", str(run)] + overrides) == 0
    assert train_main(["--out", str(run), "--resume", "train.epochs=2"]) == 0
    with open(run / "train_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"train_loss", "val_miou", "val_fscore"} <= set(rows[0])

    best = read_checkpoint(run / "best.pth")
    assert best["config"].model.name == "tpavi" and best["metric"] == "miou"
    assert eval_main(["--ckpt", str(run / "best.pth"), "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]["normal"]["metrics"]
    # The validation inside training and a standalone evaluation of best.pth agree exactly.
    logged = rows[best["epoch"] - 1]
    assert metrics["miou"] == pytest.approx(float(logged["val_miou"]), abs=1e-9)
    assert metrics["fscore"] == pytest.approx(float(logged["val_fscore"]), abs=1e-9)
