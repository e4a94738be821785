"""The one weights path: every unreadable file is one clear message naming it, never torch's advice."""
import os

import pytest
import torch
from torch import nn

from avseg.errors import CheckpointError
from avseg.weights import group_keys, load_into, read_state_dict, safe_load, strip_prefix


class _Malicious:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_unreadable_files_name_what_they_are(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("epoch 3 loss 0.25\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: cannot be read as a checkpoint: it is a text file") as info:
        safe_load(text)
    assert "(101)" not in str(info.value)
    binary = tmp_path / "noise.pth"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=r"noise\.pth: cannot be read as a checkpoint: not a file written by torch.save"):
        safe_load(binary)
    with pytest.raises(CheckpointError, match="is a folder; expected a checkpoint file"):
        safe_load(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        safe_load(tmp_path / "missing.pth")


def test_malicious_checkpoint_is_refused_without_suggesting_weights_only_false(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Malicious()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: holds a Python object \(posix\.system\).*refused for safety") as info:
        safe_load(path)
    assert "weights_only" not in str(info.value) and "False" not in str(info.value)


def test_state_dicts_are_unwrapped_and_unprefixed(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}}, path)
    assert sorted(read_state_dict(path)) == ["a.weight", "b"]
    assert strip_prefix({"module.x": 1, "y": 2}) == {"module.x": 1, "y": 2}  # only when every key has it


def test_load_into_reports_by_submodule_and_refuses_misfits():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    state["0.weight"] = torch.zeros(4, 2)
    state["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 tensors with the wrong shape, 1 tensors unexpected") as info:
        load_into(model, state, "ckpt.pth")
    assert "shape mismatch: 0.weight: checkpoint [4, 2] vs model [3, 2]" in str(info.value)
    report = load_into(model, state, strict=False)
    assert sorted(report.loaded) == ["0.bias", "1.bias", "1.weight"] and report.unexpected == ["extra.bias"]
    assert torch.equal(model[1].bias, state["1.bias"])
    assert group_keys(["a.b.c", "a.b.d", "x.y"]) == "a.b.* (2), x.y (1)"


def test_load_model_builds_from_a_given_config_so_eval_overrides_apply(tmp_path):
    from avseg.checkpoint import save_checkpoint
    from avseg.config import apply_overrides, load_config
    from avseg.models import build_model, load_model

    cfg = load_config(None, ["model.name=ecmvae", "model.backbone.name=resnet18", "model.audio.name=small",
                             "model.neck_channels=128", "data.image_size=64"])
    save_checkpoint(tmp_path / "m.pth", build_model(cfg).state_dict(), cfg)
    assert load_model(tmp_path / "m.pth").num_samples == 1
    overridden = apply_overrides(cfg, ["model.ecmvae.sample_at_test=true", "model.ecmvae.num_samples=4"])
    model = load_model(tmp_path / "m.pth", cfg=overridden)
    assert (model.sample_at_test, model.num_samples) == (True, 4) and model.cfg.model.ecmvae.num_samples == 4
