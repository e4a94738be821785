"""ECMVAE: shapes, loss composition, S4 handling, gradients, inference modes, official weights, parity.

Everything runs a ResNet-18 at 64 px with the small audio encoder (a 2×2 latent grid).
"""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from avseg.config import load_config
from avseg.errors import ConfigError
from avseg.losses.segmentation import structure_loss
from avseg.models import build_model, load_weights
from avseg.models.ecmvae import ECMVAE, ECMVAELoss, build_ecmvae, convert_mmvae_avs_state_dict

SIZE = 64
BASE = ["model.name=ecmvae", "model.backbone.name=resnet18", "model.audio.name=small", "model.audio.freeze=false",
        "model.neck_channels=128", "model.seg_loss=structure", f"data.image_size={SIZE}"]


def make_model(*overrides) -> ECMVAE:
    torch.manual_seed(0)
    return build_ecmvae(load_config(None, BASE + list(overrides)))


def make_batch(batch=2, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        frames=torch.randn(batch, frames, 3, SIZE, SIZE, generator=g),
        log_mel=torch.randn(batch, frames, 1, 96, 64, generator=g),
        masks=(torch.rand(batch, frames, 1, SIZE, SIZE, generator=g) > 0.6).float(),
    )


def s4_valid(batch, frames):
    valid = torch.zeros(batch, frames, dtype=torch.bool)
    valid[:, 0] = True
    return valid


# ----------------------------------------------------------------------------- training outputs
def test_training_outputs_shapes_and_loss_composition():
    model = make_model("model.avm_weight=0.5", "model.ecmvae.mi_weight=0.3", "model.ecmvae.diff_weight=0.2",
                       "model.ecmvae.kl_weight=0.05", "model.ecmvae.posterior_seg_weight=0.7")
    batch = make_batch()
    out = model(**batch, mask_valid=s4_valid(2, 3))
    assert out["logits"].shape == (2, 3, 1, SIZE, SIZE)
    assert set(out) == {"logits", "seg_prior", "seg_post", "kl", "diff", "mi", "avm", "loss"}
    assert all(out[k].dim() == 0 and torch.isfinite(out[k]) for k in out if k != "logits")
    expected = (out["seg_prior"] + 0.7 * out["seg_post"] + 0.05 * out["kl"] + 0.2 * out["diff"]
                - 0.3 * out["mi"] + 0.5 * out["avm"])
    assert torch.allclose(out["loss"], expected)
    # the prior segmentation term is the structure loss of the annotated frames only
    ref = structure_loss(out["logits"][:, :1], batch["masks"][:, :1])
    assert torch.allclose(out["seg_prior"], ref)


def test_mi_enters_with_the_sign_that_maximises_the_bound():
    model = make_model("model.ecmvae.mi_weight=0.5")
    out = model(**make_batch(), mask_valid=s4_valid(2, 3))
    heads = [p for n, p in model.mm_vae_model.named_parameters() if n.startswith("ba_lower_bound")]
    grad_loss = torch.autograd.grad(out["loss"], heads, retain_graph=True)
    grad_mi = torch.autograd.grad(out["mi"], heads)
    for g_loss, g_mi in zip(grad_loss, grad_mi):
        assert torch.allclose(g_loss, -0.5 * g_mi, atol=1e-7)  # descending the loss ascends the log-likelihood
    assert any(g.abs().sum() > 0 for g in grad_mi)


def test_gradients_reach_every_encoder():
    model = make_model()
    with torch.no_grad():  # TPAVI's BN starts at zero, which would block gradients into θ, φ, g
        for block in model.fusion_modules:
            block.W_z[1].weight.fill_(0.5)
    out = model(**make_batch(), mask_valid=s4_valid(2, 3))
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    for name in ("enc_vs", "enc_as", "enc_vac", "enc_vs_y", "enc_as_y", "enc_vac_y", "sc1_prior", "sc2_prior",
                 "sc1_posterior", "sc2_posterior", "noise_model_prior", "noise_model_post"):
        module = getattr(model.mm_vae_model, name)
        assert sum(p.grad.abs().sum() for p in module.parameters()) > 0, name
    for name in ("backbone", "audio_encoder", "neck_prior", "neck_post", "fusion_modules", "decoder_prior", "decoder_post"):
        assert sum(p.grad.abs().sum() for p in getattr(model, name).parameters()) > 0, name


def test_s4_losses_ignore_unannotated_frames_and_posterior_sees_only_annotated_ones():
    model = make_model()
    batch = make_batch()
    valid = torch.tensor([[True, False, False], [True, False, True]])  # clips with 1 and 2 annotated frames
    torch.manual_seed(1)
    first = model(**batch, mask_valid=valid)
    changed = dict(batch, masks=batch["masks"].clone())
    changed["masks"][0, 1:] = 1 - changed["masks"][0, 1:]
    changed["masks"][1, 1] = 1 - changed["masks"][1, 1]
    torch.manual_seed(1)
    second = model(**changed, mask_valid=valid)
    for key in ("seg_prior", "seg_post", "kl", "diff", "mi", "loss"):
        assert torch.equal(first[key], second[key]), key
    changed["masks"][1, 2] = 1 - changed["masks"][1, 2]  # an annotated frame: the losses must move
    torch.manual_seed(1)
    third = model(**changed, mask_valid=valid)
    assert not torch.equal(first["seg_prior"], third["seg_prior"])
    with pytest.raises(ValueError, match="no frame"):
        model(**batch, mask_valid=torch.zeros(2, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- inference
def test_deterministic_inference_repeats_exactly_and_sampling_follows_the_seed():
    model = make_model().eval()
    batch = make_batch()
    inputs = dict(frames=batch["frames"], log_mel=batch["log_mel"])
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(**inputs)["logits"]
        torch.manual_seed(2)
        again = model(**inputs)["logits"]
        assert torch.equal(first, again)
        model.sample_at_test = True
        torch.manual_seed(1)
        sample_1 = model(**inputs)["logits"]
        torch.manual_seed(1)
        sample_1_again = model(**inputs)["logits"]
        torch.manual_seed(2)
        sample_2 = model(**inputs)["logits"]
    assert first.shape == (2, 3, 1, SIZE, SIZE)
    assert torch.equal(sample_1, sample_1_again)
    assert not torch.allclose(sample_1, sample_2)
    assert not torch.allclose(sample_1, first)


def test_multi_sample_inference_averages_probabilities_and_returns_uncertainty():
    model = make_model("model.ecmvae.num_samples=3").eval()
    batch = make_batch(batch=1, frames=2)
    inputs = dict(frames=batch["frames"], log_mel=batch["log_mel"])
    n, d = 2, 16
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(**inputs)
        assert out["uncertainty"].shape == out["logits"].shape == (1, 2, 1, SIZE, SIZE)
        assert (out["uncertainty"] >= 0).all() and out["uncertainty"].max() > 0
        noise = {k: torch.randn(3, n, d) for k in ("vs", "as", "c")}
        averaged = model(**inputs, latent_noise=noise)
        model.num_samples = 1
        singles = [model(**inputs, latent_noise={k: v[i] for k, v in noise.items()})["logits"] for i in range(3)]
        zero = model(**inputs, latent_noise={k: torch.zeros(n, d) for k in ("vs", "as", "c")})["logits"]
        mean = model(**inputs)["logits"]
    probs = torch.stack([torch.sigmoid(s) for s in singles])
    assert torch.allclose(torch.sigmoid(averaged["logits"]), probs.mean(0), atol=1e-5)
    assert torch.allclose(averaged["uncertainty"], probs.std(0), atol=1e-6)
    assert torch.allclose(zero, mean, atol=1e-6)  # zero noise is the deterministic (mean) prediction


# ----------------------------------------------------------------------------- ablations and config
def test_ablations_build_the_expected_parts():
    batch = make_batch(batch=2, frames=2)
    no_latent = make_model("model.ecmvae.latent_path=false")
    assert not hasattr(no_latent, "mm_vae_model") and not hasattr(no_latent, "decoder_post")
    assert set(no_latent(**batch)) == {"logits", "seg_prior", "loss"}
    shared = make_model("model.ecmvae.shared_only=true")
    keys = shared.state_dict()
    assert not any(".enc_vs." in k or "ba_lower_bound" in k for k in keys)
    assert keys["mm_vae_model.noise_model_prior.noise_conv.weight"].shape == (128, 128 + 16, 1, 1)
    out = shared(**batch)
    assert set(out) == {"logits", "seg_prior", "seg_post", "kl", "loss"}
    shared.loss = dataclasses.replace(shared.loss, shared_divergence="js_mc")
    out = shared(**batch)
    assert torch.isfinite(out["kl"]) and 0 < out["kl"] < math.log(2)


def test_synthetic_configs_build_and_bad_values_fail_clearly():
    for name in ("s4_ecmvae", "ms3_ecmvae", "s4_ecmvae_no_mi", "ms3_ecmvae_no_orth", "s4_ecmvae_no_latent",
                 "ms3_ecmvae_shared_only"):
        cfg = load_config(f"synthetic/{name}.yaml")
        assert cfg.model.name == "ecmvae"
    assert load_config("synthetic/ms3_ecmvae.yaml").model.avm_weight == 0.5
    assert load_config("synthetic/s4_ecmvae_no_mi.yaml").model.ecmvae.mi_weight == 0.0
    with pytest.raises(ConfigError, match="shared_divergence"):
        make_model("model.ecmvae.shared_divergence=mmd")
    with pytest.raises(ConfigError, match="neck_channels"):
        make_model("model.neck_channels=64")
    with pytest.raises(ConfigError, match="image_size"):
        make_model("data.image_size=80")


# ----------------------------------------------------------------------------- official weights
def official_state_dict(seed=0, channels=128, latent=16, audio=128, mi=6, base=16, grid=SIZE // 32):
    """A random MMVAE-AVS ``AVSMMVAE`` state dict (ResNet-18 encoder) with the documented names and shapes."""
    import torchvision

    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(fan_in))

    sd = {}

    def norm(prefix, n):
        sd.update({f"{prefix}.weight": 1 + 0.1 * rand(n, scale=1), f"{prefix}.bias": 0.1 * rand(n, scale=1),
                   f"{prefix}.running_mean": 0.1 * rand(n, scale=1), f"{prefix}.running_var": 0.5 + torch.rand(n, generator=g),
                   f"{prefix}.num_batches_tracked": torch.tensor(10)})

    def linear(prefix, n_out, n_in):
        sd.update({f"{prefix}.weight": rand(n_out, n_in), f"{prefix}.bias": 0.1 * rand(n_out, scale=1)})

    def conv(prefix, n_out, n_in, k, bias=True, dims=2):
        sd[f"{prefix}.weight"] = rand(n_out, n_in, *([k] * dims))
        if bias:
            sd[f"{prefix}.bias"] = 0.1 * rand(n_out, scale=1)

    torch.manual_seed(seed)
    resnet = torchvision.models.resnet18()
    for key, value in resnet.state_dict().items():
        if not key.startswith("fc."):
            sd[f"encoder.{key}"] = (0.5 + torch.rand(value.shape, generator=g)) if "running_var" in key else (
                value.clone() if "num_batches" in key else value + 0.05 * torch.randn(value.shape, generator=g))
    for neck in ("neck_prior", "neck_post"):
        for level, c_in in enumerate((64, 128, 256, 512)):
            for index, (n_in, k) in enumerate(((c_in, 1), (channels, 3), (channels, 3))):
                conv(f"{neck}.conv_list.{level}.reduce.{index}.conv", channels, n_in, k, bias=False)
                norm(f"{neck}.conv_list.{level}.reduce.{index}.norm", channels)
    linear("audio_neck", channels, audio)
    for decoder in ("decoder_prior", "decoder_post"):
        for block in range(1, 5):
            for unit in (1, 2):
                for layer in (1, 2):
                    prefix = f"{decoder}.fusion_block_{block}.resConfUnit{unit}.ConvBNReLU{layer}"
                    conv(f"{prefix}.conv", channels, channels, 3, bias=False)
                    norm(f"{prefix}.norm", channels)
        conv(f"{decoder}.head_up_2.output_conv.0", channels // 2, channels, 3)
        conv(f"{decoder}.head_up_2.output_conv.2", channels // 4, channels // 2, 3)
        conv(f"{decoder}.head_up_2.output_conv.4", 1, channels // 4, 1)
    for index in range(4):
        prefix = f"fusion_modules.{index}"
        for name in ("g", "theta", "phi"):
            conv(f"{prefix}.{name}", channels // 2, channels, 1, dims=3)
        conv(f"{prefix}.W_z.0", channels, channels // 2, 1, dims=3)
        norm(f"{prefix}.W_z.1", channels)
        sd[f"{prefix}.norm_layer.weight"] = 1 + 0.1 * rand(channels, scale=1)
        sd[f"{prefix}.norm_layer.bias"] = 0.1 * rand(channels, scale=1)
    vae = "mm_vae_model"
    for name, c_in in (("enc_vs", 3), ("enc_vs_y", 4)):
        widths = [base * m for m in (1, 2, 4, 8, 8)]
        for i, (n_in, n_out) in enumerate(zip([c_in] + widths[:-1], widths), start=1):
            conv(f"{vae}.{name}.layer{i}", n_out, n_in, 4)
            norm(f"{vae}.{name}.bn{i}", n_out)
        linear(f"{vae}.{name}.fc1", latent, widths[-1] * grid * grid)
        linear(f"{vae}.{name}.fc2", latent, widths[-1] * grid * grid)
    linear(f"{vae}.enc_as.fc1", latent, audio)
    linear(f"{vae}.enc_as.fc2", latent, audio)
    for name, c_in in (("enc_vac", 3), ("enc_as_y", 1), ("enc_vac_y", 4)):
        widths = [base * m for m in (1, 2, 4, 4, 4)]
        for i, (n_in, n_out) in enumerate(zip([c_in] + widths[:-1], widths), start=1):
            conv(f"{vae}.{name}.layer{i}", n_out, n_in, 4)
            norm(f"{vae}.{name}.bn{i}", n_out)
        linear(f"{vae}.{name}.fc_gt_vector", audio // 4, widths[-1] * grid * grid)
        linear(f"{vae}.{name}.fc1", latent, audio + audio // 4)
        linear(f"{vae}.{name}.fc2", latent, audio + audio // 4)
    for name in ("sc1_prior", "sc2_prior", "sc1_posterior", "sc2_posterior"):
        linear(f"{vae}.{name}", latent, 2 * latent)
    for side in ("prior", "post"):
        conv(f"{vae}.noise_model_{side}.noise_conv", channels, channels + 2 * latent, 1)
        for head in ("mu", "logvar", "sc_a"):
            linear(f"{vae}.ba_lower_bound_{head}_{side}", mi, latent)
    return sd


def test_official_layout_converts_and_loads_without_missing_inference_keys(tmp_path):
    official = official_state_dict()
    model = make_model()
    conversion = convert_mmvae_avs_state_dict({f"module.{k}": v for k, v in official.items()})
    converted, dropped = conversion.state_dict, conversion.dropped
    assert sorted(dropped) == sorted(k for k in official if k.startswith("audio_neck.") or ".fusion_block_1.resConfUnit1." in k)
    result = model.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith("audio_encoder.") for k in result.missing_keys)  # VGGish is not in the release
    # through the factory, as tools/convert_checkpoint.py --from mmvae-avs and --load do
    path = tmp_path / "mmvae_avs.pth"
    torch.save(official, path)
    report = load_weights(make_model(), path, expected_format="mmvae-avs")
    assert report.source_format == "mmvae-avs" and not report.missing and not report.unexpected
    assert len(report.dropped_unused) == len(dropped)


# ----------------------------------------------------------------------------- parity with a straightforward reference
def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)


def _tower(x, sd, p):
    for i in range(1, 6):
        x = F.leaky_relu(_bn(F.conv2d(x, sd[f"{p}.layer{i}.weight"], sd[f"{p}.layer{i}.bias"], stride=2, padding=1), sd, f"{p}.bn{i}"), 0.01)
    return x.reshape(x.shape[0], -1)


def _lin(x, sd, p):
    return F.linear(x, sd[f"{p}.weight"], sd[f"{p}.bias"])


def _tpavi_official(visual, audio, sd, p, frames):
    """The released TPAVI, N×N affinity: visual [B·T, C, H, W], audio [B·T, C]."""
    bt, c, h, w = visual.shape
    b = bt // frames
    v = visual.reshape(b, frames, c, h, w).permute(0, 2, 1, 3, 4)
    a = audio.reshape(b, frames, c).permute(0, 2, 1)
    a = a / (a.pow(2).sum(1, keepdim=True) + 1e-6).sqrt()
    v = v / (v.pow(2).sum(1, keepdim=True) + 1e-6).sqrt()
    a_map = a[..., None, None].repeat(1, 1, 1, h, w)
    g_x = F.conv3d(v, sd[f"{p}.g.weight"], sd[f"{p}.g.bias"]).reshape(b, c // 2, -1).permute(0, 2, 1)
    theta = F.conv3d(v, sd[f"{p}.theta.weight"], sd[f"{p}.theta.bias"]).reshape(b, c // 2, -1)
    phi = F.conv3d(a_map, sd[f"{p}.phi.weight"], sd[f"{p}.phi.bias"]).reshape(b, c // 2, -1)
    f = theta.permute(0, 2, 1) @ phi
    y = (f / f.shape[-1]) @ g_x
    y = y.permute(0, 2, 1).reshape(b, c // 2, frames, h, w)
    w_y = _bn(F.conv3d(y, sd[f"{p}.W_z.0.weight"], sd[f"{p}.W_z.0.bias"]), sd, f"{p}.W_z.1")
    z = F.layer_norm((w_y + v).permute(0, 2, 3, 4, 1), (c,), sd[f"{p}.norm_layer.weight"], sd[f"{p}.norm_layer.bias"])
    return z.permute(0, 1, 4, 2, 3).reshape(bt, c, h, w)


def _up2(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def _decoder_official(maps, sd, p):
    def cbr(x, q):
        return F.relu(_bn(F.conv2d(x, sd[f"{q}.conv.weight"], padding=1), sd, f"{q}.norm"))

    def rcu(x, q):
        return x + cbr(cbr(x, f"{q}.ConvBNReLU1"), f"{q}.ConvBNReLU2")

    feats = maps[::-1]
    x = _up2(rcu(feats[0], f"{p}.fusion_block_1.resConfUnit2"))
    for block, skip in zip((2, 3, 4), feats[1:]):
        x = x + rcu(skip, f"{p}.fusion_block_{block}.resConfUnit1")
        x = _up2(rcu(x, f"{p}.fusion_block_{block}.resConfUnit2"))
    h = f"{p}.head_up_2.output_conv"
    x = _up2(F.conv2d(x, sd[f"{h}.0.weight"], sd[f"{h}.0.bias"], padding=1))
    x = F.relu(F.conv2d(x, sd[f"{h}.2.weight"], sd[f"{h}.2.bias"], padding=1))
    return F.conv2d(x, sd[f"{h}.4.weight"], sd[f"{h}.4.bias"])


def test_prior_path_equals_a_straightforward_reference_with_the_same_weights_and_noise():
    import torchvision

    official = {k: v.double() if v.is_floating_point() else v for k, v in official_state_dict(seed=3).items()}
    model = make_model()
    model.load_state_dict(convert_mmvae_avs_state_dict(official).state_dict, strict=False)
    model = model.double().eval()
    batch = make_batch(batch=2, frames=2, seed=5)
    frames, log_mel = batch["frames"].double(), batch["log_mel"].double()
    n = 4
    g = torch.Generator().manual_seed(9)
    noise = {k: torch.randn(n, 16, generator=g, dtype=torch.float64) for k in ("vs", "as", "c")}
    with torch.no_grad():
        ours = model(frames, log_mel, latent_noise=noise)["logits"].flatten(0, 1)
        # reference: torchvision ResNet-18 with the release's encoder weights, then the released maths
        resnet = torchvision.models.resnet18().double().eval()
        resnet.load_state_dict({k[len("encoder."):]: v for k, v in official.items() if k.startswith("encoder.")}, strict=False)
        x = frames.flatten(0, 1)
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        feats = []
        for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
            h = layer(h)
            feats.append(h)
        audio = model.audio_encoder(log_mel.flatten(0, 1))
        sd = official
        maps = []
        for level, f in enumerate(feats):
            p = f"neck_prior.conv_list.{level}.reduce"
            f = _bn(F.conv2d(f, sd[f"{p}.0.conv.weight"]), sd, f"{p}.0.norm")
            f = _bn(F.conv2d(f, sd[f"{p}.1.conv.weight"], padding=1), sd, f"{p}.1.norm")
            maps.append(_bn(F.conv2d(f, sd[f"{p}.2.conv.weight"], padding=1), sd, f"{p}.2.norm"))
        vae = "mm_vae_model"
        hidden_vs = _tower(x, sd, f"{vae}.enc_vs")
        mu_vs, lv_vs = _lin(hidden_vs, sd, f"{vae}.enc_vs.fc1"), _lin(hidden_vs, sd, f"{vae}.enc_vs.fc2")
        mu_as, lv_as = _lin(audio, sd, f"{vae}.enc_as.fc1"), _lin(audio, sd, f"{vae}.enc_as.fc2")
        joint = torch.cat([audio, _lin(_tower(x, sd, f"{vae}.enc_vac"), sd, f"{vae}.enc_vac.fc_gt_vector")], 1)
        mu_c, lv_c = _lin(joint, sd, f"{vae}.enc_vac.fc1"), _lin(joint, sd, f"{vae}.enc_vac.fc2")
        z_vs = mu_vs + noise["vs"] * torch.exp(0.5 * lv_vs)
        z_as = mu_as + noise["as"] * torch.exp(0.5 * lv_as)
        z_c = mu_c + noise["c"] * torch.exp(0.5 * lv_c)
        s_v = _lin(torch.cat([z_vs, z_c], 1), sd, f"{vae}.sc1_prior")
        s_a = _lin(torch.cat([z_as, z_c], 1), sd, f"{vae}.sc2_prior")
        hw = maps[3].shape[-2:]
        tiled = [s[:, :, None, None].repeat(1, 1, *hw) for s in (s_v, s_a)]
        maps[3] = F.conv2d(torch.cat([maps[3], *tiled], 1), sd[f"{vae}.noise_model_prior.noise_conv.weight"],
                           sd[f"{vae}.noise_model_prior.noise_conv.bias"])
        fused = [_tpavi_official(m, audio, sd, f"fusion_modules.{i}", frames=2) for i, m in enumerate(maps)]
        reference = _decoder_official(fused, sd, "decoder_prior")
    assert reference.shape == ours.shape == (n, 1, SIZE, SIZE)
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-9)


def test_build_model_dispatches_to_ecmvae():
    cfg = load_config(None, BASE)
    model = build_model(cfg)
    assert isinstance(model, ECMVAE) and model.batch_keys == ("frames", "log_mel", "masks", "mask_valid")


def test_modules_name_their_arguments_and_the_builder_names_config_keys():
    with pytest.raises(ValueError, match="^kl_form: unknown value 'exact'"):
        ECMVAELoss(kl_form="exact")
    parts = make_model()
    with pytest.raises(ValueError, match="^image_size: ECMVAE needs a multiple of 32, got 80"):
        ECMVAE(parts.backbone, parts.audio_encoder, image_size=80)
    with pytest.raises(ValueError, match="^avm_weight: the AV-map loss needs TPAVI fusion"):
        ECMVAE(parts.backbone, parts.audio_encoder, image_size=64, fusion=False, loss=ECMVAELoss(avm_weight=0.5))
    with pytest.raises(ConfigError, match="^key 'data.image_size': ECMVAE needs a multiple of 32, got 80"):
        make_model("data.image_size=80")
    with pytest.raises(ConfigError, match="^key 'model.avm_weight': the AV-map loss needs TPAVI fusion"):
        make_model("model.fusion=false", "model.avm_weight=0.5")
