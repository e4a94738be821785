"""The official AVSS checkpoints (avss.md §8.3) convert through the ``avsbench`` format and give the official logits.

The state dict is written here from the documented key layout (random tensors, tiny widths: neck C = 16,
head C/2 = 8 → 32 → 71 as 256 → 128 → 32 → 71 officially), not from our model; the reference forward is
a plain transcription of the official AVSS ``Pred_endecoder.forward`` (flag multiplications, the
``reshape(-1, 5, ...)`` TPAVI groups with the N×N affinity, bias-free ``align_channel``, in-place ReLUs).
"""
import pytest
import timm
import torch
import torch.nn.functional as F

from avseg.cli.convert_checkpoint import main as convert_main
from avseg.config import load_config
from avseg.errors import CheckpointError
from avseg.models import build_model, load_model, load_weights
from avseg.models.convert import convert_avsbench_state_dict
from avseg.models.factory import build_model_for_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES, CHANNELS, AUDIO = 71, 16, 128
TINY = ["model.backbone.name=resnet18", "model.audio.name=small", "model.audio.freeze=false",
        f"model.neck_channels={CHANNELS}", "data.image_size=64"]


def official_avss_layout(backbone_keys, level_channels, channels=CHANNELS, head=(CHANNELS // 2, 32), classes=CLASSES):
    """``{key: shape}`` of an official AVSS ``Pred_endecoder`` (tpavi_stages 0 1 2 3), ResNet variant."""
    shapes = {}
    for key, shape in backbone_keys.items():
        if key.startswith("fc."):
            continue
        for old, new in (("layer3.", "layer3_1."), ("layer4.", "layer4_1.")):
            if key.startswith(old):
                shapes["resnet." + key.replace(old, new.replace("_1", "_2"), 1)] = shape  # the unused branch
                key = key.replace(old, new, 1)
        shapes["resnet." + key] = shape
    for level, in_channels in enumerate(level_channels, start=1):
        for j in range(4):
            shapes[f"conv{level}.conv2d_list.{j}.weight"] = (channels, in_channels, 3, 3)
            shapes[f"conv{level}.conv2d_list.{j}.bias"] = (channels,)
        for unit in (1, 2):
            for conv in (1, 2):
                shapes[f"path{level}.resConfUnit{unit}.conv{conv}.weight"] = (channels, channels, 3, 3)
                shapes[f"path{level}.resConfUnit{unit}.conv{conv}.bias"] = (channels,)
        p = f"tpavi_b{level}."
        shapes[p + "align_channel.weight"] = (channels, AUDIO)  # no bias in AVSS
        shapes[p + "norm_layer.weight"] = shapes[p + "norm_layer.bias"] = (channels,)
        for name in ("g", "theta", "phi"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (channels // 2, channels, 1, 1, 1), (channels // 2,)
        shapes[p + "W_z.0.weight"], shapes[p + "W_z.0.bias"] = (channels, channels // 2, 1, 1, 1), (channels,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[p + "W_z.1." + name] = (channels,)
        shapes[p + "W_z.1.num_batches_tracked"] = ()
    shapes["output_conv.0.weight"], shapes["output_conv.0.bias"] = (head[0], channels, 3, 3), (head[0],)
    shapes["output_conv.2.weight"], shapes["output_conv.2.bias"] = (head[1], head[0], 3, 3), (head[1],)
    shapes["output_conv.4.weight"], shapes["output_conv.4.bias"] = (classes, head[1], 1, 1), (classes,)
    return shapes


def random_official_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    resnet = {k: tuple(v.shape) for k, v in timm.create_model("resnet18").state_dict().items()}
    state = {}
    for key, shape in official_avss_layout(resnet, (64, 128, 256, 512)).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g, dtype=torch.float32) + 0.5
        elif key.split(".")[-2].startswith(("bn", "norm_layer", "1")) and key.endswith("weight"):
            state[key] = torch.rand(shape, generator=g, dtype=torch.float32) + 0.5  # norm scales
        else:
            state[key] = torch.randn(shape, generator=g, dtype=torch.float32) * 0.2
    return state


def official_avss_forward(sd, frames, audio, flag, training):
    """avss/model/ResNet_AVSModel.py forward: frames [B·10, 3, H, W], audio [B·10, 128] (VGGish out), flag [B·10]."""
    bn = lambda x, p: F.batch_norm(x, sd[p + "running_mean"].clone(), sd[p + "running_var"].clone(),
                                   sd[p + "weight"], sd[p + "bias"], training=training)
    resnet = timm.create_model("resnet18", num_classes=0).double()
    resnet.load_state_dict({k[7:].replace("_1.", "."): v for k, v in sd.items()
                            if k.startswith("resnet.") and "_2." not in k})
    resnet.train(training)
    x = resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(frames))))
    levels = []
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        x = layer(x)
        levels.append(x)
    f = flag.view(-1, 1, 1, 1)
    audio = audio * flag.view(-1, 1)  # train.py: audio_feature * vid_temporal_mask_flag
    maps = []
    for i, x in enumerate(levels, start=1):
        out = sum(F.conv2d(x, sd[f"conv{i}.conv2d_list.{j}.weight"], sd[f"conv{i}.conv2d_list.{j}.bias"],
                           padding=d, dilation=d) for j, d in enumerate((3, 6, 12, 18)))
        maps.append(out * f)
    for i in range(4):
        p = f"tpavi_b{i + 1}."
        _, c, h, w = maps[i].shape
        v = maps[i].reshape(-1, 5, c, h, w).permute(0, 2, 1, 3, 4)  # [2B, C, 5, H, W]
        a = F.linear(audio.view(-1, 5, AUDIO), sd[p + "align_channel.weight"])  # bias=False
        a = a.permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, h, w)
        conv = lambda name, t: F.conv3d(t, sd[p + name + ".weight"], sd[p + name + ".bias"])
        n = v.shape[0]
        g_x = conv("g", v).reshape(n, c // 2, -1).permute(0, 2, 1)
        theta = conv("theta", v).reshape(n, c // 2, -1).permute(0, 2, 1)
        phi = conv("phi", a).reshape(n, c // 2, -1)
        affinity = theta @ phi
        y = ((affinity / affinity.shape[-1]) @ g_x).permute(0, 2, 1).reshape(n, c // 2, 5, h, w)
        z = bn(conv("W_z.0", y), p + "W_z.1.") + v
        z = F.layer_norm(z.permute(0, 2, 3, 4, 1), (c,), sd[p + "norm_layer.weight"], sd[p + "norm_layer.bias"])
        maps[i] = z.permute(0, 4, 1, 2, 3).permute(0, 2, 1, 3, 4).reshape(-1, c, h, w) * f

    def rcu(x, p):
        x = F.relu_(x)  # nn.ReLU(inplace=True): the residual adds ReLU(x)
        out = F.conv2d(F.relu(F.conv2d(x, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)),
                       sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
        return out + x

    def fusion(p, *xs):
        out = xs[0]
        if len(xs) == 2:
            out = out + rcu(xs[1], p + "resConfUnit1.")
        return F.interpolate(rcu(out, p + "resConfUnit2."), scale_factor=2, mode="bilinear", align_corners=True)

    x = fusion("path4.", maps[3]) * f
    x = fusion("path3.", x, maps[2]) * f
    x = fusion("path2.", x, maps[1]) * f
    x = fusion("path1.", x, maps[0]) * f
    x = F.interpolate(F.conv2d(x, sd["output_conv.0.weight"], sd["output_conv.0.bias"], padding=1),
                      scale_factor=2, mode="bilinear", align_corners=False)
    x = F.relu(F.conv2d(x, sd["output_conv.2.weight"], sd["output_conv.2.bias"], padding=1))
    return F.conv2d(x, sd["output_conv.4.weight"], sd["output_conv.4.bias"]) * f


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The official layout on disk, converted by tools/convert_checkpoint.py with the AVSS R50 config (tiny parts)."""
    folder = tmp_path_factory.mktemp("avss")
    official = random_official_state_dict()
    torch.save(official, folder / "AVSS_R50.pth")
    cfg = load_config("avsbench/avss_tpavi_r50.yaml", TINY)
    torch.manual_seed(7)
    audio = build_model_for_checkpoint(cfg).audio_encoder  # stands in for VGGish (--vggish)
    torch.save(audio.state_dict(), folder / "vggish.pth")
    out = folder / "out.pth"
    assert convert_main(["--from", "avsbench", "--cfg", "avsbench/avss_tpavi_r50.yaml", "--vggish",
                         str(folder / "vggish.pth"), str(folder / "AVSS_R50.pth"), str(out), *TINY]) == 0
    return official, load_model(out).double()


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_converted_official_avss_weights_give_the_official_logits(converted, training):
    official, model = converted
    model.train(training)
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 10, 3, 64, 64, generator=g, dtype=torch.float64)
    log_mel = torch.randn(2, 10, 1, 96, 64, generator=g, dtype=torch.float64)
    flag = torch.tensor([[1.0] * 5 + [0.0] * 5, [1.0] * 10], dtype=torch.float64)  # v1s padded, v2
    frames[0, 5:] = 0  # padding in normalised space, as the loader writes it
    with torch.no_grad():
        ours = model(frames, log_mel, frame_valid=flag.bool())["logits"].flatten(0, 1)
        audio = model.audio_encoder(log_mel.flatten(0, 1))
        plain = {k: v.double() if v.is_floating_point() else v for k, v in official.items()}  # float32 on disk
        reference = official_avss_forward(plain, frames.flatten(0, 1), audio, flag.flatten(), training)
    assert ours.shape == reference.shape == (20, CLASSES, 64, 64)
    assert torch.allclose(ours, reference, atol=1e-9, rtol=0), (ours - reference).abs().max()
    assert torch.equal(ours[5:10], torch.zeros_like(ours[5:10]))


def test_the_paper_configs_take_the_full_size_official_layout():
    """avss_tpavi_{r50,pvt}.yaml build the shapes of §8.3 (256-channel neck, 128 → 32 → 71 head, no align bias)."""
    for name, backbone in (("avsbench/avss_tpavi_r50.yaml", "resnet50"), ("avsbench/avss_tpavi_pvt.yaml", "pvt_v2_b5")):
        cfg = load_config(name)
        with torch.device("meta"):
            model = build_model_for_checkpoint(cfg)
            reference = timm.create_model(backbone).state_dict()
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("audio_encoder.")}
        if backbone == "resnet50":
            layout = official_avss_layout({k: tuple(v.shape) for k, v in reference.items()}, (256, 512, 1024, 2048),
                                          channels=256, head=(128, 32))
        else:  # the PVT backbone names are checked in tests/test_convert_checkpoint.py; here the rest
            layout = official_avss_layout({}, (64, 128, 320, 512), channels=256, head=(128, 32))
            ours = {k: v for k, v in ours.items() if not k.startswith("backbone.")}
        result = convert_avsbench_state_dict({k: torch.empty(s, device="meta") for k, s in layout.items()})
        assert result.unknown == []
        assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == ours
        assert ours["decoder.output_conv.4.weight"] == (71, 32, 1, 1) and "tpavi.0.align_channel.bias" not in ours


def test_a_binary_model_refuses_avss_weights(tmp_path, converted):
    official, _ = converted
    path = tmp_path / "AVSS.pth"
    torch.save(official, path)
    binary = build_model(load_config(None, TINY + ["model.name=tpavi"]))
    with pytest.raises(CheckpointError, match=r"wrong shape(.|\n)*output_conv\.4"):
        load_weights(binary, path)
