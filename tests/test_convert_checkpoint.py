"""Official AVSBench state dicts load into our model and give the official outputs; avseg checkpoints round-trip.

The official key layout (avsbench_ecmvae.md §3.1) is built here from the documented names: our model's
tensors renamed to ``resnet.*`` / ``encoder_backbone.*``, ``conv{i}.conv2d_list.{j}``, ``tpavi_b{i}``,
``path{i}``, ``output_conv``, plus the tensors the official model carries but never uses.
"""
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from avseg.checkpoint import save_checkpoint
from avseg.cli.convert_checkpoint import main as convert_main
from avseg.config import load_config
from avseg.errors import CheckpointError
from avseg.models import build_model, load_model, load_weights

SMALL = ["model.name=tpavi", "model.audio.name=small", "model.audio.freeze=false", "model.neck_channels=16"]


def make_model(backbone, seed=0):
    torch.manual_seed(seed)
    model = build_model(load_config(None, SMALL + [f"model.backbone.name={backbone}"]))
    for module in model.modules():  # non-trivial BN statistics and affines
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def pvt_original_name(key):
    """timm features_only PVTv2 names -> the original PVTv2 release names."""
    key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
    key = re.sub(r"^stages_(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
    key = re.sub(r"^stages_(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", key)
    key = re.sub(r"^stages_(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)
    return key.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")


def official_state_dict(model):
    """Our weights under the official ``Pred_endecoder`` names, with its unused extra tensors."""
    official = {}
    for key, value in model.state_dict().items():
        if key.startswith("audio_encoder."):
            continue  # VGGish is not part of the official checkpoints
        if key.startswith("backbone.body."):
            inner = key[len("backbone.body."):]
            if model.backbone.name.startswith("pvt"):
                official["encoder_backbone." + pvt_original_name(inner)] = value
                continue
            inner = re.sub(r"^layer([34])\.", r"layer\1_1.", inner)
            official["resnet." + inner] = value
            if re.match(r"^layer[34]_1\.", inner):  # the unused second branch
                official["resnet." + inner.replace("_1.", "_2.", 1)] = torch.randn_like(value.float()).to(value.dtype)
            continue
        key = re.sub(r"^neck\.(\d)\.convs\.", lambda m: f"conv{int(m.group(1)) + 1}.conv2d_list.", key)
        key = re.sub(r"^tpavi\.(\d)\.", lambda m: f"tpavi_b{int(m.group(1)) + 1}.", key)
        official[key.replace("decoder.", "", 1)] = value
    channels = model.decoder.path4.resConfUnit2.conv1.weight.shape[0]
    for conv in ("conv1", "conv2"):  # present in the official path4, never called
        official[f"path4.resConfUnit1.{conv}.weight"] = torch.randn(channels, channels, 3, 3)
        official[f"path4.resConfUnit1.{conv}.bias"] = torch.randn(channels)
    return official


def official_forward(sd, backbone_name, frames, audio, num_frames):
    """The official ``Pred_endecoder.forward`` on an official state dict, written out (N×N TPAVI, in-place ReLUs).

    frames [B·T, 3, H, W]; audio [B·T, 128] (VGGish output). Returns logits [B·T, 1, H, W].
    """
    prefix = "encoder_backbone." if backbone_name.startswith("pvt") else "resnet."
    backbone = timm.create_model(backbone_name, num_classes=0).double().eval()
    if prefix == "resnet.":  # the official B2_ResNet is a torchvision-layout ResNet
        weights = {k[7:].replace("layer3_1", "layer3").replace("layer4_1", "layer4"): v for k, v in sd.items()
                   if k.startswith(prefix) and "_2." not in k}
        backbone.load_state_dict(weights)
        x = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(frames))))
        levels = []
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            x = layer(x)
            levels.append(x)
    else:
        weights = timm.models.pvt_v2.checkpoint_filter_fn({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, None)
        backbone.load_state_dict(weights)
        levels = backbone.forward_intermediates(frames, intermediates_only=True)
    maps = []
    for i, x in enumerate(levels, start=1):  # Classifier_Module: sum of dilated convs
        out = 0
        for j, d in enumerate((3, 6, 12, 18)):
            out = out + F.conv2d(x, sd[f"conv{i}.conv2d_list.{j}.weight"], sd[f"conv{i}.conv2d_list.{j}.bias"], padding=d, dilation=d)
        maps.append(out)
    for i in range(4):  # TPAVI, mode 'dot', eval-mode BN
        p = f"tpavi_b{i + 1}."
        bt, c, h, w = maps[i].shape
        b = bt // num_frames
        v = maps[i].reshape(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4)
        a = F.linear(audio.reshape(b, num_frames, -1), sd[p + "align_channel.weight"], sd[p + "align_channel.bias"])
        a = a.permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, h, w)
        conv = lambda name, t: F.conv3d(t, sd[p + name + ".weight"], sd[p + name + ".bias"])
        g = conv("g", v).reshape(b, c // 2, -1).permute(0, 2, 1)
        theta = conv("theta", v).reshape(b, c // 2, -1).permute(0, 2, 1)
        phi = conv("phi", a).reshape(b, c // 2, -1)
        f = theta @ phi
        y = (f / f.shape[-1]) @ g
        y = y.permute(0, 2, 1).reshape(b, c // 2, num_frames, h, w)
        wy = F.batch_norm(conv("W_z.0", y), sd[p + "W_z.1.running_mean"], sd[p + "W_z.1.running_var"],
                          sd[p + "W_z.1.weight"], sd[p + "W_z.1.bias"], training=False)
        z = F.layer_norm((wy + v).permute(0, 2, 3, 4, 1), (c,), sd[p + "norm_layer.weight"], sd[p + "norm_layer.bias"])
        maps[i] = z.permute(0, 4, 1, 2, 3).permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)

    def rcu(x, p):
        x = F.relu_(x)  # nn.ReLU(inplace=True) rewrites the input: the residual adds ReLU(x)
        out = F.conv2d(x, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
        out = F.conv2d(F.relu(out), sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
        return out + x

    def fusion(p, *xs):
        out = xs[0]
        if len(xs) == 2:
            out = out + rcu(xs[1], p + "resConfUnit1.")
        out = rcu(out, p + "resConfUnit2.")
        return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)

    x = fusion("path4.", maps[3])
    x = fusion("path3.", x, maps[2])
    x = fusion("path2.", x, maps[1])
    x = fusion("path1.", x, maps[0])
    x = F.conv2d(x, sd["output_conv.0.weight"], sd["output_conv.0.bias"], padding=1)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    x = F.relu(F.conv2d(x, sd["output_conv.2.weight"], sd["output_conv.2.bias"], padding=1))
    return F.conv2d(x, sd["output_conv.4.weight"], sd["output_conv.4.bias"])


@pytest.mark.parametrize("backbone,module_prefix", [("resnet18", False), ("pvt_v2_b0", True)])
def test_official_state_dict_converts_and_matches_official_forward(tmp_path, backbone, module_prefix):
    source = make_model(backbone, seed=1)
    official = official_state_dict(source)
    if module_prefix:  # saved from the DataParallel wrapper
        official = {"module." + k: v for k, v in official.items()}
    path = tmp_path / "S4_best.pth"
    torch.save(official, path)

    target = make_model(backbone, seed=2)
    target.audio_encoder.load_state_dict(source.audio_encoder.state_dict())  # what --vggish provides
    report = load_weights(target, path)
    assert report.source_format == "avsbench"
    assert report.missing == [] and report.unexpected == []
    assert report.kept_from_model and all(k.startswith("audio_encoder.") for k in report.kept_from_model)
    dropped_groups = {re.sub(r"^(resnet\.layer[34]_2|path4\.resConfUnit1)\..*", r"\1", k) for k in report.dropped_unused}
    expected_groups = {"path4.resConfUnit1"} | ({"resnet.layer3_2", "resnet.layer4_2"} if backbone == "resnet18" else set())
    assert dropped_groups == expected_groups
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    target = target.double()
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 2, 3, 32, 32, generator=gen, dtype=torch.float64)
    log_mel = torch.randn(2, 2, 1, 96, 64, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ours = target(frames, log_mel)["logits"]
        audio = target.audio_encoder(log_mel.flatten(0, 1))
        plain = {k.removeprefix("module."): v.double() if v.is_floating_point() else v for k, v in official.items()}
        reference = official_forward(plain, backbone, frames.flatten(0, 1), audio, num_frames=2)
    assert torch.allclose(ours.flatten(0, 1), reference, atol=1e-9, rtol=0), (ours.flatten(0, 1) - reference).abs().max()


def test_avseg_checkpoint_round_trip_and_cli(tmp_path):
    source = make_model("resnet18", seed=3)
    cfg = load_config(None, SMALL + ["model.backbone.name=resnet18", "model.backbone.weights=/nonexistent/r18.pth"])
    ckpt = tmp_path / "model.pth"
    save_checkpoint(ckpt, source.state_dict(), cfg, epoch=3)
    loaded = load_model(ckpt)  # the backbone file named in the config is not needed
    assert not loaded.training
    frames, log_mel = torch.randn(1, 2, 3, 64, 64), torch.randn(1, 2, 1, 96, 64)
    with torch.no_grad():
        assert torch.equal(loaded(frames, log_mel)["logits"], source(frames, log_mel)["logits"])
    assert load_weights(make_model("resnet18"), ckpt).source_format == "avseg"

    # tools/convert_checkpoint.py --from avsbench --cfg CFG --vggish AUDIO IN OUT
    official = tmp_path / "official.pth"
    torch.save(official_state_dict(source), official)
    audio = tmp_path / "audio.pth"
    torch.save(source.audio_encoder.state_dict(), audio)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {name: tpavi, backbone: {name: resnet18}, audio: {name: small, freeze: false}, neck_channels: 16}\n")
    out = tmp_path / "converted.pth"
    assert convert_main(["--from", "avsbench", "--cfg", str(cfg_file), "--vggish", str(audio), str(official), str(out)]) == 0
    converted = load_model(out)
    with torch.no_grad():
        assert torch.equal(converted(frames, log_mel)["logits"], source(frames, log_mel)["logits"])
    with pytest.raises(CheckpointError, match="expected mmvae-avs"):
        convert_main(["--from", "mmvae-avs", "--cfg", str(cfg_file), str(official), str(tmp_path / "x.pth")])


def test_bad_weight_files_give_clear_errors(tmp_path):
    model = make_model("resnet18")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(model, tmp_path / "missing.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not an avseg checkpoint, nor an official"):
        load_weights(model, tmp_path / "foreign.pth")
    official = official_state_dict(model)
    official["output_conv.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(official, tmp_path / "wrong_shape.pth")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_weights(model, tmp_path / "wrong_shape.pth")
    official = official_state_dict(model)
    del official["tpavi_b2.theta.weight"]
    torch.save(official, tmp_path / "incomplete.pth")
    with pytest.raises(CheckpointError, match=r"missing.*tpavi\.1\.theta"):
        load_weights(model, tmp_path / "incomplete.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(tmp_path / "garbage.pth")


def test_eval_load_reads_official_weights_without_the_backbone_file(tmp_path, synthetic_s4_root):
    import json

    from avseg.cli.eval import main as eval_main

    official = tmp_path / "S4_best.pth"
    torch.save(official_state_dict(make_model("resnet18", seed=4)), official)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "model: {name: tpavi, backbone: {name: resnet18, weights: /nonexistent/resnet18.pth},"
        " audio: {name: small, freeze: false}, neck_channels: 16}\n"
        f"data: {{root: {synthetic_s4_root}, image_size: 64, num_workers: 0}}\n"
        "eval: {split: test, batch_size: 2}\ndevice: cpu\n"
    )
    out = tmp_path / "eval"
    assert eval_main(["--cfg", str(cfg_file), "--load", str(official), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["results"]["normal"]["metrics"]
    assert 0.0 <= metrics["miou"] <= 1.0
