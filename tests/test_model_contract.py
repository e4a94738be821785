"""The contract every registered model keeps (timm style): a new model gets these tests by registering.

For each name in ``registry.names()`` (and, for records with ``semantic_batch_keys``, its AVSS variant
with 71 classes): a tiny instance (the record's ``tiny_overrides``, no pretrained files) runs forward on a
tiny batch, gives a finite ``loss``, back-propagates, saves as an avseg
checkpoint and comes back through ``load_model`` with identical eval outputs. For each official weight
format a record converts: our weights written in that layout (the inverses below) detect as that
format and load back exactly.
"""
import re
from typing import Callable, Dict

import pytest
import torch

from avseg.checkpoint import save_checkpoint
from avseg.config import load_config
from avseg.errors import CheckpointError
from avseg.models import build_model, detect_format, load_model, load_weights, registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SEMANTIC_OVERRIDES = ("model.num_classes=71",)
VARIANTS = [(name, False) for name in registry.names()] + [
    (name, True) for name in registry.names() if registry.get(name).semantic_batch_keys]
SUPERVISION_KEYS = ("masks", "labels", "mask_valid")


def tiny_config(name: str, semantic: bool = False):
    return load_config(None, [f"model.name={name}", *registry.get(name).tiny_overrides,
                              *(SEMANTIC_OVERRIDES if semantic else ())])


def tiny_batch(cfg, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Two items of the record's task: AVS clips of two 64 px frames (binary masks, or AVSS labels with the
    second frame of the first clip padded), or images of the dataset's shape."""
    g = torch.Generator().manual_seed(seed)
    if registry.get(cfg.model.name).task == "image":
        from avseg.vae.data import image_shape

        return {"images": torch.rand(2, *image_shape(cfg), generator=g)}
    size = cfg.data.image_size
    batch = {
        "frames": torch.randn(2, 2, 3, size, size, generator=g),
        "log_mel": torch.randn(2, 2, 1, 96, 64, generator=g),
        "mask_valid": torch.ones(2, 2, dtype=torch.bool),
    }
    if cfg.model.num_classes == 1:
        batch["masks"] = (torch.rand(2, 2, 1, size, size, generator=g) > 0.5).float()
        return batch
    batch["labels"] = torch.randint(0, cfg.model.num_classes, (2, 2, size, size), generator=g)
    batch["frame_valid"] = torch.tensor([[True, False], [True, True]])
    batch["mask_valid"] = batch["frame_valid"].clone()
    return batch


def inference_outputs(model, record, batch) -> Dict[str, torch.Tensor]:
    inputs = registry.select_inputs(record, batch, [k for k in record.batch_keys if k not in SUPERVISION_KEYS])
    torch.manual_seed(1)  # VAEs sample their code in every forward
    with torch.no_grad():
        return model(**inputs)


@pytest.mark.parametrize("name,semantic", VARIANTS, ids=[f"{n}-avss" if s else n for n, s in VARIANTS])
def test_tiny_model_trains_and_round_trips_through_a_checkpoint(tmp_path, name, semantic):
    cfg = tiny_config(name, semantic)
    record = registry.record_for(cfg)
    assert (record is registry.get(name)) == (not semantic)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert registry.record_of(model) is record
    batch = tiny_batch(cfg)
    inputs = registry.select_inputs(record, batch)
    assert set(inputs) == set(record.batch_keys)  # what the trainer checks
    outputs = model(**inputs)
    assert outputs["loss"].dim() == 0 and torch.isfinite(outputs["loss"])
    outputs["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)

    path = tmp_path / f"{name}.pth"
    save_checkpoint(path, model.state_dict(), cfg)
    loaded = load_model(path)
    assert not loaded.training and registry.record_of(loaded) is record
    expected, got = inference_outputs(model.eval(), record, batch), inference_outputs(loaded, record, batch)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    if semantic:
        assert expected["logits"].shape[2] == cfg.model.num_classes
        assert torch.equal(expected["logits"][0, 1], torch.zeros_like(expected["logits"][0, 1]))  # the padded frame


# ----------------------------------------------------------------------------- official layouts
def to_avsbench(state_dict):
    """Our ``tpavi`` names (ResNet backbone) -> the official AVSBench ``Pred_endecoder`` names."""
    rules = ((r"^backbone\.body\.layer([34])\.", r"resnet.layer\1_1."), (r"^backbone\.body\.", "resnet."),
             (r"^neck\.(\d)\.convs\.", lambda m: f"conv{int(m.group(1)) + 1}.conv2d_list."),
             (r"^tpavi\.(\d)\.", lambda m: f"tpavi_b{int(m.group(1)) + 1}."), (r"^decoder\.", ""))
    official = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key, count=1)
        official[key] = value
    return official


def to_mmvae_avs(state_dict):
    """Our ``ecmvae`` names (ResNet backbone) -> the released MMVAE-AVS names."""
    return {re.sub(r"^backbone\.body\.", "encoder.", k): v for k, v in state_dict.items()}


TO_OFFICIAL: Dict[str, Callable] = {"avsbench": to_avsbench, "mmvae-avs": to_mmvae_avs}
FORMATS = [(record_name, fmt) for record_name in registry.names() for fmt in registry.get(record_name).formats]


def test_every_official_format_has_an_inverse_here():
    assert sorted(TO_OFFICIAL) == registry.formats(), "write our-names -> official-names for the new format above"


@pytest.mark.parametrize("name,weight_format,semantic",
                         [(n, f, s) for n, f in FORMATS for s in (False, True) if not s or registry.get(n).semantic_batch_keys])
def test_official_layout_round_trip(tmp_path, name, weight_format, semantic):
    spec = registry.get(name).formats[weight_format]
    cfg = tiny_config(name, semantic)
    torch.manual_seed(1)
    source = build_model(cfg)
    ours = {k: v for k, v in source.state_dict().items() if not k.startswith(spec.missing_ok)}
    official = TO_OFFICIAL[weight_format](ours)
    path = tmp_path / f"{weight_format}.pth"
    torch.save({f"module.{k}": v for k, v in official.items()}, path)  # as saved from DataParallel
    assert registry.detect(official) == weight_format and detect_format(official) == weight_format

    torch.manual_seed(2)
    target = build_model(cfg)
    report = load_weights(target, path, expected_format=weight_format)
    assert (report.source_format, report.missing, report.unexpected, report.shape_mismatched) == (weight_format, [], [], [])
    assert all(k.startswith(spec.missing_ok) for k in report.kept_from_model)
    loaded = target.state_dict()
    for key, value in ours.items():
        assert torch.equal(loaded[key], value), key


def test_weights_of_one_model_are_refused_by_another(tmp_path):
    owner, weight_format = FORMATS[0]
    other = next(n for n in registry.names() if n != owner)
    path = tmp_path / "official.pth"
    torch.save(TO_OFFICIAL[weight_format](build_model(tiny_config(owner)).state_dict()), path)
    with pytest.raises(CheckpointError, match=f"{weight_format} weights, which are for model '{owner}', not '{other}'"):
        load_weights(build_model(tiny_config(other)), path)


def test_registering_twice_or_reusing_a_format_is_refused():
    record = registry.get(FORMATS[0][0])
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(record)
    with pytest.raises(ValueError, match="already taken"):
        registry.register(registry.ModelRecord("contract_copy", record.from_config, record.batch_keys, record.task,
                                               formats=record.formats))
    assert "contract_copy" not in registry.names()
