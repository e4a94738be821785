"""data.flip: one flip draw per clip (clip) or the MMVAE-AVS loaders' per-annotated-frame flips (released)."""
import pytest
import torch

from avseg.config import load_config
from avseg.data import ClipAugment, build_dataset


def asymmetric_clip(num_frames=5, size=8):
    """Frames [T, 3, H, W] and masks [T, 1, H, W] that differ from their mirror image."""
    ramp = torch.arange(size, dtype=torch.float32).expand(size, size)
    frames = torch.stack([ramp + 100 * k for k in range(num_frames)])[:, None].expand(num_frames, 3, size, size).clone()
    masks = (ramp < size // 3).float().expand(num_frames, 1, size, size).clone()
    return frames, masks


def flipped_frames(original, result):
    """bool [T]: which frames of ``result`` are the mirror image of ``original`` (the others must be unchanged)."""
    flipped = []
    for before, after in zip(original, result):
        assert torch.equal(after, before.flip(-1)) or torch.equal(after, before)
        flipped.append(torch.equal(after, before.flip(-1)))
    return flipped


def test_clip_mode_flips_every_frame_or_none():
    frames, masks = asymmetric_clip()
    seen = set()
    for seed in range(12):
        out_frames, out_masks = ClipAugment(hflip_prob=0.5, generator=torch.Generator().manual_seed(seed))(frames, masks)
        flips = flipped_frames(frames, out_frames)
        assert flips == flipped_frames(masks, out_masks) and len(set(flips)) == 1
        expected = float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < 0.5  # the one draw per clip
        assert flips[0] == expected
        seen.add(flips[0])
    assert seen == {True, False}


def test_released_mode_s4_flips_only_the_annotated_frame():
    frames, masks = asymmetric_clip()
    masks[1:] = 0  # S4 train: only frame 1 has a mask
    s4_valid = torch.tensor([True, False, False, False, False])
    out_frames, out_masks = ClipAugment(hflip_prob=1.0, flip="released")(frames, masks, s4_valid)
    assert flipped_frames(frames, out_frames) == [True, False, False, False, False]
    assert torch.equal(out_masks[0], masks[0].flip(-1)) and (out_masks[1:] == 0).all()


def test_released_mode_ms3_flips_each_frame_on_its_own_draw():
    frames, masks = asymmetric_clip(num_frames=8)
    valid = torch.ones(8, dtype=torch.bool)
    patterns = set()
    for seed in range(6):
        out_frames, out_masks = ClipAugment(hflip_prob=0.5, flip="released", generator=torch.Generator().manual_seed(seed))(
            frames, masks, valid)
        flips = flipped_frames(frames, out_frames)
        assert flips == flipped_frames(masks, out_masks)  # each frame together with its own mask
        generator = torch.Generator().manual_seed(seed)
        assert flips == [float(torch.rand((), generator=generator)) < 0.5 for _ in range(8)]  # one draw per frame, in order
        patterns.add(tuple(flips))
    assert any(len(set(pattern)) == 2 for pattern in patterns)  # frames of one clip disagree
    assert torch.equal(frames, asymmetric_clip(num_frames=8)[0])  # the input is not modified


def test_integer_label_maps_keep_dtype_and_values():
    labels = torch.randint(0, 71, (10, 1, 16, 16))
    frames = torch.randn(10, 3, 16, 16)
    _, out = ClipAugment(hflip_prob=1.0, scale_crop=0.5, generator=torch.Generator().manual_seed(0))(frames, labels)
    assert out.dtype == torch.int64 and out.shape == labels.shape
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    with pytest.raises(ValueError, match="flip must be one of"):
        ClipAugment(flip="frame")


@pytest.mark.parametrize("mode, expected", [("clip", [True] * 5), ("released", [True, False, False, False, False])])
def test_flip_modes_from_config_on_s4(synthetic_s4_root, mode, expected):
    overrides = [f"data.root={synthetic_s4_root}", "data.image_size=64", "data.feature_cache=off", "data.hflip_prob=1.0"]
    plain = build_dataset(load_config(None, overrides), "train", train=False)[0]
    cfg = load_config(None, overrides + [f"data.flip={mode}"])
    augmented = build_dataset(cfg, "train", train=True)[0]
    assert flipped_frames(plain["frames"], augmented["frames"]) == expected
    assert torch.equal(augmented["masks"][0], plain["masks"][0].flip(-1)) and (augmented["masks"][1:] == 0).all()


def test_default_flip_mode_is_clip():
    assert load_config(None, []).data.flip == "clip"
