"""TPAVI: the O(N) implementation equals the official N×N formula (avsbench_ecmvae.md §1.6) in float64."""
import pytest
import torch

from avseg.models.tpavi import TPAVI


def direct_tpavi(block: TPAVI, visual: torch.Tensor, audio: torch.Tensor):
    """The official formulation, written out: tiled audio, θᵀφ / N as an N×N matrix, Y = F gᵀ.

    visual [B, T, C, H, W], audio [B, T, A] -> (Z [B, T, C, H, W], audio used [B, T, C]).
    """
    batch, frames, channels, height, width = visual.shape
    n = frames * height * width
    v = visual.permute(0, 2, 1, 3, 4)  # [B, C, T, H, W]
    a = block.align_channel(audio) if block.align_channel is not None else audio
    if block.normalize_inputs:
        v = v / torch.sqrt((v**2).sum(dim=1, keepdim=True) + 1e-6)
        a = a / torch.sqrt((a**2).sum(dim=-1, keepdim=True) + 1e-6)
    tiled = a.permute(0, 2, 1)[..., None, None].repeat(1, 1, 1, height, width)  # [B, C, T, H, W]
    inter = block.inter_channels
    theta = block.theta(v).reshape(batch, inter, n).permute(0, 2, 1)  # [B, N, C']
    phi = block.phi(tiled).reshape(batch, inter, n)  # [B, C', N]
    g = block.g(v).reshape(batch, inter, n).permute(0, 2, 1)  # [B, N, C']
    affinity = theta @ phi / n  # [B, N, N]
    y = (affinity @ g).permute(0, 2, 1).reshape(batch, inter, frames, height, width)
    z = block.W_z(y) + v
    z = block.norm_layer(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
    return z.permute(0, 2, 1, 3, 4), a


def _randomised_pair(channels, audio_channels, normalize):
    torch.manual_seed(1)
    ours = TPAVI(channels, audio_channels=audio_channels, normalize_inputs=normalize).double()
    # The BN affine starts at 0 (block = LayerNorm(V)); make it non-trivial so the attention path counts.
    torch.nn.init.normal_(ours.W_z[1].weight)
    torch.nn.init.normal_(ours.W_z[1].bias)
    reference = TPAVI(channels, audio_channels=audio_channels, normalize_inputs=normalize).double()
    reference.load_state_dict(ours.state_dict())
    return ours, reference


@pytest.mark.parametrize("normalize,audio_channels", [(False, 20), (True, None)], ids=["avsbench", "ecmvae"])
@pytest.mark.parametrize("batch,frames,height,width", [(2, 5, 7, 7), (1, 1, 4, 6), (3, 2, 5, 3), (1, 7, 2, 9)])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_tpavi_equals_direct_formula(normalize, audio_channels, batch, frames, height, width, train):
    channels = 16
    ours, reference = _randomised_pair(channels, audio_channels, normalize)
    ours.train(train)
    reference.train(train)
    if not train:  # non-trivial running statistics
        for block in (ours, reference):
            block.W_z[1].running_mean.uniform_(-1, 1)
            block.W_z[1].running_var.uniform_(0.5, 2)
        reference.W_z[1].load_state_dict(ours.W_z[1].state_dict())
    visual = torch.randn(batch, frames, channels, height, width, dtype=torch.float64) * 3
    audio = torch.randn(batch, frames, audio_channels or channels, dtype=torch.float64)
    z, used_audio = ours(visual, audio)
    z_ref, audio_ref = direct_tpavi(reference, visual, audio)
    assert z.shape == (batch, frames, channels, height, width)
    assert used_audio.shape == (batch, frames, channels)
    assert torch.allclose(z, z_ref, atol=1e-10, rtol=0), (z - z_ref).abs().max()
    assert torch.allclose(used_audio, audio_ref, atol=1e-12, rtol=0)
    if train:  # same BN running statistics update
        assert torch.allclose(ours.W_z[1].running_mean, reference.W_z[1].running_mean, atol=1e-10)
        assert torch.allclose(ours.W_z[1].running_var, reference.W_z[1].running_var, atol=1e-10)


def test_tpavi_gradients_equal_direct_formula():
    ours, reference = _randomised_pair(12, 10, False)
    visual = torch.randn(2, 3, 12, 4, 5, dtype=torch.float64, requires_grad=True)
    audio = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 12, 4, 5, dtype=torch.float64)
    (ours(visual, audio)[0] * weights).sum().backward()
    grads = [visual.grad.clone(), audio.grad.clone()] + [p.grad.clone() for p in ours.parameters()]
    visual.grad, audio.grad = None, None
    (direct_tpavi(reference, visual, audio)[0] * weights).sum().backward()
    grads_ref = [visual.grad, audio.grad] + [p.grad for p in reference.parameters()]
    for (name, _), grad, grad_ref in zip([("visual", 0), ("audio", 0)] + list(ours.named_parameters()), grads, grads_ref):
        assert torch.allclose(grad, grad_ref, atol=1e-9, rtol=1e-9), name


def test_tpavi_official_parameter_names_and_init():
    block = TPAVI(256)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes["align_channel.weight"] == (256, 128)
    for name in ("g", "theta", "phi"):
        assert shapes[f"{name}.weight"] == (128, 256, 1, 1, 1)
    assert shapes["W_z.0.weight"] == (256, 128, 1, 1, 1)
    assert {"W_z.1.running_mean", "W_z.1.num_batches_tracked", "norm_layer.weight"} <= set(shapes)
    # At initialisation the block is LayerNorm(V).
    visual = torch.randn(1, 2, 256, 3, 3)
    z, _ = block(visual, torch.randn(1, 2, 128))
    expected = torch.nn.functional.layer_norm(visual.transpose(2, -1), (256,)).transpose(2, -1)
    assert torch.allclose(z, expected, atol=1e-5)
    ecmvae = TPAVI(128, audio_channels=None, normalize_inputs=True)
    assert "align_channel.weight" not in ecmvae.state_dict()
    with pytest.raises(ValueError, match="128-d audio"):
        ecmvae(torch.randn(1, 2, 128, 3, 3), torch.randn(1, 2, 64))
