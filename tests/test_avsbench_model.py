"""The AVSBench model: shapes for any T and batch, gradients, losses against written-out formulas, ablation."""
import copy

import pytest
import torch
import torch.nn.functional as F

from avseg.config import load_config
from avseg.errors import ConfigError
from avseg.models import AVSBenchModel, build_model
from avseg.models.decoders import RefineDecoder

SMALL = [
    "model.name=tpavi",
    "model.backbone.name=resnet18",
    "model.audio.name=small",
    "model.audio.freeze=false",
    "model.neck_channels=32",
]


def small_model(*overrides) -> AVSBenchModel:
    torch.manual_seed(0)
    return build_model(load_config(None, SMALL + list(overrides)))


def clip_batch(batch, frames, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        frames=torch.randn(batch, frames, 3, size, size, generator=gen),
        log_mel=torch.randn(batch, frames, 1, 96, 64, generator=gen),
        masks=(torch.rand(batch, frames, 1, size, size, generator=gen) > 0.6).float(),
        mask_valid=torch.ones(batch, frames, dtype=torch.bool),
    )


@pytest.fixture(scope="module")
def model():
    return small_model("model.avm_weight=0.5")


@pytest.mark.parametrize("batch,frames", [(1, 1), (3, 2), (1, 6)])
def test_any_clip_length_and_batch(model, batch, frames):
    data = clip_batch(batch, frames)
    model.eval()
    with torch.no_grad():
        logits = model(data["frames"], data["log_mel"])["logits"]
    assert logits.shape == (batch, frames, 1, 64, 64)
    model.train()
    out = model(**data)
    assert set(out) == {"logits", "loss_seg", "loss_avm", "loss"}
    assert all(out[k].ndim == 0 and torch.isfinite(out[k]) for k in ("loss_seg", "loss_avm", "loss"))


def test_sizes_not_divisible_by_32_and_batch_independence(model):
    model.eval()
    data = clip_batch(2, 2, size=80)
    with torch.no_grad():
        both = model(data["frames"], data["log_mel"])["logits"]
        first = model(data["frames"][:1], data["log_mel"][:1])["logits"]
    assert both.shape == (2, 2, 1, 80, 80)
    assert torch.allclose(both[:1], first, atol=1e-5)  # clips do not leak into each other


def test_gradients_reach_every_trainable_module(model):
    model = copy.deepcopy(model)
    # Zero-initialised affines (TPAVI W_z BN, timm's last BN of each residual block) block gradients
    # at initialisation by design; give them values so every path is exercised.
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    model.train()
    model(**clip_batch(2, 3))["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, dead
    prefixes = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert prefixes == {"backbone", "audio_encoder", "neck", "tpavi", "decoder"}


def test_frozen_vggish_has_no_gradients_and_stays_in_eval():
    with pytest.warns(UserWarning, match="frozen VGGish"):
        cfg = load_config(None, SMALL[:2] + ["model.neck_channels=16", "model.tpavi_stages=[3]"])
        model = build_model(cfg)
    model.train()
    assert not model.audio_encoder.training
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    model(**clip_batch(1, 2))["loss"].backward()
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    assert list(model.tpavi) == ["3"]
    assert model.tpavi["3"].align_channel.weight.grad is not None


def test_visual_only_ablation():
    model = small_model("model.fusion=false")
    assert model.audio_encoder is None and len(model.tpavi) == 0
    data = clip_batch(2, 2)
    out = model(data["frames"], None, data["masks"], data["mask_valid"])
    assert set(out) == {"logits", "loss_seg", "loss"}
    with pytest.raises(ConfigError, match="avm_weight"):
        small_model("model.fusion=false", "model.avm_weight=0.5")


def test_bce_only_on_annotated_frames(model):
    model = copy.deepcopy(model)
    model.avm_weight = 0.0
    model.train()
    data = clip_batch(2, 3)
    data["mask_valid"] = torch.zeros(2, 3, dtype=torch.bool)
    data["mask_valid"][:, 0] = True  # S4 training: first frame only
    torch.manual_seed(5)
    out = model(**data)
    probs = torch.sigmoid(out["logits"][:, 0])  # official: sigmoid then nn.BCELoss on frames 0, T, 2T, ...
    expected = F.binary_cross_entropy(probs, data["masks"][:, 0])
    assert torch.allclose(out["loss_seg"], expected, atol=1e-5)
    assert torch.allclose(out["loss"], out["loss_seg"])  # S4 as released: no AV-map term
    # Unannotated frames do not matter.
    data["masks"][:, 1:] = 1 - data["masks"][:, 1:]
    model.eval()
    with torch.no_grad():
        a = model(**data)["loss_seg"]
        data["masks"][:, 1:] = 0
        b = model(**data)["loss_seg"]
    assert torch.allclose(a, b)
    data["mask_valid"][:] = False
    with pytest.raises(ValueError, match="no frame"):
        model(**data)


def test_avm_loss_matches_written_out_formula(model):
    """MS3: L = BCE + 0.5 · (1/4) Σ_i Σ_frames KL(softmax(Ã_i) ‖ softmax(mean(ReLU(Z_i) ⊙ σ(pool(logits)))))."""
    model.eval()
    data = clip_batch(2, 3)
    captured = {}

    def keep(stage):
        def hook(module, inputs, output):
            captured[stage] = output
        return hook

    handles = [model.tpavi[str(s)].register_forward_hook(keep(s)) for s in range(4)]
    with torch.no_grad():
        out = model(**data)
    for handle in handles:
        handle.remove()
    logits = out["logits"].flatten(0, 1)
    total = 0.0
    for stage in range(4):
        fused, audio = captured[stage]
        fused = F.relu(fused.flatten(0, 1))  # the official decoder's in-place ReLU
        audio = audio.reshape(-1, audio.shape[-1])
        h, w = fused.shape[-2:]
        mask = torch.sigmoid(F.adaptive_avg_pool2d(logits, (h, w)))
        v = (fused * mask).mean(-1).mean(-1)
        p_a, p_v = audio.softmax(-1), v.softmax(-1)
        total = total + (p_a * (p_a.log() - p_v.log())).sum()
    expected_avm = total / 4
    expected_bce = F.binary_cross_entropy(torch.sigmoid(logits), data["masks"].flatten(0, 1))
    assert torch.allclose(out["loss_avm"], expected_avm, rtol=1e-4)
    assert torch.allclose(out["loss"], expected_bce + 0.5 * expected_avm, rtol=1e-4)


def test_structure_loss_option_matches_formula(model):
    model = copy.deepcopy(model)
    model.seg_loss, model.avm_weight = "structure", 0.0
    model.eval()
    data = clip_batch(2, 2)
    with torch.no_grad():
        out = model(**data)
    z, y = out["logits"].flatten(0, 1), data["masks"].flatten(0, 1)
    weight = 1 + 5 * torch.abs(F.avg_pool2d(y, 31, 1, 15) - y)
    bce = F.binary_cross_entropy_with_logits(z, 0.999 * y + 0.0005)  # released: mean first, weights cancel
    p = torch.sigmoid(z)
    inter, union = (p * y * weight).sum((2, 3)), ((p + y) * weight).sum((2, 3))
    expected = (bce + 1 - (inter + 1) / (union - inter + 1)).mean()
    assert torch.allclose(out["loss_seg"], expected, atol=1e-6)


def test_decoder_styles_key_names():
    avsbench = set(RefineDecoder(32, style="avsbench").state_dict())
    assert "path1.resConfUnit1.conv1.weight" in avsbench and "output_conv.4.bias" in avsbench
    assert "path4.resConfUnit1.conv1.weight" not in avsbench  # never called by the official forward
    ecmvae = RefineDecoder(32, style="ecmvae")
    keys = set(ecmvae.state_dict())
    assert "fusion_block_4.resConfUnit1.ConvBNReLU2.norm.running_var" in keys
    assert "fusion_block_1.resConfUnit2.ConvBNReLU1.conv.weight" in keys
    assert "head_up_2.output_conv.2.weight" in keys and "fusion_block_1.resConfUnit1.ConvBNReLU1.conv.weight" not in keys
    assert ecmvae.head_up_2.output_conv[0].out_channels == 16 and ecmvae.head_up_2.output_conv[2].out_channels == 8
    maps = [torch.randn(2, 32, 16 // 2**i, 16 // 2**i) for i in range(4)]
    assert ecmvae(maps).shape == (2, 1, 64, 64)


def test_config_errors():
    with pytest.raises(ConfigError, match="tpavi_stages"):
        small_model("model.tpavi_stages=[4]")
    with pytest.raises(ConfigError, match="backbone"):
        small_model("model.backbone.name=vgg16")
    with pytest.raises(ConfigError, match="audio"):
        small_model("model.audio.name=wav2vec")
