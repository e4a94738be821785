"""AVSS (71 classes) in the TPAVI model and ECMVAE: shapes, padded frames, the 5-frame TPAVI groups, the losses.

The official AVSS behaviour (avss.md §5-§6): padded frames are multiplied to zero everywhere (exactly
zero logits), TPAVI runs over independent consecutive 5-frame groups, the loss is the masked per-frame
cross-entropy plus λ·AV-map term over the annotated frames.
"""
import pytest
import torch
import torch.nn.functional as F

from avseg.config import load_config
from avseg.errors import ConfigError
from avseg.losses import semantic_avm_loss, semantic_ce_loss
from avseg.models import build_model, registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64
PARTS = ["model.backbone.name=resnet18", "model.audio.name=small", "model.audio.freeze=false", f"data.image_size={SIZE}"]
TPAVI_AVSS = ["model.name=tpavi", "model.neck_channels=16", "model.num_classes=71", "model.tpavi_group_size=5",
              "model.audio_align_bias=false", "model.avm_weight=0.5"]
ECMVAE_AVSS = ["model.name=ecmvae", "model.neck_channels=128", "model.num_classes=71", "model.avm_weight=0.5"]
V1S_V2 = torch.tensor([[True] * 5 + [False] * 5, [True] * 10])  # a padded v1s clip and a v2 clip


def make(*overrides, seed=0):
    """A tiny model whose TPAVI blocks are not the identity they are at initialisation (W_z BN affine = 0)."""
    torch.manual_seed(seed)
    model = build_model(load_config(None, PARTS + list(overrides)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    return model


def clips(batch=2, frames=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, 3, SIZE, SIZE, generator=g), torch.randn(batch, frames, 1, 96, 64, generator=g),
            torch.randint(0, 71, (batch, frames, SIZE, SIZE), generator=g))


@pytest.mark.parametrize("overrides", [TPAVI_AVSS, ECMVAE_AVSS], ids=["tpavi", "ecmvae"])
def test_shapes_batch_keys_and_zero_logits_on_padded_frames(overrides):
    model = make(*overrides)
    frames, log_mel, labels = clips()
    record = registry.record_of(model)
    assert record.batch_keys == model.batch_keys == ("frames", "log_mel", "labels", "frame_valid", "mask_valid")
    mask_valid = V1S_V2.clone()
    mask_valid[0, 1:] = False  # v1s training: only frame 0 annotated
    out = model(frames, log_mel, labels=labels, frame_valid=V1S_V2, mask_valid=mask_valid)
    assert out["logits"].shape == (2, 10, 71, SIZE, SIZE)
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    assert torch.equal(out["logits"][0, 5:], torch.zeros_like(out["logits"][0, 5:]))
    assert (out["logits"][0, :5].flatten(1).abs().sum(dim=1) > 0).all()
    out["loss"].backward()
    model.eval()
    with torch.no_grad():
        logits = model(frames, log_mel, frame_valid=V1S_V2)["logits"]
    assert torch.equal(logits[0, 5:], torch.zeros_like(logits[0, 5:]))


@pytest.mark.parametrize("name,channels", [("tpavi", 16), ("ecmvae", 128)])
def test_num_classes_1_is_the_binary_model(name, channels):
    cfg = load_config(None, PARTS + [f"model.name={name}", f"model.neck_channels={channels}"])
    assert registry.record_for(cfg) is registry.get(name)
    assert registry.get(name).batch_keys == ("frames", "log_mel", "masks", "mask_valid")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    frames, log_mel, _ = clips(frames=3)
    with torch.no_grad():
        plain = model(frames, log_mel)["logits"]
        flagged = model(frames, log_mel, frame_valid=torch.ones(2, 3, dtype=torch.bool))["logits"]
    assert plain.shape == (2, 3, 1, SIZE, SIZE) and torch.equal(plain, flagged)
    with pytest.raises(ValueError, match="need a semantic model"):
        model(frames, log_mel, labels=torch.zeros(2, 3, SIZE, SIZE, dtype=torch.long))


def test_tpavi_five_frame_groups_equal_two_five_frame_clips():
    model = make(*TPAVI_AVSS).double().eval()
    frames, log_mel, _ = clips(batch=1)
    frames, log_mel = frames.double(), log_mel.double()
    with torch.no_grad():
        grouped = model(frames, log_mel)["logits"]
        halves = model(frames.reshape(2, 5, *frames.shape[2:]), log_mel.reshape(2, 5, *log_mel.shape[2:]))["logits"]
        model.tpavi_group_size = None  # one 10-frame context: attention crosses frames 4 and 5
        whole = model(frames, log_mel)["logits"]
    assert torch.allclose(grouped.reshape(halves.shape), halves, atol=1e-12, rtol=0)
    assert not torch.allclose(whole, grouped, atol=1e-6)
    model.tpavi_group_size = 5
    with torch.no_grad():  # 7 frames (a short demo video): groups of 5 and 2, the second its own clip
        seven = model(frames[:, :7], log_mel[:, :7])["logits"]
        last_two = model(frames[:, 5:7], log_mel[:, 5:7])["logits"]
    assert torch.allclose(seven[:, :5], grouped[:, :5], atol=1e-12, rtol=0)
    assert torch.allclose(seven[:, 5:], last_two, atol=1e-12, rtol=0)


def test_tpavi_padded_frames_do_not_reach_real_frames_at_evaluation():
    model = make(*TPAVI_AVSS).double().eval()
    frames, log_mel, _ = clips()
    frames, log_mel = frames.double(), log_mel.double()
    changed_frames, changed_mel = frames.clone(), log_mel.clone()
    changed_frames[0, 5:] += 3.0
    changed_mel[0, 5:] -= 2.0
    with torch.no_grad():
        first = model(frames, log_mel, frame_valid=V1S_V2)["logits"]
        second = model(changed_frames, changed_mel, frame_valid=V1S_V2)["logits"]
    assert torch.allclose(first, second, atol=1e-12, rtol=0)


def test_ecmvae_skips_padded_frames_even_in_training():
    """Our ECMVAE computes only the real frames: padded content changes nothing, BatchNorm statistics included."""
    model = make(*ECMVAE_AVSS).train()
    frames, log_mel, labels = clips()
    changed = frames.clone()
    changed[0, 5:] = torch.randn_like(changed[0, 5:]) * 5
    losses = []
    for clip_frames in (frames, changed):
        torch.manual_seed(3)
        losses.append(model(clip_frames, log_mel, labels=labels, frame_valid=V1S_V2, mask_valid=V1S_V2)["loss"])
    assert torch.equal(losses[0], losses[1])
    short = model.eval()
    with torch.no_grad():
        padded = short(frames, log_mel, frame_valid=V1S_V2)["logits"][0, :5]
        alone = short(frames[:1, :5], log_mel[:1, :5])["logits"][0]
    assert torch.allclose(padded, alone, atol=1e-5, rtol=0)  # a padded v1s clip = its 5 real frames


def reference_ce(logits, labels, flags):
    """Σ_t g_t·mean_{h,w} CE_t / Σ_t g_t, frame by frame (avss/loss.py F10_IoU_BCELoss)."""
    total, count = 0.0, 0.0
    for p, y, g in zip(logits.flatten(0, 1), labels.flatten(0, 1), flags.flatten().double()):
        log_p = torch.log_softmax(p.double(), dim=0)
        ce = -log_p.gather(0, y[None]).mean()
        total, count = total + g * ce, count + g
    return total / count


def reference_avm(logits, audio_list, visual_list, flags, background=0):
    """avss/loss.py A_MaskedV_SimmLoss (avg pooling, no threshold, no normalisation, kl_flag), frame by frame."""
    frames = logits.flatten(0, 1).double()
    fg = (frames.softmax(dim=1).argmax(dim=1, keepdim=True) != background).double()
    stage_losses = []
    for audio, visual in zip(audio_list, visual_list):
        visual = visual.double()
        pooled = F.adaptive_avg_pool2d(fg, visual.shape[-2:])
        total, count = 0.0, 0.0
        for a, v, m, g in zip(audio.reshape(-1, audio.shape[-1]).double(), visual, pooled, flags.flatten().double()):
            v_fea = (v * m).mean(dim=(1, 2))
            p, q = a.softmax(dim=0), v_fea.softmax(dim=0)
            total, count = total + g * (p * (p.log() - q.log())).sum(), count + g
        stage_losses.append(total / count)
    return sum(stage_losses) / len(stage_losses)


def test_losses_match_the_official_formulas():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 7, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 3, 16, 16), generator=g)
    flags = torch.tensor([[True, False, False], [True, True, False]])
    assert torch.allclose(semantic_ce_loss(logits, labels, flags), reference_ce(logits, labels, flags), atol=1e-12)
    audio = [torch.randn(2, 3, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    visual = [torch.randn(6, 8, s, s, generator=g, dtype=torch.float64) for s in (8, 4)]
    for background in (0, 6):
        ours = semantic_avm_loss(logits, audio, visual, flags, background_index=background)
        assert torch.allclose(ours, reference_avm(logits, audio, visual, flags, background), atol=1e-12)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.6"):
        semantic_ce_loss(logits, labels + 7, flags)
    with pytest.raises(ValueError, match="no frame as annotated"):
        semantic_ce_loss(logits, labels, torch.zeros(2, 3, dtype=torch.bool))


def test_model_loss_uses_only_annotated_frames():
    model = make(*TPAVI_AVSS)
    frames, log_mel, labels = clips()
    mask_valid = V1S_V2.clone()
    mask_valid[0, 1:] = False
    torch.manual_seed(0)
    out = model(frames, log_mel, labels=labels, frame_valid=V1S_V2, mask_valid=mask_valid)
    assert torch.allclose(out["loss_seg"], reference_ce(out["logits"], labels, mask_valid).float(), atol=1e-5)
    assert torch.allclose(out["loss"], out["loss_seg"] + 0.5 * out["loss_avm"])
    other_labels = labels.clone()
    other_labels[~mask_valid] = (other_labels[~mask_valid] + 1) % 71  # labels of frames that do not count
    again = model(frames, log_mel, labels=other_labels, frame_valid=V1S_V2, mask_valid=mask_valid)
    assert torch.allclose(again["loss"], out["loss"], atol=1e-6)


def test_bad_settings_and_inputs_are_refused():
    model = make(*TPAVI_AVSS)
    frames, log_mel, labels = clips(frames=5)
    with pytest.raises(ValueError, match="train it on labels"):
        model(frames, log_mel, masks=torch.zeros(2, 5, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"frame_valid must be \[B, T\]"):
        model(frames, log_mel, labels=labels, frame_valid=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="model.audio_align_bias"):
        make(*ECMVAE_AVSS, "model.audio_align_bias=false")
    with pytest.raises(ConfigError, match="model.num_classes"):
        make(*TPAVI_AVSS, "model.num_classes=0")
    with pytest.raises(ConfigError, match="model.tpavi_group_size"):
        make(*TPAVI_AVSS, "model.tpavi_group_size=0")


@pytest.mark.parametrize("name", ["avsbench/avss_tpavi_r50.yaml", "avsbench/avss_tpavi_pvt.yaml", "avss.yaml"])
def test_avss_configs_hold_the_official_defaults(name):
    cfg = load_config(name)
    assert (cfg.data.task, cfg.model.num_classes, cfg.model.avm_weight, list(cfg.model.tpavi_stages)) == ("avss", 71, 0.5, [0, 1, 2, 3])
    assert (cfg.train.epochs, cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.amp) == (60, "adam", 1e-4, 4, "off")
    assert registry.record_for(cfg).batch_keys == ("frames", "log_mel", "labels", "frame_valid", "mask_valid")
    if cfg.model.name == "tpavi":
        assert (cfg.model.tpavi_group_size, cfg.model.audio_align_bias, cfg.train.weight_decay) == (5, False, 0.0)
    else:
        assert cfg.model.backbone.name == "pvt_v2_b5"
