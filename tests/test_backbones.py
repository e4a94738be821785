"""Visual backbones: four maps at strides 4/8/16/32, local pretrained files only, clear errors."""
import re

import pytest
import timm
import torch
import torchvision
from omegaconf import OmegaConf

from avseg.errors import CheckpointError, ConfigError
from avseg.models.backbones import VisualBackbone, build_backbone

EXPECTED_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "pvt_v2_b0": (32, 64, 160, 256),
    "pvt_v2_b5": (64, 128, 320, 512),
}


@pytest.mark.parametrize("name", ["resnet18", "pvt_v2_b0"])
def test_small_backbones_forward(name):
    backbone = VisualBackbone(name)
    maps = backbone(torch.randn(2, 3, 64, 96))
    assert backbone.channels == EXPECTED_CHANNELS[name] and backbone.strides == (4, 8, 16, 32)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 96 // s) for c, s in zip(backbone.channels, backbone.strides)]


@pytest.mark.parametrize("name", ["resnet50", "pvt_v2_b5"])
def test_paper_backbones_shapes(name):
    with torch.device("meta"):  # shapes without allocating 25M / 82M parameters
        backbone = VisualBackbone(name)
        maps = backbone(torch.empty(1, 3, 64, 64))
    assert backbone.channels == EXPECTED_CHANNELS[name]
    assert [tuple(m.shape) for m in maps] == [(1, c, 64 // s, 64 // s) for c, s in zip(EXPECTED_CHANNELS[name], (4, 8, 16, 32))]
    if name == "pvt_v2_b5":  # stochastic depth 0.1 as in AVSBench / MMVAE-AVS (linearly increasing per block)
        assert backbone.body.stages_3.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_torchvision_resnet_file(tmp_path):
    reference = torchvision.models.resnet18()
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}  # as in old releases
    torch.save(state, tmp_path / "resnet18-tv.pth")
    backbone = VisualBackbone("resnet18", weights=str(tmp_path / "resnet18-tv.pth")).eval()
    reference.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        assert torch.allclose(backbone(images)[-1], expected, atol=1e-5)


def test_original_pvt_release_layout(tmp_path):
    """whai362/PVT names (patch_embed{i}, block{i}.{j}, norm{i}, mlp.dwconv.dwconv) with a classifier head."""
    full = timm.create_model("pvt_v2_b0")
    original = {}
    for key, value in full.state_dict().items():
        key = key.replace("patch_embed.", "patch_embed1.", 1) if key.startswith("patch_embed.") else key
        key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
        key = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", key)
        key = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)
        original[key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")] = value
    assert "block1.0.mlp.dwconv.dwconv.weight" in original and "head.weight" in original
    torch.save({"model": original}, tmp_path / "pvt_v2_b0.pth")
    backbone = VisualBackbone("pvt_v2_b0", weights=str(tmp_path / "pvt_v2_b0.pth")).eval()
    full.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = full.forward_intermediates(images, intermediates_only=True)
        for ours, ref in zip(backbone(images), expected):
            assert torch.allclose(ours, ref, atol=1e-5)


def test_bad_weight_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        VisualBackbone("resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"not a resnet18 checkpoint(.|\n)*missing(.|\n)*layer1\.0\.\*(.|\n)*shape mismatch: conv1.weight"):
        VisualBackbone("resnet18", weights=str(tmp_path / "partial.pth"))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match=r"unexpected \(not in the model\) \(\d+\): layer1\.2\.\*"):
        VisualBackbone("resnet18", weights=str(tmp_path / "resnet34.pth"))
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot be read"):
        VisualBackbone("resnet18", weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="^name: unknown backbone 'vit_base'"):
        VisualBackbone("vit_base")
    with pytest.raises(ConfigError, match="^key 'model.backbone.name': unknown backbone 'vit_base'"):
        build_backbone(OmegaConf.create({"name": "vit_base", "weights": None}))
